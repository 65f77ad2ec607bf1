"""The learner contract and the machinery every learner shares.

A learner is a credit-assignment rule (how ``d loss / d params`` is estimated online), a readout, an objective
and an optax optimizer. The last three are the same for every learner and live here; each learner module only
writes its :class:`Credit` rule and calls :func:`build`.

Contract (optax-style)::

    learner = learners.rtrl(cell, input_size, output_size, objective, optimizer)
    state = learner.init(key)
    state, info = learner.step(state, x_t, signal_t)

``state.params`` is ``{"cell": ..., "readout": ...}``, every trainable parameter in one pytree; the state can be
rebuilt with other parameters by ``state._replace(params=...)``. ``info`` is a :class:`StepInfo`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from online_rnn import prng, streaming
from online_rnn.cells import Cell
from online_rnn.objectives import Objective

Params = Any
# finish(dh, g_readout) -> (cell_grads, readout_grads, trace_t)
Finish = Callable[[jax.Array, Params], tuple[Params, Params, Any]]


class StepInfo(NamedTuple):
    """What one step reports: ``prediction`` y_t; ``loss`` (the supervised loss L_t whose gradient the learner
    estimates, or 0.5 delta^2 for TD); ``grads``, the gradient the update used (same tree as ``state.params``,
    zeros on steps that make no update)."""

    prediction: jax.Array
    loss: jax.Array
    grads: Params


class StreamStats(NamedTuple):
    """Running normalisation statistics of the inputs and of the features before the readout (``()`` when
    that normalisation is off)."""

    inputs: Any
    features: Any


class LearnerState(NamedTuple):
    """State of every learner. ``trace`` is the credit-assignment state and its type is learner specific
    (``RTRLTrace``, ``TBPTTTrace``, ...); ``objective`` is the objective's state (TD's eligibility trace, gamma,
    lambda); ``stats`` the online normalisation statistics; ``key`` feeds learners that draw random numbers
    (UORO); ``t`` counts steps taken."""

    params: Params
    opt_state: Any
    carry: Any
    trace: Any
    objective: Any
    stats: StreamStats
    key: jax.Array
    t: jax.Array


class Learner(NamedTuple):
    """``init(key) -> state``; ``step(state, x_t, signal_t) -> (state, StepInfo)``. ``n_params`` counts the
    trainable parameters that can affect the prediction (for tables)."""

    init: Callable[[jax.Array], LearnerState]
    step: Callable[[LearnerState, jax.Array, Any], tuple[LearnerState, StepInfo]]
    name: str
    input_size: int
    output_size: int
    n_params: int = 0


class Credit(NamedTuple):
    """A credit-assignment rule for one cell.

    ``init(cell_params, carry, readout_params) -> trace``.
    ``step(cell_params, carry_tm1, trace_tm1, x_t, key) -> (carry_t, h_t, finish)`` runs the cell forward;
    ``finish(dh, g_readout) -> (cell_grads, readout_grads, trace_t)`` turns the cotangent ``dh`` on ``h_t``
    into the cell-parameter gradient estimate, decides which readout gradient this step uses, and returns the
    new trace.

    Optional, for learners whose units come and go (constructive, hybrid): ``active_features(trace) -> (H,)
    bool`` marks the features that exist (inactive ones have ``h = 0`` and keep their normalisation statistics);
    ``update_mask(trace) -> tree of bool like the cell params`` marks the parameters allowed to change. Both are
    called with the trace *before* the step, and describe that step. ``uses_key``: the rule draws random numbers
    from the ``key`` given to ``step`` (``prng.fold_in(state.key, t)``, a fresh key every step); rules that do
    not draw get ``state.key`` unchanged and cost nothing for it.
    """

    init: Callable[[Params, Any, Params], Any]
    step: Callable[[Params, Any, Any, jax.Array, jax.Array], tuple[Any, jax.Array, Finish]]
    active_features: Optional[Callable[[Any], jax.Array]] = None
    update_mask: Optional[Callable[[Any], Params]] = None
    uses_key: bool = False


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_learner_args(cell: Any, input_size: Any, output_size: Any, objective: Any, optimizer: Any) -> None:
    if not isinstance(cell, Cell):
        raise ValueError(f"cell must be an online_rnn.cells.Cell (e.g. cells.lstm(4)), got {type(cell).__name__}")
    check_positive_int("input_size", input_size)
    check_positive_int("output_size", output_size)
    if not isinstance(objective, Objective):
        raise ValueError(
            f"objective must be an online_rnn.objectives.Objective (e.g. objectives.squared_error()), "
            f"got {type(objective).__name__}"
        )
    objective.check(output_size)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")


# --------------------------------------------------------------------------------------------------- readouts


def linear_readout(hidden_size: int, output_size: int):
    """``y = w h + b``, initialised at zero (the paper initialises its readout at zero)."""

    def init(key: jax.Array, dtype: Any) -> dict:
        return {"w": jnp.zeros((output_size, hidden_size), dtype), "b": jnp.zeros((output_size,), dtype)}

    def apply(p: dict, h: jax.Array) -> jax.Array:
        return p["w"] @ h + p["b"]

    return init, apply


def identity_readout(hidden_size: int, output_size: int):
    """``y = h`` with no parameters (for models whose cell output is the prediction, e.g. influence balancing)."""
    if hidden_size != output_size:
        raise ValueError(
            f"readout='identity' needs output_size == the cell's hidden_size ({hidden_size}), got {output_size}"
        )

    def init(key: jax.Array, dtype: Any) -> dict:
        return {}

    def apply(p: dict, h: jax.Array) -> jax.Array:
        return h

    return init, apply


READOUTS = {"linear": linear_readout, "identity": identity_readout}


def make_readout(readout: str, hidden_size: int, output_size: int):
    if readout not in READOUTS:
        raise ValueError(f"readout: unknown {readout!r}; allowed: {', '.join(sorted(READOUTS))}")
    return READOUTS[readout](hidden_size, output_size)


# ------------------------------------------------------------------------------------------------------ utils


def param_dtype(params: Params) -> Any:
    leaves = jax.tree.leaves(params)
    return leaves[0].dtype if leaves else jnp.zeros(()).dtype


def tree_where(cond: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def tree_zeros_like(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


def param_count(params: Params) -> int:
    """Number of scalar parameters in a parameter tree (arrays or shape structs)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------------------------------ build


def build(
    name: str,
    cell: Cell,
    credit: Credit,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    readout: str = "linear",
    normalise_inputs: Any = None,
    normalise_features: Any = None,
    readout_step_scale: bool = False,
    n_params: Optional[int] = None,
) -> Learner:
    """Assemble a learner from a credit-assignment rule and the shared readout, objective, optimizer and the
    streaming pieces of :mod:`online_rnn.streaming`:

    * ``normalise_inputs`` / ``normalise_features``: ``None`` or a :class:`~online_rnn.streaming.Normalisation`
      (or dict / decay rate). Inputs are normalised with the statistics of the previous step, then the
      statistics take in ``x_t``; features take in ``h_t`` first (the authors' order).
    * ``readout_step_scale``: divide the readout's updates (its step size) by the number of active features.
    * Parameters outside ``credit.update_mask`` keep their values bit for bit, whatever the optimizer's state.
    """
    check_learner_args(cell, input_size, output_size, objective, optimizer)
    in_norm = streaming.as_normalisation(normalise_inputs, "normalise_inputs")
    feat_norm = streaming.as_normalisation(normalise_features, "normalise_features")
    ro_init, ro_apply = make_readout(readout, cell.hidden_size, output_size)
    if feat_norm is not None and readout == "identity":
        raise ValueError("normalise_features needs readout='linear' (the identity readout has nothing to scale)")

    def active(trace: Any) -> jax.Array:
        if credit.active_features is None:
            return jnp.ones((cell.hidden_size,), bool)
        return credit.active_features(trace)

    def init(key: jax.Array) -> LearnerState:
        k_cell, k_ro, k_state = jax.random.split(key, 3)
        cell_params = cell.init(k_cell, input_size)
        dtype = param_dtype(cell_params)
        params = {"cell": cell_params, "readout": ro_init(k_ro, dtype)}
        carry = cell.initial_carry(cell_params)
        stats = StreamStats(
            inputs=() if in_norm is None else streaming.normaliser_init((input_size,), dtype),
            features=() if feat_norm is None else streaming.normaliser_init((cell.hidden_size,), dtype),
        )
        return LearnerState(
            params=params,
            opt_state=optimizer.init(params),
            carry=carry,
            trace=credit.init(cell_params, carry, params["readout"]),
            objective=objective.init(params),
            stats=stats,
            key=k_state,
            t=jnp.zeros((), jnp.int32),
        )

    def step(state: LearnerState, x_t: jax.Array, signal_t: Any) -> tuple[LearnerState, StepInfo]:
        x_t = jnp.asarray(x_t)
        if x_t.shape != (input_size,):
            raise ValueError(f"{name}.step: x_t must have shape ({input_size},) (input_size), got {tuple(x_t.shape)}")
        objective.check_signal(signal_t, output_size)
        params, stats = state.params, state.stats
        x_t = x_t.astype(param_dtype(params["cell"]))
        if in_norm is not None:
            x_in = streaming.normalise(stats.inputs, x_t)
            stats = stats._replace(inputs=streaming.normaliser_update(stats.inputs, x_t, in_norm))
        else:
            x_in = x_t
        k_step = prng.fold_in(state.key, state.t) if credit.uses_key else state.key
        carry, h_t, finish = credit.step(params["cell"], state.carry, state.trace, x_in, k_step)
        if feat_norm is not None:
            feat_stats = streaming.normaliser_update(stats.features, h_t, feat_norm, active(state.trace))  # step t's units
            stats = stats._replace(features=feat_stats)
            features = lambda h: streaming.normalise(feat_stats, h)  # noqa: E731
        else:
            features = lambda h: h  # noqa: E731
        y_t, readout_vjp = jax.vjp(lambda ro, h: ro_apply(ro, features(h)), params["readout"], h_t)
        dy = objective.cotangent(state.objective, y_t, signal_t)
        g_readout, dh = readout_vjp(dy)
        g_cell, g_readout, trace = finish(dh, g_readout)
        grads, loss, obj_state = objective.update(
            state.objective, y_t, signal_t, {"cell": g_cell, "readout": g_readout}
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        if readout_step_scale:
            n_active = jnp.maximum(jnp.sum(active(state.trace)), 1).astype(y_t.dtype)
            updates = {**updates, "readout": jax.tree.map(lambda u: u / n_active, updates["readout"])}
        if credit.update_mask is not None:
            mask = credit.update_mask(state.trace)
            cell_updates = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates["cell"], mask)
            updates = {**updates, "cell": cell_updates}
        new_state = LearnerState(
            params=optax.apply_updates(params, updates),
            opt_state=opt_state,
            carry=carry,
            trace=trace,
            objective=obj_state,
            stats=stats,
            key=state.key,
            t=state.t + 1,
        )
        return new_state, StepInfo(prediction=y_t, loss=loss, grads=grads)

    if n_params is None:
        shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
        n_params = param_count(shapes.params)
    return Learner(init=init, step=step, name=name, input_size=input_size, output_size=output_size,
                   n_params=n_params)


def check_kwargs(factory: Callable, kwargs: dict, what: str) -> None:
    """Raise a one-line ValueError for keyword arguments the factory does not take."""
    allowed = [p for p in inspect.signature(factory).parameters]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ValueError(f"{what}: unknown argument {unknown[0]!r}; allowed: {', '.join(allowed)}")

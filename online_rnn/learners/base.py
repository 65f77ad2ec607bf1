"""The learner contract and the machinery every learner shares.

A learner is a credit-assignment rule (how ``d loss / d params`` is estimated online), a readout, an objective
and an optax optimizer. The last three are the same for every learner and live here; each learner module only
writes its :class:`Credit` rule and calls :func:`build`.

Contract (optax-style)::

    learner = learners.rtrl(cell, input_size, output_size, objective, optimizer, options=learners.Options())
    state = learner.init(key)
    state, info = learner.step(state, x_t, signal_t)

``state.params`` is ``{"cell": ..., "readout": ...}``, every trainable parameter in one pytree; the state can be
rebuilt with other parameters by ``state._replace(params=...)``. ``info`` is a :class:`StepInfo`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from online_rnn import cells, checks, prng, streaming
from online_rnn.cells import Cell
from online_rnn.objectives import Objective

Params = Any


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
    trainable parameters that can affect the prediction (for tables); ``path`` names the credit-assignment
    code that serves this learner (a fast path or the generic one), as listed by ``online-rnn list`` and saved
    in results summaries.

    For diagnostics that need the network itself (the exact-gradient shadow of
    :mod:`online_rnn.alignment`), :func:`build` also records:

    * ``network(state) -> Cell``: the network the learner trains, as one cell whose parameters are
      ``state.params["cell"]`` and whose carry is ``state.carry``, such that ``network(state).apply(params,
      state.carry, x_in)`` is this step's forward pass (``x_in`` the input after the learner's input
      normalisation). A function of the state because some networks change with it (hybrid and constructive
      networks: which units exist at step ``state.t``, and their per-stage input statistics); for most learners
      it returns the cell given to :func:`build` whatever the state.
    * ``options``: the learner's :class:`Options` as :func:`build` applied them (normalisation, readout).
    * ``cell_parts(cell_params) -> {name: subtree}``: named parts of the cell parameters worth reporting apart
      (the stages of a hybrid network, the layers of a :func:`~online_rnn.cells.stack`); ``None`` if none.
    """

    init: Callable[[jax.Array], LearnerState]
    step: Callable[[LearnerState, jax.Array, Any], tuple[LearnerState, StepInfo]]
    name: str
    input_size: int
    output_size: int
    n_params: int = 0
    path: str = "generic"
    network: Optional[Callable[[LearnerState], Cell]] = None
    options: Optional["Options"] = None
    cell_parts: Optional[Callable[[Params], dict]] = None


class Credit(NamedTuple):
    """A credit-assignment rule for one cell.

    * ``init(cell_params, carry, readout_params) -> trace``.
    * ``forward(cell_params, carry_tm1, trace_tm1, x_t, key, t) -> (carry_t, h_t, residuals)`` runs the cell
      one step and everything that does not need the error (an influence update, say); ``residuals`` is a
      pytree of arrays (``jax.vjp`` functions are pytrees) that ``backward`` needs. ``t`` is the number of steps
      taken before this one; ``key`` is a fresh key every step when ``uses_key`` (``prng.fold_in(state.key,
      t)``), else ``state.key`` unchanged.
    * ``backward(residuals, dh) -> (cell_grads, trace_t)`` turns the cotangent ``dh`` on ``h_t`` into the
      gradient estimate for the cell's parameters and returns the new trace.

    Under ``jax.vmap`` (columns, runs) the split keeps one forward pass: nothing is run twice.

    Optional:

    * ``readout(trace_t, g_readout, t) -> (g_readout_used, trace_t)`` for rules that change which readout
      gradient a step uses (strided T-BPTT applies the window's summed gradient at its end); the others leave it
      ``None`` and the step uses its own readout gradient.
    * For learners whose units come and go (constructive, hybrid): ``active_features(trace, t) -> (H,) bool``
      marks the features that exist (inactive ones have ``h = 0``, keep their normalisation statistics and
      their readout weights and its optimizer state); ``window_size`` (static) and ``window(trace, t) ->
      (start, learns)`` name the only cell units that may learn this step, ``[start, start + window_size)``
      along the leading (unit) axis of every cell parameter, and whether they do (``learns``, a bool):
      ``backward`` then returns the gradient of those units only, and the objective's and the optimizer's
      state are read and written for those units alone (plus the readout), so the other units keep their
      parameters and their optimizer state bit for bit at no cost per step.
      Both are called with the trace *before* the step and describe that step.
    * ``path`` names the implementation (shown by ``online-rnn list`` and in results summaries).
    * For rules that send the output error to the cell through other weights than the readout's (random
      feedback: RFLO, e-prop): ``feedback(trace, dy) -> (hidden_size,)`` gives the cotangent on the readout's
      input features for the objective's cotangent ``dy`` on ``y_t``, in place of ``readout^T dy``; the step
      takes it through the feature normalisation (if any) to get the ``dh`` given to ``backward``. The
      readout's own gradient is unchanged. ``trace`` is the trace before the step. Such a rule is initialised
      with a key, ``init(cell_params, carry, readout_params, key)``, to draw its fixed feedback weights.
    """

    init: Callable[[Params, Any, Params], Any]
    forward: Callable[[Params, Any, Any, jax.Array, jax.Array, jax.Array], tuple[Any, jax.Array, Any]]
    backward: Callable[[Any, jax.Array], tuple[Params, Any]]
    readout: Optional[Callable[[Any, Params, jax.Array], tuple[Params, Any]]] = None
    active_features: Optional[Callable[[Any, jax.Array], jax.Array]] = None
    window: Optional[Callable[[Any, jax.Array], jax.Array]] = None
    window_size: int = 0
    uses_key: bool = False
    path: str = "generic"
    feedback: Optional[Callable[[Any, jax.Array], jax.Array]] = None


class Options(NamedTuple):
    """Streaming options every learner factory takes (keyword ``options=``), from the paper's setup:

    * ``readout``: ``"linear"`` (``y = w h + b``, initialised at zero) or ``"identity"`` (``y = h``).
    * ``normalise_inputs`` / ``normalise_features``: ``None`` or a :class:`~online_rnn.streaming.Normalisation`
      (or dict / decay rate). Inputs are normalised with the statistics of the previous step, then the
      statistics take in ``x_t``; features take in ``h_t`` first (the authors' order).
    * ``readout_step_scale``: divide the readout's updates (its step size) by the number of active features.
    """

    readout: str = "linear"
    normalise_inputs: Any = None
    normalise_features: Any = None
    readout_step_scale: bool = False


OPTION_FIELDS = Options._fields


def as_options(options: Any) -> Options:
    if options is None:
        return Options()
    if isinstance(options, Options):
        return options
    if isinstance(options, dict):
        unknown = [k for k in options if k not in OPTION_FIELDS]
        if unknown:
            raise ValueError(f"options: unknown key {unknown[0]!r}; allowed: {', '.join(OPTION_FIELDS)}")
        return Options(**options)
    raise ValueError(f"options must be a learners.Options (or a dict of its fields), got {type(options).__name__}")


check_positive_int = checks.positive_int


class MissingCell(ValueError):
    """A learner that needs a cell got none (configs report it as a missing ``cell`` key)."""


def check_learner_args(cell: Any, input_size: Any, output_size: Any, objective: Any, optimizer: Any) -> None:
    if cell is None:
        raise MissingCell("cell is required (e.g. cells.lstm(4))")
    if not isinstance(cell, Cell):
        raise ValueError(f"cell must be an online_rnn.cells.Cell (e.g. cells.lstm(4)), got {type(cell).__name__}")
    checks.positive_int("input_size", input_size)
    checks.positive_int("output_size", output_size)
    if not isinstance(objective, Objective):
        raise ValueError(
            f"objective must be an online_rnn.objectives.Objective (e.g. objectives.squared_error()), "
            f"got {type(objective).__name__}"
        )
    objective.check(output_size)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")


def check_key(key: Any, where: str) -> jax.Array:
    """A PRNG key (``jax.random.PRNGKey(0)`` or ``jax.random.key(0)``), or a one-line error."""
    arr = key if isinstance(key, jax.Array) else None
    if isinstance(key, np.ndarray):
        arr = jnp.asarray(key)
    if arr is not None and (jnp.issubdtype(arr.dtype, jax.dtypes.prng_key)
                            or (arr.dtype == jnp.uint32 and arr.shape == (2,))):
        return arr
    raise ValueError(f"{where}: key must be a PRNG key such as jax.random.PRNGKey(0) or jax.random.key(0), "
                     f"got {type(key).__name__} {key!r}"[:200])


# --------------------------------------------------------------------------------------------------- readouts


class Readout(NamedTuple):
    """``init(key, dtype) -> params``; ``apply(params, h) -> y``; ``mask(active) -> tree of bool like params``:
    the entries that belong to the active features (and to none), which may change this step."""

    init: Callable[[jax.Array, Any], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    mask: Callable[[jax.Array], Params]


def linear_readout(hidden_size: int, output_size: int) -> Readout:
    """``y = w h + b``, initialised at zero (the paper initialises its readout at zero)."""

    def init(key: jax.Array, dtype: Any) -> dict:
        return {"w": jnp.zeros((output_size, hidden_size), dtype), "b": jnp.zeros((output_size,), dtype)}

    def apply(p: dict, h: jax.Array) -> jax.Array:
        return p["w"] @ h + p["b"]

    def mask(active: jax.Array) -> dict:
        return {"w": jnp.broadcast_to(active[None, :], (output_size, hidden_size)),
                "b": jnp.ones((output_size,), bool)}

    return Readout(init, apply, mask)


def identity_readout(hidden_size: int, output_size: int) -> Readout:
    """``y = h`` with no parameters (for models whose cell output is the prediction, e.g. influence balancing)."""
    if hidden_size != output_size:
        raise ValueError(
            f"readout='identity' needs output_size == the cell's hidden_size ({hidden_size}), got {output_size}"
        )
    return Readout(lambda key, dtype: {}, lambda p, h: h, lambda active: {})


READOUTS = {"linear": linear_readout, "identity": identity_readout}


def make_readout(readout: str, hidden_size: int, output_size: int) -> Readout:
    if readout not in READOUTS:
        raise ValueError(f"readout: unknown {readout!r}; allowed: {', '.join(sorted(READOUTS))}")
    return READOUTS[readout](hidden_size, output_size)


# ------------------------------------------------------------------------------------------------------ utils


def param_dtype(params: Params) -> Any:
    leaves = jax.tree.leaves(params)
    return leaves[0].dtype if leaves else jnp.zeros(()).dtype


def tree_where(cond: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def param_count(params: Params) -> int:
    """Number of scalar parameters in a parameter tree (arrays or shape structs)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))


def params_like(params: Params) -> Callable[[Any], bool]:
    """A test for the parts of a state tree (an optimizer's or an objective's) shaped like ``params``:
    RMSProp's normaliser, Adam's moments, TD's eligibility trace."""
    treedef = jax.tree.structure(params)
    shapes = [jnp.shape(p) for p in jax.tree.leaves(params)]

    def test(x: Any) -> bool:
        return jax.tree.structure(x) == treedef and [jnp.shape(v) for v in jax.tree.leaves(x)] == shapes

    return test


def map_params_like(fn: Callable, state: Any, params: Params, *rest: Any) -> Any:
    """``fn(part, *rest_parts)`` on every params-shaped part of ``state``; every other part is taken from the
    last tree (``rest[-1]``, or ``state`` itself). ``rest`` are trees of ``state``'s structure down to those
    parts."""
    test = params_like(params)
    return jax.tree.map(lambda x, *r: fn(x, *r) if test(x) else (r[-1] if r else x), state, *rest, is_leaf=test)


def keep_masked(new_state: Any, old_state: Any, mask: Params, params: Params) -> Any:
    """``new_state`` with every entry of its params-shaped parts outside ``mask`` set back to ``old_state``'s;
    other parts (step counts, injected hyperparameters) are taken from ``new_state``."""
    return map_params_like(lambda old, new: jax.tree.map(lambda a, b, m: jnp.where(m, b, a), old, new, mask),
                           old_state, params, new_state)


# ------------------------------------------------------------------------------------------------------ build


def build(
    name: str,
    cell: Cell,
    credit: Credit,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    options: Optional[Options] = None,
    n_params: Optional[int] = None,
    network: Optional[Callable[[LearnerState], Cell]] = None,
    cell_parts: Optional[Callable[[Params], dict]] = None,
) -> Learner:
    """Assemble a learner from a credit-assignment rule and the shared readout, objective, optimizer and the
    streaming pieces of :mod:`online_rnn.streaming` (see :class:`Options`). Parameters outside
    ``credit.window`` (and readout weights of inactive features) keep their values and their optimizer state bit
    for bit. ``network`` (default: ``cell`` at every state) and ``cell_parts`` (default: the layers of a
    :func:`~online_rnn.cells.stack`) are recorded in the :class:`Learner` for diagnostics."""
    check_learner_args(cell, input_size, output_size, objective, optimizer)
    opts = as_options(options)
    in_norm = streaming.as_normalisation(opts.normalise_inputs, "normalise_inputs")
    feat_norm = streaming.as_normalisation(opts.normalise_features, "normalise_features")
    ro = make_readout(opts.readout, cell.hidden_size, output_size)
    if feat_norm is not None and opts.readout == "identity":
        raise ValueError("normalise_features needs readout='linear' (the identity readout has nothing to scale)")

    def active(trace: Any, t: jax.Array) -> jax.Array:
        if credit.active_features is None:
            return jnp.ones((cell.hidden_size,), bool)
        return credit.active_features(trace, t)

    def init(key: jax.Array) -> LearnerState:
        key = check_key(key, f"{name}.init")
        k_cell, k_ro, k_state = jax.random.split(key, 3)
        cell_params = cell.init(k_cell, input_size)
        dtype = param_dtype(cell_params)
        params = {"cell": cell_params, "readout": ro.init(k_ro, dtype)}
        carry = cell.initial_carry(cell_params)
        stats = StreamStats(
            inputs=() if in_norm is None else streaming.normaliser_init((input_size,), dtype),
            features=() if feat_norm is None else streaming.normaliser_init((cell.hidden_size,), dtype),
        )
        return LearnerState(
            params=params,
            opt_state=optimizer.init(params),
            carry=carry,
            trace=(credit.init(cell_params, carry, params["readout"]) if credit.feedback is None
                   else credit.init(cell_params, carry, params["readout"], jax.random.fold_in(k_state, 1))),
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
        params, stats, t = state.params, state.stats, state.t
        x_t = x_t.astype(param_dtype(params["cell"]))
        if in_norm is not None:
            x_in = streaming.normalise(stats.inputs, x_t)
            stats = stats._replace(inputs=streaming.normaliser_update(stats.inputs, x_t, in_norm))
        else:
            x_in = x_t
        k_step = prng.fold_in(state.key, t) if credit.uses_key else state.key
        carry, h_t, residuals = credit.forward(params["cell"], state.carry, state.trace, x_in, k_step, t)
        on = active(state.trace, t)  # this step's units
        if feat_norm is not None:
            feat_stats = streaming.normaliser_update(stats.features, h_t, feat_norm, on)
            stats = stats._replace(features=feat_stats)
            features = lambda h: streaming.normalise(feat_stats, h)  # noqa: E731
        else:
            features = lambda h: h  # noqa: E731
        y_t, readout_vjp = jax.vjp(lambda p, h: ro.apply(p, features(h)), params["readout"], h_t)
        dy = objective.cotangent(state.objective, y_t, signal_t)
        g_readout, dh = readout_vjp(dy)
        if credit.feedback is not None:  # the error reaches the cell through the rule's own feedback weights
            (dh,) = jax.vjp(features, h_t)[1](credit.feedback(state.trace, dy))
        g_cell, trace = credit.backward(residuals, dh)
        if credit.readout is not None:
            g_readout, trace = credit.readout(trace, g_readout, t)
        # With a window, the objective and the optimizer see the window's units and the readout only.
        view, put = (lambda p: p), (lambda full, part: part)
        learns = None
        if credit.window is not None:
            start, learns = credit.window(state.trace, t)

            def view(p):
                cell = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, credit.window_size), p["cell"])
                return {"cell": cell, "readout": p["readout"]}

            def put(full, part):
                cell = jax.tree.map(lambda a, b: lax.dynamic_update_slice_in_dim(a, b, start, 0), full["cell"],
                                    part["cell"])
                return {"cell": cell, "readout": part["readout"]}

        p_view = view(params)
        obj_view = map_params_like(view, state.objective, params)
        opt_view = map_params_like(view, state.opt_state, params)
        grads, loss, obj_view = objective.update(obj_view, y_t, signal_t, {"cell": g_cell, "readout": g_readout})
        updates, new_opt = optimizer.update(grads, opt_view, p_view)
        if opts.readout_step_scale:
            n_active = jnp.maximum(jnp.sum(on), 1).astype(y_t.dtype)
            updates = {**updates, "readout": jax.tree.map(lambda u: u / n_active, updates["readout"])}
        if credit.active_features is not None:  # readout weights of features that do not exist stay as they are
            mask = {"cell": jax.tree.map(lambda u: jnp.ones(jnp.shape(u), bool), updates["cell"]),
                    "readout": ro.mask(on)}
            updates = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, mask)
            new_opt = keep_masked(new_opt, opt_view, mask, p_view)
        if learns is not None:  # a window that does not learn keeps its units' parameters and state
            keep = {"cell": jax.tree.map(lambda u: jnp.broadcast_to(learns, jnp.shape(u)), updates["cell"]),
                    "readout": jax.tree.map(lambda u: jnp.ones(jnp.shape(u), bool), updates["readout"])}
            updates = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, keep)
            new_opt = keep_masked(new_opt, opt_view, keep, p_view)
            obj_view = keep_masked(obj_view, map_params_like(view, state.objective, params), keep, p_view)
        params_t = put(params, optax.apply_updates(p_view, updates))
        obj_state = map_params_like(put, state.objective, params, obj_view)
        opt_state = map_params_like(put, state.opt_state, params, new_opt)
        if credit.window is not None:  # the step's gradient, as a tree like the parameters
            grads = put(jax.tree.map(jnp.zeros_like, params), grads)
        new_state = LearnerState(
            params=params_t,
            opt_state=opt_state,
            carry=carry,
            trace=trace,
            objective=obj_state,
            stats=stats,
            key=state.key,
            t=t + 1,
        )
        return new_state, StepInfo(prediction=y_t, loss=loss, grads=grads)

    if n_params is None:
        shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
        n_params = param_count(shapes.params) - cells.absent_weights(cell)
    if network is None:
        network = lambda state: cell  # noqa: E731
    if cell_parts is None and cell.layers:
        cell_parts = lambda p: {f"layer{i}": part for i, part in enumerate(p)}  # noqa: E731
    return Learner(init=init, step=step, name=name, input_size=input_size, output_size=output_size,
                   n_params=n_params, path=credit.path, network=network, options=opts, cell_parts=cell_parts)

"""Per-step objectives: supervised losses and TD(lambda) prediction.

An :class:`Objective` turns the learner's prediction ``y_t`` and the stream's signal into the gradient the
optimizer follows. It is split in two so that every credit-assignment rule (RTRL, T-BPTT, SnAp-1, UORO, ...)
can serve every objective:

1. ``dy = objective.cotangent(obj_state, y_t, signal_t)`` says which direction in output space to
   differentiate: ``dL_t/dy_t`` for a supervised loss, ``1`` (the gradient of ``v_t`` itself) for TD.
2. The learner turns ``dy`` into ``g_t``, its estimate of ``dy . dy_t/dparams`` (exact for RTRL and BPTT).
3. ``grads, loss, obj_state = objective.update(obj_state, y_t, signal_t, g_t)`` gives the gradient the
   optimizer uses (``g_t`` for supervised losses; ``-delta * e`` for TD) and the step's loss.

Signals. A supervised signal is the target array of shape ``(output_size,)`` or a :class:`Target`
``(value, weight)``; the loss is multiplied by ``weight`` (e.g. 0 on steps with nothing to predict). The TD
signal is the cumulant ``c_t`` that arrived with ``x_t`` (a scalar or shape ``(1,)``), discounted by the
objective's ``gamma``; or a :class:`Cumulant` ``(value, discount)`` from a stream whose discount changes from
step to step (episodes that end: ``discount`` is 0 on the step a new episode starts).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from online_rnn import checks
from online_rnn.registry import Registry


class Target(NamedTuple):
    """A supervised target with a per-step weight (the loss is ``weight * loss(y, value)``)."""

    value: jax.Array
    weight: jax.Array


class Cumulant(NamedTuple):
    """A prediction stream's signal with its own discount: the cumulant ``c_t`` that arrived with ``x_t`` and
    the discount ``gamma_t`` of that step, so that the return is ``G_t = c_{t+1} + gamma_{t+1} G_{t+1}``
    (``gamma_t = 0`` on the first step of an episode cuts the return there)."""

    value: jax.Array
    discount: jax.Array


class Objective(NamedTuple):
    """See the module docstring. ``check(output_size)`` raises ``ValueError`` if the output size does not fit;
    ``per_step_gradient`` is True when ``update`` needs ``g_t`` at every step (TD's eligibility trace).

    What the experiment layer reads: ``kind`` is the kind of stream the objective serves (``"supervised"``: the
    signal is a target; ``"prediction"``: the signal is a cumulant whose discounted return is predicted);
    ``hyperparams`` names the values kept in the objective's state (fields of the same names) that a sweep may
    set per run, with their valid ranges (:class:`online_rnn.checks.Range`); ``discount`` names the one of them that must equal the stream's
    discount (a stream's ``gamma``), or is ``None``."""

    init: Callable[[Any], Any]
    cotangent: Callable[[Any, jax.Array, Any], jax.Array]
    update: Callable[[Any, jax.Array, Any, Any], tuple[Any, jax.Array, Any]]
    check: Callable[[int], None]
    check_signal: Callable[[Any, int], None]
    per_step_gradient: bool
    name: str
    kind: str = "supervised"
    hyperparams: dict = {}
    discount: Optional[str] = None


def _split_target(signal: Any) -> tuple[jax.Array, jax.Array]:
    if isinstance(signal, Target):
        return jnp.asarray(signal.value), jnp.asarray(signal.weight)
    signal = jnp.asarray(signal)
    return signal, jnp.ones((), signal.dtype)


def _check_target_shape(name: str):
    def check_signal(signal: Any, output_size: int) -> None:
        value = signal.value if isinstance(signal, Target) else signal
        shape = tuple(jnp.shape(value))
        if shape != (output_size,):
            raise ValueError(
                f"{name}: signal_t (the target) must have shape ({output_size},) to match output_size, got {shape}"
            )
        if isinstance(signal, Target) and tuple(jnp.shape(signal.weight)) != ():
            raise ValueError(f"{name}: Target.weight must be a scalar, got shape {tuple(jnp.shape(signal.weight))}")

    return check_signal


def _supervised(name: str, loss_fn: Callable[[jax.Array, jax.Array], jax.Array], min_outputs: int) -> Objective:
    def init(params: Any) -> tuple:
        return ()

    def weighted_loss(y: jax.Array, signal: Any) -> jax.Array:
        value, weight = _split_target(signal)
        return weight * loss_fn(y, value.astype(y.dtype))

    def cotangent(state: tuple, y: jax.Array, signal: Any) -> jax.Array:
        return jax.grad(weighted_loss)(y, signal)

    def update(state: tuple, y: jax.Array, signal: Any, g: Any) -> tuple[Any, jax.Array, tuple]:
        return g, weighted_loss(y, signal), state

    def check(output_size: int) -> None:
        if output_size < min_outputs:
            raise ValueError(f"output_size must be >= {min_outputs} for {name}, got {output_size}")

    return Objective(init, cotangent, update, check, _check_target_shape(name), False, name)


def squared_error() -> Objective:
    """``L_t = 0.5 * sum((y_t - target_t)^2)``."""
    return _supervised("squared_error", lambda y, t: 0.5 * jnp.sum((y - t) ** 2), 1)


def softmax_cross_entropy() -> Objective:
    """``L_t = -sum(target_t * log_softmax(y_t))``; the target is a distribution (one-hot or soft), in nats."""
    return _supervised("softmax_cross_entropy", lambda y, t: -jnp.sum(t * jax.nn.log_softmax(y)), 2)


def sigmoid_cross_entropy() -> Objective:
    """``L_t = sum(-t log sigmoid(y) - (1 - t) log(1 - sigmoid(y)))`` per output, targets in [0, 1], in nats."""

    def loss(y: jax.Array, t: jax.Array) -> jax.Array:
        return jnp.sum(-t * jax.nn.log_sigmoid(y) - (1.0 - t) * jax.nn.log_sigmoid(-y))

    return _supervised("sigmoid_cross_entropy", loss, 1)


TD_HYPERPARAMS = {"gamma": checks.Range(0.0, 1.0, high_open=True), "lam": checks.Range(0.0, 1.0)}


class TDState(NamedTuple):
    gamma: jax.Array  # discount, an array so that sweeps can vmap over it
    lam: jax.Array  # trace decay lambda
    v_tm1: jax.Array  # previous prediction
    trace: Any  # eligibility trace e_{t-1}, same tree as the parameters
    started: jax.Array  # bool: v_tm1 and trace are valid


def td_lambda(gamma: float, lam: float) -> Objective:
    """Online TD(lambda) prediction of the discounted sum of a cumulant, as in the paper.

    With ``v_t = readout(h_t)`` (``output_size`` 1) and the cumulant ``c_t`` that arrives with ``x_t``, the step
    at time ``t`` computes ``delta_{t-1} = c_t + gamma_t v_t - v_{t-1}`` and follows
    ``grads = -delta_{t-1} e_{t-1}`` (a descent direction, so SGD moves along ``+delta e``), then updates the
    trace ``e_t = gamma_t lam e_{t-1} + grad v_t``, where ``grad v_t`` is the learner's gradient estimate of
    ``v_t``. ``loss`` is ``0.5 delta^2`` (0 on the first step). ``gamma`` and ``lam`` live in the objective
    state, so a sweep can set them per run.

    ``gamma_t`` is the state's ``gamma`` when the signal is a plain cumulant, and the signal's own discount when
    it is a :class:`Cumulant` (a stream whose episodes end: ``gamma_t = 0`` on an episode's first step makes
    ``delta`` there ``c_t - v_{t-1}``, the last prediction's whole return, and restarts the trace; Sutton &
    Barto 2018, section 12.8, and White 2017, "Unifying task specification in reinforcement learning", for
    per-step discounts).
    """

    gamma = TD_HYPERPARAMS["gamma"].check("td_lambda: gamma", gamma)
    lam = TD_HYPERPARAMS["lam"].check("td_lambda: lam", lam)

    def init(params: Any) -> TDState:
        leaves = jax.tree.leaves(params)
        dtype = leaves[0].dtype if leaves else jnp.zeros(()).dtype
        return TDState(
            gamma=jnp.asarray(gamma, dtype),
            lam=jnp.asarray(lam, dtype),
            v_tm1=jnp.zeros((), dtype),
            trace=jax.tree.map(jnp.zeros_like, params),
            started=jnp.zeros((), bool),
        )

    def cotangent(state: TDState, y: jax.Array, signal: Any) -> jax.Array:
        return jnp.ones_like(y)

    def update(state: TDState, y: jax.Array, signal: Any, grad_v: Any) -> tuple[Any, jax.Array, TDState]:
        if isinstance(signal, Cumulant):
            c_t = jnp.reshape(jnp.asarray(signal.value, y.dtype), ())
            gamma_t = jnp.reshape(jnp.asarray(signal.discount, y.dtype), ())
        else:
            c_t, gamma_t = jnp.reshape(jnp.asarray(signal, y.dtype), ()), state.gamma
        v_t = y[0]
        delta = c_t + gamma_t * v_t - state.v_tm1
        delta = jnp.where(state.started, delta, 0.0)
        grads = jax.tree.map(lambda e: -delta * e, state.trace)
        decay = gamma_t * state.lam
        trace = jax.tree.map(lambda e, g: decay * e + g, state.trace, grad_v)
        new_state = TDState(state.gamma, state.lam, v_t, trace, jnp.ones((), bool))
        return grads, 0.5 * delta**2, new_state

    def check(output_size: int) -> None:
        if output_size != 1:
            raise ValueError(f"output_size must be 1 for td_lambda (one prediction v_t), got {output_size}")

    def check_signal(signal: Any, output_size: int) -> None:
        if isinstance(signal, Cumulant):
            if jnp.size(jnp.asarray(signal.value)) != 1 or jnp.size(jnp.asarray(signal.discount)) != 1:
                raise ValueError(f"td_lambda: a Cumulant signal holds a scalar value and discount, got shapes "
                                 f"{jnp.shape(signal.value)} and {jnp.shape(signal.discount)}")
            return
        if isinstance(signal, Target) or jnp.size(jnp.asarray(signal)) != 1:
            raise ValueError(
                f"td_lambda: signal_t must be the scalar cumulant c_t (shape () or (1,)) or an objectives.Cumulant, "
                f"got {jnp.shape(signal)}"
            )

    return Objective(init, cotangent, update, check, check_signal, True, "td_lambda", kind="prediction",
                     hyperparams=TD_HYPERPARAMS, discount="gamma")


def declared(factory: Callable[..., Objective]) -> dict:
    """What an objective factory declares before it is called (attributes set by :func:`declare`): its
    ``kind``, its ``hyperparams`` with ranges, its ``discount`` and the ``loss_name`` tables use; the defaults
    of a supervised loss otherwise."""
    return {"kind": getattr(factory, "kind", "supervised"), "hyperparams": getattr(factory, "hyperparams", {}),
            "discount": getattr(factory, "discount", None),
            "loss_name": getattr(factory, "loss_name", f"{getattr(factory, '__name__', 'objective')} loss")}


def declare(factory: Callable[..., Objective], kind: str = "supervised", hyperparams: Optional[dict] = None,
            discount: Optional[str] = None, loss_name: Optional[str] = None) -> None:
    """Let configs know, before calling ``factory``, the kind of stream it serves, the per-run settings its
    state keeps (the factory's arguments of the same names), which of them is the stream's discount, and what
    its loss is called in tables."""
    factory.kind, factory.hyperparams, factory.discount = kind, dict(hyperparams or {}), discount
    factory.loss_name = loss_name or f"{factory.__name__} loss"


declare(squared_error, loss_name="squared error")
declare(softmax_cross_entropy, loss_name="cross-entropy (nats)")
declare(sigmoid_cross_entropy, loss_name="cross-entropy (nats)")
declare(td_lambda, "prediction", TD_HYPERPARAMS, "gamma", loss_name="squared TD error")

OBJECTIVES = Registry("objective")
for _name, _factory in {"squared_error": squared_error, "softmax_cross_entropy": softmax_cross_entropy,
                        "sigmoid_cross_entropy": sigmoid_cross_entropy, "td_lambda": td_lambda}.items():
    OBJECTIVES.register(_name, _factory)
register, names, factory, make = OBJECTIVES.register, OBJECTIVES.names, OBJECTIVES.factory, OBJECTIVES.make

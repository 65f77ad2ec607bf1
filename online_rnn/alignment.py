"""Gradient alignment: how close a learner's gradient is to the exact online gradient, step by step.

A learner's ``info.grads`` is its estimate of the gradient of the objective (Marschall, Cho & Savin, "A unified
framework of online learning algorithms for training recurrent neural networks", JMLR 2020, compare learners
this way; Menick et al. 2021 and Zucchet et al. 2023 measure it too). The *reference* is computed by a shadow
that follows the learner's own trajectory:

* ``exact(learner, objective)``: exact RTRL (:func:`online_rnn.learners.rtrl_credit`) on the learner's network
  (``learner.network(state)``, whose parameters are ``state.params["cell"]`` and whose carry is
  ``state.carry``). Before every step the shadow takes the learner's parameters, carry and normalisation
  statistics as they are before the step, so it sees the same inputs and the same parameter updates; it keeps
  only its own influence matrix ``d carry / d theta`` and its own objective state (TD(lambda)'s eligibility
  trace, built from exact gradients), and its update is never applied. Its gradient is then the exact online
  gradient of the same objective at the learner's parameters: ``dL_t/dtheta`` through the whole past of the
  trajectory, where each past step's Jacobian is taken at the parameters in force at that step (RTRL's
  definition). A learner that re-runs a window with the current parameters (T-BPTT) differs from it by O(step
  size) even when the window reaches back to the start; with a step size near 0 they coincide. Cost per step
  O(|s|^2 |theta|), memory O(|s| |theta|): small networks only.
* ``bptt_window(learner, objective, window)``: an approximation for networks where exact RTRL costs too much:
  the gradient of the step's loss by backpropagation through the learner's last ``window`` steps, re-run from
  the learner's carry ``window`` steps back with the current parameters (gradient stopped there), over the
  inputs the learner saw. It drops the influence from before the window and the change of parameters within
  it. Supervised objectives only (TD(lambda)'s eligibility trace would need every step's full gradient), and the
  network is the one at the current step for the whole window (hybrid networks: the stages that exist now).
  It costs O(window) cell steps on measured steps only, and O(window x carry) memory. Its error against exact
  RTRL is measured by running ``rtrl`` itself with this reference (``rtrl``'s gradient is exact, so its
  alignment with the window is the window's).

Measures, over all parameters and per group (``cell``, ``readout``, and the parts ``learner.cell_parts`` names:
the stages of a hybrid network, the layers of a stack), for learner gradient ``g`` and reference ``g*``:

* ``cosine``: ``<g, g*> / (|g| |g*|)``;
* ``norm_ratio``: ``|g| / |g*|``;
* ``sign``: the fraction of the entries with ``g*_i != 0`` where ``sign(g_i) == sign(g*_i)``.

Which steps count. A group's measures are taken only where both its ``g`` and its ``g*`` are non-zero (else the
cosine is undefined): the step is skipped for that group. Learners that do not update every step (strided
T-BPTT and BPTT report ``g = 0`` in between, then the window's summed gradient) are compared at their update
steps with the *sum* of the exact gradients since their previous update, which is what their update estimates
(the parameters do not change in between). Measurement is due every ``every`` steps and happens at the first
step from then on at which the learner updates (the same step for learners that update every step). With the
window reference the comparison is made at steps ``t % every == 0`` with that step's gradient only, so use the
exact reference for learners that update once per window.

Hybrid and constructive networks freeze their earlier stages and have units that do not exist yet. The
reference is the exact gradient of the whole network that exists at the step (all started stages, frozen ones
included; units not yet started have zero gradient). The learner follows the gradient of its learning stage
and the readout only, so its overall cosine is below 1 by the weight of the frozen stages' gradient, which the
learner ignores by design; the per-stage measures (``cosine_cell_stage<s>``) compare the learning stage with
the exact gradient of the same units, and frozen stages are skipped there (their ``g`` is zero). The stage
normalisation statistics are constants within a step, as in the learner.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from online_rnn import streaming
from online_rnn.learners.base import Learner, LearnerState, make_readout, param_dtype, tree_where
from online_rnn.learners.rtrl import rtrl_credit
from online_rnn.objectives import Objective

MEASURES = ("cosine", "norm_ratio", "sign")


class Reference(NamedTuple):
    """``init(learner_state) -> ref_state``; ``step(ref_state, pre, post, x_t, signal_t, now) -> (ref_state,
    g_ref, y_ref)`` with ``pre``/``post`` the learner's state before and after its step and ``now`` whether
    the gradient is needed at this step (a reference that must run every step ignores it); ``every_step``: the
    reference gives a gradient at every step (so gradients can be summed between a learner's updates)."""

    init: Callable[[LearnerState], Any]
    step: Callable[..., tuple[Any, Any, jax.Array]]
    name: str
    every_step: bool


def _check(learner: Learner) -> None:
    if not isinstance(learner, Learner) or learner.network is None or learner.options is None:
        raise ValueError(f"alignment: learner {getattr(learner, 'name', learner)!r} does not expose its network "
                         f"(build learners with online_rnn.learners.build, which records it)")


def _reference_objective(objective: Objective, state: LearnerState) -> Any:
    """The objective's initial state for the reference, with the per-run settings (TD's lam) of the learner."""
    obj = objective.init(state.params)
    fields = getattr(obj, "_fields", ())
    same = {f: getattr(state.objective, f) for f in objective.hyperparams if f in fields
            and f in getattr(state.objective, "_fields", ())}
    return obj._replace(**same) if same else obj


def _readout_path(learner: Learner):
    opts = learner.options
    in_norm = streaming.as_normalisation(opts.normalise_inputs, "normalise_inputs")
    feat_norm = streaming.as_normalisation(opts.normalise_features, "normalise_features")

    def inputs(pre: LearnerState, x_t: jax.Array) -> jax.Array:
        x = jnp.asarray(x_t).astype(param_dtype(pre.params["cell"]))
        return streaming.normalise(pre.stats.inputs, x) if in_norm is not None else x

    def features(post: LearnerState) -> Callable[[jax.Array], jax.Array]:
        # the statistics the learner normalised this step's features with: its own, after taking in h_t
        if feat_norm is None:
            return lambda h: h
        return lambda h: streaming.normalise(post.stats.features, h)

    return inputs, features


class ExactState(NamedTuple):
    influence: Any  # RTRLTrace of the learner's network
    objective: Any  # the reference's own objective state (exact eligibility trace for TD)


def exact(learner: Learner, objective: Objective) -> Reference:
    """Exact RTRL on the learner's network along its trajectory (see the module docstring)."""
    _check(learner)
    inputs, features = _readout_path(learner)

    def init(state: LearnerState) -> ExactState:
        cell = learner.network(state)
        ro_params = state.params["readout"]
        influence = rtrl_credit(cell).init(state.params["cell"], state.carry, ro_params)
        return ExactState(influence, _reference_objective(objective, state))

    def step(ref: ExactState, pre: LearnerState, post: LearnerState, x_t: jax.Array, signal_t: Any,
             now: Any = True) -> tuple[ExactState, Any, jax.Array]:
        cell = learner.network(pre)
        credit = rtrl_credit(cell)
        ro = make_readout(learner.options.readout, cell.hidden_size, learner.output_size)
        params = pre.params
        _, h_t, residuals = credit.forward(params["cell"], pre.carry, ref.influence, inputs(pre, x_t), pre.key,
                                           pre.t)
        feat = features(post)
        y_t, readout_vjp = jax.vjp(lambda p, h: ro.apply(p, feat(h)), params["readout"], h_t)
        dy = objective.cotangent(ref.objective, y_t, signal_t)
        g_readout, dh = readout_vjp(dy)
        g_cell, influence = credit.backward(residuals, dh)
        grads, _, obj = objective.update(ref.objective, y_t, signal_t, {"cell": g_cell, "readout": g_readout})
        return ExactState(influence, obj), grads, y_t

    return Reference(init, step, "exact", True)


class WindowState(NamedTuple):
    xs: jax.Array  # (window, input_size): the inputs the learner saw (normalised as it did), by t mod window
    carries: Any  # the learner's carry before each of those steps, leaves (window, ...)


def bptt_window(learner: Learner, objective: Objective, window: int) -> Reference:
    """Backpropagation through the learner's last ``window`` steps at the current parameters (an
    approximation of the exact gradient; see the module docstring)."""
    _check(learner)
    if objective.per_step_gradient:
        raise ValueError(f"alignment reference bptt_window serves supervised objectives only; {objective.name} "
                         f"needs every step's full gradient (use the exact reference)")
    inputs, features = _readout_path(learner)
    w = int(window)

    def init(state: LearnerState) -> WindowState:
        x0 = jnp.zeros((w, learner.input_size), param_dtype(state.params["cell"]))
        return WindowState(x0, jax.tree.map(lambda c: jnp.broadcast_to(c, (w,) + jnp.shape(c)), state.carry))

    def step(ref: WindowState, pre: LearnerState, post: LearnerState, x_t: jax.Array, signal_t: Any,
             now: Any = True) -> tuple[WindowState, Any, jax.Array]:
        t = pre.t
        slot = t % w
        x_in = inputs(pre, x_t)
        ref = WindowState(ref.xs.at[slot].set(x_in),
                          jax.tree.map(lambda a, c: a.at[slot].set(c), ref.carries, pre.carry))
        cell = learner.network(pre)
        ro = make_readout(learner.options.readout, cell.hidden_size, learner.output_size)
        params = pre.params

        def grads(_):
            order = (t + 1 + jnp.arange(w)) % w  # oldest first
            xs = ref.xs[order]
            start = jax.tree.map(lambda a: a[order[0]], ref.carries)  # carry before the oldest step
            # before the window fills, the slots not yet written hold the initial carry and are skipped
            valid = jnp.arange(w) >= w - jnp.minimum(t + 1, w)

            def last_output(p_cell):
                def body(carry, inp):
                    x, ok = inp
                    carry_t, h = cell.apply(p_cell, carry, x)
                    return tree_where(ok, carry_t, carry), h

                _, hs = lax.scan(body, lax.stop_gradient(start), (xs, valid))
                return hs[-1]

            h_t, cell_vjp = jax.vjp(last_output, params["cell"])
            feat = features(post)
            y_t, readout_vjp = jax.vjp(lambda p, h: ro.apply(p, feat(h)), params["readout"], h_t)
            dy = objective.cotangent(post.objective, y_t, signal_t)
            g_readout, dh = readout_vjp(dy)
            (g_cell,) = cell_vjp(dh)
            g, _, _ = objective.update(post.objective, y_t, signal_t, {"cell": g_cell, "readout": g_readout})
            return g, y_t

        def skip(_):
            zeros = jax.tree.map(jnp.zeros_like, params)
            return zeros, jnp.zeros((learner.output_size,), param_dtype(params["cell"]))

        g, y_t = lax.cond(now, grads, skip, None)
        return ref, g, y_t

    return Reference(init, step, f"bptt_window {w}", False)


# ------------------------------------------------------------------------------------------------- measures


def groups(learner: Learner, params: Any) -> dict:
    """Named parameter groups: ``""`` (all), ``cell``, ``readout``, ``cell_<part>`` (``learner.cell_parts``);
    groups without parameters are left out."""
    out = {"": params, "cell": params["cell"], "readout": params["readout"]}
    if learner.cell_parts is not None:
        out.update({f"cell_{k}": v for k, v in learner.cell_parts(params["cell"]).items()})
    return {k: v for k, v in out.items() if jax.tree.leaves(v)}


def group_names(learner: Learner, params: Any) -> list[str]:
    """The names of :func:`groups`, in its order (``params`` may be shapes: ``jax.ShapeDtypeStruct`` leaves)."""
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params)  # concrete, so the parts can be sliced
    return list(groups(learner, zeros))


def names(learner: Learner, params: Any) -> list[str]:
    """Names of the measures, in the order :func:`measure` returns them: ``cosine``, ``norm_ratio``, ``sign``,
    then ``cosine_cell``, ... (``<measure>`` for all parameters, ``<measure>_<group>`` per group)."""
    return [m + (f"_{g}" if g else "") for g in group_names(learner, params) for m in MEASURES]


def _stats(g: Any, r: Any) -> tuple[jax.Array, ...]:
    gl, rl = jax.tree.leaves(g), jax.tree.leaves(r)
    dot = sum(jnp.sum(a * b) for a, b in zip(gl, rl))
    gg = sum(jnp.sum(a * a) for a in gl)
    rr = sum(jnp.sum(b * b) for b in rl)
    agree = sum(jnp.sum((jnp.sign(a) == jnp.sign(b)) & (b != 0)) for a, b in zip(gl, rl))
    nonzero = sum(jnp.sum(b != 0) for b in rl)
    return dot, gg, rr, agree, nonzero


def measure(learner: Learner, g: Any, ref: Any) -> tuple[jax.Array, jax.Array]:
    """``(values, valid)``, both of shape ``(len(names),)``: the measures of every group, and whether the group's
    two gradients are both non-zero (values are 0 where not)."""
    gs, rs = groups(learner, g), groups(learner, ref)
    values, valid = [], []
    for name in gs:
        dot, gg, rr, agree, nonzero = _stats(gs[name], rs[name])
        ok = (gg > 0) & (rr > 0)
        safe = lambda x: jnp.where(ok, x, 1.0)  # noqa: E731
        cos = jnp.where(ok, dot / (jnp.sqrt(safe(gg)) * jnp.sqrt(safe(rr))), 0.0)
        ratio = jnp.where(ok, jnp.sqrt(safe(gg)) / jnp.sqrt(safe(rr)), 0.0)
        sign = jnp.where(ok, agree / jnp.maximum(nonzero, 1), 0.0)
        values += [cos, ratio, sign.astype(cos.dtype)]
        valid += [ok] * len(MEASURES)
    return jnp.stack(values), jnp.stack(valid)


# ------------------------------------------------------------------------------------------------- tracker


class TrackerState(NamedTuple):
    reference: Any
    pending: Any  # sum of the reference gradients since the learner's last update (exact reference only)
    due: jax.Array  # a measurement is due (set every `every` steps, cleared when taken)


class Tracker(NamedTuple):
    """``init(learner_state) -> TrackerState``; ``step(tstate, pre, post, x_t, signal_t, grads, t) -> (tstate,
    values, valid, y_ref)``; ``names``: what ``values`` holds; ``groups``: the parameter groups, in that order
    (``""`` for all parameters); ``reference``: the :class:`Reference`."""

    init: Callable[[LearnerState], TrackerState]
    step: Callable[..., tuple[TrackerState, jax.Array, jax.Array, jax.Array]]
    names: list
    groups: list
    reference: Reference


def tracker(learner: Learner, objective: Objective, every: int, window: Optional[int] = None) -> Tracker:
    """Alignment of ``learner`` every ``every`` steps with the exact reference (``window`` None) or a BPTT
    window of ``window`` steps (see the module docstring for which steps count)."""
    ref = exact(learner, objective) if window is None else bptt_window(learner, objective, window)
    shapes = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    measure_names = names(learner, shapes.params)

    def init(state: LearnerState) -> TrackerState:
        pending = jax.tree.map(jnp.zeros_like, state.params) if ref.every_step else ()
        return TrackerState(ref.init(state), pending, jnp.zeros((), bool))

    def step(ts: TrackerState, pre: LearnerState, post: LearnerState, x_t: jax.Array, signal_t: Any, grads: Any,
             t: jax.Array) -> tuple[TrackerState, jax.Array, jax.Array, jax.Array]:
        tick = t % every == 0
        reference, g_ref, y_ref = ref.step(ts.reference, pre, post, x_t, signal_t, tick)
        updated = jnp.any(jnp.stack([jnp.any(leaf != 0) for leaf in jax.tree.leaves(grads)]))
        if ref.every_step:
            summed = jax.tree.map(jnp.add, ts.pending, g_ref)
            due = ts.due | tick
            taken = due & updated
            pending = jax.tree.map(lambda s: jnp.where(updated, jnp.zeros_like(s), s), summed)
            new = TrackerState(reference, pending, due & ~updated)
        else:
            summed, taken = g_ref, tick & updated
            new = TrackerState(reference, (), ts.due)
        values, valid = measure(learner, grads, summed)
        return new, values, valid & taken, y_ref

    return Tracker(init, step, measure_names, group_names(learner, shapes.params), ref)

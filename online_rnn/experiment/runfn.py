"""One run as pure functions: ``init(seed, hparams) -> carry`` and ``step(carry, t) -> (carry, outputs)``, a
step being ``env.step -> learner.step -> env.feedback -> metric``. The runner vmaps (or batches runs-last) and
shards them; nothing here knows about sweeps, files or devices.

Random numbers depend on the seed only (common random numbers across learners and step sizes)::

    env_key = fold_in(PRNGKey(seed), 0)      # reset key; step t uses prng.fold_in(env_key, t)
    init_key = fold_in(PRNGKey(seed), 1)     # learner.init

The metric of a step is the squared error of the prediction to the stream's ``info[target]`` (prediction
streams), or the learner's loss (``target: loss``, supervised streams), with the step's weight. A run whose
prediction or error becomes NaN/inf has that step recorded in ``diverged_at`` and, from that step on,
contributes nothing more (its outputs are masked); its state is left to run on and means nothing.

With ``metric.alignment`` the run also carries a shadow that computes the exact online gradient along the
learner's trajectory (:mod:`online_rnn.alignment`), and every step outputs the alignment measures with a flag
saying whether they were taken at that step.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from online_rnn import alignment, prng
from online_rnn.experiment.build import build, build_objective
from online_rnn.experiment.schema import ConfigError, Experiment, LearnerSpec
from online_rnn.objectives import Target


class RunCarry(NamedTuple):
    env: Any
    learner: Any
    env_key: jax.Array
    diverged_at: jax.Array  # int32 step of the first non-finite prediction or error; -1 while finite
    shadow: Any = ()  # the alignment tracker's state (online_rnn.alignment), () without metric.alignment


class RunFunctions(NamedTuple):
    init: Any  # (seed, hparams) -> RunCarry
    step: Any  # (carry, t) -> (carry, (err, weight, logs, target)), + (alignment values, taken) with a tracker
    env: Any
    env_params: Any
    learner: Any
    tracker: Any = None  # alignment.Tracker with metric.alignment, else None


def alignment_tracker(exp: Experiment, learner: Any) -> Optional[alignment.Tracker]:
    """The alignment tracker of ``metric.alignment`` for ``learner`` (None without it)."""
    cfg = exp.metric.get("alignment")
    if not cfg:
        return None
    window = cfg["reference"]["bptt_window"] if isinstance(cfg["reference"], dict) else None
    return alignment.tracker(learner, build_objective(exp.objective), cfg["every"], window)


def set_hyperparams(state: Any, **values: Any) -> Any:
    """Set per-run settings in a learner state: a name that is a field of the objective's state (TD's ``lam``)
    is set there; any other (``learning_rate``, ``beta2``, ...) in every ``optax.inject_hyperparams`` state
    inside ``state.opt_state``. Values keep the dtype already in the state. Unknown names raise
    ``ValueError``."""
    found: set[str] = set()
    objective = state.objective
    fields = getattr(objective, "_fields", ())
    for name in [n for n in values if n in fields]:
        objective = objective._replace(**{name: jnp.asarray(values[name], jnp.asarray(getattr(objective, name)).dtype)})
        found.add(name)
    inject_types = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)

    def visit(node: Any) -> Any:
        if isinstance(node, inject_types):
            hps = dict(node.hyperparams)
            for key in hps:
                if key in values and key not in fields:
                    hps[key] = jnp.asarray(values[key], jnp.asarray(hps[key]).dtype)
                    found.add(key)
            return node._replace(hyperparams=hps, inner_state=visit(node.inner_state))
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(visit(child) for child in node))
        if isinstance(node, (list, tuple)):
            return type(node)(visit(child) for child in node)
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        return node

    opt_state = visit(state.opt_state)
    missing = sorted(set(values) - found)
    if missing:
        raise ValueError(f"set_hyperparams: {', '.join(missing)} not found (objective settings are fields of its "
                         f"state; optimizer settings need optax.inject_hyperparams)")
    return state._replace(opt_state=opt_state, objective=objective)


def run_functions(exp: Experiment, spec: LearnerSpec) -> RunFunctions:
    """The unbatched init and step of one run of ``spec``."""
    env, env_params, learner = build(exp, spec)
    target, logs, steps = exp.metric["target"], exp.metric["log"], spec.steps
    tracker = alignment_tracker(exp, learner)

    def init(seed: jax.Array, hparams: dict) -> RunCarry:
        base = jax.random.PRNGKey(seed)
        env_key = jax.random.fold_in(base, 0)
        _, env_state = env.reset(env_key, env_params)
        state = learner.init(jax.random.fold_in(base, 1))
        state = set_hyperparams(state, **hparams)
        shadow = tracker.init(state) if tracker is not None else ()
        return RunCarry(env_state, state, env_key, jnp.asarray(-1, jnp.int32), shadow)

    def metric(info_l: Any, info: dict, signal: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(error, weight, target value) of one step; the target value (0 for the loss) gives the baseline."""
        if target == "loss":
            err = jnp.asarray(info_l.loss)
            weight = signal.weight if isinstance(signal, Target) else 1.0
            return err, jnp.asarray(weight, err.dtype), jnp.zeros_like(err)
        if target not in info:
            raise ConfigError(f"metric.target: the stream gives no {target!r}; it gives: {', '.join(info)}")
        y = info[target].astype(info_l.prediction.dtype)
        err = (info_l.prediction[0] - y) ** 2
        return err, jnp.ones_like(err), y

    def step(carry: RunCarry, t: jax.Array) -> tuple[RunCarry, tuple]:
        key_t = prng.fold_in(carry.env_key, t)  # unrolled Threefry: jax.random's is a slow loop on CPU
        obs, env_state, signal, info = env.step(key_t, carry.env, env_params)
        # every run steps once per scan step from t = 0, so the learner's step count is the scan's t; taking it
        # from there keeps it shared by all runs (learners that select by it, e.g. hybrid's learning stage,
        # then slice with one index for the whole sweep instead of one per run)
        state = carry.learner
        if "t" in getattr(state, "_fields", ()):
            state = state._replace(t=t.astype(state.t.dtype))
        pre = state
        state, info_l = learner.step(state, obs, signal)
        shadow = ()
        if tracker is not None:
            shadow, a_values, a_taken, _ = tracker.step(carry.shadow, pre, state, obs, signal, info_l.grads, t)
        env_state = env.feedback(env_state, env_params, info_l.prediction)
        err, weight, y = metric(info_l, info, signal)
        bad = ~(jnp.all(jnp.isfinite(info_l.prediction)) & jnp.isfinite(err))
        active = (t < steps) & (carry.diverged_at < 0)
        ok = active & ~bad
        for name in logs:
            if name not in info:
                raise ConfigError(f"metric.log: the stream gives no {name!r}; it gives: {', '.join(info)}")
            if jnp.shape(info[name]) != ():
                raise ConfigError(f"metric.log: {name!r} is not a scalar (shape {jnp.shape(info[name])})")
        logged = jnp.stack([jnp.asarray(info[n], jnp.float32) for n in logs]) if logs else jnp.zeros((0,))
        # no select over the state: a diverged run keeps stepping (on non-finite numbers) with its outputs
        # masked, which costs nothing extra, where freezing it cost a pass over the whole state every step
        new = RunCarry(env=env_state, learner=state, env_key=carry.env_key,
                       diverged_at=jnp.where(active & bad, t, carry.diverged_at).astype(jnp.int32), shadow=shadow)
        zero = jnp.zeros_like(err)
        f32 = jnp.float32
        out = (jnp.where(ok, err, zero).astype(f32), jnp.where(ok, weight, zero).astype(f32),
               jnp.where(t < steps, logged, 0.0), jnp.where(ok, y, zero).astype(f32))
        if tracker is not None:  # the measures in the parameters' dtype (float64 under x64), 0 where not taken
            taken = a_taken & ok
            out += (jnp.where(taken, a_values, jnp.zeros_like(a_values)), taken.astype(a_values.dtype))
        return new, out

    return RunFunctions(init, step, env, env_params, learner, tracker)


def hparams_example(spec: LearnerSpec) -> dict:
    return {k: jnp.asarray(v[0], jnp.float32) for k, v in spec.sweep.items() if k != "seeds"}


def check_step(exp: Experiment, spec: LearnerSpec) -> None:
    """Trace one init and one step of a run with ``jax.eval_shape`` (nothing compiles); raises on misfits."""
    fns = run_functions(exp, spec)
    jax.eval_shape(lambda: fns.step(fns.init(jnp.int32(0), hparams_example(spec)), jnp.int32(0)))


def lower_step(exp: Experiment, spec: LearnerSpec, fns: Optional[RunFunctions] = None) -> Any:
    """The unbatched ``learner.step`` of ``spec``, lowered (abstract inputs; compile it for its cost)."""
    fns = fns or run_functions(exp, spec)
    state, obs, signal = abstract_step_inputs(fns)
    return jax.jit(fns.learner.step).lower(state, obs, signal)


def abstract_step_inputs(fns: RunFunctions) -> tuple[Any, Any, Any]:
    """Shapes and dtypes of a learner state and of one step's observation and signal (nothing runs)."""
    state = jax.eval_shape(fns.learner.init, jax.random.PRNGKey(0))
    obs, _, signal, _ = jax.eval_shape(
        lambda: fns.env.step(jax.random.PRNGKey(0), fns.env.reset(jax.random.PRNGKey(0), fns.env_params)[1],
                             fns.env_params)
    )
    return state, obs, signal


def lower_shadow_step(exp: Experiment, spec: LearnerSpec, fns: Optional[RunFunctions] = None) -> Any:
    """The unbatched alignment tracker step of ``spec`` (shadow and measures), lowered; None without
    ``metric.alignment``. Its FLOPs are the shadow's cost per step, apart from the learner's."""
    fns = fns or run_functions(exp, spec)
    if fns.tracker is None:
        return None
    state, obs, signal = abstract_step_inputs(fns)
    shadow = jax.eval_shape(fns.tracker.init, state)
    return jax.jit(fns.tracker.step).lower(shadow, state, state, obs, signal, state.params, jnp.int32(0))


def step_flops(lowered_step: Any) -> tuple[Optional[float], bool]:
    """FLOPs of one unbatched ``learner.step`` from XLA's cost analysis of the compiled step, and whether the
    compiled step holds a loop (XLA counts a loop body once, so the count is then a lower bound)."""
    compiled = lowered_step.compile()
    text = compiled.as_text() or ""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without cost analysis)
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    return flops, bool(re.search(r"\bwhile\(", text))

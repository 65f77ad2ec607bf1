"""Compiled, sharded, resumable sweeps.

One run is one ``lax.scan`` over time of ``env.step -> learner.step -> env.feedback -> metric``. All runs of one
learner entry (seeds x step sizes x lambda x optimizer hyperparameters, flattened into one run axis) are
``vmap``ped inside one compiled function, and that axis is split over the host's devices with ``shard_map``
(each device runs its own runs; nothing is communicated, so results do not depend on the number of devices).
Shape-changing settings are separate learner entries, hence separate compilations.

Random numbers depend on the seed only (common random numbers across learners and step sizes)::

    env_key = fold_in(PRNGKey(seed), 0)      # reset key; step t uses prng.fold_in(env_key, t)
    init_key = fold_in(PRNGKey(seed), 1)     # learner.init

Runs are scanned in chunks of ``chunk`` steps by one compiled function that takes the step offset as an array
(no retracing between chunks). The chunk sums each run's per-step errors over blocks of steps that never straddle
a learning-curve bin or the final window (:func:`block_size`; e.g. 10k steps), so little leaves the device; the
host adds the block sums in float64 (float32 sums over 50M steps would lose digits). After each chunk the
carried state and the host accumulators are saved atomically to ``<out>/learners/<label>/checkpoint.npz``;
running the same config again resumes there and ends bit-identical to an uninterrupted run.

Layout. For sweeps of 16 runs or more on the CPU, the run axis is the *last* axis of every carried array and
the step is evaluated with :func:`online_rnn.batching.batch_last` (every fused loop then runs over state
entries x runs with the runs in the innermost, vectorised stride: 2.5-5x the seed-major ``vmap`` at the paper's
shapes); single runs, learners with large states (exact RTRL beyond ~20 units) and other backends use
``jax.vmap`` (:func:`resolve_layout`). Both evaluate the same unbatched step and agree to float round-off; for a
given sweep the layout is fixed, so its results are bit for bit the same on any number of devices. Checkpoints
store every array run-major whatever the layout.

Divergence: a run whose prediction or error becomes NaN/inf has that step recorded in ``diverged_at`` and, from
that step on, contributes nothing more (its outputs are masked); its state is left to run on and means nothing.
The other runs are untouched.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from online_rnn import batching, prng
from online_rnn.experiment import config as cfg
from online_rnn.experiment.config import ConfigError, Experiment, LearnerSpec
from online_rnn.objectives import Target

CONFIG_FILE = "config.json"
CHECKPOINT = "checkpoint.npz"
PROGRESS = "progress.json"
RESULTS = "results.npz"
SUMMARY = "summary.json"
FORMAT_VERSION = 1


class RunCarry(NamedTuple):
    env: Any
    learner: Any
    env_key: jax.Array
    diverged_at: jax.Array  # int32 step of the first non-finite prediction or error; -1 while finite


# ------------------------------------------------------------------------------------------- hyperparameters


def set_hyperparams(state: Any, **values: Any) -> Any:
    """Set per-run hyperparameters in a learner state: ``lam`` / ``gamma`` in the objective state (TD), and any
    other name (``learning_rate``, ``beta2``, ...) in every ``optax.inject_hyperparams`` state found inside
    ``state.opt_state``. Values keep the dtype already in the state. Unknown names raise ``ValueError``."""
    found: set[str] = set()
    objective = state.objective
    fields = getattr(objective, "_fields", ())
    for name in ("lam", "gamma"):
        if name in values and name in fields:
            old = getattr(objective, name)
            objective = objective._replace(**{name: jnp.asarray(values[name], jnp.asarray(old).dtype)})
            found.add(name)
    inject_types = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)

    def visit(node: Any) -> Any:
        if isinstance(node, inject_types):
            hps = dict(node.hyperparams)
            for key in hps:
                if key in values:
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
        raise ValueError(
            f"set_hyperparams: {', '.join(missing)} not found (build the optimizer with optax.inject_hyperparams; "
            f"lam and gamma need a td_lambda objective)"
        )
    return state._replace(opt_state=opt_state, objective=objective)


# ------------------------------------------------------------------------------------------------ one run


class RunFunctions(NamedTuple):
    init: Any  # (seed, hparams) -> RunCarry
    step: Any  # (carry, t) -> (carry, (err, weight, logs))
    env: Any
    env_params: Any
    learner: Any


def run_functions(exp: Experiment, spec: LearnerSpec) -> RunFunctions:
    """The unbatched init and step of one run of ``spec`` (pure functions; the runner vmaps and shards them)."""
    env, env_params, learner = cfg.build(exp, spec)
    kind, target, logs, steps = exp.kind, exp.metric["target"], exp.metric["log"], spec.steps

    def init(seed: jax.Array, hparams: dict) -> RunCarry:
        base = jax.random.PRNGKey(seed)
        env_key = jax.random.fold_in(base, 0)
        _, env_state = env.reset(env_key, env_params)
        state = learner.init(jax.random.fold_in(base, 1))
        state = set_hyperparams(state, **hparams)
        return RunCarry(env_state, state, env_key, jnp.asarray(-1, jnp.int32))

    def metric(info_l: Any, info: dict, signal: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(error, weight, target) of one step; the target (0 for supervised streams) gives the baseline."""
        if kind == "prediction":
            if target not in info:
                raise ConfigError(f"metric.target: the stream gives no {target!r}; it gives: {', '.join(info)}")
            y = info[target].astype(info_l.prediction.dtype)
            err = (info_l.prediction[0] - y) ** 2
            return err, jnp.ones_like(err), y
        err = jnp.asarray(info_l.loss)
        weight = signal.weight if isinstance(signal, Target) else 1.0
        return err, jnp.asarray(weight, err.dtype), jnp.zeros_like(err)

    def step(carry: RunCarry, t: jax.Array) -> tuple[RunCarry, tuple]:
        key_t = prng.fold_in(carry.env_key, t)  # unrolled Threefry: jax.random's is a slow loop on CPU
        obs, signal, info, env_state = env.step(key_t, carry.env, env_params)
        # every run steps once per scan step from t = 0, so the learner's step count is the scan's t; taking it
        # from there keeps it shared by all runs (learners that select by it, e.g. hybrid's learning stage,
        # then slice with one index for the whole sweep instead of one per run)
        state = carry.learner
        if "t" in getattr(state, "_fields", ()):
            state = state._replace(t=t.astype(state.t.dtype))
        state, info_l = learner.step(state, obs, signal)
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
        new = RunCarry(
            env=env_state,
            learner=state,
            env_key=carry.env_key,
            diverged_at=jnp.where(active & bad, t, carry.diverged_at).astype(jnp.int32),
        )
        zero = jnp.zeros_like(err)
        f32 = jnp.float32
        out = (jnp.where(ok, err, zero).astype(f32), jnp.where(ok, weight, zero).astype(f32),
               jnp.where(t < steps, logged, 0.0), jnp.where(ok, y, zero).astype(f32))
        return new, out

    return RunFunctions(init, step, env, env_params, learner)


def _hparams_example(spec: LearnerSpec) -> dict:
    return {k: jnp.asarray(v[0], jnp.float32) for k, v in spec.sweep.items() if k != "seeds"}


def check_step(exp: Experiment, spec: LearnerSpec) -> None:
    """Trace one init and one step of a run with ``jax.eval_shape`` (nothing compiles); raises on misfits."""
    fns = run_functions(exp, spec)
    jax.eval_shape(lambda: fns.step(fns.init(jnp.int32(0), _hparams_example(spec)), jnp.int32(0)))


def lower_step(exp: Experiment, spec: LearnerSpec, fns: Optional[RunFunctions] = None) -> Any:
    """The unbatched ``learner.step`` of ``spec``, lowered (abstract inputs; compile it for its cost)."""
    fns = fns or run_functions(exp, spec)
    state = jax.eval_shape(fns.learner.init, jax.random.PRNGKey(0))
    obs, signal = jax.eval_shape(
        lambda: fns.env.step(jax.random.PRNGKey(0), fns.env.reset(jax.random.PRNGKey(0), fns.env_params)[1],
                             fns.env_params)[:2]
    )
    return jax.jit(fns.learner.step).lower(state, obs, signal)


def step_flops(lowered_step: Any) -> tuple[Optional[float], bool]:
    """FLOPs of one unbatched ``learner.step`` from XLA's cost analysis of the compiled step, and whether the
    compiled step holds a loop (XLA counts a loop body once, so the count is then a lower bound)."""
    compiled = lowered_step.compile()
    text = compiled.as_text() or ""
    return _flops_of(compiled), bool(re.search(r"\bwhile\(", text))


def _flops_of(compiled: Any) -> Optional[float]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without cost analysis)
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


# ---------------------------------------------------------------------------------------------- accumulators


def block_size(steps: int, bins: int, window: int, chunk: int) -> int:
    """The largest number of steps that divides the chunk, the run and every bin and window boundary: the
    compiled chunk sums its per-step outputs over blocks of this many steps, so that only ``chunk / block``
    numbers per run and output leave the device, and each block lies inside one bin."""
    g = math.gcd(chunk, steps, steps - window)
    for b in range(1, bins):
        g = math.gcd(g, -(-b * steps // bins))
    return max(g, 1)


class Blocks(NamedTuple):
    """Per-run sums over blocks of steps of one chunk: arrays (runs, n_blocks), ``logs`` (runs, n_blocks, L);
    ``last_log`` (runs, L) the logged values at the chunk's last step inside the run."""

    err: Any
    weight: Any
    target: Any
    target_sq: Any
    logs: Any
    last_log: Any


class Accumulators:
    """Host-side float64 sums of every run's outputs: binned curves, the final window, logs, the target's
    moments over the window. They take block sums (:class:`Blocks`) whose blocks never straddle a bin or the
    window's start (:func:`block_size`)."""

    NAMES = ("bin_err", "bin_weight", "bin_log", "bin_count", "win_err", "win_weight", "last_log", "win_target",
             "win_target_sq")

    def __init__(self, n_runs: int, steps: int, bins: int, window: int, n_logs: int):
        self.steps, self.bins, self.window = steps, bins, window
        self.bin_err = np.zeros((n_runs, bins))
        self.bin_weight = np.zeros((n_runs, bins))
        self.bin_log = np.zeros((n_runs, n_logs, bins))
        self.bin_count = np.zeros((bins,))
        self.win_err = np.zeros((n_runs,))
        self.win_weight = np.zeros((n_runs,))
        self.last_log = np.full((n_runs, n_logs), np.nan)
        self.win_target = np.zeros((n_runs,))  # sums of the target over the window: the best constant's error
        self.win_target_sq = np.zeros((n_runs,))

    def bin_edges(self) -> np.ndarray:
        """End step (exclusive) of every bin."""
        return np.array([self._bin_start(b + 1) for b in range(self.bins)], np.int64)

    def _bin_start(self, b: int) -> int:
        return -(-b * self.steps // self.bins)  # first t with t * bins // steps >= b

    def add(self, t0: int, block: int, sums: Blocks) -> None:
        """Add the block sums of a chunk starting at step ``t0``; block ``j`` covers steps
        ``t0 + j * block .. t0 + (j + 1) * block - 1``."""
        err, weight, target, target_sq, logs = (
            np.asarray(a, np.float64) for a in (sums.err, sums.weight, sums.target, sums.target_sq, sums.logs)
        )
        starts = t0 + block * np.arange(err.shape[1], dtype=np.int64)
        starts = starts[starts < self.steps]
        bins = starts * self.bins // self.steps
        for b in np.unique(bins):
            cols = np.flatnonzero(bins == b)
            self.bin_err[:, b] += err[:, cols].sum(1)
            self.bin_weight[:, b] += weight[:, cols].sum(1)
            self.bin_log[:, :, b] += logs[:, cols].sum(1)
            self.bin_count[b] += block * cols.size
        cols = np.flatnonzero(starts >= self.steps - self.window)
        if cols.size:
            self.win_err += err[:, cols].sum(1)
            self.win_weight += weight[:, cols].sum(1)
            self.win_target += target[:, cols].sum(1)
            self.win_target_sq += target_sq[:, cols].sum(1)
        if logs.shape[2] and starts.size:
            self.last_log = np.asarray(sums.last_log, np.float64)

    def state(self) -> dict:
        return {f"acc_{k}": getattr(self, k) for k in self.NAMES}

    def restore(self, data: Any) -> None:
        for k in self.NAMES:
            want = getattr(self, k)
            got = np.asarray(data[f"acc_{k}"])
            if got.shape != want.shape:
                raise ConfigError(f"checkpoint accumulator {k} has shape {got.shape}, expected {want.shape}")
            setattr(self, k, got.astype(np.float64))


# ---------------------------------------------------------------------------------------------- files


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    _atomic_write(path, lambda fh: fh.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode()))


def write_npz(path: Path, arrays: dict) -> None:
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def check_results_folder(out: Path, exp: Experiment) -> None:
    """Refuse a results folder that holds results of a different config (one-line error naming the first
    differing keys)."""
    stored = out / CONFIG_FILE
    if not stored.exists():
        if out.exists() and any(p.suffix == ".npz" for p in out.rglob("*.npz")):
            raise ConfigError(f"results folder {out} holds results but no {CONFIG_FILE}; use another --out")
        return
    try:
        data = json.loads(stored.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"results folder {out}: unreadable {CONFIG_FILE} ({err}); use another --out") from None
    if data.get("hash") != exp.hash:
        diff = sorted(_differences(data.get("config", {}), exp.resolved), key=lambda k: (k.count("."), k))
        where = f" (differs at: {', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''})" if diff else ""
        raise ConfigError(
            f"results folder {out} belongs to a different config{where}; use another --out or delete the folder"
        )


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}" if path else key)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _differences(x, y, f"{path}.{i}")
        return out
    return [] if a == b else [path or "<root>"]


def group_dir_name(label: str) -> str:
    """Where a learner's files live inside a results folder."""
    return f"learners/{label}"


def group_dir(out: Path, spec: LearnerSpec) -> Path:
    return out / group_dir_name(spec.label)


# ----------------------------------------------------------------------------------------------- groups


# Compiled functions of this process, by everything they depend on (not the swept values, which are inputs):
# a resumed or repeated sweep in the same process does not compile again. The disk cache of the CLI
# (jax_compilation_cache_dir) does the same across processes.
_COMPILED: dict[str, tuple] = {}
_COMPILED_MAX = 64


def compile_key(exp: Experiment, spec: LearnerSpec, n_devices: int, n_padded: int, layout: str) -> str:
    learner = {k: v for k, v in exp.resolved["learners"][spec.index].items()
               if k not in ("label", "sweep", "window", "bins")}
    key = {
        "env": exp.resolved["env"],
        "objective": exp.resolved["objective"],
        "metric": {"target": exp.metric["target"], "log": exp.metric["log"]},
        "learner": learner,
        "hparams": spec.hparam_names,
        "block": block_size(spec.steps, spec.bins, spec.window, spec.chunk),
        "runs": n_padded,
        "devices": n_devices,
        "layout": layout,
        "x64": bool(jax.config.jax_enable_x64),
        "backend": jax.default_backend(),
    }
    return json.dumps(key, sort_keys=True)


def _mesh(n_runs: int, devices: Optional[list] = None) -> Mesh:
    """One device per :data:`RUN_QUANTUM` runs, at most every device (of ``devices``, default all): a sweep of
    fewer runs stays on one device (and may run beside another sweep)."""
    devices = list(devices or jax.devices())
    devices = devices[: max(1, min(len(devices), -(-n_runs // RUN_QUANTUM)))]
    return Mesh(np.array(devices), ("runs",))


LAYOUTS = ("auto", "runs_last", "vmap")

# With the runs last, a device's run axis is padded to a multiple of this many runs: LLVM vectorises the loops
# over it 16 float32 (8 float64) lanes wide with 512-bit vectors, and a run axis that is not a multiple leaves
# some runs to the scalar remainder loop, whose exp/tanh/log round differently from the vector ones. Padded,
# every run takes the vector path whatever the number of devices, and a run's numbers do not depend on it.
RUN_QUANTUM = 16

# XLA options for the CPU backend, each measured on the sweeps here (columnar 7, 64 runs per core):
# * no YNNPACK library fusions: XLA hands the small gate reductions to YNNPACK, which ran them 2x slower than
#   its own loops;
# * 512-bit vectors where the CPU has them (LLVM keeps to 256 by default): 1.5-2x on the runs-last loops;
# * region analysis in copy insertion: fewer copies of the loop-carried state, about 10%.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_cpu_prefer_vector_width": 512,
    "xla_cpu_copy_insertion_use_region_analysis": True,
}


# ``auto`` keeps a learner whose per-run state is larger than this many numbers seed-major: its loops are long
# within one run already (exact RTRL beyond ~20 units), and padding its run axis would cost more than it gains.
RUNS_LAST_MAX_STATE = 1 << 17


def resolve_layout(layout: str, n_runs: int = RUN_QUANTUM, state_size: int = 0) -> str:
    """The layout of a sweep of ``n_runs`` runs of ``state_size`` numbers each: ``auto`` is ``runs_last`` on the
    CPU for sweeps of at least :data:`RUN_QUANTUM` runs of small learners, else ``vmap`` (a single run, or a
    GPU/TPU, where XLA picks its own layouts). The choice depends on the sweep, never on the number of devices,
    so it is the same on one machine, on several, or resumed."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: unknown {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if layout == "auto":
        small = n_runs >= RUN_QUANTUM and state_size <= RUNS_LAST_MAX_STATE
        return "runs_last" if jax.default_backend() == "cpu" and small else "vmap"
    return layout


def compiler_options() -> dict:
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


class Group:
    """All runs of one learner entry: one compiled chunk function, sharded over devices."""

    def __init__(self, exp: Experiment, spec: LearnerSpec, layout: str = "auto", devices: Optional[list] = None):
        self.exp, self.spec = exp, spec
        self.fns = run_functions(exp, spec)
        self.grid = spec.grid()
        self.n_runs = len(self.grid)
        one_run = jax.eval_shape(self.fns.init, jnp.int32(0), _hparams_example(spec))
        self.layout = resolve_layout(layout, self.n_runs, sum(int(np.prod(x.shape)) for x in jax.tree.leaves(one_run)))
        self.quantum = RUN_QUANTUM if self.layout == "runs_last" else 1
        self.block = block_size(spec.steps, spec.bins, spec.window, spec.chunk)
        self.n_traces = 0
        self.compile_seconds = 0.0
        self.flops: Optional[float] = None
        self.flops_lower_bound = False
        self._chunk = None
        self._init = None
        self.place(devices)

    def place(self, devices: Optional[list] = None) -> None:
        """Put the sweep on ``devices`` (default: as many of all devices as it fills); before compiling."""
        self.mesh = _mesh(self.n_runs, devices)
        self.n_devices = self.mesh.devices.size
        per_device = -(-self.n_runs // self.n_devices)
        self.n_padded = -(-per_device // self.quantum) * self.quantum * self.n_devices
        pad = [self.grid[0]] * (self.n_padded - self.n_runs)  # copies of run 0, dropped from results
        rows = self.grid + pad
        self.seeds = np.array([r["seed"] for r in rows], np.int32)
        self.hparams = {k: np.array([r[k] for r in rows], np.float32) for k in self.spec.hparam_names}
        self.sharded = NamedSharding(self.mesh, P("runs"))
        self.replicated = NamedSharding(self.mesh, P())
        # run-major shapes of the carry (the checkpoint's form) and each leaf's run axis in the layout
        self._run_major = jax.eval_shape(self._init_local, self.seeds, dict(self.hparams))
        self._specs = jax.tree.map(self._spec, self._run_major)
        self._shardings = jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), self._specs)

    # -- layout
    def _spec(self, leaf: Any) -> P:
        """Where the run axis is sharded: first (vmap) or last (runs_last)."""
        if self.layout == "vmap":
            return P("runs")
        return P(*([None] * (len(leaf.shape) - 1)), "runs")

    def _to_layout(self, x: np.ndarray) -> np.ndarray:
        return x if self.layout == "vmap" else np.moveaxis(x, 0, -1)

    def _to_run_major(self, x: np.ndarray) -> np.ndarray:
        return x if self.layout == "vmap" else np.moveaxis(x, -1, 0)

    # -- the compiled functions
    def _chunk_local(self, carry: RunCarry, t0: jax.Array) -> tuple[RunCarry, Blocks]:
        self.n_traces += 1  # counts traces: one per compilation, none between chunks
        chunk, g = self.spec.chunk, self.block
        ts = t0 + jnp.arange(chunk, dtype=jnp.int32)
        last = jnp.clip(self.spec.steps - 1 - t0, 0, chunk - 1)  # the chunk's last step inside the run

        def sums(err, weight, logs, y, first):  # per-step outputs (chunk, ...) -> block sums, runs first
            blocks = lambda x: first(x.reshape((chunk // g, g) + x.shape[1:]).sum(1))  # noqa: E731
            return Blocks(blocks(err), blocks(weight), blocks(y), blocks(y * y), blocks(logs), first(logs[last]))

        if self.layout == "runs_last":
            step = batching.batch_last(self.fns.step, in_axes=(-1, None))
            carry, outs = jax.lax.scan(step, carry, ts)  # outputs (chunk, ..., runs)
            return carry, sums(*outs, first=lambda x: jnp.moveaxis(x, -1, 0))

        def one(c: RunCarry) -> tuple[RunCarry, Blocks]:
            c, outs = jax.lax.scan(self.fns.step, c, ts)
            return c, sums(*outs, first=lambda x: x)

        return jax.vmap(one)(carry)

    def _init_local(self, seeds: jax.Array, hparams: dict) -> RunCarry:
        return jax.vmap(self.fns.init)(seeds, hparams)  # for shapes only (abstract_carry)

    def abstract_carry(self) -> RunCarry:
        def leaf(s: Any, spec: P) -> jax.ShapeDtypeStruct:
            shape = s.shape if self.layout == "vmap" else s.shape[1:] + s.shape[:1]
            return jax.ShapeDtypeStruct(shape, s.dtype, sharding=NamedSharding(self.mesh, spec))

        return jax.tree.map(leaf, self._run_major, self._specs)

    def lower(self, flops: bool = True) -> tuple[Any, Any, Any]:
        """Trace and lower the init and chunk functions, and the unbatched step for its FLOPs (on the calling
        thread); compile them with :meth:`compile` (which may run on a worker thread). Init is compiled
        unbatched and called once per run: vmapping it over runs doubles its compile time (mostly the random
        draws of the initialisation) for no gain, since it runs once."""
        sharded = jax.shard_map(self._chunk_local, mesh=self.mesh, in_specs=(self._specs, P()),
                                out_specs=(self._specs, P("runs")), check_vma=False)
        chunk = jax.jit(sharded, donate_argnums=0)
        t0 = jax.ShapeDtypeStruct((), jnp.int32, sharding=self.replicated)
        seed = jax.ShapeDtypeStruct((), jnp.int32)
        hps = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in self.hparams}
        step = lower_step(self.exp, self.spec, self.fns) if flops else None
        return jax.jit(self.fns.init).lower(seed, hps), chunk.lower(self.abstract_carry(), t0), step

    def compile(self, lowered: tuple[Any, Any, Any]) -> None:
        start = time.perf_counter()
        init, chunk, step = lowered
        self._init = init.compile()
        self._chunk = chunk.compile(compiler_options=compiler_options())
        if step is not None:
            self.flops, self.flops_lower_bound = step_flops(step)
        self.compile_seconds = time.perf_counter() - start

    def from_cache(self, flops: bool) -> bool:
        """Take the compiled functions from this process's cache if they are there (with FLOPs if wanted)."""
        hit = _COMPILED.get(self._key())
        if hit is None or (flops and hit[2] is None):
            return False
        self._init, self._chunk, self.flops, self.flops_lower_bound = hit
        return True

    def to_cache(self) -> None:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[self._key()] = (self._init, self._chunk, self.flops, self.flops_lower_bound)

    def _key(self) -> str:
        devices = [d.id for d in self.mesh.devices.flat]  # a compiled sweep runs on the devices it was built for
        return compile_key(self.exp, self.spec, self.n_devices, self.n_padded, self.layout) + f"|{devices}"

    # -- state
    def init_carry(self) -> RunCarry:
        """Initial state of every run (run ``i`` from its seed and hyperparameters), split over devices."""
        carries = [
            self._init(np.int32(self.seeds[i]), {k: np.float32(v[i]) for k, v in self.hparams.items()})
            for i in range(self.n_runs)
        ]
        leaves = [np.stack(xs) for xs in zip(*(jax.tree.leaves(jax.device_get(c)) for c in carries))]
        return self.carry_from_leaves(leaves)

    def run_chunk(self, carry: RunCarry, t0: int) -> tuple[RunCarry, tuple]:
        # a no-op for leaves already split over the runs axis; XLA hands back empty leaves replicated
        carry = jax.device_put(carry, self._shardings)
        return self._chunk(carry, jax.device_put(np.int32(t0), self.replicated))

    def carry_leaves(self, carry: RunCarry) -> list[np.ndarray]:
        """Every carried array, run-major (``[run, ...]``) and without the padding runs: the checkpoint's form."""
        leaves = jax.tree.leaves(carry)
        return [self._to_run_major(np.asarray(jax.device_get(leaf)))[: self.n_runs] for leaf in leaves]

    def carry_from_leaves(self, leaves: list[np.ndarray]) -> RunCarry:
        """The carry from run-major arrays (:meth:`carry_leaves`), padded, in the layout, split over devices."""
        want, treedef = jax.tree.flatten(self._run_major)
        shardings = jax.tree.leaves(self._shardings)
        if len(leaves) != len(want):
            raise ConfigError(f"checkpoint of {self.spec.label} has {len(leaves)} arrays, expected {len(want)}")
        out = []
        for leaf, spec, sharding in zip(leaves, want, shardings):
            if leaf.shape[1:] != spec.shape[1:] or leaf.shape[0] != self.n_runs or leaf.dtype != spec.dtype:
                raise ConfigError(
                    f"checkpoint of {self.spec.label} does not match the learner (array {leaf.shape} {leaf.dtype}, "
                    f"expected {(self.n_runs,) + spec.shape[1:]} {spec.dtype}); delete it to start over"
                )
            pad = np.repeat(leaf[:1], self.n_padded - self.n_runs, axis=0)
            full = np.concatenate([leaf, pad]) if len(pad) else leaf
            out.append(jax.device_put(self._to_layout(full), sharding))
        return jax.tree.unflatten(treedef, out)


# ------------------------------------------------------------------------------------------------- run


@dataclass
class RunReport:
    out: Path
    complete: bool
    labels_done: list[str]
    seconds: float  # wall time of the call
    compile_seconds: float = 0.0  # of which tracing and compiling (before any run starts)
    traces: dict = field(default_factory=dict)  # label -> traces of its chunk function in this call


def run(
    exp: Experiment,
    out: str | Path,
    progress: bool = True,
    max_chunks: Optional[int] = None,
    flops: bool = True,
    workers: Optional[int] = None,
    only: Optional[list[str]] = None,
    layout: str = "auto",
) -> RunReport:
    """Run (or resume) every learner of ``exp``, writing results to ``out``. ``max_chunks`` stops after that
    many chunks in this call (the state is saved; calling again resumes). Compilation of the learners runs in a
    thread pool of ``workers`` (default: one per CPU core) before the runs start. ``only``: labels of the
    learners to run now (the others are left for a later call; the results folder is the same). ``layout``:
    where the run axis lives in the compiled sweep (see the module docstring); checkpoints do not depend on it."""
    start = time.perf_counter()
    resolve_layout(layout)
    out = Path(out)
    check_results_folder(out, exp)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, {"hash": exp.hash, "config": exp.resolved, "format": FORMAT_VERSION})
    labels = [s.label for s in exp.learners]
    for label in only or []:
        if label not in labels:
            near = difflib.get_close_matches(label, labels, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"--only: no learner labelled {label!r}; {hint}labels: {', '.join(labels)}")
    chosen = [s for s in exp.learners if only is None or s.label in only]
    pending = [s for s in chosen if not (group_dir(out, s) / RESULTS).exists()]
    done = [s.label for s in chosen if s not in pending]
    groups = _groups(exp, pending, layout)
    fresh = [g for g in groups if not g.from_cache(flops)]
    if fresh and progress:
        print(f"compiling {len(fresh)} learner(s) ...", flush=True)
    if fresh:
        lowered = [g.lower(flops) for g in fresh]  # tracing stays on the calling thread
        workers = workers or max(1, min(len(fresh), _cores()))
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda gl: gl[0].compile(gl[1]), zip(fresh, lowered)))
        for g in fresh:
            g.to_cache()
    compiled = time.perf_counter() - start
    budget = _ChunkBudget(max_chunks)
    for group in [g for g in groups if g.n_devices > 1 or len(jax.devices()) == 1]:  # whole-machine sweeps
        if not _run_group(group, out, progress, budget):
            return RunReport(out, False, done, time.perf_counter() - start, compiled, traces(groups))
        done.append(group.spec.label)
    small = [g for g in groups if g.n_devices == 1 and len(jax.devices()) > 1]
    complete = _run_side_by_side(small, out, progress, budget)
    done += [g.spec.label for g, ok in zip(small, complete) if ok]
    return RunReport(out, all(complete), done, time.perf_counter() - start, compiled, traces(groups))


def _groups(exp: Experiment, specs: list, layout: str) -> list[Group]:
    """A group per learner entry. Sweeps too small to fill more than one device (fewer runs than the layout's
    quantum) get one device each, round-robin, so that they can run side by side: a small sweep's step is
    short and mostly fixed cost, and would leave the other cores idle."""
    devices = jax.devices()
    groups, k = [], 0
    for spec in specs:
        group = Group(exp, spec, layout)
        if group.n_devices == 1 and len(devices) > 1:
            group.place([devices[k % len(devices)]])
            k += 1
        groups.append(group)
    return groups


class _ChunkBudget:
    """How many more chunks this call may run (``None``: no limit), shared by the groups that run side by side,
    with a stop flag for an interrupt."""

    def __init__(self, chunks: Optional[int]):
        self.left, self.lock, self.stop = chunks, threading.Lock(), threading.Event()

    def take(self) -> bool:
        with self.lock:
            if self.stop.is_set():
                return False
            if self.left is None:
                return True
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def _run_side_by_side(groups: list[Group], out: Path, progress: bool, budget: _ChunkBudget) -> list[bool]:
    """Run one-device groups concurrently, as many at a time as there are devices (each stays on its own)."""
    if not groups:
        return []
    slots = {}  # device -> progress-bar line
    for g in groups:
        slots.setdefault(g.mesh.devices.flat[0].id, len(slots))
    locks = {d: threading.Lock() for d in slots}  # one group at a time per device

    def work(g: Group) -> bool:
        device = g.mesh.devices.flat[0].id
        with locks[device]:
            return _run_group(g, out, progress, budget, position=slots[device])

    with ThreadPoolExecutor(len(slots)) as pool:
        futures = [pool.submit(work, g) for g in groups]
        try:
            return [f.result() for f in futures]
        except BaseException:
            budget.stop.set()  # the others stop after their current chunk, which is saved
            for f in futures:
                f.cancel()
            raise


def traces(groups: list[Group]) -> dict:
    return {g.spec.label: g.n_traces for g in groups}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run_group(group: Group, out: Path, progress: bool, budget: _ChunkBudget, position: Optional[int] = None) -> bool:
    from tqdm.auto import tqdm

    spec, exp = group.spec, group.exp
    folder = group_dir(out, spec)
    acc = Accumulators(group.n_runs, spec.steps, spec.bins, spec.window, len(exp.metric["log"]))
    ckpt = folder / CHECKPOINT
    t, wall = 0, 0.0
    if ckpt.exists():
        with np.load(ckpt) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("hash") != exp.hash or meta.get("label") != spec.label:
                raise ConfigError(f"checkpoint {ckpt} belongs to a different config; delete it to start over")
            leaves = [np.asarray(data[f"leaf_{i:04d}"]) for i in range(meta["n_leaves"])]
            acc.restore(data)
            t, wall = int(meta["t"]), float(meta["wall_seconds"])
        carry = group.carry_from_leaves(leaves)
    else:
        carry = group.init_carry()
    metric_name = "MSRE" if exp.kind == "prediction" else "loss"
    bar = tqdm(total=spec.steps, initial=t, desc=f"{spec.label} ({group.n_runs} runs)", unit="step",
               unit_scale=True, disable=not progress, dynamic_ncols=True, leave=True, position=position)
    try:
        while t < spec.steps:
            if not budget.take():
                return False
            tic = time.perf_counter()
            carry, outputs = group.run_chunk(carry, t)
            sums = Blocks(*(np.asarray(jax.device_get(a))[: group.n_runs] for a in outputs))
            wall += time.perf_counter() - tic
            acc.add(t, group.block, sums)
            n = min(spec.chunk, spec.steps - t)
            t += n
            _save_checkpoint(ckpt, group, carry, acc, t, wall)
            write_json(folder / PROGRESS, _progress(group, t, wall))
            alive = np.asarray(jax.device_get(carry.diverged_at))[: group.n_runs] < 0
            w = sums.weight.sum(1, dtype=np.float64)
            with np.errstate(all="ignore"):
                current = (sums.err.sum(1, dtype=np.float64) / np.maximum(w, 1e-30))[alive & (w > 0)]
            shown = f"{current.mean():.4g}" if current.size else "n/a"
            bar.set_postfix_str(f"{group.n_runs * t / max(wall, 1e-9):,.0f} seed-steps/s, {metric_name} {shown}")
            bar.update(n)
    finally:
        bar.close()
    _write_results(group, folder, carry, acc, wall)
    return True


def _save_checkpoint(path: Path, group: Group, carry: RunCarry, acc: Accumulators, t: int, wall: float) -> None:
    leaves = group.carry_leaves(carry)
    meta = {"hash": group.exp.hash, "label": group.spec.label, "t": t, "wall_seconds": wall, "n_leaves": len(leaves)}
    arrays = {f"leaf_{i:04d}": leaf for i, leaf in enumerate(leaves)}
    arrays.update(acc.state())
    arrays["meta"] = np.array(json.dumps(meta))
    write_npz(path, arrays)


def _progress(group: Group, t: int, wall: float) -> dict:
    return {
        "label": group.spec.label,
        "steps_done": t,
        "steps": group.spec.steps,
        "runs": group.n_runs,
        "devices": group.n_devices,
        "wall_seconds": wall,
        "compile_seconds": group.compile_seconds,
        "seed_steps_per_second": group.n_runs * t / wall if wall > 0 else None,
    }


def _write_results(group: Group, folder: Path, carry: RunCarry, acc: Accumulators, wall: float) -> None:
    spec, exp = group.spec, group.exp
    diverged_at = np.asarray(jax.device_get(carry.diverged_at))[: group.n_runs].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(acc.bin_weight > 0, acc.bin_err / acc.bin_weight, np.nan)
        final = np.where(acc.win_weight > 0, acc.win_err / acc.win_weight, np.nan)
        log_curve = acc.bin_log / np.maximum(acc.bin_count, 1)[None, None, :]
    final = np.where(diverged_at >= 0, np.nan, final)
    arrays = {
        "seed": np.array([r["seed"] for r in group.grid], np.int64),
        "curve": curve,
        "bin_end": acc.bin_edges(),
        "final": final,
        "diverged_at": diverged_at,
        "log_curve": log_curve,
        "log_final": acc.last_log,
        # MSRE of the best constant prediction over the window (the target's variance); NaN for supervised streams
        "baseline": np.where((acc.win_weight > 0) & (exp.kind == "prediction"),
                             acc.win_target_sq / np.maximum(acc.win_weight, 1)
                             - (acc.win_target / np.maximum(acc.win_weight, 1)) ** 2, np.nan),
        **{f"hp_{k}": np.array([r[k] for r in group.grid], np.float64) for k in spec.hparam_names},
    }
    write_npz(folder / RESULTS, arrays)
    summary = {
        "label": spec.label,
        "learner": spec.name,
        "n_params": int(group.fns.learner.n_params),
        "flops_per_step": group.flops,
        "flops_lower_bound": bool(group.flops_lower_bound),
        "runs": group.n_runs,
        "steps": spec.steps,
        "window": spec.window,
        "hparams": spec.hparam_names,
        "block": block_size(spec.steps, spec.bins, spec.window, spec.chunk),
        "logs": list(exp.metric["log"]),
        "wall_seconds": wall,
        "compile_seconds": group.compile_seconds,
        "devices": group.n_devices,
        "seed_steps_per_second": group.n_runs * spec.steps / wall if wall > 0 else None,
        "diverged": int((diverged_at >= 0).sum()),
    }
    write_json(folder / SUMMARY, summary)
    write_json(folder / PROGRESS, {**_progress(group, spec.steps, wall), "done": True})
    ckpt = folder / CHECKPOINT
    if ckpt.exists():
        ckpt.unlink()


def clear(out: str | Path) -> None:
    """Delete a results folder (used by scripts that start over)."""
    shutil.rmtree(out, ignore_errors=True)


def finite_mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan

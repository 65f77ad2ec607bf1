"""A group: all runs of one learner entry as one compiled, sharded sweep.

Layout. For sweeps of 16 runs or more on the CPU, the run axis is the *last* axis of every carried array and
the step is evaluated with :func:`online_rnn.batching.batch_last` (every fused loop then runs over state
entries x runs with the runs in the innermost, vectorised stride: 2.5-5x the seed-major ``vmap`` at the paper's
shapes); single runs, learners with large states (exact RTRL beyond ~20 units) and other backends use
``jax.vmap`` (:func:`resolve_layout`). Both evaluate the same unbatched step and agree to float round-off; for a
given sweep the layout is fixed, so its results are bit for bit the same on any number of devices. With
``metric.alignment`` the layout is always ``vmap`` (:func:`alignment_layout`). The run
axis is split over the host's devices with ``shard_map`` (each device runs its own runs; nothing is
communicated). Checkpoints store every array run-major whatever the layout.

Runs are scanned in chunks of ``chunk`` steps by one compiled function that takes the step offset as an array
(no retracing between chunks); the chunk returns per-run block sums (:mod:`online_rnn.experiment.accumulate`).
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from online_rnn import batching
from online_rnn.experiment.accumulate import Blocks, block_size
from online_rnn.experiment.runfn import (RunCarry, hparams_example, lower_shadow_step, lower_step, run_functions,
                                         step_flops)
from online_rnn.experiment.schema import ConfigError, ConfigWarning, Experiment, LearnerSpec



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
        "metric": {"target": exp.metric["target"], "log": exp.metric["log"],
                   "alignment": exp.metric.get("alignment")},
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


# ``auto`` keeps a learner whose per-run state is larger than this many numbers seed-major: its work is large
# contractions (an influence matrix times a Jacobian), which run as matrix products within one run, while with
# the runs last they become batched products with the batch innermost, which XLA's CPU backend runs far slower.
# Measured on 2 cores (add task): exact RTRL on elman(32) (37k numbers per run) 17k seed-steps/s runs-last
# (20 runs) against 35k seed-major (12 runs); SnAp-2 on a sparse elman(48) (120k numbers) 1.3k against 1.6k.
# Exact RTRL on lstm(8) (13k numbers) still gains from the runs last (0.17M against 0.10M).
RUNS_LAST_MAX_STATE = 1 << 14


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


def alignment_layout(layout: str) -> str:
    """With ``metric.alignment`` every sweep runs in the ``vmap`` layout: the shadow (Jacobians of the network
    step, its measures) is checked against exact RTRL in that layout only, not under the runs-last batching of
    :mod:`online_rnn.batching`. An explicit ``runs_last`` is replaced by ``vmap`` with a warning."""
    if layout == "runs_last":
        warnings.warn(ConfigWarning("layout runs_last: metric.alignment runs in the vmap layout; using vmap"),
                      stacklevel=3)
    return "vmap"


def compiler_options() -> dict:
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


class Group:
    """All runs of one learner entry: one compiled chunk function, sharded over devices."""

    def __init__(self, exp: Experiment, spec: LearnerSpec, layout: str = "auto", devices: Optional[list] = None,
                 runs: Optional[tuple[int, int]] = None):
        """``runs``: ``(start, stop)``, only these runs of the sweep's grid (a shard of it, run on another
        machine); the layout is still the whole sweep's, so that a shard's runs are computed as they would be in
        the whole sweep."""
        self.exp, self.spec = exp, spec
        self.fns = run_functions(exp, spec)
        self.grid = spec.grid()
        n_sweep = len(self.grid)
        if runs is not None:
            start, stop = runs
            if not 0 <= start < stop <= n_sweep:
                raise ConfigError(f"runs {start}..{stop} of {spec.label}: the sweep has {n_sweep} runs")
            self.grid = self.grid[start:stop]
        self.n_runs = len(self.grid)
        one_run = jax.eval_shape(self.fns.init, jnp.int32(0), hparams_example(spec))
        self.layout = resolve_layout(layout, n_sweep, sum(int(np.prod(x.shape)) for x in jax.tree.leaves(one_run)))
        if self.fns.tracker is not None:  # the alignment shadow runs in the vmap layout (see alignment_layout)
            self.layout = alignment_layout(layout)
        self.shadow_flops: Optional[float] = None
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

        def sums(err, weight, logs, y, *align, first):  # per-step outputs (chunk, ...) -> block sums, runs first
            blocks = lambda x: first(x.reshape((chunk // g, g) + x.shape[1:]).sum(1))  # noqa: E731
            out = Blocks(blocks(err), blocks(weight), blocks(y), blocks(y * y), blocks(logs), first(logs[last]))
            if align:  # alignment measures and whether they were taken
                values, taken = align
                # squares about 1 (cosines, sign agreements and norm ratios sit near it): a sum of squares about 0
                # would lose a small spread to round-off
                out = out._replace(align=blocks(values), align_sq=blocks(taken * (values - 1) ** 2),
                                   align_n=blocks(taken))
            return out

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
        shadow = lower_shadow_step(self.exp, self.spec, self.fns) if flops else None
        return jax.jit(self.fns.init).lower(seed, hps), chunk.lower(self.abstract_carry(), t0), (step, shadow)

    def compile(self, lowered: tuple[Any, Any, Any]) -> None:
        start = time.perf_counter()
        init, chunk, (step, shadow) = lowered
        self._init = init.compile()
        self._chunk = chunk.compile(compiler_options=compiler_options())
        if step is not None:
            self.flops, self.flops_lower_bound = step_flops(step)
        if shadow is not None:
            self.shadow_flops = step_flops(shadow)[0]
        self.compile_seconds = time.perf_counter() - start

    def from_cache(self, flops: bool) -> bool:
        """Take the compiled functions from this process's cache if they are there (with FLOPs if wanted)."""
        hit = _COMPILED.get(self._key())
        if hit is None or (flops and hit[2] is None):
            return False
        self._init, self._chunk, self.flops, self.flops_lower_bound, self.shadow_flops = hit
        return True

    def to_cache(self) -> None:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[self._key()] = (self._init, self._chunk, self.flops, self.flops_lower_bound, self.shadow_flops)

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

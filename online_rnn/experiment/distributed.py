"""Sweeps on a Ray cluster: the same compiled sweeps, cut into tasks, with the driver keeping the results folder.

A learner entry's runs (its grid of seeds x settings, in the grid's order) are cut into shards of
``executor.runs_per_task`` runs, a multiple of the run quantum (16). Each shard is one Ray task that builds the
learner's compiled sweep for its runs only (:class:`~online_rnn.experiment.groups.Group` with ``runs``) on the
devices of the worker it lands on, and runs it chunk by chunk, as a local run does. The task is a Ray generator:
after every chunk it yields the shard's carried state and host sums, and the driver writes them as the shard's
checkpoint (``learners/<label>/shards/<start>-<stop>/checkpoint.npz``, the format of a local checkpoint). When
every shard of a learner is done, the driver joins them run by run into the learner's ``results.npz`` and
``summary.json`` (the files a local run writes) and removes the shards.

Where results are written. The driver writes every file; workers only compute and send. A task's state is small
(a few kB to a few MB per chunk), so sending it costs little, and in exchange the cluster needs no shared file
system, the results folder has one writer (the driver, which holds its lock), and a task that is lost leaves no
half-written file on some node: its retry starts from the last checkpoint the driver wrote, handed to it as an
argument, on whichever node Ray picks. A task runs at most :data:`AHEAD` chunks ahead of what the driver has
saved (Ray's generator backpressure), which bounds both the work a lost worker takes with it and the memory its
unread chunks take in the object store.

Same bits. A shard is compiled with the whole sweep's layout (runs-last or vmap, chosen from the whole sweep's
size) and holds a multiple of 16 runs, except the sweep's last shard, whose runs are the sweep's last ones. In
the runs-last layout the run axis of every device is padded to a multiple of 16, so every run takes the vector
path as it does locally; in the vmap layout a shard of 16k runs puts each run at an offset that is a multiple of
16 in every flattened loop, and the last shard's tail is the sweep's tail, so each run meets the same vector or
remainder code as in the whole sweep. Random numbers depend on the seed only, and the host sums are per run.
``tests/test_ray.py`` compares ``results.npz`` of local and Ray runs (several shard sizes, a killed worker, a
killed driver) with ``np.array_equal``.

Faults. A task whose worker or node dies (or whose objects are lost) is resubmitted from the shard's last
checkpoint, up to ``executor.retries`` times in a row; a task that raises (a plugin missing on the worker, a
checkpoint of another config) stops the run with its one-line error. A driver that is killed leaves the
checkpoints of every shard in the folder; running the same command again resumes each shard where it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import contextlib
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np

from online_rnn.experiment import storage
from online_rnn.experiment.accumulate import Accumulators, Blocks
from online_rnn.experiment.groups import RUN_QUANTUM, resolve_layout
from online_rnn.experiment.runner import RunReport, write_results
from online_rnn.experiment.schema import ConfigError, Experiment, LearnerSpec, one_line

AHEAD = 2  # chunks a task may run ahead of the checkpoint the driver has written (Ray generator backpressure)
PLAN = "shards.json"  # in learners/<label>/shards/: the runs of each task, fixed when the learner first starts


class TaskRetried(UserWarning):
    """A task was lost (its worker or node died) and was submitted again from its last checkpoint."""


@dataclass
class RayRunReport(RunReport):
    retries: dict = field(default_factory=dict)  # shard name -> tasks lost and resubmitted in this call
    starts: dict = field(default_factory=dict)  # shard name -> the step each of its submissions started from


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor.name: ray is not installed: pip install 'online_rnn[ray]' (or run without "
                          "--ray)") from None
    return ray


@dataclass(eq=False)
class _Shard:
    spec: LearnerSpec
    start: int
    stop: int
    folder: Path
    t: int = 0
    wall: float = 0.0
    saved: Any = None  # (leaves, sums, meta) of the last checkpoint, handed to a (re)submitted task
    info: Optional[dict] = None  # from the last chunk: the shard is done
    gen: Any = None  # the running task's generator
    rate: float = 0.0  # seed-steps/s of its last chunk while it runs
    lost: int = 0  # tasks lost in a row
    starts: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.spec.label}[{self.start}:{self.stop}]"

    @property
    def n_runs(self) -> int:
        return self.stop - self.start

    @property
    def done(self) -> bool:
        return self.info is not None

    @property
    def path(self) -> Path:
        return self.folder / storage.SHARDS / f"{self.start}-{self.stop}" / storage.CHECKPOINT


def run(
    exp: Experiment,
    out: str | Path,
    progress: bool = True,
    max_chunks: Optional[int] = None,
    flops: bool = True,
    only: Optional[list[str]] = None,
    layout: str = "auto",
    plugins: tuple[str, ...] = (),
    on_chunk: Optional[Callable[[str, int, int], None]] = None,
) -> RayRunReport:
    """Run (or resume) ``exp`` on the Ray cluster of ``exp.executor`` into ``out``: the folder a local run
    (:func:`online_rnn.experiment.runner.run`) makes, bit for bit the same ``results.npz``. Connects to the
    cluster unless this process is connected already (``address`` null: a cluster on this machine, or the one
    ``RAY_ADDRESS`` names). ``plugins``: modules every worker imports besides the config's. ``on_chunk(shard,
    t, pid)`` is called after each chunk's checkpoint is written (``pid``: the worker's process)."""
    start_time = time.perf_counter()
    resolve_layout(layout)
    ex = exp.executor
    if ex.get("name") != "ray":
        raise ConfigError("executor.name: this config runs locally; set executor.name to ray or pass --ray")
    labels = [s.label for s in exp.learners]
    for label in only or []:
        if label not in labels:
            raise ConfigError(f"--only: no learner labelled {label!r}; labels: {', '.join(labels)}")
    ray = import_ray()
    out = Path(out)
    storage.check_results_folder(out, exp)
    with storage.FolderLock(out):
        storage.check_results_folder(out, exp)
        storage.write_config(out, exp)
        chosen = [s for s in exp.learners if only is None or s.label in only]
        pending, done = [], []
        for s in chosen:
            folder = storage.group_dir(out, s.label)
            if storage.results_done(folder):
                done.append(s.label)
                shutil.rmtree(folder / storage.SHARDS, ignore_errors=True)  # left by a driver stopped after merging
                continue
            if (folder / storage.CHECKPOINT).exists():
                raise ConfigError(f"{s.label} was started by a local run ({folder / storage.CHECKPOINT}); finish it "
                                  f"without --ray, or delete that file to run it on Ray from the start")
            pending.append(s)
        shards = {s.label: _shards(exp, s, out, ex["runs_per_task"], progress) for s in pending}
        report = RayRunReport(out, True, done, 0.0)
        for label in [label for label, group in shards.items() if all(sh.done for sh in group)]:
            _merge(exp, exp.learner(label), shards.pop(label), ex)  # every shard was done before a driver stopped
            done.append(label)
        if shards:
            connect = not ray.is_initialized()
            if connect:
                _connect(ray, ex["address"])
            try:
                _check_cluster(ray, ex)
                _drive(ray, exp, shards, layout, plugins, flops, progress, max_chunks, on_chunk, report)
            finally:
                if connect:
                    ray.shutdown()
        report.seconds = time.perf_counter() - start_time
        return report


def _connect(ray: Any, address: Optional[str]) -> None:
    with warnings.catch_warnings():
        # JAX warns at every fork of a process that runs it; Ray forks only to exec its own processes
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        if address is None and not os.environ.get("RAY_ADDRESS"):  # a cluster on this machine, for this run
            ray.init(include_dashboard=False, logging_level=logging.ERROR)
        else:
            ray.init(address=address, logging_level=logging.ERROR)


def _check_cluster(ray: Any, ex: dict) -> None:
    """A task no node can hold would wait for ever: refuse it in one line."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus, gpus = ex["cpus_per_task"], ex["gpus_per_task"]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        fail_key = "gpus_per_task" if gpus and not any(n.get("GPU", 0) >= gpus for n in nodes) else "cpus_per_task"
        raise ConfigError(f"executor.{fail_key}: a task needs {cpus} CPU(s) and {gpus:g} GPU(s), but no node of the "
                          f"cluster has them (largest: {largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} GPUs)")


# ---------------------------------------------------------------------------------------------------- shards


def _shards(exp: Experiment, spec: LearnerSpec, out: Path, runs_per_task: int, progress: bool) -> list[_Shard]:
    """The learner's shards and what each has done (from its checkpoint). The shards of a learner are fixed
    when it first starts (``shards.json``): a restarted driver keeps them whatever its ``runs_per_task``."""
    folder = storage.group_dir(out, spec.label)
    n_runs = len(spec.grid())
    plan_path = folder / storage.SHARDS / PLAN
    plan = [(a, min(a + runs_per_task, n_runs)) for a in range(0, n_runs, runs_per_task)]
    if plan_path.exists():
        stored = _read_plan(plan_path, n_runs)
        if stored is None:
            bad = folder / storage.SHARDS
            os.replace(bad, bad.with_name(bad.name + ".damaged"))
            warnings.warn(storage.RecoveredFile(f"{plan_path} is damaged; moved {bad.name} to {bad.name}.damaged "
                                                f"and will compute {spec.label} again"), stacklevel=2)
        else:
            if stored != plan and progress:
                print(f"{spec.label}: keeping the {len(stored)} tasks it was started with", flush=True)
            plan = stored
    if not plan_path.exists():
        storage.write_json(plan_path, {"runs": n_runs, "shards": [list(p) for p in plan]})
    shards = [_Shard(spec, a, b, folder) for a, b in plan]
    for sh in shards:
        saved = storage.load_checkpoint(sh.path, exp.hash, sh.name)
        if saved is None:
            continue
        leaves, data, meta = saved
        sh.t, sh.wall = int(meta["t"]), float(meta["wall_seconds"])
        sh.saved = (leaves, {k: v for k, v in data.items() if k.startswith("acc_")}, meta)
        if meta.get("info") is not None and sh.t >= spec.steps:
            sh.info = meta["info"]
    return shards


def _read_plan(path: Path, n_runs: int) -> Optional[list[tuple[int, int]]]:
    """The stored shards if they tile the runs as this module cuts them (all but the last a multiple of the
    quantum), else ``None``."""
    try:
        data = storage.read_json(path)
        plan = [(int(a), int(b)) for a, b in data["shards"]]
    except (storage.DamagedFile, KeyError, TypeError, ValueError):
        return None
    edges = [a for a, _ in plan] + [plan[-1][1]] if plan else []
    ok = bool(plan) and edges[0] == 0 and edges[-1] == n_runs and all(b == c for (_, b), (c, _) in zip(plan, plan[1:]))
    ok = ok and all(a < b for a, b in plan) and all((b - a) % RUN_QUANTUM == 0 for a, b in plan[:-1])
    return plan if ok else None


def _save(sh: _Shard, exp: Experiment, message: dict) -> None:
    meta = {"hash": exp.hash, "label": sh.name, "t": message["t"], "wall_seconds": message["wall_seconds"],
            "host": message["host"], "pid": message["pid"], "info": message.get("info")}
    storage.save_checkpoint(sh.path, message["leaves"], message["sums"], meta)
    sh.t, sh.wall = message["t"], message["wall_seconds"]
    sh.saved = (message["leaves"], message["sums"], meta)
    sh.rate = sh.n_runs * message["chunk_steps"] / max(message["chunk_seconds"], 1e-9)
    sh.lost = 0
    if message.get("info") is not None:
        sh.info = message["info"]


# ------------------------------------------------------------------------------------------------ the driver


def worker_env(cpus: int) -> dict:
    """Environment variables of the task's worker process: the driver's XLA flags, with one JAX CPU device per
    CPU of the task, and the driver's float64 setting (both change the compiled code, hence the bits)."""
    import jax

    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={cpus}")
    return {"XLA_FLAGS": " ".join(flags), "JAX_ENABLE_X64": "1" if jax.config.jax_enable_x64 else "0"}


def _drive(ray: Any, exp: Experiment, shards: dict, layout: str, plugins: tuple, flops: bool, progress: bool,
           max_chunks: Optional[int], on_chunk: Optional[Callable], report: RayRunReport) -> None:
    import jax

    ex = exp.executor
    remote = ray.remote(_shard_task)
    options = dict(num_cpus=ex["cpus_per_task"], num_gpus=ex["gpus_per_task"], num_returns="streaming", max_retries=0,
                   _generator_backpressure_num_objects=AHEAD,
                   runtime_env={"env_vars": worker_env(ex["cpus_per_task"])})
    cache = bool(jax.config.jax_compilation_cache_dir)
    # a plugin given as a .py file is sent as an absolute path (a worker's current folder is not the driver's)
    every_plugin = tuple(dict.fromkeys(str(Path(p).resolve()) if p.endswith(".py") else p
                                       for p in tuple(plugins) + tuple(exp.plugins)))

    def submit(sh: _Shard) -> None:
        sh.starts.append(sh.t)
        report.starts[sh.name] = sh.starts
        sh.rate = 0.0
        sh.gen = remote.options(name=f"online_rnn {sh.name}", **options).remote(
            exp, sh.spec.label, sh.start, sh.stop, layout, sh.saved, every_plugin, flops and sh.start == 0, cache)

    running = [sh for group in shards.values() for sh in group if not sh.done]
    if progress:
        print(f"ray: {len(running)} task(s) of up to {ex['runs_per_task']} runs for {len(shards)} learner(s), "
              f"{ex['cpus_per_task']} CPU(s) and {ex['gpus_per_task']:g} GPU(s) each", flush=True)
    show = _Progress(shards, progress)
    for sh in running:
        submit(sh)
    chunks = 0
    try:
        while running:
            ready, _ = ray.wait([sh.gen for sh in running], num_returns=1, timeout=1.0)
            if ready:
                ready, _ = ray.wait([sh.gen for sh in running], num_returns=len(running), timeout=0)
            by_gen = {id(sh.gen): sh for sh in running}
            for gen in ready:
                sh = by_gen[id(gen)]
                try:
                    message = ray.get(next(gen))
                except StopIteration:
                    message = None  # ended without its last chunk: treated as lost
                    error: Any = "the task ended before its last chunk"
                except ray.exceptions.RayTaskError as err:  # the task raised: a real error, not retried
                    cause = getattr(err, "cause", None)
                    raise ConfigError(f"{sh.name} failed on a Ray worker: "
                                      f"{one_line(cause) if cause is not None else one_line(err)}") from None
                except (ray.exceptions.TaskCancelledError, ray.exceptions.RuntimeEnvSetupError) as err:
                    raise ConfigError(f"{sh.name}: {type(err).__name__}: {one_line(err)}") from None
                except ray.exceptions.RayError as err:  # its worker or node died, or its output was lost
                    message, error = None, err
                if message is None:
                    running.remove(sh)
                    sh.lost += 1
                    report.retries[sh.name] = report.retries.get(sh.name, 0) + 1
                    if sh.lost > ex["retries"]:
                        raise ConfigError(f"{sh.name}: its Ray task was lost {sh.lost} times in a row (last: "
                                          f"{_error_line(error)}); run the same command again to resume")
                    warnings.warn(TaskRetried(f"{sh.name}: task lost ({_error_line(error)}); submitted again "
                                              f"from step {sh.t}"), stacklevel=2)
                    submit(sh)
                    running.append(sh)
                    continue
                _save(sh, exp, message)
                chunks += 1
                if on_chunk is not None:
                    on_chunk(sh.name, sh.t, message["pid"])
                if sh.done:
                    running.remove(sh)
                    sh.gen = None
                    report.compile_seconds = max(report.compile_seconds, float(sh.info["compile_seconds"]))
                    group = shards[sh.spec.label]
                    if all(s.done for s in group):
                        _merge(exp, sh.spec, group, ex)
                        report.labels_done.append(sh.spec.label)
                show.update(sh.spec.label)
                if max_chunks is not None and chunks >= max_chunks and running:
                    report.complete = False
                    return
    finally:
        for sh in running:  # stopped early, interrupted, or failed: the others stop too (their chunks are saved)
            with contextlib.suppress(Exception):  # already finished or lost
                ray.cancel(sh.gen, force=True)
        for sh in running:  # read the error each cancelled task ends with, or Ray reports it as unhandled
            with contextlib.suppress(Exception):  # the cancellation itself, expected
                ray.get(sh.gen.completed(), timeout=10)
        show.close()
    report.complete = all(sh.done for group in shards.values() for sh in group)


def _error_line(err: Any) -> str:
    return err if isinstance(err, str) else f"{type(err).__name__}: {one_line(err)}"


class _Progress:
    """One bar per learner across the cluster: steps done (the mean over its runs), its tasks' seed-steps/s
    (the sum of the last chunk's rate of every task running), and ``progress.json`` (at most once a second)."""

    def __init__(self, shards: dict, enabled: bool):
        from tqdm.auto import tqdm

        self.shards, self.enabled, self.written = shards, enabled, {}
        self.bars = {}
        for i, (label, group) in enumerate(shards.items()):
            spec = group[0].spec
            runs = sum(sh.n_runs for sh in group)
            self.bars[label] = tqdm(total=spec.steps, initial=self._steps(group), unit="step", unit_scale=True,
                                    desc=f"{label} ({runs} runs, {len(group)} tasks)", disable=not enabled,
                                    dynamic_ncols=True, leave=True, position=i)

    @staticmethod
    def _steps(group: list[_Shard]) -> int:
        return sum(sh.t * sh.n_runs for sh in group) // sum(sh.n_runs for sh in group)

    def state(self, label: str) -> dict:
        group = self.shards[label]
        spec = group[0].spec
        active = [sh for sh in group if sh.gen is not None and not sh.done and sh.rate > 0]
        return {"label": label, "steps_done": self._steps(group), "steps": spec.steps,
                "runs": sum(sh.n_runs for sh in group), "executor": "ray", "tasks": len(group),
                "tasks_done": sum(sh.done for sh in group), "tasks_running": len(active),
                "task_seconds": sum(sh.wall for sh in group),
                "seed_steps_per_second": sum(sh.rate for sh in active) if active else None}

    def update(self, label: str) -> None:
        group = self.shards[label]
        now = time.monotonic()
        if not all(sh.done for sh in group) and now - self.written.get(label, 0.0) >= 1.0:
            storage.write_json(group[0].folder / storage.PROGRESS, self.state(label))
            self.written[label] = now
        bar = self.bars[label]
        state = self.state(label)
        bar.n = state["steps_done"]
        rate = state["seed_steps_per_second"]
        shown = "done" if state["tasks_done"] == state["tasks"] else f"{rate:,.0f} seed-steps/s" if rate else "waiting"
        bar.set_postfix_str(f"{shown}, {state['tasks_running']} running, {state['tasks_done']}/{state['tasks']} "
                            f"tasks done", refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


# ------------------------------------------------------------------------------------------------ the merge


def _merge(exp: Experiment, spec: LearnerSpec, group: list[_Shard], ex: dict) -> None:
    """Join the finished shards of a learner, run by run, into the results a local run writes."""
    n_runs = sum(sh.n_runs for sh in group)
    n_logs = len(exp.metric["log"])
    acc = Accumulators(n_runs, spec.steps, spec.bins, spec.window, n_logs)
    one, two = (Accumulators(n, spec.steps, spec.bins, spec.window, n_logs) for n in (1, 2))
    for name in acc.NAMES:
        parts = [np.asarray(sh.saved[1][f"acc_{name}"]) for sh in group]
        if getattr(one, name).shape != getattr(two, name).shape:  # one row per run
            setattr(acc, name, np.concatenate(parts).astype(np.float64))
        else:  # the same for every run (e.g. the steps counted per bin)
            if any(not np.array_equal(p, parts[0], equal_nan=True) for p in parts[1:]):
                raise ConfigError(f"{spec.label}: its shards disagree on {name}; delete "
                                  f"{group[0].folder / storage.SHARDS} to compute it again")
            setattr(acc, name, parts[0].astype(np.float64))
    infos = [sh.info for sh in group]
    first = infos[0]
    sweep = SimpleNamespace(
        spec=spec, exp=exp, n_runs=n_runs, grid=spec.grid(), block=first["block"], layout=first["layout"],
        fns=SimpleNamespace(learner=SimpleNamespace(path=first["path"], n_params=first["n_params"]),
                            tracker=None),  # no alignment shadow on Ray (validation refuses it)
        flops=first["flops"], flops_lower_bound=first["flops_lower_bound"],
        compile_seconds=max(i["compile_seconds"] for i in infos), n_devices=sum(i["devices"] for i in infos))
    diverged_at = np.concatenate([np.asarray(i["diverged_at"], np.int64) for i in infos])
    wall = sum(sh.wall for sh in group)
    folder = group[0].folder
    write_results(sweep, folder, SimpleNamespace(diverged_at=diverged_at), acc, wall)
    summary = storage.read_json(folder / storage.SUMMARY)
    summary["executor"] = {"name": "ray", "tasks": len(group), "runs_per_task": [sh.n_runs for sh in group],
                           "task_seconds": wall, "hosts": sorted({i["host"] for i in infos}),
                           "cpus_per_task": ex["cpus_per_task"], "gpus_per_task": ex["gpus_per_task"]}
    storage.write_json(folder / storage.SUMMARY, summary)
    shutil.rmtree(folder / storage.SHARDS, ignore_errors=True)


# -------------------------------------------------------------------------------------------------- the task


def _shard_task(exp: Experiment, label: str, start: int, stop: int, layout: str, saved: Any, plugins: tuple,
                flops: bool, cache: bool):
    """Runs ``start:stop`` of ``label``'s sweep on this worker's devices from ``saved`` (or from the start),
    yielding the state after every chunk; the last message carries what the summary needs."""
    import jax

    from online_rnn.experiment.groups import Group
    from online_rnn.experiment.loading import import_plugins

    import_plugins([p for p in plugins if not (p.endswith(".py") and Path(p).stem in sys.modules)])
    if cache:
        from online_rnn.cli import enable_compilation_cache

        enable_compilation_cache()
    spec = exp.learner(label)
    group = Group(exp, spec, layout, runs=(start, stop))
    if not group.from_cache(flops):
        group.compile(group.lower(flops))
        group.to_cache()
    acc = Accumulators(group.n_runs, spec.steps, spec.bins, spec.window, len(exp.metric["log"]))
    if saved is not None:
        leaves, sums, meta = saved
        acc.restore(sums)
        t, wall = int(meta["t"]), float(meta["wall_seconds"])
        carry = group.carry_from_leaves([np.asarray(x) for x in leaves])
    else:
        t, wall = 0, 0.0
        carry = group.init_carry()
    where = {"pid": os.getpid(), "host": socket.gethostname()}
    while t < spec.steps:
        tic = time.perf_counter()
        carry, outputs = group.run_chunk(carry, t)
        sums = Blocks(*(np.asarray(jax.device_get(a))[: group.n_runs] for a in outputs))
        seconds = time.perf_counter() - tic
        wall += seconds
        acc.add(t, group.block, sums)
        n = min(spec.chunk, spec.steps - t)
        t += n
        message = {"t": t, "wall_seconds": wall, "chunk_steps": n, "chunk_seconds": seconds,
                   "leaves": group.carry_leaves(carry), "sums": {k: v.copy() for k, v in acc.state().items()}, **where}
        if t >= spec.steps:
            diverged_at = np.asarray(jax.device_get(carry.diverged_at))[: group.n_runs]
            message["info"] = {
                "path": group.fns.learner.path, "n_params": int(group.fns.learner.n_params), "flops": group.flops,
                "flops_lower_bound": bool(group.flops_lower_bound), "block": group.block, "layout": group.layout,
                "devices": group.n_devices, "compile_seconds": group.compile_seconds, "host": where["host"],
                "diverged_at": [int(x) for x in diverged_at]}
        yield message

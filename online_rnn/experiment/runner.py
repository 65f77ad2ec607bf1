"""Running a resolved experiment into a results folder: compile every learner's sweep, then run the sweeps chunk
by chunk, saving each chunk, and write the results.

Compilation runs in a thread pool before any run starts. Sweeps that fill the machine (16 runs or more, see
:mod:`online_rnn.experiment.groups`) run one after the other on every device; smaller ones run side by side,
one device each. After every chunk the carried state and the host sums are saved atomically
(``checkpoint.npz``); running the same config again resumes there and ends bit-identical to an uninterrupted
run. The folder is locked while a run writes it (:class:`~online_rnn.experiment.storage.FolderLock`).
A config whose ``executor`` is Ray runs in :mod:`online_rnn.experiment.distributed` instead (same folder).
"""

from __future__ import annotations

import difflib
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from online_rnn.experiment import storage
from online_rnn.machine import cores
from online_rnn.experiment.accumulate import Accumulators, Blocks
from online_rnn.experiment.groups import Group, resolve_layout
from online_rnn.experiment.runfn import RunCarry
from online_rnn.experiment.schema import ConfigError, Experiment


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
    plugins: tuple[str, ...] = (),
) -> RunReport:
    """Run (or resume) every learner of ``exp``, writing results to ``out``. ``max_chunks`` stops after that
    many chunks in this call (the state is saved; calling again resumes). Compilation runs in a thread pool of
    ``workers`` (default: one per CPU core). ``only``: labels of the learners to run now (the others are left
    for a later call; the results folder is the same). ``layout``: where the run axis lives in the compiled
    sweep (:func:`online_rnn.experiment.groups.resolve_layout`); checkpoints do not depend on it. ``plugins``:
    modules imported besides the config's (``--plugin``), which Ray workers import too."""
    start = time.perf_counter()
    resolve_layout(layout)
    labels = [s.label for s in exp.learners]
    for label in only or []:  # before anything is written
        if label not in labels:
            near = difflib.get_close_matches(label, labels, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"--only: no learner labelled {label!r}; {hint}labels: {', '.join(labels)}")
    out = Path(out)
    storage.check_results_folder(out, exp)
    if exp.executor["name"] == "ray":
        from online_rnn.experiment import distributed  # imports Ray

        return distributed.run(exp, out, progress=progress, max_chunks=max_chunks, flops=flops, only=only,
                               layout=layout, plugins=plugins)
    with storage.FolderLock(out):
        storage.check_results_folder(out, exp)  # again, now that no other run can write it
        storage.write_config(out, exp)
        chosen = [s for s in exp.learners if only is None or s.label in only]
        pending = [s for s in chosen if not storage.results_done(storage.group_dir(out, s.label))]
        done = [s.label for s in chosen if s not in pending]
        for s in pending:
            if (storage.group_dir(out, s.label) / storage.SHARDS).exists():
                raise ConfigError(f"{s.label} was started on a Ray cluster (its shards' checkpoints are in "
                                  f"{storage.group_dir(out, s.label) / storage.SHARDS}); resume it with --ray, or "
                                  f"delete that folder to run it here from the start")
        groups = _groups(exp, pending, layout)
        fresh = [g for g in groups if not g.from_cache(flops)]
        if fresh and progress:
            print(f"compiling {len(fresh)} learner(s) ...", flush=True)
        if fresh:
            lowered = [g.lower(flops) for g in fresh]  # tracing stays on the calling thread
            with ThreadPoolExecutor(workers or max(1, min(len(fresh), cores()))) as pool:
                list(pool.map(lambda gl: gl[0].compile(gl[1]), zip(fresh, lowered)))
            for g in fresh:
                g.to_cache()
        compiled = time.perf_counter() - start
        budget = _ChunkBudget(max_chunks)
        many = len(jax.devices()) > 1
        for group in [g for g in groups if g.n_devices > 1 or not many]:  # sweeps that fill the machine
            if not _run_group(group, out, progress, budget):
                return RunReport(out, False, done, time.perf_counter() - start, compiled, traces(groups))
            done.append(group.spec.label)
        small = [g for g in groups if g.n_devices == 1 and many]
        complete = _run_side_by_side(small, out, progress, budget)
        done += [g.spec.label for g, ok in zip(small, complete) if ok]
        return RunReport(out, all(complete), done, time.perf_counter() - start, compiled, traces(groups))


def traces(groups: list[Group]) -> dict:
    return {g.spec.label: g.n_traces for g in groups}


def clear(out: str | Path) -> None:
    """Delete a results folder (used by scripts that start over)."""
    shutil.rmtree(out, ignore_errors=True)


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
    slots: dict = {}  # device -> progress-bar line
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


def _run_group(group: Group, out: Path, progress: bool, budget: _ChunkBudget, position: Optional[int] = None) -> bool:
    from tqdm.auto import tqdm

    spec, exp = group.spec, group.exp
    folder = storage.group_dir(out, spec.label)
    acc = Accumulators(group.n_runs, spec.steps, spec.bins, spec.window, len(exp.metric["log"]))
    ckpt = folder / storage.CHECKPOINT
    t, wall = 0, 0.0
    saved = storage.load_checkpoint(ckpt, exp.hash, spec.label)
    if saved is not None:
        leaves, data, meta = saved
        acc.restore(data)
        t, wall = int(meta["t"]), float(meta["wall_seconds"])
        carry = group.carry_from_leaves(leaves)
    else:
        carry = group.init_carry()
    metric_name = "loss" if exp.metric["target"] == "loss" else "MSRE"
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
            meta = {"hash": exp.hash, "label": spec.label, "t": t, "wall_seconds": wall}
            storage.save_checkpoint(ckpt, group.carry_leaves(carry), acc.state(), meta)
            storage.write_json(folder / storage.PROGRESS, _progress(group, t, wall))
            alive = np.asarray(jax.device_get(carry.diverged_at))[: group.n_runs] < 0
            w = sums.weight.sum(1, dtype=np.float64)
            with np.errstate(all="ignore"):
                current = (sums.err.sum(1, dtype=np.float64) / np.maximum(w, 1e-30))[alive & (w > 0)]
            shown = f"{current.mean():.4g}" if current.size else "n/a"
            bar.set_postfix_str(f"{group.n_runs * t / max(wall, 1e-9):,.0f} seed-steps/s, {metric_name} {shown}")
            bar.update(n)
    finally:
        bar.close()
    write_results(group, folder, carry, acc, wall)
    return True


def _progress(group: Group, t: int, wall: float) -> dict:
    return {
        "label": group.spec.label,
        "steps_done": t,
        "steps": group.spec.steps,
        "runs": group.n_runs,
        "devices": group.n_devices,
        "layout": group.layout,
        "wall_seconds": wall,
        "compile_seconds": group.compile_seconds,
        "seed_steps_per_second": group.n_runs * t / wall if wall > 0 else None,
    }


def write_results(group: Group, folder: Path, carry: RunCarry, acc: Accumulators, wall: float) -> None:
    spec, exp = group.spec, group.exp
    diverged_at = np.asarray(jax.device_get(carry.diverged_at))[: group.n_runs].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(acc.bin_weight > 0, acc.bin_err / acc.bin_weight, np.nan)
        final = np.where(acc.win_weight > 0, acc.win_err / acc.win_weight, np.nan)
        log_curve = acc.bin_log / np.maximum(acc.bin_count, 1)[None, None, :]
    final = np.where(diverged_at >= 0, np.nan, final)
    has_target = exp.metric["target"] != "loss"
    weight = np.maximum(acc.win_weight, 1)
    arrays = {
        "seed": np.array([r["seed"] for r in group.grid], np.int64),
        "curve": curve,
        "bin_end": acc.bin_edges(),
        "final": final,
        "diverged_at": diverged_at,
        "log_curve": log_curve,
        "log_final": acc.last_log,
        # error of the best constant prediction over the window (the target's variance); NaN for a loss
        "baseline": np.where((acc.win_weight > 0) & has_target,
                             acc.win_target_sq / weight - (acc.win_target / weight) ** 2, np.nan),
        **{f"hp_{k}": np.array([r[k] for r in group.grid], np.float64) for k in spec.hparam_names},
    }
    tracker = group.fns.tracker
    if tracker is not None:  # alignment_* arrays (online_rnn.alignment)
        arrays.update(acc.alignment(tracker.names, tracker.groups))
    storage.write_npz(folder / storage.RESULTS, arrays)
    summary = {
        "label": spec.label,
        "learner": spec.name,
        "path": group.fns.learner.path,
        "n_params": int(group.fns.learner.n_params),
        "flops_per_step": group.flops,
        "flops_lower_bound": bool(group.flops_lower_bound),
        "runs": group.n_runs,
        "steps": spec.steps,
        "window": spec.window,
        "hparams": spec.hparam_names,
        "block": group.block,
        "logs": list(exp.metric["log"]),
        "wall_seconds": wall,
        "compile_seconds": group.compile_seconds,
        "devices": group.n_devices,
        "layout": group.layout,
        "seed_steps_per_second": group.n_runs * spec.steps / wall if wall > 0 else None,
        "diverged": int((diverged_at >= 0).sum()),
    }
    if tracker is not None:  # the shadow's cost, apart from the learner's (its time is inside wall_seconds)
        summary["alignment"] = {**exp.metric["alignment"], "reference_name": tracker.reference.name,
                                "measures": tracker.names, "shadow_flops_per_step": group.shadow_flops}
    storage.write_json(folder / storage.SUMMARY, summary)
    storage.write_json(folder / storage.PROGRESS, {**_progress(group, spec.steps, wall), "done": True})
    ckpt = folder / storage.CHECKPOINT
    if ckpt.exists():
        ckpt.unlink()

"""Per-run sums of a sweep's outputs, kept on the host in float64: binned learning curves, the final window, logged
stream quantities, and the target's moments over the window (the best constant prediction's error).

The compiled chunk sums each run's per-step outputs over blocks of steps that never straddle a learning-curve
bin or the final window (:func:`block_size`; e.g. 10k steps), so that little leaves the device; here the block
sums are added in float64 (float32 sums over 50M steps would lose digits).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


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
    align: Any = ()  # (runs, n_blocks, M) sums of the alignment measures over the steps they were taken
    align_sq: Any = ()  # sums of (value - 1)^2 over the same steps
    align_n: Any = ()  # (runs, n_blocks, M) how many steps they were taken at


class Accumulators:
    """Host-side float64 sums of every run's outputs: binned curves, the final window, logs, the target's
    moments over the window. They take block sums (:class:`Blocks`) whose blocks never straddle a bin or the
    window's start (:func:`block_size`)."""

    NAMES = ("bin_err", "bin_weight", "bin_log", "bin_count", "win_err", "win_weight", "last_log", "win_target",
             "win_target_sq")
    ALIGN_NAMES = ("bin_align", "bin_align_sq", "bin_align_n")  # (runs, M, bins); M = 0 without alignment

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
        self._n_runs = n_runs
        self._alloc_align(0)

    def _alloc_align(self, m: int) -> None:
        for name in self.ALIGN_NAMES:
            setattr(self, name, np.zeros((self._n_runs, m, self.bins)))

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
        align = np.asarray(sums.align, np.float64)
        if align.ndim == 3 and align.shape[2]:
            if self.bin_align.shape[1] != align.shape[2]:
                self._alloc_align(align.shape[2])
            sq, n = np.asarray(sums.align_sq, np.float64), np.asarray(sums.align_n, np.float64)
            for b in np.unique(bins):
                cols = np.flatnonzero(bins == b)
                self.bin_align[:, :, b] += align[:, cols].sum(1)
                self.bin_align_sq[:, :, b] += sq[:, cols].sum(1)
                self.bin_align_n[:, :, b] += n[:, cols].sum(1)

    def state(self) -> dict:
        return {f"acc_{k}": getattr(self, k) for k in self.NAMES + self.ALIGN_NAMES}

    def restore(self, data: Any) -> None:
        for k in self.NAMES:
            want = getattr(self, k)
            got = np.asarray(data[f"acc_{k}"])
            if got.shape != want.shape:
                raise ValueError(f"accumulator {k} has shape {got.shape}, expected {want.shape}")
            setattr(self, k, got.astype(np.float64))
        for k in self.ALIGN_NAMES:  # absent from checkpoints written before alignment existed
            if f"acc_{k}" in data:
                setattr(self, k, np.asarray(data[f"acc_{k}"], np.float64))

    def alignment(self, names: list[str], groups: list[str]) -> dict:
        """Results arrays of the alignment measures ``names`` (see :mod:`online_rnn.alignment`):
        ``alignment_<name>`` (runs, bins), the binned mean over the steps it was taken at (NaN in bins without
        any); ``alignment_<name>_mean`` and ``alignment_<name>_std`` (runs,), over all those steps of the run;
        ``alignment_steps[_<group>]`` (runs,), how many steps of the run were compared, per group."""
        if not names or self.bin_align.shape[1] != len(names):
            return {}
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.bin_align_n
            curves = np.where(n > 0, self.bin_align / np.maximum(n, 1), np.nan)
            total, total_sq, count = self.bin_align.sum(2), self.bin_align_sq.sum(2), n.sum(2)
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            # align_sq holds squares about 1: sum (x - 1)^2 - n (mean - 1)^2 = sum (x - mean)^2
            var = np.where(count > 1, (total_sq - count * (mean - 1) ** 2) / np.maximum(count - 1, 1), np.nan)
        for j, name in enumerate(names):
            key = f"alignment_{name}"
            out[key] = curves[:, j]
            out[f"{key}_mean"] = mean[:, j]
            out[f"{key}_std"] = np.sqrt(np.maximum(var[:, j], 0.0))
        per_group = len(names) // max(len(groups), 1)
        for g, group in enumerate(groups):
            out["alignment_steps" + (f"_{group}" if group else "")] = count[:, g * per_group].astype(np.int64)
        return out

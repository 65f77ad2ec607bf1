"""Figures of a results folder (matplotlib, Agg backend, PNG files).

- ``learning_curves.png``: per learner, its best setting's binned metric against steps, mean over the seeds that
  did not diverge with a 95% confidence band (Student's t).
- ``step_size_sensitivity.png``: per learner, the final-window metric against the step size (log axis), mean
  and 95% interval over seeds; with other swept hyperparameters, the best of them at each step size.
- ``<log>.png`` for each logged stream quantity (e.g. the copy task's ``curriculum_length``).
- ``error_vs_flops.png``: the learning curves against cumulative compute, XLA's FLOPs of one learner step times the
  steps taken (log axis), so that learners are compared at equal compute (learners without a FLOP count are left
  out; the alignment shadow's FLOPs are not counted).
- ``alignment.png`` (with ``metric.alignment``): per learner, its best setting's binned alignment with the
  reference gradient (:mod:`online_rnn.alignment`): cosine over all parameters, over the cell's and over the
  readout's, and the norm ratio, mean over seeds with a 95% band.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from online_rnn.experiment.analysis import LearnerResult, benchmark_title, ci95, load_results, metric_name
from online_rnn.experiment.schema import ConfigError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band_line(ax, x, mean, half, color, label: str) -> bool:
    """A mean curve with its 95% band; whether the band stays above zero (a log axis then fits)."""
    ax.plot(x, mean, color=color, label=label)
    ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2, linewidth=0)
    return bool(np.nanmin(mean - half) > 0) if np.isfinite(mean).any() else True


def _finish(ax, log_y: bool, xlabel: str, ylabel: str, title: str, n_curves: int) -> None:
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2 if n_curves > 8 else 1)
    ax.grid(alpha=0.3, which="both")


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and 95% half-width over rows, ignoring NaNs."""
    mean = np.full(values.shape[1], np.nan)
    half = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        col = values[:, j]
        col = col[np.isfinite(col)]
        if col.size:
            mean[j] = col.mean()
            half[j] = ci95(col) if col.size > 1 else 0.0
    return mean, half


def _colors(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot(folder: str | Path) -> list[Path]:
    """Write the figures of a results folder; returns the paths written."""
    plt = _pyplot()
    res = load_results(folder)
    folder = Path(folder)
    learners = [lr for lr in res.learners if lr.complete]
    if not learners:
        return []
    if all(lr.best() is None for lr in learners):
        raise ConfigError(f"{folder}: nothing to plot, every run diverged (see `online-rnn compare {folder}` for "
                          f"the steps at which they did)")
    colors = dict(zip([lr.label for lr in learners], _colors(len(learners))))
    name = metric_name(res.config)
    title = benchmark_title(res.config)
    paths = []

    # learning curves
    fig, ax = plt.subplots(figsize=(8, 5))
    positive = True
    for lr in learners:
        best = lr.best()
        if best is None:  # every run of this learner diverged: nothing to draw
            continue
        alive = best.runs[lr.arrays["diverged_at"][best.runs] < 0]
        if not alive.size:
            continue
        mean, half = _band(lr.arrays["curve"][alive])
        x = lr.arrays["bin_end"]
        shown = {k: v for k, v in best.hparams.items() if k in lr.swept()}
        positive &= _band_line(ax, x, mean, half, colors[lr.label], f"{lr.label} ({_lr_text(shown)})")
    _finish(ax, positive, "step", name, f"{title}: learning curves (best setting, 95% CI over seeds)", len(learners))
    paths.append(_save(fig, folder / "learning_curves.png"))

    # step-size sensitivity
    fig, ax = plt.subplots(figsize=(8, 5))
    positive = True
    for lr in learners:
        xs, ms, hs = _sensitivity(lr)
        if not xs.size:
            continue
        ax.errorbar(xs, ms, yerr=hs, color=colors[lr.label], marker="o", markersize=3, capsize=2, label=lr.label)
        positive &= bool(np.nanmin(ms) > 0)
    ax.set_xscale("log")
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step size")
    ax.set_ylabel(f"final {name}")
    ax.set_title(f"{title}: step-size sensitivity (mean, 95% CI over seeds)", fontsize=10)
    ax.legend(fontsize=7, ncol=2 if len(learners) > 8 else 1)
    ax.grid(alpha=0.3, which="both")
    paths.append(_save(fig, folder / "step_size_sensitivity.png"))

    paths += _flops_plot(plt, learners, colors, name, title, folder)
    paths += _alignment_plot(plt, learners, colors, title, folder)

    # logged stream quantities
    for j, log in enumerate(res.config["metric"].get("log") or []):
        fig, ax = plt.subplots(figsize=(8, 5))
        for lr in learners:
            best = lr.best()
            if best is None:
                continue
            mean, half = _band(lr.arrays["log_curve"][best.runs, j, :])
            x = lr.arrays["bin_end"]
            ax.plot(x, mean, color=colors[lr.label], label=lr.label)
            ax.fill_between(x, mean - half, mean + half, color=colors[lr.label], alpha=0.2, linewidth=0)
        ax.set_xlabel("step")
        ax.set_ylabel(log)
        ax.set_title(f"{title}: {log} (best setting, 95% CI over seeds)", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, folder / f"{log}.png"))
    return paths


def _alive(lr: LearnerResult) -> np.ndarray:
    best = lr.best()
    if best is None:
        return np.zeros(0, int)
    return best.runs[lr.arrays["diverged_at"][best.runs] < 0]


def _flops_plot(plt, learners: list, colors: dict, name: str, title: str, folder: Path) -> list[Path]:
    """The best setting's learning curve against cumulative FLOPs (FLOPs per learner step x steps)."""
    drawn = [lr for lr in learners if lr.summary.get("flops_per_step") and _alive(lr).size]
    if not drawn:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    positive = True
    for lr in drawn:
        mean, half = _band(lr.arrays["curve"][_alive(lr)])
        x = lr.arrays["bin_end"] * float(lr.summary["flops_per_step"])
        bound = "≥" if lr.summary.get("flops_lower_bound") else ""
        label = f"{lr.label} ({bound}{lr.summary['flops_per_step']:.3g} FLOPs/step)"
        positive &= _band_line(ax, x, mean, half, colors[lr.label], label)
    ax.set_xscale("log")
    _finish(ax, positive, "cumulative FLOPs of the learner (XLA cost analysis of one step x steps)", name,
            f"{title}: error against compute (best setting, 95% CI over seeds)", len(drawn))
    return [_save(fig, folder / "error_vs_flops.png")]


ALIGNMENT_PANELS = (("cosine", "cosine, all parameters"), ("cosine_cell", "cosine, cell"),
                    ("cosine_readout", "cosine, readout"), ("norm_ratio", "norm ratio |g| / |g*|, all"))


def _alignment_plot(plt, learners: list, colors: dict, title: str, folder: Path) -> list[Path]:
    """Binned alignment measures of every learner's best setting (mean over seeds, 95% band)."""
    drawn = [lr for lr in learners if "alignment_cosine" in lr.arrays and _alive(lr).size]
    if not drawn:
        return []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for ax, (key, label) in zip(axes.flat, ALIGNMENT_PANELS):
        for lr in drawn:
            values = lr.arrays.get(f"alignment_{key}")
            if values is None:
                continue
            mean, half = _band(values[_alive(lr)])
            x = lr.arrays["bin_end"]
            ax.plot(x, mean, color=colors[lr.label], label=lr.label)
            ax.fill_between(x, mean - half, mean + half, color=colors[lr.label], alpha=0.2, linewidth=0)
        if key == "norm_ratio":
            ax.set_yscale("log")
        else:
            ax.set_ylim(-1.05, 1.05)
            ax.axhline(0.0, color="k", linewidth=0.5)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=7, ncol=2 if len(drawn) > 8 else 1)
    ref = drawn[0].summary.get("alignment", {}).get("reference_name", "exact")
    fig.suptitle(f"{title}: alignment with the {ref} reference gradient (best setting, 95% CI over seeds)",
                 fontsize=10)
    return [_save(fig, folder / "alignment.png")]


def _lr_text(hparams: dict) -> str:
    return ", ".join(f"{'lr' if k == 'learning_rate' else k} {v:g}" for k, v in hparams.items())


def _sensitivity(lr: LearnerResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step size: the best other-hyperparameter setting's mean final metric and 95% half-width."""
    best_at: dict[float, tuple[float, float]] = {}
    for setting in lr.settings():
        rate = setting.hparams.get("learning_rate")
        if rate is None or not setting.ok.size:
            continue
        mean = setting.mean
        half = setting.ci95() if setting.ok.size > 1 else 0.0
        if rate not in best_at or mean < best_at[rate][0]:
            best_at[rate] = (mean, half)
    xs = np.array(sorted(best_at))
    return xs, np.array([best_at[x][0] for x in xs]), np.array([best_at[x][1] for x in xs])


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path

"""Reading results folders and turning them into comparison tables.

For every learner the best setting of its swept hyperparameters (step size, and lambda or optimizer settings when
those are swept too) is the one with the lowest final-window metric, averaged over seeds, among the settings
none of whose runs diverged (if every setting had a diverged run: among all, over the runs that did not
diverge). The table reports that mean with a 95% confidence interval over seeds (Student's t), the number of
diverged runs at that setting and in the whole sweep, the parameter count, XLA's FLOPs for one learner step and
the measured seed-steps per second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from online_rnn.experiment.loading import import_plugins
from online_rnn.experiment.schema import ConfigError
from online_rnn.experiment.storage import (CONFIG_FILE, PROGRESS, RESULTS, SUMMARY, DamagedFile, group_dir_name,
                                           read_json, read_npz, write_text)

HP_SHORT = {"learning_rate": "lr", "lam": "λ"}


@dataclass
class Setting:
    """One combination of swept hyperparameters and its runs (one per seed)."""

    hparams: dict
    runs: np.ndarray  # indices into the learner's run axis
    final: np.ndarray  # final-window metric per run (NaN if diverged)
    diverged: int
    score: float = math.nan  # what `best` minimises: the mean final metric, or -(mean final log) for "max <log>"

    @property
    def ok(self) -> np.ndarray:
        return self.final[np.isfinite(self.final)]

    @property
    def mean(self) -> float:
        ok = self.ok
        return float(ok.mean()) if ok.size else math.nan

    def ci95(self) -> float:
        return ci95(self.ok)


@dataclass
class LearnerResult:
    label: str
    spec: dict  # the learner's entry of the resolved config
    summary: Optional[dict] = None
    arrays: Optional[dict] = None
    progress: Optional[dict] = None
    best_by: str = "error"  # the config's metric.best_by

    @property
    def complete(self) -> bool:
        return self.arrays is not None

    def settings(self) -> list[Setting]:
        """Runs grouped by their non-seed hyperparameters, in sweep order."""
        arrays = self.arrays
        names = self.summary["hparams"]
        keys = list(zip(*(arrays[f"hp_{n}"] for n in names))) if names else [()] * len(arrays["seed"])
        order: list[tuple] = []
        for k in keys:
            if k not in order:
                order.append(k)
        div = arrays["diverged_at"] >= 0
        goal, log = parse_best_by(self.best_by)
        out = []
        for k in order:
            idx = np.array([i for i, kk in enumerate(keys) if kk == k])
            setting = Setting(dict(zip(names, map(float, k))), idx, arrays["final"][idx], int(div[idx].sum()))
            if log is None:
                setting.score = setting.mean
            else:
                vals = arrays["log_final"][idx[~div[idx]], self.summary["logs"].index(log)]
                vals = vals[np.isfinite(vals)]
                mean = float(vals.mean()) if vals.size else math.nan
                setting.score = -mean if goal == "max" else mean
            out.append(setting)
        return out

    def best(self) -> Optional[Setting]:
        settings = [s for s in self.settings() if s.ok.size]
        if not settings:
            return None
        clean = [s for s in settings if s.diverged == 0]
        return min(clean or settings, key=lambda s: (not np.isfinite(s.score), s.score))

    def swept(self) -> list[str]:
        """Hyperparameters with more than one value in this learner's sweep (learning rate always)."""
        sweep = self.spec.get("sweep", {})
        return [k for k, v in sweep.items() if k != "seeds" and (k == "learning_rate" or len(v) > 1)]


@dataclass
class Results:
    folder: Path
    config: dict
    hash: str
    learners: list[LearnerResult] = field(default_factory=list)

    @property
    def benchmark_key(self) -> str:
        c = self.config
        return json.dumps({"env": c["env"], "objective": c["objective"], "target": c["metric"]["target"]},
                          sort_keys=True)


def load_results(folder: str | Path) -> Results:
    """Read a results folder written by :func:`online_rnn.experiment.run` (complete or not). A damaged file is
    a one-line error naming it and what to do."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{folder}: not a results folder (no {CONFIG_FILE}); run `online-rnn run CONFIG` first")
    try:
        data = read_json(path)
        res = Results(folder, data["config"], data["hash"])
    except (DamagedFile, KeyError, TypeError) as err:
        raise ConfigError(f"{err if isinstance(err, DamagedFile) else f'{path} is damaged'}: this folder's "
                          f"config is unknown; run the config again into another folder") from None
    for spec in data["config"]["learners"]:
        sub = folder / group_dir_name(spec["label"])
        lr = LearnerResult(spec["label"], spec, best_by=data["config"]["metric"].get("best_by", "error"))
        try:
            if (sub / PROGRESS).exists():
                lr.progress = read_json(sub / PROGRESS)
            if (sub / RESULTS).exists() and (sub / SUMMARY).exists():
                lr.summary = read_json(sub / SUMMARY)
                lr.arrays = read_npz(sub / RESULTS, ["final", "curve", "diverged_at", "seed"])
        except DamagedFile as err:
            raise ConfigError(f"{err}; run the same config into {folder} again to compute it again") from None
        res.learners.append(lr)
    return res


def stream(config: dict) -> Any:
    """The stream of a results folder's config (its plugins imported), for what it declares."""
    from online_rnn import envs

    import_plugins(config.get("plugins") or [])
    env_cfg = dict(config["env"])
    return envs.make(env_cfg.pop("name"), **env_cfg)[0]


def parse_best_by(text: str) -> tuple[str, Optional[str]]:
    """``"error"`` -> ("min", None); ``"max <log>"`` / ``"min <log>"`` -> (goal, log name)."""
    if text == "error":
        return "min", None
    goal, _, log = text.partition(" ")
    return goal, log


# ------------------------------------------------------------------------------------------------ statistics


def t_quantile(df: int, p: float = 0.975) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def ci95(values: np.ndarray) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t); NaN for fewer than 2 values."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    n = values.size
    if n < 2:
        return math.nan
    return t_quantile(n - 1) * float(values.std(ddof=1)) / math.sqrt(n)


# ------------------------------------------------------------------------------------------------- tables


def metric_name(config: dict) -> str:
    """The name of the metric, as the objective (its loss) or the stream (an error to a target) declares it."""
    from online_rnn import objectives

    target = config["metric"]["target"]
    if target == "loss":
        return objectives.declared(objectives.factory(config["objective"]["name"]))["loss_name"]
    return stream(config).metric_names.get(target, f"mean squared error to {target}")


def benchmark_title(config: dict) -> str:
    env = dict(config["env"])
    name = env.pop("name")
    args = ", ".join(f"{k}={v}" for k, v in env.items())
    return f"{name}({args})" if args else name


def fmt(x: Optional[float], digits: int = 4) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def fmt_count(x: Optional[float]) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.0f}"


def _setting_text(setting: Setting, swept: list[str]) -> str:
    parts = []
    for name in swept:
        if name in setting.hparams:
            parts.append(f"{HP_SHORT.get(name, name)} {setting.hparams[name]:g}")
    return ", ".join(parts) or "-"


def table(results: list[Results]) -> str:
    """Markdown table of one benchmark from one or more results folders (same stream and metric)."""
    first = results[0]
    config = first.config
    name = metric_name(config)
    extra = list(stream(config).table_columns)  # (title, fn of the final mean) columns the stream declares
    logs = list(config["metric"].get("log") or [])
    head = ["learner", "steps", "best setting", f"final {name}, mean ± 95% CI", "seeds", "diverged (best/all)",
            "params", "FLOPs/step", "seed-steps/s"]
    head[4:4] = [title for title, _ in extra] + [f"{log} (end)" for log in logs]
    aligned = any(lr.complete and "alignment_cosine_mean" in lr.arrays for res in results for lr in res.learners)
    if aligned:  # mean alignment with the reference gradient (online_rnn.alignment) at the best setting
        head[-3:-3] = list(ALIGNMENT_COLUMNS.values())
    rows: list[tuple[float, list[str]]] = []
    lower_bound = False
    for res in results:
        def tag(label: str, folder: Path = res.folder) -> str:
            return label if len(results) == 1 else f"{label} ({folder.name})"

        for lr in res.learners:
            if not lr.complete:
                done = lr.progress
                if done is None:
                    status = "not run yet"
                else:
                    status = f"incomplete ({100 * done.get('steps_done', 0) / max(done.get('steps', 1), 1):.0f}% done)"
                row = [tag(lr.label), str(lr.spec.get("steps")), status]
                rows.append((math.inf, row + [""] * (len(head) - len(row))))
                continue
            s = lr.summary
            best = lr.best()
            total_div = int((lr.arrays["diverged_at"] >= 0).sum())
            flops = s.get("flops_per_step")
            lower_bound |= bool(s.get("flops_lower_bound")) and flops is not None
            flops_text = ("≥" if s.get("flops_lower_bound") and flops is not None else "") + fmt_count(flops)
            if best is None:
                row = [tag(lr.label), str(s["steps"]), "all diverged", "n/a"]
                row += ["n/a"] * len(extra) + [""] * len(logs)
                row += ["0", f"-/{total_div}"] + ["n/a"] * (len(ALIGNMENT_COLUMNS) if aligned else 0)
                row += [str(s["n_params"]), flops_text, fmt_count(s["seed_steps_per_second"])]
                rows.append((math.inf, row))
                continue
            mean, ci = best.mean, best.ci95()
            value = f"{fmt(mean)} ± {fmt(ci, 2)}" if np.isfinite(ci) else f"{fmt(mean)}"
            row = [tag(lr.label), str(s["steps"]), _setting_text(best, lr.swept()), value]
            row += [fmt(fn(mean)) for _, fn in extra]
            alive = best.runs[lr.arrays["diverged_at"][best.runs] < 0]
            for j, _ in enumerate(logs):
                vals = lr.arrays["log_final"][alive, j]
                vals = vals[np.isfinite(vals)]
                ci = ci95(vals)
                text = fmt(float(vals.mean())) if vals.size else "n/a"
                row.append(f"{text} ± {fmt(ci, 2)}" if np.isfinite(ci) else text)
            row += [str(best.ok.size), f"{best.diverged}/{total_div}"]
            if aligned:
                row += [alignment_text(lr, alive, name) for name in ALIGNMENT_COLUMNS]
            row += [str(s["n_params"]), flops_text, fmt_count(s["seed_steps_per_second"])]
            rows.append((best.score, row))
    rows.sort(key=lambda r: r[0] if np.isfinite(r[0]) else math.inf)
    windows = sorted({lr.summary["window"] for res in results for lr in res.learners if lr.complete})
    window_text = " / ".join(f"{w:,}" for w in windows) or "?"
    goal, log = parse_best_by(config["metric"].get("best_by", "error"))
    by = ("that mean" if log is None
          else f"the {'largest' if goal == 'max' else 'smallest'} {log} at the end of the run")
    lines = [
        f"## {benchmark_title(config)}: {name}",
        "",
        f"Final metric: mean over the last {window_text} steps of each run; best setting by {by}, mean over seeds "
        f"(non-diverged runs); rows in that order. Results: {', '.join(str(r.folder) for r in results)}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for _, r in rows]
    baselines = [lr.arrays["baseline"] for res in results for lr in res.learners
                 if lr.complete and "baseline" in lr.arrays]
    values = np.concatenate(baselines) if baselines else np.zeros(0)
    baseline = float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else math.nan
    if np.isfinite(baseline):
        lines += ["", f"For reference, the best constant prediction (the target's mean over each window) scores "
                      f"{fmt(baseline)} (the target's variance over the window, mean over runs)."]
    if lower_bound:
        lines += ["", "≥: the compiled step contains a loop, whose body XLA's cost analysis counts once."]
    if aligned:
        refs = sorted({str(lr.summary.get("alignment", {}).get("reference_name", "?")) for res in results
                       for lr in res.learners if lr.complete and "alignment" in lr.summary})
        lines += ["", f"Alignment with the {' / '.join(refs)} reference gradient (online_rnn.alignment): mean over the "
                      f"compared steps of each run, then over the best setting's seeds (± 95% CI); cos = cosine "
                      f"similarity, norm ratio = |g| / |g*|, sign = fraction of entries whose sign agrees."]
    return "\n".join(lines) + "\n"


ALIGNMENT_COLUMNS = {"cosine": "cos", "norm_ratio": "norm ratio", "sign": "sign"}  # no "|" in table headers


def alignment_text(lr: LearnerResult, runs: np.ndarray, name: str) -> str:
    """Mean ± 95% CI over ``runs`` of a run's mean alignment measure ``name`` (all parameters)."""
    values = lr.arrays.get(f"alignment_{name}_mean")
    if values is None:
        return "n/a"
    values = np.asarray(values, np.float64)[runs]
    values = values[np.isfinite(values)]
    if not values.size:
        return "n/a"
    ci = ci95(values)
    return f"{fmt(float(values.mean()), 3)} ± {fmt(ci, 2)}" if np.isfinite(ci) else fmt(float(values.mean()), 3)


def compare(folders: list[str | Path], write: bool = True) -> str:
    """Markdown tables, one per benchmark, of the results folders; written to ``comparison.md`` in the first
    folder when ``write``."""
    if not folders:
        raise ConfigError("compare: give at least one results folder")
    loaded = [load_results(f) for f in folders]
    groups: dict[str, list[Results]] = {}
    for res in loaded:
        groups.setdefault(res.benchmark_key, []).append(res)
    text = "\n".join(table(group) for group in groups.values())
    if write:
        write_text(Path(folders[0]) / "comparison.md", text)
    return text

"""Why a learner wins: every learner's gradient against the exact online gradient, and error against compute.

    python experiments/gradient_alignment.py [--budget 1] [--seeds 3] [--out results/gradient_alignment]
                                             [--docs docs] [--timing-steps 10000]

Runs configs/alignment_trace_patterning.yaml and configs/alignment_add_task.yaml (every learner of
``online_rnn.learners`` at matched small sizes, ``metric.alignment: {every: 100}``: each learner's gradient is
compared every 100 steps with the exact online gradient of its own network along its own trajectory, computed by
a shadow exact RTRL; see ``online_rnn.alignment``). Then:

* the shadow's cost: every learner is run again for ``--timing-steps`` steps without alignment, and the table
  gives seed-steps/s with and without the shadow, and the FLOPs of one shadow step beside the learner's;
* the window reference's error: ``rtrl`` on the add task with ``reference: {bptt_window: W}`` for a few W (RTRL's
  own gradient is exact, so its alignment with the window is the window's error against exact RTRL);
* writes ``<docs>/gradient_alignment.md`` (tables) and the figures ``<docs>/gradient_alignment_<task>_*.png``
  (alignment curves, error against cumulative FLOPs, learning curves).

Interrupt it at any time: running the same command again resumes.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from online_rnn import cli

ROOT = Path(__file__).resolve().parent.parent
TASKS = {"trace_patterning": ROOT / "configs" / "alignment_trace_patterning.yaml",
         "add_task": ROOT / "configs" / "alignment_add_task.yaml"}
WINDOWS = (2, 10)
NOT_RUN = {"trace_patterning": {"bptt"}}  # offline BPTT (one update per sequence) cannot serve TD(lambda)  # bptt_window references measured against exact RTRL on the add task


def main(argv: list[str] | None = None) -> int:
    cli.use_all_cores()  # before JAX starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=1.0, help="scales steps and stage lengths (default 1: 100k)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="results/gradient_alignment", help="results folders go here")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where the table and figures are written")
    p.add_argument("--timing-steps", type=int, default=10_000, help="steps of the runs without alignment")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    return cli.guarded(run, args)


def run(args: argparse.Namespace) -> int:
    from online_rnn import experiment, learners

    cli.enable_compilation_cache()
    out, docs = Path(args.out), Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sections, figures = [], []
    compiling = 0.0
    for task, config in TASKS.items():
        overrides = [f"budget={args.budget}", f"sweep.seeds={args.seeds}"]
        exp = experiment.load(config, overrides)
        missing = sorted(set(learners.names()) - {s.name for s in exp.learners} - NOT_RUN.get(task, set()))
        if missing:  # every registered learner is compared (plugins' too, if imported first)
            raise SystemExit(f"{config.name} has no entry for the learners {', '.join(missing)}")
        folder = out / task
        report = experiment.run(exp, folder, progress=not args.quiet)
        compiling += report.compile_seconds
        print(f"{task}: {report.seconds / 60:.1f} min ({report.compile_seconds:.0f} s compiling)", flush=True)
        timing = experiment.load(config, overrides + ["metric.alignment=null", f"steps={args.timing_steps}",
                                                      "metric.window=1000", "metric.bins=1"]
                                 + [f"learners.{i}.steps_per_stage={_stage_steps(s, args.timing_steps, exp)}"
                                    for i, s in enumerate(exp.learners) if "steps_per_stage" in s.kwargs])
        experiment.run(timing, out / f"{task}_no_alignment", progress=not args.quiet, flops=False)
        paths = experiment.plot(folder)
        for path in paths:
            if path.stem in ("alignment", "error_vs_flops", "learning_curves"):
                target = docs / f"gradient_alignment_{task}_{path.stem}.png"
                shutil.copyfile(path, target)
                figures.append((task, path.stem, target.name))
        sections.append(alignment_table(task, experiment.load_results(folder),
                                        experiment.load_results(out / f"{task}_no_alignment")))
    window_rows = []
    for w in WINDOWS:
        exp = experiment.load(TASKS["add_task"], [f"budget={args.budget}", f"sweep.seeds={args.seeds}",
                                                  f"metric.alignment.reference={{bptt_window: {w}}}"])
        folder = out / f"add_task_window{w}"
        experiment.run(exp, folder, progress=not args.quiet, only=["rtrl"], flops=False)
        window_rows.append((w, experiment.load_results(folder)))
    text = document(sections, window_rows, figures, args, time.perf_counter() - start, compiling)
    (docs / "gradient_alignment.md").write_text(text)
    print(text)
    print(f"written: {docs / 'gradient_alignment.md'} and {len(figures)} figures in {docs}")
    return 0


def _stage_steps(spec, steps: int, exp) -> int:
    """A stage length for the short timing run, in the same proportion to the run as in the experiment."""
    return max(1, math.ceil(spec.kwargs["steps_per_stage"] * steps / spec.steps))


def _mean_ci(values: np.ndarray, digits: int = 3) -> str:
    from online_rnn.experiment.analysis import ci95, fmt

    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return "n/a"
    ci = ci95(values)
    return f"{fmt(values.mean(), digits)} ± {fmt(ci, 2)}" if np.isfinite(ci) else fmt(values.mean(), digits)


def alignment_table(task: str, res, plain) -> str:
    """Markdown table of one task: per learner, final error, alignment at the best (only) setting, and cost."""
    from online_rnn.experiment.analysis import benchmark_title, fmt, fmt_count, metric_name

    speed = {lr.label: lr.summary.get("seed_steps_per_second") for lr in plain.learners if lr.complete}
    head = ["learner", "params", f"final {metric_name(res.config)}", "cos (cell)", "cos std over steps (cell)",
            "norm ratio (cell)", "sign (cell)", "cos (all)", "cos (readout)", "compared steps", "FLOPs/step learner",
            "FLOPs/step shadow", "seed-steps/s without / with shadow"]
    rows = []
    for lr in res.learners:
        if not lr.complete:
            continue
        a, s = lr.arrays, lr.summary
        best = lr.best()
        runs = best.runs[a["diverged_at"][best.runs] < 0] if best is not None else np.zeros(0, int)
        get = lambda k: a.get(f"alignment_{k}", np.full(len(a["seed"]), np.nan))[runs]  # noqa: E731
        flops = s.get("flops_per_step")
        shadow = s.get("alignment", {}).get("shadow_flops_per_step")
        rows.append((best.mean if best is not None else math.inf, [
            lr.label, str(s["n_params"]),
            _mean_ci(a["final"][runs], 4),
            _mean_ci(get("cosine_cell_mean")),
            fmt(float(np.nanmean(get("cosine_cell_std"))), 2) if runs.size else "n/a",
            _mean_ci(get("norm_ratio_cell_mean")), _mean_ci(get("sign_cell_mean")),
            _mean_ci(get("cosine_mean")), _mean_ci(get("cosine_readout_mean")),
            fmt(float(np.mean(a["alignment_steps"][runs])), 4) if runs.size else "n/a",
            ("≥" if s.get("flops_lower_bound") else "") + fmt_count(flops), fmt_count(shadow),
            f"{fmt_count(speed.get(lr.label))} / {fmt_count(s.get('seed_steps_per_second'))}",
        ]))
    rows.sort(key=lambda r: r[0])
    lines = [f"### {benchmark_title(res.config)}", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for _, r in rows]
    return "\n".join(lines)


def window_table(window_rows: list) -> str:
    lines = ["| window W | cos (all) | cos (cell) | norm ratio (cell) | sign (cell) |", "|---|---|---|---|---|"]
    for w, res in window_rows:
        lr = next(x for x in res.learners if x.label == "rtrl")
        if not lr.complete:
            continue
        a = lr.arrays
        ok = a["diverged_at"] < 0
        lines.append(f"| {w} | {_mean_ci(a['alignment_cosine_mean'][ok], 4)} | "
                     f"{_mean_ci(a['alignment_cosine_cell_mean'][ok], 4)} | "
                     f"{_mean_ci(1.0 / a['alignment_norm_ratio_cell_mean'][ok], 3)} | "
                     f"{_mean_ci(a['alignment_sign_cell_mean'][ok], 3)} |")
    return "\n".join(lines)


def document(sections: list, window_rows: list, figures: list, args, seconds: float, compiling: float) -> str:
    by_task = {}
    for task, kind, name in figures:
        by_task.setdefault(task, []).append((kind, name))
    parts = [
        "# Gradient alignment with the exact online gradient",
        "",
        "Written by `experiments/gradient_alignment.py` (configs `configs/alignment_trace_patterning.yaml`, "
        f"`configs/alignment_add_task.yaml`; budget {args.budget:g}, {args.seeds} seeds, one step size per learner; "
        f"{seconds / 60:.0f} min on this machine, {compiling:.0f} s of the two main sweeps' of it compiling; compiled "
        "programs are kept in a disk cache, so a first run compiles for longer). Every 100 steps each learner's gradient `g` (the one its update "
        "used) is compared with `g*`, the exact online gradient of the same objective at the same parameters, "
        "computed by a shadow exact RTRL on the learner's own network along the learner's own trajectory "
        "(`online_rnn.alignment`; Marschall, Cho & Savin 2020 compare learners the same way). Columns: the "
        "final-window error (mean ± 95% CI over seeds); over the cell's parameters, the cosine of `g` and `g*` "
        "(mean over the compared steps of a run, then mean ± 95% CI over seeds), its standard deviation over steps "
        "(mean over seeds), the norm ratio `|g| / |g*|` and the fraction of entries whose signs agree; the cosine over "
        "all parameters and over the readout's; XLA's FLOPs of one learner step and of one shadow step; "
        f"seed-steps/s of the sweep without the shadow (a separate run of {args.timing_steps:,} steps) and with it "
        "(both measured while the two cores ran two sweeps side by side, so only their ratio means much).",
        "",
        "Reading it. The readout's gradient is exact for every learner (its cosine is 1 up to round-off) and, "
        "early in learning, much larger than the cell's, so the cosine over all parameters is close to 1 for "
        "nearly everyone: the learners differ in the cell, and the cell columns are the ones to read. RTRL, columnar (exact per column on a "
        "network of independent columns) and the learning stage of constructive and hybrid networks are exact on "
        "what they train. Constructive and hybrid networks freeze their earlier stages: their overall cosine "
        "compares with the exact gradient of the whole grown network, frozen stages included, which they ignore by "
        "design (per-stage measures, `alignment_cosine_cell_stage<s>` in each `results.npz`, show the learning "
        "stage at 1). BPTT and strided T-BPTT update once per window and are compared then with the sum of the "
        "exact gradients since their previous update. A step where either gradient is zero is skipped.",
        "",
    ]
    for section in sections:
        parts += [section, ""]
        task = section.split("\n")[0]
        for tk, items in by_task.items():
            if tk in task:
                for kind, name in items:
                    parts += [f"![{tk} {kind}]({name})", ""]
    parts += [
        "### The window reference against exact RTRL",
        "",
        "For networks where exact RTRL costs too much, `metric.alignment.reference: {bptt_window: W}` uses the "
        "gradient of the step's loss by backpropagation through the learner's last W steps at the current "
        "parameters (an approximation). Its error, measured by running `rtrl` (whose gradient is exact) with it on "
        "the add task (its lags are 5 and 9 steps): cosine, norm ratio `|g_W| / |g*|` and sign agreement of the "
        "window's gradient with RTRL's, mean ± 95% CI over seeds.",
        "",
        window_table(window_rows),
        "",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())

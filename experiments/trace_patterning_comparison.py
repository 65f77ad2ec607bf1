"""The paper's comparison on CCN trace patterning, at a fraction of its budget.

    python experiments/trace_patterning_comparison.py --budget 0.01 --seeds 5 [--out DIR] [key=value ...]

Runs configs/trace_patterning.yaml (all learners, the paper's settings and step-size grids; the config's header
gives the sources) with ``steps`` and every stage length multiplied by ``--budget`` (1 = the paper's 50M steps
for the CCN learners and 10M for T-BPTT), then prints the comparison table, writes it and the figures to the
results folder, and sets the ranking by algorithm beside the paper's. Interrupt it at any time: running the same
command again resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from online_rnn import cli

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "trace_patterning.yaml"
PAPER_RANKING = "hybrid lowest error; columnar about equal to constructive; SnAp-1 and T-BPTT worst"


def main(argv: list[str] | None = None) -> int:
    cli.use_all_cores()  # before JAX starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=0.01, help="fraction of the paper's steps (default 0.01)")
    p.add_argument("--seeds", type=int, default=30, help="seeds per step size (the paper: 30)")
    p.add_argument("--out", help="results folder (default: results/trace_patterning_b<budget>_s<seeds>)")
    p.add_argument("--only", help="comma-separated learner labels to run now")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    return cli.guarded(run, args)


def run(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    # the paper's final window is 100k steps; at a small budget, a tenth of the T-BPTT runs (10M x budget)
    window = max(1000, min(100_000, round(1_000_000 * args.budget)))
    overrides = [f"budget={args.budget}", f"sweep.seeds={args.seeds}", f"metric.window={window}", *args.overrides]
    exp = experiment.load(CONFIG, overrides)
    cli.enable_compilation_cache()
    out = Path(args.out or f"results/trace_patterning_b{args.budget:g}_s{args.seeds}")
    only = args.only.split(",") if args.only else None
    report = experiment.run(exp, out, only=only)
    print(experiment.compare([out]))
    for path in experiment.plot(out):
        print(f"figure: {path}")
    print(f"\n{report.seconds / 60:.1f} min ({report.compile_seconds:.0f} s compiling)")
    print(f"ranking by algorithm here (best T-BPTT pair): {ranking(experiment.load_results(out))}")
    print(f"the paper's ranking: {PAPER_RANKING}")
    return 0


def ranking(results) -> str:
    """Algorithms ordered by their best learner's final error ('<' where the 95% intervals do not overlap)."""
    best: dict[str, tuple[float, float]] = {}
    for lr in results.learners:
        setting = lr.best() if lr.complete else None
        if setting is None:
            continue
        family = lr.label.split("_")[0]
        if family not in best or setting.mean < best[family][0]:
            best[family] = (setting.mean, setting.ci95())
    order = sorted(best, key=lambda f: best[f][0])
    text = order[0] if order else "(no results)"
    for prev, cur in zip(order, order[1:]):
        (m0, c0), (m1, c1) = best[prev], best[cur]
        separated = m0 + (c0 if c0 == c0 else 0) < m1 - (c1 if c1 == c1 else 0)
        text += (" < " if separated else " ~ ") + cur
    return text


if __name__ == "__main__":
    sys.exit(main())

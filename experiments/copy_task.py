"""The copy task: curriculum length reached against steps, per learner.

    python experiments/copy_task.py [--out DIR] [key=value ...]

Runs configs/copy_task.yaml (sequence length L grows when a learner copies well enough; the header gives the
sources and our choices), prints the comparison table (best step size by the length reached; loss also in bits
per character), and a table of the length reached at a few points of the run (mean over seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from online_rnn import cli

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "copy_task.yaml"
POINTS = 5  # columns of the length-against-steps table


def main(argv: list[str] | None = None) -> int:
    cli.use_all_cores()  # before JAX starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/copy_task")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return cli.guarded(run, p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    exp = experiment.load(CONFIG, args.overrides)
    cli.enable_compilation_cache()
    experiment.run(exp, args.out)
    print(experiment.compare([args.out]))
    for path in experiment.plot(args.out):
        print(f"figure: {path}")
    results = experiment.load_results(args.out)
    rows = []
    for lr in results.learners:
        best = lr.best() if lr.complete else None
        if best is None:
            continue
        alive = best.runs[lr.arrays["diverged_at"][best.runs] < 0]
        curve = lr.arrays["log_curve"][alive, lr.summary["logs"].index("curriculum_length"), :].mean(0)
        picks = np.linspace(0, curve.size - 1, POINTS).round().astype(int)
        rows.append((lr.label, lr.arrays["bin_end"][picks], curve[picks]))
    if rows:
        print("\ncurriculum length L (mean over seeds, best step size) at step:")
        print(f"{'learner':12s}" + "".join(f"{int(s):>10,d}" for s in rows[0][1]))
        for label, _, values in rows:
            print(f"{label:12s}" + "".join(f"{v:10.1f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The add task: final cross-entropy of each learner against the three reference levels.

    python experiments/add_task.py [--out DIR] [key=value ...]

Runs configs/add_task.yaml (a 32-unit vanilla RNN trained online by each learner; the header gives the sources
and our choices), prints the comparison table, and says which reference level each learner reached:
0.662 nats (no memory), 0.519 (remembers x_{t-5}), 0.454 (remembers both lags: optimal).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from online_rnn import cli

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "add_task.yaml"
LEVELS = {"no memory": 0.662, "lag 5 only": 0.519, "both lags (optimal)": 0.454}


def main(argv: list[str] | None = None) -> int:
    cli.use_all_cores()  # before JAX starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/add_task")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return cli.guarded(run, p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    exp = experiment.load(CONFIG, args.overrides)
    cli.enable_compilation_cache()
    experiment.run(exp, args.out)
    print(experiment.compare([args.out]))
    experiment.plot(args.out)
    print("learner        final CE (nats)   nearest reference level")
    for lr in experiment.load_results(args.out).learners:
        best = lr.best() if lr.complete else None
        if best is None:
            print(f"{lr.label:14s} {'n/a':>15s}")
            continue
        level = min(LEVELS, key=lambda k: abs(LEVELS[k] - best.mean))
        print(f"{lr.label:14s} {best.mean:8.3f} ± {best.ci95():.3f}   {LEVELS[level]:.3f} ({level})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Influence balancing: truncated BPTT diverges, RTRL and UORO converge.

    python experiments/influence_balancing.py [--out DIR] [key=value ...]

Runs configs/influence_balancing.yaml (the UORO paper's problem: one parameter whose short-term and long-term
effects on the loss have opposite signs; the header gives the sources) and reports, per learner and step size,
how many runs diverged (the step at which the prediction first became non-finite) or the final loss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from online_rnn import cli

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "influence_balancing.yaml"
CONVERGED = 1e-6  # final loss below this: s_t[0] within ~1e-3 of its target, theta at -1/6


def main(argv: list[str] | None = None) -> int:
    cli.use_all_cores()  # before JAX starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/influence_balancing")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return cli.guarded(run, p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    exp = experiment.load(CONFIG, args.overrides)
    cli.enable_compilation_cache()
    experiment.run(exp, args.out)
    print(experiment.compare([args.out]))
    experiment.plot(args.out)
    print("learner      step size  outcome")
    for lr in experiment.load_results(args.out).learners:
        for setting in lr.settings() if lr.complete else []:
            steps = lr.arrays["diverged_at"][setting.runs]
            if (steps >= 0).any():
                first = steps[steps >= 0].min()
                outcome = f"diverged in {int((steps >= 0).sum())}/{steps.size} runs, first at step {first}"
            else:
                loss = float(np.mean(setting.final))
                verdict = "converged" if loss < CONVERGED else "did not converge"
                outcome = f"{verdict}: final loss {loss:.3g}"
            print(f"{lr.label:12s} {setting.hparams['learning_rate']:9.0e}  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m online_rnn.demo``: a small version of the paper's trace-patterning comparison.

Runs ``configs/demo.yaml`` (the columnar, constructive and hybrid networks, SnAp-1 and T-BPTT of
``configs/trace_patterning.yaml`` at 1/25 of the paper's steps; the config's header says what was cut), then
prints the comparison table and writes it with the figures to ``results/demo``. Extra arguments are config
overrides, e.g. ``python -m online_rnn.demo budget=0.01 sweep.seeds=2``; ``--out DIR`` picks another results folder. Running
it again reuses finished results (and resumes an interrupted run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from online_rnn import cli

FULL_COMMAND = "online-rnn run configs/trace_patterning.yaml"
SCALED_COMMAND = "python experiments/trace_patterning_comparison.py --budget 0.01"


def main(argv: Optional[list[str]] = None) -> int:
    cli.use_all_cores()  # before JAX starts
    p = argparse.ArgumentParser(prog="python -m online_rnn.demo", description=__doc__.split("\n\n")[1])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=100000")
    p.add_argument("--out", default="results/demo", help="results folder (default: results/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return cli.guarded(_demo, args)


def _demo(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    start = time.perf_counter()
    path = cli.find_config("demo")
    exp = experiment.load(path, args.overrides)
    cli.enable_compilation_cache()
    import jax

    out = Path(args.out)
    runs = sum(len(s.grid()) for s in exp.learners)
    print(f"online_rnn demo: {len(exp.learners)} learners on trace patterning (CCN variant), {runs} runs "
          f"(seeds x step sizes) as {len(exp.learners)} compiled sweeps on {len(jax.devices())} CPU device(s)")
    print(f"config: {path}; results: {out}", flush=True)
    report = experiment.run(exp, out, progress=not args.quiet)
    table = experiment.compare([out])
    figures = experiment.plot(out)
    minutes = (time.perf_counter() - start) / 60
    print()
    print(table)
    print(f"table: {out / 'comparison.md'}")
    for fig in figures:
        print(f"figure: {fig}")
    print(f"\ndemo took {minutes:.1f} min ({report.compile_seconds:.0f} s of it compiling).")
    print(_verdict(experiment.load_results(out)))
    print(
        f"The paper's budget (50M steps per CCN run, 10M per T-BPTT run, 30 seeds): {FULL_COMMAND}\n"
        f"A scaled-down version with all of the paper's settings: {SCALED_COMMAND}"
    )
    return 0


def _verdict(results) -> str:
    """Which learners beat the best constant prediction (whose error is the target's variance) by more than
    their 95% interval, at this budget."""
    import numpy as np

    baselines = [lr.arrays["baseline"] for lr in results.learners if lr.complete]
    if not baselines:
        return ""
    values = np.concatenate(baselines)
    if not np.isfinite(values).any():
        return ""
    baseline = float(np.mean(values[np.isfinite(values)]))
    better = []
    for lr in results.learners:
        best = lr.best() if lr.complete else None
        if best is not None:
            ci = best.ci95()
            if best.mean + (ci if np.isfinite(ci) else 0.0) < baseline:
                better.append(lr.label)
    n = sum(lr.complete for lr in results.learners)
    names = ", ".join(better) if better else "none yet"
    return (f"Beating the best constant prediction ({baseline:.4g}) by more than their 95% interval at this "
            f"budget: {len(better)} of {n} learners ({names}). The paper's ranking (hybrid lowest error, columnar "
            "about equal to constructive, SnAp-1 and T-BPTT worst) is at 50M steps.")


if __name__ == "__main__":
    sys.exit(main())

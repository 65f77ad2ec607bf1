"""Cost per step of every learner of one or more configs, without running them.

    python experiments/learner_costs.py CONFIG [CONFIG ...] [--overrides key=value ...]

For each learner entry: its parameters (those that can affect the prediction, as ``online-rnn compare`` counts
them), XLA's FLOPs for one unbatched learner step (the number ``compare`` reports; ``+`` marks a lower bound,
when the compiled step holds a loop, which XLA counts once), and its memory per run: the floats of the whole
learner state a step reads and writes (parameters, optimizer state, credit-assignment trace, carry, objective
and normalisation statistics) and of the trace alone. Nothing runs; each step is compiled once, unbatched, for
its cost analysis (a few seconds per learner).
"""

from __future__ import annotations

import argparse
import sys

from online_rnn import cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="config names or paths (e.g. learners_add_task)")
    p.add_argument("--overrides", nargs="*", default=[], metavar="key=value")
    return cli.guarded(run, p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from online_rnn import experiment
    from online_rnn.experiment import runfn

    def floats(tree) -> int:
        return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree) if np.issubdtype(leaf.dtype, np.floating)))

    for name in args.configs:
        exp = experiment.load(cli.find_config(name), args.overrides)
        print(f"\n{exp.name}\n")
        print("| label | learner | params | FLOPs/step | state floats/run | trace floats/run |")
        print("|---|---|---:|---:|---:|---:|")
        for spec in exp.learners:
            fns = runfn.run_functions(exp, spec)
            state = jax.eval_shape(fns.learner.init, jax.random.PRNGKey(0))
            flops, lower_bound = runfn.step_flops(runfn.lower_step(exp, spec, fns))
            shown = "n/a" if flops is None else f"{flops:,.0f}{'+' if lower_bound else ''}"
            print(f"| {spec.label} | {spec.name} | {fns.learner.n_params:,} | {shown} | "
                  f"{floats(state):,} | {floats(state.trace):,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-step time and memory of each learner as the network grows, with log-log slopes.

    python benchmarks/scaling.py                 # the full table (a few minutes on 2 cores)
    python benchmarks/scaling.py --quick         # smaller sizes, for a smoke test
    python benchmarks/scaling.py --json out.json

One unbatched run of ``learner.step`` (float32, TD(lambda), the paper's RMSProp) is scanned over a stream of
sparse binary inputs of size 12 (the shape of the trace-patterning observation), after a warm-up call; time is
the median of 3 timed calls divided by the steps per call. Memory is the learner state's size in bytes plus
XLA's temporary buffers for the compiled run (``compiled.memory_analysis()``).

The slope is fitted on the two largest sizes, against units and against the number of parameters. Columnar
networks have O(units) parameters; dense SnAp-1, constructive and hybrid networks have O(units^2) (every unit
reads every other / every earlier unit), so "linear" for them means linear in parameters, which is the claim
of the paper (Javed, Shah, Sutton & White, JMLR 2023: O(n) per step for n parameters).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from online_rnn import cells, learners, objectives, streaming

INPUT = 12
STEPS = 200


def _factory(name: str) -> Callable[[int], learners.Learner]:
    td = objectives.td_lambda(0.9, 0.99)
    opt = streaming.ccn_rmsprop(1e-3)
    column = cells.lstm(1, init_range=0.01, forget_bias=0.0)
    return {
        "columnar": lambda n: learners.columnar(column, INPUT, 1, td, opt, n_columns=n),
        "constructive": lambda n: learners.constructive(column, INPUT, 1, td, opt, n_units=n, steps_per_stage=10**8),
        "hybrid": lambda n: learners.hybrid(column, INPUT, 1, td, opt, n_units=n, units_per_stage=4,
                                            steps_per_stage=10**8),
        "snap1": lambda n: learners.snap1(cells.lstm(n), INPUT, 1, td, opt),
        "uoro": lambda n: learners.uoro(cells.lstm(n), INPUT, 1, td, opt),
        "tbptt(k=10)": lambda n: learners.tbptt(cells.lstm(n), INPUT, 1, td, opt, truncation=10),
        "rtrl": lambda n: learners.rtrl(cells.lstm(n), INPUT, 1, td, opt),
    }[name]


SIZES = {
    "columnar": [8, 32, 128, 512, 1024],
    "constructive": [8, 16, 32, 64, 128],
    "hybrid": [8, 16, 32, 64, 128],
    "snap1": [8, 16, 32, 64, 128],
    "uoro": [8, 16, 32, 64, 128],
    "tbptt(k=10)": [8, 16, 32, 64, 128],
    "rtrl": [4, 8, 16, 32],
}
QUICK = {k: v[:3] for k, v in SIZES.items()}


def measure(learner: learners.Learner, steps: int = STEPS) -> dict:
    xs = (jax.random.uniform(jax.random.PRNGKey(0), (steps, INPUT)) < 0.1).astype(jnp.float32)
    cs = xs[:, 0]

    def run(state, xs, cs):
        state, infos = jax.lax.scan(lambda s, xc: learner.step(s, *xc), state, (xs, cs))
        return state, infos.loss[-1]

    state = learner.init(jax.random.PRNGKey(1))
    compiled = jax.jit(run).lower(state, xs, cs).compile()
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0) or 0) if mem is not None else 0
    state, _ = compiled(state, xs, cs)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        state, loss = compiled(state, xs, cs)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return {
        "us_per_step": 1e6 * float(np.median(times)) / steps,
        "state_bytes": int(state_bytes),
        "memory_bytes": int(state_bytes + temp),
        "params": int(learner.n_params),
    }


def slope(xs: list[float], ys: list[float]) -> float:
    return (math.log(ys[-1]) - math.log(ys[-2])) / (math.log(xs[-1]) - math.log(xs[-2]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--learners", nargs="*", default=list(SIZES))
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else SIZES
    results = {}
    print(f"jax {jax.__version__}, {jax.device_count()} device(s), backend {jax.default_backend()}")
    header = "| learner | units | params | us/step | memory (KiB) |"
    print(header + "\n|---|---:|---:|---:|---:|")
    for name in args.learners:
        rows = []
        for n in sizes[name]:
            row = {"units": n, **measure(_factory(name)(n))}
            rows.append(row)
            print(f"| {name} | {n} | {row['params']} | {row['us_per_step']:.1f} | {row['memory_bytes'] / 1024:.0f} |",
                  flush=True)
        units = [r["units"] for r in rows]
        params = [r["params"] for r in rows]
        t = [r["us_per_step"] for r in rows]
        results[name] = {
            "rows": rows,
            "slope_time_vs_units": slope(units, t),
            "slope_time_vs_params": slope(params, t),
            "slope_memory_vs_params": slope(params, [r["memory_bytes"] for r in rows]),
        }
    print("\n| learner | slope of time vs units | slope of time vs params | slope of memory vs params |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['slope_time_vs_units']:.2f} | {r['slope_time_vs_params']:.2f} | "
              f"{r['slope_memory_vs_params']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "devices": jax.device_count(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of every learner inside the real runner, at the paper's trace-patterning shapes.

    python benchmarks/throughput.py                       # full table (about 10 minutes on 2 cores)
    python benchmarks/throughput.py --quick               # S in {1, 32} only
    python benchmarks/throughput.py --learners columnar hybrid --seeds 1 8 32 128 512

Each measurement runs in its own process (so that peak memory is its own) with one JAX CPU device per core and
the runner of :mod:`online_rnn.experiment` (stream + learner + in-scan metric, float32, the run axis sharded over
the devices): the trace-patterning "ccn" stream, TD(lambda) with lambda 0.99, the paper's RMSProp. For each
learner shape and number of vmapped runs S it reports

* compile seconds of the whole sweep (trace, lower, compile of the sharded chunk function),
* seed-steps per second (S x steps / wall time of the fastest of three chunks after a warm-up chunk; S = 1 is
  the single-run speed),
* peak resident memory of the process (``ru_maxrss``),
* GFLOP/s: XLA's cost analysis of the unbatched ``learner.step`` times the seed-steps per second.

It also measures the machine's float32 matmul peak (a 2048^3 ``jnp.dot``, both cores) and, for exact RTRL, the
GFLOP/s of its influence update alone (``[A_t; row] @ J_{t-1}``, 2 |s|^2 P flops per step) against that peak.
Results: ``benchmarks/results/throughput.json`` and a markdown table on stdout (copy it into
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NORM = {"decay": 0.99999, "min_std": 0.1}
COLUMN = {"name": "lstm", "hidden_size": 1, "init_range": 0.01, "forget_bias": 0}
CCN = {"cell": COLUMN, "normalise_inputs": NORM, "normalise_features": NORM, "readout_step_scale": True}


def lstm(h: int, init: float = 0.01) -> dict:
    return {"name": "lstm", "hidden_size": h, "init_range": init, "forget_bias": 0}


# label -> learner entry of a config (the paper's trace-patterning shapes)
SHAPES = {
    "columnar 7": {"name": "columnar", "n_columns": 7, **CCN},
    "constructive 10": {"name": "constructive", "n_units": 10, "steps_per_stage": 5_000_000, **CCN},
    "hybrid 20 (4/stage)": {"name": "hybrid", "n_units": 20, "units_per_stage": 4, "steps_per_stage": 10_000_000,
                            **CCN},
    "T-BPTT (15, 4)": {"name": "tbptt", "truncation": 15, "cell": lstm(4, 0.5)},
    "T-BPTT (30, 2)": {"name": "tbptt", "truncation": 30, "cell": lstm(2, 0.70710678)},
    "SnAp-1 20": {"name": "snap1", "cell": lstm(20)},
    "UORO 20": {"name": "uoro", "cell": lstm(20)},
    "RTRL 8": {"name": "rtrl", "cell": lstm(8)},
    "RTRL 32": {"name": "rtrl", "cell": lstm(32)},
    "RTRL 128": {"name": "rtrl", "cell": lstm(128)},
}
SEEDS = [1, 32, 128, 256, 512]
MAX_SEEDS = {"RTRL 32": 32, "RTRL 128": 2}  # the influence matrix: 2 MB per run at 32 units, 74 MB at 128


def config(entry: dict, seeds: int, chunk: int) -> dict:
    if "steps_per_stage" in entry:
        # a stage longer than the few timed chunks (so the timed steps are the first stage's, as in the paper's
        # first 5-10M steps) but shorter than the nominal run, which validation requires; a step's cost does not
        # depend on the stage (every stage's units exist from the start, inactive ones masked)
        entry = {**entry, "steps_per_stage": 50 * chunk}
    return {
        "name": "throughput",
        "env": {"name": "trace_patterning", "variant": "ccn"},
        "objective": {"name": "td_lambda", "lam": 0.99},
        "steps": 100 * chunk,
        "chunk": chunk,
        "metric": {"window": chunk, "bins": 100, "target": "return"},
        "sweep": {"seeds": seeds, "learning_rate": [1e-3]},
        "learners": [{**entry, "optimizer": {"name": "ccn_rmsprop"}}],
    }


def chunk_for(label: str, seeds: int) -> int:
    """Steps per timed chunk: long enough to dwarf the per-call overhead, short enough to finish quickly."""
    if label.startswith("RTRL 128"):
        return 20
    if label.startswith("RTRL 32"):
        return 200
    return max(200, min(20_000, 400_000 // seeds))


# --------------------------------------------------------------------------------------- one measurement


def measure_one(label: str, seeds: int) -> dict:
    """Runs in a child process (the caller sets XLA_FLAGS before JAX starts)."""
    import resource

    import jax
    import numpy as np

    from online_rnn import experiment
    from online_rnn.experiment import groups

    chunk = chunk_for(label, seeds)
    exp = experiment.resolve(config(SHAPES[label], seeds, chunk))
    group = groups.Group(exp, exp.learners[0])
    t0 = time.perf_counter()
    group.compile(group.lower(flops=True))
    compile_s = time.perf_counter() - t0
    carry = group.init_carry()
    carry, out = group.run_chunk(carry, 0)  # warm-up
    jax.block_until_ready(out)
    wall = float("inf")
    for i in range(1, 4):  # the best of three chunks: the least disturbed by anything else on the machine
        t0 = time.perf_counter()
        carry, out = group.run_chunk(carry, i * chunk)
        jax.block_until_ready(out)
        wall = min(wall, time.perf_counter() - t0)
    rate = seeds * chunk / wall
    flops = group.flops
    result = {
        "label": label,
        "seeds": seeds,
        "devices": group.n_devices,
        "layout": group.layout,
        "chunk": chunk,
        "compile_seconds": compile_s,
        "seed_steps_per_second": rate,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_step": flops,
        "gflops": None if flops is None else flops * rate / 1e9,
        "n_params": int(group.fns.learner.n_params),
    }
    del np
    return result


def matmul_peak() -> float:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def rtrl_influence_update(hidden: int = 128, steps: int = 10) -> dict:
    """GFLOP/s of RTRL's influence update alone at its real shapes: ``[A_t; row] @ J_{t-1} + D_t``."""
    import jax
    import jax.numpy as jnp

    n_s = 2 * hidden
    p = 4 * hidden * (12 + hidden + 1)
    a = jax.random.normal(jax.random.PRNGKey(0), (n_s + 1, n_s), jnp.float32) / n_s
    j = jax.random.normal(jax.random.PRNGKey(1), (n_s, p), jnp.float32)
    d = jax.random.normal(jax.random.PRNGKey(2), (n_s, p), jnp.float32)

    def update(j, _):
        prod = a @ j
        return d + prod[:-1], prod[-1, 0]

    f = jax.jit(lambda j: jax.lax.scan(update, j, None, length=steps))
    jax.block_until_ready(f(j))
    t0 = time.perf_counter()
    jax.block_until_ready(f(j))
    dt = (time.perf_counter() - t0) / steps
    return {"hidden": hidden, "flops_per_step": 2 * (n_s + 1) * n_s * p, "gflops": 2 * (n_s + 1) * n_s * p / dt / 1e9,
            "ms_per_step": 1e3 * dt}


# ------------------------------------------------------------------------------------------------ driver


def child(args: list[str]) -> dict:
    cores = os.cpu_count() or 1
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={cores}",
               ONLINE_RNN_CACHE="0", JAX_COMPILATION_CACHE_DIR="")
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], seeds: list[int]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["label"], {})[r["seeds"]] = r
    head = "| learner | params | FLOPs/step | compile (s) | " + " | ".join(f"S={s}" for s in seeds)
    head += " | peak mem (MB) | GFLOP/s (best S) |"
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(seeds) + "---:|---:|"]
    for label, rs in by.items():
        any_r = next(iter(rs.values()))
        best = max(rs.values(), key=lambda r: r["seed_steps_per_second"])
        cells = []
        for s in seeds:
            r = rs.get(s)
            cells.append("" if r is None else f"{r['seed_steps_per_second'] / 1e6:.3f}M")
        flops = "n/a" if any_r["flops_per_step"] is None else f"{any_r['flops_per_step']:,.0f}"
        gfl = "n/a" if best["gflops"] is None else f"{best['gflops']:.1f}"
        comp = max(r["compile_seconds"] for r in rs.values())
        mem = max(r["peak_memory_mb"] for r in rs.values())
        lines.append(f"| {label} | {any_r['n_params']:,} | {flops} | {comp:.1f} | " + " | ".join(cells)
                     + f" | {mem:.0f} | {gfl} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--learners", nargs="*", default=list(SHAPES), help="labels of SHAPES")
    p.add_argument("--seeds", nargs="*", type=int, default=SEEDS)
    p.add_argument("--quick", action="store_true", help="S in {1, 32} only")
    p.add_argument("--out", default=str(HERE / "results" / "throughput.json"))
    args = p.parse_args(argv)
    if args.child is not None:
        kind = args.child[0]
        if kind == "measure":
            result = measure_one(args.child[1], int(args.child[2]))
        elif kind == "peak":
            result = {"matmul_peak_gflops": matmul_peak()}
        else:
            result = rtrl_influence_update()
        print(json.dumps(result))
        return 0
    seeds = [1, 32] if args.quick else args.seeds
    import jax

    peak = child(["peak"])["matmul_peak_gflops"]
    influence = child(["influence"])
    print(f"jax {jax.__version__}, {os.cpu_count()} cores ({platform.processor() or platform.machine()}); "
          f"float32 matmul peak {peak:.1f} GFLOP/s")
    print(f"RTRL 128 influence update: {influence['gflops']:.1f} GFLOP/s = {100 * influence['gflops'] / peak:.0f}% "
          f"of peak ({influence['ms_per_step']:.1f} ms per step)", flush=True)
    rows = []
    for label in args.learners:
        for s in seeds:
            if s > MAX_SEEDS.get(label, max(seeds)):
                continue
            try:
                r = child(["measure", label, str(s)])
            except RuntimeError as err:
                print(f"{label} S={s}: failed: {err}", flush=True)
                continue
            rows.append(r)
            print(f"{label:22s} S={s:4d}: {r['seed_steps_per_second'] / 1e6:7.3f}M seed-steps/s, compile "
                  f"{r['compile_seconds']:.1f}s, peak {r['peak_memory_mb']:.0f} MB", flush=True)
    print()
    print(table(rows, seeds))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"jax": jax.__version__, "cores": os.cpu_count(), "matmul_peak_gflops": peak,
                   "rtrl_influence_update": influence, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

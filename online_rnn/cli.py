"""``online-rnn``: run experiments from configs, compare and plot their results.

::

    online-rnn run CONFIG [key=value ...] [--out DIR]   run or resume a config (default out: results/<name>)
    online-rnn compare DIR [DIR ...]                     markdown table per benchmark (also DIR/comparison.md)
    online-rnn plot DIR                                  learning curves and step-size sensitivity (PNG)
    online-rnn list                                      learners, cells, streams, objectives, configs

CONFIG is a YAML path or the name of a config in ./configs or in the repository's configs folder
(``online-rnn run demo``). Overrides use dotted keys: ``steps=20000``, ``env.variant=ccn``,
``sweep.seeds=5``, ``learners.columnar.n_columns=5`` (by label) or ``learners.0.n_columns=5`` (by index).

Before JAX starts, the CLI exposes every CPU core as a JAX device (``XLA_FLAGS=
--xla_force_host_platform_device_count=<cores>``, unless XLA_FLAGS already sets a device count) so that runs
are split over the cores, and it keeps compiled programs in a disk cache (``~/.cache/online_rnn/jax``; ``--no-cache`` or
``ONLINE_RNN_CACHE=0`` turns it off) so that resuming or re-running a config does not recompile.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

PROG = "online-rnn"
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def use_all_cores() -> None:
    """Expose one JAX CPU device per core, unless XLA_FLAGS already sets a device count (other XLA flags are
    kept). Does nothing once JAX's backend has started (the flag would have no effect, and would only leak into
    child processes)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags or _backend_started():
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores()}".strip()


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API: assume it has started, and leave XLA_FLAGS alone
        return True


def enable_compilation_cache() -> None:
    if os.environ.get("ONLINE_RNN_CACHE", "1").lower() in ("0", "off", "false", "no"):
        return
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "online_rnn" / "jax"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(base))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def config_dirs() -> list[Path]:
    dirs = [Path.cwd() / "configs"]
    if REPO_CONFIGS.is_dir() and REPO_CONFIGS.resolve() != dirs[0].resolve():
        dirs.append(REPO_CONFIGS)
    return [d for d in dirs if d.is_dir()]


def find_config(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for folder in config_dirs():
        for candidate in (folder / name, folder / f"{name}.yaml", folder / f"{name}.yml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in config_dirs() for p in d.glob("*.y*ml")})
    hint = f"; configs found: {', '.join(known)}" if known else ""
    raise FileNotFoundError(f"config not found: {name}{hint}")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Online recurrent learning experiments.")
    sub = p.add_subparsers(dest="command", metavar="{run,compare,plot,list}")
    sub.required = True
    r = sub.add_parser("run", help="run or resume a config")
    r.add_argument("config", help="YAML file, or the name of a config in ./configs")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. steps=1000")
    r.add_argument("--out", help="results folder (default: results/<config name>)")
    r.add_argument("--only", metavar="LABEL[,LABEL...]", help="run only these learners now (same results folder)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--no-cache", action="store_true", help="do not use the disk cache of compiled programs")
    r.add_argument("--layout", default="auto", choices=["auto", "runs_last", "vmap"],
                   help="run axis of the compiled sweep: auto = runs_last on the CPU, vmap elsewhere")
    r.add_argument("--max-chunks", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop early
    c = sub.add_parser("compare", help="markdown table of results folders")
    c.add_argument("folders", nargs="+", metavar="DIR")
    pl = sub.add_parser("plot", help="PNG figures of a results folder")
    pl.add_argument("folder", metavar="DIR")
    sub.add_parser("list", help="registered learners, cells, streams, objectives and configs")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    use_all_cores()
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error
        return int(exit_.code or 0)
    commands = {"run": cmd_run, "compare": cmd_compare, "plot": cmd_plot, "list": lambda _: cmd_list()}
    return guarded(commands[args.command], args)


def guarded(fn, *args) -> int:
    """Run a command; user errors become one line ``online-rnn: error: ...`` and exit code 2."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; finished chunks are saved: run the same command again to resume",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


def cmd_run(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    path = find_config(args.config)
    exp = experiment.load(path, args.overrides)  # validates; nothing compiles before this returns
    if not args.no_cache:
        enable_compilation_cache()
    import jax

    out = Path(args.out) if args.out else Path("results") / exp.name
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    chosen = [s for s in exp.learners if only is None or s.label in only]
    n_runs = sum(len(s.grid()) for s in chosen)
    print(f"{exp.name}: {len(chosen)} learners, {n_runs} runs, on {len(jax.devices())} device(s); "
          f"results in {out}", flush=True)
    report = experiment.run(exp, out, progress=not args.quiet, max_chunks=args.max_chunks, only=only,
                            layout=args.layout)
    print(f"{report.seconds:.0f} s ({report.compile_seconds:.0f} s compiling)", flush=True)
    if not report.complete:
        print(f"stopped early after --max-chunks {args.max_chunks}; run the same command again to resume")
        return 0
    print(experiment.compare([out]))
    print(f"table written to {out / 'comparison.md'}; figures: {PROG} plot {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    for folder in args.folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"results folder not found: {folder}")
    print(experiment.compare(args.folders), end="")
    print(f"\nwritten to {Path(args.folders[0]) / 'comparison.md'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from online_rnn import experiment

    if not Path(args.folder).is_dir():
        raise FileNotFoundError(f"results folder not found: {args.folder}")
    paths = experiment.plot(args.folder)
    if not paths:
        print(f"{args.folder}: no finished learners to plot yet")
    for path in paths:
        print(path)
    return 0


def cmd_list() -> int:
    import inspect

    from online_rnn import envs, learners, objectives
    from online_rnn.experiment import config as cfg

    print("learners (name: shape and streaming arguments):")
    for name in learners.names():
        params = [p for p in inspect.signature(learners.factory(name)).parameters
                  if p not in cfg.SUPPLIED and p != "name"]
        print(f"  {name}: {', '.join(params)}")
    print("cells:")
    for name in cfg.cell_names():
        print(f"  {name}: {', '.join(cfg._cell_signature(name))}")
    print("streams (name, kind, observation size):")
    for name in envs.names():
        env, _ = envs.make(name)
        print(f"  {name}: {env.kind}, {env.observation_size} inputs, default objective {env.default_objective}")
    print(f"objectives: {', '.join(objectives.names())}")
    print("optimizers (sweepable hyperparameters besides learning_rate):")
    for name in cfg.optimizer_names():
        print(f"  {name}: {', '.join(cfg.optimizer_hyperparameters(name))}")
    print("configs:")
    found = False
    for folder in config_dirs():
        for path in sorted(folder.glob("*.y*ml")):
            found = True
            print(f"  {path.stem}: {_first_comment(path)} ({path})")
    if not found:
        print("  (none in ./configs)")
    return 0


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line:
            break
    return ""


if __name__ == "__main__":
    sys.exit(main())

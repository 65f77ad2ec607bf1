"""``online-rnn``: run experiments from configs, compare and plot their results.

::

    online-rnn run CONFIG [key=value ...] [--out DIR]   run or resume a config (default out: results/<name>)
    online-rnn run CONFIG --ray [ADDRESS]                the same on a Ray cluster (same results folder, same bits)
    online-rnn compare DIR [DIR ...]                     markdown table per benchmark (also DIR/comparison.md)
    online-rnn plot DIR                                  learning curves, step-size sensitivity, error against FLOPs,
                                                         alignment curves when measured (PNG)
    online-rnn list                                      learners, cells, streams, objectives, optimizers, configs

CONFIG is a YAML path or the name of a config in ./configs or among the configs shipped with the package
(``online-rnn run demo``). Overrides use dotted keys and may come anywhere on the line: ``steps=20000``,
``env.variant=ccn``, ``sweep.seeds=5``, ``learners.columnar.n_columns=5`` (by label) or ``learners.0.n_columns=5``
(by index). ``--plugin MODULE`` (repeatable) imports a module that registers learners, streams, cells, objectives
or optimizers first.

Before JAX starts, the CLI exposes every CPU core as a JAX device (``XLA_FLAGS=
--xla_force_host_platform_device_count=<cores>``, unless XLA_FLAGS already sets a device count) so that runs
are split over the cores, and it keeps compiled programs in a disk cache (``~/.cache/online_rnn/jax``;
``--no-cache`` or ``ONLINE_RNN_CACHE=0`` turns it off) so that resuming or re-running a config does not
recompile.

``--ray [ADDRESS]`` runs the sweep as Ray tasks (:mod:`online_rnn.experiment.distributed`; ``executor:`` in the
config sets the same and more): on the cluster at ADDRESS (``auto``, ``host:6379``), or without one on a cluster
started on this machine for the run. Ray is imported only then (``pip install 'online_rnn[ray]'``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

from online_rnn.machine import cores

PROG = "online-rnn"


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


def find_config(name: str) -> Path:
    from online_rnn.experiment import loading

    return loading.find_config(name)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Online recurrent learning experiments.")
    sub = p.add_subparsers(dest="command", metavar="{run,compare,plot,list}", parser_class=_Parser)
    sub.required = True
    r = sub.add_parser("run", help="run or resume a config")
    r.add_argument("config", help="YAML file, or the name of a config in ./configs or shipped with the package")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. steps=1000")
    r.add_argument("--out", help="results folder (default: results/<config name>)")
    r.add_argument("--only", metavar="LABEL[,LABEL...]", help="run only these learners now (same results folder)")
    r.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (or a .py file) first: it may register learners, streams, cells, ...")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--no-cache", action="store_true", help="do not use the disk cache of compiled programs")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the sweep as tasks on a Ray cluster: at ADDRESS (auto, host:port), or one started here; "
                        "sets executor.name=ray (executor.runs_per_task=... etc. as overrides)")
    r.add_argument("--layout", default="auto", choices=["auto", "runs_last", "vmap"],
                   help="run axis of the compiled sweep: auto = runs_last for sweeps of >= 16 runs on the CPU")
    r.add_argument("--max-chunks", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop early
    c = sub.add_parser("compare", help="markdown table of results folders")
    c.add_argument("folders", nargs="+", metavar="DIR")
    pl = sub.add_parser("plot", help="PNG figures of a results folder")
    pl.add_argument("folder", metavar="DIR")
    ls = sub.add_parser("list", help="registered learners, cells, streams, objectives, optimizers and configs")
    ls.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE first")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line; a command's own arguments are parsed intermixed, so that ``key=value`` overrides may
    come before or after its options."""
    top = parser()
    if argv and not argv[0].startswith("-"):
        subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        if argv[0] in subparsers.choices:
            args = subparsers.choices[argv[0]].parse_intermixed_args(argv[1:])
            args.command = argv[0]
            return args
    return top.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    use_all_cores()
    try:
        args = parse(argv)
    except SystemExit as exit_:  # --help or a usage error
        return int(exit_.code or 0)
    commands = {"run": cmd_run, "compare": cmd_compare, "plot": cmd_plot, "list": cmd_list}
    return guarded(commands[args.command], args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr if file is None else file, flush=True)


def guarded(fn, *args) -> int:
    """Run a command; user errors become one line ``online-rnn: error: ...`` and exit code 2; the library's
    warnings (a shadowed override, a damaged file set aside) one line ``online-rnn: warning: ...``."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
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
    finally:
        warnings.showwarning = previous


def cmd_run(args: argparse.Namespace) -> int:
    from online_rnn import experiment
    from online_rnn.experiment import loading

    experiment.import_plugins(args.plugin, "--plugin")
    path = find_config(args.config)
    overrides = list(args.overrides)
    if args.ray is not None and "=" in args.ray:  # `--ray steps=100`: an override, not an address
        overrides.append(args.ray)
        args.ray = ""
    raw = loading.load(path, overrides)
    if args.ray is not None and isinstance(raw.get("executor"), (dict, type(None))):  # else: resolve says what is wrong
        raw["executor"] = {**(raw.get("executor") or {}), "name": "ray", **({"address": args.ray} if args.ray else {})}
    exp = experiment.resolve(raw)  # validates; nothing compiles before this returns
    if not args.no_cache:
        enable_compilation_cache()
    import jax

    out = Path(args.out) if args.out else Path("results") / exp.name
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    chosen = [s for s in exp.learners if only is None or s.label in only]
    n_runs = sum(len(s.grid()) for s in chosen)
    ex = exp.executor
    where = (f"on the Ray cluster {ex['address'] or os.environ.get('RAY_ADDRESS') or 'started here'}, "
             f"{ex['runs_per_task']} runs per task" if ex["name"] == "ray" else f"on {len(jax.devices())} device(s)")
    print(f"{exp.name}: {len(chosen)} learners, {n_runs} runs, {where}; results in {out}", flush=True)
    report = experiment.run(exp, out, progress=not args.quiet, max_chunks=args.max_chunks, only=only,
                            layout=args.layout, plugins=tuple(args.plugin))
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


def cmd_list(args: argparse.Namespace) -> int:
    from online_rnn import cells, envs, experiment, learners, objectives, optimizers
    from online_rnn.experiment import loading, schema

    experiment.import_plugins(args.plugin, "--plugin")
    print("learners (name: shape arguments; the credit-assignment code that serves an example):")
    for name in learners.names():
        params = [p for p in learners.LEARNERS.parameters(name) if p not in schema.SUPPLIED + ("name", "options")]
        print(f"  {name}: {', '.join(params) or '-'}; {_path(name)}")
    print(f"  every learner also takes the streaming options {', '.join(learners.OPTION_FIELDS)}")
    print("cells:")
    for name in cells.names():
        print(f"  {name}: {', '.join(cells.CELLS.parameters(name))}")
    print("streams (name: kind, observation size, default objective, metric targets):")
    for name in envs.names():
        env, _ = envs.make(name)
        print(f"  {name}: {env.kind}, {env.observation_size} inputs, {env.default_objective}, "
              f"{', '.join(env.metric_targets)}")
    print("objectives (per-run settings and their ranges):")
    for name in objectives.names():
        hp = objectives.declared(objectives.factory(name))["hyperparams"]
        print(f"  {name}: {', '.join(f'{h} in {r.describe()}' for h, r in hp.items()) or '-'}")
    print("optimizers (settings a sweep may vary, and their ranges):")
    for name in optimizers.names():
        hp = optimizers.hyperparameters(name)
        print(f"  {name}: {', '.join(f'{h} in {r.describe()}' for h, r in hp.items())}")
    print("configs:")
    found = False
    for folder in loading.config_dirs():
        for path in sorted(folder.glob("*.y*ml")):
            found = True
            print(f"  {path.stem}: {_first_comment(path)} ({path})")
    if not found:
        print("  (none found)")
    return 0


def _path(name: str) -> str:
    """The credit-assignment path a learner takes with its example arguments (``learners.EXAMPLES``)."""
    import optax

    from online_rnn import learners, objectives

    example = dict(learners.EXAMPLES.get(name, {}))
    try:
        learner = learners.make(name, input_size=2, output_size=1, objective=objectives.squared_error(),
                                optimizer=optax.sgd(0.1), **example)
    except (ValueError, TypeError):
        return "its path depends on the cell and its arguments"
    return f"{learner.path} (on {example['cell'].name})"


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

"""Experiments: configs, compiled sweeps over seeds and step sizes, resumable results, tables and plots.

::

    from online_rnn import experiment
    exp = experiment.load("configs/demo.yaml", ["steps=20000"])     # validated, nothing compiled yet
    experiment.run(exp, "results/demo")                              # resumes if interrupted
    print(experiment.compare(["results/demo"]))                      # markdown table
    experiment.plot("results/demo")                                  # PNG files

With ``metric: {alignment: {every: 100}}`` every run also carries a shadow exact RTRL and saves how its
learner's gradient aligns with the exact online gradient (``alignment_cosine``, ... in each ``results.npz``;
see :mod:`online_rnn.alignment`).

The command line is ``online-rnn`` (:mod:`online_rnn.cli`). The modules, each importing only the ones before
it: :mod:`~online_rnn.experiment.schema` (the config format, the resolved form, value checks) ->
:mod:`~online_rnn.experiment.loading` (YAML, overrides, plugins, shipped configs) ->
:mod:`~online_rnn.experiment.build` (stream, objective, optimizer, cell and learner by name) ->
:mod:`~online_rnn.experiment.validate` (validation) -> :mod:`~online_rnn.experiment.runfn` (one run as pure
functions) -> :mod:`~online_rnn.experiment.accumulate` (per-run sums) -> :mod:`~online_rnn.experiment.storage`
(results folders) -> :mod:`~online_rnn.experiment.groups` (compiled, sharded sweeps) ->
:mod:`~online_rnn.experiment.runner` (the run loop) -> :mod:`~online_rnn.experiment.analysis` (tables) ->
:mod:`~online_rnn.experiment.plots` (figures). :mod:`~online_rnn.experiment.distributed` runs the same sweeps as
tasks on a Ray cluster (``executor: {name: ray}``; Ray is imported only there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from online_rnn.experiment import analysis, loading, runfn, runner
from online_rnn.experiment.analysis import compare, load_results
from online_rnn.experiment.loading import apply_override, find_config, import_plugins
from online_rnn.experiment.runfn import set_hyperparams
from online_rnn.experiment.runner import RunReport
from online_rnn.experiment.schema import ConfigError, ConfigWarning, Experiment, LearnerSpec, one_line


def resolve(raw: dict, check_shapes: bool = True) -> Experiment:
    """Validate a loaded config and fill in its defaults; with ``check_shapes``, also trace one step of every
    learner's run with ``jax.eval_shape`` (nothing compiles), so that shape errors surface before any run.
    Raises :class:`ConfigError` (one line)."""
    from online_rnn.experiment.validate import resolve as _resolve

    exp = _resolve(raw)
    if check_shapes:
        for spec in exp.learners:
            try:
                runfn.check_step(exp, spec)
            except ConfigError:
                raise
            except (ValueError, TypeError, KeyError) as err:
                raise ConfigError(f"learners.{spec.index} ({spec.label}): {one_line(err)}") from None
    return exp


def load(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    """Read, override and validate a config (raises :class:`ConfigError`; nothing is compiled)."""
    return resolve(loading.load(path, list(overrides)))


def run(exp: Experiment, out: str | Path | None = None, **kwargs) -> RunReport:
    """Run or resume ``exp`` into ``out`` (default ``results/<name>``); see :func:`runner.run`."""
    return runner.run(exp, out if out is not None else Path("results") / exp.name, **kwargs)


def plot(folder: str | Path) -> list[Path]:
    """Write the learning-curve and step-size-sensitivity PNGs of a results folder; returns their paths."""
    from online_rnn.experiment import plots

    return plots.plot(folder)


__all__ = [
    "ConfigError",
    "ConfigWarning",
    "Experiment",
    "LearnerSpec",
    "RunReport",
    "analysis",
    "apply_override",
    "compare",
    "find_config",
    "import_plugins",
    "load",
    "load_results",
    "loading",
    "plot",
    "resolve",
    "run",
    "runfn",
    "runner",
    "set_hyperparams",
]

"""Experiments: configs, compiled sweeps over seeds and step sizes, resumable results, tables and plots.

::

    from online_rnn import experiment
    exp = experiment.load("configs/demo.yaml", ["steps=20000"])     # validated, nothing compiled yet
    experiment.run(exp, "results/demo")                              # resumes if interrupted
    print(experiment.compare(["results/demo"]))                      # markdown table
    experiment.plot("results/demo")                                  # PNG files

The command line is ``online-rnn`` (:mod:`online_rnn.cli`). Config format: :mod:`online_rnn.experiment.config`;
runs, sharding, checkpoints and divergence: :mod:`online_rnn.experiment.runner`; tables:
:mod:`online_rnn.experiment.analysis`; figures: :mod:`online_rnn.experiment.plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from online_rnn.experiment import analysis, config, runner
from online_rnn.experiment.analysis import compare, load_results
from online_rnn.experiment.config import ConfigError, Experiment, LearnerSpec, apply_override, resolve
from online_rnn.experiment.runner import RunReport, set_hyperparams


def load(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    """Read, override and validate a config (raises :class:`ConfigError`; nothing is compiled)."""
    return resolve(config.load(path, list(overrides)))


def run(exp: Experiment, out: str | Path | None = None, **kwargs) -> RunReport:
    """Run or resume ``exp`` into ``out`` (default ``results/<name>``); see :func:`runner.run`."""
    return runner.run(exp, out if out is not None else Path("results") / exp.name, **kwargs)


def plot(folder: str | Path) -> list[Path]:
    """Write the learning-curve and step-size-sensitivity PNGs of a results folder; returns their paths."""
    from online_rnn.experiment import plots

    return plots.plot(folder)


__all__ = [
    "ConfigError",
    "Experiment",
    "LearnerSpec",
    "RunReport",
    "analysis",
    "apply_override",
    "compare",
    "config",
    "load",
    "load_results",
    "plot",
    "resolve",
    "run",
    "runner",
    "set_hyperparams",
]

"""The config format: its keys, the resolved form (:class:`Experiment`, :class:`LearnerSpec`), and the checks of
single values that every other module of the experiment layer uses.

A config names one stream, the learners to compare on it and the sweep::

    name: demo
    env: {name: trace_patterning, variant: ccn}      # constructor arguments of envs.make
    objective: {lam: 0.99}                           # optional; default: the stream's default objective
    steps: 100000                                    # steps per run (a learner may set its own `steps`)
    chunk: 10000                                     # steps per compiled call (progress, checkpoints)
    budget: 1.0                                      # scales `steps` and every learner argument `steps_per_*`
    metric: {window: 10000, bins: 50, target: trial_return}
                                                     # optional: alignment: {every: 100} (online_rnn.alignment)
    sweep: {seeds: 3, learning_rate: [0.01, 0.001]}  # seeds x step sizes x objective and optimizer settings
    plugins: [my_module]                             # optional: modules that register learners, streams, ...
    executor: {name: ray, runs_per_task: 64}         # optional: run the sweep's shards as tasks on a Ray cluster
    learners:
      - name: tbptt
        label: tbptt_k13_h2                          # unique; default: the learner's name
        cell: {name: lstm, hidden_size: 2}
        optimizer: {name: ccn_rmsprop}
        truncation: 13                               # shape arguments of the learner factory
        normalise_inputs: {decay: 0.99999}           # and its streaming options (learners.Options)
        sweep: {learning_rate: [0.001, 0.0001]}      # replaces the matching keys of the global sweep

Errors are one-line :class:`ConfigError` messages that start with the field's path.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

TOP_KEYS = ("name", "description", "env", "objective", "steps", "chunk", "budget", "metric", "sweep", "plugins",
            "learners", "executor")
EXECUTORS = ("local", "ray")
EXECUTOR_KEYS = ("name", "address", "runs_per_task", "cpus_per_task", "gpus_per_task", "retries")
METRIC_KEYS = ("window", "bins", "target", "log", "best_by", "alignment")
ALIGNMENT_KEYS = ("every", "reference")  # metric.alignment: see online_rnn.alignment
ALIGNMENT_REFERENCES = ("exact", "bptt_window")
LEARNER_BASE_KEYS = ("name", "label", "cell", "optimizer", "sweep", "steps")
SUPPLIED = ("cell", "input_size", "output_size", "objective", "optimizer")  # learner arguments the runner gives
DEFAULT_CHUNK = 10_000
DEFAULT_BINS = 100
DEFAULT_WINDOW_CAP = 100_000  # the paper's final window
LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # it names a folder: no "..", no leading dot or dash


class ConfigError(ValueError):
    """A one-line config error: ``<path>: <what is wrong>``."""


class ConfigWarning(UserWarning):
    """A config that runs, but probably not as meant (e.g. an override that some learners shadow)."""


def fail(path: str, message: str) -> None:
    raise ConfigError(f"{path}: {message}" if path else message)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------------ values


def show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_keys(mapping: dict, allowed: Any, path: str) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            names = ", ".join(allowed) or "(none)"
            fail(f"{path}.{key}" if path else str(key), f"unknown key; {hint}allowed: {names}")


def as_dict(value: Any, path: str, required: bool = False) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        fail(path, f"expected a mapping, got {show(value)}")
    return dict(value)


def as_int(value: Any, path: str, minimum: int = 1) -> int:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # 1e6 in YAML is a float
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected an int >= {minimum}, got {show(value)}")
    if value < minimum:
        fail(path, f"expected an int >= {minimum}, got {value}")
    return int(value)


def as_number(value: Any, path: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(path, f"expected a number, got {show(value)}")
    if positive and value <= 0:
        fail(path, f"expected a number > 0, got {value}")
    return float(value)


def as_str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        fail(path, f"expected a non-empty string, got {show(value)}")
    return value


def as_label(value: Any, path: str) -> str:
    """A name that becomes a folder name (results folder, learner folder)."""
    value = as_str(value, path)
    if not LABEL.fullmatch(value) or ".." in value:
        fail(path, f"use letters, digits, '_', '-' or '.', starting with a letter, digit or '_' and without '..' "
                   f"(it names a folder), got {value!r}")
    return value


def as_name(value: Any, path: str, allowed: list[str]) -> str:
    if not isinstance(value, str):
        fail(path, f"expected one of: {', '.join(allowed)}; got {show(value)}")
    if value not in allowed:
        near = difflib.get_close_matches(value, allowed, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        fail(path, f"unknown name {value!r}; {hint}allowed: {', '.join(allowed)}")
    return value


def as_number_list(value: Any, path: str) -> list[float]:
    """A sweep value: one number or a flat, non-empty list of distinct numbers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        fail(path, f"expected a number or a flat list of numbers, got {show(value)}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(path, f"expected a flat list of numbers, entry {i} is {show(v)}")
        out.append(float(v))
    if len(set(out)) != len(out):
        fail(path, f"repeated values in {out}")
    return out


def as_seeds(value: Any, path: str) -> list[int]:
    """``seeds: 5`` (seeds 0..4) or an explicit list of distinct non-negative ints."""
    if isinstance(value, list):
        if not value:
            fail(path, "expected an int (number of seeds) or a non-empty list of ints")
        seeds = [as_int(v, f"{path}[{i}]", minimum=0) for i, v in enumerate(value)]
        if len(set(seeds)) != len(seeds):
            fail(path, f"repeated seeds in {seeds}")
        if max(seeds) >= 2**31:
            fail(path, "seeds must be < 2**31")
        return seeds
    return list(range(as_int(value, path, minimum=1)))


def in_range(value: float, path: str, valid: Any) -> float:
    """``value`` within a :class:`online_rnn.checks.Range` (a one-line error naming ``path`` otherwise)."""
    try:
        return valid.check(path, value)
    except ValueError as err:
        raise ConfigError(one_line(err)) from None


# -------------------------------------------------------------------------------------------- resolved form


@dataclass(frozen=True)
class LearnerSpec:
    """One learner entry, resolved: everything a group of vmapped runs needs."""

    index: int
    label: str
    name: str
    cell: Optional[dict]
    optimizer: dict
    kwargs: dict  # shape arguments and streaming options (budget applied to steps_per_*)
    steps: int
    chunk: int
    window: int
    bins: int
    sweep: dict  # {"seeds": [...], "learning_rate": [...], ...} (merged with the global sweep)

    @property
    def hparam_names(self) -> list[str]:
        return [k for k in self.sweep if k != "seeds"]

    def grid(self) -> list[dict]:
        """The runs: every combination of the swept values (seeds innermost), as dicts including ``seed``."""
        names = self.hparam_names
        runs = []
        for combo in itertools.product(*(self.sweep[k] for k in names)):
            for seed in self.sweep["seeds"]:
                runs.append({"seed": seed, **dict(zip(names, combo))})
        return runs


@dataclass(frozen=True)
class Experiment:
    name: str
    env: dict
    objective: dict
    steps: int
    chunk: int
    budget: float
    metric: dict
    learners: tuple[LearnerSpec, ...]
    resolved: dict = field(repr=False)  # the canonical config that is hashed and stored with results
    hash: str = ""
    env_info: dict = field(default_factory=dict, repr=False)  # kind, observation_size, ...
    plugins: tuple[str, ...] = ()
    # where the sweep runs ({"name": "local"} or the Ray settings); not part of ``resolved`` or the hash: results
    # do not depend on it, and a sweep may be resumed under another executor
    executor: dict = field(default_factory=lambda: {"name": "local"}, compare=False)

    @property
    def kind(self) -> str:
        return self.env_info["kind"]

    def learner(self, label: str) -> LearnerSpec:
        for spec in self.learners:
            if spec.label == label:
                return spec
        raise KeyError(label)


def config_hash(resolved: dict) -> str:
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scaled(steps: int, budget: float) -> int:
    return max(1, int(round(steps * budget)))

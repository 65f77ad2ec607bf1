"""Experiment configs: load YAML, apply ``key=value`` overrides, validate everything, resolve defaults.

A config names one stream, the learners to compare on it and the sweep::

    name: demo
    env: {name: trace_patterning, variant: ccn}      # constructor arguments of envs.make
    objective: {lam: 0.99}                           # optional; default: the stream's default objective
    steps: 100000                                    # steps per run (a learner may set its own `steps`)
    chunk: 10000                                     # steps per compiled call (progress, checkpoints)
    budget: 1.0                                      # scales `steps` and every `steps_per_stage`
    metric: {window: 10000, bins: 50, target: trial_return}
    sweep: {seeds: 3, learning_rate: [0.01, 0.001]}  # seeds x step sizes x lam x optimizer hyperparameters
    learners:
      - name: tbptt
        label: tbptt_k13_h2                          # unique; default: the learner's name
        cell: {name: lstm, hidden_size: 2}
        optimizer: {name: ccn_rmsprop}
        truncation: 13                               # shape and streaming arguments of the learner factory
        sweep: {learning_rate: [0.001, 0.0001]}      # replaces the matching keys of the global sweep

Everything is checked here, in plain Python, before anything compiles: unknown keys (with the nearest valid
key), types, names of streams, learners, cells, optimizers and objectives, sweep values (flat lists of numbers),
and whether each learner fits the stream (``input_size`` comes from the stream). Learners and streams are built
and one step of the run is traced with ``jax.eval_shape`` (no compilation), so construction and shape errors
surface early too. Errors are one-line :class:`ConfigError` messages that start with the field's path.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

TOP_KEYS = ("name", "description", "env", "objective", "steps", "chunk", "budget", "metric", "sweep", "learners")
METRIC_KEYS = ("window", "bins", "target", "log", "best_by")
LEARNER_BASE_KEYS = ("name", "label", "cell", "optimizer", "sweep", "steps")
# learner factory arguments the runner supplies itself
SUPPLIED = ("cell", "input_size", "output_size", "objective", "optimizer")
SWEEP_FIXED_KEYS = ("seeds", "learning_rate", "lam")
DEFAULT_CHUNK = 10_000
DEFAULT_BINS = 100
DEFAULT_WINDOW_CAP = 100_000  # the paper's final window
LOGS_BY_ENV = {"copy_task": ("curriculum_length",)}


class ConfigError(ValueError):
    """A one-line config error: ``<path>: <what is wrong>``."""


def fail(path: str, message: str) -> None:
    raise ConfigError(f"{path}: {message}" if path else message)


# ------------------------------------------------------------------------------------------------ YAML loading


class _Loader(yaml.SafeLoader):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``); this loader reads it as a float."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _resolvers[:] = [(tag, rx) for tag, rx in _resolvers if tag != "tag:yaml.org,2002:float"]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, what: str = "config") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what}: invalid YAML{where}: {problem}") from None


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> dict:
    """Read a YAML config and apply ``key=value`` overrides (see :func:`apply_override`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = _unalias(parse_yaml(path.read_text(), str(path)))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (name, env, learners, ...), got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for item in overrides:
        apply_override(raw, item)
    return raw


def _unalias(node: Any) -> Any:
    """A copy in which no two places share an object (YAML anchors and aliases share one), so that an override
    of one learner's setting does not change the others'."""
    if isinstance(node, dict):
        return {k: _unalias(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unalias(v) for v in node]
    return node


def apply_override(config: dict, item: str) -> None:
    """Apply one ``dotted.key=value`` override in place. The value is parsed as YAML (``1e-3``, ``[1, 2]``,
    ``true``, ``null``). List entries are addressed by index or, for ``learners``, by label or name:
    ``learners.0.n_columns=5`` or ``learners.columnar.n_columns=5``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. steps=1000 or env.variant=ccn")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {item!r}: empty key")
    value = parse_yaml(text, f"override {key}")
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, ".".join(parts[:depth]))
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {item!r}: {where} is inside a {type(node).__name__}, not a mapping or list")


def _list_index(items: list, part: str, path: str) -> int:
    if re.fullmatch(r"-?\d+", part):
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"override {path}.{part}: index out of range ({len(items)} entries)")
        return index
    labels = [it.get("label", it.get("name")) if isinstance(it, dict) else None for it in items]
    if part in labels:
        return labels.index(part)
    names = [it.get("name") if isinstance(it, dict) else None for it in items]
    if names.count(part) == 1:
        return names.index(part)
    choices = [str(x) for x in labels if x is not None]
    near = difflib.get_close_matches(part, choices, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"override {path}.{part}: no entry with that label or index{hint} labels: {', '.join(choices)}")


# ---------------------------------------------------------------------------------------------- small checks


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
        fail(path, f"expected a mapping, got {_show(value)}")
    return dict(value)


def as_int(value: Any, path: str, minimum: int = 1) -> int:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # 1e6 in YAML is a float
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected an int >= {minimum}, got {_show(value)}")
    if value < minimum:
        fail(path, f"expected an int >= {minimum}, got {value}")
    return int(value)


def as_number(value: Any, path: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(path, f"expected a number, got {_show(value)}")
    if positive and value <= 0:
        fail(path, f"expected a number > 0, got {value}")
    return float(value)


def as_str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        fail(path, f"expected a non-empty string, got {_show(value)}")
    return value


def as_name(value: Any, path: str, allowed: list[str]) -> str:
    if not isinstance(value, str):
        fail(path, f"expected one of: {', '.join(allowed)}; got {_show(value)}")
    if value not in allowed:
        near = difflib.get_close_matches(value, allowed, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        fail(path, f"unknown name {value!r}; {hint}allowed: {', '.join(allowed)}")
    return value


def as_number_list(value: Any, path: str, positive: bool = False) -> list[float]:
    """A sweep value: one number or a flat, non-empty list of numbers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        fail(path, f"expected a number or a flat list of numbers, got {_show(value)}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(path, f"expected a flat list of numbers, entry {i} is {_show(v)}")
        if positive and v <= 0:
            fail(path, f"expected numbers > 0, entry {i} is {v}")
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


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


# ---------------------------------------------------------------------------------------------- registries


def _optimizers() -> dict[str, Callable]:
    import optax

    from online_rnn import streaming

    return {"sgd": optax.sgd, "adam": optax.adam, "rmsprop": optax.rmsprop, "ccn_rmsprop": streaming.ccn_rmsprop}


def _cells() -> dict[str, Callable]:
    from online_rnn import cells, envs

    table = {name: (lambda n: lambda **kw: cells.make(n, **kw))(name) for name in cells.names()}
    table["influence_balancing"] = envs.influence_balancing.cell
    return table


def _cell_signature(name: str) -> list[str]:
    from online_rnn import cells, envs

    fn = envs.influence_balancing.cell if name == "influence_balancing" else getattr(cells, name)
    return list(inspect.signature(fn).parameters)


def _column_credits() -> dict[str, Callable]:
    from online_rnn import learners

    return {"rtrl": learners.rtrl_credit, "snap1": learners.snap1_credit, "uoro": learners.uoro_credit}


def cell_names() -> list[str]:
    return sorted(_cells())


def optimizer_names() -> list[str]:
    return sorted(_optimizers())


def optimizer_hyperparameters(name: str) -> list[str]:
    """Numeric arguments of an optimizer factory other than the learning rate: sweepable per run."""
    sig = inspect.signature(_optimizers()[name])
    out = []
    for pname, p in sig.parameters.items():
        if pname == "learning_rate" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if isinstance(p.default, bool) or "dtype" in pname or pname.startswith("initial"):
            continue  # flags, dtypes, and values used only when the state is created (rmsprop's initial_scale)
        if p.default is None or isinstance(p.default, (int, float)):
            out.append(pname)
    return out


# ------------------------------------------------------------------------------------------- resolved config


@dataclass(frozen=True)
class LearnerSpec:
    """One learner entry, resolved: everything a group of vmapped runs needs."""

    index: int
    label: str
    name: str
    cell: Optional[dict]
    optimizer: dict
    kwargs: dict  # shape and streaming arguments (budget applied to steps_per_stage)
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


def resolve(raw: dict, check_shapes: bool = True) -> Experiment:
    """Validate a loaded config and fill in its defaults. Raises :class:`ConfigError` (one line)."""
    from online_rnn import envs, learners, objectives

    raw = copy.deepcopy(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping, got {_show(raw)}")
    check_keys(raw, TOP_KEYS, "")
    for required in ("env", "steps", "learners"):
        if required not in raw:
            fail(required, "required key is missing")
    name = as_str(raw.get("name", "experiment"), "name")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        fail("name", f"use letters, digits, '_', '-' or '.' (it names the results folder), got {name!r}")
    budget = as_number(raw.get("budget", 1.0), "budget", positive=True)
    steps_raw = as_int(raw["steps"], "steps")
    steps = _scaled(steps_raw, budget)
    chunk = as_int(raw.get("chunk", DEFAULT_CHUNK), "chunk")

    # ---- stream
    env_cfg = as_dict(raw["env"], "env", required=True)
    env_name = as_name(env_cfg.get("name"), "env.name", envs.names())
    env_kwargs = {k: v for k, v in env_cfg.items() if k != "name"}
    check_keys(env_kwargs, [p for p in inspect.signature(envs.factory(env_name)).parameters], "env")
    try:
        env, env_params = envs.make(env_name, **env_kwargs)
    except (ValueError, TypeError) as err:
        fail("env", _one_line(err))
    env_info = {
        "name": env_name,
        "kind": env.kind,
        "observation_size": env.observation_size,
        "signal_size": env.signal_size,
        "gamma": env.gamma,
        "default_objective": env.default_objective,
    }

    # ---- objective
    obj_cfg = as_dict(raw.get("objective"), "objective")
    obj_name = as_name(obj_cfg.get("name", env.default_objective), "objective.name", objectives.names())
    obj_kwargs = {k: v for k, v in obj_cfg.items() if k != "name"}
    if obj_name == "td_lambda" and env.kind != "prediction":
        fail("objective.name", f"td_lambda needs a prediction stream; {env_name} is {env.kind}")
    if obj_name != "td_lambda" and env.kind == "prediction":
        fail("objective.name", f"{env_name} is a prediction stream; use td_lambda")
    check_keys(obj_kwargs, list(inspect.signature(getattr(objectives, obj_name)).parameters), "objective")
    sweep_global = as_dict(raw.get("sweep"), "sweep")
    if obj_name == "td_lambda":
        if "gamma" in obj_kwargs:
            gamma = as_number(obj_kwargs["gamma"], "objective.gamma")
            if env.gamma is not None and abs(gamma - env.gamma) > 1e-12:
                fail("objective.gamma", f"{gamma} differs from the stream's gamma {env.gamma}, whose return the "
                     "metric uses; set env.gamma instead")
        obj_kwargs["gamma"] = float(env.gamma)
        if "lam" not in obj_kwargs:
            lams = sweep_global.get("lam")
            if lams is None:
                lams = next((lr.get("sweep", {}).get("lam") for lr in raw.get("learners") or []
                             if isinstance(lr, dict) and isinstance(lr.get("sweep"), dict)
                             and lr["sweep"].get("lam") is not None), None)
            if lams is None:
                fail("objective.lam", "td_lambda needs lam: set objective.lam or sweep.lam")
            obj_kwargs["lam"] = as_number_list(lams, "sweep.lam")[0]
        obj_kwargs["lam"] = as_number(obj_kwargs["lam"], "objective.lam")
    try:
        objective = objectives.make(obj_name, **obj_kwargs)
    except (ValueError, TypeError) as err:
        fail("objective", _one_line(err))

    # ---- metric
    metric_cfg = as_dict(raw.get("metric"), "metric")
    check_keys(metric_cfg, METRIC_KEYS, "metric")
    targets = ["return", "trial_return"] if env.kind == "prediction" else ["loss"]
    target = as_name(metric_cfg.get("target", targets[0]), "metric.target", targets)
    bins = as_int(metric_cfg.get("bins", DEFAULT_BINS), "metric.bins")
    window_cfg = metric_cfg.get("window")
    if window_cfg is not None:
        as_int(window_cfg, "metric.window")
    logs = metric_cfg.get("log", list(LOGS_BY_ENV.get(env_name, ())))
    if not isinstance(logs, list) or not all(isinstance(x, str) for x in logs):
        fail("metric.log", f"expected a list of names of the stream's info entries, got {_show(logs)}")
    best_by = metric_cfg.get("best_by", "error")
    choices = ["error"] + [f"{goal} {log}" for log in logs for goal in ("max", "min")]
    best_by = as_name(best_by, "metric.best_by", choices)

    # ---- global sweep
    sweep_global = _check_sweep(sweep_global, "sweep", None)

    # ---- learners
    items = raw["learners"]
    if not isinstance(items, list) or not items:
        fail("learners", f"expected a non-empty list of learners, got {_show(items)}")
    specs, labels = [], []
    for i, item in enumerate(items):
        spec = _resolve_learner(i, item, env, env_info, objective, steps, budget, chunk, bins, window_cfg,
                                sweep_global, learners)
        if spec.label in labels:
            fail(f"learners.{i}.label", f"duplicate label {spec.label!r}; give each learner a distinct label")
        labels.append(spec.label)
        specs.append(spec)

    metric = {"target": target, "bins": bins, "window": window_cfg, "log": list(logs), "best_by": best_by}
    resolved = {
        "name": name,
        "env": {"name": env_name, **env_kwargs},
        "objective": {"name": obj_name, **obj_kwargs},
        "steps": steps_raw,
        "budget": budget,
        "chunk": chunk,
        "metric": metric,
        "sweep": sweep_global,
        "learners": [_spec_dict(s) for s in specs],
    }
    resolved = json.loads(json.dumps(resolved))  # canonical: plain JSON types
    exp = Experiment(name, resolved["env"], resolved["objective"], steps, chunk, budget, metric, tuple(specs),
                     resolved, config_hash(resolved), env_info)
    if check_shapes:
        from online_rnn.experiment import runner

        for spec in specs:
            try:
                runner.check_step(exp, spec)
            except ConfigError:
                raise
            except (ValueError, TypeError, KeyError) as err:
                fail(f"learners.{spec.index} ({spec.label})", _one_line(err))
    return exp


def _scaled(steps: int, budget: float) -> int:
    return max(1, int(round(steps * budget)))


def _check_sweep(sweep: dict, path: str, optimizer: Optional[str]) -> dict:
    allowed = list(SWEEP_FIXED_KEYS)
    if optimizer is not None:
        allowed += [h for h in optimizer_hyperparameters(optimizer) if h not in allowed]
    else:
        allowed += sorted({h for o in optimizer_names() for h in optimizer_hyperparameters(o)} - set(allowed))
    check_keys(sweep, allowed, path)
    out = {}
    for key, value in sweep.items():
        if key == "seeds":
            out[key] = as_seeds(value, f"{path}.seeds")
        else:
            out[key] = as_number_list(value, f"{path}.{key}", positive=key == "learning_rate")
    return out


def _resolve_learner(i, item, env, env_info, objective, steps, budget, chunk, bins, window_cfg, sweep_global,
                     learners) -> LearnerSpec:
    path = f"learners.{i}"
    item = as_dict(item, path, required=True)
    lname = as_name(item.get("name"), f"{path}.name", learners.names())
    label = item.get("label", lname)
    label = as_str(label, f"{path}.label")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", label):
        fail(f"{path}.label", f"use letters, digits, '_', '-' or '.' (it names a results folder), got {label!r}")
    path = f"learners.{i} ({label})" if label != lname else f"learners.{i} ({lname})"
    params = inspect.signature(learners.factory(lname)).parameters
    shape_keys = [p for p in params if p not in SUPPLIED and p not in ("name", "options")]
    if "options" in params:  # the streaming options are flat keys of the learner entry
        shape_keys += list(learners.OPTION_FIELDS)
    check_keys(item, list(LEARNER_BASE_KEYS) + shape_keys + ["input_size", "output_size"], path)

    if "input_size" in item and as_int(item["input_size"], f"{path}.input_size") != env.observation_size:
        fail(f"{path}.input_size", f"{item['input_size']} does not fit the stream {env_info['name']}, whose "
             f"observations have {env.observation_size} entries (leave input_size out: it comes from the stream)")
    out_size = env.signal_size if env.kind == "supervised" else 1
    if "output_size" in item and as_int(item["output_size"], f"{path}.output_size") != out_size:
        fail(f"{path}.output_size", f"{item['output_size']} does not fit the stream {env_info['name']} "
             f"(it needs {out_size}; leave output_size out)")

    # cell
    cell_cfg = item.get("cell")
    annotation = str(params["cell"].annotation)
    cell_required = params["cell"].default is inspect.Parameter.empty and "Optional" not in annotation \
        and "None" not in annotation  # columnar, constructive and hybrid take None: lstm(1) columns
    if cell_cfg is None:
        if cell_required:
            fail(f"{path}.cell", f"required for {lname}, e.g. {{name: lstm, hidden_size: 8}}; cells: "
                 f"{', '.join(cell_names())}")
        cell = None
    else:
        cell_cfg = as_dict(cell_cfg, f"{path}.cell", required=True)
        cname = as_name(cell_cfg.get("name"), f"{path}.cell.name", cell_names())
        check_keys({k: v for k, v in cell_cfg.items() if k != "name"}, _cell_signature(cname), f"{path}.cell")
        cell = dict(cell_cfg)

    # optimizer
    opt_cfg = as_dict(item.get("optimizer"), f"{path}.optimizer", required=True)
    oname = as_name(opt_cfg.get("name"), f"{path}.optimizer.name", optimizer_names())
    opt_params = [p for p in inspect.signature(_optimizers()[oname]).parameters]
    if "learning_rate" in opt_cfg:
        fail(f"{path}.optimizer.learning_rate", "step sizes are swept: set sweep.learning_rate (global or in the "
             "learner)")
    check_keys({k: v for k, v in opt_cfg.items() if k != "name"}, [p for p in opt_params if p != "learning_rate"],
               f"{path}.optimizer")

    # sweep
    own = _check_sweep(as_dict(item.get("sweep"), f"{path}.sweep"), f"{path}.sweep", oname)
    merged = {k: v for k, v in sweep_global.items()}
    for key in list(merged):
        if key not in SWEEP_FIXED_KEYS and key not in optimizer_hyperparameters(oname):
            del merged[key]  # an optimizer hyperparameter of another optimizer
    merged.update(own)
    merged.setdefault("seeds", [0])
    if "learning_rate" not in merged:
        fail(f"{path}.sweep.learning_rate", "no step sizes: set sweep.learning_rate (global or in the learner)")
    if "lam" in merged and objective.name != "td_lambda":
        fail(f"{path}.sweep.lam", f"lam is a td_lambda setting; this stream's objective is {objective.name}")
    for key in merged:
        if key in opt_cfg:
            fail(f"{path}.optimizer.{key}", f"{key} is also swept (sweep.{key}); set it in one place")
    ordered = {"seeds": merged["seeds"], "learning_rate": merged["learning_rate"]}
    ordered.update({k: v for k, v in merged.items() if k not in ordered})

    # shape and streaming arguments
    kwargs = {k: v for k, v in item.items() if k in shape_keys}
    if "steps_per_stage" in kwargs:
        kwargs["steps_per_stage"] = _scaled(as_int(kwargs["steps_per_stage"], f"{path}.steps_per_stage"), budget)
    if "column_credit" in kwargs:
        as_name(kwargs["column_credit"], f"{path}.column_credit", sorted(_column_credits()))
    lsteps = _scaled(as_int(item["steps"], f"{path}.steps"), budget) if "steps" in item else steps
    window = min(as_int(window_cfg, "metric.window") if window_cfg is not None
                 else min(DEFAULT_WINDOW_CAP, max(1, lsteps // 10)), lsteps)
    spec = LearnerSpec(i, label, lname, cell, dict(opt_cfg), kwargs, lsteps, min(chunk, lsteps), window,
                       min(bins, lsteps), ordered)
    try:
        build_learner(spec, env, objective)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        fail(path, _one_line(err))
    return spec


def _spec_dict(spec: LearnerSpec) -> dict:
    return {
        "label": spec.label,
        "name": spec.name,
        "cell": spec.cell,
        "optimizer": spec.optimizer,
        **spec.kwargs,
        "steps": spec.steps,
        "chunk": spec.chunk,
        "window": spec.window,
        "bins": spec.bins,
        "sweep": spec.sweep,
    }


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------------- building


def build_optimizer(spec: LearnerSpec):
    """``optax.inject_hyperparams`` of the named optimizer, so that the learning rate (and any swept
    hyperparameter) is an array in the state that :func:`online_rnn.experiment.set_hyperparams` sets per run."""
    import optax

    cfg = dict(spec.optimizer)
    factory = _optimizers()[cfg.pop("name")]
    first = {k: v[0] for k, v in spec.sweep.items() if k not in ("seeds", "lam")}
    static = [k for k, v in cfg.items() if isinstance(v, bool) or isinstance(v, str)]
    return optax.inject_hyperparams(factory, static_args=static)(**cfg, **first)


def build_cell(cfg: Optional[dict]):
    if cfg is None:
        return None
    cfg = dict(cfg)
    return _cells()[cfg.pop("name")](**cfg)


def build_learner(spec: LearnerSpec, env, objective):
    """The learner of a spec for a stream (plain Python; nothing compiles)."""
    from online_rnn import learners

    kwargs = dict(spec.kwargs)
    options = {k: kwargs.pop(k) for k in learners.OPTION_FIELDS if k in kwargs}
    if options:
        kwargs["options"] = learners.Options(**options)
    if "column_credit" in kwargs:
        kwargs["column_credit"] = _column_credits()[kwargs["column_credit"]]
    out_size = env.signal_size if env.kind == "supervised" else 1
    try:
        cell = build_cell(spec.cell)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"learners.{spec.index} ({spec.label}).cell: {_one_line(err)}") from None
    try:
        optimizer = build_optimizer(spec)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"learners.{spec.index} ({spec.label}).optimizer: {_one_line(err)}") from None
    return learners.make(spec.name, cell=cell, input_size=env.observation_size, output_size=out_size,
                         objective=objective, optimizer=optimizer, **kwargs)


def build(exp: Experiment, spec: LearnerSpec):
    """``(env, env_params, learner)`` for one learner of a resolved experiment."""
    from online_rnn import envs, objectives

    env_kwargs = {k: v for k, v in exp.env.items() if k != "name"}
    env, params = envs.make(exp.env["name"], **env_kwargs)
    obj = dict(exp.objective)
    objective = objectives.make(obj.pop("name"), **obj)
    return env, params, build_learner(spec, env, objective)

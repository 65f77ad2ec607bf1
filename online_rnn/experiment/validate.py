"""Validating a loaded config and filling in its defaults: :func:`resolve` turns the YAML mapping into an
:class:`~online_rnn.experiment.schema.Experiment`, or raises a one-line
:class:`~online_rnn.experiment.schema.ConfigError` naming the field and the allowed values.

Everything is checked here, in plain Python, before anything compiles: unknown keys (with the nearest valid
key), types, names of streams, learners, cells, optimizers and objectives (from their registries, so plugins
count), values in their valid ranges (an objective's and an optimizer's declared ranges), sweep values, stage
lengths that fit the run, and whether each learner can be built for the stream. What a stream, an objective or
a learner needs is read from what it declares (a stream's ``metric_targets`` and ``default_logs``, an
objective's ``kind``, ``hyperparams`` and ``discount``), never from its name.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from typing import Any, Optional

from online_rnn import cells, envs, learners, objectives, optimizers
from online_rnn.experiment import build
from online_rnn.experiment.loading import import_plugins
from online_rnn.experiment.schema import (ALIGNMENT_KEYS, ALIGNMENT_REFERENCES, DEFAULT_BINS, DEFAULT_CHUNK,
                                          DEFAULT_WINDOW_CAP, EXECUTOR_KEYS, EXECUTORS, LEARNER_BASE_KEYS, METRIC_KEYS,
                                          SUPPLIED, TOP_KEYS, ConfigError, Experiment, LearnerSpec, as_dict, as_int,
                                          as_label, as_name, as_number, as_number_list, as_seeds, check_keys,
                                          config_hash, fail, in_range, one_line, scaled, show)


def resolve(raw: dict) -> Experiment:
    """Validate a loaded config (plugins imported first) and fill in its defaults."""
    raw = copy.deepcopy(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping, got {show(raw)}")
    check_keys(raw, TOP_KEYS, "")
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list):
        fail("plugins", f"expected a list of module names, got {show(plugins)}")
    plugins = import_plugins(plugins)
    for required in ("env", "steps", "learners"):
        if required not in raw:
            fail(required, "required key is missing")
    name = as_label(raw.get("name", "experiment"), "name")
    budget = as_number(raw.get("budget", 1.0), "budget", positive=True)
    steps_raw = as_int(raw["steps"], "steps")
    steps = scaled(steps_raw, budget)
    chunk = as_int(raw.get("chunk", DEFAULT_CHUNK), "chunk")
    executor = resolve_executor(raw.get("executor"))

    # ---- stream
    env_cfg = as_dict(raw["env"], "env", required=True)
    env_name = as_name(env_cfg.get("name"), "env.name", envs.names())
    env_kwargs = {k: v for k, v in env_cfg.items() if k != "name"}
    check_keys(env_kwargs, envs.STREAMS.parameters(env_name), "env")
    try:
        env, _ = envs.make(env_name, **env_kwargs)
    except (ValueError, TypeError) as err:
        fail("env", one_line(err))
    env_info = {"name": env_name, "kind": env.kind, "observation_size": env.observation_size,
                "signal_size": env.signal_size, "gamma": env.gamma, "default_objective": env.default_objective}

    # ---- objective and the sweep
    sweep_raw = as_dict(raw.get("sweep"), "sweep")
    obj_cfg = as_dict(raw.get("objective"), "objective")
    obj_name = as_name(obj_cfg.get("name", env.default_objective), "objective.name", objectives.names())
    obj_kwargs = {k: v for k, v in obj_cfg.items() if k != "name"}
    declared = objectives.declared(objectives.factory(obj_name))
    if declared["kind"] != env.kind:
        fail("objective.name", f"{env_name} is a {env.kind} stream; use an objective for {env.kind} streams such as "
                               f"{env.default_objective} ({obj_name} is for {declared['kind']} streams)")
    check_keys(obj_kwargs, objectives.OBJECTIVES.parameters(obj_name), "objective")
    per_run = {h: r for h, r in declared["hyperparams"].items() if h != declared["discount"]}
    obj_kwargs = _objective_values(obj_kwargs, declared, per_run, env, sweep_raw, raw.get("learners"))
    try:
        objective = objectives.make(obj_name, **obj_kwargs)
    except (ValueError, TypeError) as err:
        fail("objective", one_line(err))

    # ---- metric
    metric_cfg = as_dict(raw.get("metric"), "metric")
    check_keys(metric_cfg, METRIC_KEYS, "metric")
    targets = list(env.metric_targets)
    target = as_name(metric_cfg.get("target", targets[0]), "metric.target", targets)
    bins = as_int(metric_cfg.get("bins", DEFAULT_BINS), "metric.bins")
    window_cfg = metric_cfg.get("window")
    if window_cfg is not None:
        as_int(window_cfg, "metric.window")
    logs = metric_cfg.get("log", list(env.default_logs))
    if not isinstance(logs, list) or not all(isinstance(x, str) for x in logs):
        fail("metric.log", f"expected a list of names of the stream's info entries, got {show(logs)}")
    choices = ["error"] + [f"{goal} {log}" for log in logs for goal in ("max", "min")]
    best_by = as_name(metric_cfg.get("best_by", "error"), "metric.best_by", choices)
    alignment = _alignment(metric_cfg.get("alignment"), objective)
    if alignment is not None and executor["name"] != "local":
        fail("metric.alignment", f"not available with the {executor['name']} executor yet: measure alignment in a "
                                 f"local run (its shadow learner is not carried through a task's shards)")

    # ---- learners
    sweep_global = _check_sweep(sweep_raw, "sweep", per_run, None)
    items = raw["learners"]
    if not isinstance(items, list) or not items:
        fail("learners", f"expected a non-empty list of learners, got {show(items)}")
    specs: list[LearnerSpec] = []
    for i, item in enumerate(items):
        spec = _resolve_learner(i, item, env, objective, per_run, steps, budget, chunk, bins, window_cfg,
                                sweep_global)
        if spec.label in [s.label for s in specs]:
            fail(f"learners.{i}.label", f"duplicate label {spec.label!r}; give each learner a distinct label")
        specs.append(spec)

    metric = {"target": target, "bins": bins, "window": window_cfg, "log": list(logs), "best_by": best_by}
    if alignment is not None:
        metric["alignment"] = alignment
    resolved = {"name": name, "env": {"name": env_name, **env_kwargs}, "objective": {"name": obj_name, **obj_kwargs},
                "steps": steps_raw, "budget": budget, "chunk": chunk, "metric": metric, "sweep": sweep_global,
                "learners": [_spec_dict(s) for s in specs]}
    if plugins:
        resolved["plugins"] = list(plugins)
    resolved = json.loads(json.dumps(resolved))  # canonical: plain JSON types
    return Experiment(name, resolved["env"], resolved["objective"], steps, chunk, budget, metric, tuple(specs),
                      resolved, config_hash(resolved), env_info, plugins, executor)


DEFAULT_RUNS_PER_TASK = 64


def resolve_executor(value: Any) -> dict:
    """Where the sweep runs: ``{name: local}`` (default) or ``{name: ray, address, runs_per_task, cpus_per_task,
    gpus_per_task, retries}``. A task runs ``runs_per_task`` runs of one learner; it must be a multiple of the
    run quantum (16), so that a shard's runs sit in the vectors of the compiled sweep as they do in a local run
    and give the same bits."""
    from online_rnn.experiment.groups import RUN_QUANTUM  # a constant; groups is imported by then anyway

    cfg = as_dict(value, "executor")
    name = as_name(cfg.get("name", "local"), "executor.name", list(EXECUTORS))
    if name == "local":
        check_keys(cfg, ["name"], "executor")
        return {"name": "local"}
    check_keys(cfg, EXECUTOR_KEYS, "executor")
    address = cfg.get("address")
    if address is not None and (not isinstance(address, str) or not address):
        fail("executor.address", f"expected a cluster address such as auto, 10.0.0.1:6379 or ray://head:10001, or "
                                 f"null for a cluster on this machine; got {show(address)}")
    runs = as_int(cfg.get("runs_per_task", DEFAULT_RUNS_PER_TASK), "executor.runs_per_task")
    if runs % RUN_QUANTUM:
        fail("executor.runs_per_task", f"expected a multiple of {RUN_QUANTUM} (the compiled sweep's run quantum, so "
                                       f"that a run's bits do not depend on the shard it is in), got {runs}")
    cpus = as_int(cfg.get("cpus_per_task", 1), "executor.cpus_per_task")
    gpus = as_number(cfg.get("gpus_per_task", 0), "executor.gpus_per_task")
    if gpus < 0:
        fail("executor.gpus_per_task", f"expected a number >= 0, got {gpus:g}")
    retries = as_int(cfg.get("retries", 3), "executor.retries", minimum=0)
    if importlib.util.find_spec("ray") is None:
        fail("executor.name", "ray is not installed: pip install 'online_rnn[ray]' (or run without --ray)")
    return {"name": "ray", "address": address, "runs_per_task": runs, "cpus_per_task": cpus,
            "gpus_per_task": gpus, "retries": retries}


def _alignment(cfg: Any, objective: Any) -> Optional[dict]:
    """``metric.alignment``: ``{every: N}`` (exact reference) or ``{every: N, reference: {bptt_window: W}}``;
    resolved to ``{"every": N, "reference": "exact"}`` or ``{"every": N, "reference": {"bptt_window": W}}``."""
    if cfg is None or cfg is False:
        return None
    path = "metric.alignment"
    cfg = as_dict(cfg, path, required=True)
    check_keys(cfg, ALIGNMENT_KEYS, path)
    if "every" not in cfg:
        fail(f"{path}.every", "required: measure every N steps, e.g. {every: 100}")
    every = as_int(cfg["every"], f"{path}.every")
    reference = cfg.get("reference", "exact")
    if reference == "exact":
        return {"every": every, "reference": "exact"}
    if not isinstance(reference, dict):
        fail(f"{path}.reference", f"expected exact or {{bptt_window: W}}; allowed: {', '.join(ALIGNMENT_REFERENCES)}, "
                                  f"got {show(reference)}")
    check_keys(reference, ALIGNMENT_REFERENCES[1:], f"{path}.reference")
    if "bptt_window" not in reference:
        fail(f"{path}.reference", "expected exact or {bptt_window: W}")
    window = as_int(reference["bptt_window"], f"{path}.reference.bptt_window")
    if objective.per_step_gradient:
        fail(f"{path}.reference.bptt_window", f"serves supervised objectives only; {objective.name} needs every "
                                              f"step's full gradient: use reference: exact")
    return {"every": every, "reference": {"bptt_window": window}}


def _objective_values(obj_kwargs: dict, declared: dict, per_run: dict, env: Any, sweep: dict,
                      items: Any) -> dict:
    """The objective's arguments: its discount is the stream's; each per-run setting is given, or swept (the
    first swept value stands in at construction; the runner sets every run's own)."""
    out = dict(obj_kwargs)
    discount = declared["discount"]
    if discount is not None and env.gamma is not None:
        if discount in out:
            value = as_number(out[discount], f"objective.{discount}")
            if abs(value - env.gamma) > 1e-12:
                fail(f"objective.{discount}", f"{value} differs from the stream's discount {env.gamma}, whose return "
                     f"the metric uses; set it in env instead")
        out[discount] = float(env.gamma)
    swept = [sweep] + [it.get("sweep") for it in (items if isinstance(items, list) else [])
                       if isinstance(it, dict) and isinstance(it.get("sweep"), dict)]
    for h, valid in per_run.items():
        if h in out:
            out[h] = in_range(as_number(out[h], f"objective.{h}"), f"objective.{h}", valid)
            continue
        values = next((s[h] for s in swept if s.get(h) is not None), None)
        if values is None:
            fail(f"objective.{h}", f"required: set objective.{h} or sweep.{h} (valid: {valid.describe()})")
        out[h] = as_number_list(values, f"sweep.{h}")[0]
    return out


def _check_sweep(sweep: dict, path: str, per_run: dict, optimizer: Optional[str]) -> dict:
    """Seeds, and numbers in range: the objective's per-run settings, and the optimizer's (every registered
    optimizer's for the global sweep, whose other optimizers' settings each learner ignores)."""
    ranges = {"learning_rate": optimizers.POSITIVE, **per_run}
    names = [optimizer] if optimizer is not None else optimizers.names()
    for o in names:
        for h, valid in optimizers.hyperparameters(o).items():
            ranges.setdefault(h, valid)
    check_keys(sweep, ["seeds"] + list(ranges), path)
    out = {}
    for key, value in sweep.items():
        if key == "seeds":
            out[key] = as_seeds(value, f"{path}.seeds")
        else:
            out[key] = [in_range(v, f"{path}.{key}", ranges[key]) for v in as_number_list(value, f"{path}.{key}")]
    return out


def _resolve_learner(i: int, item: Any, env: Any, objective: Any, per_run: dict, steps: int, budget: float,
                     chunk: int, bins: int, window_cfg: Any, sweep_global: dict) -> LearnerSpec:
    path = f"learners.{i}"
    item = as_dict(item, path, required=True)
    lname = as_name(item.get("name"), f"{path}.name", learners.names())
    label = as_label(item.get("label", lname), f"{path}.label")
    path = f"learners.{i} ({label})"
    params = learners.LEARNERS.parameters(lname)
    shape_keys = [p for p in params if p not in SUPPLIED and p not in ("name", "options")]
    if "options" in params:  # the streaming options are flat keys of the entry
        shape_keys += list(learners.OPTION_FIELDS)
    check_keys(item, list(LEARNER_BASE_KEYS) + shape_keys + ["input_size", "output_size"], path)
    if "input_size" in item and as_int(item["input_size"], f"{path}.input_size") != env.observation_size:
        fail(f"{path}.input_size", f"{item['input_size']} does not fit the stream {env.name}, whose observations "
             f"have {env.observation_size} entries (leave input_size out: it comes from the stream)")
    out_size = env.signal_size if env.kind == "supervised" else 1
    if "output_size" in item and as_int(item["output_size"], f"{path}.output_size") != out_size:
        fail(f"{path}.output_size", f"{item['output_size']} does not fit the stream {env.name} (it needs "
             f"{out_size}; leave output_size out)")
    cell = None
    if item.get("cell") is not None:
        cell = as_dict(item["cell"], f"{path}.cell", required=True)
        cname = as_name(cell.get("name"), f"{path}.cell.name", cells.names())
        check_keys({k: v for k, v in cell.items() if k != "name"}, cells.CELLS.parameters(cname), f"{path}.cell")

    # optimizer: its settings in range; the learning rate and any other setting may be swept instead
    opt_cfg = as_dict(item.get("optimizer"), f"{path}.optimizer", required=True)
    oname = as_name(opt_cfg.get("name"), f"{path}.optimizer.name", optimizers.names())
    ranges = optimizers.hyperparameters(oname)
    if "learning_rate" in opt_cfg:
        fail(f"{path}.optimizer.learning_rate", "step sizes are swept: set sweep.learning_rate (global or in the "
             "learner)")
    check_keys({k: v for k, v in opt_cfg.items() if k != "name"},
               [p for p in optimizers.OPTIMIZERS.parameters(oname) if p != "learning_rate"], f"{path}.optimizer")
    for key, value in opt_cfg.items():
        if key in ranges and value is not None:
            in_range(as_number(value, f"{path}.optimizer.{key}"), f"{path}.optimizer.{key}", ranges[key])

    # sweep: the global one, with this learner's replacing matching keys
    own = _check_sweep(as_dict(item.get("sweep"), f"{path}.sweep"), f"{path}.sweep", per_run, oname)
    merged = {k: v for k, v in sweep_global.items() if k == "seeds" or k in per_run or k in ranges}
    merged.update(own)
    merged.setdefault("seeds", [0])
    if "learning_rate" not in merged:
        fail(f"{path}.sweep.learning_rate", "no step sizes: set sweep.learning_rate (global or in the learner)")
    for key in merged:
        if key in opt_cfg:
            fail(f"{path}.optimizer.{key}", f"{key} is also swept (sweep.{key}); set it in one place")
    ordered = {"seeds": merged["seeds"], "learning_rate": merged["learning_rate"]}
    ordered.update({k: v for k, v in merged.items() if k not in ordered})

    # shape arguments; a duration in steps (steps_per_*) scales with the budget and must fit the run
    kwargs = {k: v for k, v in item.items() if k in shape_keys}
    lsteps = scaled(as_int(item["steps"], f"{path}.steps"), budget) if "steps" in item else steps
    for key in [k for k in kwargs if k.startswith("steps_per_")]:
        kwargs[key] = scaled(as_int(kwargs[key], f"{path}.{key}"), budget)
        if kwargs[key] >= lsteps:
            fail(f"{path}.{key}", f"{kwargs[key]} (after budget {budget:g}) is not shorter than the run's {lsteps} "
                 f"steps: the network would never grow past its first stage")
    if "column_credit" in kwargs:
        as_name(kwargs["column_credit"], f"{path}.column_credit", sorted(build.column_credits()))
    window = min(as_int(window_cfg, "metric.window") if window_cfg is not None
                 else min(DEFAULT_WINDOW_CAP, max(1, lsteps // 10)), lsteps)
    spec = LearnerSpec(i, label, lname, cell, dict(opt_cfg), kwargs, lsteps, min(chunk, lsteps), window,
                       min(bins, lsteps), ordered)
    try:
        build.build_learner(spec, env, objective)
    except learners.MissingCell:
        fail(f"{path}.cell", f"required for {lname}, e.g. {{name: lstm, hidden_size: 8}}; cells: "
             f"{', '.join(cells.names())}")
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        fail(path, one_line(err))
    return spec


def _spec_dict(spec: LearnerSpec) -> dict:
    return {"label": spec.label, "name": spec.name, "cell": spec.cell, "optimizer": spec.optimizer, **spec.kwargs,
            "steps": spec.steps, "chunk": spec.chunk, "window": spec.window, "bins": spec.bins, "sweep": spec.sweep}

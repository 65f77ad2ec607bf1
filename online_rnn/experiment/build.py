"""From a resolved config to the objects of one run: the stream, the objective, the optimizer, the cell and the
learner, all by name from the registries (so a plugin's learner or stream works like a built-in one). Plain
Python: nothing is traced or compiled here."""

from __future__ import annotations

from typing import Any, Optional

from online_rnn import cells, envs, learners, objectives, optimizers
from online_rnn.experiment.schema import ConfigError, Experiment, LearnerSpec, one_line


def build_env(env_cfg: dict) -> tuple[Any, Any]:
    cfg = dict(env_cfg)
    return envs.make(cfg.pop("name"), **cfg)


def build_objective(obj_cfg: dict) -> Any:
    cfg = dict(obj_cfg)
    return objectives.make(cfg.pop("name"), **cfg)


def build_optimizer(spec: LearnerSpec) -> Any:
    """``optax.inject_hyperparams`` of the named optimizer, so that the learning rate and every swept optimizer
    setting are arrays in the state that :func:`online_rnn.experiment.runfn.set_hyperparams` sets per run."""
    import optax

    cfg = dict(spec.optimizer)
    factory = optimizers.factory(cfg.pop("name"))
    first = {k: v[0] for k, v in spec.sweep.items() if k in optimizer_settings(spec)}
    static = [k for k, v in cfg.items() if isinstance(v, (bool, str))]
    return optax.inject_hyperparams(factory, static_args=static)(**cfg, **first)


def optimizer_settings(spec: LearnerSpec) -> list[str]:
    """The swept names of ``spec`` that belong to its optimizer."""
    return [k for k in optimizers.hyperparameters(spec.optimizer["name"]) if k in spec.sweep]


def build_cell(cfg: Optional[dict]) -> Any:
    if cfg is None:
        return None
    cfg = dict(cfg)
    return cells.make(cfg.pop("name"), **cfg)


def build_learner(spec: LearnerSpec, env: Any, objective: Any) -> Any:
    """The learner of a spec for a stream. The streaming options are flat keys of the entry; they are gathered
    into ``learners.Options`` here."""
    kwargs = dict(spec.kwargs)
    options = {k: kwargs.pop(k) for k in learners.OPTION_FIELDS if k in kwargs}
    if options:
        kwargs["options"] = learners.Options(**options)
    if "column_credit" in kwargs:  # columnar's per-column rule, by learner name
        kwargs["column_credit"] = column_credits()[kwargs["column_credit"]]
    out_size = env.signal_size if env.kind == "supervised" else 1
    where = f"learners.{spec.index} ({spec.label})"
    try:
        cell = build_cell(spec.cell)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}.cell: {one_line(err)}") from None
    try:
        optimizer = build_optimizer(spec)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}.optimizer: {one_line(err)}") from None
    return learners.make(spec.name, cell=cell, input_size=env.observation_size, output_size=out_size,
                         objective=objective, optimizer=optimizer, **kwargs)


def column_credits() -> dict:
    """Per-column credit rules that ``columnar`` takes by name."""
    return {"rtrl": learners.rtrl_credit, "snap1": learners.snap1_credit, "uoro": learners.uoro_credit}


def build(exp: Experiment, spec: LearnerSpec) -> tuple[Any, Any, Any]:
    """``(env, env_params, learner)`` for one learner of a resolved experiment."""
    env, params = build_env(exp.env)
    return env, params, build_learner(spec, env, build_objective(exp.objective))

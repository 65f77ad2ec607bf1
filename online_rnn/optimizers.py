"""Optimizers by name, with the valid range of every setting (checked in Python and in configs alike).

Each factory returns an ``optax.GradientTransformation``; :data:`HYPERPARAMS` gives, per optimizer, the settings
a sweep may vary per run (they become arrays in the state through ``optax.inject_hyperparams``) and their
ranges. Settings used only when the state is created (RMSProp's initial scale) are not sweepable. Any optax
optimizer can be registered too (``optimizers.register(name, factory, hyperparams)``); a learner takes any
``optax.GradientTransformation``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import optax

from online_rnn import streaming
from online_rnn.checks import Range
from online_rnn.registry import Registry

POSITIVE = Range(0.0, math.inf, low_open=True)
NON_NEGATIVE = Range(0.0, math.inf)
DECAY = Range(0.0, 1.0, high_open=True)  # a moving average's decay, momentum


def _check(name: str, ranges: dict[str, Range], **values: Any) -> None:
    """Python numbers in range (arrays pass: ``optax.inject_hyperparams`` calls the factory with them, and a
    learning-rate schedule is a callable)."""
    for key, value in values.items():
        if isinstance(value, (bool, int, float)):
            ranges[key].check(f"{name}: {key}", value)


def sgd(learning_rate: Any, momentum: Optional[float] = None, nesterov: bool = False) -> optax.GradientTransformation:
    _check("sgd", HYPERPARAMS["sgd"], learning_rate=learning_rate, momentum=momentum)
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def adam(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         eps_root: float = 0.0) -> optax.GradientTransformation:
    _check("adam", HYPERPARAMS["adam"], learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)


def rmsprop(learning_rate: Any, decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
            momentum: Optional[float] = None) -> optax.GradientTransformation:
    _check("rmsprop", {**HYPERPARAMS["rmsprop"], "initial_scale": NON_NEGATIVE}, learning_rate=learning_rate,
           decay=decay, eps=eps, momentum=momentum, initial_scale=initial_scale)
    return optax.rmsprop(learning_rate, decay=decay, eps=eps, initial_scale=initial_scale, momentum=momentum)


def ccn_rmsprop(learning_rate: Any, beta2: float = 0.9999, eps: float = 1e-8,
                initial_normaliser: float = 1.0) -> optax.GradientTransformation:
    """The paper's RMSProp (:func:`online_rnn.streaming.ccn_rmsprop`)."""
    _check("ccn_rmsprop", {**HYPERPARAMS["ccn_rmsprop"], "initial_normaliser": NON_NEGATIVE},
           learning_rate=learning_rate, beta2=beta2, eps=eps, initial_normaliser=initial_normaliser)
    return streaming.ccn_rmsprop(learning_rate, beta2=beta2, eps=eps, initial_normaliser=initial_normaliser)


HYPERPARAMS: dict[str, dict[str, Range]] = {
    "sgd": {"learning_rate": POSITIVE, "momentum": DECAY},
    "adam": {"learning_rate": POSITIVE, "b1": DECAY, "b2": DECAY, "eps": NON_NEGATIVE, "eps_root": NON_NEGATIVE},
    "rmsprop": {"learning_rate": POSITIVE, "decay": DECAY, "eps": NON_NEGATIVE, "momentum": DECAY},
    "ccn_rmsprop": {"learning_rate": POSITIVE, "beta2": DECAY, "eps": NON_NEGATIVE},
}

OPTIMIZERS = Registry("optimizer")
for _name, _factory in {"sgd": sgd, "adam": adam, "rmsprop": rmsprop, "ccn_rmsprop": ccn_rmsprop}.items():
    OPTIMIZERS.register(_name, _factory)
names, factory, make = OPTIMIZERS.names, OPTIMIZERS.factory, OPTIMIZERS.make


def register(name: str, fn: Callable[..., optax.GradientTransformation], hyperparams: dict[str, Range],
             replace: bool = False) -> None:
    """Register an optimizer factory (its first argument the learning rate) and the ranges of the settings a
    sweep may vary (``learning_rate`` among them)."""
    OPTIMIZERS.register(name, fn, replace=replace)
    HYPERPARAMS[name] = dict(hyperparams)


def hyperparameters(name: str) -> dict[str, Range]:
    """The sweepable settings of a registered optimizer and their ranges."""
    factory(name)
    return dict(HYPERPARAMS.get(name, {"learning_rate": POSITIVE}))

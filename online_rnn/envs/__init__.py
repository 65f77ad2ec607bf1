"""Benchmark streams as pure, jittable functions (gymnax-like).

::

    from online_rnn import envs
    env, params = envs.make("trace_patterning", variant="ccn")
    obs, state = env.reset(key, params)
    obs, state, signal, info = env.step(key_t, state, params)
    state = env.feedback(state, params, prediction)     # used by copy_task; the identity elsewhere

Registered streams (``envs.names()``):

- prediction (signal = cumulant, ``info["return"]`` = exact discounted return): ``trace_conditioning``,
  ``trace_patterning`` (``variant="rafiee"`` or ``"ccn"``), ``noisy_patterning``;
- supervised (signal = target): ``add_task``, ``copy_task``, ``influence_balancing`` (whose model is
  ``envs.influence_balancing.cell()``).

The contract is in :mod:`online_rnn.envs.base`; every stream's module docstring gives its spec and sources.
"""

from __future__ import annotations

from online_rnn import cells
from online_rnn.envs import (
    add_task,
    animal,
    base,
    copy_task,
    influence_balancing,
    noisy_patterning,
    trace_conditioning,
    trace_patterning,
)
from online_rnn.envs.base import STREAMS, Environment, factory, make, names, register

register("trace_conditioning", trace_conditioning.trace_conditioning)
register("trace_patterning", trace_patterning.trace_patterning)
register("noisy_patterning", noisy_patterning.noisy_patterning)
register("add_task", add_task.add_task)
register("copy_task", copy_task.copy_task)
register("influence_balancing", influence_balancing.influence_balancing)
cells.register("influence_balancing", influence_balancing.cell)  # the model that stream is built around

__all__ = [
    "Environment",
    "STREAMS",
    "add_task",
    "animal",
    "base",
    "copy_task",
    "factory",
    "influence_balancing",
    "make",
    "names",
    "noisy_patterning",
    "register",
    "trace_conditioning",
    "trace_patterning",
]

"""The stream contract shared by every benchmark, and the registry behind ``envs.make``.

A stream is gymnax-like: pure functions of explicit state, parameters and keys, so that a stream and a learner
compile together into one ``lax.scan`` and vmap over seeds::

    env, params = envs.make("trace_conditioning")                 # params == env.default_params
    obs, state = env.reset(key, params)
    obs, state, signal, info = env.step(key, state, params)       # one step, a fresh key each step
    state = env.feedback(state, params, prediction)               # the learner's prediction of that step

As in gymnax, ``step`` returns the observation and the new state first; where gymnax returns a reward and a
done flag, a stream returns the learner's ``signal`` (it takes no action and never ends: one observation, one
signal, forever) and ``info``, and the learner's prediction comes back through ``feedback``.

Conventions every stream follows:

- ``reset`` returns the stream at time 0 and carries no signal. Runners call ``reset`` once and then feed the
  ``(obs, signal)`` of every ``step`` to the learner; streams are built so that nothing a learner needs happens
  at time 0 (the animal-learning and copy streams start with a quiet step).
- ``signal`` of a step belongs to that step's ``obs``: for a supervised stream (``kind == "supervised"``) it is
  the target the learner should output after seeing ``obs_1 .. obs_t`` (an array of shape ``(signal_size,)`` or
  an :class:`online_rnn.objectives.Target` with a per-step weight); for a prediction stream
  (``kind == "prediction"``) it is the scalar cumulant ``c_t`` that arrives with ``obs_t``, and
  ``info["return"]`` is ``G_t = sum_k gamma^k c_{t+1+k}``, the value that a prediction made from ``obs_t``
  should equal.
- Settings that fix array shapes (numbers of stimuli, buffer lengths) are constructor arguments of ``make``;
  everything else lives in the ``EnvParams`` (``env.default_params``, a ``flax.struct`` dataclass), so that a
  sweep can vary it (``params.replace(...)`` or a vmapped params tree) without recompiling.
- Floats follow JAX's default float type (float64 under ``jax_enable_x64``), counters are int32, and no state
  leaf changes shape or dtype from step to step. ``info`` is a dict with a fixed set of keys per stream.
- ``feedback`` is the identity for every stream that does not need the learner's predictions.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from online_rnn import checks
from online_rnn.registry import Registry


def float_dtype() -> Any:
    """JAX's default float dtype at trace time (float64 under ``jax_enable_x64``, else float32)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_float(x: Any) -> jax.Array:
    return jnp.asarray(x, float_dtype())


def as_int(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.int32)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """A Python int >= ``minimum`` (bools rejected), else ``ValueError`` naming the argument."""
    return checks.integer(name, value, minimum)


def check_range(name: str, value: Any, minimum: int = 0) -> tuple[int, int]:
    """An inclusive integer range ``(lo, hi)`` with ``minimum <= lo <= hi``."""
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi) of ints, got {value!r}") from None
    lo = check_int(f"{name}[0]", lo, minimum)
    hi = check_int(f"{name}[1]", hi, minimum)
    if hi < lo:
        raise ValueError(f"{name} must satisfy lo <= hi, got {value!r}")
    return lo, hi


def check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def check_discount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"gamma must be a float in [0, 1), got {value!r}")
    return float(value)


class Environment(abc.ABC):
    """Base class of every stream. Subclasses set the attributes below in ``__init__`` and implement
    ``default_params``, ``reset`` and ``step``.

    Attributes: ``name``; ``observation_size`` (length of ``obs``); ``signal_size`` (1 for prediction streams, the
    target length for supervised ones); ``kind`` (``"prediction"`` or ``"supervised"``); ``gamma`` (the discount
    of ``info["return"]`` for prediction streams, ``None`` otherwise; the same value is in the params);
    ``default_objective`` (the name of the objective in :mod:`online_rnn.objectives` that fits the stream).

    What the experiment layer reads (defaults suit most streams):

    - ``metric_targets``: what the error is measured against, first the default: names of ``info`` entries
      (the squared error of the prediction to that value; prediction streams offer ``"return"``) or ``"loss"``
      (the objective's loss, for supervised streams);
    - ``default_logs``: ``info`` entries logged by default (curves of their values, e.g. a curriculum's length);
    - ``table_columns``: extra columns of comparison tables, ``(title, fn)`` with ``fn`` mapping a learner's
      final metric (mean over seeds) to the value shown (e.g. nats to bits per character);
    - ``metric_names``: what tables call the error to each target (default: MSRE, "MSRE (trial return)", ...).
    """

    name: str
    observation_size: int
    signal_size: int
    kind: str
    gamma: Optional[float] = None
    default_objective: str
    default_logs: tuple[str, ...] = ()
    table_columns: tuple[tuple[str, Callable[[float], float]], ...] = ()

    @property
    def metric_targets(self) -> tuple[str, ...]:
        return ("return",) if self.kind == "prediction" else ("loss",)

    @property
    def metric_names(self) -> dict[str, str]:
        """How tables and figures call the error to each of ``metric_targets`` (the loss is named by the
        objective)."""
        return {target: "MSRE" if target == "return" else f"MSRE ({target.replace('_', ' ')})"
                for target in self.metric_targets if target != "loss"}

    @property
    @abc.abstractmethod
    def default_params(self) -> Any:
        """The stream's parameters (implemented by every stream)."""

    @abc.abstractmethod
    def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
        """``(obs, state)`` at time 0 (implemented by every stream)."""

    @abc.abstractmethod
    def step(self, key: jax.Array, state: Any, params: Any) -> tuple[jax.Array, Any, Any, dict]:
        """``(obs, state, signal, info)`` (implemented by every stream)."""

    def feedback(self, state: Any, params: Any, prediction: jax.Array) -> Any:
        """Tell the stream the learner's prediction for the last step. The identity unless overridden."""
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, observation_size={self.observation_size}, "
            f"signal_size={self.signal_size}, kind={self.kind!r})"
        )


STREAMS = Registry("env")
register, names, factory = STREAMS.register, STREAMS.names, STREAMS.factory


def make(name: str, **kwargs: Any) -> tuple[Environment, Any]:
    """Build a registered stream: ``env, params = make(name, **constructor_kwargs)`` (``params`` is
    ``env.default_params``). Raises ``ValueError`` naming the offending name or keyword argument and listing the
    allowed ones."""
    env = STREAMS.make(name, **kwargs)
    return env, env.default_params

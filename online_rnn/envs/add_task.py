"""The add task (Marschall, Cho & Savin, "A unified framework of online learning algorithms for training
recurrent neural networks", JMLR 21(135), 2020; the task follows Pitis 2016).

Spec (the formula agrees with the authors' public code,
``gen_data/Add_Task.py`` of their ``vanilla-rtrl`` repository):

- Input ``x_t ~ Bernoulli(0.5)``, i.i.d., shown as a one-hot pair ``obs_t = [1 - x_t, x_t]`` (the reference
  code orders both pairs the other way round, which changes nothing).
- Target: the 2-class distribution ``[1 - p_t, p_t]`` with ``p_t = 0.5 + 0.5 x_{t-5} - 0.25 x_{t-9}``
  (lags are constructor arguments, default ``(5, 9)``). The default target is this soft distribution, as in the
  authors' examples (``deterministic=True``); ``target="sampled"`` gives the one-hot of ``y_t ~ Bernoulli(p_t)``
  instead, which has the same expected value and the same expected cross-entropy for every prediction, so the
  reference numbers below hold for both (the sampled version only adds variance).
- Objective: softmax cross-entropy in nats (``default_objective = "softmax_cross_entropy"``).

Reference cross-entropies (the levels reported by Marschall et al. 2020; the paper's text could not be
checked here, and the authors' code marks 0.66 and 0.45 in its example plot). They follow from the definition,
as the entropies below, and ``tests/test_envs.py`` recomputes them:

- 0.662 nats: a predictor with no memory outputs the marginal ``P(1) = 0.625``; ``H(0.625)``.
- 0.519 nats: a predictor that remembers ``x_{t-5}`` only: ``(H(0.375) + H(0.875)) / 2``.
- 0.454 nats: the optimal predictor (remembers both lags): ``(H(0.5) + H(0.25) + H(1) + H(0.75)) / 4``.

``H`` is the binary entropy in nats. With the soft target the cross-entropy of a predictor ``q`` is
``H(p) + KL(p || q)``, so these are the losses of the three predictors, exactly.

Time 0. ``reset`` draws the bits before time 0 (the history the first targets depend on) and ``x_0``; they are
part of the stream but a learner sees none of the history, so the first ``max(lags)`` targets are partly
unpredictable (the reference code wraps the lags around the sequence instead).

``info``: ``"x"`` (the bit ``x_t``, int32), ``"p"`` (``p_t``), ``"optimal_cross_entropy"`` (``H(p_t)``, the
expected loss of the optimal predictor on this step, for excess-loss metrics).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from online_rnn import prng

from online_rnn.envs.base import Environment, as_float, check_int, float_dtype

LAGS = (5, 9)
REFERENCE_CROSS_ENTROPY = {"no_memory": 0.662, "t_minus_5": 0.519, "optimal": 0.454}
TARGETS = ("soft", "sampled")


@struct.dataclass
class EnvParams:
    base: jax.Array  # 0.5: P(1) when neither lagged bit is 1
    coef_first: jax.Array  # 0.5: weight of x_{t - lags[0]}
    coef_second: jax.Array  # -0.25: weight of x_{t - lags[1]}


@struct.dataclass
class EnvState:
    history: jax.Array  # (max(lags),) int32: history[i] = x_{t-1-i}


def binary_entropy(p: float) -> float:
    """``H(p)`` in nats, with ``H(0) = H(1) = 0``."""
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0.0)


class AddTask(Environment):
    """See the module docstring."""

    kind = "supervised"
    observation_size = 2
    signal_size = 2
    default_objective = "softmax_cross_entropy"

    def __init__(self, lags: tuple[int, int] = LAGS, target: str = "soft"):
        if target not in TARGETS:
            raise ValueError(f"add_task: unknown target {target!r}; allowed: {', '.join(TARGETS)}")
        try:
            first, second = lags
        except (TypeError, ValueError):
            raise ValueError(f"lags must be a pair of ints, got {lags!r}") from None
        self.lags = (check_int("lags[0]", first), check_int("lags[1]", second))
        self.target = target
        self.name = "add_task"

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(base=as_float(0.5), coef_first=as_float(0.5), coef_second=as_float(-0.25))

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        k_hist, k_x = jax.random.split(key)
        history = jax.random.bernoulli(k_hist, 0.5, (max(self.lags),)).astype(jnp.int32)
        x = jax.random.bernoulli(k_x, 0.5).astype(jnp.int32)
        history = jnp.concatenate([x[None], history[:-1]])
        return jax.nn.one_hot(x, 2, dtype=float_dtype()), EnvState(history=history)

    def step(self, key: jax.Array, state: EnvState, params: EnvParams):
        dtype = float_dtype()
        words = prng.bits(key, 2)  # one fused hash per step (see online_rnn.prng)
        x = (words[0] >> 31).astype(jnp.int32)
        lagged_first = state.history[self.lags[0] - 1].astype(dtype)
        lagged_second = state.history[self.lags[1] - 1].astype(dtype)
        p = params.base.astype(dtype) + params.coef_first.astype(dtype) * lagged_first
        p = p + params.coef_second.astype(dtype) * lagged_second
        if self.target == "soft":
            signal = jnp.stack([1.0 - p, p])
        else:
            y = ((words[1] >> 8).astype(dtype) * 2.0**-24 < p).astype(jnp.int32)
            signal = jax.nn.one_hot(y, 2, dtype=dtype)
        obs = jax.nn.one_hot(x, 2, dtype=dtype)
        entropy = -(jax.scipy.special.xlogy(p, p) + jax.scipy.special.xlogy(1.0 - p, 1.0 - p))
        info = {"x": x, "p": p, "optimal_cross_entropy": entropy}
        history = jnp.concatenate([x[None], state.history[:-1]])
        return obs, EnvState(history=history), signal, info


def add_task(lags: tuple[int, int] = LAGS, target: str = "soft") -> AddTask:
    """The add task: ``lags`` (shape-fixing: the history buffer is ``max(lags)`` long) and the ``target`` kind
    (``"soft"`` distribution or one-hot ``"sampled"``)."""
    return AddTask(lags, target)

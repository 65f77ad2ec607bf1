"""Influence balancing (Tallec & Ollivier, "Unbiased online recurrent optimization", ICLR 2018, the
influence-balancing experiment): a parameter whose short-term effect on the loss has the opposite sign of its
long-term effect, so that truncated BPTT with a short truncation moves it the wrong way.

Spec (the numbers agree with Google Research's
re-implementation ``persistent_es/influence_balancing.py``, which follows the UORO paper's description):

- A linear system of ``n = 23`` units, ``s_t = A s_{t-1} + theta * sigma`` with ``A = 0.5 I + 0.5 U`` (``U`` the
  superdiagonal: unit ``i`` is driven by unit ``i + 1``), ``sigma = +1`` for the first ``n_positive = 10`` units
  and -1 for the other 13, ``s_0 = 1`` (all ones) and one scalar parameter ``theta``, initialised at 0.5.
- Loss ``0.5 (s_t[0] - 1)^2`` at every step.

It is a model as much as a stream, so it comes in two parts:

- the stream ``envs.make("influence_balancing")``: a constant observation ``[1.0]`` and the target ``[1.0]``
  (``kind = "supervised"``, ``default_objective = "squared_error"``);
- the cell :func:`cell` (an :class:`online_rnn.cells.Cell`): parameters ``InfluenceBalancingParams(theta)`` with
  ``theta`` of shape ``(1,)``, carry ``s`` of shape ``(n,)`` starting at ones, output ``h_t = s_t[:1]``
  (``hidden_size = 1``). The input is ignored. Build learners with
  ``options=learners.Options(readout="identity")`` so that the prediction is ``s_t[0]`` and the loss is the one
  above. Note: the carry has ``n`` entries while the output has
  one, so the "carry = hidden vector" layout of :mod:`online_rnn.cells` does not hold; learners that only
  differentiate through ``apply`` (RTRL, BPTT, T-BPTT, UORO) are unaffected.

Why truncation fails. ``theta`` reaches ``s[0]`` directly (``+theta`` every step) and through the chain
``s[k] -> s[k-1] -> ... -> s[0]``, which carries the 13 negative inputs. At the fixed point
``s* = (I - A)^{-1} sigma theta = 2 (I - U)^{-1} sigma theta`` and ``(I - U)^{-1}`` is upper triangular with ones,
so ``s*[0] = 2 theta sum(sigma) = 2 theta (2 n_positive - n)`` = ``-6 theta`` for the defaults. The loss is zero
at :func:`optimal_theta` ``= 1 / (2 (2 n_positive - n))`` = -1/6. From ``theta = 0.5`` (``s*[0] = -3``) the
true gradient ``(s[0] - 1) d s*[0] / d theta = (-4)(-6) > 0`` lowers ``theta``, while the one-step truncated
gradient ``(s[0] - 1) * sigma[0] = -4 < 0`` raises it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from online_rnn.cells import Cell
from online_rnn.envs.base import Environment, as_float, check_int, float_dtype

N_UNITS = 23
N_POSITIVE = 10
THETA0 = 0.5


class InfluenceBalancingParams(NamedTuple):
    theta: jax.Array  # (1,)


@struct.dataclass
class EnvParams:
    target: jax.Array  # 1.0: the value s_t[0] should take
    input_value: jax.Array  # 1.0: the constant observation


@struct.dataclass
class EnvState:
    t: jax.Array  # int32 step counter


def signs(n: int = N_UNITS, n_positive: int = N_POSITIVE) -> jax.Array:
    """``sigma``: +1 for the first ``n_positive`` units, -1 for the rest."""
    return jnp.where(jnp.arange(n) < n_positive, 1.0, -1.0).astype(float_dtype())


def transition(s: jax.Array) -> jax.Array:
    """``A s`` with ``A = 0.5 I + 0.5 (superdiagonal)``, without building ``A``."""
    return 0.5 * (s + jnp.concatenate([s[1:], jnp.zeros((1,), s.dtype)]))


def transition_matrix(n: int = N_UNITS) -> jax.Array:
    """``A`` as a dense matrix (for tests and analysis)."""
    return 0.5 * (jnp.eye(n, dtype=float_dtype()) + jnp.eye(n, k=1, dtype=float_dtype()))


def _check(n: int, n_positive: int) -> tuple[int, int]:
    n = check_int("n", n)
    n_positive = check_int("n_positive", n_positive, 0)
    if n_positive > n:
        raise ValueError(f"n_positive must be <= n ({n}), got {n_positive}")
    return n, n_positive


def fixed_point(theta: jax.Array, n: int = N_UNITS, n_positive: int = N_POSITIVE) -> jax.Array:
    """The fixed point ``s* = 2 theta (I - U)^{-1} sigma``: ``s*[i] = 2 theta sum_{j >= i} sigma_j``."""
    n, n_positive = _check(n, n_positive)
    tail_sums = jnp.cumsum(signs(n, n_positive)[::-1])[::-1]
    return 2.0 * jnp.asarray(theta, float_dtype()) * tail_sums


def optimal_theta(n: int = N_UNITS, n_positive: int = N_POSITIVE) -> float:
    """The ``theta`` whose fixed point has ``s*[0] = 1``: ``1 / (2 (2 n_positive - n))`` (-1/6 by default)."""
    n, n_positive = _check(n, n_positive)
    total = 2 * n_positive - n
    if total == 0:
        raise ValueError("with n == 2 n_positive, s*[0] = 0 for every theta: no optimum")
    return 1.0 / (2.0 * total)


def cell(n: int = N_UNITS, n_positive: int = N_POSITIVE, theta0: float = THETA0) -> Cell:
    """The influence-balancing model as a :class:`~online_rnn.cells.Cell` (see the module docstring):
    ``apply(params, s_tm1, x_t) = (A s_tm1 + theta sigma, s_t[:1])``."""
    n, n_positive = _check(n, n_positive)
    theta0 = float(theta0)

    def init(key: jax.Array, input_size: int) -> InfluenceBalancingParams:
        check_int("input_size", input_size)
        return InfluenceBalancingParams(theta=jnp.full((1,), theta0, float_dtype()))

    def initial_carry(params: InfluenceBalancingParams) -> jax.Array:
        return jnp.ones((n,), params.theta.dtype)

    def apply(params: InfluenceBalancingParams, s: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        sigma = jnp.where(jnp.arange(n) < n_positive, 1.0, -1.0).astype(s.dtype)
        s_t = transition(s) + params.theta[0] * sigma
        return s_t, s_t[:1]

    return Cell(init, initial_carry, apply, 1, 1, "influence_balancing")


class InfluenceBalancing(Environment):
    """The stream half of influence balancing: constant input, constant target (module docstring)."""

    name = "influence_balancing"
    kind = "supervised"
    observation_size = 1
    signal_size = 1
    default_objective = "squared_error"

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(target=as_float(1.0), input_value=as_float(1.0))

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        obs = jnp.full((1,), params.input_value, float_dtype())
        return obs, EnvState(t=jnp.zeros((), jnp.int32))

    def step(self, key: jax.Array, state: EnvState, params: EnvParams):
        dtype = float_dtype()
        obs = jnp.full((1,), params.input_value, dtype)
        signal = jnp.full((1,), params.target, dtype)
        return obs, EnvState(t=state.t + 1), signal, {"t": state.t + 1}


def influence_balancing() -> InfluenceBalancing:
    """The influence-balancing stream; the model is :func:`cell`."""
    return InfluenceBalancing()

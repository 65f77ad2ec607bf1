"""UORO (Tallec & Ollivier, "Unbiased online recurrent optimization", ICLR 2018).

The influence matrix ``J_t = d s_t / d theta`` is replaced by a rank-one estimate ``s~_t theta~_t^T`` that is
unbiased, ``E[s~_t theta~_t^T] = J_t``. With random signs ``nu`` (+1 or -1, drawn from the key carried in the
learner state) the update is::

    s~_t     = rho_0 (A_t s~_{t-1}) + rho_1 nu
    theta~_t = theta~_{t-1} / rho_0 + (nu^T D_t) / rho_1
    rho_0 = sqrt((|theta~_{t-1}| + eps) / (|A_t s~_{t-1}| + eps)),   rho_1 = sqrt((|nu^T D_t| + eps) / (|nu| + eps))

with ``A_t s~`` a ``jax.jvp`` and ``nu^T D_t`` a ``jax.vjp`` of the cell step; the ``rho`` scalings minimise
the variance of the estimate (the paper's variance reduction) and leave it unbiased (``rho_0`` does not depend
on ``nu``, ``rho_1`` is even in ``nu``). As in the paper's Algorithm 1, the step's gradient is the exact
immediate term plus the estimated term through the previous carry::

    g_t = dh (d g / d theta) + (dh (d g / d s_{t-1}) . s~_{t-1}) theta~_{t-1}

Cost O(P) per step.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from online_rnn import prng
from online_rnn.cells import Cell
from online_rnn.learners.base import Credit, Learner, Options, build
from online_rnn.objectives import Objective

EPS = 1e-7


class UOROTrace(NamedTuple):
    s_tilde: jax.Array  # (|s|,)
    theta_tilde: jax.Array  # (|theta|,)


def uoro_credit(cell: Cell, eps: float = EPS) -> Credit:
    def init(cell_params, carry, readout_params) -> UOROTrace:
        s, _ = ravel_pytree(carry)
        theta, _ = ravel_pytree(cell_params)
        return UOROTrace(jnp.zeros_like(s), jnp.zeros_like(theta))

    def forward(cell_params, carry, trace: UOROTrace, x_t, key, t):
        theta, unravel_theta = ravel_pytree(cell_params)
        s, unravel_s = ravel_pytree(carry)

        def f(theta, s):
            carry_t, h_t = cell.apply(unravel_theta(theta), unravel_s(s), x_t)
            return ravel_pytree(carry_t)[0], h_t

        (s_t, h_t), f_vjp = jax.vjp(f, theta, s)
        # everything that does not need the error: the rank-one update of the influence estimate
        # random signs from the unrolled Threefry of online_rnn.prng (jax.random's is a rolled loop on the CPU)
        nu = prng.signs(key, s_t.shape[0], s_t.dtype)
        _, (a_s, _) = jax.jvp(lambda s_: f(theta, s_), (s,), (trace.s_tilde,))
        nu_d, _ = f_vjp((nu, jnp.zeros_like(h_t)))
        rho0 = jnp.sqrt((jnp.linalg.norm(trace.theta_tilde) + eps) / (jnp.linalg.norm(a_s) + eps))
        rho1 = jnp.sqrt((jnp.linalg.norm(nu_d) + eps) / (jnp.linalg.norm(nu) + eps))
        new = UOROTrace(rho0 * a_s + rho1 * nu, trace.theta_tilde / rho0 + nu_d / rho1)
        return unravel_s(s_t), h_t, (cell_params, f_vjp, trace, new)

    def backward(residuals, dh):
        cell_params, f_vjp, trace, new = residuals
        g_theta, g_s = f_vjp((jnp.zeros_like(trace.s_tilde), dh))
        grad = g_theta + jnp.dot(g_s, trace.s_tilde) * trace.theta_tilde
        _, unravel_theta = ravel_pytree(cell_params)
        return unravel_theta(grad), new

    return Credit(init, forward, backward, uses_key=True, path="generic: jax.jvp / jax.vjp of the cell step")


def uoro(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    options: Optional[Options] = None,
) -> Learner:
    """UORO learner; the random signs come from ``state.key``, so vmapping over keys gives independent runs."""
    return build("uoro", cell, uoro_credit(cell), input_size, output_size, objective, optimizer, options)

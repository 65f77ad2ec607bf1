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
    s_tilde: Any  # like the carry
    theta_tilde: Any  # like the cell parameters


def _norm(tree: Any) -> jax.Array:
    """Euclidean norm over every leaf of a real pytree."""
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))


def _dot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def uoro_credit(cell: Cell, eps: float = EPS) -> Credit:
    """UORO as a :class:`Credit` rule. ``s~`` and ``theta~`` keep the trees of the carry and of the cell
    parameters (no flattening: with the runs last, the concatenations and the pads of their transposes cost
    several times the rule's arithmetic)."""

    def init(cell_params, carry, readout_params) -> UOROTrace:
        return UOROTrace(jax.tree.map(jnp.zeros_like, carry), jax.tree.map(jnp.zeros_like, cell_params))

    def forward(cell_params, carry, trace: UOROTrace, x_t, key, t):
        (carry_t, h_t), f_vjp = jax.vjp(lambda p, c: cell.apply(p, c, x_t), cell_params, carry)
        # everything that does not need the error: the rank-one update of the influence estimate.
        # Random signs from the unrolled Threefry of online_rnn.prng (jax.random's is a rolled loop on the CPU),
        # one per carry entry in the order of the flattened carry
        flat, unravel = ravel_pytree(carry_t)
        nu = unravel(prng.signs(key, flat.shape[0], flat.dtype))
        _, (a_s, _) = jax.jvp(lambda c: cell.apply(cell_params, c, x_t), (carry,), (trace.s_tilde,))
        nu_d, _ = f_vjp((nu, jnp.zeros_like(h_t)))
        rho0 = jnp.sqrt((_norm(trace.theta_tilde) + eps) / (_norm(a_s) + eps))
        rho1 = jnp.sqrt((_norm(nu_d) + eps) / (_norm(nu) + eps))
        new = UOROTrace(jax.tree.map(lambda a, n: rho0 * a + rho1 * n, a_s, nu),
                        jax.tree.map(lambda th, d: th / rho0 + d / rho1, trace.theta_tilde, nu_d))
        return carry_t, h_t, (f_vjp, trace, new)

    def backward(residuals, dh):
        f_vjp, trace, new = residuals
        g_theta, g_s = f_vjp((jax.tree.map(jnp.zeros_like, trace.s_tilde), dh))
        coef = _dot(g_s, trace.s_tilde)
        return jax.tree.map(lambda g, th: g + coef * th, g_theta, trace.theta_tilde), new

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

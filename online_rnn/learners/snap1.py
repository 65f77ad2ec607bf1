"""SnAp-1 (Menick et al., "Practical real time recurrent learning with a sparse approximation", ICLR 2021).

SnAp-n keeps the influence entries ``d s_k / d theta_j`` that are non-zero after ``n`` steps of the network and
drops the rest for good. With ``n = 1`` and the unit-major cells of :mod:`online_rnn.cells`, parameter
``leaf[i]`` (unit ``i``'s rows of the gate matrices and its biases) reaches only unit ``i``'s carry within one
step, so the kept influence is, per unit ``i``, the block ``J_i = d carry_i / d leaf[i]`` (``S`` carry
components per unit, e.g. ``h`` and ``c`` for an LSTM). Its recursion is RTRL's with the cross-unit terms
dropped::

    J_i(t) = D_i(t) + A_ii(t) J_i(t-1),   D_i = d carry_i(t) / d leaf[i],   A_ii = d carry_i(t) / d carry_i(t-1)

where ``A_ii`` includes unit ``i``'s self-connection through ``h_{t-1}``. Both come from ``jax.jacrev`` /
``jax.jacfwd`` of the cell's one-unit map ``cell.unit_apply``, vmapped over units: memory O(S P) and time
O(S^2 P) per step. For a dense network it is biased; for a network of independent columns (block-diagonal
recurrence) no entry it drops is ever non-zero, and it equals RTRL.

Diagonal cells (lru, rtu) have that structure inside one cell: SnAp-1 on them is exact RTRL, computed by
:mod:`online_rnn.learners.diagonal`. On a ``cells.stack`` it runs per layer and backpropagates across layers
within the step (:mod:`online_rnn.learners.stacked`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from online_rnn.cells import Cell
from online_rnn.learners import fast as _fast
from online_rnn.learners.base import Credit, Learner, Options, build
from online_rnn.objectives import Objective


class SnAp1Trace(NamedTuple):
    """``influence``: d carry_k[i] / d leaf[i]. The generic path keeps it as a tree like the cell params with
    leaves ``(n, S, *leaf.shape[1:])``; the fast path as one ``(n, S, P_unit)`` array
    (``learners.fast.split_trace`` turns it into the tree)."""

    influence: Any


def _flat(unit_carry: Any) -> jax.Array:
    return jnp.stack(jax.tree.leaves(unit_carry))


def snap1_credit(cell: Cell, fast: bool = True) -> Credit:
    """SnAp-1 for ``cell``. ``fast`` uses the structured update of :mod:`online_rnn.learners.fast` when the cell
    has the gated form; ``fast=False`` is the generic path (``jax.jacrev`` / ``jax.jacfwd`` of the per-unit map),
    the test oracle of the fast one. Both keep the same trace."""
    from online_rnn.learners import diagonal, stacked  # here, not at the top: diagonal imports SnAp1Trace from us

    if cell.layers:
        return stacked.layerwise_credit(cell, [snap1_credit(layer, fast) for layer in cell.layers])
    if diagonal.supports(cell):
        return diagonal.snap1_credit(cell, fast)
    if cell.unit_apply is None or cell.unit_output is None:
        raise ValueError(f"snap1 needs a cell with per-unit structure (unit_apply or unit_step); {cell.name!r} has "
                         f"none (rtrl, uoro, tbptt, bptt and columnar take any cell)")
    if fast and _fast.supports(cell):
        return _fast_credit(cell)
    return _generic_credit(cell)


def _fast_credit(cell: Cell) -> Credit:
    def init(cell_params, carry, readout_params) -> SnAp1Trace:
        return SnAp1Trace(_fast.init_trace(cell_params, carry))

    def forward(cell_params, carry, trace: SnAp1Trace, x_t, key, t):
        carry_t, h_t, influence = _fast.diag_step(cell, cell_params, carry, trace.influence, x_t)
        return carry_t, h_t, (cell_params, carry_t, influence)

    def backward(residuals, dh):
        cell_params, carry_t, influence = residuals
        return _fast.diag_grad(cell, cell_params, carry_t, influence, dh), SnAp1Trace(influence)

    return Credit(init, forward, backward, path=_fast.PATH)


def _generic_credit(cell: Cell) -> Credit:
    def init(cell_params, carry, readout_params) -> SnAp1Trace:
        n_comp = len(jax.tree.leaves(carry))
        return SnAp1Trace(
            jax.tree.map(lambda p: jnp.zeros((p.shape[0], n_comp) + p.shape[1:], p.dtype), cell_params)
        )

    def forward(cell_params, carry, trace: SnAp1Trace, x_t, key, t):
        carry_t, h_t = cell.apply(cell_params, carry, x_t)
        h_prev = jax.vmap(cell.unit_output)(carry)
        carry_def = jax.tree.structure(carry)

        def unit_map(p_i, c_i, i):
            """carry_i(t) as a function of unit i's params and a perturbation of its own carry_i(t-1)."""

            def f(p, delta):
                own = jax.tree.unflatten(carry_def, list(_flat(c_i) + delta))
                h_mod = h_prev.at[i].set(cell.unit_output(own))
                return _flat(cell.unit_apply(p, own, h_mod, x_t))

            zero = jnp.zeros((carry_def.num_leaves,), h_prev.dtype)
            d_i = jax.jacrev(f, argnums=0)(p_i, zero)  # leaves (S, *leaf_i.shape)
            a_i = jax.jacfwd(f, argnums=1)(p_i, zero)  # (S, S)
            return d_i, a_i

        units = jnp.arange(h_prev.shape[0])
        d, a = jax.vmap(unit_map)(cell_params, carry, units)
        influence = jax.tree.map(
            lambda d_leaf, j_leaf: d_leaf + jnp.einsum("nkl,nl...->nk...", a, j_leaf), d, trace.influence
        )
        return carry_t, h_t, (carry_t, influence)

    def backward(residuals, dh):
        carry_t, influence = residuals
        _, out_vjp = jax.vjp(lambda c: jax.vmap(cell.unit_output)(c), carry_t)
        (dcarry,) = out_vjp(dh)
        dc = jnp.stack(jax.tree.leaves(dcarry), axis=1)  # (n, S)
        grad = jax.tree.map(lambda j: jnp.einsum("nk,nk...->n...", dc, j), influence)
        return grad, SnAp1Trace(influence)

    return Credit(init, forward, backward, path="generic: jax.jacrev / jax.jacfwd of each unit's map")


def snap1(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    options: Optional[Options] = None,
) -> Learner:
    """SnAp-1 learner (see the module docstring); the kept influence is ``state.trace.influence``."""
    return build("snap1", cell, snap1_credit(cell), input_size, output_size, objective, optimizer, options)

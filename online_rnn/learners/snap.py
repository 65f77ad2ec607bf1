"""SnAp-n (Menick, Elsen, Evci, Osindero, Simonyan & Graves, "Practical real time recurrent learning with a sparse
approximation", ICLR 2021) for any ``n >= 1``.

SnAp-n keeps the entries of the influence matrix ``J = d s / d theta`` that RTRL's recursion makes non-zero within
``n`` steps and drops the others after every update::

    J_t = M_n o (D_t + A_t J_{t-1}),   D_t = d s_t / d theta,   A_t = d s_t / d s_{t-1}

The pattern ``M_n`` follows from the network's connectivity alone, once, before anything runs. Here it is taken
at the granularity of units, as :mod:`SnAp-1 <online_rnn.learners.snap1>` keeps each unit's whole block: with
``C[i, j]`` true when unit ``i``'s next carry reads unit ``j``'s carry (its own always; ``cell.connectivity`` for
a :func:`sparse <online_rnn.cells.sparse>` cell, every unit for the dense gated cells), parameter rows of unit
``j`` can reach the carry of unit ``i`` within ``n`` steps iff ``i`` is reachable from ``j`` in at most ``n - 1``
hops::

    R_1 = I,   R_{k+1} = R_k or (C R_k),   M_n[s, theta] = R_n[unit(s), unit(theta)]

So ``n = 1`` keeps each unit's own block (SnAp-1), and once ``n - 1`` reaches the diameter of the graph ``C``
(the longest shortest path between two units) ``M_n`` holds every entry RTRL can make non-zero and SnAp-n *is*
RTRL. A dense network has diameter 1: SnAp-2 is already RTRL there, and SnAp-n for ``n >= 2`` is meant for
sparse networks, as in the paper. (Menick et al. define the pattern entry by entry; the unit pattern contains
theirs for the same ``n`` and is contained in theirs for ``n + 1`` when units have self-connections.) The
gradient reads the kept influence, ``g_t = (d L_t / d s_t) J_t``, as SnAp-1's does.

Paths. ``n = 1``, and any ``n`` on diagonal cells (lru, rtu: no unit reads another, so every ``n`` is RTRL), use
SnAp-1's code (:func:`online_rnn.learners.snap1.snap1_credit`). Otherwise the generic path carries the dense
influence and applies the mask after each update: RTRL's ``jax.jacfwd`` / ``jax.jacrev`` of the cell step
(:mod:`online_rnn.learners.rtrl`), so its cost is RTRL's, O(|s|^2 |theta|) time and O(|s| |theta|) memory per
step, whatever the sparsity; it gives SnAp-n's learning dynamics, not its savings (a sparse implementation would
store only the ``M_n`` entries). It needs unit-major parameters and carries with per-unit outputs: elman,
leaky_elman, lstm, gru and their ``sparse`` forms.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from online_rnn.cells import Cell
from online_rnn.learners import diagonal
from online_rnn.learners.base import Credit, Learner, Options, build, check_positive_int
from online_rnn.learners.snap1 import snap1_credit
from online_rnn.objectives import Objective


class SnApTrace(NamedTuple):
    influence: jax.Array  # (|s|, |theta|): the kept entries of d carry / d cell params, zero outside M_n


def unit_graph(cell: Cell) -> np.ndarray:
    """``C`` (n, n) bool: ``[i, j]`` where unit ``i``'s next carry reads unit ``j``'s carry (diagonal true)."""
    n = cell.hidden_size
    graph = np.ones((n, n), bool) if cell.connectivity is None else np.array(cell.connectivity, bool)
    np.fill_diagonal(graph, True)
    return graph


def reach(graph: np.ndarray, n: int) -> np.ndarray:
    """``R_n`` (units x units): ``[i, j]`` where unit ``i`` is reachable from unit ``j`` in at most ``n - 1``
    hops of ``graph``."""
    r = np.eye(graph.shape[0], dtype=bool)
    for _ in range(n - 1):
        r = r | ((graph.astype(np.int64) @ r.astype(np.int64)) > 0)
    return r


def _units(tree: Any) -> np.ndarray:
    """The unit of every entry of ``ravel_pytree(tree)`` (unit-major leaves: ``leaf[i]`` belongs to unit ``i``)."""
    return np.concatenate([np.repeat(np.arange(leaf.shape[0]), int(np.prod(leaf.shape[1:])))
                           for leaf in jax.tree.leaves(tree)])


def _generic_supports(cell: Cell) -> bool:
    return cell.unit_output is not None and not cell.layers and cell.unit_step is None


def snap_credit(cell: Cell, n: int) -> Credit:
    """SnAp-n for ``cell`` as a :class:`Credit` rule (see the module docstring)."""
    n = check_positive_int("n", n)
    if diagonal.supports(cell) or (n == 1 and (cell.unit_apply is not None or cell.layers)):
        return snap1_credit(cell)
    if not _generic_supports(cell):
        raise ValueError(f"snap needs a cell with unit-major parameters and per-unit outputs (elman, leaky_elman, "
                         f"lstm, gru or their sparse form; lru, rtu; a stack only with n = 1); {cell.name!r} is "
                         f"not one")
    units_kept = reach(unit_graph(cell), n)

    def mask(cell_params, carry) -> np.ndarray:
        return units_kept[_units(carry)[:, None], _units(cell_params)[None, :]]

    def init(cell_params, carry, readout_params) -> SnApTrace:
        n_s, n_p = ravel_pytree(carry)[0].size, ravel_pytree(cell_params)[0].size
        return SnApTrace(jnp.zeros((n_s, n_p), ravel_pytree(cell_params)[0].dtype))

    def forward(cell_params, carry, trace: SnApTrace, x_t, key, t):
        theta, unravel_theta = ravel_pytree(cell_params)
        s, unravel_s = ravel_pytree(carry)

        def f(theta_, s_):
            return ravel_pytree(cell.apply(unravel_theta(theta_), unravel_s(s_), x_t)[0])[0]

        s_t = f(theta, s)
        a_t = jax.jacfwd(lambda s_: f(theta, s_))(s)
        d_t = jax.jacrev(lambda th: f(th, s))(theta)
        influence = jnp.where(mask(cell_params, carry), d_t + a_t @ trace.influence, 0.0)
        carry_t = unravel_s(s_t)
        return carry_t, jax.vmap(cell.unit_output)(carry_t), (cell_params, carry_t, influence)

    def backward(residuals, dh):
        cell_params, carry_t, influence = residuals
        _, out_vjp = jax.vjp(lambda c: jax.vmap(cell.unit_output)(c), carry_t)
        (dcarry,) = out_vjp(dh)
        _, unravel_theta = ravel_pytree(cell_params)
        return unravel_theta(ravel_pytree(dcarry)[0] @ influence), SnApTrace(influence)

    return Credit(init, forward, backward,
                  path="generic: RTRL's jax.jacfwd / jax.jacrev, influence masked to the n-step pattern")


def snap(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    n: int,
    *,
    options: Optional[Options] = None,
) -> Learner:
    """SnAp-n learner (see the module docstring); ``n = 1`` is :func:`online_rnn.learners.snap1.snap1`."""
    return build("snap", cell, snap_credit(cell, n), input_size, output_size, objective, optimizer, options)

"""SnAp-1 for diagonal cells (lru, rtu), where it is exact RTRL at O(P).

In a diagonal cell unit ``i``'s new carry depends on its own parameter rows ``leaf[i]``, its own carry and the
input, and on nothing of the other units (see :class:`online_rnn.cells.Cell`, ``unit_step``). So
``d carry_i / d leaf[j] = 0`` for ``j != i`` at every step, not just after one: the influence blocks SnAp-1
keeps, ``J_i = d carry_i / d leaf[i]``, are the whole influence matrix, and SnAp-1 is RTRL (Zucchet, Meier,
Schug, Mujika & Sacramento, "Online learning of long-range dependencies", NeurIPS 2023; Elelimy, White,
Bowling & White, "Real-time recurrent learning using trace units in reinforcement learning", NeurIPS 2024)::

    J_i(t) = D_i(t) + A_ii(t) J_i(t-1),   D_i = d carry_i(t) / d leaf[i],   A_ii = d carry_i(t) / d carry_i(t-1)

The output map's own parameters (``cell.output_fields``: the LRU's ``C`` and ``D``) do not feed the carry; their
gradient is the immediate one, ``dh . d output / d params``, which is exact too. The gradient of a step is that
immediate term (for every parameter the output reads) plus ``sum_k (d L / d carry_t[:, k]) J_t[:, k]``.

Two paths keep the same influence:

* the fast path (:func:`fast_credit`) uses the cell's structure ``zx = W_x x_t``,
  ``carry_i(t) = unit_step(leaf[i], carry_i(t-1), zx_i)``: it takes the per-unit Jacobians of ``unit_step``
  with respect to ``zx`` (G directions), the carry (S) and each other per-unit parameter (one direction per
  scalar of a unit's row), each direction set on every unit at once since the units are independent, all in one
  vmapped Jacobian-vector product, and writes ``D_i[W_x] = (d unit_step / d zx_i) (outer) x_t`` and the update
  ``J_i <- D_i + A_ii J_i`` as elementwise broadcasts over units, like :mod:`online_rnn.learners.fast` does for
  gated cells. No Jacobian of the whole state is formed; memory and time are O(S P). The influence is one
  array ``(n, S, P_unit)``, each unit's recurrent parameters flattened in field order (:func:`split_trace`
  gives the tree).
* the generic path (:func:`generic_credit`) takes ``jax.jacrev`` / ``jax.jacfwd`` of the one-unit map
  ``leaf[i], carry_i -> unit_step(leaf[i], carry_i, W_x[i] x_t)``, vmapped over units, and keeps the
  influence as a tree like the recurrent parameters; it is the test oracle of the fast path, and
  :func:`online_rnn.learners.rtrl.rtrl_credit` (the Jacobians of the whole cell step) is the oracle of both.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from online_rnn.cells import Cell, input_projection, recurrent_part
from online_rnn.learners.base import Credit
from online_rnn.learners.snap1 import SnAp1Trace

PATH = "fast: elementwise influence of diagonal cells (learners/diagonal.py)"


def supports(cell: Cell) -> bool:
    """The diagonal form: ``unit_step`` and ``output``."""
    return cell.unit_step is not None and cell.output is not None


def _recurrent_fields(cell: Cell, params: Any) -> tuple[str, ...]:
    return tuple(f for f in params._fields if f not in cell.output_fields)


def _unit_size(leaf: Any) -> int:
    return int(np.prod(leaf.shape[1:]))


def _n_units(params: Any) -> int:
    return params.w_x.shape[0]


def _flat_carry(carry: Any) -> jax.Array:
    """A carry (leaves ``(n,)``) as ``(n, S)``, or one unit's carry (scalar leaves) as ``(S,)``."""
    return jnp.stack(jax.tree.leaves(carry), axis=-1)


def _unflat_carry(treedef: Any, cv: jax.Array) -> Any:
    return jax.tree.unflatten(treedef, [cv[..., k] for k in range(treedef.num_leaves)])


def _add_immediate(cell: Cell, g_immediate: Any, g_recurrent: dict) -> Any:
    """The immediate gradient (every field) plus the influence term (the recurrent fields)."""
    return g_immediate._replace(**{f: getattr(g_immediate, f) + g for f, g in g_recurrent.items()})


# ------------------------------------------------------------------------------------------------ fast path


def init_trace(cell: Cell, params: Any, carry: Any) -> jax.Array:
    """Zero influence, ``(n, S, P_unit)``: unit ``i``'s carry components against its own recurrent parameters,
    flattened in field order."""
    size = sum(_unit_size(getattr(params, f)) for f in _recurrent_fields(cell, params))
    return jnp.zeros((_n_units(params), len(jax.tree.leaves(carry)), size), params.w_x.dtype)


def split_trace(cell: Cell, params: Any, trace: jax.Array) -> Any:
    """The flat influence as a tree like :func:`online_rnn.cells.recurrent_part` of ``params``, leaves
    ``(n, S, *leaf.shape[1:])`` (the generic path's layout)."""
    parts, start = {}, 0
    for f in _recurrent_fields(cell, params):
        leaf = getattr(params, f)
        size = _unit_size(leaf)
        parts[f] = trace[:, :, start:start + size].reshape(trace.shape[:2] + leaf.shape[1:])
        start += size
    return recurrent_part(cell, params)._replace(**parts)


def fast_step(cell: Cell, params: Any, carry: Any, trace: jax.Array, x: jax.Array):
    """One step of the cell and of its influence, elementwise over units.

    Returns ``(carry_t, h_t, trace_t, out_vjp)``; :func:`fast_grad` turns the cotangent on ``h_t`` into the
    gradient.
    """
    fields = _recurrent_fields(cell, params)
    extra = tuple(f for f in fields if f != "w_x")  # w_x enters only through zx = W_x x
    carry_def = jax.tree.structure(carry)
    n_comp = carry_def.num_leaves
    n = _n_units(params)
    rec = recurrent_part(cell, params)

    def f(zx, cv, extras):
        """Every unit's new carry, ``(n, S)``; unit ``i`` depends only on row ``i`` of each argument."""
        p = rec._replace(**dict(zip(extra, extras)))
        return jax.vmap(lambda p_i, z, c: _flat_carry(cell.unit_step(p_i, _unflat_carry(carry_def, c), z)))(
            p, zx, cv)

    zx = input_projection(params, x)  # (n, G)
    cv = _flat_carry(carry)  # (n, S)
    extras = tuple(getattr(params, e) for e in extra)
    primals = (zx, cv, extras)
    cv_t, f_jvp = jax.linearize(f, *primals)

    # The directions: one per scalar of a unit's row of each argument (G for zx, S for the carry, the size of a
    # unit's row for each other recurrent parameter), each set on every unit at once, so that one
    # Jacobian-vector product gives every unit's own derivative along it, (n, S). All of them in one batch.
    leaves, treedef = jax.tree.flatten(primals)
    sizes = [_unit_size(leaf) for leaf in leaves]
    total = sum(sizes)
    eye = np.eye(total)
    tangents, start = [], 0
    for leaf, size in zip(leaves, sizes):
        block = eye[:, start:start + size]  # (directions, size): direction k is 1 at one scalar of this leaf
        tangents.append(jnp.broadcast_to(jnp.asarray(block, leaf.dtype)[:, None, :], (total, n, size))
                        .reshape((total,) + leaf.shape))
        start += size
    jac = jax.vmap(f_jvp)(*jax.tree.unflatten(treedef, tangents))  # (directions, n, S)
    jac = jnp.moveaxis(jac, 0, -1)  # (n, S, directions), in the order zx, carry, extras
    cuts = np.cumsum(sizes)[:-1]
    parts = jnp.split(jac, cuts, axis=-1)
    jx, a = parts[0], parts[1]  # (n, S, G), A_ii (n, S, S)
    d = {"w_x": jx[..., None] * x}  # (n, S, G, input_size)
    for name, part in zip(extra, parts[2:]):
        d[name] = part  # (n, S, size of a unit's row)

    d_flat = jnp.concatenate([d[name].reshape(n, n_comp, -1) for name in fields], axis=-1)
    trace_t = d_flat
    for k in range(n_comp):
        trace_t = trace_t + a[:, :, k, None] * trace[:, k:k + 1]
    carry_t = _unflat_carry(carry_def, cv_t)
    h_t, out_vjp = jax.vjp(lambda p, c: cell.output(p, c, x), params, carry_t)
    return carry_t, h_t, trace_t, out_vjp


def fast_grad(cell: Cell, params: Any, out_vjp: Any, trace_t: jax.Array, dh: jax.Array) -> Any:
    """The gradient of a step from the cotangent ``dh`` on ``h_t``: the output map's immediate term plus
    ``sum_k (d L / d carry_t[:, k]) J_t[:, k]``."""
    g_immediate, dcarry = out_vjp(dh)
    dcv = _flat_carry(dcarry)  # (n, S)
    g = dcv[:, 0, None] * trace_t[:, 0]
    for k in range(1, dcv.shape[1]):
        g = g + dcv[:, k, None] * trace_t[:, k]
    parts, start = {}, 0
    for name in _recurrent_fields(cell, params):
        leaf = getattr(params, name)
        size = _unit_size(leaf)
        parts[name] = g[:, start:start + size].reshape(leaf.shape)
        start += size
    return _add_immediate(cell, g_immediate, parts)


def fast_credit(cell: Cell) -> Credit:
    """SnAp-1 (= RTRL) for a diagonal cell with the elementwise update above."""

    def init(cell_params, carry, readout_params) -> SnAp1Trace:
        return SnAp1Trace(init_trace(cell, cell_params, carry))

    def forward(cell_params, carry, trace: SnAp1Trace, x_t, key, t):
        carry_t, h_t, influence, out_vjp = fast_step(cell, cell_params, carry, trace.influence, x_t)
        return carry_t, h_t, (cell_params, out_vjp, influence)

    def backward(residuals, dh):
        cell_params, out_vjp, influence = residuals
        return fast_grad(cell, cell_params, out_vjp, influence, dh), SnAp1Trace(influence)

    return Credit(init, forward, backward, path=PATH)


# --------------------------------------------------------------------------------------------- generic path


def generic_credit(cell: Cell) -> Credit:
    """SnAp-1 (= RTRL) for a diagonal cell from ``jax.jacrev`` / ``jax.jacfwd`` of its one-unit map; the oracle
    of :func:`fast_credit`. The influence is a tree like the recurrent parameters, leaves
    ``(n, S, *leaf.shape[1:])``."""

    def init(cell_params, carry, readout_params) -> SnAp1Trace:
        n_comp = len(jax.tree.leaves(carry))
        rec = recurrent_part(cell, cell_params)
        return SnAp1Trace(jax.tree.map(lambda p: jnp.zeros((p.shape[0], n_comp) + p.shape[1:], p.dtype), rec))

    def forward(cell_params, carry, trace: SnAp1Trace, x_t, key, t):
        carry_t, h_t = cell.apply(cell_params, carry, x_t)
        carry_def = jax.tree.structure(carry)

        def unit_map(p_i, c_i):
            """Unit i's new carry (S,) from its own parameter rows and its own carry (S,)."""
            return _flat_carry(cell.unit_step(p_i, _unflat_carry(carry_def, c_i), input_projection(p_i, x_t)))

        rec = recurrent_part(cell, cell_params)
        cv = _flat_carry(carry)
        d = jax.vmap(jax.jacrev(unit_map, argnums=0))(rec, cv)  # leaves (n, S, *leaf_i.shape)
        a = jax.vmap(jax.jacfwd(unit_map, argnums=1))(rec, cv)  # (n, S, S)
        influence = jax.tree.map(lambda d_leaf, j_leaf: d_leaf + jnp.einsum("nkl,nl...->nk...", a, j_leaf),
                                 d, trace.influence)
        _, out_vjp = jax.vjp(lambda p, c: cell.output(p, c, x_t), cell_params, carry_t)
        return carry_t, h_t, (cell_params, out_vjp, influence)

    def backward(residuals, dh):
        cell_params, out_vjp, influence = residuals
        g_immediate, dcarry = out_vjp(dh)
        dc = _flat_carry(dcarry)  # (n, S)
        fields = _recurrent_fields(cell, cell_params)
        g_rec = {f: jnp.einsum("nk,nk...->n...", dc, getattr(influence, f)) for f in fields}
        return _add_immediate(cell, g_immediate, g_rec), SnAp1Trace(influence)

    return Credit(init, forward, backward, path="generic: jax.jacrev / jax.jacfwd of each unit's map")


def snap1_credit(cell: Cell, fast: bool = True) -> Credit:
    """SnAp-1 for a diagonal cell: the elementwise path, or (``fast=False``) the generic one."""
    return fast_credit(cell) if fast else generic_credit(cell)

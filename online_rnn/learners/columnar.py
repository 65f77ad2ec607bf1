"""Columnar networks: ``n`` independent columns, each trained with exact RTRL (the paper's first constraint).

Every column is a copy of ``cell`` (default ``cells.lstm(1)``, the paper's one-unit LSTM column) reading the
same input ``x_t``; no column reads another, so the influence matrix is block diagonal and exact RTRL needs
only each column's own block: time and memory are linear in the number of columns. The
network is a ``jax.vmap`` of one column over columns, and so is the credit assignment: ``state.params["cell"]``
holds the column parameters stacked on a leading column axis, and ``state.trace`` the per-column RTRL traces.
One linear readout reads all column outputs, ``h_t = concat(h_t^(1), ..., h_t^(n))``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from online_rnn import cells, prng
from online_rnn.cells import Cell
from online_rnn.learners import fast as _fast
from online_rnn.learners.base import Credit, Learner, Options, build, check_positive_int
from online_rnn.learners.rtrl import rtrl_credit
from online_rnn.objectives import Objective


def stack_columns(cell: Cell, n_columns: int) -> Cell:
    """``n_columns`` independent copies of ``cell`` as one cell (column axis first in params and carry)."""
    n = check_positive_int("n_columns", n_columns)

    def init(key: jax.Array, input_size: int) -> Any:
        return jax.vmap(lambda k: cell.init(k, input_size))(jax.random.split(key, n))

    def initial_carry(params: Any) -> Any:
        return jax.vmap(cell.initial_carry)(params)

    def apply(params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        carry_t, h_t = jax.vmap(cell.apply, in_axes=(0, 0, None))(params, carry, x)
        return carry_t, h_t.reshape(-1)

    return Cell(init, initial_carry, apply, n * cell.hidden_size, cell.n_gates, f"{n}x{cell.name}")


def vmap_credit(inner: Credit, n_columns: int, hidden_per_column: int) -> Credit:
    """Run a one-column credit rule on every column with ``jax.vmap`` (the columns share the input and the step
    count; each column draws from its own key)."""

    def init(cell_params, carry, readout_params):
        return jax.vmap(lambda p, c: inner.init(p, c, readout_params))(cell_params, carry)

    def forward(cell_params, carry, trace, x_t, key, t):
        if inner.uses_key:
            keys = jax.vmap(lambda i: prng.fold_in(key, i))(jnp.arange(n_columns))
            fwd = jax.vmap(inner.forward, in_axes=(0, 0, 0, None, 0, None))
            carry_t, h_t, residuals = fwd(cell_params, carry, trace, x_t, keys, t)
        else:
            fwd = jax.vmap(inner.forward, in_axes=(0, 0, 0, None, None, None))
            carry_t, h_t, residuals = fwd(cell_params, carry, trace, x_t, key, t)
        return carry_t, h_t.reshape(-1), residuals

    def backward(residuals, dh):
        return jax.vmap(inner.backward)(residuals, dh.reshape(n_columns, hidden_per_column))

    return Credit(init, forward, backward, uses_key=inner.uses_key,
                  path=f"{inner.path}, vmapped over columns")


def fast_columns_credit(cell: Cell) -> Credit:
    """Exact RTRL for stacked one-unit gated columns with the fused update of :mod:`online_rnn.learners.fast`
    (each column's influence is its own block, so the unit-diagonal update is the whole of RTRL)."""
    view, unview = _fast.column_view, _fast.column_unview

    def init(cell_params, carry, readout_params):
        return _fast.init_trace(view(cell_params), view(carry))

    def forward(cell_params, carry, trace, x_t, key, t):
        carry_t, h_t, trace_t = _fast.diag_step(cell, view(cell_params), view(carry), trace, x_t)
        return unview(carry_t), h_t, (cell_params, carry_t, trace_t)

    def backward(residuals, dh):
        cell_params, carry_t, trace_t = residuals
        return unview(_fast.diag_grad(cell, view(cell_params), carry_t, trace_t, dh)), trace_t

    return Credit(init, forward, backward, path=_fast.PATH)


def columnar(
    cell: Optional[Cell],
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    n_columns: int,
    *,
    options: Optional[Options] = None,
    column_credit: Optional[Callable[[Cell], Credit]] = None,
    fast: bool = True,
) -> Learner:
    """A columnar network of ``n_columns`` copies of ``cell`` (default ``cells.lstm(1)``), each trained with
    exact RTRL. One-unit gated columns use the fused update of :mod:`online_rnn.learners.fast` (``fast=True``);
    otherwise ``column_credit`` (default exact RTRL, any one-column credit rule) is vmapped over columns."""
    cell = cells.lstm(1) if cell is None else cell
    n = check_positive_int("n_columns", n_columns)
    net = stack_columns(cell, n)
    if column_credit is None and fast and cell.hidden_size == 1 and _fast.supports(cell):
        credit = fast_columns_credit(cell)
    else:
        credit = vmap_credit((column_credit or rtrl_credit)(cell), n, cell.hidden_size)
    return build("columnar", net, credit, input_size, output_size, objective, optimizer, options)

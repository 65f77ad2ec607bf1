"""Truncated back-propagation through time, and BPTT over whole sequences.

``tbptt(..., truncation=k, stride=1)`` (the paper's baseline): every step, the cell is re-run with the current
parameters over the last ``k`` inputs from the carry ``k`` steps back (gradient stopped there), and the step's
objective is differentiated through that window with ``jax.vjp``. The carry the learner keeps is the one this
re-run produces, so ``info.loss`` is exactly the loss whose gradient is taken. Cost O(k) cell steps per step.

``tbptt(..., truncation=k, stride=k)``: the carry runs forward one step at a time; every ``k`` steps the summed
loss of the last ``k`` steps is differentiated through the window from the carry at its start (gradient stopped
there) and one update is made; ``info.grads`` is zero on the other steps.

``bptt(..., seq_len=T)`` is ``stride = truncation = T``: one update per sequence of ``T`` steps with the exact
gradient of the sequence's summed loss given the carry it started from (from the initial carry for the first
sequence, which is the offline BPTT reference).

Objectives that need a gradient every step (TD(lambda)'s eligibility trace) work with ``stride=1`` only.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from online_rnn.cells import Cell
from online_rnn.learners.base import (Credit, Learner, Options, build, check_learner_args, check_positive_int,
                                      tree_where)
from online_rnn.objectives import Objective


class TBPTTTrace(NamedTuple):
    start: Any  # carry at the start of the window (gradient stopped there)
    xs: jax.Array  # (k, input_size) inputs of the window: sliding, oldest first; strided, by position t mod k
    dhs: jax.Array  # (k, hidden) cotangents on the window's outputs (strided; empty when sliding)
    g_readout: Any  # readout gradient summed over the window (strided; () when sliding)


def _window(cell: Cell, cell_params, start, xs, valid):
    """Run the cell over the window from ``start``; steps with ``valid`` False leave the carry unchanged."""

    def body(carry, inp):
        x, ok = inp
        carry_t, h_t = cell.apply(cell_params, carry, x)
        carry_t = tree_where(ok, carry_t, carry)
        return carry_t, (carry_t, h_t)

    # A rolled loop: with the run axis last (the CPU sweeps) each window step is a few loops over (units x runs),
    # and unrolling the window measured 1.6-2x slower there and took 12-26 s to compile at (15, 4) and (30, 2)
    # (4-6 s rolled).
    last, (carries, hs) = lax.scan(body, lax.stop_gradient(start), (xs, valid))
    return hs, (last, carries)


def _sliding_credit(cell: Cell, k: int, input_size: int) -> Credit:
    def init(cell_params, carry, readout_params) -> TBPTTTrace:
        dtype = jax.tree.leaves(cell_params)[0].dtype
        return TBPTTTrace(start=carry, xs=jnp.zeros((k, input_size), dtype), dhs=jnp.zeros((0,), dtype),
                          g_readout=())

    def forward(cell_params, carry, trace: TBPTTTrace, x_t, key, t):
        xs = jnp.concatenate([trace.xs[1:], x_t[None]], axis=0)
        count = jnp.minimum(t + 1, k)  # inputs in the window
        valid = jnp.arange(k) >= k - count

        def last_output(p):
            hs, aux = _window(cell, p, trace.start, xs, valid)
            return hs[-1], aux

        h_t, window_vjp, (carry_t, carries) = jax.vjp(last_output, cell_params, has_aux=True)
        # Once the window is full, the next window starts one step later: after its first input.
        first = jax.tree.map(lambda c: c[0], carries)
        start = tree_where(count == k, first, trace.start)
        return carry_t, h_t, (window_vjp, TBPTTTrace(start, xs, trace.dhs, trace.g_readout))

    def backward(residuals, dh):
        window_vjp, trace_t = residuals
        (g_cell,) = window_vjp(dh)
        return g_cell, trace_t

    return Credit(init, forward, backward, path="generic: jax.vjp through the window, every step")


def _strided_credit(cell: Cell, k: int, input_size: int) -> Credit:
    """One update per window of ``k`` steps, at its last step (``t mod k == k - 1``)."""

    def init(cell_params, carry, readout_params) -> TBPTTTrace:
        dtype = jax.tree.leaves(cell_params)[0].dtype
        return TBPTTTrace(
            start=carry,
            xs=jnp.zeros((k, input_size), dtype),
            dhs=jnp.zeros((k, cell.hidden_size), dtype),
            g_readout=jax.tree.map(jnp.zeros_like, readout_params),
        )

    def forward(cell_params, carry, trace: TBPTTTrace, x_t, key, t):
        carry_t, h_t = cell.apply(cell_params, carry, x_t)
        return carry_t, h_t, (cell_params, carry_t, trace, x_t, t % k)

    def backward(residuals, dh):
        cell_params, carry_t, trace, x_t, pos = residuals
        xs = trace.xs.at[pos].set(x_t)
        dhs = trace.dhs.at[pos].set(dh)
        is_end = pos == k - 1

        def window_grads(_):
            valid = jnp.ones((k,), bool)
            _, window_vjp = jax.vjp(lambda p: _window(cell, p, trace.start, xs, valid)[0], cell_params)
            return window_vjp(dhs)[0]

        zeros = jax.tree.map(jnp.zeros_like, cell_params)
        g_cell = lax.cond(is_end, window_grads, lambda _: zeros, None)
        start = tree_where(is_end, carry_t, trace.start)
        return g_cell, TBPTTTrace(start, xs, dhs, trace.g_readout)

    def readout(trace_t, g_readout, t):
        """The readout learns once per window too, from its gradient summed over the window."""
        g_sum = jax.tree.map(jnp.add, trace_t.g_readout, g_readout)
        is_end = t % k == k - 1
        g_used = jax.tree.map(lambda g: jnp.where(is_end, g, jnp.zeros_like(g)), g_sum)
        kept = jax.tree.map(lambda g: jnp.where(is_end, jnp.zeros_like(g), g), g_sum)
        return g_used, trace_t._replace(g_readout=kept)

    return Credit(init, forward, backward, readout=readout,
                  path="generic: jax.vjp through the window, once per window")


def tbptt(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    truncation: int,
    stride: int = 1,
    *,
    options: Optional[Options] = None,
) -> Learner:
    """Truncated BPTT over the last ``truncation`` steps; ``stride`` is 1 (sliding window, update every step)
    or ``truncation`` (one update per window)."""
    check_learner_args(cell, input_size, output_size, objective, optimizer)
    k = check_positive_int("truncation", truncation)
    stride = check_positive_int("stride", stride)
    if stride not in (1, k):
        raise ValueError(f"stride must be 1 (sliding window) or truncation ({k}) (one update per window), got {stride}")
    if stride == 1:
        credit = _sliding_credit(cell, k, input_size)
    else:
        if objective.per_step_gradient:
            raise ValueError(
                f"objective {objective.name} needs a gradient every step; use stride=1 with it, got stride={stride}"
            )
        credit = _strided_credit(cell, k, input_size)
    return build("tbptt", cell, credit, input_size, output_size, objective, optimizer, options)


def bptt(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    seq_len: int,
    *,
    options: Optional[Options] = None,
) -> Learner:
    """BPTT: one update per sequence of ``seq_len`` steps with the exact gradient of its summed loss."""
    check_learner_args(cell, input_size, output_size, objective, optimizer)
    t = check_positive_int("seq_len", seq_len)
    if objective.per_step_gradient:
        raise ValueError(f"objective {objective.name} needs a gradient every step; bptt cannot serve it (use tbptt)")
    credit = _strided_credit(cell, t, input_size)
    return build("bptt", cell, credit, input_size, output_size, objective, optimizer, options)


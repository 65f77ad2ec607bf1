"""e-prop (Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass, "A solution to the learning dilemma for
recurrent networks of spiking neurons", Nature Communications 11, 3625, 2020), for the gated cells.

e-prop splits a unit's state into its *hidden state*, which only the unit itself reads, and its *observable
output* ``h``, through which units reach each other (and themselves, through the recurrent weights). It keeps,
per unit ``j``, the derivative of its own state with respect to its own parameters along the hidden-state path
only, and drops every path through an output ``h_{t-1}``::

    eligibility vector   eps_j(t) = (d s_j(t) / d s_j(t-1)) eps_j(t-1) + d s_j(t) / d theta_j
    eligibility trace    e_j(t)   = (d h_j(t) / d s_j(t)) eps_j(t)
    gradient             g_j(t)   = L_j(t) e_j(t)

where every derivative is partial, with the previous outputs ``h_{t-1}`` held fixed (the paper's Methods
write ``h_j`` for the hidden state and ``z_j`` for our ``h``). In the cells of
:mod:`online_rnn.cells`: unit ``j``'s carry is ``pointwise(zx_j, zh_j, carry_j)`` with ``zh_j = W_h[j] h_{t-1}``,
so ``d s_j(t) / d s_j(t-1)`` is ``d pointwise / d carry_j`` at fixed ``zh``: the LSTM's ``f_t`` on its cell
state (the paper's e-prop for LSTMs), the leak ``1 - 1/tau`` of :func:`online_rnn.cells.leaky_elman` (where
e-prop is RFLO, :mod:`online_rnn.learners.rflo`, with the same feedback), the update gate of a GRU, and zero for a
plain Elman unit, whose whole state is its output (e-prop is then the one-step gradient).

The learning signal ``L_j(t)`` is the error sent back from the readout: ``feedback="readout"`` (symmetric e-prop)
uses the readout's transpose, ``L = W_out^T dy``, which is the exact ``d L_t / d h_t``; ``feedback="random"``
(random e-prop) a fixed random matrix ``B`` drawn at init and kept in the trace (never trained),
``L = B dy``, with ``B_jk ~ N(0, 1 / output_size)`` (the scale of Murray's RFLO example code). With online
normalisation of the features, ``L`` passes through the normalisation's derivative either way.

Relation to SnAp-1 (:mod:`online_rnn.learners.snap1`), checked in the tests: both keep only each unit's own
block ``d carry_j / d theta_j`` with the same immediate term; SnAp-1's recursion multiplies by the whole
``d carry_j(t) / d carry_j(t-1)``, which adds to e-prop's hidden-state term the path through the unit's own
output and its self-recurrent weights ``W_h[j, :, j]``. So with symmetric feedback e-prop *is* SnAp-1 on any
network whose self-recurrent weights are zero, and on others SnAp-1 with that one path dropped; e-prop's
eligibility trace is the ``h`` row of the kept influence and, for an LSTM, its eligibility vector the ``c`` row.

Implementation: ``jax.jacrev`` / ``jax.jacfwd`` of each unit's map ``theta_j, carry_j -> unit_apply(theta_j,
carry_j, h_{t-1}, x_t)`` with ``h_{t-1}`` held fixed, vmapped over units (generic, no hand-written derivative).
Memory O(S P) and time O(S^2 P) per step for ``S`` carry components per unit, as SnAp-1.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from online_rnn.cells import Cell
from online_rnn.learners.base import Credit, Learner, Options, build
from online_rnn.objectives import Objective

FEEDBACKS = ("readout", "random")


class EpropTrace(NamedTuple):
    """``eligibility``: a tree like the cell params with leaves ``(n, S, *leaf.shape[1:])``, unit ``j``'s carry
    components against its own parameters along the hidden-state path (``[:, k]`` for the component that is the
    output is the eligibility trace). ``feedback``: the fixed random feedback matrix ``B`` (hidden_size,
    output_size) with ``feedback="random"``, else ``()``."""

    eligibility: Any
    feedback: Any


def check_feedback(feedback: Any) -> str:
    if feedback not in FEEDBACKS:
        raise ValueError(f"feedback: unknown {feedback!r}; allowed: {', '.join(FEEDBACKS)}")
    return feedback


def draw_feedback(key: jax.Array, hidden_size: int, readout_params: Any, dtype: Any) -> jax.Array:
    """The fixed random feedback matrix ``B`` (hidden_size, output_size), entries ~ N(0, 1 / output_size)."""
    output_size = readout_params["w"].shape[0] if "w" in readout_params else hidden_size  # identity: y = h
    return jax.random.normal(key, (hidden_size, output_size), dtype) / jnp.sqrt(jnp.asarray(output_size, dtype))


def random_feedback(trace: Any, dy: jax.Array) -> jax.Array:
    """``B dy``: the learning signal on the features for ``feedback="random"``."""
    return trace.feedback @ dy


def _flat(unit_carry: Any) -> jax.Array:
    return jnp.stack(jax.tree.leaves(unit_carry))


def supports(cell: Cell) -> bool:
    """e-prop needs each unit's map ``unit_apply`` and its output ``unit_output`` (the gated cells)."""
    return cell.unit_apply is not None and cell.unit_output is not None and not cell.layers


def eprop_credit(cell: Cell, feedback: str = "readout") -> Credit:
    """e-prop for ``cell`` as a :class:`Credit` rule (see the module docstring)."""
    check_feedback(feedback)
    if not supports(cell):
        raise ValueError(f"eprop needs a cell with per-unit structure (elman, leaky_elman, lstm, gru); {cell.name!r} "
                         f"has none (on lru / rtu, whose units do not read each other, snap1 is exact RTRL)")

    def init(cell_params, carry, readout_params, key=None) -> EpropTrace:
        n_comp = len(jax.tree.leaves(carry))
        elig = jax.tree.map(lambda p: jnp.zeros((p.shape[0], n_comp) + p.shape[1:], p.dtype), cell_params)
        if feedback == "readout":
            return EpropTrace(elig, ())
        dtype = jax.tree.leaves(cell_params)[0].dtype
        return EpropTrace(elig, draw_feedback(key, cell.hidden_size, readout_params, dtype))

    def forward(cell_params, carry, trace: EpropTrace, x_t, key, t):
        carry_t, h_t = cell.apply(cell_params, carry, x_t)
        h_prev = jax.vmap(cell.unit_output)(carry)  # held fixed: e-prop drops every path through an output
        carry_def = jax.tree.structure(carry)

        def unit_map(p_j, c_j):
            def f(p, delta):
                own = jax.tree.unflatten(carry_def, list(_flat(c_j) + delta))
                return _flat(cell.unit_apply(p, own, h_prev, x_t))

            zero = jnp.zeros((carry_def.num_leaves,), h_prev.dtype)
            return jax.jacrev(f, argnums=0)(p_j, zero), jax.jacfwd(f, argnums=1)(p_j, zero)

        d, a = jax.vmap(unit_map)(cell_params, carry)  # d: leaves (n, S, *leaf_j.shape); a: (n, S, S)
        elig = jax.tree.map(lambda d_leaf, e_leaf: d_leaf + jnp.einsum("nkl,nl...->nk...", a, e_leaf),
                            d, trace.eligibility)
        return carry_t, h_t, (carry_t, EpropTrace(elig, trace.feedback))

    def backward(residuals, dh):
        carry_t, trace = residuals
        _, out_vjp = jax.vjp(lambda c: jax.vmap(cell.unit_output)(c), carry_t)
        (dcarry,) = out_vjp(dh)  # L_j (d h_j / d s_j): the learning signal on each carry component
        dc = jnp.stack(jax.tree.leaves(dcarry), axis=1)  # (n, S)
        grad = jax.tree.map(lambda e: jnp.einsum("nk,nk...->n...", dc, e), trace.eligibility)
        return grad, trace

    return Credit(init, forward, backward,
                  feedback=random_feedback if feedback == "random" else None,
                  path="generic: jax.jacrev / jax.jacfwd of each unit's map, previous outputs held fixed")


def eprop(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    feedback: str = "readout",
    *,
    options: Optional[Options] = None,
) -> Learner:
    """e-prop learner (see the module docstring): ``feedback="readout"`` (symmetric e-prop) or ``"random"``
    (random e-prop, a fixed random feedback matrix in ``state.trace.feedback``). The eligibility vectors and
    traces are ``state.trace.eligibility``."""
    return build("eprop", cell, eprop_credit(cell, feedback), input_size, output_size, objective, optimizer,
                 options)

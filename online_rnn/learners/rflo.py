"""RFLO: random-feedback local online learning (Murray, "Local online learning in recurrent networks with random
feedback", eLife 8:e43299, 2019).

The network is a leaky Elman RNN (:func:`online_rnn.cells.leaky_elman`), with ``alpha = 1 / tau``::

    h_t = (1 - alpha) h_{t-1} + alpha tanh(z_t),   z_t = W_h h_{t-1} + W_x x_t + b

RFLO keeps one eligibility trace per weight: the weight's immediate effect on its own unit, low-pass filtered by
the unit's leak. With ``a_t = [h_{t-1}; x_t; 1]`` the input each row of ``[W_h, W_x, b]`` multiplies::

    P_t[i, j] = (1 - alpha) P_{t-1}[i, j] + alpha tanh'(z_t[i]) a_t[j]
    g_t[i, j] = L_t[i] P_t[i, j]

(as in Marschall, Cho & Savin's ``vanilla-rtrl`` implementation; Murray's example code, the ``rflo-learning``
repository, has no bias and reads the previous step's input in the ``W_x`` trace, where its RTRL branch reads
the current one, as here). This is RTRL's recursion for ``d h_t[i] / d W[i, j]`` with every path through the
recurrent weights dropped, the unit's own included: only the leak carries the past. The learning signal is the
output error sent back through a fixed random matrix, ``L_t = B dy_t`` (``feedback="random"``, Murray's rule;
``B`` is drawn at init, kept in ``state.trace.feedback`` and never trained, entries ~ N(0, 1 / output_size) as in
his code), or through the readout's transpose, ``L_t = W_out^T dy_t = d L_t / d h_t`` (``feedback="readout"``).
The readout itself learns from its exact gradient ``dy h_t^T``.

The factors ``alpha tanh'(z_t)`` and ``1 - alpha`` are the derivatives of the cell's ``pointwise`` map with
respect to ``z`` and to the unit's own previous state (``jax.jvp``, not written by hand), so ``cells.elman``
(``tau = 1``: the trace is the immediate Jacobian alone) is served too. Cost O(P) time and memory per step, all
elementwise. RFLO is e-prop (:mod:`online_rnn.learners.eprop`) on leaky Elman units with the same feedback; that
generic path is this one's test oracle.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from online_rnn.cells import Cell, ElmanParams, gate_preactivations
from online_rnn.learners.base import Credit, Learner, Options, build
from online_rnn.learners.eprop import check_feedback, draw_feedback, random_feedback
from online_rnn.objectives import Objective

CELLS = ("leaky_elman", "elman")


class RFLOTrace(NamedTuple):
    """``eligibility``: ``P`` as ``ElmanParams`` (each leaf shaped like the parameter it belongs to);
    ``feedback``: the fixed random feedback matrix ``B`` (hidden_size, output_size) with ``feedback="random"``,
    else ``()``."""

    eligibility: ElmanParams
    feedback: Any


def rflo_credit(cell: Cell, feedback: str = "random") -> Credit:
    """RFLO for a leaky Elman cell (or an Elman cell) as a :class:`Credit` rule."""
    check_feedback(feedback)
    if cell.name not in CELLS:
        raise ValueError(f"rflo needs a leaky Elman cell (cells.leaky_elman, or cells.elman for tau = 1), got "
                         f"{cell.name!r}; eprop takes lstm and gru")

    def init(cell_params, carry, readout_params, key=None) -> RFLOTrace:
        elig = jax.tree.map(jnp.zeros_like, cell_params)
        if feedback == "readout":
            return RFLOTrace(elig, ())
        return RFLOTrace(elig, draw_feedback(key, cell.hidden_size, readout_params, cell_params.b.dtype))

    def forward(cell_params: ElmanParams, h_prev, trace: RFLOTrace, x_t, key, t):
        zx, zh = gate_preactivations(cell_params, x_t, h_prev)  # (n, 1) each

        def step(zx_, h_):  # every unit's pointwise map; unit i reads row i only
            return jax.vmap(cell.pointwise)(cell_params, zx_, zh, h_)

        h_t, d = jax.jvp(lambda zx_: step(zx_, h_prev), (zx,), (jnp.ones_like(zx),))  # d = alpha tanh'(z)
        a = jax.jvp(lambda h_: step(zx, h_), (h_prev,), (jnp.ones_like(h_prev),))[1]  # a = 1 - alpha (the leak)
        p = trace.eligibility
        elig = ElmanParams(
            w_x=a[:, None, None] * p.w_x + d[:, None, None] * x_t,
            w_h=a[:, None, None] * p.w_h + d[:, None, None] * h_prev,
            b=a[:, None] * p.b + d[:, None],
        )
        return h_t, h_t, RFLOTrace(elig, trace.feedback)

    def backward(trace: RFLOTrace, dh):
        p = trace.eligibility
        grad = ElmanParams(w_x=dh[:, None, None] * p.w_x, w_h=dh[:, None, None] * p.w_h, b=dh[:, None] * p.b)
        return grad, trace

    return Credit(init, forward, backward,
                  feedback=random_feedback if feedback == "random" else None,
                  path="fast: elementwise leaky eligibility traces (learners/rflo.py)")


def rflo(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    feedback: str = "random",
    *,
    options: Optional[Options] = None,
) -> Learner:
    """RFLO learner (see the module docstring) on ``cells.leaky_elman(n, tau)`` (or ``cells.elman``).
    ``feedback="random"`` is Murray's rule; ``"readout"`` sends the error back through the readout's transpose."""
    return build("rflo", cell, rflo_credit(cell, feedback), input_size, output_size, objective, optimizer,
                 options)

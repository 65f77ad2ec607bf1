"""Credit assignment layer by layer for a :func:`online_rnn.cells.stack`: online credit inside each layer,
backpropagation across layers within the step.

Zucchet, Meier, Schug, Mujika & Sacramento ("Online learning of long-range dependencies", NeurIPS 2023) train
deep networks of diagonal recurrent layers this way: each layer ``l`` keeps its own online influence
``J^l = d carry^l / d theta^l`` (exact for a diagonal layer, see :mod:`online_rnn.learners.diagonal`), and the
error on the output is sent down through the layers within the same step with ``jax.vjp``
(``d L / d h^{l-1}_t`` from layer ``l``'s step at fixed ``carry^l_{t-1}``). Layer ``l``'s gradient is its own
credit rule's answer to that error.

What it drops, in RTRL's terms. Write the stack's influence ``J = d carry / d theta`` in blocks ``J^{l,k} =
d carry^l / d theta^k``. Exact RTRL updates every block, ``J_t = D_t + A_t J_{t-1}``. This scheme, with exact
credit inside each layer, is RTRL with the cross-layer blocks (``l != k``) set to zero in the trace after every
update: the gradient at step ``t`` still contains every path from ``theta^k`` to the loss that runs through the
layers within step ``t`` (from ``J^{k,k}_{t-1}``, ``D_t`` and ``A_t``), and loses only the paths where a lower
layer's parameters changed an upper layer's carry at an earlier step and that carry carried it forward in
time. The trace is the layers' traces, O(sum of the layers' costs).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax

from online_rnn import prng
from online_rnn.cells import Cell
from online_rnn.learners.base import Credit


class StackTrace(NamedTuple):
    """One trace per layer, in layer order."""

    layers: tuple


def layerwise_credit(cell: Cell, credits: Sequence[Credit]) -> Credit:
    """Run ``credits[l]`` on layer ``l`` of the stack ``cell`` and backpropagate the error across layers within
    the step (see the module docstring)."""
    layers = cell.layers
    if not layers:
        raise ValueError(f"layerwise credit needs a stack of layers (cells.stack); {cell.name!r} is not one")
    if len(credits) != len(layers):
        raise ValueError(f"credits: one per layer ({len(layers)}), got {len(credits)}")
    credits = tuple(credits)
    uses_key = any(c.uses_key for c in credits)

    def init(cell_params, carry, readout_params) -> StackTrace:
        return StackTrace(tuple(c.init(p, s, readout_params) for c, p, s in zip(credits, cell_params, carry)))

    def forward(cell_params, carry, trace: StackTrace, x_t, key, t):
        residuals, input_vjps, carries = [], [], []
        h = x_t
        for l, (layer, credit) in enumerate(zip(layers, credits)):
            k = prng.fold_in(key, l) if credit.uses_key else key
            p, s = cell_params[l], carry[l]
            carry_l, h_l, res_l = credit.forward(p, s, trace.layers[l], h, k, t)
            if l > 0:  # the error on this layer's output, sent to its input (the layer below's output)
                input_vjps.append(jax.vjp(lambda x, p=p, s=s, layer=layer: layer.apply(p, s, x)[1], h)[1])
            residuals.append(res_l)
            carries.append(carry_l)
            h = h_l
        return tuple(carries), h, (tuple(residuals), tuple(input_vjps))

    def backward(residuals, dh):
        layer_residuals, input_vjps = residuals
        grads, traces = [None] * len(layers), [None] * len(layers)
        for l in reversed(range(len(layers))):
            grads[l], traces[l] = credits[l].backward(layer_residuals[l], dh)
            if l > 0:
                (dh,) = input_vjps[l - 1](dh)
        return tuple(grads), StackTrace(tuple(traces))

    return Credit(init, forward, backward, uses_key=uses_key,
                  path="layer by layer: " + "; ".join(c.path for c in credits))

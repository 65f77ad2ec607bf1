"""KF-RTRL (Mujika, Meier & Steger, "Approximating real-time recurrent learning with random Kronecker factors",
NeurIPS 2018): an unbiased estimate of the influence matrix as one Kronecker product.

When every gate row of every unit multiplies the same vector ``a_t = [h_{t-1}; x_t; 1]``, i.e. the cell is
``z_t = W a_t`` with ``W = [W_h, W_x, b]`` (rows: the ``K = n G`` gate rows ``(j, g)``) followed by a map
``s_t = F(z_t, s_{t-1})`` of the pre-activations and the previous carry, the step's Jacobian with respect to
``W`` factors::

    d s_t / d W[(j, g), m] = D_t[:, (j, g)] a_t[m],   D_t = d F / d z_t   (|s| x K, block diagonal over units)

and the influence ``J_t = d s_t / d W = H_t J_{t-1} + D_t (x) a_t`` (``H_t = d s_t / d s_{t-1}``) stays a sum of
Kronecker products. KF-RTRL keeps one, ``J_t ~ A_t (x) u_t`` with ``A_t`` (|s| x K) and ``u_t`` (len(a_t)), and
folds the two terms into one with independent random signs ``c_1, c_2 = +-1``::

    u_t = c_1 p_1 u_{t-1} + c_2 p_2 a_t,     A_t = c_1 (H_t A_{t-1}) / p_1 + c_2 D_t / p_2
    p_1 = sqrt((|H_t A_{t-1}| + eps) / (|u_{t-1}| + eps)),   p_2 = sqrt((|D_t| + eps) / (|a_t| + eps))

``E[A_t (x) u_t] = (H_t A_{t-1}) (x) u_{t-1} + D_t (x) a_t`` (the cross terms have ``E[c_1 c_2] = 0``), so the
estimate is unbiased by induction; the ``p``'s (which do not depend on the signs) minimise its variance. Its
variance is smaller than UORO's, whose rank-one estimate spans all of ``|s| x |theta|``; here the noise is
confined to a mix of two terms per step (the paper's claim, proved there for its networks; measured in the
tests).

Cells: Mujika et al. state it for ``h_t = f(W a_t)`` networks (their Tanh-RNN and RHN). The same derivation holds
for any cell of the form above whose state includes more than ``h`` (the LSTM's ``c``: ``F`` reads ``z_t`` and
``c_{t-1}``). Here: ``elman``, ``leaky_elman`` and ``lstm``, whose gates read ``W_x x + W_h h + b`` as one sum; a
GRU is not of this form (its candidate gate reads ``W_hn h`` through the reset gate, apart from ``W_xn x``, so
``d s / d W_h`` and ``d s / d W_x`` have different ``D``), and neither is any cell without that gated form.

``H_t A_{t-1}`` is one ``jax.jvp`` of the cell step per column of ``A`` (vmapped), ``D_t`` ``jax.jacfwd`` of each
unit's ``pointwise`` map in ``z``; the signs come from ``online_rnn.prng`` (two words per step). As the library's
UORO (Tallec & Ollivier's Algorithm 1), a step's gradient takes its immediate term exactly and the estimate only
for the past::

    g_t = dh (d h_t / d theta) + ((dh (d h_t / d s_{t-1})) A_{t-1}) (x) u_{t-1}

which is unbiased too (Mujika et al. read it from ``A_t (x) u_t``, which adds the noise of the step's own mix).
Cost per step: ``K`` Jacobian-vector products of the step, O(K^2 (n + input_size)) time, and O(|s| K) memory;
for an Elman network O(n^3) time and O(n^2) memory, against RTRL's O(n^4) and O(n^3).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from online_rnn import prng
from online_rnn.cells import Cell, gate_preactivations
from online_rnn.learners.base import Credit, Learner, Options, build
from online_rnn.objectives import Objective

EPS = 1e-7
CELLS = ("elman", "leaky_elman", "lstm")


class KFTrace(NamedTuple):
    """The influence estimate ``A (x) u``: ``u`` (n + input_size + 1,) over the columns of ``[W_h, W_x, b]``;
    ``a`` (n S, n G) over the carry entries (unit-major, then component) and the gate rows (unit, then gate)."""

    u: jax.Array
    a: jax.Array


def _flat(unit_carry) -> jax.Array:
    return jnp.stack(jax.tree.leaves(unit_carry))


def kf_rtrl_credit(cell: Cell, eps: float = EPS) -> Credit:
    """KF-RTRL for ``cell`` (elman, leaky_elman or lstm) as a :class:`Credit` rule."""
    if cell.name not in CELLS:
        raise ValueError(f"kf_rtrl needs a cell whose gates read W_x x + W_h h + b as one sum ({', '.join(CELLS)}), "
                         f"got {cell.name!r}; its parameter Jacobian does not factor (rtrl and uoro take any cell)")
    n, n_gates = cell.hidden_size, cell.n_gates

    def init(cell_params, carry, readout_params) -> KFTrace:
        n_comp = len(jax.tree.leaves(carry))
        dtype = cell_params.b.dtype
        m = n + cell_params.w_x.shape[-1] + 1
        return KFTrace(jnp.zeros((m,), dtype), jnp.zeros((n * n_comp, n * n_gates), dtype))

    def forward(cell_params, carry, trace: KFTrace, x_t, key, t):
        carry_def = jax.tree.structure(carry)
        n_comp = carry_def.num_leaves
        cv = jnp.stack(jax.tree.leaves(carry), axis=-1)  # (n, S)

        def f(params, cv_):
            carry_t, h_t = cell.apply(params, jax.tree.unflatten(carry_def, [cv_[:, k] for k in range(n_comp)]), x_t)
            return jnp.stack(jax.tree.leaves(carry_t), axis=-1), h_t

        (cv_t, h_t), f_vjp = jax.vjp(f, cell_params, cv)
        # H_t A_{t-1}: the step's Jacobian in the carry applied to every column of A
        ha = jax.vmap(lambda col: jax.jvp(lambda c: f(cell_params, c)[0], (cv,), (col.reshape(n, n_comp),))[1]
                      .reshape(-1), in_axes=1, out_axes=1)(trace.a)
        # D_t: each unit's carry against its own gate pre-activations z = W_x x + W_h h + b
        h_prev = jax.vmap(cell.unit_output)(carry)
        zx, zh = gate_preactivations(cell_params, x_t, h_prev)
        d_units = jax.vmap(lambda p_j, z_j, c_j: jax.jacfwd(
            lambda z: _flat(cell.pointwise(p_j, z, jnp.zeros_like(z), c_j)))(z_j))(cell_params, zx + zh, carry)
        d = (jnp.eye(n, dtype=cv.dtype)[:, None, :, None] * d_units[:, :, None, :]).reshape(n * n_comp, n * n_gates)
        a_t = jnp.concatenate([h_prev, x_t, jnp.ones((1,), cv.dtype)])
        # two random signs per step, from the unrolled Threefry (jax.random's is a rolled loop on the CPU)
        c = jnp.where(prng.bits(key, 2) & 1, 1.0, -1.0).astype(cv.dtype)
        p1 = jnp.sqrt((jnp.linalg.norm(ha) + eps) / (jnp.linalg.norm(trace.u) + eps))
        p2 = jnp.sqrt((jnp.linalg.norm(d_units) + eps) / (jnp.linalg.norm(a_t) + eps))
        new = KFTrace(c[0] * p1 * trace.u + c[1] * p2 * a_t, c[0] * ha / p1 + c[1] * d / p2)
        carry_t = jax.tree.unflatten(carry_def, [cv_t[:, k] for k in range(n_comp)])
        return carry_t, h_t, (f_vjp, trace, new)

    def backward(residuals, dh):
        f_vjp, trace, new = residuals
        g_params, g_cv = f_vjp((jnp.zeros((n, trace.a.shape[0] // n), dh.dtype), dh))
        v = (g_cv.reshape(-1) @ trace.a).reshape(n, n_gates)  # (dh d h_t / d s_{t-1}) A_{t-1}
        u_h, u_x, u_1 = trace.u[:n], trace.u[n:-1], trace.u[-1]
        grad = g_params._replace(
            w_h=g_params.w_h + v[:, :, None] * u_h,
            w_x=g_params.w_x + v[:, :, None] * u_x,
            b=g_params.b + v * u_1,
        )
        return grad, new

    return Credit(init, forward, backward, uses_key=True,
                  path="generic: jax.jvp of the cell step, jax.jacfwd of each unit's pointwise map")


def kf_rtrl(
    cell: Cell,
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    options: Optional[Options] = None,
) -> Learner:
    """KF-RTRL learner (see the module docstring) for ``elman``, ``leaky_elman`` or ``lstm`` cells; the random
    signs come from ``state.key``, so vmapping over keys gives independent runs."""
    return build("kf_rtrl", cell, kf_rtrl_credit(cell), input_size, output_size, objective, optimizer, options)

"""Pure, unbatched recurrent cells.

Every cell is a :class:`Cell` of three pure functions::

    params = cell.init(key, input_size)
    carry = cell.initial_carry(params)
    carry_t, h_t = cell.apply(params, carry_tm1, x_t)

There is no batch axis inside a cell: batches, seeds and columns come from ``jax.vmap``.

Layout. Parameters are *unit-major*: every leaf has the unit axis first, so ``leaf[i]`` holds exactly the
parameters that belong to unit ``i`` (its rows of the gate matrices and its biases), and the second axis of a
matrix leaf indexes the gates. Every carry leaf has shape ``(hidden_size,)``. Within one step, unit ``i``'s new
carry depends on the whole previous hidden vector but only on its own parameters ``leaf[i]``; this is the
structure SnAp-1 and the columnar learners rely on. ``lstm(1)`` is the one-unit LSTM column of the paper's
Appendix A (``seeds/columnar_constructive_rtrl_paper.md``).

Dtypes follow JAX's default float type: with ``jax_enable_x64`` on, parameters and carries are float64.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Params = Any
Carry = Any


class Cell(NamedTuple):
    """A recurrent cell: ``init(key, input_size) -> params``, ``initial_carry(params) -> carry``,
    ``apply(params, carry_tm1, x_t) -> (carry_t, h_t)``.

    ``hidden_size`` is the length of ``h_t``; ``n_gates`` the size of the gate axis of the parameters;
    ``name`` identifies the cell in registries and result tables.
    """

    init: Callable[[jax.Array, int], Params]
    initial_carry: Callable[[Params], Carry]
    apply: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
    hidden_size: int
    n_gates: int
    name: str


class ElmanParams(NamedTuple):
    w_x: jax.Array  # (n, 1, input_size)
    w_h: jax.Array  # (n, 1, n)
    b: jax.Array  # (n, 1)


class LSTMParams(NamedTuple):
    w_x: jax.Array  # (n, 4, input_size); gate order i, f, o, g
    w_h: jax.Array  # (n, 4, n)
    b: jax.Array  # (n, 4)


class LSTMCarry(NamedTuple):
    h: jax.Array  # (n,)
    c: jax.Array  # (n,)


class GRUParams(NamedTuple):
    w_x: jax.Array  # (n, 3, input_size); gate order r (reset), z (update), n (candidate)
    w_h: jax.Array  # (n, 3, n)
    b: jax.Array  # (n, 3), input-side biases
    b_hn: jax.Array  # (n,), the recurrent-side bias of the candidate, applied inside the reset gate


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    bound = 1.0 / jnp.sqrt(max(fan_in, 1))
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound, dtype=jnp.zeros(()).dtype)


def _orthogonal_per_gate(key: jax.Array, n: int, n_gates: int) -> jax.Array:
    """Recurrent weights (n, n_gates, n): for each gate an orthogonal n x n matrix (rows = units)."""
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, n_gates)
    mats = jnp.stack([init(k, (n, n), jnp.zeros(()).dtype) for k in keys], axis=1)
    return mats


def _affine(w_x: jax.Array, w_h: jax.Array, x: jax.Array, h: jax.Array) -> jax.Array:
    """Gate pre-activations without bias, shape (n, n_gates)."""
    return jnp.einsum("ngi,i->ng", w_x, x) + jnp.einsum("ngm,m->ng", w_h, h)


def _check_input(x: jax.Array, w_x: jax.Array, cell_name: str) -> None:
    if x.ndim != 1 or x.shape[0] != w_x.shape[-1]:
        raise ValueError(
            f"{cell_name}.apply: x_t must have shape ({w_x.shape[-1]},) (the cell's input_size), got {tuple(x.shape)}"
        )


def elman(hidden_size: int) -> Cell:
    """Elman (vanilla) RNN: ``h_t = tanh(W_x x_t + W_h h_{t-1} + b)``.

    Initialisation: input weights ~ U(-1/sqrt(input_size), 1/sqrt(input_size)); recurrent weights orthogonal;
    bias 0.
    """
    n = _check_size("hidden_size", hidden_size)

    def init(key: jax.Array, input_size: int) -> ElmanParams:
        _check_size("input_size", input_size)
        kx, kh = jax.random.split(key)
        return ElmanParams(
            w_x=_uniform(kx, (n, 1, input_size), input_size),
            w_h=_orthogonal_per_gate(kh, n, 1),
            b=jnp.zeros((n, 1)),
        )

    def initial_carry(params: ElmanParams) -> jax.Array:
        return jnp.zeros((n,), params.b.dtype)

    def apply(params: ElmanParams, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_input(x, params.w_x, "elman")
        z = _affine(params.w_x, params.w_h, x, h) + params.b
        h_t = jnp.tanh(z[:, 0])
        return h_t, h_t

    return Cell(init, initial_carry, apply, n, 1, "elman")


def lstm(hidden_size: int, forget_bias: float = 1.0) -> Cell:
    """LSTM with full recurrent matrices and no peepholes (gate order i, f, o, g)::

        i = sigmoid(z_i), f = sigmoid(z_f), o = sigmoid(z_o), g = tanh(z_g),  z = W_x x_t + W_h h_{t-1} + b
        c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)

    ``lstm(1)`` is the paper's one-unit column (Appendix A, equations 1-6). Initialisation: input weights
    ~ U(-1/sqrt(input_size), 1/sqrt(input_size)); recurrent weights orthogonal per gate; biases 0 except the
    forget gate's, ``forget_bias`` (default 1).
    """
    n = _check_size("hidden_size", hidden_size)

    def init(key: jax.Array, input_size: int) -> LSTMParams:
        _check_size("input_size", input_size)
        kx, kh = jax.random.split(key)
        b = jnp.zeros((n, 4)).at[:, 1].set(forget_bias)
        return LSTMParams(
            w_x=_uniform(kx, (n, 4, input_size), input_size),
            w_h=_orthogonal_per_gate(kh, n, 4),
            b=b,
        )

    def initial_carry(params: LSTMParams) -> LSTMCarry:
        zeros = jnp.zeros((n,), params.b.dtype)
        return LSTMCarry(h=zeros, c=zeros)

    def apply(params: LSTMParams, carry: LSTMCarry, x: jax.Array) -> tuple[LSTMCarry, jax.Array]:
        _check_input(x, params.w_x, "lstm")
        z = _affine(params.w_x, params.w_h, x, carry.h) + params.b
        i = jax.nn.sigmoid(z[:, 0])
        f = jax.nn.sigmoid(z[:, 1])
        o = jax.nn.sigmoid(z[:, 2])
        g = jnp.tanh(z[:, 3])
        c_t = f * carry.c + i * g
        h_t = o * jnp.tanh(c_t)
        return LSTMCarry(h=h_t, c=c_t), h_t

    return Cell(init, initial_carry, apply, n, 4, "lstm")


def gru(hidden_size: int) -> Cell:
    """GRU in the cuDNN / PyTorch / flax form (reset applied after the recurrent matmul)::

        r = sigmoid(W_xr x + W_hr h + b_r),  z = sigmoid(W_xz x + W_hz h + b_z)
        n = tanh(W_xn x + b_n + r * (W_hn h + b_hn)),   h_t = (1 - z) * n + z * h_{t-1}

    This form keeps every unit's one-step dependence on its own parameter rows only (the structure SnAp-1
    needs). Initialisation: input weights ~ U(-1/sqrt(input_size), 1/sqrt(input_size)); recurrent weights
    orthogonal per gate; biases 0.
    """
    n = _check_size("hidden_size", hidden_size)

    def init(key: jax.Array, input_size: int) -> GRUParams:
        _check_size("input_size", input_size)
        kx, kh = jax.random.split(key)
        return GRUParams(
            w_x=_uniform(kx, (n, 3, input_size), input_size),
            w_h=_orthogonal_per_gate(kh, n, 3),
            b=jnp.zeros((n, 3)),
            b_hn=jnp.zeros((n,)),
        )

    def initial_carry(params: GRUParams) -> jax.Array:
        return jnp.zeros((n,), params.b.dtype)

    def apply(params: GRUParams, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_input(x, params.w_x, "gru")
        zx = jnp.einsum("ngi,i->ng", params.w_x, x) + params.b
        zh = jnp.einsum("ngm,m->ng", params.w_h, h)
        r = jax.nn.sigmoid(zx[:, 0] + zh[:, 0])
        z = jax.nn.sigmoid(zx[:, 1] + zh[:, 1])
        cand = jnp.tanh(zx[:, 2] + r * (zh[:, 2] + params.b_hn))
        h_t = (1.0 - z) * cand + z * h
        return h_t, h_t

    return Cell(init, initial_carry, apply, n, 3, "gru")


_CELLS: dict[str, Callable[..., Cell]] = {"elman": elman, "lstm": lstm, "gru": gru}


def names() -> list[str]:
    """Names of the registered cells."""
    return sorted(_CELLS)


def make(name: str, **kwargs: Any) -> Cell:
    """Build a registered cell by name, e.g. ``make("lstm", hidden_size=4)``."""
    if name not in _CELLS:
        raise ValueError(f"cell: unknown name {name!r}; allowed: {', '.join(names())}")
    return _CELLS[name](**kwargs)

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

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

Params = Any
Carry = Any


class Cell(NamedTuple):
    """A recurrent cell: ``init(key, input_size) -> params``, ``initial_carry(params) -> carry``,
    ``apply(params, carry_tm1, x_t) -> (carry_t, h_t)``.

    ``hidden_size`` is the length of ``h_t``; ``n_gates`` the size of the gate axis of the parameters;
    ``name`` identifies the cell in registries and result tables.

    Cells with the unit-major structure also give it per unit (used by SnAp-1 and the fast column paths):
    ``unit_apply(unit_params, unit_carry, h_tm1, x_t) -> unit_carry_t`` computes unit ``i``'s new carry from its
    own parameter rows ``leaf[i]``, its own carry entries ``carry_leaf[i]`` and the whole previous output
    ``h_tm1``; ``unit_output(unit_carry) -> h_i``. Then ``apply`` equals ``vmap(unit_apply)`` over units, with
    ``h_t = vmap(unit_output)(carry_t)``. Cells without that structure leave both ``None``.

    Gated cells (elman, lstm, gru) are built from one per-unit map ``pointwise(unit_params, zx, zh,
    unit_carry) -> unit_carry_t`` of the gate pre-activations ``zx = W_x[i] x_t + b[i]`` and
    ``zh = W_h[i] h_{t-1}`` (both of shape ``(n_gates,)``); parameters other than ``w_x``, ``w_h``, ``b`` (GRU's
    ``b_hn``) enter only through ``pointwise``. The fast learners differentiate ``pointwise`` instead of the
    whole cell. Other cells leave it ``None``.
    """

    init: Callable[[jax.Array, int], Params]
    initial_carry: Callable[[Params], Carry]
    apply: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
    hidden_size: int
    n_gates: int
    name: str
    unit_apply: Optional[Callable[[Params, Carry, jax.Array, jax.Array], Carry]] = None
    unit_output: Optional[Callable[[Carry], jax.Array]] = None
    pointwise: Optional[Callable[[Params, jax.Array, jax.Array, Carry], Carry]] = None


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


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound, dtype=jnp.zeros(()).dtype)


def _init_weights(key: jax.Array, n: int, n_gates: int, input_size: int, init_range: Optional[float]):
    """(w_x, w_h, bias noise): the default scheme, or everything ~ U(-init_range, init_range)."""
    kx, kh, kb = jax.random.split(key, 3)
    if init_range is None:
        w_x = _uniform(kx, (n, n_gates, input_size), 1.0 / float(input_size) ** 0.5)
        return w_x, _orthogonal_per_gate(kh, n, n_gates), jnp.zeros((n, n_gates))
    a = float(init_range)
    return (
        _uniform(kx, (n, n_gates, input_size), a),
        _uniform(kh, (n, n_gates, n), a),
        _uniform(kb, (n, n_gates), a),
    )


def _check_range(init_range: Optional[float]) -> Optional[float]:
    if init_range is not None and not (isinstance(init_range, (int, float)) and init_range > 0):
        raise ValueError(f"init_range must be a positive number or None, got {init_range!r}")
    return init_range


def _orthogonal_per_gate(key: jax.Array, n: int, n_gates: int) -> jax.Array:
    """Recurrent weights (n, n_gates, n): for each gate an orthogonal n x n matrix (rows = units)."""
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, n_gates)
    mats = jnp.stack([init(k, (n, n), jnp.zeros(()).dtype) for k in keys], axis=1)
    return mats


def _check_input(x: jax.Array, w_x: jax.Array, cell_name: str) -> None:
    if x.ndim != 1 or x.shape[0] != w_x.shape[-1]:
        raise ValueError(
            f"{cell_name}.apply: x_t must have shape ({w_x.shape[-1]},) (the cell's input_size), got {tuple(x.shape)}"
        )


def gate_preactivations(params: Any, x: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``zx = W_x x + b`` and ``zh = W_h h``, shape ``(..., n_gates)``, for all units (leaves ``(n, G, .)``)
    or one unit (leaves ``(G, .)``)."""
    zx = jnp.einsum("...gi,i->...g", params.w_x, x) + params.b
    zh = jnp.einsum("...gm,m->...g", params.w_h, h)
    return zx, zh


def _gated(name: str, n: int, n_gates: int, init: Callable, initial_carry: Callable, pointwise: Callable,
           unit_output: Callable) -> Cell:
    """A cell from its per-unit ``pointwise`` map (see :class:`Cell`)."""

    def unit_apply(p: Any, carry_i: Any, h_prev: jax.Array, x: jax.Array) -> Any:
        zx, zh = gate_preactivations(p, x, h_prev)
        return pointwise(p, zx, zh, carry_i)

    def apply(params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        _check_input(x, params.w_x, name)
        h_prev = jax.vmap(unit_output)(carry)
        zx, zh = gate_preactivations(params, x, h_prev)
        carry_t = jax.vmap(pointwise)(params, zx, zh, carry)
        return carry_t, jax.vmap(unit_output)(carry_t)

    return Cell(init, initial_carry, apply, n, n_gates, name, unit_apply, unit_output, pointwise)


def elman(hidden_size: int, init_range: Optional[float] = None) -> Cell:
    """Elman (vanilla) RNN: ``h_t = tanh(W_x x_t + W_h h_{t-1} + b)``.

    Initialisation: input weights ~ U(-1/sqrt(input_size), 1/sqrt(input_size)); recurrent weights orthogonal;
    bias 0. With ``init_range=a`` every parameter is drawn from U(-a, a) instead.
    """
    n = _check_size("hidden_size", hidden_size)
    _check_range(init_range)

    def init(key: jax.Array, input_size: int) -> ElmanParams:
        _check_size("input_size", input_size)
        w_x, w_h, b = _init_weights(key, n, 1, input_size, init_range)
        return ElmanParams(w_x=w_x, w_h=w_h, b=b)

    def initial_carry(params: ElmanParams) -> jax.Array:
        return jnp.zeros((n,), params.b.dtype)

    def pointwise(p: ElmanParams, zx: jax.Array, zh: jax.Array, h_i: jax.Array) -> jax.Array:
        return jnp.tanh(zx[0] + zh[0])

    return _gated("elman", n, 1, init, initial_carry, pointwise, lambda h_i: h_i)


def lstm(hidden_size: int, forget_bias: float = 1.0, init_range: Optional[float] = None) -> Cell:
    """LSTM with full recurrent matrices and no peepholes (gate order i, f, o, g)::

        i = sigmoid(z_i), f = sigmoid(z_f), o = sigmoid(z_o), g = tanh(z_g),  z = W_x x_t + W_h h_{t-1} + b
        c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)

    ``lstm(1)`` is the paper's one-unit column (Appendix A, equations 1-6). Initialisation: input weights
    ~ U(-1/sqrt(input_size), 1/sqrt(input_size)); recurrent weights orthogonal per gate; biases 0 except the
    forget gate's, ``forget_bias`` (default 1). With ``init_range=a`` every weight and bias is drawn from
    U(-a, a) and ``forget_bias`` is added to the forget gate's bias (the paper's columns: ``init_range=0.01,
    forget_bias=0``, from the authors' code).
    """
    n = _check_size("hidden_size", hidden_size)
    _check_range(init_range)
    forget_bias = float(forget_bias)

    def init(key: jax.Array, input_size: int) -> LSTMParams:
        _check_size("input_size", input_size)
        w_x, w_h, b = _init_weights(key, n, 4, input_size, init_range)
        return LSTMParams(w_x=w_x, w_h=w_h, b=b.at[:, 1].add(forget_bias))

    def initial_carry(params: LSTMParams) -> LSTMCarry:
        # two distinct buffers, so that a caller may donate the state
        return LSTMCarry(h=jnp.zeros((n,), params.b.dtype), c=jnp.zeros((n,), params.b.dtype))

    def pointwise(p: LSTMParams, zx: jax.Array, zh: jax.Array, carry_i: LSTMCarry) -> LSTMCarry:
        z = zx + zh
        i = jax.nn.sigmoid(z[0])
        f = jax.nn.sigmoid(z[1])
        o = jax.nn.sigmoid(z[2])
        g = jnp.tanh(z[3])
        c_t = f * carry_i.c + i * g
        return LSTMCarry(h=o * jnp.tanh(c_t), c=c_t)

    return _gated("lstm", n, 4, init, initial_carry, pointwise, lambda carry_i: carry_i.h)


def gru(hidden_size: int, init_range: Optional[float] = None) -> Cell:
    """GRU in the cuDNN / PyTorch / flax form (reset applied after the recurrent matmul)::

        r = sigmoid(W_xr x + W_hr h + b_r),  z = sigmoid(W_xz x + W_hz h + b_z)
        n = tanh(W_xn x + b_n + r * (W_hn h + b_hn)),   h_t = (1 - z) * n + z * h_{t-1}

    This form keeps every unit's one-step dependence on its own parameter rows only (the structure SnAp-1
    needs). Initialisation: input weights ~ U(-1/sqrt(input_size), 1/sqrt(input_size)); recurrent weights
    orthogonal per gate; biases 0. With ``init_range=a`` every weight and bias is drawn from U(-a, a).
    """
    n = _check_size("hidden_size", hidden_size)
    _check_range(init_range)

    def init(key: jax.Array, input_size: int) -> GRUParams:
        _check_size("input_size", input_size)
        k_w, k_b = jax.random.split(key)
        w_x, w_h, b = _init_weights(k_w, n, 3, input_size, init_range)
        b_hn = jnp.zeros((n,)) if init_range is None else _uniform(k_b, (n,), float(init_range))
        return GRUParams(w_x=w_x, w_h=w_h, b=b, b_hn=b_hn)

    def initial_carry(params: GRUParams) -> jax.Array:
        return jnp.zeros((n,), params.b.dtype)

    def pointwise(p: GRUParams, zx: jax.Array, zh: jax.Array, h_i: jax.Array) -> jax.Array:
        r = jax.nn.sigmoid(zx[0] + zh[0])
        z = jax.nn.sigmoid(zx[1] + zh[1])
        cand = jnp.tanh(zx[2] + r * (zh[2] + p.b_hn))
        return (1.0 - z) * cand + z * h_i

    return _gated("gru", n, 3, init, initial_carry, pointwise, lambda h_i: h_i)


_CELLS: dict[str, Callable[..., Cell]] = {"elman": elman, "lstm": lstm, "gru": gru}


def names() -> list[str]:
    """Names of the registered cells."""
    return sorted(_CELLS)


def make(name: str, **kwargs: Any) -> Cell:
    """Build a registered cell by name, e.g. ``make("lstm", hidden_size=4)``."""
    if name not in _CELLS:
        raise ValueError(f"cell: unknown name {name!r}; allowed: {', '.join(names())}")
    return _CELLS[name](**kwargs)

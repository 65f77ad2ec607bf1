"""Pure, unbatched recurrent cells.

Every cell is a :class:`Cell` of three pure functions::

    params = cell.init(key, input_size)
    carry = cell.initial_carry(params)
    carry_t, h_t = cell.apply(params, carry_tm1, x_t)

There is no batch axis inside a cell: batches, seeds and columns come from ``jax.vmap``.

Cells here: the gated cells ``elman``, ``leaky_elman``, ``lstm``, ``gru``, and ``sparse``, any of them with a fixed
sparse recurrent connectivity; the diagonal (complex-valued, stored as real pairs) cells ``lru`` (Orvieto et al.
2023) and ``rtu`` (Elelimy et al. 2024); ``stack`` of layers; ``flax``, which wraps any ``flax.linen`` recurrent
cell.

Layout. Parameters are *unit-major*: every leaf has the unit axis first, so ``leaf[i]`` holds exactly the
parameters that belong to unit ``i`` (its rows of the gate matrices and its biases), and the second axis of a
matrix leaf indexes the gates (the one exception: a diagonal cell's output-only parameters, see :class:`Cell`).
Every carry leaf has shape ``(n_units,)``. Within one step, unit ``i``'s new carry depends on the whole previous
hidden vector (a diagonal cell's: on its own carry only) but only on its own parameters ``leaf[i]``; this is the
structure SnAp-1 and the columnar learners rely on. ``lstm(1)`` is the one-unit LSTM column of the paper's
Appendix A (Javed, Shah, Sutton & White, JMLR 2023).

Dtypes follow JAX's default float type: with ``jax_enable_x64`` on, parameters and carries are float64.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from online_rnn import checks
from online_rnn.registry import Registry

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

    Diagonal cells (lru, rtu), whose units do not read each other at all, give a second per-unit form:
    ``unit_step(unit_params, unit_carry, zx) -> unit_carry_t`` is unit ``i``'s new carry from its own parameter
    rows, its own carry entries and its input projection ``zx = W_x[i] x_t`` (shape ``(n_gates,)``; a bias
    would be a per-unit parameter that ``unit_step`` reads);
    ``output(params, carry_t, x_t) -> h_t`` is the cell's output map, which may mix units and read parameters
    of its own: those are named in ``output_fields``, are not unit-major, and reach the loss only through
    ``output`` at the same step (their gradient is immediate). Then ``apply`` is ``vmap(unit_step)`` over units
    followed by ``output``, and ``unit_apply`` / ``unit_output`` are ``None``. Other cells leave ``unit_step``
    and ``output`` ``None`` and ``output_fields`` empty.

    ``layers`` is set by :func:`stack`: the cells of its layers, in order (empty for every other cell).

    ``connectivity`` is set by :func:`sparse`: an ``(n, n)`` numpy bool array, ``[i, j]`` true where unit ``i``
    reads unit ``j``'s previous output (``None``: a gated cell's units read every unit, a diagonal cell's none).
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
    unit_step: Optional[Callable[[Params, Carry, jax.Array], Carry]] = None
    output: Optional[Callable[[Params, Carry, jax.Array], jax.Array]] = None
    output_fields: tuple[str, ...] = ()
    layers: tuple["Cell", ...] = ()
    connectivity: Optional[np.ndarray] = None


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


def _elman_init(n: int, init_range: Optional[float]) -> tuple[Callable, Callable]:
    """``init`` and ``initial_carry`` shared by :func:`elman` and :func:`leaky_elman`."""
    _check_range(init_range)

    def init(key: jax.Array, input_size: int) -> ElmanParams:
        checks.positive_int("input_size", input_size)
        w_x, w_h, b = _init_weights(key, n, 1, input_size, init_range)
        return ElmanParams(w_x=w_x, w_h=w_h, b=b)

    def initial_carry(params: ElmanParams) -> jax.Array:
        return jnp.zeros((n,), params.b.dtype)

    return init, initial_carry


def elman(hidden_size: int, init_range: Optional[float] = None) -> Cell:
    """Elman (vanilla) RNN: ``h_t = tanh(W_x x_t + W_h h_{t-1} + b)``.

    Initialisation: input weights ~ U(-1/sqrt(input_size), 1/sqrt(input_size)); recurrent weights orthogonal;
    bias 0. With ``init_range=a`` every parameter is drawn from U(-a, a) instead.
    """
    n = checks.positive_int("hidden_size", hidden_size)
    init, initial_carry = _elman_init(n, init_range)

    def pointwise(p: ElmanParams, zx: jax.Array, zh: jax.Array, h_i: jax.Array) -> jax.Array:
        return jnp.tanh(zx[0] + zh[0])

    return _gated("elman", n, 1, init, initial_carry, pointwise, lambda h_i: h_i)


def leaky_elman(hidden_size: int, tau: float, init_range: Optional[float] = None) -> Cell:
    """Leaky Elman RNN with time constant ``tau`` (in steps), the network of Murray's RFLO (Murray, "Local online
    learning in recurrent networks with random feedback", eLife 2019; his example code, the ``rflo-learning``
    repository, steps ``h_{t+1} = h_t + (-h_t + tanh(u_{t+1})) / tau``)::

        h_t = (1 - 1/tau) h_{t-1} + (1/tau) tanh(W_x x_t + W_h h_{t-1} + b)

    ``tau >= 1``; ``tau = 1`` is :func:`elman`. Parameters and initialisation as :func:`elman` (``ElmanParams``).
    """
    n = checks.positive_int("hidden_size", hidden_size)
    init, initial_carry = _elman_init(n, init_range)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 1:
        raise ValueError(f"tau must be a number >= 1 (the time constant in steps), got {tau!r}")
    alpha = 1.0 / float(tau)

    def pointwise(p: ElmanParams, zx: jax.Array, zh: jax.Array, h_i: jax.Array) -> jax.Array:
        return (1.0 - alpha) * h_i + alpha * jnp.tanh(zx[0] + zh[0])

    return _gated("leaky_elman", n, 1, init, initial_carry, pointwise, lambda h_i: h_i)


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
    n = checks.positive_int("hidden_size", hidden_size)
    _check_range(init_range)
    forget_bias = float(forget_bias)

    def init(key: jax.Array, input_size: int) -> LSTMParams:
        checks.positive_int("input_size", input_size)
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
    n = checks.positive_int("hidden_size", hidden_size)
    _check_range(init_range)

    def init(key: jax.Array, input_size: int) -> GRUParams:
        checks.positive_int("input_size", input_size)
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


# ------------------------------------------------------------------------------------------- diagonal cells


class ComplexCarry(NamedTuple):
    """A complex state as a real pair: ``re`` and ``im``, each ``(n,)``."""

    re: jax.Array
    im: jax.Array


class LRUParams(NamedTuple):
    nu_log: jax.Array  # (n,): |lambda| = exp(-exp(nu_log))
    theta_log: jax.Array  # (n,): arg(lambda) = exp(theta_log)
    gamma_log: jax.Array  # (n,): input normalisation gamma = exp(gamma_log)
    w_x: jax.Array  # (n, 2, input_size): B's real part [:, 0] and imaginary part [:, 1]
    c_re: jax.Array  # (n, n): real part of C (output-only, rows = outputs)
    c_im: jax.Array  # (n, n): imaginary part of C (output-only)
    d: jax.Array  # (n, input_size): D (output-only)


class RTUParams(NamedTuple):
    nu_log: jax.Array  # (n,): r = exp(-exp(nu_log))
    theta_log: jax.Array  # (n,): theta = exp(theta_log)
    w_x: jax.Array  # (n, 2, input_size): the input weights of c1 [:, 0] and c2 [:, 1]


def input_projection(params: Any, x: jax.Array) -> jax.Array:
    """A diagonal cell's ``zx = W_x x``, shape ``(..., n_gates)``, for all units or one unit."""
    return jnp.einsum("...gi,i->...g", params.w_x, x)


def recurrent_part(cell: Cell, params: Any) -> Any:
    """``params`` with the output-only fields (``cell.output_fields``) set to ``None``: the unit-major part
    that feeds the recurrence."""
    if not cell.output_fields:
        return params
    return params._replace(**{f: None for f in cell.output_fields})


def _check_ring(r_min: Any, r_max: Any, max_phase: Any) -> tuple[float, float, float]:
    for name, v in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{name} must be a number, got {v!r}")
    if not 0.0 <= r_min <= r_max <= 1.0 or r_min >= 1.0:
        raise ValueError(f"r_min and r_max must satisfy 0 <= r_min <= r_max <= 1 and r_min < 1, got r_min={r_min!r}, "
                         f"r_max={r_max!r}")
    if not max_phase > 0:
        raise ValueError(f"max_phase must be positive, got {max_phase!r}")
    return float(r_min), float(r_max), float(max_phase)


def _ring_init(key: jax.Array, n: int, r_min: float, r_max: float, max_phase: float):
    """``(nu_log, theta_log)`` with ``lambda = exp(-exp(nu_log) + i exp(theta_log))`` uniform on the ring
    ``r_min <= |lambda| <= r_max`` with phase in ``[0, max_phase]`` (the ring initialisation of Orvieto et al.
    2023). The uniform draws start at the smallest positive float, so that no logarithm sees 0."""
    dtype = jnp.zeros(()).dtype
    k_r, k_p = jax.random.split(key)
    tiny = float(jnp.finfo(dtype).tiny)
    u1 = jax.random.uniform(k_r, (n,), dtype, minval=tiny, maxval=1.0)
    u2 = jax.random.uniform(k_p, (n,), dtype, minval=tiny, maxval=1.0)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    return nu_log, theta_log


def _one_minus_r2(nu_log: jax.Array) -> jax.Array:
    """``1 - |lambda|^2 = 1 - exp(-2 exp(nu_log))``, accurate (and positive) when ``|lambda|`` is near 1."""
    return -jnp.expm1(-2.0 * jnp.exp(nu_log))


def _rotate(nu_log: jax.Array, theta_log: jax.Array, carry: ComplexCarry) -> ComplexCarry:
    """``lambda * h`` for ``lambda = exp(-exp(nu_log)) (cos(exp(theta_log)) + i sin(exp(theta_log)))``."""
    r = jnp.exp(-jnp.exp(nu_log))
    phase = jnp.exp(theta_log)
    lam_re, lam_im = r * jnp.cos(phase), r * jnp.sin(phase)
    return ComplexCarry(re=lam_re * carry.re - lam_im * carry.im, im=lam_im * carry.re + lam_re * carry.im)


def _diagonal(name: str, n: int, hidden_size: int, init: Callable, unit_step: Callable, output: Callable,
              output_fields: tuple[str, ...] = ()) -> Cell:
    """A cell from its per-unit recurrence ``unit_step`` and its ``output`` map (see :class:`Cell`)."""

    def initial_carry(params: Any) -> ComplexCarry:
        dtype = params.nu_log.dtype
        return ComplexCarry(re=jnp.zeros((n,), dtype), im=jnp.zeros((n,), dtype))

    def apply(params: Any, carry: ComplexCarry, x: jax.Array) -> tuple[ComplexCarry, jax.Array]:
        _check_input(x, params.w_x, name)
        rec = params._replace(**{f: None for f in output_fields})
        carry_t = jax.vmap(unit_step)(rec, carry, input_projection(params, x))
        return carry_t, output(params, carry_t, x)

    return Cell(init, initial_carry, apply, hidden_size, 2, name, unit_step=unit_step, output=output,
                output_fields=output_fields)


def lru(hidden_size: int, r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 2 * math.pi) -> Cell:
    """Linear Recurrent Unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De, "Resurrecting recurrent
    neural networks for long sequences", ICML 2023), one step at a time::

        h_t = lambda * h_{t-1} + gamma * (B x_t),   lambda = exp(-exp(nu_log) + i exp(theta_log)),
        gamma = exp(gamma_log),                     y_t = Re(C h_t) + D x_t

    with a complex diagonal state ``h`` of ``hidden_size`` units, kept as the real pair ``(re, im)``
    (:class:`ComplexCarry`; every parameter is real, so float64 and every learner work unchanged). The output
    ``y_t`` has ``hidden_size`` entries.

    Initialisation and parametrisation as in the paper and in the JAX implementations of Zucchet et al. (the
    ``minimal-LRU`` repository, which follows the paper's, and ``Online-learning-LR-dependencies``): ``lambda``
    uniform on the ring ``r_min <= |lambda| <= r_max`` with phase in ``[0, max_phase]``;
    ``gamma_log = log sqrt(1 - |lambda|^2)`` at init and, as there (a parameter of the module), trained from then
    on rather than tied to ``lambda``; the real and imaginary parts of ``B`` ~ N(0, 1 / (2 input_size)), of
    ``C`` ~ N(0, 1 / hidden_size). The paper's
    ``D`` is a diagonal (input and output sizes agree there); here the sizes differ, so ``D`` is a full
    ``(hidden_size, input_size)`` matrix ~ N(0, 1 / input_size), which gives each output the input variance the
    paper's N(0, 1) diagonal gives it.

    Per-unit form: unit ``i`` owns ``nu_log[i], theta_log[i], gamma_log[i], w_x[i]`` (``B``'s row); ``C``
    (``c_re``, ``c_im``) and ``D`` (``d``) enter only the output (``output_fields``).
    """
    n = checks.positive_int("hidden_size", hidden_size)
    r_min, r_max, max_phase = _check_ring(r_min, r_max, max_phase)

    def init(key: jax.Array, input_size: int) -> LRUParams:
        checks.positive_int("input_size", input_size)
        dtype = jnp.zeros(()).dtype
        k_lam, k_b, k_c, k_d = jax.random.split(key, 4)
        nu_log, theta_log = _ring_init(k_lam, n, r_min, r_max, max_phase)
        w_x = jax.random.normal(k_b, (n, 2, input_size), dtype) / math.sqrt(2 * input_size)
        c = jax.random.normal(k_c, (2, n, n), dtype) / math.sqrt(n)
        d = jax.random.normal(k_d, (n, input_size), dtype) / math.sqrt(input_size)
        return LRUParams(nu_log=nu_log, theta_log=theta_log, gamma_log=0.5 * jnp.log(_one_minus_r2(nu_log)),
                         w_x=w_x, c_re=c[0], c_im=c[1], d=d)

    def unit_step(p: LRUParams, carry_i: ComplexCarry, zx: jax.Array) -> ComplexCarry:
        rot = _rotate(p.nu_log, p.theta_log, carry_i)
        gamma = jnp.exp(p.gamma_log)
        return ComplexCarry(re=rot.re + gamma * zx[0], im=rot.im + gamma * zx[1])

    def output(params: LRUParams, carry: ComplexCarry, x: jax.Array) -> jax.Array:
        return params.c_re @ carry.re - params.c_im @ carry.im + params.d @ x

    return _diagonal("lru", n, n, init, unit_step, output, ("c_re", "c_im", "d"))


RTU_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda z: z,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def rtu(hidden_size: int, activation: str = "relu", r_min: float = 0.0, r_max: float = 1.0,
        max_phase: float = 2 * math.pi) -> Cell:
    """Recurrent Trace Units (Elelimy, White, Bowling & White, "Real-time recurrent learning using trace units
    in reinforcement learning", NeurIPS 2024), the linear-recurrence RTU: a complex diagonal recurrence in its
    real cosine/sine form, with the activation applied after it. For each of the ``hidden_size`` units::

        r = exp(-exp(nu_log)),  theta = exp(theta_log),  g = r cos(theta),  phi = r sin(theta)
        c1_t = g c1_{t-1} - phi c2_{t-1} + sqrt(1 - r^2) (W_c1 x_t)
        c2_t = g c2_{t-1} + phi c1_{t-1} + sqrt(1 - r^2) (W_c2 x_t)
        h_t = concat(f(c1_t), f(c2_t))

    so ``h_t`` has ``2 * hidden_size`` entries (``cell.hidden_size``). Unlike the LRU's trained ``gamma``, the
    input normalisation ``sqrt(1 - r^2)`` is a function of ``nu_log`` (as in the authors' code, the
    ``esraaelelimy/rtus`` repository, which adds 1e-8 to it; here ``1 - r^2`` is computed as
    ``-expm1(-2 exp(nu_log))``, positive for every finite ``nu_log``, instead), and there is no output matrix:
    every parameter belongs to one unit.
    ``activation`` is ``"relu"`` (the authors' default), ``"tanh"`` or ``"linear"``.

    Initialisation as the authors': ``r`` and ``theta`` as the LRU's ring (``r_min``, ``r_max``,
    ``max_phase``); ``W_c1``, ``W_c2`` LeCun-normal (truncated normal, variance 1 / input_size), no bias. The
    carry is ``ComplexCarry(re=c1, im=c2)``.
    """
    n = checks.positive_int("hidden_size", hidden_size)
    if activation not in RTU_ACTIVATIONS:
        raise ValueError(f"activation: unknown {activation!r}; allowed: {', '.join(sorted(RTU_ACTIVATIONS))}")
    act = RTU_ACTIVATIONS[activation]
    r_min, r_max, max_phase = _check_ring(r_min, r_max, max_phase)
    lecun = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=-2,
                                                 batch_axis=(0,))

    def init(key: jax.Array, input_size: int) -> RTUParams:
        checks.positive_int("input_size", input_size)
        k_lam, k_w = jax.random.split(key)
        nu_log, theta_log = _ring_init(k_lam, n, r_min, r_max, max_phase)
        w_x = lecun(k_w, (n, 2, input_size), jnp.zeros(()).dtype)
        return RTUParams(nu_log=nu_log, theta_log=theta_log, w_x=w_x)

    def unit_step(p: RTUParams, carry_i: ComplexCarry, zx: jax.Array) -> ComplexCarry:
        rot = _rotate(p.nu_log, p.theta_log, carry_i)
        norm = jnp.sqrt(_one_minus_r2(p.nu_log))
        return ComplexCarry(re=rot.re + norm * zx[0], im=rot.im + norm * zx[1])

    def output(params: RTUParams, carry: ComplexCarry, x: jax.Array) -> jax.Array:
        return act(jnp.concatenate([carry.re, carry.im]))

    return _diagonal("rtu", n, 2 * n, init, unit_step, output)


# ------------------------------------------------------------------------------------------------- stacks


def stack(layers: Sequence[Any]) -> Cell:
    """Layers of cells, each reading the previous layer's output at the same step::

        carry^1_t, h^1_t = layer_1(carry^1_{t-1}, x_t),   carry^l_t, h^l_t = layer_l(carry^l_{t-1}, h^{l-1}_t)

    and ``h_t = h^L_t``. ``layers`` are cells, or dicts ``{"name": ..., **kwargs}`` given to :func:`make` (so
    that a stack can come from YAML). Parameters and carry are tuples with one entry per layer; layer ``l``'s
    input size is layer ``l - 1``'s ``hidden_size``. Exact learners (rtrl, tbptt, bptt) treat the stack as one
    cell; ``snap1`` on a stack keeps each layer's own influence and backpropagates across layers within the step
    (see :mod:`online_rnn.learners.stacked`).
    """
    if isinstance(layers, (str, bytes, dict, Cell)) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be a non-empty list of cells (or of cell dicts such as "
                         f"{{name: lru, hidden_size: 8}}), got {layers!r}")
    built = []
    for i, layer in enumerate(layers):
        if isinstance(layer, dict):
            layer = from_dict(layer, f"layers[{i}]")
        if not isinstance(layer, Cell):
            raise ValueError(f"layers[{i}] must be a Cell or a cell dict, got {type(layer).__name__}")
        built.append(layer)
    cells = tuple(built)

    def init(key: jax.Array, input_size: int) -> tuple:
        checks.positive_int("input_size", input_size)
        sizes = [input_size] + [c.hidden_size for c in cells[:-1]]
        keys = jax.random.split(key, len(cells))
        return tuple(c.init(k, m) for c, k, m in zip(cells, keys, sizes))

    def initial_carry(params: tuple) -> tuple:
        return tuple(c.initial_carry(p) for c, p in zip(cells, params))

    def apply(params: tuple, carry: tuple, x: jax.Array) -> tuple[tuple, jax.Array]:
        new, h = [], x
        for c, p, s in zip(cells, params, carry):
            s, h = c.apply(p, s, h)
            new.append(s)
        return tuple(new), h

    name = "stack(" + ",".join(c.name for c in cells) + ")"
    return Cell(init, initial_carry, apply, cells[-1].hidden_size, 0, name, layers=cells)


# -------------------------------------------------------------------------------------------------- sparse


def sparse(cell: Any, density: Optional[float] = None, seed: int = 0, mask: Any = None) -> Cell:
    """A gated cell (elman, leaky_elman, lstm, gru) with a fixed sparse recurrent connectivity: unit ``i`` reads
    unit ``j``'s previous output only where ``mask[i, j]``, for every gate. The recurrent weights outside the mask
    are zero at init and multiplied by zero in every step, so no learner can change what they do (their gradient
    is zero) and they are not counted as parameters. The mask is ``cell.connectivity``, from which SnAp-n
    computes its influence pattern (Menick et al. 2021 use such fixed sparse networks).

    ``cell`` is a gated :class:`Cell` or a cell dict (``{"name": "elman", "hidden_size": 8}``, for YAML).
    Either ``density``: each connection between two different units is kept with that probability (a fixed
    draw from ``numpy.random.default_rng(seed)``, the same for every run), every unit keeps its own; or
    ``mask``: an explicit ``(n, n)`` array of booleans.

    The per-unit forms (``unit_apply``, ``pointwise``) are not exposed, since they would read the dense weights:
    the learners that differentiate the whole step take it (rtrl, uoro, tbptt, bptt, snap with ``n >= 2``);
    ``unit_output`` is the wrapped cell's.
    """
    if isinstance(cell, dict):
        cell = from_dict(cell, "cell")
    if not isinstance(cell, Cell) or cell.pointwise is None or cell.unit_output is None:
        what = cell.name if isinstance(cell, Cell) else type(cell).__name__
        raise ValueError(f"cell: sparse needs a gated cell (elman, leaky_elman, lstm, gru) or its dict, got {what!r}")
    n = cell.hidden_size
    if mask is not None:
        if density is not None:
            raise ValueError("sparse: give density or mask, not both")
        m = np.asarray(mask)
        if m.shape != (n, n) or not (m.dtype == bool or np.isin(m, (0, 1)).all()):
            raise ValueError(f"mask must be an ({n}, {n}) array of booleans (the cell's hidden_size), got shape "
                             f"{m.shape}")
        m = m.astype(bool)
    else:
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be a number in [0, 1] (the fraction of connections between different "
                             f"units kept), got {density!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        m = np.random.default_rng(seed).random((n, n)) < density
        np.fill_diagonal(m, True)
    m.setflags(write=False)
    inner = cell

    def keep(w_h: jax.Array) -> jax.Array:
        return w_h * jnp.asarray(m, w_h.dtype)[:, None, :]

    def init(key: jax.Array, input_size: int) -> Any:
        params = inner.init(key, input_size)
        return params._replace(w_h=keep(params.w_h))

    def apply(params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        return inner.apply(params._replace(w_h=keep(params.w_h)), carry, x)

    return Cell(init, inner.initial_carry, apply, n, inner.n_gates, f"sparse({inner.name})",
                unit_output=inner.unit_output, connectivity=m)


def absent_weights(cell: Cell) -> int:
    """Number of stored parameters that cannot affect anything: a sparse cell's recurrent weights outside its
    mask (0 for every other cell)."""
    if cell.connectivity is None:
        return 0
    return int(cell.n_gates * np.sum(~cell.connectivity))


# ---------------------------------------------------------------------------------------------------- flax


def flax(module: Any, hidden_size: Optional[int] = None) -> Cell:
    """Any ``flax.linen`` recurrent cell as a :class:`Cell`: ``nn.LSTMCell``, ``nn.GRUCell``,
    ``nn.OptimizedLSTMCell``, ``nn.MGUCell``, ``nn.SimpleCell`` or a user's ``nn.RNNCellBase`` (anything with
    ``initialize_carry(rng, input_shape)`` and ``__call__(carry, x) -> (carry, y)`` on an unbatched ``x``).

    ``params`` is the module's ``"params"`` collection (modules with other variable collections are refused);
    the carry is the module's own (``initialize_carry`` with a fixed key and no batch axis). ``hidden_size`` is
    the length of ``y`` (default: the module's ``features``). As for every cell here, parameters and carry
    follow JAX's default float type (they are cast to it at ``init``; give the module ``param_dtype`` to match).

    It works with the learners that differentiate the whole cell step (rtrl, uoro, tbptt, bptt, and columnar's
    per-column RTRL); snap1, constructive and hybrid need the per-unit form of :class:`Cell`, which a wrapped
    module does not declare, and refuse it.
    """
    from flax import linen as nn  # the package, not this function

    if not isinstance(module, nn.Module) or not callable(getattr(module, "initialize_carry", None)):
        raise ValueError(f"module must be a flax.linen recurrent cell (an nn.RNNCellBase such as "
                         f"nn.LSTMCell(features=8)), got {type(module).__name__}; flax cells are built in Python, "
                         f"not from YAML")
    if hidden_size is None:
        hidden_size = getattr(module, "features", None)
        if not isinstance(hidden_size, int):
            raise ValueError(f"hidden_size: {type(module).__name__} has no int `features`; pass hidden_size (the "
                             f"length of its output)")
    n = checks.positive_int("hidden_size", hidden_size)
    kind = type(module).__name__
    name = f"flax_{kind}"

    def _float(tree: Any, dtype: Any) -> Any:
        return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    def _carry0() -> Any:
        # input_shape (1,): no batch axes, so the carry's leaves have no batch axis either
        return module.initialize_carry(jax.random.PRNGKey(0), (1,))

    def init(key: jax.Array, input_size: int) -> Any:
        checks.positive_int("input_size", input_size)
        dtype = jnp.zeros(()).dtype
        x0 = jnp.zeros((input_size,), dtype)
        variables = module.init(key, _float(_carry0(), dtype), x0)
        extra = sorted(k for k in variables if k != "params")
        if extra:
            raise ValueError(f"{name}: only trainable parameters are supported; the module also has the variable "
                             f"collections {', '.join(extra)}")
        params = _float(variables.get("params", {}), dtype)
        _, y = jax.eval_shape(lambda p: module.apply({"params": p}, _float(_carry0(), dtype), x0), params)
        if y.shape != (n,):
            raise ValueError(f"hidden_size: {name} outputs shape {tuple(y.shape)} for one input, not ({n},); pass "
                             f"hidden_size={int(np.prod(y.shape))} or a module with features={n}")
        return params

    def initial_carry(params: Any) -> Any:
        leaves = jax.tree.leaves(params)
        dtype = leaves[0].dtype if leaves else jnp.zeros(()).dtype
        return _float(_carry0(), dtype)

    def apply(params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        if x.ndim != 1:
            raise ValueError(f"{name}.apply: x_t must be a vector (input_size,), got shape {tuple(x.shape)}")
        carry_t, y = module.apply({"params": params}, carry, x)
        return carry_t, y

    return Cell(init, initial_carry, apply, n, 0, name)


CELLS = Registry("cell")
for _name, _factory in {"elman": elman, "lstm": lstm, "gru": gru, "lru": lru, "rtu": rtu, "stack": stack,
                        "flax": flax, "leaky_elman": leaky_elman, "sparse": sparse}.items():
    CELLS.register(_name, _factory)
register, names, factory, make = CELLS.register, CELLS.names, CELLS.factory, CELLS.make


def from_dict(cfg: dict, where: str) -> Cell:
    """A cell from ``{name: ..., <arguments>}`` (as in YAML configs); errors name ``where``."""
    if "name" not in cfg:
        raise ValueError(f"{where}: a cell dict needs a name, e.g. {{name: lstm, hidden_size: 8}}")
    try:
        return make(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None

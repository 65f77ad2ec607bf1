"""Cells are pure, unbatched, unit-major, and follow JAX's default dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from online_rnn import cells

CELL_NAMES = ["elman", "lstm", "gru"]


@pytest.mark.parametrize("name", CELL_NAMES)
def test_shapes_and_unit_major_layout(name):
    n, m = 5, 3
    cell = cells.make(name, hidden_size=n)
    params = cell.init(jax.random.PRNGKey(0), m)
    for leaf in jax.tree.leaves(params):
        assert leaf.shape[0] == n  # unit axis first
    assert params.w_x.shape == (n, cell.n_gates, m) and params.w_h.shape == (n, cell.n_gates, n)
    carry = cell.initial_carry(params)
    assert all(leaf.shape == (n,) for leaf in jax.tree.leaves(carry))
    carry_t, h_t = jax.jit(cell.apply)(params, carry, jnp.ones(m))
    assert h_t.shape == (n,)
    chex_like = jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, carry, carry_t)
    assert all(jax.tree.leaves(chex_like))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_unit_depends_only_on_its_own_parameter_rows(x64, name):
    """d carry_i / d leaf[j] = 0 for i != j within one step: the structure SnAp-1 and columns rely on."""
    n, m = 4, 3
    cell = cells.make(name, hidden_size=n)
    params = jax.tree.map(lambda a: a + 0.3, cell.init(jax.random.PRNGKey(1), m))
    carry = jax.tree.map(lambda a: a + 0.2, cell.initial_carry(params))
    x = jnp.arange(1.0, m + 1)

    def new_carry(p):
        return jnp.concatenate(jax.tree.leaves(cell.apply(p, carry, x)[0]))

    jac = jax.jacrev(new_carry)(params)
    n_components = len(jax.tree.leaves(carry))
    for leaf in jax.tree.leaves(jac):
        leaf = np.asarray(leaf).reshape(n_components, n, n, -1)  # (component, unit i, param unit j, rest)
        for i in range(n):
            for j in range(n):
                if i != j:
                    assert np.all(leaf[:, i, j] == 0.0)


def test_lstm_initialisation_and_equations(x64):
    cell = cells.lstm(3)
    params = cell.init(jax.random.PRNGKey(2), 4)
    np.testing.assert_array_equal(params.b[:, 1], 1.0)  # forget-gate bias 1
    np.testing.assert_array_equal(params.b[:, [0, 2, 3]], 0.0)
    bound = 1 / np.sqrt(4)
    assert np.all(np.abs(params.w_x) <= bound)
    for g in range(4):  # orthogonal recurrent matrix per gate
        w = np.asarray(params.w_h[:, g, :])
        np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-12)
    carry = cell.initial_carry(params)._replace(c=jnp.array([0.1, -0.2, 0.3]), h=jnp.array([0.5, 0.0, -0.5]))
    x = jnp.array([1.0, -1.0, 0.5, 2.0])
    z = jnp.einsum("ngi,i->ng", params.w_x, x) + jnp.einsum("ngm,m->ng", params.w_h, carry.h) + params.b
    i, f, o, g = jax.nn.sigmoid(z[:, 0]), jax.nn.sigmoid(z[:, 1]), jax.nn.sigmoid(z[:, 2]), jnp.tanh(z[:, 3])
    c = f * carry.c + i * g
    new, h = cell.apply(params, carry, x)
    np.testing.assert_allclose(new.c, c, rtol=1e-14)
    np.testing.assert_allclose(h, o * jnp.tanh(c), rtol=1e-14)


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("x64_on", [False, True])
def test_dtype_follows_jax_default(name, x64_on):
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64_on)
    try:
        cell = cells.make(name, hidden_size=2)
        params = cell.init(jax.random.PRNGKey(0), 3)
        expected = jnp.float64 if x64_on else jnp.float32
        assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(expected)}
        assert {leaf.dtype for leaf in jax.tree.leaves(cell.initial_carry(params))} == {jnp.dtype(expected)}
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_wrong_input_length_is_named():
    cell = cells.gru(2)
    params = cell.init(jax.random.PRNGKey(0), 3)
    with pytest.raises(ValueError, match=r"gru.apply: x_t must have shape \(3,\)"):
        cell.apply(params, cell.initial_carry(params), jnp.ones(5))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_unit_apply_vmapped_equals_apply(x64, name):
    cell = cells.make(name, hidden_size=4)
    params = cell.init(jax.random.PRNGKey(3), 2)
    carry = jax.tree.map(lambda a: a + jnp.linspace(-0.5, 0.5, 4), cell.initial_carry(params))
    x = jnp.array([0.3, -1.2])
    carry_t, h_t = cell.apply(params, carry, x)
    h_prev = jax.vmap(cell.unit_output)(carry)
    by_unit = jax.vmap(cell.unit_apply, in_axes=(0, 0, None, None))(params, carry, h_prev, x)
    for a, b in zip(jax.tree.leaves(by_unit), jax.tree.leaves(carry_t)):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(jax.vmap(cell.unit_output)(carry_t), h_t, rtol=1e-13)


def test_init_range_draws_everything_uniformly(x64):
    params = cells.lstm(3, forget_bias=0.0, init_range=0.01).init(jax.random.PRNGKey(0), 5)
    for leaf in jax.tree.leaves(params):
        assert np.all(np.abs(leaf) <= 0.01) and np.std(leaf) > 0.001
    with pytest.raises(ValueError, match="init_range must be a positive number"):
        cells.gru(2, init_range=-1)


# ------------------------------------------------------------------------------------------- diagonal cells

DIAGONAL = {"lru": lambda: cells.lru(3), "rtu": lambda: cells.rtu(3, activation="tanh")}


def _complex_reference_step(name, params, h, x):
    """One step in complex arithmetic (complex128), written from the papers' equations."""
    lam = jnp.exp(-jnp.exp(params.nu_log) + 1j * jnp.exp(params.theta_log))
    bx = (params.w_x[:, 0] + 1j * params.w_x[:, 1]) @ x
    if name == "lru":
        h = lam * h + jnp.exp(params.gamma_log) * bx
        return h, ((params.c_re + 1j * params.c_im) @ h).real + params.d @ x
    h = lam * h + jnp.sqrt(1 - jnp.abs(lam) ** 2) * bx
    return h, jnp.tanh(jnp.concatenate([h.real, h.imag]))


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_diagonal_cells_follow_their_complex_equations(x64, name):
    cell = DIAGONAL[name]()
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 2))

    @jax.jit
    def both(key):
        params = cell.init(key, 2)
        carry, h, out = cell.initial_carry(params), jnp.zeros(3, jnp.complex128), []
        for x in xs:
            carry, y = cell.apply(params, carry, x)
            h, y_ref = _complex_reference_step(name, params, h, x)
            out.append((carry.re + 1j * carry.im, h, y, y_ref))
        return out

    for state, h, y, y_ref in both(jax.random.PRNGKey(0)):
        np.testing.assert_allclose(state, h, rtol=1e-13)
        np.testing.assert_allclose(y, y_ref, rtol=1e-13)
    assert float(jnp.min(jnp.abs(h))) > 0 and y.shape == (cell.hidden_size,)
    assert cell.hidden_size == (3 if name == "lru" else 6)


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_diagonal_unit_depends_only_on_its_own_rows_and_output_fields_only_on_the_output(x64, name):
    cell = DIAGONAL[name]()
    n = 3
    params = cell.init(jax.random.PRNGKey(2), 2)
    carry = jax.tree.map(lambda a: a + jnp.array([0.3, -0.2, 0.5]), cell.initial_carry(params))
    x = jnp.array([0.7, -1.1])
    jac = jax.jacrev(lambda p: jnp.stack(jax.tree.leaves(cell.apply(p, carry, x)[0])))(params)  # (S, n, ...)
    for field in params._fields:
        leaf = np.asarray(getattr(jac, field))
        if field in cell.output_fields:
            assert np.all(leaf == 0.0), field  # C, D never reach the carry
            continue
        leaf = leaf.reshape(2, n, n, -1)  # (component, unit i, param unit j, rest)
        for i in range(n):
            assert np.any(leaf[:, i, i] != 0.0), field
            for j in range(n):
                if i != j:
                    assert np.all(leaf[:, i, j] == 0.0), field
    # apply is vmap(unit_step) over units, then the output map
    rec = cells.recurrent_part(cell, params)
    by_unit = jax.vmap(cell.unit_step)(rec, carry, cells.input_projection(params, x))
    carry_t, h_t = cell.apply(params, carry, x)
    for a, b in zip(jax.tree.leaves(by_unit), jax.tree.leaves(carry_t)):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    np.testing.assert_allclose(cell.output(params, carry_t, x), h_t, rtol=1e-14)


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_ring_initialisation(x64, name):
    """|lambda|^2 uniform on [r_min^2, r_max^2], phase uniform on [0, max_phase]; LRU's gamma starts at
    sqrt(1 - |lambda|^2)."""
    n, r_min, r_max, max_phase = 500, 0.5, 0.9, 1.0
    cell = cells.make(name, hidden_size=n, r_min=r_min, r_max=r_max, max_phase=max_phase)
    params = cell.init(jax.random.PRNGKey(3), 2)
    r = np.exp(-np.exp(np.asarray(params.nu_log)))
    phase = np.exp(np.asarray(params.theta_log))
    assert r.min() >= r_min - 1e-12 and r.max() <= r_max + 1e-12
    assert phase.min() >= 0 and phase.max() <= max_phase + 1e-12
    # means of uniforms, within 5 standard errors
    assert abs(np.mean(r**2) - (r_min**2 + r_max**2) / 2) < 5 * (r_max**2 - r_min**2) / np.sqrt(12 * n)
    assert abs(np.mean(phase) - max_phase / 2) < 5 * max_phase / np.sqrt(12 * n)
    if name == "lru":
        np.testing.assert_allclose(np.exp(params.gamma_log), np.sqrt(1 - r**2), rtol=1e-12)
    # input weights: variance 1 / (2 input_size) for the LRU's B, 1 / input_size (LeCun) for the RTU's
    expected_std = np.sqrt(1 / 4) if name == "lru" else np.sqrt(1 / 2)
    assert abs(np.std(np.asarray(params.w_x)) / expected_std - 1) < 0.1
    # the default ring reaches |lambda| close to 1 without a log(0)
    p = cells.make(name, hidden_size=n).init(jax.random.PRNGKey(4), 2)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(p))


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh"])
def test_rtu_activation_is_applied_after_the_linear_recurrence(x64, activation):
    act = {"linear": lambda z: z, "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[activation]
    cell = cells.rtu(2, activation=activation)
    params = cell.init(jax.random.PRNGKey(5), 3)
    carry = cell.initial_carry(params)
    for t in range(3):
        carry, h = cell.apply(params, carry, jnp.array([1.0, -2.0, 0.5]) * (t + 1))
    np.testing.assert_allclose(h, act(np.concatenate([carry.re, carry.im])), rtol=1e-14)


@pytest.mark.parametrize("x64_on", [False, True])
def test_new_cells_follow_the_default_dtype(x64_on):
    """Shapes and dtypes only (jax.eval_shape): nothing runs."""
    import flax.linen as nn

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64_on)
    try:
        expected = jnp.dtype(jnp.float64 if x64_on else jnp.float32)
        for cell in (cells.stack([cells.lru(2), cells.rtu(2)]), cells.flax(nn.GRUCell(2))):
            def one_step(key, cell=cell):
                params = cell.init(key, 3)
                carry = cell.initial_carry(params)
                return (params, carry) + cell.apply(params, carry, jnp.ones(3, expected))

            out = jax.eval_shape(one_step, jax.random.PRNGKey(0))
            assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {expected}, cell.name
    finally:
        jax.config.update("jax_enable_x64", previous)


# -------------------------------------------------------------------------------------------- stack, flax


def test_stack_is_its_layers_in_order(x64):
    layers = [cells.lru(3), cells.rtu(2, activation="tanh"), cells.gru(2)]
    cell = cells.stack(layers)
    assert cell.hidden_size == 2 and cell.layers == tuple(layers) and cell.name == "stack(lru,rtu,gru)"
    params = cell.init(jax.random.PRNGKey(6), 5)
    assert params[0].w_x.shape[-1] == 5 and params[1].w_x.shape[-1] == 3 and params[2].w_x.shape[-1] == 4
    carry = cell.initial_carry(params)
    x = jnp.linspace(-1.0, 1.0, 5)
    for _ in range(2):
        carry, h = cell.apply(params, carry, x)
    by_hand = [lay.initial_carry(p) for lay, p in zip(layers, params)]
    for _ in range(2):
        u = x
        for i, (lay, p) in enumerate(zip(layers, params)):
            by_hand[i], u = lay.apply(p, by_hand[i], u)
    np.testing.assert_allclose(h, u, rtol=1e-14)
    # a stack from cell dicts (as in YAML)
    from_dicts = cells.make("stack", layers=[{"name": "lru", "hidden_size": 3}, {"name": "gru", "hidden_size": 2}])
    assert from_dicts.name == "stack(lru,gru)" and from_dicts.hidden_size == 2


def test_flax_wrapper_is_the_module(x64):
    import flax.linen as nn

    for module in (nn.LSTMCell(3), nn.GRUCell(3), nn.OptimizedLSTMCell(3), nn.MGUCell(3), nn.SimpleCell(3)):
        cell = cells.flax(module)
        assert cell.hidden_size == 3 and cell.name == f"flax_{type(module).__name__}"
        params = cell.init(jax.random.PRNGKey(7), 2)
        carry = cell.initial_carry(params)
        ref = module.initialize_carry(jax.random.PRNGKey(0), (2,))
        x = jnp.array([0.4, -0.9])
        for _ in range(2):
            carry, h = cell.apply(params, carry, x)
            ref, y = module.apply({"params": params}, ref, x)
        np.testing.assert_allclose(h, y, rtol=1e-14)
        assert float(jnp.max(jnp.abs(h))) > 0
    assert cells.flax(nn.GRUCell(4), hidden_size=4).hidden_size == 4

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

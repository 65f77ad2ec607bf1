"""Exact learners are exact: RTRL == BPTT, T-BPTT(k >= T) == BPTT, truncated gradients, TD(lambda).

All in float64 with a zero step size, so that the parameters stay fixed and every learner's gradient can be
compared with ``jax.grad`` of an unrolled loss at the same parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from online_rnn import cells, learners, objectives
from reference import linear, max_rel_err, randomise, scan_learner, unroll

T = 11
IN, OUT = 3, 2
RTOL = 1e-9

CELLS = {"elman": lambda: cells.elman(3), "lstm": lambda: cells.lstm(3), "gru": lambda: cells.gru(3)}


def _stream(key, n=T):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, IN)), jax.random.normal(ky, (n, OUT))


def _setup(learner, key):
    """Init, then randomise all parameters (including the zero-initialised readout)."""
    state = learner.init(key)
    return state._replace(params=randomise(state.params, jax.random.fold_in(key, 7)))


def _losses(cell, params, xs, ys):
    hs = unroll(cell, params["cell"], xs)
    preds = jax.vmap(lambda h: linear(params["readout"], h))(hs)
    return 0.5 * jnp.sum((preds - ys) ** 2, axis=-1)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_rtrl_equals_bptt_at_every_prefix(x64, cell_name):
    cell = CELLS[cell_name]()
    learner = learners.rtrl(cell, IN, OUT, objectives.squared_error(), optax.sgd(0.0))
    state = _setup(learner, jax.random.PRNGKey(0))
    xs, ys = _stream(jax.random.PRNGKey(1))
    _, infos = jax.jit(lambda s: scan_learner(learner, s, xs, ys))(state)
    cumulative = jax.tree.map(lambda g: jnp.cumsum(g, axis=0), infos.grads)
    for t in range(1, T + 1):
        reference = jax.grad(lambda p: jnp.sum(_losses(cell, p, xs[:t], ys[:t])))(state.params)
        got = jax.tree.map(lambda g: g[t - 1], cumulative)
        assert max_rel_err(got, reference) < RTOL, (cell_name, t)
    # info.loss is the loss whose gradient is taken
    np.testing.assert_allclose(infos.loss, _losses(cell, state.params, xs, ys), rtol=1e-12)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_tbptt_full_window_equals_bptt(x64, cell_name):
    cell = CELLS[cell_name]()
    xs, ys = _stream(jax.random.PRNGKey(2))
    obj, opt = objectives.squared_error(), optax.sgd(0.0)
    bptt = learners.bptt(cell, IN, OUT, obj, opt, seq_len=T)
    state = _setup(bptt, jax.random.PRNGKey(3))
    reference = jax.grad(lambda p: jnp.sum(_losses(cell, p, xs, ys)))(state.params)

    _, infos = jax.jit(lambda s: scan_learner(bptt, s, xs, ys))(state)
    # BPTT makes exactly one update, at the end of the sequence, with the whole sequence's gradient
    nonzero = [float(jnp.max(jnp.abs(g))) > 0 for g in infos.grads["cell"].w_h]
    assert nonzero == [False] * (T - 1) + [True]
    assert max_rel_err(jax.tree.map(lambda g: g[-1], infos.grads), reference) < RTOL

    for k in (T, T + 5):
        tb = learners.tbptt(cell, IN, OUT, obj, opt, truncation=k)
        _, infos = jax.jit(lambda s: scan_learner(tb, s, xs, ys))(state._replace(trace=tb.init(jax.random.PRNGKey(0)).trace))
        total = jax.tree.map(lambda g: jnp.sum(g, axis=0), infos.grads)
        assert max_rel_err(total, reference) < RTOL, k


def _truncated_reference(cell, params, xs, ys, t, k):
    """grad of L_t (0-based step t) with the carry stopped k steps back (after step t - k)."""
    carry = cell.initial_carry(params["cell"])
    for j in range(max(t - k + 1, 0)):
        carry, _ = cell.apply(params["cell"], carry, xs[j])
    carry = jax.lax.stop_gradient(carry)

    def loss(p):
        c = carry
        for j in range(max(t - k + 1, 0), t + 1):
            c, h = cell.apply(p["cell"], c, xs[j])
        return 0.5 * jnp.sum((linear(p["readout"], h) - ys[t]) ** 2)

    return jax.grad(loss)(params)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("k", [1, 4])
def test_tbptt_step_gradient_is_truncated_gradient(x64, cell_name, k):
    """k = 1 is the one-step gradient (carry stopped at t - 1); k = 4 stops it 4 steps back."""
    cell = CELLS[cell_name]()
    xs, ys = _stream(jax.random.PRNGKey(4))
    tb = learners.tbptt(cell, IN, OUT, objectives.squared_error(), optax.sgd(0.0), truncation=k)
    state = _setup(tb, jax.random.PRNGKey(5))
    _, infos = jax.jit(lambda s: scan_learner(tb, s, xs, ys))(state)
    for t in range(T):
        got = jax.tree.map(lambda g: g[t], infos.grads)
        assert max_rel_err(got, _truncated_reference(cell, state.params, xs, ys, t, k)) < RTOL, t


def test_tbptt_strided_updates_once_per_window(x64):
    cell = cells.lstm(2)
    k = 4
    xs, ys = _stream(jax.random.PRNGKey(6), n=3 * k)
    tb = learners.tbptt(cell, IN, OUT, objectives.squared_error(), optax.sgd(0.0), truncation=k, stride=k)
    state = _setup(tb, jax.random.PRNGKey(7))
    _, infos = jax.jit(lambda s: scan_learner(tb, s, xs, ys))(state)
    params = state.params
    for w in range(3):
        # reference: summed loss of window w, carry stopped at the window's start
        carry = cell.initial_carry(params["cell"])
        for j in range(w * k):
            carry, _ = cell.apply(params["cell"], carry, xs[j])

        def window_loss(p, carry=jax.lax.stop_gradient(carry), w=w):
            hs = unroll(cell, p["cell"], xs[w * k:(w + 1) * k], carry)
            preds = jax.vmap(lambda h: linear(p["readout"], h))(hs)
            return 0.5 * jnp.sum((preds - ys[w * k:(w + 1) * k]) ** 2)

        reference = jax.grad(window_loss)(params)
        assert max_rel_err(jax.tree.map(lambda g: g[(w + 1) * k - 1], infos.grads), reference) < RTOL
        for j in range(w * k, (w + 1) * k - 1):
            assert all(float(jnp.max(jnp.abs(g[j]))) == 0.0 for g in jax.tree.leaves(infos.grads))


def test_learning_trajectory_rtrl_matches_manual_sgd(x64):
    """With a nonzero step size the learner applies exactly the optimizer's update to state.params."""
    cell = cells.gru(2)
    lr = 0.05
    learner = learners.rtrl(cell, IN, OUT, objectives.squared_error(), optax.sgd(lr))
    state = _setup(learner, jax.random.PRNGKey(8))
    xs, ys = _stream(jax.random.PRNGKey(9), n=3)
    s1, info = learner.step(state, xs[0], ys[0])
    expected = jax.tree.map(lambda p, g: p - lr * g, state.params, info.grads)
    assert max_rel_err(s1.params, expected) < 1e-14


# ----------------------------------------------------------------------------------------------- TD(lambda)


def _lambda_return_update(values, cumulants, grads_v, gamma, lam):
    """Offline lambda-return update  -sum_j (G^lambda_{j:T} - v_j) grad v_j  for j = 0..T-1, where the
    truncated lambda-return bootstraps from v_T:  G_T = v_T,  G_j = c_{j+1} + gamma((1-lam) v_{j+1} + lam G_{j+1})."""
    n = values.shape[0] - 1
    g = values[n]
    total = jax.tree.map(jnp.zeros_like, jax.tree.map(lambda x: x[0], grads_v))
    for j in range(n - 1, -1, -1):
        g = cumulants[j + 1] + gamma * ((1 - lam) * values[j + 1] + lam * g)
        total = jax.tree.map(lambda acc, gv: acc - (g - values[j]) * gv[j], total, grads_v)
    return total


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_td_lambda_objective_equals_offline_lambda_return_linear(x64, lam):
    """Fixed feature stream, linear readout: with the weights held fixed, the summed online TD(lambda) updates
    over an episode equal the offline lambda-return updates (forward view == backward view, Sutton & Barto
    2018, section 12.4). This holds exactly because e_t = sum_j (gamma lam)^(t-j) grad v_j, so
    sum_t delta_t e_t = sum_j grad v_j sum_{t>=j} (gamma lam)^(t-j) delta_t = sum_j grad v_j (G^lam_j - v_j)."""
    gamma = 0.9
    n, d = 25, 5
    phi = jax.random.normal(jax.random.PRNGKey(0), (n + 1, d))
    c = jax.random.normal(jax.random.PRNGKey(1), (n + 1,))
    w = jax.random.normal(jax.random.PRNGKey(2), (d,))
    obj = objectives.td_lambda(gamma, lam)
    state = obj.init(w)
    total = jnp.zeros(d)
    for t in range(n + 1):
        y = jnp.array([phi[t] @ w])
        grads, _, state = obj.update(state, y, c[t], phi[t])
        total = total + grads
    expected = _lambda_return_update(phi @ w, c, phi, gamma, lam)
    np.testing.assert_allclose(total, expected, rtol=1e-12, atol=1e-12)


def test_td_lambda_with_per_step_discounts_equals_offline_lambda_return(x64):
    """A Cumulant signal with its own discount per step (0 where an episode starts): the summed online updates
    equal the offline lambda-return updates with G_j = c_{j+1} + gamma_{j+1}((1-lam) v_{j+1} + lam G_{j+1})
    (Sutton & Barto 2018, section 12.8); a Cumulant whose discount is the objective's gamma at every step gives
    the plain signal's updates bit for bit."""
    gamma, lam, n, d = 0.9, 0.8, 30, 4
    phi = jax.random.normal(jax.random.PRNGKey(0), (n + 1, d))
    c = jax.random.normal(jax.random.PRNGKey(1), (n + 1,))
    w = jax.random.normal(jax.random.PRNGKey(2), (d,))
    discount = jnp.where(jnp.arange(n + 1) % 7 == 3, 0.0, gamma)  # episodes start at steps 3, 10, 17, 24
    obj = objectives.td_lambda(gamma, lam)

    def run(signals):
        state, total, out = obj.init(w), jnp.zeros(d), []
        for t in range(n + 1):
            grads, _, state = obj.update(state, jnp.array([phi[t] @ w]), signals(t), phi[t])
            total, out = total + grads, out + [grads]
        return total, jnp.stack(out)

    total, _ = run(lambda t: objectives.Cumulant(c[t], discount[t]))
    values, g, expected = phi @ w, (phi @ w)[n], jnp.zeros(d)
    for j in range(n - 1, -1, -1):
        g = c[j + 1] + discount[j + 1] * ((1 - lam) * values[j + 1] + lam * g)
        expected = expected - (g - values[j]) * phi[j]
    np.testing.assert_allclose(total, expected, rtol=1e-12, atol=1e-12)
    _, constant = run(lambda t: objectives.Cumulant(c[t], jnp.asarray(gamma)))
    _, plain = run(lambda t: c[t])
    assert np.array_equal(np.asarray(constant), np.asarray(plain))


def test_td_lambda_rtrl_equals_offline_lambda_return_recurrent(x64):
    """The same identity through a recurrent learner: RTRL's grad v_t is exact, so with a zero step size the
    sum of info.grads equals the offline lambda-return update with grad v_j from jax.grad of the unrolled net."""
    gamma, lam = 0.8, 0.9
    cell = cells.lstm(2)
    learner = learners.rtrl(cell, IN, 1, objectives.td_lambda(gamma, lam), optax.sgd(0.0))
    state = _setup(learner, jax.random.PRNGKey(3))
    xs = jax.random.normal(jax.random.PRNGKey(4), (T + 1, IN))
    cs = jax.random.normal(jax.random.PRNGKey(5), (T + 1,))
    _, infos = jax.jit(lambda s: scan_learner(learner, s, xs, cs))(state)

    def value(p, t):
        return linear(p["readout"], unroll(cell, p["cell"], xs[: t + 1])[-1])[0]

    values = jnp.stack([value(state.params, t) for t in range(T + 1)])
    np.testing.assert_allclose(infos.prediction[:, 0], values, rtol=1e-12)
    grads_v = [jax.grad(value)(state.params, t) for t in range(T + 1)]
    grads_v = jax.tree.map(lambda *g: jnp.stack(g), *grads_v)
    expected = _lambda_return_update(values, cs, grads_v, gamma, lam)
    total = jax.tree.map(lambda g: jnp.sum(g, axis=0), infos.grads)
    assert max_rel_err(total, expected) < RTOL


# ------------------------------------------------------------------------------------------ flax.linen cells


def _flax_losses(module, params, xs, ys):
    """The summed-loss reference through the flax module itself (module.apply in a scan), not the wrapper."""
    carry = module.initialize_carry(jax.random.PRNGKey(0), (IN,))
    carry = jax.tree.map(lambda a: a.astype(xs.dtype), carry)
    hs = jax.lax.scan(lambda c, x: module.apply({"params": params["cell"]}, c, x), carry, xs)[1]
    preds = jax.vmap(lambda h: linear(params["readout"], h))(hs)
    return 0.5 * jnp.sum((preds - ys) ** 2, axis=-1)


def test_rtrl_on_a_flax_cell_equals_jax_grad_of_the_module(x64):
    import flax.linen as nn

    module = nn.LSTMCell(features=3)
    learner = learners.rtrl(cells.flax(module), IN, OUT, objectives.squared_error(), optax.sgd(0.0))
    state = _setup(learner, jax.random.PRNGKey(20))
    xs, ys = _stream(jax.random.PRNGKey(21))
    _, infos = jax.jit(lambda s: scan_learner(learner, s, xs, ys))(state)
    reference = jax.jit(jax.grad(lambda p: jnp.sum(_flax_losses(module, p, xs, ys))))(state.params)
    assert max_rel_err(jax.tree.map(lambda g: jnp.sum(g, axis=0), infos.grads), reference) < RTOL
    np.testing.assert_allclose(infos.loss, _flax_losses(module, state.params, xs, ys), rtol=1e-12)


def test_tbptt_full_window_equals_bptt_on_a_flax_cell(x64):
    """T-BPTT with the window T sums, over the sequence, to BPTT's one update (the flax module's own gradient is
    checked against jax.grad in the RTRL test above)."""
    import flax.linen as nn

    n = 6  # T-BPTT unrolls its window: a short one compiles faster
    cell = cells.flax(nn.GRUCell(features=3))
    xs, ys = _stream(jax.random.PRNGKey(22), n)
    obj, opt = objectives.squared_error(), optax.sgd(0.0)
    bptt = learners.bptt(cell, IN, OUT, obj, opt, seq_len=n)
    state = _setup(bptt, jax.random.PRNGKey(23))
    _, infos = jax.jit(lambda s: scan_learner(bptt, s, xs, ys))(state)
    reference = jax.tree.map(lambda g: g[-1], infos.grads)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(reference))
    tb = learners.tbptt(cell, IN, OUT, obj, opt, truncation=n)
    _, infos = jax.jit(lambda s: scan_learner(tb, s, xs, ys))(state._replace(trace=tb.init(jax.random.PRNGKey(0)).trace))
    assert max_rel_err(jax.tree.map(lambda g: jnp.sum(g, axis=0), infos.grads), reference) < RTOL

"""Hand-derived recursions agree with what autodiff computes.

* Appendix A of Javed, Shah, Sutton & White (JMLR 2023): the forward-mode traces TH = dh/dtheta and
  TC = dc/dtheta of a one-unit LSTM column equal RTRL's influence matrix for ``cells.lstm(1)``.
* A textbook derivation of BPTT for a vanilla RNN: the BPTT formulas for a tanh RNN with a softmax readout equal
  ``jax.grad`` and the ``bptt`` learner.

Where a written derivation disagrees with the chain rule, the test says so and shows that the literal formula is wrong.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from online_rnn import cells, learners, objectives
from reference import randomise, scan_learner

# ------------------------------------------------------------------------------------ Appendix A (LSTM column)

M = 3  # input length m
GATES = "ifog"  # the cell's gate order


def _sig_prime(a):
    return a * (1.0 - a)


def _appendix_a_traces(params, xs):
    """Appendix A's recursion, written for all 4(m+2) parameters of a one-unit column at once.

    A parameter p belongs to gate G(p) in {i, f, o, g} and multiplies u(p): x_j for W_{G_j}, h(t-1) for u_G,
    1 for b_G. For every gate q (eqs. of A.1-A.3 and the summaries (19)-(27)):
        dq/dp = act'(z_q) * ([q == G(p)] u(p) + u_q TH_p(t-1))
        TC_p(t) = f TC_p(t-1) + c(t-1) df/dp + i dg/dp + g di/dp
        TH_p(t) = o (1 - tanh^2 c) TC_p(t) + tanh(c) do/dp
    Parameters are ordered like ``ravel_pytree(LSTMParams)``: W (gate-major, then input), u (per gate), b.
    """
    w = np.asarray(params.w_x[0])  # (4, m)
    u = np.asarray(params.w_h[0, :, 0])  # (4,)
    b = np.asarray(params.b[0])  # (4,)
    gate_of = np.concatenate([np.repeat(np.arange(4), M), np.arange(4), np.arange(4)])
    n_p = gate_of.size
    th, tc = np.zeros(n_p), np.zeros(n_p)
    h, c = 0.0, 0.0
    out = []
    for x in np.asarray(xs):
        z = w @ x + u * h + b
        i, f, o = (1 / (1 + np.exp(-z[k])) for k in range(3))
        g = np.tanh(z[3])
        direct = np.concatenate([np.tile(x, 4), np.full(4, h), np.ones(4)])  # u(p)
        act_prime = [_sig_prime(i), _sig_prime(f), _sig_prime(o), 1 - g**2]
        d_gate = [act_prime[q] * ((gate_of == q) * direct + u[q] * th) for q in range(4)]
        di, df, do, dg = d_gate
        c_new = f * c + i * g
        tc = f * tc + c * df + i * dg + g * di
        th = o * (1 - np.tanh(c_new) ** 2) * tc + np.tanh(c_new) * do
        h, c = o * np.tanh(c_new), c_new
        out.append((th.copy(), tc.copy()))
    return out


def _rtrl_influences(cell, params, xs):
    learner = learners.rtrl(cell, M, 1, objectives.squared_error(), optax.sgd(0.0))
    state = learner.init(jax.random.PRNGKey(0))
    state = state._replace(params={**state.params, "cell": params})
    influences = []
    for x in xs:
        state, _ = learner.step(state, x, jnp.zeros(1))
        influences.append(np.asarray(state.trace.influence))  # rows: carry (h, c)
    return influences


def test_appendix_a_traces_equal_rtrl_influence(x64):
    cell = cells.lstm(1)
    params = randomise(cell.init(jax.random.PRNGKey(1), M), jax.random.PRNGKey(2), scale=0.8)
    xs = jax.random.normal(jax.random.PRNGKey(3), (15, M))
    oracle = _appendix_a_traces(params, xs)
    for (th, tc), influence in zip(oracle, _rtrl_influences(cell, params, xs)):
        np.testing.assert_allclose(influence[0], th, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(influence[1], tc, rtol=1e-9, atol=1e-13)


def test_appendix_a_literal_typo_disagrees_with_chain_rule(x64):
    """Eqs. (19)-(27) write TC_{W_fj}(t) = f TC(t-1) + c(t-1) df/db_i + i dg/db_i + g di/db_i, i.e. with the
    derivatives with respect to b_i copied from A.3 (and TH with do/dW_ij). Read literally, every parameter's
    TC would equal TC_{b_i} up to the f TC(t-1) term: the chain rule needs df/dW_fj etc. Show that the
    literal reading gives a different trace for W_f than autodiff, while the corrected one (above) agrees."""
    cell = cells.lstm(1)
    params = randomise(cell.init(jax.random.PRNGKey(4), M), jax.random.PRNGKey(5), scale=0.8)
    xs = jax.random.normal(jax.random.PRNGKey(6), (6, M))
    influences = _rtrl_influences(cell, params, xs)
    oracle = _appendix_a_traces(params, xs)
    # The b_i column of the corrected oracle is what the literal (19) uses for every W_fj.
    b_i = 4 * M + 4  # index of b_i in the ravelled parameters
    w_f0 = 1 * M  # index of W_f1
    literal_tc_wf = oracle[0][1][b_i]  # at t = 1, TC(t-1) = 0, so literal TC_{W_fj} = TC_{b_i}
    true_tc_wf = influences[0][1][w_f0]
    assert abs(literal_tc_wf - true_tc_wf) > 1e-3
    np.testing.assert_allclose(oracle[0][1][w_f0], true_tc_wf, rtol=1e-9)


# ------------------------------------------------------------------------------- vanilla RNN (textbook derivation)

D, IN, C, T = 4, 3, 3, 9


def _derived_bptt(U, W, V, xs, ys):
    """The textbook BPTT derivation for a vanilla RNN: z_t = U x_t + W s_{t-1}, s_t = tanh z_t, g_t = V s_t,
    L = sum_t -y_t . log softmax(g_t), s_0 = 0. Gradients written out by hand (column-vector form):
    dL_t/dg_t = yhat_t - y_t, dL_t/dV = dL_t/dg_t s_t^T, dL_t/dz_t = (V^T (yhat_t - y_t)) * (1 - s_t^2),
    dL_t/dz_{k-1} = (W^T dL_t/dz_k) * (1 - s_{k-1}^2), dL_t/dW += dL_t/dz_k s_{k-1}^T, dL_t/dU += dL_t/dz_k x_k^T.

    The tanh derivative is 1 - s^2 (a form sometimes misprinted as (1 - s) s, the logistic sigmoid's).
    """
    s = [np.zeros(D)]
    for x in xs:
        s.append(np.tanh(U @ x + W @ s[-1]))
    gU, gW, gV = np.zeros_like(U), np.zeros_like(W), np.zeros_like(V)
    for t in range(1, len(xs) + 1):
        g = V @ s[t]
        yhat = np.exp(g - g.max()) / np.exp(g - g.max()).sum()
        dg = yhat - ys[t - 1]  # d L_t / d g_t
        gV += np.outer(dg, s[t])  # d L_t / d V
        dz = (V.T @ dg) * (1 - s[t] ** 2)  # d L_t / d z_t
        for k in range(t, 0, -1):
            gW += np.outer(dz, s[k - 1])
            gU += np.outer(dz, xs[k - 1])
            dz = (W.T @ dz) * (1 - s[k - 1] ** 2)
    return gU, gW, gV


def test_vanilla_rnn_bptt_formulas_equal_autodiff_and_bptt_learner(x64):
    cell = cells.elman(D)
    ys = jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(0), (T,), 0, C), C)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, IN))
    learner = learners.bptt(cell, IN, C, objectives.softmax_cross_entropy(), optax.sgd(0.0), seq_len=T)
    state = learner.init(jax.random.PRNGKey(2))
    params = randomise(state.params, jax.random.PRNGKey(3))
    # the derivation's model has no biases
    params["cell"] = params["cell"]._replace(b=jnp.zeros_like(params["cell"].b))
    params["readout"]["b"] = jnp.zeros_like(params["readout"]["b"])
    state = state._replace(params=params)
    U, W, V = params["cell"].w_x[:, 0, :], params["cell"].w_h[:, 0, :], params["readout"]["w"]

    gU, gW, gV = _derived_bptt(np.asarray(U), np.asarray(W), np.asarray(V), np.asarray(xs), np.asarray(ys))

    def total_loss(U, W, V):
        s, tot = jnp.zeros(D), 0.0
        for t in range(T):
            s = jnp.tanh(U @ xs[t] + W @ s)
            tot = tot - jnp.sum(ys[t] * jax.nn.log_softmax(V @ s))
        return tot

    aU, aW, aV = jax.grad(total_loss, argnums=(0, 1, 2))(U, W, V)
    for derived_g, auto_g in ((gU, aU), (gW, aW), (gV, aV)):
        np.testing.assert_allclose(derived_g, auto_g, rtol=1e-9, atol=1e-12)

    _, infos = scan_learner(learner, state, xs, ys)
    g = jax.tree.map(lambda a: a[-1], infos.grads)
    np.testing.assert_allclose(g["cell"].w_x[:, 0, :], gU, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g["cell"].w_h[:, 0, :], gW, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g["readout"]["w"], gV, rtol=1e-9, atol=1e-12)


def test_vanilla_rnn_commuted_jacobian_product_is_wrong(x64):
    """A shortcut sometimes written in BPTT derivations, ds_t/ds_k = W^{t-k} prod_i ds_i/dz_i, commutes W past
    the diagonal factors; matrices do not commute, and the chain rule gives the ordered product
    prod_i (diag(1 - s_i^2) W). Autodiff agrees with the ordered product and not with the shortcut."""
    key = jax.random.PRNGKey(7)
    U = jax.random.normal(key, (D, IN))
    W = jax.random.normal(jax.random.fold_in(key, 1), (D, D))
    xs = jax.random.normal(jax.random.fold_in(key, 2), (4, IN))

    def s_t_from_s_k(s_k):
        s = s_k
        for x in xs:
            s = jnp.tanh(U @ x + W @ s)
        return s

    s_k = jnp.tanh(jax.random.normal(jax.random.fold_in(key, 3), (D,)))
    jac = jax.jacfwd(s_t_from_s_k)(s_k)
    ordered, commuted_diag, s = jnp.eye(D), jnp.eye(D), s_k
    for x in xs:
        s = jnp.tanh(U @ x + W @ s)
        ordered = jnp.diag(1 - s**2) @ W @ ordered
        commuted_diag = jnp.diag(1 - s**2) @ commuted_diag
    shortcut = jnp.linalg.matrix_power(W, len(xs)) @ commuted_diag
    np.testing.assert_allclose(jac, ordered, rtol=1e-9, atol=1e-12)
    assert float(jnp.max(jnp.abs(shortcut - jac))) > 1e-3

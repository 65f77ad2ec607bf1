"""Diagonal cells (lru, rtu) and stacks of layers with the online learners, against exact references (float64).

* SnAp-1 on a diagonal cell is exact RTRL, by its fast elementwise path and by its generic path.
* The fast path forms no Jacobian of the whole state (it never calls jax.jacfwd / jax.jacrev).
* RTRL on a stack is exact (jax.grad of the stack unrolled layer by layer).
* SnAp-1 on a stack (online credit per layer, backpropagation across layers within the step) is RTRL with the
  cross-layer influence blocks zeroed, and nothing else.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from online_rnn import cells, learners, objectives
from online_rnn.learners.diagonal import split_trace
from reference import linear, max_rel_err, randomise, scan_learner

IN, OUT = 3, 2

DIAGONAL = {"lru": lambda: cells.lru(3), "rtu": lambda: cells.rtu(3, activation="tanh")}


def _stream(key, n):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, IN)), jax.random.normal(ky, (n, OUT))


def _randomised_state(learner, key):
    state = learner.init(key)
    return state._replace(params=randomise(state.params, jax.random.fold_in(key, 1), scale=0.5))


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_snap1_is_exact_rtrl_on_diagonal_cells_while_learning(x64, name):
    """RTRL, SnAp-1's fast path and SnAp-1's generic path from the same randomised parameters (readout
    included), learning with SGD for T steps: same predictions, same gradient at every step, same parameters."""
    T, lr = 10, 0.05
    cell = DIAGONAL[name]()
    xs, ys = _stream(jax.random.PRNGKey(0), T)
    credits = {"rtrl": learners.rtrl_credit(cell), "fast": learners.snap1_credit(cell, fast=True),
               "generic": learners.snap1_credit(cell, fast=False)}
    runs = {}
    for label, credit in credits.items():
        learner = learners.build(label, cell, credit, IN, OUT, objectives.squared_error(), optax.sgd(lr))
        state = _randomised_state(learner, jax.random.PRNGKey(1))
        runs[label] = (state.params, *jax.jit(lambda s, learner=learner: scan_learner(learner, s, xs, ys))(state))
    start, final, infos = runs["rtrl"]
    for label in ("fast", "generic"):
        _, other_final, other_infos = runs[label]
        np.testing.assert_allclose(other_infos.prediction, infos.prediction, rtol=1e-9, atol=1e-12)
        assert max_rel_err(other_infos.grads, infos.grads) < 1e-9, label
        assert max_rel_err(other_final.params, final.params) < 1e-9, label
    # the two SnAp-1 paths keep the same influence (the fast one flat, the generic one as a tree)
    flat = split_trace(cell, start["cell"], runs["fast"][1].trace.influence)
    assert max_rel_err(flat, runs["generic"][1].trace.influence) < 1e-9
    assert float(jnp.max(jnp.abs(start["readout"]["w"]))) > 0.1
    assert max_rel_err(final.params["cell"], start["cell"]) > 1e-3  # it did learn
    summed = jax.tree.map(lambda g: jnp.sum(g, axis=0), infos.grads["cell"])
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(summed))  # every parameter gets credit


def test_diagonal_fast_path_forms_no_jacobian_of_the_state(monkeypatch):
    """Tracing SnAp-1's fast step on lru, rtu and a stack of them never calls jax.jacfwd or jax.jacrev (the
    generic path does, so the check can fail)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a whole-Jacobian transform was called")

    cases = [cells.lru(3), cells.rtu(2), cells.stack([cells.lru(2), cells.rtu(2)])]
    xs, ys = _stream(jax.random.PRNGKey(2), 1)
    built = {}
    for cell in cases:
        for fast in (True, False) if cell.name == "lru" else (True,):
            learner = learners.build("snap1", cell, learners.snap1_credit(cell, fast=fast), IN, OUT,
                                     objectives.squared_error(), optax.sgd(0.1))
            built[cell.name, fast] = (learner, jax.eval_shape(learner.init, jax.random.PRNGKey(3)))
    monkeypatch.setattr(jax, "jacfwd", refuse)
    monkeypatch.setattr(jax, "jacrev", refuse)
    for (name, fast), (learner, state) in built.items():
        if fast:
            jax.make_jaxpr(learner.step)(state, xs[0], ys[0])
        else:
            with pytest.raises(AssertionError, match="whole-Jacobian"):
                jax.make_jaxpr(learner.step)(state, xs[0], ys[0])


# ------------------------------------------------------------------------------------------------- stacks


def _stack():
    return cells.stack([cells.lru(2), cells.rtu(2, activation="tanh")])


def test_rtrl_on_a_stack_equals_jax_grad_of_the_layers_unrolled(x64):
    """Zero step size: the summed RTRL gradients equal jax.grad of the summed loss, the reference running
    layer 1 over the whole sequence, then layer 2 over layer 1's outputs."""
    T = 8
    cell = _stack()
    learner = learners.rtrl(cell, IN, OUT, objectives.squared_error(), optax.sgd(0.0))
    state = _randomised_state(learner, jax.random.PRNGKey(4))
    xs, ys = _stream(jax.random.PRNGKey(5), T)
    _, infos = jax.jit(lambda s: scan_learner(learner, s, xs, ys))(state)

    def loss(params):
        u = xs
        for layer, p in zip(cell.layers, params["cell"]):
            u = jax.lax.scan(lambda c, x, layer=layer, p=p: layer.apply(p, c, x), layer.initial_carry(p), u)[1]
        preds = jax.vmap(lambda h: linear(params["readout"], h))(u)
        return 0.5 * jnp.sum((preds - ys) ** 2)

    reference = jax.jit(jax.grad(loss))(state.params)
    assert max_rel_err(jax.tree.map(lambda g: jnp.sum(g, axis=0), infos.grads), reference) < 1e-9


def test_snap1_on_a_stack_is_rtrl_with_the_cross_layer_blocks_zeroed(x64):
    """Reference: RTRL's recursion on the flattened stack, J_t = M o (D_t + A_t J_{t-1}), where the mask M keeps
    d carry^l / d theta^k only for k == l (same layer), and RTRL's gradient
    dL/dtheta = dh (d g / d theta + d g / d s_{t-1} J_{t-1}) with g the stack's output as a function of the
    parameters and the previous carry. SnAp-1's gradient (and the readout's) equals it at every step; full RTRL
    carries non-zero cross-layer blocks, and they change the gradient."""
    T = 7
    cell = _stack()
    snap = learners.snap1(cell, IN, OUT, objectives.squared_error(), optax.sgd(0.0))
    state = _randomised_state(snap, jax.random.PRNGKey(6))
    xs, ys = _stream(jax.random.PRNGKey(7), T)
    _, infos = jax.jit(lambda s: scan_learner(snap, s, xs, ys))(state)

    params = state.params
    theta, unravel_theta = ravel_pytree(params["cell"])
    s, unravel_s = ravel_pytree(cell.initial_carry(params["cell"]))
    layer_of_theta = ravel_pytree(tuple(jax.tree.map(lambda a, l=l: jnp.full(a.shape, float(l)), p)
                                        for l, p in enumerate(params["cell"])))[0]
    layer_of_s = ravel_pytree(tuple(jax.tree.map(lambda a, l=l: jnp.full(a.shape, float(l)), c)
                                    for l, c in enumerate(cell.initial_carry(params["cell"]))))[0]
    mask = np.asarray(layer_of_s)[:, None] == np.asarray(layer_of_theta)[None, :]
    assert mask.sum() < mask.size  # there are cross-layer blocks to drop

    @jax.jit
    def rtrl_step(s, x, y, j_prev):
        def f(th, s_):
            carry, h = cell.apply(unravel_theta(th), unravel_s(s_), x)
            return ravel_pytree(carry)[0], h

        (s_t, h), f_vjp = jax.vjp(f, theta, s)
        dh = (linear(params["readout"], h) - y) @ params["readout"]["w"]
        g_theta, g_s = f_vjp((jnp.zeros_like(s_t), dh))
        a = jax.jacfwd(lambda s_: f(theta, s_)[0])(s)
        d = jax.jacrev(lambda th: f(th, s)[0])(theta)
        return s_t, linear(params["readout"], h), g_theta + g_s @ j_prev, d + a @ j_prev

    j_masked = jnp.zeros(mask.shape)
    j_full = jnp.zeros(mask.shape)
    differs = []
    for t in range(T):
        s_next, y, g_ref, j_new = rtrl_step(s, xs[t], ys[t], j_masked)
        _, _, g_full, j_full = rtrl_step(s, xs[t], ys[t], j_full)
        s, j_masked = s_next, mask * j_new
        got = jax.tree.map(lambda g: g[t], infos.grads)
        np.testing.assert_allclose(infos.prediction[t], y, rtol=1e-12)  # the forward pass is the stack's
        np.testing.assert_allclose(ravel_pytree(got["cell"])[0], g_ref, rtol=1e-9, atol=1e-12)
        differs.append(float(jnp.max(jnp.abs(g_full - g_ref)) / jnp.max(jnp.abs(g_ref))))
    assert float(jnp.max(jnp.abs(j_full * ~mask))) > 1e-3  # RTRL's cross-layer influence is not zero...
    assert max(differs) > 1e-3  # ...and it changes the gradient: that is what the scheme drops
    assert differs[0] == 0.0  # at the first step there is no earlier step to drop a path through

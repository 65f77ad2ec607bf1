"""``batching.batch_last`` equals ``jax.vmap`` (run axis last): each rule on small programs, every learner of
the shared suite, every stream, and the runner's step (float64, rtol 1e-12)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_envs import CONFIGS as STREAM_CONFIGS
from test_learner_suite import CASES, IN, OUT, _ids, _make

from online_rnn import envs
from online_rnn.batching import SMALL_CONTRACTION, TREE_SUM, batch_last

N = 3  # runs


def assert_like_vmap(fn, *args, in_axes=0):
    """``batch_last(fn)`` on the arguments with their run axis moved last equals ``vmap(fn)`` (run axis 0)."""
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    want = jax.jit(jax.vmap(fn, in_axes=axes))(*args)
    last = [a if ax is None else jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), a) for a, ax in zip(args, axes)]
    got = jax.jit(batch_last(fn, in_axes=tuple(None if ax is None else -1 for ax in axes)))(*last)
    got = jax.tree.map(lambda x: jnp.moveaxis(x, -1, 0), got)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype
        if jnp.issubdtype(w.dtype, jnp.inexact):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12, atol=1e-14)
        else:
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def rnd(key, *shape):
    return jax.random.normal(jax.random.PRNGKey(key), (N,) + shape)


# -------------------------------------------------------------------------------------------------- rules


def test_elementwise_broadcasts_shared_and_scalar_operands(x64):
    w = jnp.arange(4.0)  # shared

    def f(x, s):
        y = jnp.tanh(x * w + s) - jax.nn.sigmoid(x) ** 2 / (1.0 + s * s)
        return jnp.where(s > 0, y, -y), jnp.where(x > 0.5, 1, 0), jnp.clip(x, -s, s), jnp.maximum(y, 0.1)

    assert_like_vmap(f, rnd(0, 4), rnd(1))


def test_structural_primitives(x64):
    def f(x):
        a = x.reshape(2, 6).T[::2]  # reshape, transpose, strided slice
        b = jnp.concatenate([x[:3], jnp.zeros(2), x[-2:]])
        c = jnp.stack([x[:4], x[4:8]], axis=-1)
        d, e = jnp.split(x, [5])
        g = jnp.pad(x, (1, 2), constant_values=3.0)
        h = jnp.cumsum(x) + jnp.cumprod(1.0 + 0.1 * x)
        return a, b, c, d.sum(), e.max(), jnp.argmax(x), g, h, jnp.sort(x), x[None, :, None] + jnp.ones((2, 1, 1))

    assert_like_vmap(f, rnd(2, 12))


@pytest.mark.parametrize("sizes", [(3, 4, 5), (2, 70, 3), (40, 40, 40)], ids=["sum", "tree-sum", "dot"])
def test_dot_general_every_batching(x64, sizes):
    m, k, n = sizes
    form = "dot" if m * k * n > SMALL_CONTRACTION else "tree-sum" if k >= TREE_SUM else "sum"
    assert form == {(3, 4, 5): "sum", (2, 70, 3): "tree-sum", (40, 40, 40): "dot"}[sizes]  # each form is exercised
    shared = jax.random.normal(jax.random.PRNGKey(9), (k, n))

    def f(a, b, v):
        return (a @ b, a @ shared, shared.T @ a.T, a @ v, jnp.einsum("ik,jk->ij", a, b.T),
                jnp.einsum("bij,bjk->bik", jnp.stack([a, a]), jnp.stack([b, b])),
                jnp.einsum("ki,kj->ij", a.T, b), jnp.einsum("kj,ik->ji", b, a))  # contracted before free axes

    assert_like_vmap(f, rnd(3, m, k), rnd(4, k, n), rnd(5, k))


def test_indexing_with_shared_and_per_run_indices(x64):
    idx = jnp.array([2, 0, 3])

    def f(x, i):
        gathered = x[idx] + x[jnp.arange(2), jnp.arange(2)].sum()
        scattered = x.at[idx].set(1.0).at[1].add(x[0, 0])
        dyn = jax.lax.dynamic_slice(x, (i, 0), (2, 4)) + jax.lax.dynamic_slice_in_dim(x, 1, 2, axis=0)
        upd = jax.lax.dynamic_update_slice(x, jnp.ones((1, 4)), (2, 0))
        return gathered, scattered, dyn, upd, x[i], x.at[i].set(0.0)

    assert_like_vmap(f, rnd(6, 5, 4), jnp.array([0, 3, 1]))


def test_control_flow_and_calls(x64):
    def f(x, flag):
        def body(carry, xt):  # the carry starts shared (zeros) and becomes per-run inside
            return carry * 0.5 + xt, carry.sum()

        carry, ys = jax.lax.scan(body, jnp.zeros(3), x)
        shared_cond = jax.lax.cond(True, lambda v: v + 1.0, lambda v: v - 1.0, carry)
        run_cond = jax.lax.cond(flag > 0, lambda v: v * 2.0, lambda v: -v, carry)
        loop = jax.lax.fori_loop(0, 3, lambda i, v: v * 1.5 + i, carry)
        stop = jax.lax.while_loop(lambda v: v[0] < 4.0 + flag, lambda v: v + 1.0, jnp.abs(carry))
        return carry, ys, shared_cond, run_cond, loop, stop, jax.jit(jax.nn.relu)(x), jax.nn.softplus(x)

    assert_like_vmap(f, rnd(7, 4, 3), jnp.array([1.0, -1.0, 2.0]))


def test_random_bits_from_per_run_keys(x64):
    def f(key, x):
        return jax.random.normal(key, (3,)) + x, jax.random.rademacher(jax.random.fold_in(key, 1), (2,))

    assert_like_vmap(f, jax.random.split(jax.random.PRNGKey(0), N), rnd(8, 3))


def test_bad_in_axes_are_one_line_errors():
    with pytest.raises(ValueError, match="in_axes entries must be -1 or None"):
        batch_last(lambda x: x, in_axes=0)(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="share one trailing run axis"):
        batch_last(lambda x, y: x + y)(jnp.ones((2, 3)), jnp.ones((2, 4)))


# ------------------------------------------------------------------------------------------ learners, streams


def runs_from_one(state):
    """N distinct runs from one initial state (float leaves scaled per run): cheaper than N inits, which would
    compile or dispatch the whole initialisation."""

    def spread(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.stack([x * (1.0 + 0.1 * r) for r in range(N)])
        return jnp.stack([x] * N)

    return jax.tree.map(spread, state)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_learner_step_equals_vmap(x64, case):
    name, kw = case
    learner = _make(name, kw)
    states = runs_from_one(learner.init(jax.random.PRNGKey(2)))
    rng = np.random.default_rng(3)
    xs, ys = rng.normal(size=(N, 4, IN)), rng.normal(size=(N, 4, OUT))

    def run(state, xs, ys):
        return jax.lax.scan(lambda s, xy: learner.step(s, *xy), state, (xs, ys))

    # the time axis of xs/ys is scanned inside: run axis first for vmap, last for batch_last
    assert_like_vmap(run, states, xs, ys)


@pytest.mark.parametrize("config", list(STREAM_CONFIGS))
def test_every_stream_step_equals_vmap(x64, config):
    name, kwargs = STREAM_CONFIGS[config]
    env, params = envs.make(name, **kwargs)

    def run(key):
        _, state = env.reset(key, params)

        def body(state, k):
            obs, state, signal, info = env.step(k, state, params)
            state = env.feedback(state, params, jnp.zeros((env.signal_size,)) + 0.5)
            return state, (obs, signal, info)

        return jax.lax.scan(body, state, jax.random.split(key, 30))

    assert_like_vmap(run, jax.random.split(jax.random.PRNGKey(4), N))

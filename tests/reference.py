"""Reference computations for the tests: unrolled losses differentiated with ``jax.grad``."""

import jax
import jax.numpy as jnp


def unroll(cell, cell_params, xs, carry=None):
    """Hidden outputs h_1..h_T of ``cell`` over ``xs`` from ``carry`` (initial carry by default)."""
    if carry is None:
        carry = cell.initial_carry(cell_params)

    def body(c, x):
        c, h = cell.apply(cell_params, c, x)
        return c, h

    return jax.lax.scan(body, carry, xs)[1]


def linear(readout, h):
    return readout["w"] @ h + readout["b"]


def randomise(params, key, scale=0.5):
    """Replace every parameter with random values (so that every gradient entry is exercised)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    new = [scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, new)


def scan_learner(learner, state, xs, signals):
    """Run ``learner.step`` over a stream in one scan; returns (final state, stacked infos)."""
    return jax.lax.scan(lambda s, xy: learner.step(s, *xy), state, (xs, signals))


def max_rel_err(a, b):
    """max over leaves of max|a - b| / max(max|b|, tiny)."""
    errs = jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-300), a, b)
    return float(max(jax.tree.leaves(errs)))

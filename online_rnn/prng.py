"""Cheap per-step random numbers for compiled runs.

On the CPU backend, JAX lowers its Threefry-2x32 hash to a rolled loop (to keep compile times down), so every
``jax.random.fold_in`` / ``jax.random.bits`` inside a scanned step becomes a small nested while loop with a
dispatch cost far above its arithmetic. Streams and learners draw a few words per step, so that cost
dominated a whole run. This module computes the same hash (Threefry-2x32, 20 rounds; Salmon et al. 2011,
"Parallel random numbers: as easy as 1, 2, 3") unrolled in plain ``jnp`` operations, which XLA fuses with the
code around it on every backend.

``fold_in(key, data)`` and ``bits(key, n)`` accept raw ``uint32[2]`` keys (``jax.random.PRNGKey``) and typed
Threefry keys (``jax.random.key``) and return the same kind. Their outputs differ from ``jax.random``'s (a
different counter layout) but have the same statistical quality; every stream stays a pure function of its key.
Keys of other PRNG implementations fall back to ``jax.random``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 block function (20 rounds) on uint32 arrays, fully unrolled."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _raw(key: jax.Array) -> tuple[jax.Array, bool]:
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(key) if typed else key
    return data, typed


def _is_threefry(key: jax.Array) -> bool:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return "threefry" in str(jax.random.key_impl(key))
    return key.dtype == jnp.uint32 and key.shape[-1:] == (2,)


def fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    """A new key from ``key`` and an integer ``data`` (e.g. the step counter)."""
    if not _is_threefry(key):
        return jax.random.fold_in(key, data)
    raw, typed = _raw(key)
    d = jnp.asarray(data).astype(jnp.uint32)
    y0, y1 = threefry2x32(raw[..., 0], raw[..., 1], jnp.zeros_like(d) + np.uint32(0x9E3779B9), d)
    out = jnp.stack([y0, y1], axis=-1)
    return jax.random.wrap_key_data(out) if typed else out


def bits(key: jax.Array, n: int) -> jax.Array:
    """``n`` random uint32 words from ``key``."""
    if not _is_threefry(key):
        return jax.random.bits(key, (n,), jnp.uint32)
    raw, _ = _raw(key)
    half = (n + 1) // 2
    counter = jnp.arange(half, dtype=jnp.uint32)
    y0, y1 = threefry2x32(raw[0], raw[1], counter, counter ^ np.uint32(0xA5A5A5A5))
    return jnp.concatenate([y0, y1])[:n]


def signs(key: jax.Array, n: int, dtype: Any = jnp.float32) -> jax.Array:
    """``n`` independent random signs (+1 or -1, each with probability 1/2) from ``ceil(n / 32)`` words: one bit
    per sign."""
    words = bits(key, -(-n // 32))
    # broadcast and slice, not a gather of words[i // 32]: XLA's CPU compiler took minutes on that gather once
    # it read two or more words of the hash (n > 32)
    shifts = jnp.arange(32, dtype=jnp.uint32)
    bit = ((words[:, None] >> shifts[None, :]) & np.uint32(1)).reshape(-1)[:n]
    return jnp.where(bit == 1, 1.0, -1.0).astype(dtype)

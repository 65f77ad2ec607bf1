"""The unrolled Threefry of ``online_rnn.prng``: known answers, JAX's own Threefry, and the random signs."""

import jax
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np

from online_rnn import prng


def test_threefry_known_answers_and_jax_agree():
    """The Random123 known-answer vectors of Threefry-2x32 (20 rounds), and JAX's implementation on random
    keys and counters."""
    known = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
             ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
             ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
    for key, count, want in known:
        got = prng.threefry2x32(*(jnp.uint32(v) for v in key + count))
        assert tuple(int(x) for x in got) == want
    words = jax.random.bits(jax.random.PRNGKey(0), (4, 64), jnp.uint32)
    ours = prng.threefry2x32(words[0], words[1], words[2], words[3])
    theirs = jax_random.threefry_2x32(jnp.stack([words[0], words[1]]), jnp.stack([words[2], words[3]]))
    np.testing.assert_array_equal(np.stack(ours), np.asarray(theirs))


def test_signs_are_fair_independent_and_key_dependent():
    n, draws = 40, 4000
    keys = jax.vmap(lambda t: prng.fold_in(jax.random.PRNGKey(3), t))(jnp.arange(draws))
    s = np.asarray(jax.vmap(lambda k: prng.signs(k, n))(keys))
    assert s.shape == (draws, n) and set(np.unique(s)) == {-1.0, 1.0}
    se = 1.0 / np.sqrt(draws)  # of a mean of draws independent signs
    assert np.all(np.abs(s.mean(0)) < 5 * se)  # each position fair
    assert np.all(np.abs((s[:, 1:] * s[:, :-1]).mean(0)) < 5 * se)  # neighbours (also across words) uncorrelated
    assert abs(float((s[1:] * s[:-1]).mean())) < 5 * se / np.sqrt(n)  # consecutive keys uncorrelated
    assert not np.array_equal(s[0], s[1])

"""Tests of the benchmark streams: the contract, the published statistics, the exact return.

Statistical tests use long streams (``lax.scan`` over steps, ``vmap`` over keys) and compare each estimate
with its expected value within 5 standard errors: a correct stream fails one such check with probability
< 1e-6, and the keys are fixed, so the suite is deterministic. Exactness checks run in float64.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from online_rnn import cells, learners, objectives
from online_rnn import envs
from online_rnn.envs import add_task, animal, copy_task, influence_balancing
from online_rnn.objectives import Target

CONFIGS = {
    "trace_conditioning": ("trace_conditioning", {}),
    "trace_patterning": ("trace_patterning", {}),
    "trace_patterning_ccn": ("trace_patterning", {"variant": "ccn"}),
    "noisy_patterning": ("noisy_patterning", {}),
    "add_task": ("add_task", {}),
    "add_task_sampled": ("add_task", {"target": "sampled"}),
    "copy_task": ("copy_task", {}),
    "influence_balancing": ("influence_balancing", {}),
}
ANIMAL = ["trace_conditioning", "trace_patterning", "trace_patterning_ccn", "noisy_patterning"]
N_SEEDS, N_STEPS = 8, 20_000  # statistics: about 1,200-1,500 trials per animal stream
SE = 5.0  # tolerance in standard errors
IDENTITY = learners.Options(readout="identity")


@pytest.fixture(scope="module", autouse=True)
def _float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


_MADE: dict = {}


def make(config: str):
    """One env object per config and float mode, so that compiled rollouts are reused across tests."""
    name, kwargs = CONFIGS[config]
    cache_key = (config, bool(jax.config.jax_enable_x64))
    if cache_key not in _MADE:
        _MADE[cache_key] = envs.make(name, **kwargs)
    return _MADE[cache_key]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def rollout(env, params, key, n_steps, n_seeds):
    """Stream outputs of shape (n_seeds, n_steps, ...) and the final states, in one jitted vmapped scan."""

    def one(key):
        k_reset, k_steps = jax.random.split(key)
        _, state = env.reset(k_reset, params)

        def body(state, k):
            obs, state, signal, info = env.step(k, state, params)
            return state, (obs, signal, info)

        state, out = jax.lax.scan(body, state, jax.random.split(k_steps, n_steps))
        return out, state

    return jax.vmap(one)(jax.random.split(key, n_seeds))


@pytest.fixture(scope="module")
def animal_runs(_float64):
    """Long rollouts of every animal-learning stream, shared by the statistics and return tests."""
    runs = {}
    for i, config in enumerate(ANIMAL):
        env, params = make(config)
        (obs, signal, info), state = rollout(env, params, jax.random.key(100 + i), N_STEPS, N_SEEDS)
        runs[config] = dict(
            env=env,
            params=params,
            obs=np.asarray(obs),
            signal=np.asarray(signal),
            info={k: np.asarray(v) for k, v in info.items()},
            patterns=np.asarray(state.patterns),
        )
    return runs


_STEPS = {}  # one jitted step per env, reused


def jitted_step(env):
    if env not in _STEPS:
        _STEPS[env] = jax.jit(env.step)
    return _STEPS[env]


def within(estimate, expected, standard_error, what):
    assert abs(estimate - expected) <= SE * standard_error, (
        f"{what}: {estimate:.5f} vs expected {expected:.5f} (5 SE = {SE * standard_error:.5f})"
    )


def check_rate(successes, trials, p, what):
    trials = max(int(trials), 1)
    within(successes / trials, p, math.sqrt(p * (1 - p) / trials), what)


def check_uniform_mean(values, lo, hi, what):
    values = np.asarray(values)
    assert values.min() >= lo and values.max() <= hi, f"{what} outside [{lo}, {hi}]: {values.min()}..{values.max()}"
    assert set(np.unique(values)) == set(range(lo, hi + 1)), f"{what}: not every value of {lo}..{hi} occurs"
    sd = math.sqrt(((hi - lo + 1) ** 2 - 1) / 12.0)
    within(values.mean(), (lo + hi) / 2.0, sd / math.sqrt(len(values)), f"mean {what}")


def rising(x):
    """Indices t where x[t] is on and x[t-1] was off (t = 0 counts as rising)."""
    x = np.asarray(x, bool)
    prev = np.concatenate([[False], x[:-1]])
    return np.flatnonzero(x & ~prev)


def run_lengths(x):
    """Lengths of the complete runs of ones (runs touching the end are left out)."""
    x = np.asarray(x, bool)
    starts, lengths, t = rising(x), [], 0
    for s in starts:
        t = s
        while t < len(x) and x[t]:
            t += 1
        if t < len(x):
            lengths.append(t - s)
    return np.asarray(lengths)


def trial_offsets(trial_start):
    """Offset of every step within its trial (-1 before the first trial)."""
    starts = np.flatnonzero(trial_start)
    idx = np.searchsorted(starts, np.arange(len(trial_start)), side="right") - 1
    return np.where(idx >= 0, np.arange(len(trial_start)) - starts[np.maximum(idx, 0)], -1)


def backward_returns(signal, gamma):
    """Brute force G_t = c_{t+1} + gamma G_{t+1} over a stored stream (G = 0 past its end), batched."""
    g = np.zeros_like(signal)
    acc = np.zeros(signal.shape[0])
    for t in range(signal.shape[1] - 1, -1, -1):
        g[:, t] = acc
        acc = signal[:, t] + gamma * acc
    return g


# --------------------------------------------------------------------------------------------- contract


def test_registry_names_and_make_errors():
    assert envs.names() == sorted(
        ["add_task", "copy_task", "influence_balancing", "noisy_patterning", "trace_conditioning", "trace_patterning"]
    )
    with pytest.raises(ValueError, match="unknown name 'nope'.*trace_patterning"):
        envs.make("nope")
    with pytest.raises(ValueError, match="unknown argument 'n_cs'.*lags"):
        envs.make("add_task", n_cs=3)
    with pytest.raises(ValueError, match="unknown variant 'bogus'.*ccn"):
        envs.make("trace_patterning", variant="bogus")
    with pytest.raises(ValueError, match="n_patterns"):
        envs.make("trace_patterning", n_patterns=21)
    with pytest.raises(ValueError, match="isi_range"):
        envs.make("trace_conditioning", isi_range=(5, 3))
    with pytest.raises(ValueError, match="max_length"):
        envs.make("copy_task", max_length=0)
    with pytest.raises(ValueError, match="target"):
        envs.make("add_task", target="hard")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_attributes_shapes_and_dtypes_are_stable(config):
    env, params = make(config)
    assert env.kind in ("prediction", "supervised")
    assert env.default_objective in objectives.names()
    obs, state = jax.jit(env.reset)(jax.random.key(0), params)
    assert obs.shape == (env.observation_size,) and obs.dtype == jnp.float64
    spec = lambda tree: jax.tree.map(lambda x: (jnp.shape(x), jnp.asarray(x).dtype), tree)  # noqa: E731
    step = jitted_step(env)
    first = spec(state)
    for t in range(3):
        obs, state, signal, info = step(jax.random.key(t + 1), state, params)
        state = env.feedback(state, params, jnp.zeros((1,)))
        assert spec(state) == first
        assert obs.shape == (env.observation_size,) and obs.dtype == jnp.float64
    if env.kind == "prediction":
        assert env.signal_size == 1 and signal.shape == () and signal.dtype == jnp.float64
        assert env.gamma == pytest.approx(float(params.gamma))
        assert info["return"].dtype == jnp.float64
    else:
        value = signal.value if isinstance(signal, Target) else signal
        assert value.shape == (env.signal_size,) and value.dtype == jnp.float64
        assert env.gamma is None
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.float64, jnp.int32, jnp.bool_), leaf.dtype


@pytest.mark.parametrize("config", ["trace_conditioning", "add_task", "copy_task"])
def test_float32_when_x64_is_off(config):
    def observations():
        env, params = make(config)
        _, state = jax.jit(env.reset)(jax.random.key(0), params)
        step, seen = jitted_step(env), []
        for k in jax.random.split(jax.random.key(1), 150):
            obs, state, signal, info = step(k, state, params)
            seen.append(np.asarray(obs))
        return np.stack(seen), (obs, signal, info, state)

    jax.config.update("jax_enable_x64", False)
    try:
        obs32, (obs, signal, info, state) = observations()
        assert obs.dtype == jnp.float32
        floats = [x for x in jax.tree.leaves((signal, info, state)) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float32 for x in floats)
    finally:
        jax.config.update("jax_enable_x64", True)
    if config in ANIMAL:  # their random draws are made from uint32 words: the same stream in both modes
        np.testing.assert_array_equal(obs32, observations()[0])


# noisy_patterning runs the same code path as trace_patterning (the eager run is the slow part of this test).
@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "noisy_patterning"])
def test_jit_equals_no_jit(config):
    env, params = make(config)
    keys = jax.random.split(jax.random.key(7), 8)

    def run(step):
        _, state = env.reset(jax.random.key(3), params)
        out = []
        for k in keys:
            obs, state, signal, info = step(k, state, params)
            state = env.feedback(state, params, jnp.ones((1,)))
            out.append((obs, signal, info, state))
        return out

    for a, b in zip(run(env.step), run(jitted_step(env))):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_same_key_same_stream_and_vmap_equals_a_run_per_key(config, request):
    env, params = make(config)
    # The animal streams reuse the compiled rollout of the statistics fixture.
    n_steps, n_seeds, key = (N_STEPS, N_SEEDS, jax.random.key(100 + ANIMAL.index(config))) if config in ANIMAL else (
        200, 3, jax.random.key(11)
    )
    if config in ANIMAL:  # the fixture's rollout; the per-key runs below replay its keys
        o1 = request.getfixturevalue("animal_runs")[config]["obs"]
    else:
        (o1, s1, i1), _ = rollout(env, params, key, n_steps, n_seeds)
        (o2, s2, i2), _ = rollout(env, params, key, n_steps, n_seeds)
        same = lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # noqa: E731
        jax.tree.map(same, (o1, s1, i1), (o2, s2, i2))
    if config != "influence_balancing":  # its observations do not depend on the key
        assert not np.array_equal(np.asarray(o1[0]), np.asarray(o1[1]))  # different keys, different streams
    # vmap over keys == one run per key (rebuilding rollout's key splits by hand), on the first 20 steps.
    step = jitted_step(env)
    for b, seed_key in enumerate(jax.random.split(key, n_seeds)[:2]):
        k_reset, k_steps = jax.random.split(seed_key)
        _, state = env.reset(k_reset, params)
        obs_b = []
        for k in jax.random.split(k_steps, n_steps)[:20]:
            obs, state, _, _ = step(k, state, params)
            obs_b.append(obs)
        np.testing.assert_array_equal(np.asarray(o1[b, :20]), np.stack(obs_b))


# ---------------------------------------------------------------------------------- animal learning: return


@pytest.mark.parametrize("config", ANIMAL)
def test_return_equals_brute_force_discounted_sum(animal_runs, config):
    run = animal_runs[config]
    gamma = float(run["params"].gamma)
    g = backward_returns(run["signal"], gamma)
    horizon = int(math.ceil(math.log(1e-18) / math.log(gamma)))  # the brute force's own truncation is < 1e-18
    np.testing.assert_allclose(run["info"]["return"][:, :-horizon], g[:, :-horizon], rtol=0, atol=1e-9)
    assert run["info"]["return"].max() > 0.5
    # trial_return: the same sum restricted to the current trial's US.
    start = run["info"]["trial_start"]
    tr = np.zeros_like(g)
    acc = np.zeros(g.shape[0])
    for t in range(g.shape[1] - 1, -1, -1):
        tr[:, t] = acc
        acc = np.where(start[:, t], 0.0, run["signal"][:, t] + gamma * acc)
    np.testing.assert_allclose(run["info"]["trial_return"][:, :-horizon], tr[:, :-horizon], rtol=0, atol=1e-12)


@pytest.mark.parametrize("config", ANIMAL)
def test_default_lookahead_leaves_out_less_than_1e12(config):
    env, params = make(config)
    assert env.return_tail_bound(params) < animal.RETURN_TAIL_TOLERANCE
    lay = env.layout
    min_len = int(params.isi_min) + int(params.iti_min) + lay.trial_extra
    bound_one_less = animal.return_tail_bound(env.lookahead - 1, float(params.gamma), min_len, int(params.isi_min))
    assert env.lookahead == 2 or bound_one_less >= animal.RETURN_TAIL_TOLERANCE


def test_ccn_trial_return_is_gamma_power_to_the_us(animal_runs):
    info = animal_runs["trace_patterning_ccn"]["info"]
    for b in range(N_SEEDS):
        offset = trial_offsets(info["trial_start"][b])
        r = info["isi"][b] - offset  # steps remaining to this trial's US
        expected = np.where(info["is_pattern"][b] & (r > 0), 0.9 ** (r - 1.0), 0.0)
        np.testing.assert_allclose(info["trial_return"][b], expected, rtol=1e-12, atol=0)


def test_params_sweep_by_vmap_over_gamma():
    """A sweep over params (here gamma) is a vmap of the same compiled step: same stream, per-run returns."""
    env, params = make("trace_conditioning")
    gammas = jnp.array([0.8, 0.9])
    swept = jax.tree.map(lambda x: jnp.stack([x, x]), params).replace(gamma=gammas)
    (obs, signal, info), _ = jax.vmap(lambda p: rollout(env, p, jax.random.key(9), 600, 1))(swept)
    np.testing.assert_array_equal(obs[0], obs[1])
    for i, gamma in enumerate([0.8, 0.9]):
        g = backward_returns(np.asarray(signal[i]), gamma)
        np.testing.assert_allclose(np.asarray(info["return"][i])[:, :300], g[:, :300], rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- animal learning: statistics


def test_trace_conditioning_statistics(animal_runs):
    run = animal_runs["trace_conditioning"]
    isis, itis, d_on, d_eligible = [], [], np.zeros(10), np.zeros(10)
    for b in range(N_SEEDS):
        obs = run["obs"][b] > 0
        us, cs = obs[:, 0], obs[:, 1]
        cs_on, us_on = rising(cs), rising(us)
        assert cs_on[0] == 0  # the first step starts the first trial
        assert set(run_lengths(cs)) == {4} and set(run_lengths(us)) == {2}
        # Every trial is reinforced, once, between its CS onset and the next.
        n = min(len(cs_on) - 1, len(us_on))
        assert np.all(us_on[:n] > cs_on[:n]) and np.all(us_on[:n] < cs_on[1 : n + 1])
        isis.append(us_on[:n] - cs_on[:n])
        itis.append(cs_on[1 : n + 1] - us_on[:n])
        np.testing.assert_array_equal(run["info"]["isi"][b][cs_on[:n]], us_on[:n] - cs_on[:n])
        for k in range(10):
            d = obs[:, 2 + k]
            assert set(run_lengths(d)) == {4}
            d_on[k] += np.sum(d[1:] & ~d[:-1])
            d_eligible[k] += np.sum(~d[:-1])
    check_uniform_mean(np.concatenate(isis), 7, 13, "ISI")
    check_uniform_mean(np.concatenate(itis), 80, 120, "ITI")
    for k in range(10):
        check_rate(d_on[k], d_eligible[k], 1.0 / (10 * (k + 1)), f"distractor {k + 1} onset rate when off")
    # US frequency: 2 US steps per trial of mean length 110 (variance 4 + 140); the number of trials in N steps
    # has variance N var / mean^3 (renewal central limit theorem).
    n_total = N_SEEDS * N_STEPS
    within(run["signal"].mean(), 2.0 / 110, 2.0 * math.sqrt(144.0 / 110**3 / n_total), "US frequency")


def _trial_table(run, b):
    """info, boolean observations and trial-start steps of seed b."""
    info, obs = run["info"], run["obs"][b] > 0
    starts = np.flatnonzero(info["trial_start"][b])
    return info, obs, starts


def test_trace_patterning_statistics(animal_runs):
    run = animal_runs["trace_patterning"]
    n_cs, n_d = 6, 5
    n_trials = n_pattern = n_not_half = 0
    d_on = np.zeros(n_d)
    isis, itis = [], []
    for b in range(N_SEEDS):
        patterns = run["patterns"][b]
        assert patterns.shape == (10, n_cs) and np.all(patterns.sum(1) == 3)
        assert len({tuple(p) for p in patterns}) == 10
        info, obs, starts = _trial_table(run, b)
        offset = trial_offsets(info["trial_start"][b])
        us, cs, dist = obs[:, 0], obs[:, 1 : 1 + n_cs], obs[:, 1 + n_cs :]
        assert not np.any(cs[offset >= 4]) and not np.any(dist[offset >= 4])
        for s, e in zip(starts[:-1], starts[1:]):
            shown = cs[s]
            assert np.all(cs[s : s + 4] == shown) and np.all(dist[s : s + 4] == dist[s])
            match = bool(np.any(np.all(patterns == shown, axis=1)))
            assert match == bool(info["is_pattern"][b][s])
            us_onsets = rising(us[s:e])
            if match:
                assert len(us_onsets) == 1 and np.all(us[s + us_onsets[0] : s + us_onsets[0] + 2])
                assert us_onsets[0] == info["isi"][b][s]
                isis.append(us_onsets[0])
            else:
                assert len(us_onsets) == 0 and not np.any(us[s:e])
            itis.append((e - s) - info["isi"][b][s])
            n_trials += 1
            n_pattern += match
            n_not_half += shown.sum() != 3
            d_on += dist[s]
    check_rate(n_pattern, n_trials, 0.5, "P(pattern)")
    # Shown outright with p = (64 * 0.5 - 10) / (64 - 10); otherwise a uniform random set, of size != 3 w.p. 44/64.
    p_show = (64 * 0.5 - 10) / (64 - 10)
    check_rate(n_not_half, n_trials, (1 - p_show) * 44 / 64, "P(shown set is not of size 3)")
    check_uniform_mean(itis, 80, 120, "ITI")
    for k in range(n_d):
        check_rate(d_on[k], n_trials, 0.5, f"distractor {k + 1} at CS onset")
    check_uniform_mean(isis, 7, 13, "ISI")


def test_trace_patterning_ccn_statistics(animal_runs):
    run = animal_runs["trace_patterning_ccn"]
    subsets = [tuple(int(i in c) for i in range(6)) for c in itertools.combinations(range(6), 3)]
    counts = dict.fromkeys(subsets, 0)
    n_trials = n_valid = 0
    isis, itis = [], []
    d_on, d_pairs, d_prev = np.zeros(5), np.zeros(5), np.zeros(5)
    for b in range(N_SEEDS):
        info, obs, starts = _trial_table(run, b)
        cs, us, dist = obs[:, :6], obs[:, 6], obs[:, 7:]
        valid_sets = {tuple(int(v) for v in p) for p in run["patterns"][b]}
        assert len(valid_sets) == 10 and all(sum(p) == 3 for p in valid_sets)
        # CSs are on only on trial-start steps, exactly 3 of them, for one step.
        assert np.all(cs.sum(1)[starts] == 3)
        off = np.ones(len(cs), bool)
        off[starts] = False
        assert not np.any(cs[off])
        assert set(run_lengths(us)) <= {1}
        seen_valid = set()
        for s, e in zip(starts[:-1], starts[1:]):
            shown = tuple(int(v) for v in cs[s])
            counts[shown] += 1
            valid = shown in valid_sets
            assert valid == bool(info["is_pattern"][b][s])
            us_steps = np.flatnonzero(us[s:e])
            if valid:
                seen_valid.add(shown)
                assert len(us_steps) == 1 and us_steps[0] == info["isi"][b][s]  # the US comes ISI steps later
                isis.append(us_steps[0])
            else:
                assert len(us_steps) == 0
            itis.append((e - s) - info["isi"][b][s] - 1)  # a trial is ISI + ITI + 1 steps
            n_trials += 1
            n_valid += valid
        assert seen_valid == valid_sets
        d_on += dist.sum(0)
        d_pairs += (dist[1:] & dist[:-1]).sum(0)
        d_prev += dist[:-1].sum(0)
    check_rate(n_valid, n_trials, 0.5, "P(valid)")
    for subset, count in counts.items():
        check_rate(count, n_trials, 1.0 / 20, f"frequency of CS set {subset}")
    check_uniform_mean(isis, 24, 36, "ISI")
    check_uniform_mean(itis, 80, 120, "ITI")
    n_steps = N_SEEDS * N_STEPS
    for k in range(5):
        p = 1.0 / (10 * (k + 1))
        check_rate(d_on[k], n_steps, p, f"distractor {k + 1} per-step rate")
        check_rate(d_pairs[k], d_prev[k], p, f"distractor {k + 1} rate after an on step (independence)")


def test_noisy_patterning_statistics(animal_runs):
    run = animal_runs["noisy_patterning"]
    n = {True: 0, False: 0}
    with_us = {True: 0, False: 0}
    for b in range(N_SEEDS):
        patterns = run["patterns"][b]
        assert patterns.shape == (1, 2) and patterns.sum() == 1
        info, obs, starts = _trial_table(run, b)
        us, cs = obs[:, 0], obs[:, 1:3]
        assert set(run_lengths(cs[:, 0])) <= {4} and set(run_lengths(us)) <= {2}
        for s, e in zip(starts[:-1], starts[1:]):
            match = bool(np.all(cs[s] == patterns[0]))
            assert match == bool(info["is_pattern"][b][s])
            onsets = rising(us[s:e])
            assert len(onsets) <= 1
            if len(onsets):
                assert onsets[0] == 4  # ISI = CS length: the US starts as the CS turns off
            n[match] += 1
            with_us[match] += len(onsets)
    check_rate(n[True], n[True] + n[False], 0.5, "P(pattern)")
    check_rate(with_us[True], n[True], 0.9, "P(US | pattern)")
    check_rate(with_us[False], n[False], 0.1, "P(US | non-pattern)")


# ------------------------------------------------------------------------------------------------ add task


def test_add_task_reference_cross_entropies_from_the_definition():
    h = add_task.binary_entropy
    p = {(a, b): 0.5 + 0.5 * a - 0.25 * b for a in (0, 1) for b in (0, 1)}  # (x_{t-5}, x_{t-9}) -> P(1)
    optimal = np.mean([h(v) for v in p.values()])
    t_minus_5 = np.mean([h(np.mean([p[(a, b)] for b in (0, 1)])) for a in (0, 1)])
    no_memory = h(np.mean(list(p.values())))
    ref = add_task.REFERENCE_CROSS_ENTROPY
    assert round(optimal, 3) == ref["optimal"] == 0.454
    assert round(t_minus_5, 3) == ref["t_minus_5"] == 0.519
    assert round(no_memory, 3) == ref["no_memory"] == 0.662


@pytest.mark.parametrize("config", ["add_task", "add_task_sampled"])
def test_add_task_targets_follow_the_lag_formula(config):
    env, params = make(config)
    n_seeds, n_steps = 4, 10_000
    (obs, signal, info), _ = rollout(env, params, jax.random.key(21), n_steps, n_seeds)
    obs, signal, p, x = (np.asarray(a) for a in (obs, signal, info["p"], info["x"]))
    np.testing.assert_array_equal(obs, np.stack([1 - x, x], -1))
    expected = 0.5 + 0.5 * x[:, 4:-5] - 0.25 * x[:, :-9]  # p_t for t >= 9 from x_{t-5}, x_{t-9}
    np.testing.assert_allclose(p[:, 9:], expected, rtol=0, atol=1e-15)
    check_rate(x.sum(), x.size, 0.5, "P(x = 1)")
    # The optimal predictor's mean loss: H(p_t) has SD 0.26 over 40,000 steps, SE < 0.004 even allowing for the
    # overlap of the lags between nearby steps, so 0.02 is a wide margin around the exact 0.4544.
    entropy = np.asarray(info["optimal_cross_entropy"])
    exact = np.mean([add_task.binary_entropy(v) for v in (0.5, 0.25, 1.0, 0.75)])
    assert abs(entropy.mean() - exact) < 0.02
    if config == "add_task":
        np.testing.assert_allclose(signal, np.stack([1 - p, p], -1), rtol=0, atol=0)
    else:
        assert set(np.unique(signal)) == {0.0, 1.0} and np.all(signal.sum(-1) == 1)
        for value in (0.25, 0.5, 0.75):
            sel = np.isclose(p, value)
            check_rate(signal[..., 1][sel].sum(), sel.sum(), value, f"sampled P(1) when p = {value}")
        assert np.all(signal[..., 1][np.isclose(p, 1.0)] == 1)


# ----------------------------------------------------------------------------------------------- copy task


POLICIES = {"perfect": 0, "always_wrong": 1, "coin": 2}


@functools.partial(jax.jit, static_argnums=(0, 3))
def copy_rollout(env, params, key, n_steps, policy):
    """Scan (step, feedback) with the logit of a perfect, an always-wrong or a coin-flipping predictor
    (``policy`` is traced, so the three share one compilation)."""

    def body(state, k):
        k_env, k_pred = jax.random.split(k)
        obs, state, signal, info = env.step(k_env, state, params)
        sign = jnp.where(info["target_bit"] > 0, 5.0, -5.0)
        logit = jnp.stack([sign, -sign, jax.random.normal(k_pred)])[policy]
        state = env.feedback(state, params, logit[None])
        return state, (obs, signal, info)

    _, state = env.reset(jax.random.key(0), params)
    return jax.lax.scan(body, state, jax.random.split(key, n_steps))


def test_copy_task_sequence_layout():
    env, params = envs.make("copy_task", initial_length=5, max_length=8)
    _, (obs, signal, info) = copy_rollout(env, params, jax.random.key(1), 600, POLICIES["coin"])
    obs, value, weight = np.asarray(obs), np.asarray(signal.value)[:, 0], np.asarray(signal.weight)
    starts = np.flatnonzero(obs[:, 0])
    assert starts[0] == 0 and np.all(np.diff(starts) == 12)  # L = 5: 2 L + 2 steps, no gap; coin never grows L
    bits_seen = []
    for s in starts[:-1]:
        seq = obs[s : s + 12]
        np.testing.assert_array_equal(seq[0], [1, 0, 0])
        np.testing.assert_array_equal(seq[1:6, :2], 0)
        np.testing.assert_array_equal(seq[6], [0, 1, 0])
        np.testing.assert_array_equal(seq[7:], 0)
        np.testing.assert_array_equal(weight[s : s + 12], [0] * 7 + [1] * 5)
        np.testing.assert_array_equal(value[s + 7 : s + 12], seq[1:6, 2])  # the bits, in order
        np.testing.assert_array_equal(value[s : s + 7], 0)
        np.testing.assert_array_equal(np.asarray(info["output_step"])[s : s + 12], weight[s : s + 12] > 0)
        bits_seen.append(seq[1:6, 2])
    check_rate(np.sum(bits_seen), np.size(bits_seen), 0.5, "P(bit = 1)")
    assert np.all(np.asarray(info["length"]) == 5)


def test_copy_task_curriculum_grows_on_perfect_predictions_only():
    env, params = envs.make("copy_task", max_length=6)
    state, (obs, _, info) = copy_rollout(env, params, jax.random.key(2), 3000, POLICIES["perfect"])
    length = np.asarray(info["length"])
    starts = np.flatnonzero(np.asarray(info["sequence_start"]))
    # L changes only at sequence starts, by +1, up to max_length.
    changes = np.flatnonzero(np.diff(length)) + 1
    assert set(changes) <= set(starts)
    assert np.all(np.diff(length) >= 0) and np.all(np.diff(length) <= 1)
    assert length[0] == 1 and length[-1] == 6
    # With perfect copies the average restarts at 0.5 and needs 16 sequences to fall below 0.1
    # (0.5 * 0.9^15 = 0.103, 0.5 * 0.9^16 = 0.093), so every length is used for exactly 16 sequences.
    seq_lengths = length[starts]
    for L in range(1, 6):
        assert np.sum(seq_lengths == L) == 16
    np.testing.assert_array_equal(np.asarray(info["bit_error"])[starts[1:]], 0.0)
    for policy in ("always_wrong", "coin"):
        state, (_, _, info) = copy_rollout(env, params, jax.random.key(3), 3000, POLICIES[policy])
        assert np.all(np.asarray(info["length"]) == 1)
        assert float(state.error_average) > 0.1
    # bits per character over output steps.
    losses = jnp.array([0.0, math.log(2.0), 2 * math.log(2.0), 5.0])
    assert float(copy_task.bits_per_character(losses, jnp.array([False, True, True, False]))) == pytest.approx(1.5)


# ------------------------------------------------------------------------------------- influence balancing


def test_influence_balancing_fixed_point_and_optimal_theta():
    n, n_pos = 23, 10
    assert influence_balancing.optimal_theta(n, n_pos) == pytest.approx(-1.0 / 6.0)
    a = influence_balancing.transition_matrix(n)
    s = jax.random.normal(jax.random.key(0), (n,))
    np.testing.assert_allclose(influence_balancing.transition(s), a @ s, rtol=1e-15)
    sigma = influence_balancing.signs(n, n_pos)
    for theta in (0.5, -0.3):
        solved = jnp.linalg.solve(jnp.eye(n) - a, theta * sigma)
        np.testing.assert_allclose(influence_balancing.fixed_point(theta, n, n_pos), solved, rtol=1e-12)
    assert float(influence_balancing.fixed_point(0.5)[0]) == pytest.approx(-3.0)
    # Iterating the cell at the optimal theta drives s[0] to 1 (A's eigenvalues are 1/2; 1,000 steps suffice).
    cell = influence_balancing.cell(n, n_pos)
    params = influence_balancing.InfluenceBalancingParams(theta=jnp.array([influence_balancing.optimal_theta()]))
    s = cell.initial_carry(params)
    np.testing.assert_array_equal(s, 1.0)
    s, h = jax.lax.scan(lambda s, _: cell.apply(params, s, jnp.ones((1,))), s, None, length=1000)
    assert h.shape == (1000, 1)
    assert float(h[-1, 0]) == pytest.approx(1.0, abs=1e-12)
    p0 = cell.init(jax.random.key(0), 1)
    assert p0.theta.shape == (1,) and float(p0.theta[0]) == 0.5 and cell.hidden_size == 1


def test_influence_balancing_truncation_one_points_the_wrong_way():
    cell = influence_balancing.cell()
    params = cell.init(jax.random.key(0), 1)
    x = jnp.ones((1,))
    s = jax.lax.scan(lambda s, _: (cell.apply(params, s, x)[0], None), cell.initial_carry(params), None, length=500)[0]

    def loss_after(theta, s_start, steps):
        p = influence_balancing.InfluenceBalancingParams(theta=theta)
        s_end = jax.lax.fori_loop(0, steps, lambda i, s: cell.apply(p, s, x)[0], s_start)
        return 0.5 * (s_end[0] - 1.0) ** 2

    # Full gradient (the state's dependence on theta through 500 steps) vs one-step truncation at the fixed point.
    full = jax.grad(lambda th: loss_after(th, jnp.ones(23), 500))(params.theta)
    truncated = jax.grad(lambda th: loss_after(th, jax.lax.stop_gradient(s), 1))(params.theta)
    assert float(full[0]) == pytest.approx((-3.0 - 1.0) * -6.0, rel=1e-9)  # (s*[0] - 1) d s*[0] / d theta
    assert float(truncated[0]) == pytest.approx(-3.0 - 1.0, rel=1e-9)
    assert float(full[0]) > 0 > float(truncated[0])  # descent lowers theta (right) vs raises it (wrong)


def test_influence_balancing_learners_rtrl_right_way_tbptt1_wrong_way():
    env, params = envs.make("influence_balancing")
    cell = influence_balancing.cell()
    opt = optax.sgd(1e-4)
    theta = {}
    for name, learner in {
        "rtrl": learners.rtrl(cell, 1, 1, objectives.squared_error(), opt, options=IDENTITY),
        "tbptt1": learners.tbptt(cell, 1, 1, objectives.squared_error(), opt, truncation=1, options=IDENTITY),
    }.items():
        _, env_state = env.reset(jax.random.key(0), params)

        def body(carry, k):
            env_state, lstate = carry
            obs, env_state, signal, _ = env.step(k, env_state, params)
            lstate, _ = learner.step(lstate, obs, signal)
            return (env_state, lstate), None

        keys = jax.random.split(jax.random.key(1), 1000)
        (_, lstate), _ = jax.jit(lambda c: jax.lax.scan(body, c, keys))((env_state, learner.init(jax.random.key(2))))
        theta[name] = float(lstate.params["cell"].theta[0])
    assert theta["rtrl"] < 0.5 < theta["tbptt1"]


def test_influence_balancing_gradient_directions_of_learners():
    """Summed gradient estimates over steps 100..300 with a frozen theta = 0.5: positive means descent lowers
    theta (the right way). RTRL is exact; T-BPTT(1) has the wrong sign; UORO (if registered) is unbiased, so its
    mean over 1,024 keys is positive and within 5 standard errors of RTRL's."""
    env, params = envs.make("influence_balancing")
    cell = influence_balancing.cell()
    kwargs = dict(cell=cell, input_size=1, output_size=1, objective=objectives.squared_error(),
                  optimizer=optax.sgd(0.0), options=IDENTITY)  # fmt: skip
    built = {"rtrl": learners.rtrl(**kwargs), "tbptt1": learners.tbptt(**kwargs, truncation=1)}
    if "uoro" in learners.names():
        built["uoro"] = learners.make("uoro", **kwargs)
    totals = {}
    for name, learner in built.items():

        def run(key, learner=learner):
            _, env_state = env.reset(key, params)

            def body(carry, k):
                env_state, lstate = carry
                obs, env_state, signal, _ = env.step(k, env_state, params)
                lstate, out = learner.step(lstate, obs, signal)
                return (env_state, lstate), out.grads["cell"].theta[0]

            return jax.lax.scan(body, (env_state, learner.init(key)), jax.random.split(key, 300))[1]

        n_keys = 1024 if name == "uoro" else 2
        grads = np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(4), n_keys)))
        totals[name] = grads[:, 100:].sum(1)
    assert np.all(totals["rtrl"] > 0) and np.all(totals["tbptt1"] < 0)
    if "uoro" in totals:
        se = totals["uoro"].std() / math.sqrt(len(totals["uoro"]))
        assert totals["uoro"].mean() > SE * se
        within(totals["uoro"].mean(), totals["rtrl"][0], se, "UORO mean summed gradient vs RTRL")


# ------------------------------------------------------------------------------------ streams with learners


def _learner_for(env):
    if env.name == "influence_balancing":
        cell, readout = influence_balancing.cell(), "identity"
    else:
        cell, readout = cells.lstm(2), "linear"
    if env.default_objective == "td_lambda":
        objective = objectives.td_lambda(gamma=env.gamma, lam=0.9)
    else:
        objective = objectives.make(env.default_objective)
    return learners.rtrl(cell, env.observation_size, env.signal_size, objective, optax.sgd(1e-3),
                         options=learners.Options(readout=readout))


def test_every_stream_runs_with_a_learner_scanned_and_vmapped():
    """Each registered stream (and the ccn variant) inside one scan with an RTRL learner, vmapped over 2 keys.
    All runs are compiled as one program: RTRL's compilation dominates the cost of this test."""
    n_steps = 300
    configs = ["trace_conditioning", "trace_patterning", "trace_patterning_ccn", "noisy_patterning", "add_task",
               "copy_task", "influence_balancing"]  # fmt: skip
    assert {CONFIGS[c][0] for c in configs} == set(envs.names())

    def make_run(config):
        env, params = make(config)
        learner = _learner_for(env)

        def run(key):
            k_env, k_learner, k_steps = jax.random.split(key, 3)
            _, env_state = env.reset(k_env, params)

            def body(carry, k):
                env_state, lstate = carry
                obs, env_state, signal, info = env.step(k, env_state, params)
                lstate, out = learner.step(lstate, obs, signal)
                env_state = env.feedback(env_state, params, out.prediction)
                return (env_state, lstate), (out.prediction, out.loss)

            carry = (env_state, learner.init(k_learner))
            return jax.lax.scan(body, carry, jax.random.split(k_steps, n_steps))[1]

        return jax.vmap(run)

    runs = [make_run(c) for c in configs]
    results = jax.jit(lambda keys: [run(keys) for run in runs])(jax.random.split(jax.random.key(0), 2))
    for config, (predictions, losses) in zip(configs, results):
        env, _ = make(config)
        assert predictions.shape == (2, n_steps, env.signal_size), config
        assert np.all(np.isfinite(np.asarray(predictions))) and np.all(np.isfinite(np.asarray(losses))), config
        if config != "influence_balancing":  # a deterministic stream and model: both seeds agree
            assert not np.array_equal(np.asarray(predictions[0]), np.asarray(predictions[1])), config


def test_every_registered_stream_is_covered():
    assert {CONFIGS[c][0] for c in CONFIGS} == set(envs.names())

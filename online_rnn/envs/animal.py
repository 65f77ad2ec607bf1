"""The engine shared by the animal-learning prediction streams (trace conditioning, trace patterning, noisy
patterning; Rafiee et al., "From eye-blinks to state construction: diagnostic benchmarks for online
representation learning", Adaptive Behavior 31(1), 2023; arXiv:2011.04590).

The specifications of the individual streams, with the source of every number, are in
:mod:`online_rnn.envs.trace_conditioning`, :mod:`online_rnn.envs.trace_patterning` and
:mod:`online_rnn.envs.noisy_patterning`. This module holds what they share.

Trials. Each stream is a sequence of trials. A trial starts with the onset of its conditioned stimuli (CSs), a
pulse of ``cs_length`` steps; if the trial is reinforced, the unconditioned stimulus (US), a pulse of
``us_length`` steps, starts ``ISI`` steps after the CS onset (inter-stimulus interval); the next trial starts
``ITI + trial_extra`` steps after the US onset (inter-trial interval), so a trial lasts
``ISI + ITI + trial_extra`` steps. The cumulant is the US.

Exact return inside the scan. The stream draws its trials ahead of time: the state holds a queue of
``lookahead = K`` trials, the current one and the next ``K - 1``, each with its ISI, length, CS set and whether
it is reinforced. When a trial ends, the queue shifts and a freshly drawn trial joins at its end. The true
discounted return ``G_t = sum_{k>=0} gamma^k c_{t+1+k}`` is then computed in closed form from the US onsets of
the queued trials; only trials beyond the queue are left out. Bound on what is left out: with the current
trial's offset ``o <= len_0 - 1``, the first trial beyond the queue starts at least ``1 + (K - 1) L_min`` steps
ahead (``L_min = ISI_min + ITI_min + trial_extra``), its US at least ``ISI_min`` steps later, and every later
trial ``L_min`` steps after the one before. Each US pulse contributes at most ``R gamma^(d - 1)`` where ``d`` is
its distance ahead and ``R = (1 - gamma^us_length) / (1 - gamma)`` is the return seen just before any US pulse,
a lower bound on the largest return of the stream. So::

    omitted tail / R  <=  gamma^((K - 1) L_min + ISI_min) / (1 - gamma^L_min)

and the default ``K`` (:func:`required_lookahead`) is the smallest one that makes this bound < 1e-12. ``K`` is
computed from the constructor's ``gamma`` and ranges; a sweep that raises ``params.gamma`` or shortens the
trials should pass a larger ``lookahead`` (check with ``env.return_tail_bound(params)``).

Time 0. ``reset`` puts the stream one step before the first trial: its observation is all zeros, and the first
``step`` shows the first CS onset, so a runner that ignores the observation of ``reset`` loses nothing.

Randomness. Each step makes one draw of uint32 words from its key with :func:`online_rnn.prng.bits` (one
unrolled Threefry hash that XLA fuses with the step; ``reset`` makes one more for the activation patterns and
the first ``K`` trials), and a trial is drawn every step but used only when a trial ends: one draw per step
compiles about twice as fast as one ``jax.random`` call per quantity. Integers are ``lo + word mod span``
(modulo bias < span / 2^32) and Bernoulli draws compare a 24-bit uniform with ``p`` (so ``P`` is ``p`` to within
2^-24, and 0 and 1 are exact). The stream is the same bit for bit with and without ``jax_enable_x64``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from online_rnn import prng

from online_rnn.envs.base import Environment, as_float, as_int, float_dtype

RETURN_TAIL_TOLERANCE = 1e-12


@struct.dataclass
class AnimalParams:
    """Parameters of an animal-learning stream (shared by all of them; each stream's module names it
    ``EnvParams``). Integer ranges are inclusive."""

    gamma: jax.Array  # discount of info["return"]
    isi_min: jax.Array  # int32
    isi_max: jax.Array  # int32
    iti_min: jax.Array  # int32
    iti_max: jax.Array  # int32
    cs_length: jax.Array  # int32, steps a CS stays on
    us_length: jax.Array  # int32, steps the US stays on
    distractor_length: jax.Array  # int32, steps a distractor pulse stays on (pulse and trial distractors)
    distractor_probs: jax.Array  # (n_distractors,) float: per-step onset (pulse/step) or per-trial probability
    pattern_prob: jax.Array  # float: probability that a trial shows an activation pattern outright (mixture)
    noise: jax.Array  # float: probability that a trial's US is flipped (given after a non-pattern, or omitted)


@struct.dataclass
class AnimalState:
    """State of an animal-learning stream: the current trial's offset and a queue of ``K`` scheduled trials
    (index 0 is the current one)."""

    offset: jax.Array  # int32: steps since the current trial's CS onset (-1 before the first trial)
    isi: jax.Array  # (K,) int32
    trial_len: jax.Array  # (K,) int32
    cs: jax.Array  # (K, n_cs) bool: the CS set each trial shows
    us: jax.Array  # (K,) bool: the trial is reinforced
    is_pattern: jax.Array  # (K,) bool: the CS set is an activation pattern
    trial_distractors: jax.Array  # (K, n_trial_distractors) bool: distractors shown with the trial's CS
    patterns: jax.Array  # (n_patterns, n_cs) bool: the activation patterns, drawn once at reset
    distractor_age: jax.Array  # (n_pulse_distractors,) int32: steps the current pulse has been on (0 = off)


def return_tail_bound(lookahead: int, gamma: float, min_trial_length: int, min_isi: int) -> float:
    """Upper bound on the part of the return that a queue of ``lookahead`` trials leaves out, relative to the
    return just before a US pulse (see the module docstring)."""
    gamma = float(gamma)
    if gamma == 0.0:
        return 0.0
    exponent = (lookahead - 1) * min_trial_length + min_isi
    return math.exp(exponent * math.log(gamma)) / (1.0 - gamma**min_trial_length)


def required_lookahead(
    gamma: float, min_trial_length: int, min_isi: int, tolerance: float = RETURN_TAIL_TOLERANCE
) -> int:
    """The smallest queue length ``K >= 2`` whose :func:`return_tail_bound` is below ``tolerance``."""
    k = 2
    while return_tail_bound(k, gamma, min_trial_length, min_isi) >= tolerance:
        k += 1
    return k


def pulse_return(onset: jax.Array, length: jax.Array, gamma: jax.Array) -> jax.Array:
    """``sum_{m < length, onset + m >= 1} gamma^(onset + m - 1)``: what a pulse of ones at steps
    ``onset .. onset + length - 1`` (relative to now) adds to the return ``G_t``. Closed form."""
    first = jnp.maximum(onset, 1)
    last = onset + length - 1
    count = jnp.maximum(last - first + 1, 0)
    dtype = gamma.dtype
    return gamma ** (first - 1).astype(dtype) * (1.0 - gamma ** count.astype(dtype)) / (1.0 - gamma)


def randint(bits: jax.Array, lo: Any, hi: Any) -> jax.Array:
    """An int32 in ``lo .. hi`` (inclusive) from a random uint32 word: ``lo + bits mod (hi - lo + 1)``. The modulo
    bias is below ``(hi - lo + 1) / 2^32`` (< 1e-7 for every range used here)."""
    span = (jnp.asarray(hi, jnp.int32) - jnp.asarray(lo, jnp.int32) + 1).astype(jnp.uint32)
    return jnp.asarray(lo, jnp.int32) + (bits % span).astype(jnp.int32)


def bernoulli(bits: jax.Array, p: Any) -> jax.Array:
    """``u < p`` with ``u = (bits >> 8) / 2^24`` uniform on a grid of 2^-24 (exact in float32 and float64, so the
    stream does not depend on ``jax_enable_x64``): ``P(True)`` is ``p`` rounded up to the grid (0 and 1 exact)."""
    u = (bits >> 8).astype(jnp.float32) * (2.0**-24)
    return u < jnp.asarray(p, jnp.float32)


def half_subsets(n_cs: int) -> np.ndarray:
    """All subsets of ``n_cs // 2`` of the ``n_cs`` CSs, as a (C(n_cs, n_cs // 2), n_cs) bool array."""
    rows = []
    for chosen in itertools.combinations(range(n_cs), n_cs // 2):
        row = np.zeros(n_cs, bool)
        row[list(chosen)] = True
        rows.append(row)
    return np.stack(rows)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static (shape-fixing) description of an animal-learning stream.

    ``cs_mode``: ``"single"`` (one CS, every trial reinforced: trace conditioning), ``"mixture"`` (Rafiee
    patterning: an activation pattern with probability ``pattern_prob``, otherwise every CS on independently with
    probability 0.5) or ``"uniform_half"`` (the CCN paper's patterning: exactly ``n_cs // 2`` CSs, uniformly over
    the subsets). Distractors are of one kind: ``"pulse"`` (an inactive distractor starts a pulse with its
    per-step probability), ``"trial"`` (shown with the CS onset with its probability) or ``"step"`` (on for one
    step with its per-step probability, independently every step). ``us_first`` orders the observation
    ``[US, CSs, distractors]`` (Rafiee) instead of ``[CSs, US, distractors]`` (CCN).
    """

    n_cs: int
    cs_mode: str
    n_patterns: int
    n_distractors: int
    distractor_mode: str
    us_first: bool
    trial_extra: int
    lookahead: int


class AnimalStream(Environment):
    """An animal-learning prediction stream (see the module docstring). Built by the factories of
    :mod:`~online_rnn.envs.trace_conditioning`, :mod:`~online_rnn.envs.trace_patterning` and
    :mod:`~online_rnn.envs.noisy_patterning`."""

    kind = "prediction"
    metric_targets = ("return", "trial_return")  # the exact return, or the per-trial return the authors' code uses
    metric_names = {"return": "MSRE", "trial_return": "MSRE (per-trial return)"}
    signal_size = 1
    default_objective = "td_lambda"

    def __init__(self, name: str, layout: Layout, defaults: dict, variant: str = "rafiee"):
        self.name = name
        self.variant = variant
        self.layout = layout
        self._defaults = dict(defaults)
        self.gamma = float(defaults["gamma"])
        self.lookahead = layout.lookahead
        self.observation_size = 1 + layout.n_cs + layout.n_distractors
        if layout.cs_mode in ("mixture", "uniform_half"):
            self._subsets = half_subsets(layout.n_cs)
        else:
            self._subsets = np.ones((1, layout.n_cs), bool)

    # -------------------------------------------------------------------------------------------- params

    @property
    def default_params(self) -> AnimalParams:
        d = self._defaults
        return AnimalParams(
            gamma=as_float(d["gamma"]),
            isi_min=as_int(d["isi_range"][0]),
            isi_max=as_int(d["isi_range"][1]),
            iti_min=as_int(d["iti_range"][0]),
            iti_max=as_int(d["iti_range"][1]),
            cs_length=as_int(d["cs_length"]),
            us_length=as_int(d["us_length"]),
            distractor_length=as_int(d["distractor_length"]),
            distractor_probs=as_float(np.asarray(d["distractor_probs"], np.float64).reshape(self.layout.n_distractors)),
            pattern_prob=as_float(d["pattern_prob"]),
            noise=as_float(d["noise"]),
        )

    def return_tail_bound(self, params: AnimalParams) -> float:
        """Bound (relative to the return just before a US pulse) on the return that the queue of
        ``self.lookahead`` trials leaves out, for concrete ``params``."""
        min_len = int(params.isi_min) + int(params.iti_min) + self.layout.trial_extra
        return return_tail_bound(self.lookahead, float(params.gamma), min_len, int(params.isi_min))

    # ------------------------------------------------------------------------------------------- trials

    def _draw_patterns(self, bits: jax.Array) -> jax.Array:
        """``n_patterns`` distinct sets, uniformly: the first ones of a random order of all candidate sets (the
        order of one random word per set; ties, of probability about C(n_sets, 2) / 2^32, keep the enumeration
        order)."""
        lay = self.layout
        if lay.cs_mode == "single":
            return jnp.ones((1, 1), bool)
        idx = jnp.argsort(bits)[: lay.n_patterns]
        return jnp.asarray(self._subsets)[idx]

    @property
    def _n_trial_draws(self) -> int:
        lay = self.layout
        return 6 + lay.n_cs + (lay.n_distractors if lay.distractor_mode == "trial" else 0)

    def _draw_trial(self, bits: jax.Array, params: AnimalParams, patterns: jax.Array):
        """One trial from ``self._n_trial_draws`` random uint32 words (see :func:`randint` / :func:`bernoulli`)."""
        lay = self.layout
        isi = randint(bits[0], params.isi_min, params.isi_max)
        iti = randint(bits[1], params.iti_min, params.iti_max)
        length = isi + iti + lay.trial_extra
        cs_bits = bits[6 : 6 + lay.n_cs]
        if lay.cs_mode == "single":
            cs = jnp.ones((lay.n_cs,), bool)
            is_pattern = jnp.ones((), bool)
        else:
            if lay.cs_mode == "mixture":
                show = bernoulli(bits[2], params.pattern_prob)
                which = randint(bits[3], 0, lay.n_patterns - 1)
                cs = jnp.where(show, patterns[which], bernoulli(cs_bits, 0.5))
            else:  # uniform_half: uniformly one of the C(n_cs, n_cs // 2) sets
                cs = jnp.asarray(self._subsets)[randint(bits[4], 0, self._subsets.shape[0] - 1)]
            is_pattern = jnp.any(jnp.all(patterns == cs[None, :], axis=1))
        us = jnp.logical_xor(is_pattern, bernoulli(bits[5], params.noise))
        if lay.distractor_mode == "trial":
            trial_distractors = bernoulli(bits[6 + lay.n_cs :], params.distractor_probs)
        else:
            trial_distractors = jnp.zeros((0,), bool)
        return isi, length, cs, us, is_pattern, trial_distractors

    # -------------------------------------------------------------------------------------------- reset

    def reset(self, key: jax.Array, params: AnimalParams) -> tuple[jax.Array, AnimalState]:
        lay = self.layout
        n_queue, n_sets = self.lookahead * self._n_trial_draws, self._subsets.shape[0]
        bits = prng.bits(key, n_queue + n_sets)
        patterns = self._draw_patterns(bits[n_queue:])
        queue_bits = bits[:n_queue].reshape(self.lookahead, self._n_trial_draws)
        queue = jax.vmap(lambda b: self._draw_trial(b, params, patterns))(queue_bits)
        isi, length, cs, us, is_pattern, trial_distractors = queue
        n_pulse = lay.n_distractors if lay.distractor_mode == "pulse" else 0
        state = AnimalState(
            offset=jnp.asarray(-1, jnp.int32),
            isi=isi,
            trial_len=length,
            cs=cs,
            us=us,
            is_pattern=is_pattern,
            trial_distractors=trial_distractors,
            patterns=patterns,
            distractor_age=jnp.zeros((n_pulse,), jnp.int32),
        )
        return jnp.zeros((self.observation_size,), float_dtype()), state

    # --------------------------------------------------------------------------------------------- step

    def step(self, key: jax.Array, state: AnimalState, params: AnimalParams):
        lay = self.layout
        dtype = float_dtype()
        n_trial = self._n_trial_draws
        n_step = lay.n_distractors if lay.distractor_mode in ("pulse", "step") else 0
        bits = prng.bits(key, n_trial + n_step)  # all of this step's randomness, one fused hash

        # Advance time; when the current trial is over, shift the queue and append a freshly drawn trial.
        offset = state.offset + 1
        new_trial = offset >= state.trial_len[0]
        drawn = self._draw_trial(bits[:n_trial], params, state.patterns)
        queue = (state.isi, state.trial_len, state.cs, state.us, state.is_pattern, state.trial_distractors)
        shifted = tuple(
            jnp.concatenate([q[1:], jnp.asarray(d, q.dtype)[None]], axis=0) for q, d in zip(queue, drawn)
        )
        queue = tuple(jnp.where(new_trial, s, q) for s, q in zip(shifted, queue))
        isi, trial_len, cs, us, is_pattern, trial_distractors = queue
        offset = jnp.where(new_trial, 0, offset).astype(jnp.int32)

        # What the current trial shows at this offset.
        cs_on = cs[0] & (offset < params.cs_length)
        us_on = us[0] & (offset >= isi[0]) & (offset < isi[0] + params.us_length)
        age = state.distractor_age
        if lay.distractor_mode == "pulse":
            # Rafiee et al.'s reference code: a distractor that was off on the previous step starts a pulse with
            # its probability; a pulse lasts distractor_length steps and is followed by at least one off step.
            start = (age == 0) & bernoulli(bits[n_trial:], params.distractor_probs)
            age = jnp.where(age == 0, start.astype(jnp.int32), jnp.where(age >= params.distractor_length, 0, age + 1))
            distractors_on = age > 0
        elif lay.distractor_mode == "trial":
            distractors_on = trial_distractors[0] & (offset < params.distractor_length)
        else:  # "step": independently on for one step
            distractors_on = bernoulli(bits[n_trial:], params.distractor_probs)

        us_f = us_on.astype(dtype)[None]
        cs_f = cs_on.astype(dtype)
        parts = [us_f, cs_f] if lay.us_first else [cs_f, us_f]
        obs = jnp.concatenate(parts + [distractors_on.astype(dtype)])

        # Exact return from the scheduled US onsets of the queued trials (relative to now).
        gamma = params.gamma.astype(dtype)
        starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(trial_len)[:-1]]) - offset
        contributions = jnp.where(us, pulse_return(starts + isi, params.us_length, gamma), 0.0)
        info = {
            "return": jnp.sum(contributions),
            "trial_return": contributions[0],
            "us": us_f[0],
            "trial_start": offset == 0,
            "cs_onset": (offset == 0) & jnp.any(cs[0]),
            "is_pattern": is_pattern[0],
            "us_scheduled": us[0],
            "isi": isi[0],
            "iti": trial_len[0] - isi[0] - lay.trial_extra,
        }
        new_state = AnimalState(
            offset=offset,
            isi=isi,
            trial_len=trial_len,
            cs=cs,
            us=us,
            is_pattern=is_pattern,
            trial_distractors=trial_distractors,
            patterns=state.patterns,
            distractor_age=age.astype(jnp.int32),
        )
        return obs, new_state, us_f[0], info

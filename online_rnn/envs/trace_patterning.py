"""Trace patterning, in two variants: Rafiee et al.'s (the default) and the CCN paper's (``variant="ccn"``).

Sources. Rafiee et al., "From eye-blinks to state construction: diagnostic benchmarks for online representation
learning", Adaptive Behavior 31(1):3-19, 2023 (arXiv:2011.04590), the trace-patterning task, and the authors'
public reference implementation (``classical_conditioning_benchmarks.py``, class ``TracePatterning``, and its
experiment script ``exp.py``). Javed, Shah, Sutton & White, "Scalable real-time recurrent learning using
columnar-constructive networks", JMLR 2023 (arXiv:2302.05326; the paper this library started from), whose
trace-patterning runs use the authors' C++ environment (``tracepatterning.cpp`` and
``experiment_animal_learning.cpp`` of their public repository). Where each number below comes from is
noted.

Rafiee variant (``variant="rafiee"``)
  - ``n`` CSs (default 6), each a 4-step pulse at the trial's onset; ``k`` activation patterns (default 10), each
    a set of ``n // 2`` CSs, drawn once per stream from the reset key (distinct, uniformly among the
    ``C(n, n//2)`` sets).
  - Per trial, with probability ``p = (2^n * 0.5 - k) / (2^n - k)`` one of the ``k`` patterns (uniformly) is
    shown, otherwise every CS is on independently with probability 0.5; so P(the shown set is a pattern) = 0.5
    (``p + (1 - p) k / 2^n = 1/2``). The reference code computes ``p`` by this formula.
  - The US (a 2-step pulse) follows ``ISI`` steps after the CS onset iff the shown set is an activation pattern
    (with ``noise`` > 0 the outcome is flipped with that probability; default 0).
  - ``ISI ~ U{ISI0 - floor(ISI0/3) .. ISI0 + floor(ISI0/3)}`` (ISI0 = 10: 7..13), ``ITI ~ U{80..120}`` from the
    US onset to the next CS onset, trial = ``ISI + ITI`` steps, ``gamma = 1 - 1/ISI0`` = 0.9 (as in trace
    conditioning, :mod:`online_rnn.envs.trace_conditioning`).
  - ``m`` distractors, each on with probability 0.5 at the CS onset, as a 4-step pulse. No source here gives a
    default ``m``; 5 is used, the number in the CCN authors' PyTorch prototype that runs this environment
    (``columnar_networks/NoisyPatterns.py``). The paper's own number could not be checked.
  - Observation ``[US, CS_1 .. CS_n, D_1 .. D_m]``.

CCN variant (``variant="ccn"``; the JMLR paper's runs)
  - Observation of 12 = ``[CS_0 .. CS_5, US, D_1 .. D_5]``.
  - Every trial shows exactly 3 of the 6 CSs for 1 step, uniformly over the 20 sets; 10 fixed sets (drawn once
    from the reset key) are valid, and a valid trial's US, 1 step long, comes ``ISI`` steps after the CS step.
  - ``ISI ~ U{24..36}``, ``ITI ~ U{80..120}``, a trial lasts ``ISI + ITI + 1`` steps; ``gamma = 0.9``.
  - Distractor ``k = 1..5`` is on with probability ``1 / (10 k)`` on every step, independently.
  - ``info["trial_return"]`` is the paper's per-trial target, ``gamma^(r - 1)`` while ``r > 0`` steps remain to
    this trial's US on a valid trial and 0 otherwise (it ignores later trials), so results can be set beside the
    paper's; ``info["return"]`` is the true return, which also counts the next trials' US (the two differ by at
    most about ``gamma^81``).
  - Differences from the C++ code: its run begins on a CS step; here ``reset`` is one quiet step before the first
    trial (see :mod:`online_rnn.envs.animal`), and random numbers come from JAX keys, not one mt19937.

``info`` (both variants): ``"return"``, ``"trial_return"``, ``"us"``, ``"trial_start"``, ``"cs_onset"``,
``"is_pattern"`` (the shown set is an activation pattern, the CCN code's "valid"), ``"us_scheduled"``,
``"isi"``, ``"iti"``.
"""

from __future__ import annotations

import math
from typing import Optional

from online_rnn.envs.animal import AnimalParams, AnimalState, AnimalStream, Layout, required_lookahead
from online_rnn.envs.base import check_discount, check_int, check_probability, check_range
from online_rnn.envs.trace_conditioning import ITI_RANGE, paper_isi_range
from online_rnn.envs.trace_conditioning import distractor_probs as per_step_distractor_probs

EnvParams = AnimalParams
EnvState = AnimalState

VARIANTS = ("rafiee", "ccn")

RAFIEE_DEFAULTS = dict(
    n_cs=6, n_patterns=10, n_distractors=5, isi=10, cs_length=4, us_length=2, distractor_length=4, trial_extra=0
)
CCN_DEFAULTS = dict(
    n_cs=6, n_patterns=10, n_distractors=5, isi_range=(24, 36), gamma=0.9, cs_length=1, us_length=1,
    distractor_length=1, trial_extra=1,
)  # fmt: skip


def mixture_pattern_prob(n_cs: int, n_patterns: int, pattern_fraction: float = 0.5) -> float:
    """Rafiee et al.'s probability of showing a pattern outright, ``(2^n P - k) / (2^n - k)``, which makes the
    overall probability of a pattern ``P`` (``pattern_fraction``)."""
    total = 2.0**n_cs
    return (total * pattern_fraction - n_patterns) / (total - n_patterns)


def build_patterning(
    name: str,
    variant: str,
    n_cs: Optional[int],
    n_patterns: Optional[int],
    n_distractors: Optional[int],
    isi: Optional[int],
    isi_range: Optional[tuple[int, int]],
    iti_range: tuple[int, int],
    gamma: Optional[float],
    noise: float,
    pattern_fraction: float,
    cs_length: Optional[int],
    us_length: Optional[int],
    distractor_length: Optional[int],
    lookahead: Optional[int],
) -> AnimalStream:
    """Shared constructor of the patterning streams (validates every argument, names the bad one)."""
    if variant not in VARIANTS:
        raise ValueError(f"{name}: unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    d = RAFIEE_DEFAULTS if variant == "rafiee" else CCN_DEFAULTS
    n_cs = check_int("n_cs", n_cs if n_cs is not None else d["n_cs"], 2)
    n_patterns = check_int("n_patterns", n_patterns if n_patterns is not None else d["n_patterns"], 1)
    n_sets = math.comb(n_cs, n_cs // 2)
    if n_patterns > n_sets:
        raise ValueError(f"n_patterns must be <= C(n_cs, n_cs // 2) = {n_sets}, got {n_patterns}")
    if n_sets > 20000:
        raise ValueError(f"n_cs = {n_cs} is too large (the {n_sets} candidate patterns are enumerated)")
    n_distractors = check_int("n_distractors", n_distractors if n_distractors is not None else d["n_distractors"], 0)
    if isi is not None:
        isi = check_int("isi", isi)
    if isi_range is None:
        if variant == "rafiee" or isi is not None:
            isi_range = paper_isi_range(isi if isi is not None else d["isi"])
        else:
            isi_range = d["isi_range"]
    lo, hi = check_range("isi_range", isi_range, 1)
    iti = check_range("iti_range", iti_range, 0)
    if gamma is None:
        gamma = 1.0 - 1.0 / (isi if isi is not None else d["isi"]) if variant == "rafiee" else d["gamma"]
    gamma = check_discount(gamma)
    noise = check_probability("noise", noise)
    pattern_fraction = check_probability("pattern_fraction", pattern_fraction)
    cs_length = check_int("cs_length", cs_length if cs_length is not None else d["cs_length"])
    us_length = check_int("us_length", us_length if us_length is not None else d["us_length"])
    distractor_length = check_int(
        "distractor_length", distractor_length if distractor_length is not None else d["distractor_length"]
    )
    if iti[0] < us_length:
        raise ValueError(f"iti_range[0] must be >= us_length ({us_length}) so a US ends inside its trial")
    extra = d["trial_extra"]
    if lookahead is None:
        lookahead = required_lookahead(gamma, lo + iti[0] + extra, lo)
    lookahead = check_int("lookahead", lookahead, 2)
    if variant == "rafiee":
        pattern_prob = mixture_pattern_prob(n_cs, n_patterns, pattern_fraction)
        if not 0.0 <= pattern_prob <= 1.0:
            raise ValueError(
                f"pattern_fraction {pattern_fraction} cannot be reached with {n_patterns} patterns of {n_cs} CSs "
                f"(needs n_patterns <= 2^n_cs * pattern_fraction)"
            )
        cs_mode, distractor_mode, us_first = "mixture", "trial", True
        probs = [0.5] * n_distractors
    else:
        if pattern_fraction != 0.5:
            raise ValueError("pattern_fraction is fixed by n_patterns / C(n_cs, n_cs // 2) in the ccn variant")
        pattern_prob = n_patterns / n_sets
        cs_mode, distractor_mode, us_first = "uniform_half", "step", False
        probs = per_step_distractor_probs(n_distractors)
    layout = Layout(
        n_cs=n_cs,
        cs_mode=cs_mode,
        n_patterns=n_patterns,
        n_distractors=n_distractors,
        distractor_mode=distractor_mode,
        us_first=us_first,
        trial_extra=extra,
        lookahead=lookahead,
    )
    defaults = dict(
        gamma=gamma,
        isi_range=(lo, hi),
        iti_range=iti,
        cs_length=cs_length,
        us_length=us_length,
        distractor_length=distractor_length,
        distractor_probs=probs,
        pattern_prob=pattern_prob,
        noise=noise,
    )
    return AnimalStream(name, layout, defaults, variant)


def trace_patterning(
    variant: str = "rafiee",
    n_cs: Optional[int] = None,
    n_patterns: Optional[int] = None,
    n_distractors: Optional[int] = None,
    isi: Optional[int] = None,
    isi_range: Optional[tuple[int, int]] = None,
    iti_range: tuple[int, int] = ITI_RANGE,
    gamma: Optional[float] = None,
    noise: float = 0.0,
    pattern_fraction: float = 0.5,
    cs_length: Optional[int] = None,
    us_length: Optional[int] = None,
    distractor_length: Optional[int] = None,
    lookahead: Optional[int] = None,
) -> AnimalStream:
    """Trace patterning (see the module docstring). ``None`` means the variant's default. ``isi`` is the nominal
    ISI0 (range ``ISI0 -/+ floor(ISI0/3)``; for the Rafiee variant also ``gamma = 1 - 1/ISI0``); ``isi_range``
    overrides the range; ``pattern_fraction`` is the overall probability of a pattern (Rafiee variant);
    ``lookahead`` is the number of trials drawn ahead (default: < 1e-12 of the return left out)."""
    return build_patterning(
        "trace_patterning", variant, n_cs, n_patterns, n_distractors, isi, isi_range, iti_range, gamma, noise,
        pattern_fraction, cs_length, us_length, distractor_length, lookahead,
    )  # fmt: skip

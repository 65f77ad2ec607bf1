"""Trace conditioning (Rafiee et al., "From eye-blinks to state construction: diagnostic benchmarks for online
representation learning", Adaptive Behavior 31(1):3-19, 2023; arXiv:2011.04590, the trace-conditioning task).

Spec (numbers from the paper; the pulse
lengths, the ISI rule and the distractor probabilities agree with the authors' public reference implementation,
``classical_conditioning_benchmarks.py``, and its experiment script):

- One conditioned stimulus (CS), a pulse of 4 steps, starts every trial.
- The unconditioned stimulus (US), a pulse of 2 steps, starts ``ISI`` steps after the CS onset, on every trial;
  ``ISI ~ U{ISI0 - floor(ISI0 / 3) .. ISI0 + floor(ISI0 / 3)}`` (default ``ISI0 = 10``, so 7..13).
- ``ITI ~ U{80 .. 120}`` steps from the US onset to the next CS onset, so a trial lasts ``ISI + ITI`` steps.
- ``m`` distractors (default 10): distractor ``k = 1..m`` that was off on the previous step turns on with
  probability ``1 / (10 k)``, as a 4-step pulse (so a pulse is always followed by at least one off step, as in the
  reference code).
- Observation ``[US, CS, distractor_1 .. distractor_m]``; cumulant = the US; ``gamma = 1 - 1 / ISI0`` (0.9).

``info``: ``"return"`` (the exact discounted return G_t, see :mod:`online_rnn.envs.animal`), ``"trial_return"``
(the part of G_t from the current trial's US), ``"us"``, ``"trial_start"``, ``"cs_onset"``, ``"is_pattern"``
(always True here), ``"us_scheduled"`` (always True here), ``"isi"``, ``"iti"`` (the current trial's).
"""

from __future__ import annotations

from typing import Optional

from online_rnn.envs.animal import AnimalParams, AnimalState, AnimalStream, Layout, required_lookahead
from online_rnn.envs.base import check_discount, check_int, check_range

EnvParams = AnimalParams
EnvState = AnimalState

ISI0 = 10  # the paper's shortest ISI setting; gamma = 1 - 1/ISI0 (experiment script: gamma_dict[10] = 0.9)
ITI_RANGE = (80, 120)  # reference experiment script: inter_trial_interval = (80, 120)
CS_LENGTH, US_LENGTH, DISTRACTOR_LENGTH = 4, 2, 4  # reference: activation_lengths {"CS": 4, "US": 2, "distractor": 4}
N_DISTRACTORS = 10


def paper_isi_range(isi0: int) -> tuple[int, int]:
    """The paper's ISI range for a nominal ISI ``isi0``: ``isi0 -/+ floor(isi0 / 3)``."""
    return isi0 - isi0 // 3, isi0 + isi0 // 3


def distractor_probs(n: int) -> list[float]:
    """Onset probabilities ``1 / (10 k)``, ``k = 1 .. n``."""
    return [1.0 / (10.0 * k) for k in range(1, n + 1)]


def trace_conditioning(
    isi: int = ISI0,
    isi_range: Optional[tuple[int, int]] = None,
    iti_range: tuple[int, int] = ITI_RANGE,
    n_distractors: int = N_DISTRACTORS,
    gamma: Optional[float] = None,
    cs_length: int = CS_LENGTH,
    us_length: int = US_LENGTH,
    distractor_length: int = DISTRACTOR_LENGTH,
    lookahead: Optional[int] = None,
) -> AnimalStream:
    """Trace conditioning. ``isi`` is the nominal ISI0 (sets the ISI range by the paper's rule and the default
    ``gamma = 1 - 1/isi``); ``isi_range`` overrides the range; ``lookahead`` is the number of trials drawn ahead
    (default: the smallest that leaves out < 1e-12 of the return, see :mod:`online_rnn.envs.animal`)."""
    isi = check_int("isi", isi)
    lo, hi = check_range("isi_range", isi_range if isi_range is not None else paper_isi_range(isi), 1)
    iti = check_range("iti_range", iti_range, 0)
    n_distractors = check_int("n_distractors", n_distractors, 0)
    gamma = check_discount(gamma if gamma is not None else 1.0 - 1.0 / isi)
    cs_length = check_int("cs_length", cs_length)
    us_length = check_int("us_length", us_length)
    distractor_length = check_int("distractor_length", distractor_length)
    if iti[0] < us_length:
        raise ValueError(f"iti_range[0] must be >= us_length ({us_length}) so a US ends inside its trial")
    if lookahead is None:
        lookahead = required_lookahead(gamma, lo + iti[0], lo)
    lookahead = check_int("lookahead", lookahead, 2)
    layout = Layout(
        n_cs=1,
        cs_mode="single",
        n_patterns=1,
        n_distractors=n_distractors,
        distractor_mode="pulse",
        us_first=True,
        trial_extra=0,
        lookahead=lookahead,
    )
    defaults = dict(
        gamma=gamma,
        isi_range=(lo, hi),
        iti_range=iti,
        cs_length=cs_length,
        us_length=us_length,
        distractor_length=distractor_length,
        distractor_probs=distractor_probs(n_distractors),
        pattern_prob=1.0,
        noise=0.0,
    )
    return AnimalStream("trace_conditioning", layout, defaults)


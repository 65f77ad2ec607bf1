"""Noisy patterning (Rafiee et al., "From eye-blinks to state construction: diagnostic benchmarks for online
representation learning", Adaptive Behavior 31(1):3-19, 2023; arXiv:2011.04590, the noisy-patterning task).

Spec (the fixed ISI and the pulse lengths agree with the
authors' reference implementation, class ``NoisyPatterning`` of ``classical_conditioning_benchmarks.py``, which
sets the ISI range to ``(CS length, CS length)``):

- Rafiee trace patterning (:mod:`online_rnn.envs.trace_patterning`) with ``n = 2`` CSs and ``k = 1`` activation
  pattern (one of the two single CSs, drawn from the reset key), P(pattern) = 0.5 (so the pattern is shown
  outright with probability ``(4 * 0.5 - 1) / (4 - 1) = 1/3``, otherwise each CS is on with probability 0.5).
- ISI equal to the CS length (4): the US (2 steps) starts as the CS (4 steps) turns off.
- Noise 0.1: the US follows a non-pattern with probability 0.1 and is omitted after a pattern with probability 0.1.
- ``ITI ~ U{80..120}`` from the US onset to the next CS onset; ``gamma = 1 - 1/ISI = 0.75`` (the reference
  experiment script's discount for ISI 4: ``gamma_dict[4] = 0.75``).
- ``m`` distractors (default 5, as for trace patterning; the paper's number could not be checked), each on with
  probability 0.5 at the CS onset as a 4-step pulse. Observation ``[US, CS_1, CS_2, D_1 .. D_m]``.

``info``: as for trace patterning (``"return"``, ``"trial_return"``, ``"us"``, ``"trial_start"``,
``"cs_onset"``, ``"is_pattern"``, ``"us_scheduled"``, ``"isi"``, ``"iti"``).
"""

from __future__ import annotations

from typing import Optional

from online_rnn.envs.animal import AnimalParams, AnimalState, AnimalStream
from online_rnn.envs.base import check_int
from online_rnn.envs.trace_conditioning import ITI_RANGE
from online_rnn.envs.trace_patterning import build_patterning

EnvParams = AnimalParams
EnvState = AnimalState

NOISE = 0.1
CS_LENGTH = 4


def noisy_patterning(
    n_cs: int = 2,
    n_patterns: int = 1,
    n_distractors: int = 5,
    noise: float = NOISE,
    iti_range: tuple[int, int] = ITI_RANGE,
    gamma: Optional[float] = None,
    pattern_fraction: float = 0.5,
    cs_length: int = CS_LENGTH,
    us_length: int = 2,
    distractor_length: int = 4,
    lookahead: Optional[int] = None,
) -> AnimalStream:
    """Noisy patterning (see the module docstring): the ISI is fixed to ``cs_length``; ``gamma`` defaults to
    ``1 - 1/cs_length``."""
    cs_length = check_int("cs_length", cs_length)
    if gamma is None:
        gamma = 1.0 - 1.0 / cs_length
    return build_patterning(
        "noisy_patterning", "rafiee", n_cs, n_patterns, n_distractors, None, (cs_length, cs_length), iti_range,
        gamma, noise, pattern_fraction, cs_length, us_length, distractor_length, lookahead,
    )  # fmt: skip

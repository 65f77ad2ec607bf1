"""Online learners: ``Learner(init, step)`` factories behind one contract (see :mod:`online_rnn.learners.base`).

``learners.make(name, **kwargs)`` builds any registered learner by name; ``learners.names()`` lists them.
"""

from __future__ import annotations

from typing import Any, Callable

from online_rnn.learners.base import (
    OPTION_FIELDS,
    Credit,
    Learner,
    LearnerState,
    Options,
    StepInfo,
    build,
    check_kwargs,
    param_count,
)
from online_rnn.learners.columnar import columnar, stack_columns, vmap_credit
from online_rnn.learners.eprop import EpropTrace, eprop, eprop_credit
from online_rnn.learners.hybrid import HybridTrace, constructive, hybrid
from online_rnn.learners.kf_rtrl import KFTrace, kf_rtrl, kf_rtrl_credit
from online_rnn.learners.rflo import RFLOTrace, rflo, rflo_credit
from online_rnn.learners.rtrl import RTRLTrace, rtrl, rtrl_credit
from online_rnn.learners.snap import SnApTrace, snap, snap_credit
from online_rnn.learners.snap1 import SnAp1Trace, snap1, snap1_credit
from online_rnn.learners.tbptt import TBPTTTrace, bptt, tbptt
from online_rnn.learners.uoro import UOROTrace, uoro, uoro_credit

_REGISTRY: dict[str, Callable[..., Learner]] = {
    "bptt": bptt,
    "tbptt": tbptt,
    "rtrl": rtrl,
    "snap1": snap1,
    "uoro": uoro,
    "columnar": columnar,
    "constructive": constructive,
    "hybrid": hybrid,
    "kf_rtrl": kf_rtrl,
    "rflo": rflo,
    "eprop": eprop,
    "snap": snap,
}


def names() -> list[str]:
    """Names of the registered learners."""
    return sorted(_REGISTRY)


def factory(name: str) -> Callable[..., Learner]:
    """The factory registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"learner: unknown name {name!r}; allowed: {', '.join(names())}")
    return _REGISTRY[name]


def make(name: str, **kwargs: Any) -> Learner:
    """Build a registered learner by name, e.g. ``make("tbptt", cell=..., ..., truncation=10)``."""
    fn = factory(name)
    check_kwargs(fn, kwargs, f"learner {name!r}")
    return fn(**kwargs)


__all__ = [
    "EpropTrace",
    "HybridTrace",
    "KFTrace",
    "RFLOTrace",
    "SnApTrace",
    "SnAp1Trace",
    "UOROTrace",
    "columnar",
    "constructive",
    "eprop",
    "eprop_credit",
    "hybrid",
    "kf_rtrl",
    "kf_rtrl_credit",
    "rflo",
    "rflo_credit",
    "snap",
    "snap_credit",
    "snap1",
    "snap1_credit",
    "stack_columns",
    "uoro",
    "uoro_credit",
    "vmap_credit",
    "Credit",
    "Learner",
    "LearnerState",
    "Options",
    "RTRLTrace",
    "StepInfo",
    "TBPTTTrace",
    "bptt",
    "build",
    "factory",
    "make",
    "names",
    "param_count",
    "rtrl",
    "rtrl_credit",
    "tbptt",
]

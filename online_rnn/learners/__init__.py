"""Online learners: ``Learner(init, step)`` factories behind one contract (see :mod:`online_rnn.learners.base`).

``learners.make(name, **kwargs)`` builds any registered learner by name; ``learners.names()`` lists them;
``learners.register(name, factory)`` adds one (see :mod:`online_rnn.registry`).
"""

from __future__ import annotations

from online_rnn.learners.base import (
    OPTION_FIELDS,
    Credit,
    Learner,
    LearnerState,
    MissingCell,
    Options,
    StepInfo,
    build,
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
from online_rnn.registry import Registry

LEARNERS = Registry("learner")
for _name, _factory in {"bptt": bptt, "tbptt": tbptt, "rtrl": rtrl, "snap1": snap1, "uoro": uoro,
                        "columnar": columnar, "constructive": constructive, "hybrid": hybrid, "kf_rtrl": kf_rtrl,
                        "rflo": rflo, "eprop": eprop, "snap": snap}.items():
    LEARNERS.register(_name, _factory)
register, names, factory, make = LEARNERS.register, LEARNERS.names, LEARNERS.factory, LEARNERS.make


def _examples() -> dict:
    """A small cell and shape arguments for each built-in learner (``online-rnn list`` shows the path each
    takes with them)."""
    from online_rnn import cells

    lstm, column = cells.lstm(2), cells.lstm(1)
    return {"bptt": {"cell": lstm, "seq_len": 2}, "tbptt": {"cell": lstm, "truncation": 2},
            "rtrl": {"cell": lstm}, "snap1": {"cell": lstm}, "uoro": {"cell": lstm}, "kf_rtrl": {"cell": lstm},
            "eprop": {"cell": lstm}, "rflo": {"cell": cells.leaky_elman(2, tau=2.0)}, "snap": {"cell": lstm, "n": 2},
            "columnar": {"cell": column, "n_columns": 2},
            "constructive": {"cell": column, "n_units": 2, "steps_per_stage": 2},
            "hybrid": {"cell": column, "n_units": 2, "units_per_stage": 1, "steps_per_stage": 2}}


EXAMPLES = _examples()


__all__ = [
    "EpropTrace",
    "HybridTrace",
    "EXAMPLES",
    "LEARNERS",
    "register",
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
    "MissingCell",
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

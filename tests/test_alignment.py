"""Gradient alignment with the exact online gradient (online_rnn.alignment): exactness checks in float64.

Where a learner's gradient is exact (RTRL itself, columnar networks, SnAp-1 on diagonal cells, the learning
stage of a constructive network, BPTT over the whole run) the measures must be 1 to 1e-9; elsewhere they must
move the way the theory says (T-BPTT towards 1 as its window reaches the start, UORO positive on average).
Networks are tiny and every learner of the experiment-layer run shares one compiled sweep each.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from online_rnn import alignment, cells, experiment, learners, objectives
from online_rnn.experiment import groups as groups_module
from online_rnn.experiment.schema import ConfigError, ConfigWarning

T = 40
ELMAN = {"name": "elman", "hidden_size": 3, "init_range": 0.5}
COLUMN = {"name": "lstm", "hidden_size": 1, "init_range": 0.5}
SGD = {"name": "sgd"}
CONFIG = {
    "name": "alignment",
    "env": {"name": "add_task"},
    "steps": T,
    "chunk": T,
    "metric": {"window": 20, "bins": 4, "alignment": {"every": 1}},
    "sweep": {"seeds": 1, "learning_rate": [0.1]},
    "learners": [
        {"name": "rtrl", "cell": ELMAN, "optimizer": SGD, "normalise_inputs": {"decay": 0.9},
         "normalise_features": {"decay": 0.9}},
        {"name": "uoro", "cell": ELMAN, "optimizer": SGD, "sweep": {"seeds": 4}},
    ],
}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """One float64 run of CONFIG (every learner compiled once), its results by label."""
    out = tmp_path_factory.mktemp("alignment") / "results"
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        exp = experiment.resolve(CONFIG)
        assert experiment.run(exp, out, progress=False, flops=True).complete
    finally:
        jax.config.update("jax_enable_x64", previous)
    res = {}
    for spec in exp.learners:
        folder = out / "learners" / spec.label
        with np.load(folder / "results.npz") as npz:
            res[spec.label] = {k: np.asarray(npz[k]) for k in npz.files}
        res[spec.label]["summary"] = json.loads((folder / "summary.json").read_text())
    return out, res


def assert_exact(r: dict, names: list[str]) -> None:
    for name in names:
        np.testing.assert_allclose(r[f"alignment_{name}_mean"], 1.0, rtol=1e-9, err_msg=name)
        curve = r[f"alignment_{name}"]
        np.testing.assert_allclose(curve[np.isfinite(curve)], 1.0, rtol=1e-9, err_msg=name)


def test_rtrl_aligned_with_itself_is_exact(aligned):
    """Exact RTRL (with input and feature normalisation) against its shadow: cosine, norm ratio and sign
    agreement 1 over every group, at every compared step, and the cell gradient is compared at nearly every step
    (the readout starts at zero, so the cell's gradient is zero on the first step only)."""
    _, res = aligned
    r = res["rtrl"]
    measures = r["summary"]["alignment"]["measures"]
    assert measures == [f"{m}{g}" for g in ("", "_cell", "_readout") for m in ("cosine", "norm_ratio", "sign")]
    assert_exact(r, measures)
    assert r["alignment_steps"][0] >= T - 2 and r["alignment_steps_cell"][0] >= T - 2
    assert r["alignment_cosine"].shape == (1, 4)
    assert r["summary"]["alignment"]["shadow_flops_per_step"] > 0


def test_uoro_is_positively_aligned_on_average_with_a_spread(aligned):
    """UORO's estimate is unbiased but noisy: its mean cosine over the cell is positive, below 1, and its
    spread over steps (std, saved per run) is well above 0."""
    _, res = aligned
    r = res["uoro"]
    cos, std = r["alignment_cosine_cell_mean"], r["alignment_cosine_cell_std"]
    assert cos.shape == (4,) and std.shape == (4,)
    assert 0 < cos.mean() < 0.99, cos
    assert np.all(std > 0.05), std


def test_compare_and_plot_show_alignment(aligned):
    out, _ = aligned
    table = experiment.compare([out], write=False)
    assert "| cos | norm ratio | sign |" in table
    row = next(line for line in table.splitlines() if line.startswith("| rtrl |"))
    assert "| 1 |" in row
    names = {p.name for p in experiment.plot(out)}
    assert {"alignment.png", "error_vs_flops.png"} <= names


# ------------------------------------------------------------------------------------------- direct checks


def _scan(cases, xs, ys, rates=(None,)):
    """Each case ``(learner, objective, every, window)`` stepped with its alignment tracker over the stream, all in
    one compiled function; one result dict per step size in ``rates`` (None: the state's own), each a list over
    cases of ``{"names", "values", "valid", "pred", "y_ref"}``. Every learner starts with a non-zero readout (a
    zero readout makes every cell gradient zero)."""
    trackers = [alignment.tracker(lrn, obj, every, window) for lrn, obj, every, window in cases]

    def one(learner, tracker, state):
        def body(carry, inp):
            s, ts = carry
            t, x, y = inp
            post, info = learner.step(s, x, y)
            ts, values, valid, y_ref = tracker.step(ts, s, post, x, y, info.grads, t)
            return (post, ts), (values, valid, info.prediction, y_ref)

        return jax.lax.scan(body, (state, tracker.init(state)), (jnp.arange(xs.shape[0]), xs, ys))[1]

    run = jax.jit(lambda states: [one(c[0], tr, st) for c, tr, st in zip(cases, trackers, states)])
    out = []
    for rate in rates:
        states = [_state(c[0]) for c in cases]
        if rate is not None:
            states = [experiment.set_hyperparams(st, learning_rate=rate) for st in states]
        out.append([dict(names=tr.names, **{k: np.asarray(v) for k, v in zip(("values", "valid", "pred", "y_ref"), r)})
                    for tr, r in zip(trackers, run(states))])
    return out if len(rates) > 1 else out[0]


def _stream(n: int, seed: int = 0):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (n, 2)), jax.random.normal(ky, (n, 1))


def _state(learner, seed: int = 0):
    state = learner.init(jax.random.PRNGKey(seed))
    w = state.params["readout"]["w"]
    readout = {**state.params["readout"], "w": jax.random.normal(jax.random.PRNGKey(seed + 7), w.shape)}
    return state._replace(params={**state.params, "readout": readout})


def _taken(r: dict, name: str) -> np.ndarray:
    """The values of measure ``name`` at the steps it was taken."""
    j = r["names"].index(name)
    return r["values"][r["valid"][:, j], j]


def _assert_exact(r: dict, names: list[str], min_steps: int) -> None:
    for name in names:
        values = _taken(r, name)
        assert values.size >= min_steps, (name, values.size)
        np.testing.assert_allclose(values, 1.0, rtol=1e-9, err_msg=name)


SGD_RATE = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
SQ = objectives.squared_error()


def test_exact_learners_on_their_networks_and_bptt_over_the_whole_run(x64):
    """Columnar RTRL on its network of columns, SnAp-1 on diagonal cells (lru, rtu): their gradient is the exact
    one at every step (cosine and norm ratio 1). BPTT with one sequence covering the run updates once, at its end,
    where it is compared with the sum of the exact gradients since the start (the parameters do not change in
    between): exact too. Strided T-BPTT with shorter windows is not (its windows start from a stopped carry)."""
    n = 12
    xs, ys = _stream(n, 3)
    cases = [(learners.columnar(cells.lstm(1, init_range=0.5), 2, 1, SQ, SGD_RATE, n_columns=2), SQ, 1, None),
             (learners.snap1(cells.lru(2), 2, 1, SQ, SGD_RATE), SQ, 1, None),
             (learners.snap1(cells.rtu(2), 2, 1, SQ, SGD_RATE), SQ, 1, None),
             (learners.bptt(cells.elman(3, init_range=0.5), 2, 1, SQ, SGD_RATE, seq_len=n), SQ, 1, None),
             (learners.tbptt(cells.elman(3, init_range=0.5), 2, 1, SQ, SGD_RATE, truncation=4, stride=4), SQ, 1,
              None)]
    columnar, lru, rtu, bptt, strided = _scan(cases, xs, ys)
    for r in (columnar, lru, rtu):
        _assert_exact(r, ["cosine", "norm_ratio", "cosine_cell", "norm_ratio_cell", "cosine_readout"], n)
    _assert_exact(bptt, ["cosine", "norm_ratio", "cosine_cell"], 1)
    assert _taken(bptt, "cosine").size == 1  # one update, at the end
    cos = _taken(strided, "cosine_cell")
    assert cos.size == n // 4 and cos[0] == pytest.approx(1.0, rel=1e-9) and np.all(cos[1:] < 1 - 1e-6), cos


def test_tbptt_cosine_rises_to_one_as_the_window_reaches_the_start(x64):
    """Sliding T-BPTT at a step size of 0 over a 12-step run: truncation 12 reaches back to the initial carry at
    every step and is exact; shorter windows are less aligned, the more so the shorter. With a real step size,
    the full window differs from RTRL's online gradient by O(step size) (it re-runs the window with the current
    parameters), so it is close to 1 but not exactly 1."""
    n = 12
    xs, ys = _stream(n)
    ks = (1, 3, n)
    cases = [(learners.tbptt(cells.elman(3, init_range=0.5), 2, 1, SQ, SGD_RATE, truncation=k), SQ, 1, None)
             for k in ks]
    frozen, moving = _scan(cases, xs, ys, rates=(0.0, 1e-3))
    means = {k: _taken(r, "cosine_cell").mean() for k, r in zip(ks, frozen)}
    assert all(_taken(r, "cosine_cell").size == n for r in frozen)
    _assert_exact(frozen[-1], ["cosine", "norm_ratio", "cosine_cell"], n)
    assert means[1] < means[3] < means[n] - 1e-6, means
    cos = _taken(moving[-1], "cosine_cell")
    assert 0.99 < cos.mean() < 1 - 1e-12, cos


def test_bptt_window_reference_against_exact_rtrl(x64):
    """The window reference (an approximation) measured against exact RTRL, whose gradient is exact: with the
    window reaching the start and a step size of 0 it is exact; a window of 2 steps is not; a wrong objective is
    refused."""
    n = 12
    xs, ys = _stream(n, 1)
    rtrl = learners.rtrl(cells.elman(3, init_range=0.5), 2, 1, SQ, SGD_RATE)
    full, short = _scan([(rtrl, SQ, 1, n), (rtrl, SQ, 1, 2)], xs, ys, rates=(0.0, None))[0]
    _assert_exact(full, ["cosine", "norm_ratio", "cosine_cell", "norm_ratio_cell"], n)
    np.testing.assert_allclose(full["y_ref"], full["pred"], rtol=1e-12)
    assert _taken(short, "cosine_cell").mean() < 1 - 1e-6
    td = objectives.td_lambda(0.9, 0.9)
    with pytest.raises(ValueError, match="supervised objectives only"):
        alignment.bptt_window(learners.rtrl(cells.elman(2), 2, 1, td, optax.sgd(0.1)), td, 10)


def test_hybrid_learning_stage_is_exact_and_frozen_stages_are_not_followed(x64):
    """The network a hybrid learner exposes (the stages that exist at the step, per-stage input normalisation,
    feature normalisation) gives the learner's own prediction at every step, across stage boundaries; the
    learning stage's gradient is the exact gradient of its units (per-stage cosine 1) and the readout's is exact.
    Once stage 0 is frozen the learner ignores its non-zero exact gradient: the overall cosine falls below 1 and
    stage 0's own measure is skipped (its gradient is zero)."""
    n, per_stage = 12, 6
    xs, ys = _stream(n, 2)
    learner = learners.hybrid(cells.lstm(1, init_range=0.5), 2, 1, SQ, SGD_RATE, n_units=4, units_per_stage=2,
                              steps_per_stage=per_stage,
                              options=learners.Options(normalise_inputs=0.9, normalise_features=0.9))
    r = _scan([(learner, SQ, 1, None)], xs, ys)[0]
    np.testing.assert_allclose(r["y_ref"], r["pred"], rtol=1e-12)
    assert [g for g in r["names"] if g.startswith("cosine_cell_")] == [f"cosine_cell_stage{s}" for s in range(2)]
    _assert_exact(r, ["cosine_cell_stage0", "cosine_cell_stage1", "norm_ratio_cell_stage1", "cosine_readout",
                      "norm_ratio_readout"], per_stage - 1)
    for stage in range(2):  # compared while it learns only
        assert _taken(r, f"cosine_cell_stage{stage}").size <= per_stage
    j = r["names"].index("cosine")
    overall = r["values"][:, j]
    np.testing.assert_allclose(overall[:per_stage][r["valid"][:per_stage, j]], 1.0, rtol=1e-9)  # nothing frozen
    assert np.all(overall[per_stage + 1:] < 1 - 1e-6)


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("alignment_cfg, match", [
    ({"every": 0}, r"^metric\.alignment\.every: expected an int >= 1, got 0$"),
    ({"every": "often"}, r"^metric\.alignment\.every: expected an int >= 1"),
    ({}, r"^metric\.alignment\.every: required"),
    ({"every": 10, "evry": 1}, r"^metric\.alignment\.evry: unknown key; did you mean 'every'\?"),
    ({"every": 10, "reference": "approximate"}, r"^metric\.alignment\.reference: expected exact or"),
    ({"every": 10, "reference": {"bptt_window": 0}}, r"^metric\.alignment\.reference\.bptt_window: expected an int"),
    ({"every": 10, "reference": {"window": 5}}, r"^metric\.alignment\.reference\.window: unknown key"),
    (5, r"^metric\.alignment: expected a mapping"),
])
def test_bad_alignment_config_is_one_line(alignment_cfg, match):
    config = {**CONFIG, "metric": {**CONFIG["metric"], "alignment": alignment_cfg}}
    with pytest.raises(ConfigError, match=match):
        experiment.resolve(config, check_shapes=False)


def test_alignment_on_ray_is_refused_in_one_line():
    config = {**CONFIG, "metric": {**CONFIG["metric"], "alignment": {"every": 10}}, "executor": {"name": "ray"}}
    with pytest.raises(ConfigError, match=r"^metric\.alignment: not available with the ray executor yet"):
        experiment.resolve(config, check_shapes=False)


def test_window_reference_refuses_td_and_alignment_selects_vmap():
    config = {"name": "td", "env": {"name": "trace_conditioning"}, "objective": {"lam": 0.9}, "steps": 100,
              "metric": {"alignment": {"every": 10, "reference": {"bptt_window": 20}}},
              "sweep": {"learning_rate": 0.1}, "learners": [{"name": "rtrl", "cell": ELMAN, "optimizer": SGD}]}
    with pytest.raises(ConfigError, match=r"^metric\.alignment\.reference\.bptt_window: serves supervised"):
        experiment.resolve(config, check_shapes=False)
    config["metric"] = {"alignment": {"every": 10}}
    config["sweep"] = {"seeds": 16, "learning_rate": 0.1}  # enough runs for the runs-last layout
    exp = experiment.resolve(config)
    assert groups_module.Group(exp, exp.learners[0]).layout == "vmap"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert groups_module.Group(exp, exp.learners[0], "runs_last").layout == "vmap"
    assert any(issubclass(w.category, ConfigWarning) for w in caught)

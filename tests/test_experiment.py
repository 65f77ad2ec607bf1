"""Experiments: compiled sweeps, resume, determinism, divergence, config validation (tiny runs, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from online_rnn import experiment, learners, objectives
from online_rnn.experiment import accumulate, build, loading, runfn
from online_rnn.experiment.schema import ConfigError

TINY = {
    "name": "tiny",
    "env": {"name": "trace_conditioning"},
    "objective": {"lam": 0.9},
    "steps": 600,
    "chunk": 200,  # 3 chunks; 4 bins of 150 steps straddle the chunk boundaries
    "metric": {"window": 200, "bins": 4},
    "sweep": {"seeds": 2, "learning_rate": [0.01, 0.001]},
    "learners": [
        {"name": "columnar", "n_columns": 2, "optimizer": {"name": "sgd"}},
        {"name": "tbptt", "label": "tbptt_k2", "truncation": 2, "cell": {"name": "lstm", "hidden_size": 2},
         "optimizer": {"name": "ccn_rmsprop"}},
    ],
}


def write_config(tmp_path: Path, config: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def results_of(folder: Path, label: str) -> dict:
    with np.load(folder / "learners" / label / "results.npz") as npz:
        return {k: np.asarray(npz[k]) for k in npz.files}


def assert_same_results(a: Path, b: Path, labels: list[str]) -> None:
    for label in labels:
        ra, rb = results_of(a, label), results_of(b, label)
        assert ra.keys() == rb.keys()
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{label}.{key}")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> tuple[Path, Path, experiment.RunReport]:
    """One uninterrupted run of TINY (shared by the tests that compare against it)."""
    base = tmp_path_factory.mktemp("tiny")
    path = write_config(base, TINY)
    out = base / "results"
    report = experiment.run(experiment.load(path), out, progress=False)
    assert report.complete
    return path, out, report


@pytest.fixture(scope="module")
def tiny_run(tiny_report) -> tuple[Path, Path]:
    return tiny_report[:2]


# ------------------------------------------------------------------------------------------- runs and results


def test_results_shapes_and_metric(tiny_run):
    path, out = tiny_run
    res = results_of(out, "columnar")
    assert res["curve"].shape == (4, 4)  # 2 step sizes x 2 seeds, 4 bins
    assert res["bin_end"].tolist() == [150, 300, 450, 600]
    assert np.all(res["diverged_at"] == -1)
    assert np.all(np.isfinite(res["final"])) and np.all(res["final"] >= 0)
    assert res["seed"].tolist() == [0, 1, 0, 1] and res["hp_learning_rate"].tolist() == [0.01, 0.01, 0.001, 0.001]
    summary = json.loads((out / "learners" / "columnar" / "summary.json").read_text())
    assert summary["n_params"] > 0 and summary["flops_per_step"] > 0 and summary["seed_steps_per_second"] > 0


def test_metric_matches_a_python_loop(tiny_run):
    """The final-window MSRE of one run equals a plain loop over env.step / learner.step (float tolerance)."""
    path, out = tiny_run
    exp = experiment.load(path)
    spec = exp.learner("columnar")
    fns = runfn.run_functions(exp, spec)
    carry = jax.jit(fns.init)(jnp.int32(1), {"learning_rate": jnp.float32(0.001), "lam": jnp.float32(0.9)})
    step = jax.jit(fns.step)
    errs, targets = [], []
    for t in range(spec.steps):
        carry, (err, _, _, target) = step(carry, jnp.int32(t))
        errs.append(float(err))
        targets.append(float(target))
    res = results_of(out, "columnar")
    run = 3  # seed 1, lr 0.001
    np.testing.assert_allclose(res["final"][run], np.mean(errs[-200:]), rtol=1e-5)
    np.testing.assert_allclose(res["curve"][run, 0], np.mean(errs[:150]), rtol=1e-5)
    np.testing.assert_allclose(res["baseline"][run], np.var(targets[-200:]), rtol=1e-4)


def test_same_config_twice_is_bit_identical_and_resume_matches(tiny_run, tmp_path):
    """Stopped after one chunk and resumed (a fresh process would do the same) == uninterrupted == run again."""
    path, out = tiny_run
    exp = experiment.load(path)
    partial = tmp_path / "resumed"
    report = experiment.run(exp, partial, progress=False, max_chunks=1, flops=False)
    assert not report.complete
    ckpt = partial / "learners" / "columnar" / "checkpoint.npz"
    assert ckpt.exists() and not (partial / "learners" / "columnar" / "results.npz").exists()
    assert json.loads((partial / "learners" / "columnar" / "progress.json").read_text())["steps_done"] == 200
    report = experiment.run(exp, partial, progress=False, flops=False)
    assert report.complete and not ckpt.exists()
    assert_same_results(out, partial, ["columnar", "tbptt_k2"])


def test_compiles_once_across_chunks(tiny_report):
    """Each learner's chunk function was traced once and served all three chunks (the step offset is an
    array); a repeated sweep in the same process reuses the compiled functions."""
    path, out, report = tiny_report
    # 0 where another test in this process already compiled the same shape; never more than 1 for 3 chunks
    assert set(report.traces) == {"columnar", "tbptt_k2"}
    assert all(n <= 1 for n in report.traces.values()), report.traces
    again = experiment.run(experiment.load(path), out.parent / "again", progress=False)
    assert again.traces == {"columnar": 0, "tbptt_k2": 0}


def test_divergent_step_size_is_flagged_and_leaves_the_others_alone(tiny_run, tmp_path):
    """lr 1e6 with SGD diverges; its runs are flagged with their step and the lr 0.01 runs of the same compiled
    sweep equal those of TINY's (which had lr 0.001 beside them) bit for bit."""
    _, out = tiny_run
    config = {**TINY, "learners": TINY["learners"][:1], "sweep": {"seeds": 2, "learning_rate": [0.01, 1e6]}}
    experiment.run(experiment.resolve(config), tmp_path / "both", progress=False, flops=False)
    rb, ra = results_of(tmp_path / "both", "columnar"), results_of(out, "columnar")
    assert np.all(rb["diverged_at"][:2] == -1)
    assert np.all(rb["diverged_at"][2:] >= 0) and np.all(rb["diverged_at"][2:] < 600)
    assert np.all(np.isnan(rb["final"][2:]))
    for key in ("curve", "final"):
        np.testing.assert_array_equal(rb[key][:2], ra[key][:2])
    res = experiment.load_results(tmp_path / "both").learners[0]
    best = res.best()
    assert best.hparams["learning_rate"] == 0.01 and best.diverged == 0
    table = experiment.compare([tmp_path / "both"], write=False)
    assert "| columnar |" in table and "| 0/2 |" in table  # none diverged at the best setting, 2 in the sweep


def test_runs_last_layout_resumes_bit_identically_flags_divergence_and_agrees_with_vmap(tiny_run, tmp_path):
    """The runs-last layout (forced here: TINY's 4 runs would get the seed-major one): stopped after a chunk and
    resumed == uninterrupted; a diverging step size is flagged and leaves its neighbours bit-identical to a
    sweep without it; and the numbers agree with the seed-major layout's to float32 round-off."""
    _, out = tiny_run
    config = {**TINY, "learners": TINY["learners"][:1], "sweep": {"seeds": 2, "learning_rate": [0.01, 1e6]}}
    exp = experiment.resolve(config)
    full, partial, alone = tmp_path / "full", tmp_path / "partial", tmp_path / "alone"
    experiment.run(exp, full, progress=False, flops=False, layout="runs_last")
    assert not experiment.run(exp, partial, progress=False, flops=False, layout="runs_last", max_chunks=1).complete
    experiment.run(exp, partial, progress=False, flops=False, layout="runs_last")
    assert_same_results(full, partial, ["columnar"])
    rf = results_of(full, "columnar")
    assert np.all(rf["diverged_at"][:2] == -1) and np.all(rf["diverged_at"][2:] >= 0)
    single = {**config, "sweep": {"seeds": 2, "learning_rate": [0.01]}}
    experiment.run(experiment.resolve(single), alone, progress=False, flops=False, layout="runs_last")
    ra = results_of(alone, "columnar")
    for key in ("curve", "final", "baseline"):
        np.testing.assert_array_equal(rf[key][:2], ra[key])
        np.testing.assert_allclose(ra[key], results_of(out, "columnar")[key][:2], rtol=2e-4)  # vmap's


def test_results_folder_of_another_config_is_refused(tiny_run):
    path, out = tiny_run
    exp = experiment.load(path, ["steps=400"])
    with pytest.raises(ConfigError, match=r"belongs to a different config \(differs at: steps"):
        experiment.run(exp, out, progress=False)
    assert results_of(out, "columnar")["bin_end"][-1] == 600  # untouched


# --------------------------------------------------------------------------------------------- hyperparameters


def test_set_hyperparams_sets_learning_rate_and_lambda():
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    learner = learners.make("columnar", cell=None, input_size=3, output_size=1,
                            objective=objectives.td_lambda(0.9, 0.5), optimizer=opt, n_columns=2)
    state = experiment.set_hyperparams(learner.init(jax.random.PRNGKey(0)), learning_rate=0.25, lam=0.75)
    assert float(state.opt_state.hyperparams["learning_rate"]) == 0.25
    assert float(state.objective.lam) == 0.75 and float(state.objective.gamma) == np.float32(0.9)
    with pytest.raises(ValueError, match="beta2 not found"):
        experiment.set_hyperparams(state, beta2=0.5)


def test_accumulators_bin_block_sums_like_numpy():
    """Chunks of 60 steps straddle bins of 200; blocks of 20 steps (the block size) never do."""
    rng = np.random.default_rng(0)
    steps, bins, window, chunk = 1200, 6, 300, 60
    g = accumulate.block_size(steps, bins, window, chunk)
    assert g == 20 and accumulate.block_size(1000, 7, 130, 64) == 1  # awkward sizes fall back to single steps
    err = rng.random((3, steps)).astype(np.float32)
    weight = (rng.random((3, steps)) > 0.3).astype(np.float32)
    target = rng.random((3, steps)).astype(np.float32)
    logs = rng.random((3, steps, 1)).astype(np.float32)
    acc = accumulate.Accumulators(3, steps, bins, window, 1)
    blocks = lambda x, t0: x[:, t0:t0 + chunk].reshape((3, chunk // g, g) + x.shape[2:]).sum(2)  # noqa: E731
    for t0 in range(0, steps, chunk):
        acc.add(t0, g, accumulate.Blocks(blocks(err, t0), blocks(weight, t0), blocks(target, t0),
                                     blocks(target ** 2, t0), blocks(logs, t0), logs[:, t0 + chunk - 1]))
    edges = np.r_[0, acc.bin_edges()]
    for b in range(bins):
        sl = slice(edges[b], edges[b + 1])
        np.testing.assert_allclose(acc.bin_err[:, b], err[:, sl].astype(np.float64).sum(1), rtol=1e-6)
        np.testing.assert_allclose(acc.bin_weight[:, b], weight[:, sl].sum(1))
        np.testing.assert_allclose(acc.bin_log[:, 0, b], logs[:, sl, 0].astype(np.float64).sum(1), rtol=1e-6)
    np.testing.assert_allclose(acc.win_err, err[:, -window:].astype(np.float64).sum(1), rtol=1e-6)
    np.testing.assert_allclose(acc.win_target_sq, (target[:, -window:] ** 2).astype(np.float64).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(acc.last_log, logs[:, -1])
    assert acc.bin_count.sum() == steps and np.all(np.diff(edges) == 200)


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides_by_index_label_and_yaml_floats(tmp_path):
    path = write_config(tmp_path, TINY)
    raw = loading.load(path, ["steps=1e3", "learners.tbptt_k2.truncation=3", "learners.0.n_columns=4",
                          "sweep.learning_rate=[1e-3, 3e-4]", "env.isi=12"])
    assert raw["steps"] == 1000.0 and raw["learners"][1]["truncation"] == 3 and raw["learners"][0]["n_columns"] == 4
    assert raw["sweep"]["learning_rate"] == [1e-3, 3e-4] and raw["env"]["isi"] == 12
    exp = experiment.resolve(raw)
    assert exp.steps == 1000 and exp.learner("tbptt_k2").kwargs["truncation"] == 3
    with pytest.raises(ConfigError, match="no entry with that label"):
        loading.load(path, ["learners.colunmar.n_columns=4"])


def test_anchored_values_are_not_shared_by_overrides(tmp_path):
    text = (
        "env: {name: trace_conditioning}\nobjective: {lam: 0.9}\nsteps: 10\nsweep: {learning_rate: 0.1}\n"
        "learners:\n  - {name: columnar, n_columns: 1, optimizer: &o {name: sgd}}\n"
        "  - {name: columnar, label: c2, n_columns: 1, optimizer: *o}\n"
    )
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    raw = loading.load(path, ["learners.c2.optimizer.momentum=0.5"])
    assert raw["learners"][0]["optimizer"] == {"name": "sgd"}


def test_budget_scales_steps_and_stage_lengths(tmp_path):
    config = {**TINY, "steps": 10_000, "budget": 0.1,
              "learners": [{"name": "constructive", "n_units": 2, "steps_per_stage": 5000,
                            "optimizer": {"name": "sgd"}, "steps": 20_000}]}
    exp = experiment.resolve(config)
    spec = exp.learners[0]
    assert exp.steps == 1000 and spec.steps == 2000 and spec.kwargs["steps_per_stage"] == 500
    assert spec.window == 200 and spec.chunk == 200


# ------------------------------------------------------------------------------------------- config errors


_EVENTS: list[str] = []


def _listener(name, *args, **kwargs):
    if "backend_compile" in name:
        _EVENTS.append(name)


jax.monitoring.register_event_duration_secs_listener(_listener)


def _compile_events() -> list[str]:
    """XLA compilations from now on (JAX reports each one as a backend_compile duration event)."""
    _EVENTS.clear()
    return _EVENTS


def _with(change) -> dict:
    config = json.loads(json.dumps(TINY))
    change(config)
    return config


BAD = [
    # (config change, expected message pattern)
    (lambda c: c.update(stpes=10), r"^stpes: unknown key; did you mean 'steps'\? allowed: name, "),
    (lambda c: c["metric"].update(windw=5), r"^metric\.windw: unknown key; did you mean 'window'\?"),
    (lambda c: c["learners"][0].update(n_colums=3), r"^learners\.0 \(columnar\)\.n_colums: unknown key; did you "
     r"mean 'n_columns'\? allowed: .*n_columns"),
    (lambda c: c["learners"][1]["cell"].update(hiden_size=3), r"cell\.hiden_size: unknown key; did you mean "
     r"'hidden_size'\?"),
    (lambda c: c.update(steps="many"), r"^steps: expected an int >= 1, got str 'many'"),
    (lambda c: c.update(steps=0), r"^steps: expected an int >= 1, got 0"),
    (lambda c: c["learners"][0].update(name="columnr"), r"^learners\.0\.name: unknown name 'columnr'; did you mean "
     r"'columnar'\? allowed: bptt, columnar"),
    (lambda c: c["env"].update(name="trace_patern"), r"^env\.name: unknown name 'trace_patern'; did you mean "
     r"'trace_patterning'\? allowed: add_task"),
    (lambda c: c["learners"][1]["cell"].update(name="lstn"), r"cell\.name: unknown name 'lstn'; did you mean 'lstm'"),
    (lambda c: c["learners"][0]["optimizer"].update(name="adamw"), r"optimizer\.name: unknown name 'adamw'; did "
     r"you mean 'adam'\? allowed: adam, ccn_rmsprop, rmsprop, sgd"),
    (lambda c: c["sweep"].update(learning_rate=[[0.1, 0.2]]), r"^sweep\.learning_rate: expected a flat list of "
     r"numbers, entry 0 is list"),
    (lambda c: c["sweep"].update(learning_rate="fast"), r"^sweep\.learning_rate: expected a number or a flat list"),
    (lambda c: c["sweep"].update(seeds=[0, 0]), r"^sweep\.seeds: repeated seeds"),
    (lambda c: c["sweep"].update(gamma=[0.9]), r"^sweep\.gamma: unknown key; allowed: seeds, learning_rate, lam"),
    (lambda c: c["learners"][0].update(input_size=3), r"input_size: 3 does not fit the stream trace_conditioning, "
     r"whose observations have 12 entries"),
    (lambda c: c["learners"][1].pop("cell"), r"^learners\.1 \(tbptt_k2\)\.cell: required for tbptt"),
    (lambda c: c["learners"][1].update(truncation=0), r"^learners\.1 \(tbptt_k2\): truncation must be a positive"),
    (lambda c: c["learners"][0]["optimizer"].update(learning_rate=0.1), r"optimizer\.learning_rate: step sizes are "
     r"swept"),
    (lambda c: c["learners"][1].update(label="columnar"), r"^learners\.1\.label: duplicate label 'columnar'"),
    (lambda c: c["metric"].update(target="trial_retrun"), r"^metric\.target: unknown name 'trial_retrun'; did you "
     r"mean 'trial_return'\? allowed: return, trial_return"),
    (lambda c: c["metric"].update(log=["nonexistent"]), r"metric\.log: the stream gives no 'nonexistent'"),
    (lambda c: c["objective"].update(name="squared_error"), r"^objective\.name: trace_conditioning is a prediction "
     r"stream; use an objective for prediction streams such as td_lambda"),
    (lambda c: c.pop("learners"), r"^learners: required key is missing"),
    (lambda c: c["metric"].update(best_by="max length"), r"^metric\.best_by: unknown name 'max length'; allowed: "
     r"error$"),
    (lambda c: c["env"].update(isi="x"), r"^env: "),
    (lambda c: c["learners"][1]["cell"].update(name="flax", module="LSTMCell"), r"^learners\.1 \(tbptt_k2\)\.cell: "
     r"module must be a flax\.linen recurrent cell .*not from YAML$"),
    (lambda c: c["learners"][1]["cell"].update(name="lru", r_max=2), r"^learners\.1 \(tbptt_k2\)\.cell: r_min and "
     r"r_max must satisfy"),
    (lambda c: c["learners"][1]["cell"].update(name="rtu", activation="gelu"), r"\.cell: activation: unknown "
     r"'gelu'; allowed: linear, relu, tanh$"),
    (lambda c: c["learners"][1].update(cell={"name": "stack", "layers": [{"name": "lru", "hiden_size": 2}]}),
     r"\.cell: layers\[0\]: cell 'lru': unknown argument 'hiden_size'; allowed: hidden_size, r_min"),
]


@pytest.fixture(scope="module")
def warm() -> None:
    """Resolve a valid config once: streams build their parameters with eager jnp calls, whose tiny kernels
    compile on first use; after this, validating a config compiles nothing."""
    experiment.resolve(TINY)


@pytest.mark.parametrize("change,pattern", BAD, ids=[p for _, p in BAD])
def test_config_errors_are_one_line_and_raised_before_compiling(warm, change, pattern):
    events = _compile_events()
    with pytest.raises(ConfigError) as info:
        experiment.resolve(_with(change))
    message = str(info.value)
    assert "\n" not in message
    assert __import__("re").search(pattern, message), message
    assert events == [], f"compiled during validation: {events}"


def test_new_cells_come_from_yaml(warm):
    """lru, rtu and stacks of cell dicts resolve from a config (and snap1 takes them)."""
    config = _with(lambda c: c.update(learners=[
        {"name": "snap1", "label": "lru", "cell": {"name": "lru", "hidden_size": 3}, "optimizer": {"name": "sgd"}},
        {"name": "rtrl", "label": "rtu", "cell": {"name": "rtu", "hidden_size": 2, "activation": "tanh"},
         "optimizer": {"name": "sgd"}},
        {"name": "snap1", "label": "stack", "optimizer": {"name": "sgd"},
         "cell": {"name": "stack", "layers": [{"name": "lru", "hidden_size": 2}, {"name": "rtu", "hidden_size": 2}]}},
    ]))
    exp = experiment.resolve(config)
    env, _, learner = build.build(exp, exp.learner("stack"))
    assert learner.name == "snap1" and exp.learner("rtu").cell == {"name": "rtu", "hidden_size": 2,
                                                                   "activation": "tanh"}


def test_unknown_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        loading.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"invalid YAML \(line"):
        loading.load(bad)
    with pytest.raises(ConfigError, match="expected key=value"):
        loading.load(write_config(tmp_path, TINY), ["steps"])


CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    """Every config in configs/ resolves (learners built, one step traced), at full and at a tiny budget."""
    exp = experiment.load(path)
    assert exp.name == path.stem and exp.learners
    small = experiment.load(path, ["budget=0.0001"])
    for tiny, full in zip(small.learners, exp.learners):
        assert abs(tiny.steps - max(1, full.steps / exp.budget * 0.0001)) <= 1


def test_optimizer_hyperparameters_and_lambda_are_swept_per_run():
    config = {**TINY, "sweep": {"seeds": 1, "learning_rate": [0.01], "lam": [0.5, 0.9]},
              "learners": [{"name": "columnar", "n_columns": 1, "optimizer": {"name": "ccn_rmsprop"},
                            "sweep": {"beta2": [0.99, 0.999]}}]}
    exp = experiment.resolve(config)
    spec = exp.learners[0]
    grid = spec.grid()
    assert [(g["lam"], g["beta2"]) for g in grid] == [(0.5, 0.99), (0.5, 0.999), (0.9, 0.99), (0.9, 0.999)]
    fns = runfn.run_functions(exp, spec)
    carry = jax.jit(fns.init)(jnp.int32(0), {k: jnp.float32(v) for k, v in grid[3].items() if k != "seed"})
    assert float(carry.learner.opt_state.hyperparams["beta2"]) == np.float32(0.999)
    assert float(carry.learner.objective.lam) == np.float32(0.9)
    with pytest.raises(ConfigError, match=r"sweep\.initial_normaliser: unknown key"):
        experiment.resolve({**config, "learners": [{**config["learners"][0],
                                                     "sweep": {"initial_normaliser": [1.0]}}]})


def test_supervised_weights_logs_and_a_partial_last_chunk(tmp_path):
    """Copy task: the loss is averaged over output steps (Target.weight), the curriculum length is logged, and
    the last chunk runs past the end of the run (500 steps in chunks of 200)."""
    config = {"name": "copy", "env": {"name": "copy_task", "max_length": 8}, "steps": 500, "chunk": 200,
              "metric": {"window": 100, "bins": 4, "best_by": "max curriculum_length"},
              "sweep": {"seeds": 1, "learning_rate": [0.1]},
              "learners": [{"name": "columnar", "n_columns": 2, "optimizer": {"name": "sgd"}}]}
    exp = experiment.resolve(config)
    experiment.run(exp, tmp_path, progress=False, flops=False)
    res = results_of(tmp_path, "columnar")
    fns = runfn.run_functions(exp, exp.learners[0])
    carry = jax.jit(fns.init)(jnp.int32(0), {"learning_rate": jnp.float32(0.1)})
    step = jax.jit(fns.step)
    outs = []
    for t in range(500):
        carry, out = step(carry, jnp.int32(t))
        outs.append([float(out[0]), float(out[1]), float(out[2][0])])
    err, weight, length = np.array(outs).T
    assert 0 < weight[-100:].sum() < 100  # only output steps count
    np.testing.assert_allclose(res["final"][0], err[-100:].sum() / weight[-100:].sum(), rtol=1e-5)
    np.testing.assert_allclose(res["curve"][0, 0], err[:125].sum() / weight[:125].sum(), rtol=1e-5)
    assert res["log_final"][0, 0] == length[-1]
    np.testing.assert_allclose(res["log_curve"][0, 0, -1], length[375:].mean(), rtol=1e-6)
    assert np.isnan(res["baseline"][0])
    table = experiment.compare([tmp_path], write=False)
    assert "bits/char" in table and "curriculum_length (end)" in table

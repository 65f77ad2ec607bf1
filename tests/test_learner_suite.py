"""One suite for every registered learner: jit == no jit, vmap over keys == a Python loop, stable state shapes
and dtypes, and one compilation of the step inside a scanned run.

A new learner is tested by registering it and adding its shape arguments to ``SHAPE_KWARGS`` (a test fails
until it is there).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from online_rnn import cells, learners, objectives

IN, OUT, STEPS = 3, 2, 7

# Shape-fixing arguments per learner (several variants where the learner has modes).
SHAPE_KWARGS = {
    "rtrl": [{}],
    "tbptt": [{"truncation": 3}, {"truncation": 3, "stride": 3}],
    "bptt": [{"seq_len": 3}],
    "snap1": [{}],
    "uoro": [{}],
    "columnar": [{"n_columns": 3},
                 {"n_columns": 2, "options": learners.Options(normalise_inputs=0.99, normalise_features=0.99)}],
    "constructive": [{"n_units": 3, "steps_per_stage": 3}],
    "hybrid": [{"n_units": 4, "units_per_stage": 2, "steps_per_stage": 3,
                "options": learners.Options(normalise_inputs=0.99, normalise_features=0.99, readout_step_scale=True)}],
    "kf_rtrl": [{"cell": "leaky_elman"}],
    "rflo": [{"cell": "leaky_elman", "options": learners.Options(normalise_features=0.99)}],  # random feedback
    "eprop": [{"feedback": "random", "cell": "leaky_elman"}],
    "snap": [{"n": 2, "cell": "sparse"}],
}

CASES = [(name, kw) for name in learners.names() for kw in SHAPE_KWARGS.get(name, [None])]


def _flax(kind, features):
    import flax.linen as nn

    return cells.flax(getattr(nn, kind)(features=features))


# The other cells, with learners that take them (every learner runs on lstm(2) above), in the jit, vmap and
# compile-once tests. Two cases, to keep the suite short (each costs about as much as a learner above): SnAp-1
# on a stack of the diagonal cells (the elementwise diagonal path of lru and rtu inside the layer-by-layer path),
# and columnar's vmapped per-column RTRL on the flax wrapper (dict parameters, a tuple carry, the module's init
# under vmap). rtrl, tbptt and bptt on flax cells and on stacks are in test_exactness / test_diagonal_and_stacked.
CELLS = {
    "stack": lambda: cells.stack([cells.lru(2), cells.rtu(1, activation="tanh")]),
    "flax_lstm1": lambda: _flax("LSTMCell", 1),
    "leaky_elman": lambda: cells.leaky_elman(2, tau=2.0),
    "sparse": lambda: cells.sparse(cells.gru(3), mask=[[1, 0, 1], [1, 1, 0], [0, 1, 1]]),  # a ring, diameter 2
    "influence_balancing": lambda: cells.make("influence_balancing", n=4, n_positive=1),
}
CELL_CASES = [
    ("snap1", {"cell": "stack"}),
    ("columnar", {"n_columns": 2, "cell": "flax_lstm1"}),
    ("rtrl", {"cell": "influence_balancing"}),  # registered by the stream module that is built around it
]


def _make(name, kwargs, objective=None, optimizer=None):
    objective = objective or objectives.squared_error()
    out = 1 if objective.name == "td_lambda" else OUT
    kwargs = dict(kwargs)
    cell = CELLS[kwargs.pop("cell")]() if "cell" in kwargs else cells.lstm(2)
    return learners.make(
        name,
        cell=cell,
        input_size=IN,
        output_size=out,
        objective=objective,
        optimizer=optimizer or optax.adam(1e-2),
        **kwargs,
    )


def _data(key, steps=STEPS, out=OUT):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (steps, IN)), jax.random.normal(ky, (steps, out))


def _ids(case):
    name, kw = case

    def show(k, v):
        if isinstance(v, learners.Options):  # the options that differ from the defaults
            return "-".join(f"{f}{x}" for f, x, d in zip(v._fields, v, learners.Options()) if x != d)
        return f"{k}{v}"

    return name + ("" if not kw else "-" + "-".join(show(k, v) for k, v in kw.items()))


def test_every_registered_learner_is_in_the_suite():
    missing = [n for n in learners.names() if n not in SHAPE_KWARGS]
    assert not missing, f"add shape arguments for {missing} to SHAPE_KWARGS"


def test_every_registered_cell_is_in_the_suite():
    """Every cell of ``cells.names()`` runs in the suite: lstm with every learner (elman and gru share its code
    path, the gated form), the others in CELL_CASES or as a learner's cell in CASES, alone or as a stack's
    layers."""
    covered = {"lstm", "elman", "gru"}
    for _, kw in CELL_CASES + [c for c in CASES if c[1] and "cell" in c[1]]:
        cell = CELLS[kw["cell"]]()
        covered |= {cell.name, cell.name.split("_")[0].split("(")[0]} | {layer.name for layer in cell.layers}
    missing = [n for n in cells.names() if n not in covered]
    assert not missing, f"add a case for the cells {missing} to CELL_CASES"


@pytest.mark.parametrize("case", CASES + CELL_CASES, ids=_ids)
def test_jit_equals_no_jit(x64, case):
    name, kw = case
    learner = _make(name, kw)
    xs, ys = _data(jax.random.PRNGKey(0))
    s_eager = s_jit = learner.init(jax.random.PRNGKey(1))
    step_jit = jax.jit(learner.step)
    for t in range(2 if "cell" in kw else 4):  # eager steps are slow: a few suffice
        s_eager, i_eager = learner.step(s_eager, xs[t], ys[t])
        s_jit, i_jit = step_jit(s_jit, xs[t], ys[t])
        chex.assert_trees_all_close((s_eager, i_eager), (s_jit, i_jit), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES + CELL_CASES, ids=_ids)
def test_vmap_over_keys_equals_loop(x64, case):
    name, kw = case
    learner = _make(name, kw)
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    xs, ys = jax.vmap(_data)(jax.random.split(jax.random.PRNGKey(3), 4))

    def run(key, xs, ys):
        state = learner.init(key)
        return jax.lax.scan(lambda s, xy: learner.step(s, *xy), state, (xs, ys))

    batched = jax.jit(jax.vmap(run))(keys, xs, ys)
    run_one = jax.jit(run)
    for i in range(4):
        single = run_one(keys[i], xs[i], ys[i])
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], batched), single, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("x64_on", [False, True])
def test_state_shapes_and_dtypes_are_stable(case, x64_on):
    name, kw = case
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64_on)
    try:
        learner = _make(name, kw)
        state = learner.init(jax.random.PRNGKey(4))
        float_dtype = jnp.float64 if x64_on else jnp.float32
        for leaf in jax.tree.leaves(state.params):
            assert leaf.dtype == float_dtype
        xs, ys = _data(jax.random.PRNGKey(5))
        new_state, info = jax.jit(learner.step)(state, xs[0], ys[0])
        chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
        chex.assert_trees_all_equal_shapes_and_dtypes(info.grads, state.params)
        assert info.prediction.shape == (OUT,) and info.loss.shape == ()
        assert info.prediction.dtype == float_dtype
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("case", CASES + CELL_CASES, ids=_ids)
def test_step_compiles_once_in_scanned_run(case):
    name, kw = case
    learner = _make(name, kw)
    chex.clear_trace_counter()  # the counter is keyed by the function's code, shared by every learner's step
    step = chex.assert_max_traces(learner.step, n=1)

    @jax.jit
    def run(state, xs, ys):
        return jax.lax.scan(lambda s, xy: step(s, *xy), state, (xs, ys))

    state = learner.init(jax.random.PRNGKey(6))
    for seed in range(3):  # new data and the carried state: no retrace
        xs, ys = _data(jax.random.PRNGKey(10 + seed))
        state, infos = run(state, xs, ys)
    assert np.all(np.isfinite(np.asarray(infos.loss)))


def _serves_td(name, kw):
    """Learners that update once per window (bptt, tbptt with stride > 1) cannot feed TD's eligibility trace."""
    return name != "bptt" and kw.get("stride", 1) == 1


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_td_lambda_objective_runs_or_is_refused_up_front(x64, case):
    name, kw = case
    objective = objectives.td_lambda(0.9, 0.9)
    if not _serves_td(name, kw):
        with pytest.raises(ValueError, match="td_lambda"):
            _make(name, kw, objective=objective)
        return
    learner = _make(name, kw, objective=objective)
    xs = jax.random.normal(jax.random.PRNGKey(0), (STEPS, IN))
    cs = jax.random.normal(jax.random.PRNGKey(1), (STEPS,))
    _, infos = jax.lax.scan(lambda s, xc: learner.step(s, *xc), learner.init(jax.random.PRNGKey(2)), (xs, cs))
    assert infos.prediction.shape == (STEPS, 1)
    assert np.all(np.isfinite(np.asarray(infos.loss)))
    assert float(jnp.max(jnp.abs(infos.loss))) > 0.0

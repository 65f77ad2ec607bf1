"""Bad input gets a one-line ValueError naming the argument and what was expected, before anything compiles."""

import jax
import jax.numpy as jnp
import optax
import pytest

from online_rnn import cells, learners, objectives


def _rtrl(**over):
    kw = dict(cell=cells.lstm(2), input_size=3, output_size=1, objective=objectives.squared_error(),
              optimizer=optax.sgd(0.1))
    kw.update(over)
    return learners.make("rtrl", **kw)


def _one_line(err):
    assert "\n" not in str(err.value)


def test_input_size_mismatch_is_named():
    learner = _rtrl()
    state = learner.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"x_t must have shape \(3,\) \(input_size\), got \(4,\)") as err:
        jax.jit(learner.step)(state, jnp.ones(4), jnp.ones(1))
    _one_line(err)


def test_target_shape_mismatch_is_named():
    learner = _rtrl()
    state = learner.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"signal_t .* shape \(1,\)"):
        learner.step(state, jnp.ones(3), jnp.ones(2))


def test_unknown_learner_name_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown name 'rtlr'; did you mean 'rtrl'\? allowed: .*rtrl") as err:
        learners.make("rtlr")
    _one_line(err)


def test_unknown_learner_argument_lists_allowed():
    with pytest.raises(ValueError, match="unknown argument 'trunc'; allowed: .*truncation"):
        learners.make("tbptt", cell=cells.lstm(2), input_size=3, output_size=1,
                      objective=objectives.squared_error(), optimizer=optax.sgd(0.1), trunc=3)


@pytest.mark.parametrize("name,arg", [("tbptt", "truncation"), ("bptt", "seq_len")])
@pytest.mark.parametrize("value", [0, -2, 1.5])
def test_window_lengths_must_be_positive_ints(name, arg, value):
    with pytest.raises(ValueError, match=f"{arg} must be a positive int"):
        learners.make(name, cell=cells.lstm(2), input_size=3, output_size=1,
                      objective=objectives.squared_error(), optimizer=optax.sgd(0.1), **{arg: value})


def test_tbptt_stride_must_be_one_or_truncation():
    with pytest.raises(ValueError, match="stride must be 1"):
        learners.tbptt(cells.lstm(2), 3, 1, objectives.squared_error(), optax.sgd(0.1), truncation=4, stride=2)


@pytest.mark.parametrize(
    "objective,output_size,expected",
    [
        (objectives.td_lambda(0.9, 0.9), 2, "output_size must be 1 for td_lambda"),
        (objectives.softmax_cross_entropy(), 1, "output_size must be >= 2 for softmax_cross_entropy"),
    ],
)
def test_output_size_must_fit_objective(objective, output_size, expected):
    with pytest.raises(ValueError, match=expected):
        _rtrl(objective=objective, output_size=output_size)


def test_bad_sizes_and_types():
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        _rtrl(input_size=0)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        cells.lstm(0)
    with pytest.raises(ValueError, match="cell must be an online_rnn.cells.Cell"):
        _rtrl(cell="lstm")
    with pytest.raises(ValueError, match="optimizer must be an optax.GradientTransformation"):
        _rtrl(optimizer=0.1)
    with pytest.raises(ValueError, match="unknown name 'lstn'"):
        cells.make("lstn", hidden_size=2)
    with pytest.raises(ValueError, match="readout: unknown 'softmax'"):
        _rtrl(options=learners.Options(readout="softmax"))


def test_new_cells_refuse_bad_arguments_in_one_line():
    import flax.linen as nn

    cases = [
        (lambda: cells.lru(4, r_min=0.9, r_max=0.5), r"r_min and r_max must satisfy 0 <= r_min <= r_max <= 1"),
        (lambda: cells.rtu(4, r_max=1.5), r"r_min and r_max must satisfy"),
        (lambda: cells.lru(4, max_phase=0.0), r"max_phase must be positive"),
        (lambda: cells.rtu(4, activation="gelu"), r"activation: unknown 'gelu'; allowed: linear, relu, tanh"),
        (lambda: cells.rtu(0), r"hidden_size must be a positive int"),
        (lambda: cells.stack([]), r"layers must be a non-empty list of cells"),
        (lambda: cells.stack(cells.lru(2)), r"layers must be a non-empty list of cells"),
        (lambda: cells.stack([{"hidden_size": 2}]), r"layers\[0\]: a cell dict needs a name"),
        (lambda: cells.stack([cells.lru(2), "gru"]), r"layers\[1\] must be a Cell or a cell dict, got str"),
        (lambda: cells.stack([{"name": "lstn", "hidden_size": 2}]), r"cell: unknown name 'lstn'"),
        (lambda: cells.flax("LSTMCell"), r"module must be a flax.linen recurrent cell .*not from YAML"),
        (lambda: cells.flax(nn.Dense(3)), r"module must be a flax.linen recurrent cell"),
        (lambda: cells.flax(nn.LSTMCell(3), hidden_size=0), r"hidden_size must be a positive int"),
    ]
    for build, expected in cases:
        with pytest.raises(ValueError, match=expected) as err:
            build()
        _one_line(err)


def test_learners_that_need_the_per_unit_form_refuse_other_cells_in_one_line():
    import flax.linen as nn

    kw = dict(input_size=3, output_size=1, objective=objectives.squared_error(), optimizer=optax.sgd(0.1))
    flax_cell = cells.flax(nn.GRUCell(2))
    cases = [
        ("snap1", flax_cell, {}, r"snap1 needs a cell with per-unit structure .* 'flax_GRUCell' has none \(rtrl, uoro"),
        ("snap1", cells.stack([cells.lru(2), flax_cell]), {}, r"snap1 needs .* 'flax_GRUCell' has none"),
        ("constructive", cells.lru(1), {"n_units": 2, "steps_per_stage": 3},
         r"constructive needs a cell whose units output their own carry .* 'lru' has none \(rtrl, uoro"),
        ("hybrid", flax_cell, {"n_units": 2, "units_per_stage": 1, "steps_per_stage": 3},
         r"hybrid needs a cell whose units output their own carry .* 'flax_GRUCell'"),
        ("rtrl", cells.flax(nn.GRUCell(2), hidden_size=3), {},
         r"hidden_size: flax_GRUCell outputs shape \(2,\) for one input, not \(3,\); pass hidden_size=2"),
    ]
    for name, cell, extra, expected in cases:
        with pytest.raises(ValueError, match=expected) as err:
            learners.make(name, cell=cell, **kw, **extra)
        _one_line(err)

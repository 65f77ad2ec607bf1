"""Constructive and hybrid (columnar-constructive, CCN) networks: the paper's second constraint and both together.

``hybrid(cell, ..., n_units, units_per_stage, steps_per_stage)``: ``n_units`` columns (copies of ``cell``,
default ``cells.lstm(1)``) are grouped into ``n_units / units_per_stage`` stages. Stage ``s`` learns during
steps ``[s * steps_per_stage, (s + 1) * steps_per_stage)``; before that its units do not exist (carry at its
initial value, output 0); after it they are frozen: their parameters and their input-normalisation statistics
stop changing, bit for bit, while the readout keeps learning over every unit that exists. After the last stage
only the readout learns. ``constructive`` is ``hybrid`` with one unit per stage.

Inputs. A unit of stage ``s`` reads the stream input ``x_t`` and the outputs of every unit of the stages before
``s``, from the previous step (as in the authors' implementation: all units update in parallel, and the
outputs of frozen stages are constants for the learning stage either way). Within a stage the units are
independent columns, so the learning stage is trained with exact RTRL per column (the learning stage's columns
only; frozen units need no trace) and the gradient for its parameters is exactly ``jax.grad`` of the loss
through the sequence with the earlier stages held fixed. All stages are preallocated and the learning stage is
selected from the step counter inside the compiled step: growth never recompiles.

Input normalisation (``normalise_inputs``) here is per stage: each stage normalises its own inputs (``x_t`` and
the earlier stages' outputs) with statistics that update only while the stage learns (the authors keep them per
unit and connection, which is the same thing, since a stage's units see the same inputs over the same steps).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from online_rnn import cells, streaming
from online_rnn.cells import Cell
from online_rnn.learners import fast as _fast
from online_rnn.learners.base import (Credit, Learner, Options, as_options, build, check_learner_args,
                                      check_positive_int, param_count)
from online_rnn.learners.columnar import fast_columns_credit, vmap_credit
from online_rnn.learners.rtrl import rtrl_credit
from online_rnn.objectives import Objective


class HybridTrace(NamedTuple):
    columns: Any  # the learning stage's per-column RTRL traces, stacked (units_per_stage, ...)
    input_stats: Any  # NormStats (n_stages, unit_input_size), or () without input normalisation
    input_scale: Any  # 1 / sqrt(input_stats.var), kept with the statistics (only the learning stage's change)


class _Layout(NamedTuple):
    n_units: int
    units_per_stage: int
    n_stages: int
    k: int  # hidden size of one column
    input_size: int
    unit_input_size: int  # input_size + n_units * k
    unit_stage: np.ndarray  # (n_units,) stage of each unit
    visible: np.ndarray  # (n_stages, n_units * k) bool: feature j feeds stage s


def _layout(cell: Cell, input_size: int, n_units: int, units_per_stage: int) -> _Layout:
    n_stages = n_units // units_per_stage
    k = cell.hidden_size
    unit_stage = np.arange(n_units) // units_per_stage
    feature_stage = np.repeat(unit_stage, k)
    visible = feature_stage[None, :] < np.arange(n_stages)[:, None]
    return _Layout(n_units, units_per_stage, n_stages, k, input_size, input_size + n_units * k, unit_stage, visible)


def _staged_network(cell: Cell, lay: _Layout) -> Cell:
    """The fully grown network as a Cell (all stages present, no normalisation); the learner's own forward
    pass adds stages and normalisation."""

    def init(key: jax.Array, input_size: int) -> Any:
        return jax.vmap(lambda kk: cell.init(kk, lay.unit_input_size))(jax.random.split(key, lay.n_units))

    def initial_carry(params: Any) -> Any:
        return jax.vmap(cell.initial_carry)(params)

    def apply(params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        u = _stage_inputs(lay, x, _outputs(cell, carry))[lay.unit_stage]
        carry_t, h_t = jax.vmap(cell.apply)(params, carry, u)
        return carry_t, h_t.reshape(-1)

    return Cell(init, initial_carry, apply, lay.n_units * lay.k, cell.n_gates, f"staged{lay.n_units}x{cell.name}")


def _outputs(cell: Cell, carry: Any) -> jax.Array:
    """Every unit's current output h (from its carry), flattened: (n_units * k,)."""
    return jax.vmap(jax.vmap(cell.unit_output))(carry).reshape(-1)


def _stage_inputs(lay: _Layout, x: jax.Array, h_prev: jax.Array) -> jax.Array:
    """(n_stages, unit_input_size): stage s reads x_t and the previous outputs of the stages before s."""
    visible = jnp.asarray(lay.visible, h_prev.dtype)
    return jnp.concatenate([jnp.broadcast_to(x, (lay.n_stages, x.shape[0])), visible * h_prev], axis=1)


def _slice_stage(tree: Any, stage: jax.Array, ups: int) -> Any:
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, stage * ups, ups, axis=0), tree)


def _put_stage(tree: Any, part: Any, stage: jax.Array, ups: int) -> Any:
    return jax.tree.map(lambda a, p: jax.lax.dynamic_update_slice_in_dim(a, p, stage * ups, axis=0), tree, part)


def _hybrid_credit(cell: Cell, lay: _Layout, steps_per_stage: int, in_norm: Optional[streaming.Normalisation],
                   fast: bool):
    inner = fast_columns_credit(cell) if fast else vmap_credit(rtrl_credit(cell), lay.units_per_stage, lay.k)
    ups, n_stages = lay.units_per_stage, lay.n_stages
    unit_stage = jnp.asarray(lay.unit_stage)

    def stages(t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        learning = t // steps_per_stage  # may reach n_stages: then nothing but the readout learns
        return learning, jnp.minimum(learning, n_stages - 1), learning < n_stages

    def init(cell_params, carry, readout_params) -> HybridTrace:
        stage_params = _slice_stage(cell_params, jnp.int32(0), ups)
        stage_carry = _slice_stage(carry, jnp.int32(0), ups)
        columns = inner.init(stage_params, stage_carry, readout_params)
        dtype = jax.tree.leaves(cell_params)[0].dtype
        if in_norm is None:
            return HybridTrace(columns, (), ())
        stats = streaming.normaliser_init((n_stages, lay.unit_input_size), dtype)
        return HybridTrace(columns, stats, 1.0 / jnp.sqrt(stats.var))

    def forward(cell_params, carry, trace: HybridTrace, x_t, key, t):
        learning, stage, learns = stages(t)
        started = unit_stage <= learning  # (n_units,)
        raw = _stage_inputs(lay, x_t, _outputs(cell, carry))
        if in_norm is None:
            u, stats, scale = raw, trace.input_stats, trace.input_scale
        else:
            # frozen stages' statistics are constants: only the learning stage's row is updated (and its scale
            # recomputed), once for the whole sweep when the step count is shared
            mean, var = trace.input_stats
            u = (raw - mean) * trace.input_scale
            row = streaming.NormStats(mean[stage], var[stage])
            new_row = streaming.normaliser_update(row, raw[stage], in_norm, learns)
            stats = streaming.NormStats(mean.at[stage].set(new_row.mean), var.at[stage].set(new_row.var))
            scale = trace.input_scale.at[stage].set(1.0 / jnp.sqrt(new_row.var))
        u_units = u[lay.unit_stage]
        new_carry, h_units = jax.vmap(cell.apply)(cell_params, carry, u_units)
        carry_t = jax.tree.map(
            lambda new, old: jnp.where(started.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), new_carry, carry
        )
        h_t = (h_units * started[:, None]).reshape(-1)

        # exact RTRL for the learning stage's columns; their traces restart at zero when the stage begins
        stage_start = t % steps_per_stage == 0
        columns = jax.tree.map(lambda a: jnp.where(stage_start, jnp.zeros_like(a), a), trace.columns)
        p_s = _slice_stage(cell_params, stage, ups)
        c_s = _slice_stage(carry, stage, ups)
        _, _, stage_residuals = inner.forward(p_s, c_s, columns, u[stage], key, t)
        return carry_t, h_t, (cell_params, stage, learns, (stats, scale), stage_residuals)

    def backward(residuals, dh):
        cell_params, stage, learns, stats, stage_residuals = residuals
        dh_s = jax.lax.dynamic_slice_in_dim(dh, stage * ups * lay.k, ups * lay.k, axis=0)
        g_s, columns_t = inner.backward(stage_residuals, dh_s)
        g_s = jax.tree.map(lambda g: jnp.where(learns, g, jnp.zeros_like(g)), g_s)
        return g_s, HybridTrace(columns_t, *stats)  # the learning stage's units only: see ``window``

    def active_features(trace: HybridTrace, t: jax.Array) -> jax.Array:
        learning, _, _ = stages(t)
        return jnp.repeat(unit_stage <= learning, lay.k)

    def window(trace: HybridTrace, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The learning stage's units; after the last stage none learns (only the readout)."""
        _, stage, learns = stages(t)
        return stage * ups, learns

    return Credit(init, forward, backward, active_features=active_features, window=window, window_size=ups,
                  uses_key=inner.uses_key, path=inner.path)


def _network_at(cell: Cell, lay: _Layout, steps_per_stage: int, normalised: bool):
    """The network a hybrid learner trains at a state, as one cell (``Learner.network``): the units of the
    stages up to the learning one exist (the others keep their initial carry and output 0) and every stage reads
    its inputs normalised with the statistics of the state's trace (constants within the step, as in the
    learner's forward pass). Its parameters and carry are the learner's; exact RTRL on it gives the exact
    gradient of the whole grown network, frozen stages included."""
    staged = _staged_network(cell, lay)
    unit_stage = jnp.asarray(lay.unit_stage)

    def network(state: Any) -> Cell:
        started = unit_stage <= state.t // steps_per_stage
        trace = state.trace

        def apply(params: Any, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
            raw = _stage_inputs(lay, x, _outputs(cell, carry))
            u = (raw - trace.input_stats.mean) * trace.input_scale if normalised else raw
            new_carry, h_units = jax.vmap(cell.apply)(params, carry, u[lay.unit_stage])
            carry_t = jax.tree.map(
                lambda new, old: jnp.where(started.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), new_carry,
                carry)
            return carry_t, (h_units * started[:, None]).reshape(-1)

        return staged._replace(apply=apply)

    return network


def _stage_parts(lay: _Layout):
    """``Learner.cell_parts`` of a hybrid network: each stage's units."""
    ups = lay.units_per_stage

    def parts(cell_params: Any) -> dict:
        return {f"stage{s}": jax.tree.map(lambda a: a[s * ups:(s + 1) * ups], cell_params)
                for s in range(lay.n_stages)}

    return parts


def _effective_params(cell: Cell, lay: _Layout, output_size: int, readout: str) -> int:
    """Parameters that can affect the prediction: a unit of stage s has a column's parameters for an input of
    ``input_size + (features of stages < s)``; plus the readout."""
    total = 0
    for s in range(lay.n_stages):
        in_eff = lay.input_size + s * lay.units_per_stage * lay.k
        shapes = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), in_eff))
        total += lay.units_per_stage * param_count(shapes)
    if readout == "linear":
        total += output_size * (lay.n_units * lay.k + 1)
    return total


def hybrid(
    cell: Optional[Cell],
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    n_units: int,
    units_per_stage: int,
    steps_per_stage: int,
    *,
    options: Optional[Options] = None,
    name: str = "hybrid",
    fast: bool = True,
) -> Learner:
    """Columnar-constructive network (see the module docstring). ``fast`` trains the learning stage's one-unit
    gated columns with the fused update of :mod:`online_rnn.learners.fast`; ``fast=False`` (or other cells)
    vmaps generic per-column RTRL (the test oracle)."""
    cell = cells.lstm(1) if cell is None else cell
    check_learner_args(cell, input_size, output_size, objective, optimizer)
    n_units = check_positive_int("n_units", n_units)
    ups = check_positive_int("units_per_stage", units_per_stage)
    steps_per_stage = check_positive_int("steps_per_stage", steps_per_stage)
    if n_units % ups:
        raise ValueError(f"n_units ({n_units}) must be a multiple of units_per_stage ({ups})")
    if cell.unit_output is None:
        raise ValueError(f"{name} needs a cell whose units output their own carry (unit_output); {cell.name!r} has "
                         f"none (rtrl, uoro, tbptt, bptt and columnar take any cell)")
    lay = _layout(cell, input_size, n_units, ups)
    opts = as_options(options)
    in_norm = streaming.as_normalisation(opts.normalise_inputs, "normalise_inputs")
    use_fast = fast and cell.hidden_size == 1 and _fast.supports(cell)
    credit = _hybrid_credit(cell, lay, steps_per_stage, in_norm, use_fast)
    # input normalisation is the credit rule's (per stage), not build's
    return build(name, _staged_network(cell, lay), credit, input_size, output_size, objective, optimizer,
                 opts._replace(normalise_inputs=None), _effective_params(cell, lay, output_size, opts.readout),
                 network=_network_at(cell, lay, steps_per_stage, in_norm is not None), cell_parts=_stage_parts(lay))


def constructive(
    cell: Optional[Cell],
    input_size: int,
    output_size: int,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    n_units: int,
    steps_per_stage: int,
    *,
    options: Optional[Options] = None,
    fast: bool = True,
) -> Learner:
    """Constructive network: one unit per stage, each reading the input and every earlier unit."""
    return hybrid(cell, input_size, output_size, objective, optimizer, n_units, 1, steps_per_stage,
                  options=options, name="constructive", fast=fast)

"""The copy task with an online curriculum.

Background: the copy task with a curriculum on the sequence length is the benchmark of Mujika, Meier & Steger,
"Approximating real-time recurrent learning with random Kronecker factors" (NeurIPS 2018), on which T-BPTT
fails beyond its truncation window (Javed et al. 2023 cite it for this). The input encoding ``[start, flag, bit]``,
the error measure and the thresholds below are this library's choices; the published curricula may differ in detail (for
instance in measuring the loss in bits per character rather than the fraction of wrong bits).

Layout. Observations are ``[start, flag, bit]``. A sequence of length ``L`` takes ``2 L + 2`` steps:

- position 0: the start symbol ``[1, 0, 0]``;
- positions 1..L: the bits ``[0, 0, b_i]``, ``b_i ~ Bernoulli(0.5)`` (a 0 bit shows as an all-zero input: the
  learner knows the phase from the start symbol);
- position L + 1: the flag ``[0, 1, 0]``;
- positions L + 2 .. 2 L + 1: blank ``[0, 0, 0]`` output steps, on which the target is ``b_1 .. b_L`` in order.

Sequences follow each other without a gap. The signal is an :class:`online_rnn.objectives.Target` of shape
``(1,)``: the bit with weight 1 on output steps, ``0`` with weight 0 elsewhere (``default_objective =
"sigmoid_cross_entropy"``, the prediction being the bit's logit).

Curriculum. ``L`` starts at ``params.initial_length`` (1). The runner calls ``env.feedback(state, params,
prediction)`` after every learner step with that step's prediction (the logit, shape ``(1,)``); on output steps
the stream counts a bit as wrong when ``(prediction > 0) != bit``. When a sequence's last output step has been
fed back, its error ``err`` = (wrong bits) / L updates the decayed average ``avg = 0.9 avg + 0.1 err``
(``params.decay``), and if ``avg < 0.10`` (``params.threshold``) ``L`` grows by 1 (up to the constructor's
``max_length``) and ``avg`` restarts at ``params.initial_error_average``. Choice: that initial value is 0.5,
the error rate of guessing, so after every growth the average must again be earned by about 16 sequences of
perfect copies (``0.5 * 0.9^16 < 0.1``) rather than carried over from the shorter length. ``L`` changes only
between sequences: the next sequence takes the new length. A runner that never calls ``feedback`` gets a fixed
``L``.

Bits per character. Report ``sum(loss over output steps) / (ln 2 * number of output steps)`` over a window,
with the per-step sigmoid cross-entropy (nats) of the learner and ``info["output_step"]``;
:func:`bits_per_character` does this for arrays.

Time 0. ``reset`` returns one blank step before the first sequence; the first ``step`` shows its start symbol.

``info``: ``"length"`` (L of the current sequence), ``"curriculum_length"`` (L for the next sequence),
``"position"``, ``"sequence_start"``, ``"output_step"`` (bool), ``"target_bit"``, ``"bit_error"`` (error
fraction of the last finished sequence, as fed back), ``"error_average"`` (the decayed average).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from online_rnn import prng

from online_rnn.envs.base import Environment, as_float, as_int, check_int, float_dtype
from online_rnn.objectives import Target

MAX_LENGTH = 64


@struct.dataclass
class EnvParams:
    initial_length: jax.Array  # int32, L of the first sequence
    decay: jax.Array  # 0.9: avg <- decay * avg + (1 - decay) * err
    threshold: jax.Array  # 0.10: grow L when avg falls below this
    initial_error_average: jax.Array  # 0.5: avg at the start and after every growth


@struct.dataclass
class EnvState:
    length: jax.Array  # int32: curriculum L (the next sequence's length)
    seq_length: jax.Array  # int32: L of the current sequence
    position: jax.Array  # int32: position of the last emitted step within the current sequence
    bits: jax.Array  # (max_length,) int32: the current sequence's bits
    n_wrong: jax.Array  # int32: wrong bits fed back so far in the current sequence
    error_average: jax.Array  # float
    last_bit_error: jax.Array  # float: error fraction of the last finished sequence
    last_output: jax.Array  # bool: the last emitted step was an output step
    last_final: jax.Array  # bool: ... and the sequence's last one
    last_target: jax.Array  # int32: its target bit


def bits_per_character(losses: jax.Array, output_steps: jax.Array) -> jax.Array:
    """Mean cross-entropy in bits over output steps, from per-step losses in nats (e.g. a learner's
    ``StepInfo.loss``, which is 0 off output steps) and ``info["output_step"]``."""
    mask = jnp.asarray(output_steps).astype(jnp.asarray(losses).dtype)
    return jnp.sum(losses * mask) / (math.log(2.0) * jnp.maximum(jnp.sum(mask), 1.0))


class CopyTask(Environment):
    """See the module docstring."""

    kind = "supervised"
    observation_size = 3
    signal_size = 1
    default_objective = "sigmoid_cross_entropy"
    default_logs = ("curriculum_length",)
    table_columns = (("bits/char", lambda nats: nats / math.log(2)),)  # the loss is in nats per output bit

    def __init__(self, max_length: int = MAX_LENGTH, initial_length: int = 1):
        self.max_length = check_int("max_length", max_length)
        self._initial_length = check_int("initial_length", initial_length)
        if self._initial_length > self.max_length:
            raise ValueError(f"initial_length ({initial_length}) must be <= max_length ({max_length})")
        self.name = "copy_task"

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(
            initial_length=as_int(self._initial_length),
            decay=as_float(0.9),
            threshold=as_float(0.10),
            initial_error_average=as_float(0.5),
        )

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        dtype = float_dtype()
        length = jnp.clip(params.initial_length, 1, self.max_length).astype(jnp.int32)
        state = EnvState(
            length=length,
            seq_length=length,
            position=2 * length + 1,  # the last step of a (virtual) sequence: the first step starts a new one
            bits=jnp.zeros((self.max_length,), jnp.int32),
            n_wrong=jnp.zeros((), jnp.int32),
            error_average=params.initial_error_average.astype(dtype),
            last_bit_error=jnp.zeros((), dtype),
            last_output=jnp.zeros((), bool),
            last_final=jnp.zeros((), bool),
            last_target=jnp.zeros((), jnp.int32),
        )
        return jnp.zeros((3,), dtype), state

    def step(self, key: jax.Array, state: EnvState, params: EnvParams):
        dtype = float_dtype()
        position = state.position + 1
        new_sequence = position >= 2 * state.seq_length + 2
        words = prng.bits(key, -(-self.max_length // 32))  # 32 fair bits per word, one fused hash per step
        # bit i is bit (i % 32) of word i // 32. Written as a broadcast and a reshape: the same thing written as
        # a gather ``words[arange // 32]`` sends XLA's CPU compiler into a pass that runs for many minutes.
        shifts = jnp.arange(32, dtype=jnp.uint32)
        fresh_bits = ((words[:, None] >> shifts[None, :]) & 1).reshape(-1)[: self.max_length].astype(jnp.int32)
        seq_length = jnp.where(new_sequence, state.length, state.seq_length)
        bits = jnp.where(new_sequence, fresh_bits, state.bits)
        position = jnp.where(new_sequence, 0, position)
        n_wrong = jnp.where(new_sequence, 0, state.n_wrong)

        is_start = position == 0
        is_input_bit = (position >= 1) & (position <= seq_length)
        is_flag = position == seq_length + 1
        is_output = position >= seq_length + 2
        input_bit = jnp.where(is_input_bit, bits[jnp.clip(position - 1, 0, self.max_length - 1)], 0)
        target_bit = jnp.where(is_output, bits[jnp.clip(position - seq_length - 2, 0, self.max_length - 1)], 0)
        obs = jnp.stack([is_start, is_flag, input_bit > 0]).astype(dtype)
        signal = Target(value=target_bit.astype(dtype)[None], weight=is_output.astype(dtype))
        info = {
            "length": seq_length,
            "curriculum_length": state.length,
            "position": position,
            "sequence_start": is_start,
            "output_step": is_output,
            "target_bit": target_bit,
            "bit_error": state.last_bit_error,
            "error_average": state.error_average,
        }
        new_state = state.replace(
            seq_length=seq_length,
            position=position,
            bits=bits,
            n_wrong=n_wrong,
            last_output=is_output,
            last_final=is_output & (position == 2 * seq_length + 1),
            last_target=target_bit,
        )
        return obs, new_state, signal, info

    def feedback(self, state: EnvState, params: EnvParams, prediction: jax.Array) -> EnvState:
        """Count the last step's bit error from the learner's logit and run the curriculum (module docstring).
        Call exactly once after every step."""
        dtype = state.error_average.dtype
        logit = jnp.reshape(jnp.asarray(prediction), (-1,))[0]
        wrong = state.last_output & ((logit > 0) != (state.last_target > 0))
        n_wrong = state.n_wrong + wrong.astype(jnp.int32)
        finished = state.last_final
        error = n_wrong.astype(dtype) / state.seq_length.astype(dtype)
        decay = params.decay.astype(dtype)
        average = jnp.where(finished, decay * state.error_average + (1.0 - decay) * error, state.error_average)
        grow = finished & (average < params.threshold.astype(dtype)) & (state.length < self.max_length)
        return state.replace(
            length=jnp.where(grow, state.length + 1, state.length).astype(jnp.int32),
            n_wrong=n_wrong,
            error_average=jnp.where(grow, params.initial_error_average.astype(dtype), average),
            last_bit_error=jnp.where(finished, error, state.last_bit_error),
            last_output=jnp.zeros((), bool),
            last_final=jnp.zeros((), bool),
        )


def copy_task(max_length: int = MAX_LENGTH, initial_length: int = 1) -> CopyTask:
    """The copy task with its curriculum; ``max_length`` (shape-fixing) caps ``L``."""
    return CopyTask(max_length, initial_length)

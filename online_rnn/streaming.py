"""The paper's streaming pieces, usable with any learner.

* Online normalisation (per input, or per feature before the readout): running mean and variance with decay
  ``d``, and a floor on the standard deviation::

      m <- d m + (1 - d) x;   v <- d v + (1 - d) (x - m)^2;   v <- max(v, min_std^2);   x_hat = (x - m) / sqrt(v)

  starting from ``m = 0, v = 1``. This is the update of the authors' code (khurramjaved96/Columnar-
  Constructive-Networks, ``lstm.cpp`` and ``lstm_incremental_networks.cpp``), whose ``std_cap`` floors the
  variance; here the floor is stated on the standard deviation, ``min_std = sqrt(std_cap)``. ``d = 1`` keeps
  ``m = 0, v = 1``: no normalisation. The statistics are constants for differentiation.
* :func:`ccn_rmsprop`: the paper's RMSProp-like optimizer, ``n <- beta2 n + (1 - beta2) g^2``,
  ``theta <- theta - lr g / (sqrt(n) + eps)`` with ``beta2 = 0.9999``, ``eps = 1e-8`` and the normaliser ``n``
  initialised to 1, no momentum and no bias correction (same source).
* Dividing the readout's step size by the number of active features is the learners' ``readout_step_scale``
  option (the authors' code divides the readout and bias step sizes by the number of features admitted so far).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax


class Normalisation(NamedTuple):
    """Settings of an online normaliser: decay rate of the running statistics and floor on the std."""

    decay: float = 0.99999
    min_std: float = 0.1


class NormStats(NamedTuple):
    mean: jax.Array
    var: jax.Array


def as_normalisation(value: Union[None, Normalisation, dict, float], name: str) -> Optional[Normalisation]:
    """Accept ``None`` (off), a :class:`Normalisation`, a dict of its fields, or a decay rate."""
    if value is None or value is False:
        return None
    if isinstance(value, Normalisation):
        norm = value
    elif isinstance(value, dict):
        unknown = sorted(set(value) - set(Normalisation._fields))
        if unknown:
            raise ValueError(f"{name}: unknown key {unknown[0]!r}; allowed: {', '.join(Normalisation._fields)}")
        norm = Normalisation(**value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        norm = Normalisation(decay=float(value))
    else:
        raise ValueError(f"{name} must be None, a decay rate, or a dict with keys decay, min_std; got {value!r}")
    if not 0.0 <= norm.decay <= 1.0:
        raise ValueError(f"{name}.decay must be in [0, 1], got {norm.decay}")
    if not norm.min_std > 0.0:
        raise ValueError(f"{name}.min_std must be > 0, got {norm.min_std}")
    return norm


def normaliser_init(shape: Any, dtype: Any) -> NormStats:
    return NormStats(mean=jnp.zeros(shape, dtype), var=jnp.ones(shape, dtype))


def normaliser_update(
    stats: NormStats, x: jax.Array, norm: Normalisation, mask: Optional[jax.Array] = None
) -> NormStats:
    """One step of the running statistics; entries where ``mask`` is False keep their old statistics."""
    d = jnp.asarray(norm.decay, stats.mean.dtype)
    mean = d * stats.mean + (1.0 - d) * x
    var = d * stats.var + (1.0 - d) * (x - mean) ** 2
    var = jnp.maximum(var, jnp.asarray(norm.min_std, var.dtype) ** 2)
    if mask is not None:
        mean = jnp.where(mask, mean, stats.mean)
        var = jnp.where(mask, var, stats.var)
    return NormStats(mean, var)


def normalise(stats: NormStats, x: jax.Array) -> jax.Array:
    stats = jax.lax.stop_gradient(stats)
    return (x - stats.mean) / jnp.sqrt(stats.var)


def ccn_rmsprop(
    learning_rate: Any, beta2: float = 0.9999, eps: float = 1e-8, initial_normaliser: float = 1.0
) -> optax.GradientTransformation:
    """The paper's RMSProp-like optimizer (see the module docstring)."""
    return optax.rmsprop(
        learning_rate, decay=beta2, eps=eps, initial_scale=initial_normaliser, eps_in_sqrt=False
    )

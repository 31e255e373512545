"""Layer helpers the example models use (dropout)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout driven by an explicit key (``None`` or rate 0: identity).

  A pure function of ``key``: the training loop derives keys from ``(seed, step)``, so a
  resumed run drops the same units as an uninterrupted one.
  """
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)

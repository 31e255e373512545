"""Parameter trees for the benchmarks: cheap real buffers and the bytes a step moves.

Trees come from :mod:`benchmarks._tables` (the examples' models under ``jax.eval_shape``:
nothing allocated); where a benchmark needs real buffers they are materialised with a
cheap hash fill.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


def synthetic_params(widths: Sequence[int] = (64, 256, 64), depth: int = 2,
                     dtype: Any = jnp.float32) -> PyTree:
  """A small hand-built abstract tree (an MLP stack with norms) for tests and smoke runs."""
  tree: dict[str, Any] = {"embed": jax.ShapeDtypeStruct((widths[0] * 4, widths[0]), dtype)}
  for layer in range(depth):
    block = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
      block[f"fc{i}"] = {"kernel": jax.ShapeDtypeStruct((a, b), dtype),
                         "bias": jax.ShapeDtypeStruct((b,), dtype)}
    block["norm"] = {"scale": jax.ShapeDtypeStruct((widths[-1],), dtype),
                     "bias": jax.ShapeDtypeStruct((widths[-1],), dtype)}
    tree[f"layer{layer}"] = block
  return tree


def llama2_7b_params(vocab: int = 32000, dim: int = 4096, layers: int = 32,
                     hidden: int = 11008, dtype: Any = jnp.float32) -> PyTree:
  """A Llama-2-7B-shaped abstract tree (6.74B parameters), for shape-only memory tables.

  The published architecture: untied 32,000 x 4,096 embedding and output head, 32 layers
  of attention (q, k, v, o: 4,096 x 4,096, no biases) and a SwiGLU MLP (gate and up
  4,096 x 11,008, down 11,008 x 4,096), two RMSNorm scales per layer and a final one. One
  leaf per tensor, as a PyTorch module has (the paper's memory anchor: 25.15 GB saved
  against AdamW in float32).
  """
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
  tree: dict[str, Any] = {"embed": s(vocab, dim), "norm": s(dim), "lm_head": s(dim, vocab)}
  for i in range(layers):
    tree[f"layer{i}"] = {
        "attn": {k: s(dim, dim) for k in ("q", "k", "v", "o")},
        "mlp": {"gate": s(dim, hidden), "up": s(dim, hidden), "down": s(hidden, dim)},
        "attn_norm": s(dim), "mlp_norm": s(dim)}
  return tree


def _hash_fill(shape: Sequence[int], dtype: Any, salt: int, scale: float) -> jax.Array:
  """Pseudo-random values in ``[-scale, scale)`` from an integer hash of the index.

  Much cheaper than ``jax.random.normal`` on CPU (one elementwise pass, no threefry), and
  just as good for timing: no benchmarked step depends on the values.
  """
  n = math.prod(shape)
  h = jax.lax.iota(jnp.uint32, n) + jnp.uint32(salt * 0x9E3779B9 % 2**32)
  h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
  h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
  h = h ^ (h >> 16)
  unit = (h >> 8).astype(jnp.float32) * (2.0 / 2**24) - 1.0
  return (scale * unit).reshape(shape).astype(dtype)


def materialise(abstract: PyTree, seed: int = 0, scale: float = 0.02) -> PyTree:
  """Real arrays for an abstract tree: a cheap pseudo-random fill, one jitted call.

  Values do not matter for step time (no optimizer here branches on them in the steady
  step), so a fixed hash of each entry's index (different per leaf and seed) is enough.
  """
  leaves, treedef = jax.tree.flatten(abstract)

  @jax.jit
  def fill() -> list[jax.Array]:
    return [_hash_fill(leaf.shape, leaf.dtype, seed * 7919 + i + 1, scale)
            for i, leaf in enumerate(leaves)]

  return jax.block_until_ready(treedef.unflatten(fill()))


def tree_nbytes(tree: PyTree) -> int:
  """Bytes of all array leaves of a (concrete or abstract) tree."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None or dtype == jax.dtypes.float0:
      continue
    total += math.prod(shape) * np.dtype(dtype).itemsize
  return total


def tree_size(tree: PyTree) -> int:
  """Number of entries in all array leaves."""
  return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))


def abstract_state(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
  """The optimizer state's shapes, from ``jax.eval_shape(tx.init, params)``."""
  return jax.eval_shape(tx.init, params)


def forwarded_state_leaves(tx: optax.GradientTransformation, params: PyTree,
                           state: PyTree) -> list[bool]:
  """For each state leaf, whether the step returns it unchanged (no write needed).

  Read from the step's jaxpr: an output variable that *is* the matching input variable is
  passed through (Prodigy's ``params0``, for example).
  """

  def step(p: PyTree, s: PyTree, g: PyTree) -> tuple[PyTree, PyTree]:
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  jaxpr = jax.make_jaxpr(step)(params, state, params).jaxpr
  n_params = len(jax.tree.leaves(params))
  n_state = len(jax.tree.leaves(state))
  ins = jaxpr.invars[n_params:n_params + n_state]
  outs = jaxpr.outvars[n_params:n_params + n_state]
  return [o is i for i, o in zip(ins, outs, strict=True)]


@dataclasses.dataclass(frozen=True)
class StepBytes:
  """The bytes one optimizer step must move through memory (its physical minimum).

  The model: the step reads the gradient, the parameters and the whole optimizer state
  once, and writes the parameters and every state leaf it changes, once.
  """

  grads: int
  params: int
  state: int
  state_written: int

  @property
  def read(self) -> int:
    return self.grads + self.params + self.state

  @property
  def written(self) -> int:
    return self.params + self.state_written

  @property
  def total(self) -> int:
    return self.read + self.written


def step_bytes(tx: optax.GradientTransformation, params: PyTree,
               grads: PyTree | None = None) -> StepBytes:
  """Counts :class:`StepBytes` for ``tx`` from the trees' shapes (abstract trees work)."""
  grads = params if grads is None else grads
  state = abstract_state(tx, params)
  forwarded = forwarded_state_leaves(tx, params, state)
  state_leaves = jax.tree.leaves(state)
  written = sum(tree_nbytes(x) for x, f in zip(state_leaves, forwarded, strict=True) if not f)
  return StepBytes(grads=tree_nbytes(grads), params=tree_nbytes(params),
                   state=tree_nbytes(state), state_written=written)


def elementwise_bytes(params: PyTree) -> int:
  """Bytes the bandwidth probe moves: read parameters and gradient, write parameters."""
  return 3 * tree_nbytes(params)

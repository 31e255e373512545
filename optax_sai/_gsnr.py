"""The gradient signal-to-noise ratio (g-SNR) and the partition into blocks.

Pure functions only: nothing here holds state. A *block* is the set of entries
over which one g-SNR is computed. By default every pytree leaf is one block
(PyTorch's one block per parameter tensor). A leaf with leading stacked axes
(scanned layers) can be split into one block per slice along ``block_axes``:
its statistic then has the shape of those axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

# One leaf's block axes: an int, a tuple of ints, or None (the leaf is one block).
AxesSpec = int | tuple[int, ...] | None
# What users may pass: a spec for every leaf, a pytree of specs (a prefix of the
# parameter tree) or a callable ``(path, leaf) -> spec``.
BlockAxes = AxesSpec | Any | Callable[[tuple[Any, ...], Any], AxesSpec]


def is_trainable_leaf(x: Any) -> bool:
  """Whether a leaf takes part in SGD-SaI: a real floating-point array."""
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def stats_dtype(dtype: Any) -> jnp.dtype:
  """The dtype g-SNR statistics are computed and stored in: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def _is_axes_spec(x: Any) -> bool:
  if x is None or isinstance(x, bool):
    return x is None
  if isinstance(x, int):
    return True
  return (
      type(x) is tuple and all(isinstance(a, int) and not isinstance(a, bool) for a in x)
  )


def _normalize_axes(spec: AxesSpec, ndim: int, path: Sequence[Any]) -> tuple[int, ...]:
  """Turns one leaf's spec into sorted, non-negative, unique axes."""
  if spec is None:
    return ()
  axes = (spec,) if isinstance(spec, int) else tuple(spec)
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
          f"block_axes: axis {a} is out of range for the leaf at "
          f"{jax.tree_util.keystr(tuple(path))} with {ndim} dimension(s)."
      )
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(
        f"block_axes: repeated axis in {spec!r} for the leaf at "
        f"{jax.tree_util.keystr(tuple(path))}."
    )
  return tuple(sorted(out))


def resolve_block_axes(block_axes: BlockAxes, tree: Any) -> Any:
  """Returns a pytree like ``tree`` whose leaves are each leaf's block axes.

  Args:
    block_axes: ``None`` (every leaf is one block), an int or a tuple of ints
      (the same axes for every trainable leaf), a pytree of such specs whose
      structure is a prefix of ``tree`` (``None`` marks leaves that are one
      block), or a callable ``(path, leaf) -> spec``.
    tree: the parameter (or gradient) pytree.

  Returns:
    A pytree with the structure of ``tree`` whose leaves are tuples of
    non-negative axes (the empty tuple for leaves that are one block).

  Raises:
    ValueError: for a malformed spec, or an axis out of range for a leaf (the
      message names the leaf's path).
  """

  def leaf_axes(path, leaf, spec):
    if not is_trainable_leaf(leaf):
      return ()
    if not _is_axes_spec(spec):
      raise ValueError(
          f"block_axes: expected None, an int or a tuple of ints for the leaf at "
          f"{jax.tree_util.keystr(tuple(path))}, got {spec!r}."
      )
    return _normalize_axes(spec, jnp.ndim(leaf), path)

  if block_axes is None or _is_axes_spec(block_axes):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: leaf_axes(p, x, block_axes), tree
    )
  if callable(block_axes):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: leaf_axes(p, x, block_axes(p, x)), tree
    )
  # A pytree of specs: broadcast each spec over the subtree it stands for.
  try:
    per_leaf = jax.tree.map(
        lambda spec, sub: jax.tree.map(lambda _: spec, sub),
        block_axes,
        tree,
        is_leaf=_is_axes_spec,
    )
  except ValueError as e:
    raise ValueError(
        "block_axes: the pytree of axes must have the structure of the parameters "
        f"(or a prefix of it): {e}"
    ) from None
  return _map_with_specs(tree, per_leaf, leaf_axes)


def _map_with_specs(tree: Any, per_leaf: Any, fn: Callable[..., Any]) -> Any:
  """Maps ``fn(path, leaf, spec)`` where ``per_leaf`` has specs (tuples) as leaves."""
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  specs = treedef.flatten_up_to(per_leaf)
  return treedef.unflatten([fn(p, x, s) for (p, x), s in zip(paths_leaves, specs, strict=True)])


def block_shape(shape: Sequence[int], axes: tuple[int, ...]) -> tuple[int, ...]:
  """The shape of one leaf's per-block statistic."""
  return tuple(shape[a] for a in axes)


def block_size(shape: Sequence[int], axes: tuple[int, ...]) -> int:
  """The number of entries in each block of a leaf."""
  return math.prod(s for i, s in enumerate(shape) if i not in axes)


def leaf_gsnr(g: jax.Array, axes: tuple[int, ...] = (), eps: float = 1e-8) -> jax.Array:
  """g-SNR of each block of one leaf: ``||g||_2 / (std(g) + eps)``.

  ``std`` is the unbiased (n - 1) standard deviation, ``eps`` is added to it
  outside the square root, as in the reference. A block of one entry, whose
  standard deviation is undefined, gets a g-SNR of 1 (= sqrt(n) for n = 1).
  Statistics are computed in at least float32.

  Args:
    g: a gradient leaf.
    axes: the leaf's stacked axes; the statistic is reduced over all others.
    eps: added to the standard deviation.

  Returns:
    An array of shape ``block_shape(g.shape, axes)``.
  """
  return leaf_capture_stats(g, axes, eps)[1]


def leaf_capturable(g: jax.Array, axes: tuple[int, ...] = ()) -> jax.Array:
  """Whether each block's gradient can be captured: finite and not all zero."""
  return leaf_capture_stats(g, axes, 0.0)[0]


def leaf_capture_stats(g: jax.Array, axes: tuple[int, ...] = (),
                       eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
  """``(capturable, gsnr)`` of each block of one leaf, sharing one ``max |g|`` pass.

  A block is capturable when its gradient is finite and not all zero. Both follow
  from ``peak = max |g|``: XLA's ``max`` propagates NaN, so ``peak`` is finite exactly
  when every entry is, and positive exactly when some entry is non-zero. (No boolean
  mask per entry: XLA's CPU backend would materialise one per leaf, about half the
  parameters' bytes of scratch.) Three reductions per block in all, which also keeps
  the capture branch's compile time down.

  The g-SNR is computed on ``g / peak`` (with ``eps / peak``): the same number, but
  sums of squares can neither overflow (``|g| ~ 1e19`` in float32) nor underflow to
  zero (``|g| ~ 1e-23``), which would store a NaN or a zero g-SNR.
  """
  dtype = stats_dtype(g.dtype)
  g = g.astype(dtype)
  reduce_axes = tuple(i for i in range(g.ndim) if i not in axes)
  n = block_size(g.shape, axes)
  out_shape = block_shape(g.shape, axes)
  peak = jnp.max(jnp.abs(g), axis=reduce_axes, keepdims=True)
  usable = jnp.isfinite(peak) & (peak > 0)
  capturable = usable.reshape(out_shape)
  if n <= 1:
    return capturable, jnp.ones(out_shape, dtype)
  peak = jnp.where(usable, peak, 1)
  # The two reductions must not share a full-size operand: XLA:CPU materialises a
  # broadcast of ``1 / peak`` that feeds both (a parameter-sized temporary, allocated
  # on every step since the capture branch's buffers count too). So the second one
  # scales by 2 / peak and divides by 4: exact, as powers of two are.
  mean = jnp.mean(g * (1 / peak), axis=reduce_axes, keepdims=True)
  squared_deviations = jnp.sum(jnp.square(g * (2 / peak) - 2 * mean), axis=reduce_axes,
                               keepdims=True) / 4
  # ||g||^2 = sum (g - mean)^2 + n mean^2: two non-negative terms, so no cancellation,
  # and one reduction fewer than summing g^2 separately.
  norm = jnp.sqrt(squared_deviations + n * jnp.square(mean))
  std = jnp.sqrt(squared_deviations / (n - 1))
  return capturable, (norm / (std + eps / peak)).reshape(out_shape)


def gsnr(tree: Any, eps: float = 1e-8, block_axes: BlockAxes = None) -> Any:
  """The g-SNR of every block of a gradient pytree.

  For a block of n entries with mean m and biased variance v the g-SNR is
  ``||g|| / (std(g) + eps) = sqrt(n - 1) * sqrt(1 + m**2 / v)`` (eps -> 0): at
  least ``sqrt(n - 1)``, and invariant to rescaling the gradient.

  Args:
    tree: a pytree of gradients.
    eps: added to the (unbiased) standard deviation.
    block_axes: how leaves split into blocks; see :func:`optax_sai.scale_by_gsnr`.

  Returns:
    A pytree like ``tree`` with one float32 (float64 for float64 leaves) value
    per block: a scalar per leaf, or an array of the stacked axes' shape.
    Non-floating leaves are mapped to ``None``.

  Example:
    >>> import jax.numpy as jnp, optax_sai
    >>> float(optax_sai.gsnr(jnp.array([1.0, 2.0, 3.0, 4.0])))  # sqrt(18)
    4.242640...

  References:
    Xu et al., `No More Adam: Learning Rate Scaling at Initialization is All
    You Need <https://arxiv.org/abs/2412.11768>`_, 2024.
  """
  axes_tree = resolve_block_axes(block_axes, tree)
  return _map_with_specs(
      tree,
      axes_tree,
      lambda _, g, axes: leaf_gsnr(g, axes, eps) if is_trainable_leaf(g) else None,
  )


def tree_paths(tree: Any) -> list[str]:
  """The key paths of a pytree's leaves, as strings (for error messages)."""
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]]

"""The gradient signal-to-noise ratio (g-SNR) and the partition into blocks.

Pure functions only: nothing here holds state. Read top-down: the paper's definition
(:func:`reference_gsnr`), the public :func:`gsnr` of a tree, the partition into blocks,
then the two-pass computation the optimizer uses. A *block* is the set of entries over
which one g-SNR is computed. By default every pytree leaf is one block (PyTorch's one
block per parameter tensor). A leaf with leading stacked axes (scanned layers) can be
split into one block per slice along ``block_axes``: its statistic then has the shape of
those axes.
"""

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


def reference_gsnr(g: jax.Array, eps: float = 1e-8) -> jax.Array:
  """The paper's g-SNR of one block, as written: ``||g||_2 / (std(g, ddof=1) + eps)``.

  The definition a reader checks at a glance; :func:`leaf_gsnr` computes the same number
  in two passes that neither overflow, underflow nor cancel, and whose results the
  capture also uses. A one-entry block, whose std is undefined, has g-SNR 1 (= sqrt(n)).
  """
  g = jnp.ravel(g).astype(stats_dtype(g.dtype))
  if g.size == 1:
    return jnp.ones((), g.dtype)
  return jnp.linalg.norm(g) / (jnp.std(g, ddof=1) + eps)


def gsnr(tree: Any, eps: float = 1e-8, block_axes: BlockAxes = None) -> Any:
  """The g-SNR of every block of a gradient pytree.

  For a block of n entries with mean m and biased variance v the g-SNR is
  ``||g|| / (std(g) + eps) = sqrt(n - 1) * sqrt(1 + m**2 / v)`` (eps -> 0): at
  least ``sqrt(n - 1)``, and invariant to rescaling the gradient. This is the
  statistic alone: :func:`optax_sai.scale_by_gsnr` also defers blocks that are
  all zero, non-finite or numerically zero before capturing it.

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


def leaf_gsnr(g: jax.Array, axes: tuple[int, ...] = (), eps: float = 1e-8) -> jax.Array:
  """g-SNR of each block of one leaf: ``||g||_2 / (std(g) + eps)``.

  ``std`` is the unbiased (n - 1) standard deviation, ``eps`` is added to it
  outside the square root, as in the reference. A block of one entry, whose
  standard deviation is undefined, gets a g-SNR of 1 (= sqrt(n) for n = 1).
  Statistics are computed in at least float32. An all-zero block (of two or more
  entries) has g-SNR 0, a block with a non-finite entry NaN.

  Args:
    g: a gradient leaf.
    axes: the leaf's stacked axes; the statistic is reduced over all others.
    eps: added to the standard deviation.

  Returns:
    An array of shape ``block_shape(g.shape, axes)``.
  """
  snr, peak = leaf_capture_stats(g, axes, eps)
  if block_size(g.shape, axes) <= 1:
    return snr
  # Unusable blocks: all zero (peak 0) -> 0; non-finite (peak inf or NaN) -> NaN.
  return jnp.where(block_usable(peak), snr, jnp.where(peak == 0, 0, jnp.nan)).astype(snr.dtype)


def stats_dtype(dtype: Any) -> jnp.dtype:
  """The dtype g-SNR statistics are computed and stored in: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def is_trainable_leaf(x: Any) -> bool:
  """Whether a leaf takes part in SGD-SaI: a real floating-point array."""
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


# The partition into blocks.


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


# The two passes: what the capture and leaf_gsnr compute, robust to any magnitude.


# Blocks of at least this many entries are reduced with single-output reductions (fast to
# run), smaller ones with variadic reductions (one kernel to compile); the measurements are
# in docs/guides/performance.md.
LARGE_BLOCK = 1 << 16


def _reduce_axes(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(i for i in range(ndim) if i not in axes)


def _sums(operands: tuple[jax.Array, ...], dims: tuple[int, ...],
          maxima: int = 0) -> tuple[jax.Array, ...]:
  """One variadic reduction of several same-shaped operands over ``dims``.

  The first ``maxima`` operands are reduced with ``max``, the others summed.
  """
  zeros = tuple(jnp.zeros((), x.dtype) for x in operands)

  def combine(a, b):
    return tuple(jnp.maximum(x, y) if i < maxima else x + y
                 for i, (x, y) in enumerate(zip(a, b, strict=True)))

  return jax.lax.reduce(operands, zeros, combine, dims)


def block_peak_and_mean(g: jax.Array, axes: tuple[int, ...] = ()) -> tuple[jax.Array, jax.Array]:
  """Pass 1 over a leaf: ``max |g|`` and the mean of each block, in :func:`stats_dtype`.

  A sum that overflowed (``n |g| > 3e38`` in float32) gives a mean of 0: it only centres
  pass 2, and a small block's ``sum d`` then restores it.
  """
  g = g.astype(stats_dtype(g.dtype))
  dims = _reduce_axes(g.ndim, axes)
  n = block_size(g.shape, axes)
  if n < LARGE_BLOCK:
    # sum (g / n) cannot overflow: no guard, no scalar kernel between the passes.
    return _sums((jnp.abs(g), g * (1 / n)), dims, maxima=1)
  peak, total = jnp.max(jnp.abs(g), axis=dims), jnp.sum(g, axis=dims)
  # XLA:CPU's vectorised max can drop a NaN; a sum never does, so a NaN sum marks the block
  # non-finite.
  peak = jnp.where(jnp.isnan(total), jnp.nan, peak)
  # ``n`` as a Python float: an int past 2^31 (one block of an 8 GiB embedding) does not
  # fit the int32 a Python int is traced as.
  return peak, jnp.where(jnp.isfinite(total), total / float(n), 0)


def block_centred_sums(g: jax.Array, axes: tuple[int, ...], peak: jax.Array,
                       mean: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pass 2 over a leaf: ``sum d`` and ``sum d^2`` of each block, ``d = (g - mean) / peak``.

  ``peak`` and ``mean`` are pass 1's, used as they are: where a block is unusable their
  sums are garbage, and the caller discards them. A large block (:data:`LARGE_BLOCK`)
  skips ``sum d``, which only refines pass 1's mean, and returns 0 for it: one read of the
  leaf fewer at the capture (its cost and its accuracy: docs/guides/performance.md).
  """
  g = g.astype(stats_dtype(g.dtype))
  dims = _reduce_axes(g.ndim, axes)
  inv = jnp.expand_dims(1 / peak, dims)
  if block_size(g.shape, axes) < LARGE_BLOCK:
    d = (g - jnp.expand_dims(mean, dims)) * inv
    return _sums((d, d * d), dims)
  d = g * inv - jnp.expand_dims(mean / peak, dims)
  return jnp.zeros_like(peak), jnp.sum(jnp.square(d), axis=dims)


def gsnr_from_sums(peak: jax.Array, mean: jax.Array, s1: jax.Array, s2: jax.Array, n: int,
                   eps: jax.typing.ArrayLike) -> jax.Array:
  """The g-SNR of each block from the two passes (elementwise on per-block values).

  Meaningful only where :func:`block_usable`; elsewhere it is garbage (no guard, so that
  the whole computation stays one kernel). In units of ``peak``: ``sum d^2 - (sum d)^2 /
  n`` is the sum of squared deviations, free of cancellation as ``d``'s mean is ~0
  whatever ``g``'s; ``||g||^2 = sum (g - mean)^2 + n mean^2`` (two non-negative terms) and
  ``std^2 = sum (g - mean)^2 / (n - 1)``, so nothing overflows or underflows. Blocks of
  one entry get 1.
  """
  if n <= 1:
    return jnp.ones_like(peak)
  n = float(n)  # a Python int past 2^31 would not trace (int32); a float is weakly typed
  squared_deviations = jnp.maximum(s2 - s1 * s1 / n, 0)
  centre = mean / peak + s1 / n  # the mean in units of peak, refined by pass 2
  norm = jnp.sqrt(squared_deviations + n * jnp.square(centre))
  std = jnp.sqrt(squared_deviations / (n - 1))
  return norm / (std + eps / peak)


def leaf_capture_stats(g: jax.Array, axes: tuple[int, ...] = (),
                       eps: jax.typing.ArrayLike = 1e-8) -> tuple[jax.Array, jax.Array]:
  """``(gsnr, peak)`` of each block of one leaf, in two passes over its entries.

  Pass 1 (:func:`block_peak_and_mean`) reads ``peak = max |g|`` and the mean; pass 2
  (:func:`block_centred_sums`) the sums of ``d = (g - mean) / peak``, which neither
  overflow nor underflow nor cancel (:func:`gsnr_from_sums`). Pass 2 reads pass 1's
  results unguarded: XLA compiles each kernel of the capture once per leaf, so none is
  spent on guards (docs/guides/performance.md).

  Returns:
    The g-SNR of every block, meaningful where :func:`block_usable` (``peak``), and
    ``peak = max |g|``, each of shape ``block_shape(g.shape, axes)``.
  """
  n = block_size(g.shape, axes)
  peak, mean = block_peak_and_mean(g, axes)
  if n <= 1:
    return gsnr_from_sums(peak, mean, peak, peak, n, eps), peak
  s1, s2 = block_centred_sums(g, axes, peak, mean)
  return gsnr_from_sums(peak, mean, s1, s2, n, eps), peak


def block_usable(peak: jax.Array, floor: jax.typing.ArrayLike = 0) -> jax.Array:
  """Whether each block's g-SNR can be captured: its gradient is finite and above ``floor``.

  Both follow from pass 1's ``peak = max |g|`` (NaN when the block's sum is NaN, see
  :func:`block_peak_and_mean`): ``peak`` is finite exactly when every entry is, and
  above 0 exactly when some entry is non-zero. The capture passes the numerical-zero
  floor of :func:`numerical_zero_floor` as ``floor``.
  """
  return jnp.isfinite(peak) & (peak > floor)


# A block whose largest |g| is at most this fraction of the largest |g| of any block at the
# same step is numerically zero: not captured yet, like an all-zero block. See
# docs/guides/algorithm.md (edge cases) for the measurements behind the number.
NUMERICAL_ZERO_RTOL = 1e-6


def numerical_zero_floor(peaks: jax.Array) -> jax.Array:
  """The ``max |g|`` at or below which a block is numerically zero, from every block's peak.

  ``NUMERICAL_ZERO_RTOL`` times the largest finite peak: relative to the whole gradient, so
  a uniform rescaling of all gradients (loss scaling) never changes which blocks qualify.
  """
  return NUMERICAL_ZERO_RTOL * jnp.max(jnp.where(jnp.isfinite(peaks), peaks, 0))


def tree_paths(tree: Any) -> list[str]:
  """The key paths of a pytree's leaves, as strings (for error messages)."""
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]]

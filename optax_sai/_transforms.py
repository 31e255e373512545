"""The two transforms of SGD-SaI: the one-shot g-SNR scale and the paper's momentum."""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sai import _flax_compat, _gsnr


class ScaleByGsnrState(NamedTuple):
  """State of :func:`scale_by_gsnr`; arrays only, so it jits, shards and checkpoints.

  Attributes:
    gsnr: per block, the captured g-SNR (float32, float64 for float64
      parameters), 0 until captured. A pytree like the parameters, each leaf
      of the shape of that leaf's stacked axes (a scalar for a leaf that is
      one block). A captured g-SNR is always positive, so ``gsnr > 0`` is
      the capture flag (:attr:`captured`); non-floating leaves hold a
      placeholder 0.
    normalizer: the value scales are divided by: the largest g-SNR among the
      blocks captured at the first capturing step (0 until then). It is 1 when
      ``normalize=False``.
  """

  gsnr: Any
  normalizer: jax.Array

  @property
  def captured(self) -> Any:
    """Per block, whether its g-SNR has been captured: ``gsnr > 0`` (derived, not stored)."""
    return jax.tree.map(lambda v: v > 0, self.gsnr)


class SaiMomentumState(NamedTuple):
  """State of :func:`sai_momentum`.

  Attributes:
    count: the number of updates seen (int32).
    mu: the momentum buffer, like the parameters, in ``mu_dtype``.
  """

  count: jax.Array
  mu: Any


def _check_tree_matches(updates: Any, reference: Any, what: str) -> None:
  """Raises a ValueError naming the paths that differ between two trees."""
  ref_struct = jax.tree.structure(reference)
  if jax.tree.structure(updates) == ref_struct:
    return
  mine, theirs = set(_gsnr.tree_paths(updates)), set(_gsnr.tree_paths(reference))
  missing = sorted(theirs - mine)
  extra = sorted(mine - theirs)
  detail = []
  if missing:
    detail.append(f"missing from the updates: {missing[:10]}")
  if extra:
    detail.append(f"not in the {what}: {extra[:10]}")
  if not detail:
    detail.append(
        f"same paths, different node types: {jax.tree.structure(updates)} vs {ref_struct}"
    )
  hint = ""
  if missing:
    hint = (
        ". If those are frozen parameters whose gradients are None (Equinox's "
        "eqx.partition / eqx.filter with a filter spec), initialise the optimizer on the "
        "trainable part only, e.g. tx.init(eqx.filter(model, filter_spec)), and pass the "
        "same part as params to update; or keep the full tree and freeze with "
        "optax.masked / optax.multi_transform (docs/guides/state.md, frozen parameters)"
    )
  raise ValueError(
      f"The updates do not have the structure of the {what} the optimizer was "
      "initialised with; " + "; ".join(detail) + hint
  )


def _replicated(x: jax.Array) -> jax.Array:
  """``x`` replicated over any explicit mesh axes its type is sharded along.

  The sharding rule of the per-block statistics: they are replicated, whatever the
  parameters' sharding (init creates them so, see :func:`optax_sai.state_shardings`).
  Reducing a leaf whose *stacked* axis is sharded over an explicit mesh axis yields
  statistics sharded along it; they are gathered here (a few bytes, at capture only), so
  both branches of the capture ``cond`` agree. Under auto axes and without a mesh, the
  type carries no sharding and this is the identity.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is None or all(s is None for s in spec):
    return x
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def _all_blocks(values: list[jax.Array]) -> jax.Array:
  """Every block's value of a list of per-leaf arrays, as one vector (one kernel).

  Reducing per leaf (``max`` of each, then a chain of ``maximum``) costs one small kernel
  per leaf, and XLA pays a fixed compile time per kernel.
  """
  return jnp.concatenate([jnp.ravel(v) for v in values])


@functools.partial(jax.jit, static_argnames="axes")
def _capture_leaf(g: jax.Array, value: jax.Array, eps: jax.typing.ArrayLike, *,
                  axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """One leaf's per-block values after a capture, and each block's ``peak = max |g|``.

  Values are kept where captured, else fresh where the block is finite and not all zero
  (at least the smallest normal number, so that ``gsnr > 0`` stays the capture flag).
  Jitted so that it is traced once per distinct leaf shape, not once per leaf (trace
  and lowering times: docs/guides/performance.md).
  """
  snr, peak = _gsnr.leaf_capture_stats(g, axes, eps)
  fresh = jnp.where(_gsnr.block_usable(peak), jnp.maximum(snr, jnp.finfo(snr.dtype).tiny), 0)
  return jnp.where(value > 0, value, _replicated(fresh.astype(value.dtype))), _replicated(peak)


def _same_shape_groups(grads: list[jax.Array], axes: list[Any]) -> list[list[int]]:
  """Indices of the leaves captured together: small unsharded leaves of one shape.

  Stacking them lets one set of kernels capture them all, so compile time grows with the
  number of shapes, not of leaves; the price is the stacked copy as the capture branch's
  scratch (numbers: docs/guides/performance.md, "Trees of any size").
  """
  groups: dict[Any, list[int]] = {}
  for i, (g, a) in enumerate(zip(grads, axes, strict=True)):
    spec = getattr(getattr(jax.typeof(g), "sharding", None), "spec", None)
    sharded = spec is not None and any(x is not None for x in spec)
    small = math.prod(g.shape) < _gsnr.LARGE_BLOCK
    key = (g.shape, g.dtype, tuple(a)) if small and not sharded else ("leaf", i)
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def _capture_pending(grads: list[jax.Array], axes: list[Any], values: list[jax.Array],
                     normalizer: jax.Array, eps: float,
                     normalize: bool) -> tuple[list[jax.Array], jax.Array]:
  """The paper's capture: every block not captured yet takes this gradient's g-SNR.

  A block is captured when its gradient is usable: finite, and not numerically zero
  (its ``max |g|`` above :func:`optax_sai._gsnr.numerical_zero_floor` of this step's
  gradients); otherwise it keeps 0 and is tried again at the next step. The normaliser
  is the largest g-SNR of the first capturing step: while it is 0 no block has been
  captured, so the maximum over all values then is the maximum over the blocks captured
  now.
  """
  captures: list[Any] = [None] * len(grads)
  for members in _same_shape_groups(grads, axes):
    if len(members) == 1:
      (i,) = members
      captures[i] = _capture_leaf(grads[i], values[i], eps, axes=axes[i])
      continue
    stacked, peaks = _capture_leaf(jnp.stack([grads[i] for i in members]),
                                   jnp.stack([values[i] for i in members]), eps,
                                   axes=(0, *(a + 1 for a in axes[members[0]])))
    for k, i in enumerate(members):
      captures[i] = (stacked[k], peaks[k])
  floor = _gsnr.numerical_zero_floor(_all_blocks([peak for _, peak in captures]))
  new_values = [jnp.where((value == 0) & (peak <= floor), 0, new)
                for value, (new, peak) in zip(values, captures, strict=True)]
  if normalize:
    top = jnp.max(_all_blocks(new_values)).astype(normalizer.dtype)
    normalizer = jnp.where(normalizer > 0, normalizer, top)
  return new_values, normalizer


def _capture_once(grads: list[jax.Array], axes: list[Any], values: list[jax.Array],
                  normalizer: jax.Array, eps: float,
                  normalize: bool) -> tuple[list[jax.Array], jax.Array]:
  """``lax.cond(every block captured, identity, capture the pending blocks)``.

  After the first step the identity branch runs: no reduction over gradient entries. The
  per-block values cross the ``cond`` as they are, one small array per leaf, which XLA
  compiles fastest (docs/guides/performance.md).
  """
  if not values:
    return values, normalizer
  done = jnp.all(_all_blocks(values) > 0)
  return jax.lax.cond(
      done, lambda v, norm: (v, norm),
      lambda v, norm: _capture_pending(grads, axes, v, norm, eps, normalize),
      values, normalizer)


def _zero_update(g: Any) -> Any:
  """A zero update for a non-floating leaf (float0 gradients are already zero)."""
  return g if g.dtype == jax.dtypes.float0 else jnp.zeros_like(g)


def scale_by_gsnr(
    eps: float = 1e-8,
    *,
    normalize: bool = True,
    block_axes: _gsnr.BlockAxes = None,
) -> optax.GradientTransformation:
  """Scales each block's update by its g-SNR, measured once at initialisation.

  At the first update, each block's gradient signal-to-noise ratio
  ``||g||_2 / (std(g) + eps)`` is captured (unbiased std, float32 or wider)
  and frozen; every later update only multiplies by the stored scale. With
  ``normalize=True`` (Algorithm 1 of the paper) the scale is the g-SNR divided
  by the normaliser, the largest g-SNR of the blocks captured at the first
  capturing update, so those blocks' scales lie in (0, 1]; a block captured
  later gets its g-SNR over the same normaliser, which exceeds 1 when its
  g-SNR is the larger (below a zero-initialised head of ``n_head`` entries, a
  block of ``n`` entries gets about ``sqrt(n / n_head)``). With
  ``normalize=False`` the scale is the g-SNR itself (the released ``sgd-sai``
  1.0.3 package).

  Edge cases: a block whose gradient is all zero, numerically zero or
  non-finite is not captured then; it is captured at the first update where
  its gradient is finite and not numerically zero, and until then its update
  is zero. Numerically zero: the block's ``max |g|`` is at most 1e-6 of the
  largest ``max |g|`` of any block in that update (float32 rounding left on a
  gradient that is zero in exact arithmetic, such as an attention key bias's);
  the line is relative, so rescaling every gradient by the same factor never
  changes which blocks are captured. The normaliser is
  fixed at the first capturing update, so no captured scale ever changes. A
  one-entry block has g-SNR 1. Non-floating leaves get a zero update.

  After capture a step does no reduction over gradient entries: the capture
  runs in one branch of a ``lax.cond`` that returns only per-block scalars,
  and the steady branch is the identity.

  Args:
    eps: added to the standard deviation (outside the square root).
    normalize: divide by the largest captured g-SNR (the paper's Algorithm 1).
    block_axes: how leaves split into blocks. ``None``: one block per leaf.
      An int or tuple of ints: those axes of every leaf index separate blocks
      (e.g. ``0`` for layers stacked by ``nnx.scan``). A pytree of such specs
      (a prefix of the parameters; ``None`` for leaves that are one block), or
      a callable ``(path, leaf) -> spec``.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByGsnrState`.

  Example:
    >>> import jax.numpy as jnp, optax_sai
    >>> tx = optax_sai.scale_by_gsnr(normalize=False)
    >>> g = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
    >>> state = tx.init(g)
    >>> updates, state = tx.update(g, state)
    >>> float(updates["w"][0])  # 1 * sqrt(18)
    4.242640...

  References:
    Xu et al., `No More Adam: Learning Rate Scaling at Initialization is All
    You Need <https://arxiv.org/abs/2412.11768>`_, 2024 (Algorithm 1).
  """
  if not isinstance(eps, jax.Array) and eps < 0:
    raise ValueError(f"eps must be >= 0, got {eps}.")

  def init_fn(params):
    params = _flax_compat.strip_boxes(params)  # per-block stats carry no parameter sharding
    axes = _gsnr.resolve_block_axes(block_axes, params)

    def leaf_init(p, leaf_axes):
      if not _gsnr.is_trainable_leaf(p):  # nothing to capture: a placeholder
        return jnp.zeros((), jnp.float32)
      return jnp.zeros(_gsnr.block_shape(p.shape, leaf_axes), _gsnr.stats_dtype(p.dtype))

    leaves, treedef = jax.tree.flatten(params)
    values = [leaf_init(p, a) for p, a in zip(leaves, treedef.flatten_up_to(axes), strict=True)]
    # The normaliser is as wide as the widest statistic (float64 under x64).
    widest = jnp.result_type(jnp.float32, *values)
    return ScaleByGsnrState(gsnr=treedef.unflatten(values),
                            normalizer=jnp.asarray(0.0 if normalize else 1.0, widest))

  def update_fn(updates, state, params=None):
    del params
    boxed_treedef = jax.tree.structure(updates)  # boxes hold one leaf each
    updates = _flax_compat.strip_boxes(updates)
    _check_tree_matches(updates, state.gsnr, "parameters")
    g_leaves, treedef = jax.tree.flatten(updates)
    axes = treedef.flatten_up_to(_gsnr.resolve_block_axes(block_axes, updates))
    values = treedef.flatten_up_to(state.gsnr)
    live = [i for i, g in enumerate(g_leaves) if _gsnr.is_trainable_leaf(g)]
    captured, normalizer = _capture_once(
        [g_leaves[i] for i in live], [axes[i] for i in live], [values[i] for i in live],
        state.normalizer, eps, normalize)
    for i, v in zip(live, captured, strict=True):
      values[i] = v

    # One reciprocal for all leaves: the multiply fuses into each leaf's update.
    inv_norm = 1 / jnp.where(normalizer > 0, normalizer, 1)

    def scale_leaf(g, leaf_axes, value):
      if not _gsnr.is_trainable_leaf(g):
        return _zero_update(g)
      # Blocks not captured yet hold 0, so their scale is 0.
      scale = value * inv_norm.astype(value.dtype)
      scale = jnp.expand_dims(scale, [i for i in range(g.ndim) if i not in leaf_axes])
      return (g * scale).astype(g.dtype)

    out = [scale_leaf(g, a, v) for g, a, v in zip(g_leaves, axes, values, strict=True)]
    new_state = ScaleByGsnrState(gsnr=treedef.unflatten(values), normalizer=normalizer)
    return boxed_treedef.unflatten(out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def _update_and_buffer(new: jax.Array, update_dtype: Any,
                       buffer_dtype: Any) -> tuple[jax.Array, jax.Array]:
  """The update and the stored buffer from the freshly averaged momentum ``new``.

  A buffer narrower than ``new`` (``mu_dtype=jnp.bfloat16`` under float32 gradients) is
  rounded first and the update is taken from the rounded value, so that the compiled step
  keeps no wide temporary of it (docs/guides/performance.md); the update then differs by
  one bfloat16 rounding of the momentum, which the next step uses anyway.
  """
  if jnp.dtype(buffer_dtype).itemsize < jnp.dtype(new.dtype).itemsize:
    buffer = new.astype(buffer_dtype)
    return buffer.astype(update_dtype), buffer
  return new.astype(update_dtype), new.astype(buffer_dtype)


def sai_momentum(
    momentum: jax.typing.ArrayLike = 0.9,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
  """The momentum of SGD-SaI: an EMA with dampening whose buffer starts at g_1.

  ``m_1 = g_1`` and ``m_t = momentum * m_{t-1} + (1 - momentum) * g_t``: no
  bias correction and no Nesterov. This differs from ``optax.trace``, whose
  buffer starts at zero and has no ``(1 - momentum)`` dampening. With
  ``momentum=0`` the update is the gradient (plain SGD).

  Args:
    momentum: the decay of the moving average, in [0, 1).
    mu_dtype: dtype of the stored buffer (e.g. ``jnp.bfloat16`` halves its
      memory); ``None`` keeps the parameters' dtypes. The average is computed
      in the wider of the two, and updates come out in the gradients' dtype.
      When the buffer is narrower than the gradients, the update is the stored
      (rounded) buffer, so the update and the state hold the same momentum.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`SaiMomentumState`.

  Example:
    >>> import jax.numpy as jnp, optax_sai
    >>> tx = optax_sai.sai_momentum(0.9)
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([1.0, 2.0]), state)  # m_1 = g_1
    >>> u, state = tx.update(jnp.array([0.0, 0.0]), state)  # 0.9 * m_1
    >>> [round(x, 6) for x in u.tolist()]
    [0.9, 1.8]

  References:
    Xu et al., `No More Adam: Learning Rate Scaling at Initialization is All
    You Need <https://arxiv.org/abs/2412.11768>`_, 2024 (Algorithm 1).
  """
  if mu_dtype is not None:
    mu_dtype = jax.dtypes.canonicalize_dtype(mu_dtype)

  def init_fn(params):
    # Non-floating leaves keep a scalar placeholder so the tree keeps its shape.
    mu = jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=mu_dtype)
        if _gsnr.is_trainable_leaf(p) else jnp.zeros([], jnp.int32),
        params,
    )
    return SaiMomentumState(count=jnp.zeros([], jnp.int32), mu=mu)

  def update_fn(updates, state, params=None):
    del params
    _check_tree_matches(updates, state.mu, "parameters")
    # At the first step the buffer is the gradient: decay 0 gives m_1 = g_1.
    decay = jnp.where(state.count == 0, 0.0, momentum)

    def leaf(g, m):
      if not _gsnr.is_trainable_leaf(g):
        return _zero_update(g), m
      dtype = jnp.promote_types(g.dtype, m.dtype)
      d = decay.astype(dtype)
      new = d * m.astype(dtype) + (1 - d) * g.astype(dtype)
      return _update_and_buffer(new, g.dtype, m.dtype)

    g_leaves, treedef = jax.tree.flatten(updates)
    pairs = [leaf(g, m) for g, m in zip(g_leaves, treedef.flatten_up_to(state.mu), strict=True)]
    new_updates = treedef.unflatten([u for u, _ in pairs])
    new_mu = treedef.unflatten([m for _, m in pairs])
    return new_updates, SaiMomentumState(
        count=optax.safe_increment(state.count), mu=new_mu
    )

  return optax.GradientTransformation(init_fn, update_fn)


def find_gsnr_state(opt_state: Any) -> ScaleByGsnrState:
  """Finds the :class:`ScaleByGsnrState` inside any optimizer state.

  Works when ``sgd_sai`` or ``scale_by_gsnr`` sits inside ``optax.chain``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.masked``,
  ``optax.apply_if_finite`` or a ``flax.nnx.Optimizer`` (whose state leaves are
  ``nnx.Variable`` objects; they are unwrapped).

  Args:
    opt_state: an optimizer state.

  Returns:
    The one ``ScaleByGsnrState`` in it, with plain array leaves.

  Raises:
    ValueError: if there is none, or more than one.
  """
  found = optax.tree.get_all_with_path(
      opt_state, ScaleByGsnrState.__name__,
      filtering=lambda _, v: isinstance(v, ScaleByGsnrState),
  )
  if not found:
    raise ValueError("No ScaleByGsnrState found in this optimizer state.")
  if len(found) > 1:
    paths = [jax.tree_util.keystr(p) for p, _ in found]
    raise ValueError(f"Several ScaleByGsnrStates found, at {paths}; pick one by path.")
  state = found[0][1]
  return jax.tree.map(_flax_compat.unwrap, state, is_leaf=_flax_compat.is_variable)


def gsnr_scales(opt_state: Any) -> Any:
  """The scale each block's update is multiplied by, read from an optimizer state.

  Args:
    opt_state: an optimizer state containing one ``ScaleByGsnrState``
      (see :func:`find_gsnr_state`).

  Returns:
    A pytree like the parameters: per block, the captured g-SNR divided by
    the normaliser (``normalize=True``) or the g-SNR itself
    (``normalize=False``); 0 for blocks not captured yet.

  Example:
    >>> import jax.numpy as jnp, optax_sai
    >>> tx = optax_sai.sgd_sai(1.0)
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(3)}
    >>> grads = {"w": jnp.array([[0.1, -0.2], [0.3, 0.4]]), "b": jnp.array([0.01, 0.02, 0.04])}
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> round(float(optax_sai.gsnr_scales(state)["w"]), 5)
    0.69007
  """
  state = find_gsnr_state(opt_state)
  norm = state.normalizer
  # Blocks not captured yet hold 0 (and while the normaliser is 0, every block does).
  return jax.tree.map(lambda v: (v / jnp.where(norm > 0, norm, 1)).astype(v.dtype), state.gsnr)

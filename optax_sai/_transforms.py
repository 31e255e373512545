"""The two transforms of SGD-SaI: the one-shot g-SNR scale and the paper's momentum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sai import _gsnr


class ScaleByGsnrState(NamedTuple):
  """State of :func:`scale_by_gsnr`; arrays only, so it jits, shards and checkpoints.

  Attributes:
    captured: per block, whether its g-SNR has been captured (bool). A pytree
      like the parameters, each leaf of the shape of that leaf's stacked axes
      (a scalar for a leaf that is one block).
    gsnr: per block, the captured g-SNR (float32, float64 for float64
      parameters; 0 until captured), same structure as ``captured``.
    normalizer: the value scales are divided by: the largest g-SNR among the
      blocks captured at the first capturing step (0 until then). It is 1 when
      ``normalize=False``.
  """

  captured: Any
  gsnr: Any
  normalizer: jax.Array


class SaiMomentumState(NamedTuple):
  """State of :func:`sai_momentum`.

  Attributes:
    count: the number of updates seen (int32).
    mu: the momentum buffer, like the parameters, in ``mu_dtype``.
  """

  count: jax.Array
  mu: optax.Updates


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
  raise ValueError(
      f"The updates do not have the structure of the {what} the optimizer was "
      "initialised with; " + "; ".join(detail)
  )


def _is_box(x: Any) -> bool:
  """Whether ``x`` is a metadata box around one array (``nnx.Variable``, linen ``Partitioned``).

  Such boxes carry the parameter's sharding annotation; the per-block statistics must
  not inherit it (a scalar cannot take a rank-2 spec), so they are built unboxed.
  """
  t = type(x)
  boxed = (hasattr(t, "get_metadata") and hasattr(t, "get_value")) or hasattr(t, "replace_boxed")
  return boxed and len(jax.tree.leaves(x)) == 1


def _strip_boxes(tree: Any) -> Any:
  """``tree`` with every metadata box replaced by the one array it holds."""
  return jax.tree.map(lambda x: jax.tree.leaves(x)[0] if _is_box(x) else x, tree, is_leaf=_is_box)


def _capture(updates: Any, state: ScaleByGsnrState, axes: Any, eps: float,
             normalize: bool) -> ScaleByGsnrState:
  """Captures the g-SNR of every block not yet captured whose gradient is usable."""
  g_leaves, treedef = jax.tree.flatten(updates)
  captured = treedef.flatten_up_to(state.captured)
  values = treedef.flatten_up_to(state.gsnr)
  new_captured, new_values, batch_maxima = [], [], []
  for g, c, v, a in zip(g_leaves, captured, values, treedef.flatten_up_to(axes), strict=True):
    if _gsnr.is_trainable_leaf(g):
      capturable, value = _gsnr.leaf_capture_stats(g, a, eps)
      new = ~c & capturable
      v = jnp.where(new, value.astype(v.dtype), v)
      c = c | new
      batch_maxima.append(jnp.max(jnp.where(new, v, 0), initial=0).astype(state.normalizer.dtype))
    new_captured.append(c)
    new_values.append(v)

  normalizer = state.normalizer
  if normalize and batch_maxima:
    # The max is taken once: over the blocks captured at the first step where
    # any block is captured. Blocks captured later reuse the stored value.
    normalizer = jnp.where(normalizer > 0, normalizer, jnp.max(jnp.stack(batch_maxima)))
  return ScaleByGsnrState(
      captured=treedef.unflatten(new_captured),
      gsnr=treedef.unflatten(new_values),
      normalizer=normalizer,
  )


def _zero_update(g: Any) -> Any:
  """A zero update for a non-floating leaf (float0 gradients are already zero)."""
  return g if g.dtype == jax.dtypes.float0 else jnp.zeros_like(g)


def _pack(leaves: list[jax.Array], dtype: Any) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def _unpack(flat: jax.Array, like: list[jax.Array]) -> list[jax.Array]:
  out, offset = [], 0
  for x in like:
    out.append(flat[offset:offset + x.size].reshape(x.shape).astype(x.dtype))
    offset += x.size
  return out


def _capture_once(updates: Any, state: ScaleByGsnrState, axes: Any, eps: float,
                  normalize: bool) -> ScaleByGsnrState:
  """Runs :func:`_capture` only while some block is not captured yet.

  The per-block flags and values enter the ``lax.cond`` packed into two flat
  vectors: the steady (identity) branch then passes on two small arrays rather
  than two scalars per leaf, which on a tree of many leaves is most of the cost
  of the steady step beyond the elementwise update.
  """
  flags, treedef = jax.tree.flatten(state.captured)
  values = treedef.flatten_up_to(state.gsnr)
  if not flags:
    return state
  value_dtype = jnp.result_type(*values)

  def capture(operand):
    packed_flags, packed_values, normalizer = operand
    new = _capture(
        updates,
        ScaleByGsnrState(treedef.unflatten(_unpack(packed_flags, flags)),
                         treedef.unflatten(_unpack(packed_values, values)), normalizer),
        axes, eps, normalize,
    )
    return (_pack(treedef.flatten_up_to(new.captured), bool),
            _pack(treedef.flatten_up_to(new.gsnr), value_dtype), new.normalizer)

  packed_flags = _pack(flags, bool)
  packed_flags, packed_values, normalizer = jax.lax.cond(
      jnp.all(packed_flags), lambda operand: operand, capture,
      (packed_flags, _pack(values, value_dtype), state.normalizer),
  )
  return ScaleByGsnrState(
      captured=treedef.unflatten(_unpack(packed_flags, flags)),
      gsnr=treedef.unflatten(_unpack(packed_values, values)),
      normalizer=normalizer,
  )


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
  by the largest captured g-SNR, so scales lie in (0, 1]; with
  ``normalize=False`` it is the g-SNR itself (the released ``sgd-sai`` 1.0.3
  package).

  Edge cases: a block whose gradient is all zero or non-finite is not
  captured then; it is captured at the first update where its gradient is
  non-zero and finite, and until then its update is zero. The normaliser is
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
    params = _strip_boxes(params)  # per-block stats carry no parameter sharding
    axes = _gsnr.resolve_block_axes(block_axes, params)

    def leaf_init(_, p, leaf_axes):
      if not _gsnr.is_trainable_leaf(p):  # nothing to capture: born captured
        return jnp.ones((), bool), jnp.zeros((), jnp.float32)
      shape = _gsnr.block_shape(p.shape, leaf_axes)
      return jnp.zeros(shape, bool), jnp.zeros(shape, _gsnr.stats_dtype(p.dtype))

    leaves, treedef = jax.tree.flatten(params)
    axes_leaves = treedef.flatten_up_to(axes)
    pairs = [leaf_init(None, p, a) for p, a in zip(leaves, axes_leaves, strict=True)]
    # The normaliser is as wide as the widest statistic (float64 under x64).
    widest = jnp.result_type(jnp.float32, *[v.dtype for _, v in pairs])
    return ScaleByGsnrState(
        captured=treedef.unflatten([c for c, _ in pairs]),
        gsnr=treedef.unflatten([v for _, v in pairs]),
        normalizer=jnp.asarray(0.0 if normalize else 1.0, widest),
    )

  def update_fn(updates, state, params=None):
    del params
    boxed_treedef = jax.tree.structure(updates)  # boxes hold one leaf each
    updates = _strip_boxes(updates)
    _check_tree_matches(updates, state.captured, "parameters")
    axes = _gsnr.resolve_block_axes(block_axes, updates)
    state = _capture_once(updates, state, axes, eps, normalize)

    def scale_leaf(_, g, leaf_axes, captured, value):
      if not _gsnr.is_trainable_leaf(g):
        return _zero_update(g)
      norm = state.normalizer.astype(value.dtype)
      scale = jnp.where(captured, value / jnp.where(norm > 0, norm, 1), 0)
      scale = jnp.expand_dims(scale, [i for i in range(g.ndim) if i not in leaf_axes])
      return (g * scale).astype(g.dtype)

    g_leaves, treedef = jax.tree.flatten(updates)
    out = [
        scale_leaf(None, g, a, c, v)
        for g, a, c, v in zip(
            g_leaves,
            treedef.flatten_up_to(axes),
            treedef.flatten_up_to(state.captured),
            treedef.flatten_up_to(state.gsnr),
            strict=True,
        )
    ]
    return boxed_treedef.unflatten(out), state

  return optax.GradientTransformation(init_fn, update_fn)


def sai_momentum(
    momentum: float | jax.Array = 0.9,
    mu_dtype: Any | None = None,
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
      return new.astype(g.dtype), new.astype(m.dtype)

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
  return jax.tree.map(_unwrap, state, is_leaf=_is_variable)


def _is_variable(x: Any) -> bool:
  return hasattr(x, "get_value") or type(x).__name__ in {"OptVariable", "OptArray"}


def _unwrap(x: Any) -> Any:
  if hasattr(x, "get_value"):
    return x.get_value()
  return getattr(x, "value", x)


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
    >>> tx = optax_sai.sgd_sai(1e-2)
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(3)}
    >>> grads = {"w": jnp.array([[0.1, -0.2], [0.3, 0.4]]), "b": jnp.array([0.01, 0.02, 0.04])}
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> round(float(optax_sai.gsnr_scales(state)["w"]), 5)
    0.69007
  """
  state = find_gsnr_state(opt_state)
  norm = state.normalizer
  return jax.tree.map(
      lambda c, v: jnp.where(c & (norm > 0), v / jnp.where(norm > 0, norm, 1), 0).astype(v.dtype),
      state.captured,
      state.gsnr,
  )


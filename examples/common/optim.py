"""Optimizers for the examples: one factory, one schedule, one weight-decay mask for all.

Every optimizer gets the same learning-rate schedule (linear warmup, then cosine decay, as
in the paper's runs), the same optional global-norm clipping and the same weight-decay mask:
only the ``kernel`` leaves of linear/conv layers are decayed; biases, norm scales,
embeddings, position embeddings and the class token are exempt (the nanoGPT / timm recipe).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optax_sai

Params = Any
BlockAxesFn = Callable[[Sequence[Any], Any], Any]


def path_str(path: Sequence[Any]) -> str:
  """A readable ``a/b/0/kernel`` string for a jax key path (``nnx`` ``.value`` dropped)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != "value":
        parts.append(key.name)
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def warmup_cosine(
    peak: float, warmup_steps: int, decay_steps: int, min_ratio: float = 0.1
) -> optax.Schedule:
  """Linear warmup from ``peak / warmup`` to ``peak``, then cosine down to ``min_ratio*peak``.

  Step ``t`` (0-based, the update being computed) gets ``peak * (t + 1) / warmup_steps``
  during warmup (nanoGPT's convention: the first update is not wasted at lr 0), then the
  cosine over ``[warmup_steps, decay_steps]``, then stays at the floor.
  """
  warmup_steps = max(int(warmup_steps), 0)
  decay_steps = max(int(decay_steps), warmup_steps + 1)
  floor = peak * min_ratio

  def schedule(count: jax.Array) -> jax.Array:
    t = jnp.asarray(count, jnp.float32)
    warm = peak * (t + 1.0) / max(warmup_steps, 1)
    frac = jnp.clip((t - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
    cosine = floor + 0.5 * (peak - floor) * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(t < warmup_steps, warm, cosine)

  return schedule


def decay_mask(params: Params) -> Params:
  """True for the leaves weight decay applies to: the ``kernel`` of linear / conv layers."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path_str(path).rsplit("/", 1)[-1] == "kernel", params
  )


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float,
    *,
    momentum: float = 0.9,
    b2: float = 0.95,
    clip_norm: float | None = None,
    mask: Callable[[Params], Params] | Params | None = decay_mask,
    block_axes: BlockAxesFn | None = None,
    sai_normalize: bool = True,
    params: Params | None = None,
) -> optax.GradientTransformation:
  """Builds one of the examples' optimizers.

  Args:
    name: ``sgd_sai``, ``adamw``, ``sgdm`` (``optax.sgd`` with momentum and L2 weight
      decay added to the gradient, as ``torch.optim.SGD`` does), ``adam`` (``optax.adam``
      with coupled L2 weight decay, as ``torch.optim.Adam``), ``lion`` or ``adafactor``.
    learning_rate: a float or a schedule (see :func:`warmup_cosine`).
    weight_decay: decoupled weight decay (coupled L2 for ``sgdm``).
    momentum: momentum of sgd_sai / sgdm, ``b1`` of AdamW and Lion.
    b2: AdamW's / Lion's second coefficient.
    clip_norm: clip gradients to this global norm first (``None``: no clipping). g-SNR is
      scale invariant, so clipping never changes the scales sgd_sai captures.
    mask: which leaves weight decay applies to (a pytree of bools or a callable).
    block_axes: sgd_sai only: the axes of stacked (scanned) leaves, one block per slice.
    sai_normalize: sgd_sai only: the paper's max-normalised scales (``False``: the
      released ``sgd-sai`` 1.0.3 semantics).
    params: optional parameters; when given the mask and block axes are checked against
      them now rather than at ``init``.

  Returns:
    An ``optax.GradientTransformation``.
  """
  if name == "sgd_sai":
    tx = optax_sai.sgd_sai(
        learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        normalize=sai_normalize,
        weight_decay_mask=mask,
        block_axes=block_axes,
    )
  elif name == "adamw":
    tx = optax.adamw(learning_rate, b1=momentum, b2=b2, weight_decay=weight_decay, mask=mask)
  elif name == "sgdm":
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask),
        optax.sgd(learning_rate, momentum=momentum),
    )
  elif name == "adam":
    # torch.optim.Adam(weight_decay=...): coupled L2 added to the gradient, then Adam.
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask),
        optax.adam(learning_rate, b1=momentum, b2=b2),
    )
  elif name == "lion":
    tx = optax.lion(learning_rate, b1=momentum, b2=b2, weight_decay=weight_decay, mask=mask)
  elif name == "adafactor":
    tx = optax.adafactor(learning_rate, weight_decay_rate=weight_decay or None,
                         weight_decay_mask=mask)
  else:
    raise ValueError(
        f"unknown optimizer {name!r}; choose sgd_sai, adamw, sgdm, adam, lion or adafactor"
    )
  if clip_norm is not None and clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  if params is not None:
    jax.eval_shape(tx.init, params)
  return tx


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One entry of :data:`REGISTRY`: an optimizer as the studies and plots name it.

  Attributes:
    key: the registry key (``sgd_sai_unnorm`` is ``sgd_sai`` with ``normalize=False``).
    optimizer: the :func:`make_optimizer` name.
    label: a readable name for tables and plots.
    sai_normalize: sgd_sai only: the paper's max-normalised scales.
    defaults_from: the optimizer whose example default lr / weight decay it takes when the
      example's config has none of its own (``adam`` starts from AdamW's).
  """

  key: str
  optimizer: str
  label: str
  sai_normalize: bool = True
  defaults_from: str | None = None


REGISTRY: dict[str, OptimizerSpec] = {
    s.key: s for s in (
        OptimizerSpec("sgd_sai", "sgd_sai", "SGD-SaI (normalize=True)"),
        OptimizerSpec("sgd_sai_unnorm", "sgd_sai", "SGD-SaI (normalize=False)",
                      sai_normalize=False, defaults_from="sgd_sai"),
        OptimizerSpec("adamw", "adamw", "AdamW"),
        OptimizerSpec("sgdm", "sgdm", "SGD-momentum"),
        OptimizerSpec("adam", "adam", "Adam (L2)", defaults_from="adamw"),
        OptimizerSpec("lion", "lion", "Lion"),
        OptimizerSpec("adafactor", "adafactor", "Adafactor"),
    )
}


def registry_defaults(optimizer_defaults: Sequence[tuple[str, float, float]],
                      key: str) -> tuple[float, float]:
  """The example's default ``(learning_rate, weight_decay)`` of registry entry ``key``.

  Args:
    optimizer_defaults: an example config's ``optimizer_defaults`` table.
    key: a :data:`REGISTRY` key. ``sgd_sai_unnorm`` returns sgd_sai's (``normalize=True``)
      values; divide the learning rate by the g-SNR normaliser to translate it.

  Returns:
    ``(learning_rate, weight_decay)``.

  Example::

    registry_defaults(get_config("tiny").optimizer_defaults, "adam")  # AdamW's
  """
  spec = REGISTRY[key]
  table = {name: (lr, wd) for name, lr, wd in optimizer_defaults}
  for name in (spec.optimizer, spec.defaults_from):
    if name in table:
      return table[name]
  raise KeyError(f"the example config has no default learning rate for {key!r}")


def stacked_axes(prefix: str) -> BlockAxesFn:
  """``block_axes`` for sgd_sai: axis 0 for leaves under ``prefix`` (scanned layers)."""

  def fn(path: Sequence[Any], leaf: Any) -> int | None:
    del leaf
    return 0 if path_str(path).split("/", 1)[0] == prefix else None

  return fn


def gsnr_table(opt_state: Any) -> dict[str, float | list[float]]:
  """sgd_sai's captured scale of every block, keyed by parameter path (for ``gsnr.json``)."""
  scales = optax_sai.gsnr_scales(opt_state)
  out: dict[str, float | list[float]] = {}
  for path, value in jax.tree_util.tree_flatten_with_path(scales)[0]:
    arr = jax.device_get(value)
    out[path_str(path)] = float(arr) if arr.ndim == 0 else arr.tolist()
  return out


def gradient_gsnr_table(grads: Params, block_axes: BlockAxesFn | None = None) -> dict[str, Any]:
  """The normalised g-SNR of a gradient (what sgd_sai would capture from it), by path."""
  # One compiled computation, not an op-by-op dispatch per leaf (seconds on a big tree).
  snr = jax.jit(lambda g: optax_sai.gsnr(g, block_axes=block_axes))(grads)
  leaves = jax.tree_util.tree_flatten_with_path(snr)[0]
  top = max(float(jnp.max(v)) for _, v in leaves) or 1.0
  out: dict[str, Any] = {}
  for path, value in leaves:
    arr = jax.device_get(value) / top
    out[path_str(path)] = float(arr) if arr.ndim == 0 else arr.tolist()
  return out

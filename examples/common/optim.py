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


def _sgd_sai(normalize: bool | None) -> Callable[..., optax.GradientTransformation]:
  """sgd_sai's builder; ``normalize=None`` takes the caller's ``sai_normalize``."""

  def build(lr, wd, *, momentum, mask, block_axes, sai_normalize, options, **_):
    return optax_sai.sgd_sai(
        lr, momentum=momentum, weight_decay=wd,
        normalize=sai_normalize if normalize is None else normalize,
        weight_decay_mask=mask, block_axes=block_axes, **options)

  return build


def _adamw(lr, wd, *, momentum, b2, mask, options, **_):
  return optax.adamw(lr, b1=momentum, b2=b2, weight_decay=wd, mask=mask, **options)


def _sgdm(lr, wd, *, momentum, mask, options, **_):
  # torch.optim.SGD(weight_decay=...): coupled L2 added to the gradient (a no-op at 0).
  return optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.sgd(lr, momentum=momentum, **options))


def _adam(lr, wd, *, momentum, b2, mask, options, **_):
  # torch.optim.Adam(weight_decay=...): coupled L2 added to the gradient, then Adam.
  return optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.adam(lr, b1=momentum, b2=b2, **options))


def _lion(lr, wd, *, momentum, b2, mask, options, **_):
  return optax.lion(lr, b1=momentum, b2=b2, weight_decay=wd, mask=mask, **options)


def _adafactor(lr, wd, *, mask, options, **_):
  return optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=mask, **options)


def _prodigy(lr, wd, *, momentum, b2, mask, options, **_):
  if wd and mask is not None:
    raise ValueError("optax's prodigy decays every leaf: use weight_decay=0 or mask=None")
  return optax.contrib.prodigy(lr, betas=(momentum, b2), weight_decay=wd, **options)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One entry of :data:`OPTIMIZERS`: an optimizer, its label and how to build it.

  Attributes:
    key: the name (``--optimizer``, the studies' and benchmarks' optimizer names).
    label: a readable name for tables and plots.
    build: ``(learning_rate, weight_decay, *, momentum, b2, mask, block_axes,
      sai_normalize, options) -> GradientTransformation``; ``options`` (a dict) go to the
      optax constructor (e.g. ``mu_dtype``), the other keywords where they apply.
    decay: ``"decoupled"`` (decay x learning rate per step) or ``"coupled"`` (L2 added to
      the gradient).
    defaults_from: the optimizer whose example default lr / weight decay the studies take
      when the example's config has none of its own (``adam`` starts from AdamW's).
  """

  key: str
  label: str
  build: Callable[..., optax.GradientTransformation]
  decay: str = "decoupled"
  defaults_from: str | None = None


OPTIMIZERS: dict[str, OptimizerSpec] = {
    s.key: s for s in (
        OptimizerSpec("sgd_sai", "SGD-SaI (normalize=True)", _sgd_sai(None)),
        OptimizerSpec("sgd_sai_unnorm", "SGD-SaI (normalize=False)", _sgd_sai(False),
                      defaults_from="sgd_sai"),
        OptimizerSpec("adamw", "AdamW", _adamw),
        OptimizerSpec("sgdm", "SGD-momentum", _sgdm, decay="coupled"),
        OptimizerSpec("adam", "Adam (L2)", _adam, decay="coupled", defaults_from="adamw"),
        OptimizerSpec("lion", "Lion", _lion),
        OptimizerSpec("adafactor", "Adafactor", _adafactor),
        OptimizerSpec("prodigy", "Prodigy", _prodigy),
    )
}


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
    **options: Any,
) -> optax.GradientTransformation:
  """Builds an optimizer of :data:`OPTIMIZERS`.

  Args:
    name: a key of :data:`OPTIMIZERS`: ``sgd_sai``, ``sgd_sai_unnorm`` (sgd_sai with
      ``normalize=False``), ``adamw``, ``sgdm`` (``optax.sgd`` with momentum and L2 weight
      decay added to the gradient, as ``torch.optim.SGD`` does), ``adam`` (``optax.adam``
      with coupled L2 weight decay, as ``torch.optim.Adam``), ``lion``, ``adafactor`` or
      ``prodigy``.
    learning_rate: a float or a schedule (see :func:`warmup_cosine`).
    weight_decay: decoupled weight decay (coupled L2 for ``sgdm`` and ``adam``).
    momentum: momentum of sgd_sai / sgdm, ``b1`` of AdamW, Adam, Lion and Prodigy.
    b2: the second coefficient of AdamW, Adam, Lion and Prodigy.
    clip_norm: clip gradients to this global norm first (``None``: no clipping). g-SNR is
      scale invariant, so clipping never changes the scales sgd_sai captures.
    mask: which leaves weight decay applies to (a pytree of bools or a callable).
    block_axes: sgd_sai only: the axes of stacked (scanned) leaves, one block per slice.
    sai_normalize: ``sgd_sai`` only: the paper's max-normalised scales (``False``: the
      released ``sgd-sai`` 1.0.3 semantics, as ``sgd_sai_unnorm``).
    params: optional parameters; when given the mask and block axes are checked against
      them now rather than at ``init``.
    **options: passed to the optax constructor (``mu_dtype``, ``accumulator_dtype``).

  Returns:
    An ``optax.GradientTransformation``.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
  tx = OPTIMIZERS[name].build(learning_rate, weight_decay, momentum=momentum, b2=b2,
                              mask=mask, block_axes=block_axes, sai_normalize=sai_normalize,
                              options=options)
  if clip_norm is not None and clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  if params is not None:
    jax.eval_shape(tx.init, params)
  return tx


def task_optimizer(
    task: Any,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float | None = None,
) -> optax.GradientTransformation:
  """The optimizer of a task, assembled as :func:`examples.common.training.fit` runs it.

  The config's optimizer (its momentum, ``b2``, ``sai_normalize``) with the task's decay
  mask and block axes, then the task's ``wrap_optimizer``, then global-norm clipping in
  front: every caller (``fit``, the studies, byte counts) gets the same chain.

  Args:
    task: an :class:`examples.common.training.Task` (its ``config``, ``decay_mask``,
      ``block_axes`` and ``wrap_optimizer`` are read).
    learning_rate: a float, a schedule or a traced scalar (the studies' vmapped members).
    weight_decay: ``None``: the config's.

  Returns:
    An ``optax.GradientTransformation``.
  """
  cfg = task.config
  wd = cfg.weight_decay if weight_decay is None else weight_decay
  tx = make_optimizer(
      cfg.optimizer, learning_rate, wd, momentum=cfg.momentum, b2=cfg.b2,
      block_axes=task.block_axes, sai_normalize=cfg.sai_normalize,
      mask=task.decay_mask or decay_mask)
  if task.wrap_optimizer is not None:
    tx = task.wrap_optimizer(tx)
  if cfg.clip_norm is not None and cfg.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
  return tx


def default_hyperparameters(optimizer_defaults: Sequence[tuple[str, float, float]],
                            key: str) -> tuple[float, float]:
  """The example's default ``(learning_rate, weight_decay)`` of optimizer ``key``.

  Args:
    optimizer_defaults: an example config's ``optimizer_defaults`` table.
    key: a key of :data:`OPTIMIZERS`; without an entry of its own it takes its
      ``defaults_from``'s (``sgd_sai_unnorm``: sgd_sai's ``normalize=True`` values; divide
      the learning rate by the g-SNR normaliser to translate it).

  Returns:
    ``(learning_rate, weight_decay)``.

  Example::

    default_hyperparameters(get_config("tiny").optimizer_defaults, "adam")  # AdamW's
  """
  spec = OPTIMIZERS[key]
  table = {name: (lr, wd) for name, lr, wd in optimizer_defaults}
  for name in (key, spec.defaults_from):
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

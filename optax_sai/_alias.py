"""``sgd_sai``: the full optimizer as one ``optax.chain`` of public building blocks."""

import numbers
from typing import Any

import jax
import optax

from optax_sai import _gsnr, _transforms


def _check_scalar(name: str, value: Any, *, low: float, high: float | None = None,
                  high_inclusive: bool = False) -> None:
  """Validates a hyperparameter when it is a concrete number (not a schedule or tracer)."""
  if isinstance(value, jax.core.Tracer) or callable(value):
    return
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {value!r}.") from None
  if x != x:
    raise ValueError(f"{name} must not be NaN.")
  if x < low:
    raise ValueError(f"{name} must be >= {low}, got {x}.")
  if high is not None and (x > high or (x == high and not high_inclusive)):
    bracket = "]" if high_inclusive else ")"
    raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {x}.")


def _floating_mask(mask: Any) -> Any:
  """Combines a user weight-decay mask with 'floating-point leaves only'."""

  def resolve(params):
    user = mask(params) if callable(mask) else mask
    if user is None:
      return jax.tree.map(_gsnr.is_trainable_leaf, params)
    return jax.tree.map(
        lambda m, p: bool(m) and _gsnr.is_trainable_leaf(p),
        user,
        params,
        is_leaf=lambda x: isinstance(x, bool) or x is None,
    )

  return resolve


def _decoupled_weight_decay(weight_decay: Any, mask: Any) -> optax.GradientTransformation:
  """``optax.add_decayed_weights`` on floating leaves; without ``params`` when the decay is 0.

  A weight decay that is the number 0 keeps the same state (so checkpoints and
  ``inject_hyperparams`` see one structure) but its update passes the updates through,
  so that ``update`` needs no ``params``.
  """
  decay = optax.add_decayed_weights(weight_decay, mask=_floating_mask(mask))
  if isinstance(weight_decay, jax.core.Tracer) or callable(weight_decay):
    return decay
  if isinstance(weight_decay, numbers.Number | jax.Array) and float(weight_decay) == 0:
    return optax.GradientTransformation(decay.init, lambda updates, state, params=None:
                                        (updates, state))
  return decay


def _direction(momentum: Any, eps: Any, normalize: Any, block_axes: Any,
               mu_dtype: Any) -> tuple[optax.GradientTransformation, ...]:
  """The validated g-SNR scale and momentum that :func:`sgd_sai` and :func:`scale_by_sai` share."""
  _check_scalar("momentum", momentum, low=0.0, high=1.0)
  _check_scalar("eps", eps, low=0.0)
  if not isinstance(normalize, bool | numbers.Integral):
    raise ValueError(f"normalize must be a bool, got {normalize!r}.")
  return (
      _transforms.scale_by_gsnr(eps, normalize=bool(normalize), block_axes=block_axes),
      _transforms.sai_momentum(momentum, mu_dtype=mu_dtype),
  )


def sgd_sai(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,
    weight_decay: jax.typing.ArrayLike = 1e-3,
    eps: float = 1e-8,
    *,
    normalize: bool = True,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    block_axes: _gsnr.BlockAxes = None,
) -> optax.GradientTransformation:
  r"""SGD-SaI: SGD with momentum, its learning rate scaled at initialisation by g-SNR.

  Per parameter block :math:`i` (a pytree leaf, or a slice of one along
  ``block_axes``), with :math:`g_t` the gradient:

  .. math::
    s_i &= \|g_1\|_2 / (\mathrm{std}(g_1) + \epsilon) \quad
           (\text{captured once; divided by } \max_k s_k \text{ if normalize}) \\
    m_1 &= g_1, \quad m_t = \mu m_{t-1} + (1 - \mu) g_t \\
    \theta_t &= \theta_{t-1} - \eta_t (s_i m_t + \lambda \theta_{t-1})

  It is literally ``optax.chain(scale_by_gsnr, sai_momentum,
  optax.add_decayed_weights, optax.scale_by_learning_rate)``. Its state is the
  momentum (parameter-sized, in ``mu_dtype``) plus one value per
  block and two step counters: half of AdamW's.

  ``normalize=True`` follows the paper's Algorithm 1: a block's scale is its
  g-SNR divided by the normaliser, the largest g-SNR among the blocks captured
  at the first step where any block is captured. Those blocks' scales lie in
  (0, 1]. A block captured later (its gradient was zero, e.g. below a
  zero-initialised head) is divided by the same stored normaliser, so its scale
  exceeds 1 whenever its g-SNR exceeds the normaliser: below a zero head of
  ``n_head`` entries a body block of ``n`` entries gets about
  ``sqrt(n / n_head)``, and moves at that multiple of the learning rate (see
  ``docs/guides/algorithm.md``, edge cases). ``normalize=False`` reproduces the
  released PyTorch package ``sgd-sai`` 1.0.3, whose step is ``lr * g-SNR`` (so
  its learning rates are smaller by the largest block's g-SNR, typically a few
  hundred) and does not depend on which block was captured first.

  Args:
    learning_rate: a fixed step size or an ``optax.Schedule``.
    momentum: decay of the momentum EMA, in [0, 1). 0 gives plain SGD with
      the g-SNR scales.
    weight_decay: decoupled weight decay, multiplied by the (scheduled)
      learning rate only, never by the g-SNR scale: each step shrinks the
      weights by ``lr * weight_decay``. The default, 1e-3, is 1e-3 per step at
      a learning rate of 1, the best per-step decay measured on a ViT (on a
      GPT-2 5e-4, with 1e-3 within 1%); the PyTorch package's 1e-2 was set for its
      learning rates of ~1e-2 (``normalize=False``). Carry ``lr * wd`` over
      from another optimizer, not ``wd``. With 0, ``update`` does not need
      ``params``.
    eps: added to each block's gradient standard deviation.
    normalize: divide the g-SNR by the largest one captured at the first
      capturing step (paper) or not (PyTorch package 1.0.3).
    weight_decay_mask: like ``optax.adamw``'s ``mask``: a pytree of bools or a
      callable ``params -> pytree of bools`` saying which leaves decay.
      Non-floating leaves never decay.
    mu_dtype: dtype of the momentum buffer, e.g. ``jnp.bfloat16``.
    block_axes: how leaves split into blocks (see :func:`scale_by_gsnr`);
      ``0`` for the stacked layers of ``nnx.scan``.

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: for a negative learning rate, eps or weight decay, or a
      momentum outside [0, 1).

  Example:
    >>> import jax, jax.numpy as jnp, optax, optax_sai
    >>> schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)
    >>> tx = optax_sai.sgd_sai(schedule, momentum=0.9, weight_decay=1e-3)
    >>> params = {"w": jnp.ones((3, 2))}
    >>> loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
    >>> state = tx.init(params)
    >>> grads = jax.grad(loss)(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Xu et al., `No More Adam: Learning Rate Scaling at Initialization is All
    You Need <https://arxiv.org/abs/2412.11768>`_, 2024.
  """
  _check_scalar("learning_rate", learning_rate, low=0.0)
  _check_scalar("weight_decay", weight_decay, low=0.0)
  return optax.chain(
      *_direction(momentum, eps, normalize, block_axes, mu_dtype),
      _decoupled_weight_decay(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def scale_by_sai(
    momentum: float | jax.Array = 0.9,
    eps: float = 1e-8,
    *,
    normalize: bool = True,
    mu_dtype: Any | None = None,
    block_axes: _gsnr.BlockAxes = None,
) -> optax.GradientTransformation:
  r"""SGD-SaI's direction without learning rate or weight decay: g-SNR scale, then momentum.

  The ``scale_by_*`` form of :func:`sgd_sai`, for trainers that add the
  learning rate, its schedule and weight decay themselves and pick the
  optimizer by name (big_vision's ``config.optax_name``, Levanter's and
  MaxText's optimizer factories). Per block :math:`i`:

  .. math::
    u_t = s_i \, m_t, \qquad m_1 = g_1, \quad m_t = \mu m_{t-1} + (1 - \mu) g_t

  with :math:`s_i` the g-SNR captured at the first step (divided by the largest
  block's if ``normalize``). It is ``optax.chain(scale_by_gsnr(...),
  sai_momentum(...))``, so ``sgd_sai(lr, momentum, wd)`` is
  ``optax.chain(scale_by_sai(momentum), optax.add_decayed_weights(wd),
  optax.scale_by_learning_rate(lr))``. Like ``optax.scale_by_adam``, the
  update it returns still has to be multiplied by minus the learning rate.

  Args:
    momentum: decay of the momentum EMA, in [0, 1). 0: the g-SNR-scaled
      gradient itself.
    eps: added to each block's gradient standard deviation.
    normalize: divide the g-SNR by the largest one captured at the first
      capturing step (the paper's Algorithm 1) or not (the released PyTorch
      package ``sgd-sai`` 1.0.3).
    mu_dtype: dtype of the momentum buffer, e.g. ``jnp.bfloat16``.
    block_axes: how leaves split into blocks (see :func:`scale_by_gsnr`).

  Returns:
    An ``optax.GradientTransformation`` whose state is a tuple
    ``(ScaleByGsnrState, SaiMomentumState)``.

  Raises:
    ValueError: for a momentum outside [0, 1) or a negative eps.

  Example:
    >>> import jax.numpy as jnp, optax, optax_sai
    >>> tx = optax.chain(optax_sai.scale_by_sai(momentum=0.9),
    ...                  optax.add_decayed_weights(1e-2),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> params = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)  # gradient = params
    >>> [round(x, 4) for x in updates["w"].tolist()]  # -0.1 * (1 * g + 0.01 * w)
    [-0.101, -0.202, -0.303, -0.404]

  References:
    Xu et al., `No More Adam: Learning Rate Scaling at Initialization is All
    You Need <https://arxiv.org/abs/2412.11768>`_, 2024 (Algorithm 1).
  """
  return optax.chain(*_direction(momentum, eps, normalize, block_axes, mu_dtype))

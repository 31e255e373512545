"""sgd_sai with Equinox: filtered parameter trees, ``eqx.filter_grad`` gradients, dropout.

Equinox users initialise the optimizer on ``eqx.filter(model, eqx.is_array)`` and pass the
gradients of ``eqx.filter_grad``; both trees hold ``None`` where the model has non-array
leaves (here the MLP's activation functions and the dropout's settings). The tests train an
``eqx.nn.MLP`` with dropout on a teacher-student regression and check learning, the
``None`` leaves, the captured g-SNR scales against NumPy, and late capture below a
zero-initialised head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sai

eqx = pytest.importorskip("equinox")

N, D_IN, WIDTH = 256, 8, 32


class Net(eqx.Module):
  mlp: eqx.nn.MLP
  dropout: eqx.nn.Dropout

  def __init__(self, key):
    self.mlp = eqx.nn.MLP(D_IN, 1, WIDTH, depth=2, activation=jax.nn.tanh, key=key)
    self.dropout = eqx.nn.Dropout(0.1)

  def __call__(self, x, key=None):
    """One example; dropout on the hidden activations when a key is given."""
    *hidden, head = self.mlp.layers
    for i, layer in enumerate(hidden):
      x = self.mlp.activation(layer(x))
      if key is not None:
        x = self.dropout(x, key=jax.random.fold_in(key, i))
    return head(x)[0]


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, D_IN)).astype(np.float32)
  a = rng.normal(size=(D_IN, 16)).astype(np.float32) / np.sqrt(D_IN)
  b = rng.normal(size=(16,)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(np.tanh(x @ a) @ b)


def _loss(model, x, y, key):
  keys = None if key is None else jax.random.split(key, x.shape[0])
  pred = jax.vmap(model)(x, keys) if key is not None else jax.vmap(model)(x)
  return jnp.mean((pred - y) ** 2)


@eqx.filter_jit
def _eval_loss(model, x, y):
  return _loss(model, x, y, None)


_grads = eqx.filter_jit(eqx.filter_grad(_loss))


def _make_step(tx):
  @eqx.filter_jit
  def step(model, opt_state, x, y, key):
    grads = _grads(model, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, updates

  return step


def _is_none(x):
  return x is None


def _np_gsnr(g: np.ndarray, eps: float = 1e-8) -> float:
  """||g|| / (unbiased std + eps); 1 for a one-element block (docs/spec.md, edge cases)."""
  g = np.asarray(g, np.float64).ravel()
  if g.size == 1:
    return 1.0
  return float(np.linalg.norm(g) / (np.std(g, ddof=1) + eps))


def test_equinox_mlp_with_dropout_learns_and_keeps_non_array_leaves():
  x, y = _data()
  model = Net(jax.random.key(0))
  params = eqx.filter(model, eqx.is_array)
  tx = optax_sai.sgd_sai(0.1, momentum=0.9, weight_decay=1e-4)
  opt_state = tx.init(params)
  step = _make_step(tx)
  initial = float(_eval_loss(model, x, y))

  key0 = jax.random.key(1)
  first_grads = _grads(model, x, y, key0)
  model, opt_state, updates = step(model, opt_state, x, y, key0)

  # The None leaves: the updates have None exactly where the model has non-array leaves,
  # and applying them leaves those leaves untouched.
  struct = jax.tree.structure(first_grads, is_leaf=_is_none)
  assert jax.tree.structure(updates, is_leaf=_is_none) == struct
  assert jax.tree.structure(params, is_leaf=_is_none) == struct
  n_none = sum(v is None for v in jax.tree.leaves(updates, is_leaf=_is_none))
  assert n_none >= 3  # activation, final activation, dropout's settings
  assert model.mlp.activation is jax.nn.tanh and model.dropout.p == 0.1

  # The captured scales are the g-SNR of the first gradient (a NumPy reference),
  # divided by the largest one.
  grads_np = [np.asarray(g) for g in jax.tree.leaves(first_grads)]
  snr = np.array([_np_gsnr(g) for g in grads_np])
  scales = np.array([float(s) for s in jax.tree.leaves(optax_sai.gsnr_scales(opt_state))])
  assert len(scales) == len(grads_np) == 6  # 3 Linear layers: weight and bias each
  assert grads_np[-1].size == 1  # the head's bias: a one-element block, g-SNR 1
  np.testing.assert_allclose(scales, snr / snr.max(), rtol=1e-4)

  for i in range(2, 301):
    model, opt_state, _ = step(model, opt_state, x, y, jax.random.fold_in(key0, i))
  final = float(_eval_loss(model, x, y))
  baseline = float(jnp.var(y))  # the best constant prediction
  assert final < 0.1 * baseline and final < 0.1 * initial, (initial, final, baseline)
  # The scales stayed frozen after the first step.
  later = np.array([float(s) for s in jax.tree.leaves(optax_sai.gsnr_scales(opt_state))])
  np.testing.assert_array_equal(later, scales)


def test_equinox_blocks_below_a_zero_head_are_captured_at_the_second_step():
  x, y = _data()
  model = Net(jax.random.key(2))
  head = model.mlp.layers[-1]
  model = eqx.tree_at(lambda m: m.mlp.layers[-1].weight, model, jnp.zeros_like(head.weight))
  tx = optax_sai.sgd_sai(0.1, momentum=0.9, weight_decay=0.0)
  opt_state = tx.init(eqx.filter(model, eqx.is_array))
  step = _make_step(tx)

  key = jax.random.key(3)
  g1 = _grads(model, x, y, key)
  model, opt_state, updates = step(model, opt_state, x, y, key)
  flat_g1 = jax.tree.leaves(g1)
  scales1 = [float(s) for s in jax.tree.leaves(optax_sai.gsnr_scales(opt_state))]
  # Below the zero head every gradient is exactly zero: not captured, no update (wd = 0).
  for g, s, u in zip(flat_g1[:4], scales1[:4], jax.tree.leaves(updates)[:4], strict=True):
    assert not np.any(np.asarray(g)) and s == 0.0 and not np.any(np.asarray(u))
  assert scales1[4] > 0 and scales1[5] > 0  # the head's weight and bias
  normalizer = max(_np_gsnr(g) for g in flat_g1[4:])

  g2 = _grads(model, x, y, jax.random.fold_in(key, 2))
  model, opt_state, _ = step(model, opt_state, x, y, jax.random.fold_in(key, 2))
  scales2 = [float(s) for s in jax.tree.leaves(optax_sai.gsnr_scales(opt_state))]
  # The body is captured at step 2 and divided by the normaliser stored at step 1.
  expected = [_np_gsnr(g) / normalizer for g in jax.tree.leaves(g2)[:4]]
  np.testing.assert_allclose(scales2[:4], expected, rtol=1e-4)
  assert scales2[4:] == scales1[4:]

  initial = float(_eval_loss(model, x, y))
  for i in range(3, 301):
    model, opt_state, _ = step(model, opt_state, x, y, jax.random.fold_in(key, i))
  assert float(_eval_loss(model, x, y)) < 0.2 * initial
  assert isinstance(optax_sai.find_gsnr_state(opt_state).normalizer, jax.Array)
  assert optax.tree_utils.tree_norm(eqx.filter(model, eqx.is_array)) > 0


def test_frozen_layers_init_on_the_trainable_part():
  # Equinox's frozen-layer pattern: gradients only for the head (None elsewhere).
  x, y = _data()
  model = Net(jax.random.key(4))
  filter_spec = jax.tree.map(lambda _: False, model)
  filter_spec = eqx.tree_at(lambda m: (m.mlp.layers[-1].weight, m.mlp.layers[-1].bias),
                            filter_spec, replace=(True, True))

  @eqx.filter_jit
  def head_grads(model):
    diff, static = eqx.partition(model, filter_spec)
    return eqx.filter_grad(lambda d: _loss(eqx.combine(d, static), x, y, None))(diff)

  tx = optax_sai.sgd_sai(0.1, weight_decay=0.0)
  # Initialised on every array, the None gradients of the frozen part are missing from
  # the updates: the error names the fix.
  opt_state = tx.init(eqx.filter(model, eqx.is_array))
  with pytest.raises(ValueError, match=r"missing from the updates.*eqx\.filter\(model, "
                                       r"filter_spec\)"):
    tx.update(head_grads(model), opt_state, eqx.filter(model, eqx.is_array))

  # Initialised on the trainable part, it trains the head and leaves the rest alone.
  trainable = eqx.filter(model, filter_spec)
  opt_state = tx.init(trainable)
  g1 = head_grads(model)
  initial = float(_eval_loss(model, x, y))
  body_before = [np.asarray(layer.weight) for layer in model.mlp.layers[:-1]]
  for _ in range(50):
    updates, opt_state = tx.update(head_grads(model), opt_state)  # wd 0: no params needed
    model = eqx.apply_updates(model, updates)
  for layer, w in zip(model.mlp.layers[:-1], body_before, strict=True):
    np.testing.assert_array_equal(np.asarray(layer.weight), w)
  assert float(_eval_loss(model, x, y)) < initial
  head = [np.asarray(g) for g in jax.tree.leaves(g1)]
  assert len(head) == 2  # the head's weight and its one-element bias (g-SNR 1)
  scales = [float(s) for s in jax.tree.leaves(optax_sai.gsnr_scales(opt_state))]
  snr = [_np_gsnr(g) for g in head]
  np.testing.assert_allclose(scales, np.array(snr) / max(snr), rtol=1e-4)

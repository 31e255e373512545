"""``scale_by_sai``: SGD-SaI without learning rate or weight decay, for trainers that add them.

The expected parameters are the test vectors of docs/spec.md (computed in float64 with the
authors' reference); the trainer-shaped chains are the three recipes of
docs/guides/recipes.md, checked against those vectors or against ``sgd_sai``'s
update rule written out in NumPy.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sai

P0 = np.array([[1.0, 2.0], [3.0, 4.0]])
G1 = np.array([[0.1, -0.2], [0.3, 0.4]])
G2 = np.array([[-0.1, 0.05], [0.2, -0.3]])
# docs/spec.md, test vectors: lr 0.01, mu 0.9, wd 0.1.
P1_RAW = np.array([[0.9969298034, 2.0021403932], [2.9907894102, 3.9877192136]])
P2_RAW = np.array([[0.9942767163, 2.0037610969], [2.9817950507, 3.9768998456]])
P1_NORM = np.array([[0.998, 2.0], [2.994, 3.992]])
P2_NORM = np.array([[0.996202, 1.99975], [2.988106, 3.984708]])


def _run(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


@pytest.mark.parametrize(
    "normalize, p1, p2", [(True, P1_NORM, P2_NORM), (False, P1_RAW, P2_RAW)]
)
def test_spec_vectors_with_decay_and_learning_rate_added(normalize, p1, p2):
  tx = optax.chain(
      optax_sai.scale_by_sai(0.9, normalize=normalize),
      optax.add_decayed_weights(0.1),
      optax.scale_by_learning_rate(0.01),
  )
  (q1, q2), _ = _run(tx, jnp.asarray(P0, jnp.float32), [jnp.asarray(G1), jnp.asarray(G2)])
  np.testing.assert_allclose(q1, p1, rtol=0, atol=2e-6)
  np.testing.assert_allclose(q2, p2, rtol=0, atol=2e-6)


def test_two_block_scales_from_the_spec():
  # docs/spec.md, test vectors: blocks [[0.1,-0.2],[0.3,0.4]] and [0.01,0.02,0.04] get
  # scales 0.69007 and 1.0.
  g = {"a": jnp.asarray(G1, jnp.float32), "b": jnp.array([0.01, 0.02, 0.04])}
  tx = optax_sai.scale_by_sai(0.9)
  updates, state = tx.update(g, tx.init(g))
  # m_1 = g_1, so the first update is scale * g.
  np.testing.assert_allclose(updates["a"] / g["a"], 0.69007, rtol=1e-4)
  np.testing.assert_allclose(updates["b"] / g["b"], 1.0, rtol=1e-5)
  np.testing.assert_allclose(optax_sai.find_gsnr_state(state).normalizer, 2.999998, rtol=1e-5)


def test_no_learning_rate_and_no_decay_inside():
  # A zero gradient after the first step: the update decays with the momentum only
  # (no weight-decay term, no learning rate): u_t = 0.5^(t-1) * scale * g_1.
  g = jnp.array([1.0, 2.0, 3.0, 4.0])
  params = jnp.full(4, 100.0)
  tx = optax_sai.scale_by_sai(0.5, normalize=False)
  state = tx.init(params)
  u1, state = tx.update(g, state, params)
  u2, state = tx.update(jnp.zeros(4), state, params)
  np.testing.assert_allclose(u1, np.sqrt(18.0) * np.asarray(g), rtol=1e-6)
  np.testing.assert_allclose(u2, 0.5 * np.asarray(u1), rtol=1e-6)


def test_options_reach_the_parts():
  params = {"stack": jnp.zeros((3, 4, 5)), "b": jnp.zeros(5)}
  tx = optax_sai.scale_by_sai(mu_dtype=jnp.bfloat16, block_axes={"stack": 0, "b": None})
  gsnr_state, momentum_state = tx.init(params)
  assert gsnr_state.gsnr["stack"].shape == (3,)
  assert gsnr_state.gsnr["b"].shape == ()
  assert momentum_state.mu["stack"].dtype == jnp.bfloat16


@pytest.mark.parametrize("kwargs", [{"momentum": 1.0}, {"momentum": -0.1}, {"eps": -1.0},
                                    {"normalize": "yes"}])
def test_rejects_bad_hyperparameters(kwargs):
  with pytest.raises(ValueError):
    optax_sai.scale_by_sai(**kwargs)


def _reference_sgd_sai(params, grads, lr_fn, wd, mu=0.9):
  """sgd_sai's update rule in NumPy (float64), per leaf = one block, max-normalised."""
  snr = {k: np.linalg.norm(g) / (np.std(g, ddof=1) + 1e-8) for k, g in grads[0].items()}
  top = max(snr.values())
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {}
  for t, g in enumerate(grads):
    for k in p:
      m[k] = g[k] if t == 0 else mu * m[k] + (1 - mu) * g[k]
      p[k] = p[k] - lr_fn(t) * (snr[k] / top * m[k] + wd * p[k])
  return p


def _problem(seed=0, steps=5):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(6, 4)), "b": rng.normal(size=4) * 0.1}
  grads = [{k: rng.normal(size=v.shape) + 0.3 for k, v in params.items()} for _ in range(steps)]
  return params, grads


def _apply(tx, params, grads):
  out, _ = _run(tx, jax.tree.map(jnp.asarray, params),
                [jax.tree.map(jnp.asarray, g) for g in grads])
  return out[-1]


def test_big_vision_chain_with_optax_name(monkeypatch):
  """big_vision: optax_name looked up on ``optax``; lr and wd multiplied by the schedule."""
  monkeypatch.setattr(optax, "optax_sai", optax_sai, raising=False)
  config = {"optax_name": "optax_sai.scale_by_sai", "optax": {"momentum": 0.9},
            "lr": 0.1, "wd": 1e-3}
  sched = optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 5)
  tx_func = operator.attrgetter(config["optax_name"])(optax)
  tx = optax.chain(
      optax.masked(tx_func(**config["optax"]), {"w": True, "b": True}),
      optax.scale(config["lr"]),
      optax.add_decayed_weights(config["wd"]),
      optax.scale_by_schedule(sched),
      optax.scale(-1.0),
  )
  params, grads = _problem()
  got = _apply(tx, params, grads)
  # big_vision's decay is multiplied by the schedule but not by lr: sgd_sai(lr * s, wd / lr).
  want = _reference_sgd_sai(params, grads, lambda t: 0.1 * float(sched(t)), 1e-3 / 0.1)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6)


def test_levanter_style_inject_hyperparams_chain():
  """Levanter: clip, the direction, add_decayed_weights, scale(-lr) under inject_hyperparams."""
  sched = optax.warmup_cosine_decay_schedule(0.0, 0.05, 2, 5)

  def _optimizer(learning_rate):
    return optax.chain(
        optax.clip_by_global_norm(1e6),
        optax_sai.scale_by_sai(momentum=0.9),
        optax.add_decayed_weights(0.1, mask={"w": True, "b": False}),
        optax.scale(-learning_rate),
    )

  tx = optax.inject_hyperparams(_optimizer)(learning_rate=sched)
  params, grads = _problem(seed=1)
  got = _apply(tx, params, grads)
  want_w = _reference_sgd_sai(params, grads, lambda t: float(sched(t)), 0.1)["w"]
  want_b = _reference_sgd_sai(params, grads, lambda t: float(sched(t)), 0.0)["b"]
  np.testing.assert_allclose(got["w"], want_w, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(got["b"], want_b, rtol=2e-5, atol=2e-6)

"""sgd_sai: exact against docs/spec.md's test vectors and a NumPy reference; its ecosystem."""

import inspect
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from references import np_gsnr, np_sgd_sai

import optax_sai

P0 = [[1.0, 2.0], [3.0, 4.0]]
G1 = [[0.1, -0.2], [0.3, 0.4]]
G2 = [[-0.1, 0.05], [0.2, -0.3]]
# docs/spec.md, test vectors: lr 0.01, momentum 0.9, wd 0.1.
SPEC = {
    False: ([[0.9969298034, 2.0021403932], [2.9907894102, 3.9877192136]],
            [[0.9942767163, 2.0037610969], [2.9817950507, 3.9768998456]]),
    True: ([[0.998, 2.0], [2.994, 3.992]],
           [[0.996202, 1.99975], [2.988106, 3.984708]]),
}


def two_steps(normalize, dtype):
  tx = optax_sai.sgd_sai(0.01, momentum=0.9, weight_decay=0.1, normalize=normalize)
  p = jnp.asarray(P0, dtype)
  state = tx.init(p)
  out = []
  for g in (G1, G2):
    u, state = tx.update(jnp.asarray(g, dtype), state, p)
    p = optax.apply_updates(p, u)
    out.append(np.asarray(p, np.float64))
  return out


def max_rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize("normalize", [False, True])
def test_spec_vectors_float32(normalize):
  for got, want in zip(two_steps(normalize, jnp.float32), SPEC[normalize], strict=True):
    assert max_rel_err(got, want) <= 1e-6


@pytest.mark.parametrize("normalize", [False, True])
def test_spec_vectors_float64(normalize):
  with jax.enable_x64(True):
    got = two_steps(normalize, jnp.float64)
  ref = np_sgd_sai([np.array(P0)], [[np.array(G1)], [np.array(G2)]], 0.01, 0.9, 0.1,
                   normalize=normalize)
  for step in range(2):
    assert max_rel_err(got[step], ref[step][0]) <= 1e-12
    # The spec prints 10 significant digits (6 for the normalised case).
    assert max_rel_err(got[step], SPEC[normalize][step]) <= 1e-9


def test_zero_gradient_is_pure_decay():
  p0, lr, wd = jnp.asarray(P0), 0.05, 0.2
  tx = optax_sai.sgd_sai(lr, weight_decay=wd)
  p, state = p0, tx.init(p0)
  for _ in range(5):
    u, state = tx.update(jnp.zeros((2, 2)), state, p)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(p, np.asarray(P0) * (1 - lr * wd) ** 5, rtol=1e-6)


def test_zero_weight_decay_needs_no_params():
  # The spec test vectors' two steps, weight decay 0: p_t = p_{t-1} - lr * scale * m_t with
  # scale 1 (one block), m_1 = g_1, m_2 = 0.9 g_1 + 0.1 g_2.
  tx = optax_sai.sgd_sai(0.01, weight_decay=0.0)
  p, state = jnp.asarray(P0), tx.init(jnp.asarray(P0))
  for g in (G1, G2):
    u, state = tx.update(jnp.asarray(g), state)  # no params
    p = optax.apply_updates(p, u)
  g1, g2 = np.asarray(G1), np.asarray(G2)
  expected = np.asarray(P0) - 0.01 * g1 - 0.01 * (0.9 * g1 + 0.1 * g2)
  np.testing.assert_allclose(p, expected, rtol=1e-6)
  # Same state structure as with a decay (checkpoints see one layout); a decay needs params.
  decayed = optax_sai.sgd_sai(0.01, weight_decay=0.1)
  assert jax.tree.structure(decayed.init(jnp.asarray(P0))) == jax.tree.structure(state)
  with pytest.raises(ValueError, match="params"):
    decayed.update(jnp.asarray(G1), decayed.init(jnp.asarray(P0)))


def random_problem(rng, dtype, steps):
  shapes = {"emb": (11, 7), "attn": {"qkv": (7, 21), "bias": (21,)}, "norm": (7,),
            "scalar": ()}
  params = jax.tree.map(lambda s: rng.normal(size=s), shapes, is_leaf=lambda x: type(x) is tuple)
  means = {"emb": 0.0, "attn": {"qkv": 0.01, "bias": 0.5}, "norm": 2.0, "scalar": 0.0}
  grads = [jax.tree.map(lambda s, m: rng.normal(m, 1.0, size=s) * 1e-2, shapes, means,
                        is_leaf=lambda x: type(x) is tuple) for _ in range(steps)]
  cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)  # noqa: E731
  return params, grads, cast


@pytest.mark.parametrize("normalize", [True, False])
def test_against_numpy_reference_100_steps(rng, normalize):
  # Warmup + cosine, written so that it stays in float64 under x64 (optax's
  # schedules compute in float32 whatever the mode) and evaluated in NumPy below.
  def schedule(count):
    c = count + 0.0
    return 0.05 * jnp.minimum(1.0, (c + 1) / 10) * 0.5 * (1 + jnp.cos(jnp.pi * c / 100))

  params, grads, _ = random_problem(rng, jnp.float64, 100)
  leaves, treedef = jax.tree.flatten(params)
  leaf_grads = [treedef.flatten_up_to(g) for g in grads]

  def reference():
    lr = lambda t: 0.05 * min(1.0, (t + 1) / 10) * 0.5 * (1 + np.cos(np.pi * t / 100))  # noqa: E731
    return np_sgd_sai(leaves, leaf_grads, lr, 0.9, 0.05, normalize=normalize)[-1]

  def run(dtype):
    tx = optax_sai.sgd_sai(schedule, momentum=0.9, weight_decay=0.05, normalize=normalize)
    p = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    state = tx.init(p)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    for g in grads:
      p, state = step(p, state, jax.tree.map(lambda a: jnp.asarray(a, dtype), g))
    return jax.tree.leaves(p)

  ref = reference()
  with jax.enable_x64(True):
    got64 = run(jnp.float64)
  got32 = run(jnp.float32)
  for a64, r in zip(got64, ref, strict=True):
    np.testing.assert_allclose(a64, r, rtol=1e-12, atol=1e-14)
  for a32, r in zip(got32, ref, strict=True):
    np.testing.assert_allclose(a32, r, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_equals_explicit_chain(normalize):
  mask = {"emb": False, "attn": {"qkv": True, "bias": False}, "norm": False, "scalar": True}

  # Hyperparameters are traced, so one compilation serves every example.
  @jax.jit
  def both(hp, p, grads):
    lr, momentum, wd = hp
    full = optax_sai.sgd_sai(lr, momentum, wd, normalize=normalize, weight_decay_mask=mask)
    explicit = optax.chain(
        optax_sai.scale_by_gsnr(1e-8, normalize=normalize),
        optax_sai.sai_momentum(momentum),
        optax.add_decayed_weights(wd, mask=mask),
        optax.scale_by_learning_rate(lr),
    )
    s1, s2, out = full.init(p), explicit.init(p), []
    for g in grads:
      u1, s1 = full.update(g, s1, p)
      u2, s2 = explicit.update(g, s2, p)
      out.append((u1, u2))
    return out

  @settings(max_examples=25, deadline=None)
  @given(lr=st.floats(1e-4, 1.0), momentum=st.floats(0.0, 0.99), wd=st.floats(0.0, 0.5),
         seed=st.integers(0, 2**16))
  def check(lr, momentum, wd, seed):
    params, grads, cast = random_problem(np.random.default_rng(seed), jnp.float32, 3)
    hp = tuple(jnp.asarray(x, jnp.float32) for x in (lr, momentum, wd))
    for u1, u2 in both(hp, cast(params), [cast(g) for g in grads]):
      chex.assert_trees_all_equal(u1, u2)

  check()


class TestValidation:

  @pytest.mark.parametrize("kwargs, match", [
      ({"learning_rate": -1e-3}, "learning_rate"),
      ({"learning_rate": 1e-3, "momentum": 1.0}, "momentum"),
      ({"learning_rate": 1e-3, "momentum": -0.1}, "momentum"),
      ({"learning_rate": 1e-3, "weight_decay": -1.0}, "weight_decay"),
      ({"learning_rate": 1e-3, "eps": -1e-8}, "eps"),
      ({"learning_rate": float("nan")}, "NaN"),
  ])
  def test_bad_hyperparameters(self, kwargs, match):
    with pytest.raises(ValueError, match=match):
      optax_sai.sgd_sai(**kwargs)

  def test_block_axes_out_of_range_at_init(self):
    tx = optax_sai.sgd_sai(0.1, block_axes={"w": 2, "b": None})
    with pytest.raises(ValueError, match=r"\['w'\]"):
      tx.init({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})


class TestEcosystem:

  def test_weight_decay_follows_schedule(self):
    schedule = optax.linear_schedule(0.1, 0.0, 4)
    tx = optax_sai.sgd_sai(schedule, weight_decay=0.5)
    p0 = jnp.asarray(P0)
    p, state = p0, tx.init(p0)
    expected = np.asarray(P0)
    for t in range(4):
      u, state = tx.update(jnp.zeros((2, 2)), state, p)
      p = optax.apply_updates(p, u)
      expected = expected * (1 - float(schedule(t)) * 0.5)
    np.testing.assert_allclose(p, expected, rtol=1e-6)

  def test_inject_hyperparams(self):
    tx = optax.inject_hyperparams(optax_sai.sgd_sai)(
        learning_rate=0.01, momentum=0.9, weight_decay=0.1, normalize=False)
    p = jnp.asarray(P0)
    state = tx.init(p)
    for g in (G1, G2):
      u, state = jax.jit(tx.update)(jnp.asarray(g), state, p)
      p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p, SPEC[False][1], rtol=1e-6)
    assert set(state.hyperparams) >= {"learning_rate", "momentum", "weight_decay"}
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    u, state = tx.update(jnp.asarray(G1), state, p)
    np.testing.assert_array_equal(u, 0.0)

  def test_multi_steps_captures_accumulated_gradient(self):
    tx = optax.MultiSteps(optax_sai.sgd_sai(0.1, normalize=False), every_k_schedule=2)
    p = {"a": jnp.asarray(P0)}
    state = tx.init(p)
    g_a, g_b = jnp.asarray(G1), jnp.asarray(G2)
    _, state = tx.update({"a": g_a}, state, p)
    assert not bool(optax_sai.find_gsnr_state(state).captured["a"])
    _, state = tx.update({"a": g_b}, state, p)
    got = float(optax_sai.gsnr_scales(state)["a"])
    assert got == pytest.approx(np_gsnr((np.asarray(G1) + np.asarray(G2)) / 2), rel=1e-5)

  def test_apply_if_finite_skips_without_capturing(self):
    tx = optax.apply_if_finite(optax_sai.sgd_sai(0.1), max_consecutive_errors=5)
    p = {"a": jnp.asarray(P0)}
    state = tx.init(p)
    u, state = tx.update({"a": jnp.full((2, 2), jnp.nan)}, state, p)
    np.testing.assert_array_equal(u["a"], 0.0)
    assert not bool(optax_sai.find_gsnr_state(state).captured["a"])
    u, state = tx.update({"a": jnp.asarray(G1)}, state, p)
    assert bool(optax_sai.find_gsnr_state(state).captured["a"])

  def test_clip_by_global_norm_before_keeps_scales(self, rng):
    grads = {"a": jnp.asarray(rng.normal(size=(5, 5)) * 100, jnp.float32),
             "b": jnp.asarray(rng.normal(0.2, 1.0, size=(5,)) * 100, jnp.float32)}
    clipped = optax.chain(optax.clip_by_global_norm(1.0), optax_sai.sgd_sai(0.1))
    plain = optax_sai.sgd_sai(0.1)
    _, s1 = clipped.update(grads, clipped.init(grads), grads)
    _, s2 = plain.update(grads, plain.init(grads), grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
                 optax_sai.gsnr_scales(s1), optax_sai.gsnr_scales(s2))

  def test_flax_nnx_optimizer(self):
    from flax import nnx

    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax_sai.sgd_sai(0.05), wrt=nnx.Param)
    x = jnp.linspace(-1, 1, 32).reshape(8, 4)
    loss_fn = lambda m: jnp.mean((m(x) - 1.0) ** 2)  # noqa: E731

    @nnx.jit
    def train_step(model, opt):
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      opt.update(model, grads)
      return loss

    losses = [float(train_step(model, opt)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    scales = optax_sai.gsnr_scales(opt.opt_state)
    assert max(float(s) for s in jax.tree.leaves(scales)) == 1.0

  def test_linen_train_state(self):
    import flax.linen as nn
    from flax.training import train_state

    model = nn.Dense(3)
    x = jnp.linspace(-1, 1, 32).reshape(8, 4)
    params = model.init(jax.random.key(0), x)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optax_sai.sgd_sai(0.05))

    @jax.jit
    def train_step(state):
      loss_fn = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - 1.0) ** 2)  # noqa: E731
      loss, grads = jax.value_and_grad(loss_fn)(state.params)
      return state.apply_gradients(grads=grads), loss

    losses = []
    for _ in range(30):
      state, loss = train_step(state)
      losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert set(optax_sai.gsnr_scales(state.opt_state)) == {"kernel", "bias"}

  def test_no_recompilation_and_donation(self):
    tx = optax_sai.sgd_sai(optax.cosine_decay_schedule(0.1, 10), mu_dtype=jnp.bfloat16)
    traces = []

    def step(p, s, g):
      traces.append(1)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    jitted = jax.jit(step, donate_argnums=(0, 1))
    p = {"w": jnp.ones((16, 8)), "b": jnp.zeros(8)}
    state = tx.init(p)
    for i in range(5):
      old_p, old_mu = p, state[1].mu
      g = jax.tree.map(lambda a, i=i: jnp.full_like(a, 0.1) * (i + 1) + jnp.arange(a.size)
                       .reshape(a.shape) * 1e-3, p)
      p, state = jitted(p, state, g)
      assert old_p["w"].is_deleted() and old_mu["w"].is_deleted()
    assert len(traces) == 1

  def test_orbax_checkpoint_resume_is_bit_identical(self, tmp_path, rng):
    import orbax.checkpoint as ocp

    params, grads, cast = random_problem(rng, jnp.float32, 20)
    zero_head = jax.tree.map(jnp.zeros_like, cast(grads[0]))
    grads = [zero_head] + [cast(g) for g in grads[1:]]  # capture happens at step 2
    tx = optax_sai.sgd_sai(optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 20))

    @jax.jit
    def step(p, s, g):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    p, s = cast(params), tx.init(cast(params))
    for g in grads:
      p, s = step(p, s, g)
    uninterrupted = p

    p, s = cast(params), tx.init(cast(params))
    for g in grads[:10]:
      p, s = step(p, s, g)
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(tmp_path / "ckpt", {"params": p, "opt_state": s})
    del p, s
    abstract = jax.eval_shape(lambda: {"params": cast(params), "opt_state": tx.init(
        cast(params))})
    with ocp.StandardCheckpointer() as ckpt:
      restored = ckpt.restore(tmp_path / "ckpt", abstract)
    p, s = restored["params"], restored["opt_state"]
    assert bool(optax_sai.find_gsnr_state(s).captured["emb"])
    for g in grads[10:]:
      p, s = step(p, s, g)
    jax.tree.map(np.testing.assert_array_equal, p, uninterrupted)


class TestSignatures:
  """Public signatures are introspectable (no string annotations), as optax's battery needs."""

  def test_learning_rate_is_scalar_or_schedule(self):
    # The check optax's own test battery makes before testing schedules.
    hints = typing.get_type_hints(optax_sai.sgd_sai)
    assert hints["learning_rate"] is optax.ScalarOrSchedule
    assert hints["momentum"] is jax.typing.ArrayLike
    assert hints["mu_dtype"] == jax.typing.DTypeLike | None
    assert hints["return"] is optax.GradientTransformation

  @pytest.mark.parametrize("name", [n for n in optax_sai.__all__
                                    if callable(getattr(optax_sai, n))])
  def test_every_public_callable_has_real_annotations(self, name):
    obj = getattr(optax_sai, name)
    hints = typing.get_type_hints(obj)  # raises on an unresolvable string annotation
    annotations = inspect.get_annotations(obj)
    assert not any(isinstance(a, str) for a in annotations.values()), annotations
    if inspect.isfunction(obj):
      params = inspect.signature(obj).parameters
      assert set(params) <= set(hints), f"unannotated: {set(params) - set(hints)}"
      assert "return" in hints

  def test_schedule_accepted_where_annotated(self):
    schedule = optax.linear_schedule(1e-2, 0.0, 10)
    tx = optax_sai.sgd_sai(schedule)
    params = {"w": jnp.ones((3, 2))}
    g = {"w": jnp.arange(6.0).reshape(3, 2)}
    u, _ = tx.update(g, tx.init(params), params)
    assert np.all(np.isfinite(np.asarray(u["w"])))

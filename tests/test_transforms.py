"""scale_by_gsnr and sai_momentum: capture, edge cases, dtypes, one-shot steady step."""

import chex
import hlo_utils
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx
from references import np_gsnr

import optax_sai

G22 = jnp.array([[0.1, -0.2], [0.3, 0.4]])
G3 = jnp.array([0.01, 0.02, 0.04])


def run(tx, grads_seq, params):
  state = tx.init(params)
  outs = []
  for g in grads_seq:
    u, state = tx.update(g, state, params)
    outs.append(u)
  return outs, state


class TestScaleByGsnr:

  def test_spec_two_block_scales(self):
    tx = optax_sai.scale_by_gsnr()
    _, state = run(tx, [{"a": G22, "b": G3}], {"a": G22, "b": G3})
    scales = optax_sai.gsnr_scales(state)
    assert float(scales["a"]) == pytest.approx(0.69007, abs=5e-6)
    assert float(scales["b"]) == 1.0
    assert float(state.normalizer) == pytest.approx(2.999998, rel=1e-6)

  def test_capture_is_frozen(self, rng):
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
    tx = optax_sai.scale_by_gsnr(normalize=False)
    g1 = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    g2 = jax.tree.map(lambda p: jnp.asarray(rng.normal(3.0, 0.1, size=p.shape), jnp.float32),
                      params)
    (u1, u2), state = run(tx, [g1, g2], params)
    s = {k: np_gsnr(np.asarray(g1[k])) for k in params}
    chex.assert_trees_all_close(u1, {k: np.asarray(g1[k]) * s[k] for k in params}, rtol=1e-5)
    chex.assert_trees_all_close(u2, {k: np.asarray(g2[k]) * s[k] for k in params}, rtol=1e-5)

  def test_zero_first_gradient_captured_later_with_stored_normaliser(self):
    params = {"head": G22, "body": G3}
    zero = jnp.zeros(3)
    seq = [{"head": G22, "body": zero}, {"head": G22 * 3, "body": zero},
           {"head": -G22, "body": G3}]
    tx = optax_sai.scale_by_gsnr()
    state = tx.init(params)
    u, state = tx.update(seq[0], state)
    assert float(u["body"].sum()) == 0.0 and not bool(state.captured["body"])
    # The normaliser is the max over the blocks captured at the first capture.
    assert float(state.normalizer) == pytest.approx(np_gsnr(G22), rel=1e-6)
    head_scale = float(optax_sai.gsnr_scales(state)["head"])
    u, state = tx.update(seq[1], state)
    assert not bool(state.captured["body"])
    u, state = tx.update(seq[2], state)
    scales = optax_sai.gsnr_scales(state)
    assert bool(state.captured["body"])
    assert float(scales["head"]) == head_scale == 1.0  # no earlier scale changes
    # Late block divided by the same stored max: 3.0 / 2.07 > 1 is allowed.
    assert float(scales["body"]) == pytest.approx(np_gsnr(G3) / np_gsnr(G22), rel=1e-5)
    np.testing.assert_allclose(u["body"], np.asarray(G3) * float(scales["body"]), rtol=1e-6)

  def test_non_finite_first_gradient_not_captured(self):
    tx = optax_sai.scale_by_gsnr(normalize=False)
    params = {"a": G22}
    state = tx.init(params)
    _, state = tx.update({"a": G22.at[0, 0].set(jnp.nan)}, state)
    assert not bool(state.captured["a"])
    _, state = tx.update({"a": G22.at[0, 1].set(jnp.inf)}, state)
    assert not bool(state.captured["a"])
    u, state = tx.update({"a": G22}, state)
    assert bool(state.captured["a"])
    assert float(state.gsnr["a"]) == pytest.approx(2.0701966, rel=1e-6)

  @pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
  def test_non_finite_large_block_not_captured(self, rng, bad):
    # A block above _gsnr.LARGE_BLOCK entries is reduced differently (single-output
    # reductions, whose vectorised max can drop a NaN): same capture rule.
    g = jnp.asarray(rng.normal(0.2, 1.0, size=(512, 256)), jnp.float32)
    tx = optax_sai.scale_by_gsnr(normalize=False)
    state = tx.init({"a": g})
    _, state = tx.update({"a": g.at[100, 7].set(bad)}, state)
    assert not bool(state.captured["a"])
    _, state = tx.update({"a": jnp.zeros_like(g)}, state)
    assert not bool(state.captured["a"])
    _, state = tx.update({"a": g}, state)
    assert float(state.gsnr["a"]) == pytest.approx(np_gsnr(np.asarray(g)), rel=1e-5)

  def test_numerically_zero_block_deferred_like_a_zero_block(self, rng):
    # A key bias's gradient is zero in exact arithmetic (softmax is shift invariant) and
    # ~1e-11 in float32: deferred, not captured with an eps-dominated g-SNR of ~0.01.
    noise = jnp.asarray(rng.normal(size=8) * 4e-11, jnp.float32)
    body = jnp.asarray(rng.normal(0.1, 1.0, size=(8, 8)) * 1e-2, jnp.float32)
    tx = optax_sai.scale_by_gsnr()
    params = {"key_bias": noise, "w": body}
    state = tx.init(params)
    u, state = tx.update({"key_bias": noise, "w": body}, state)
    assert not bool(state.captured["key_bias"]) and bool(state.captured["w"])
    assert float(jnp.abs(u["key_bias"]).max()) == 0.0
    assert float(state.normalizer) == pytest.approx(np_gsnr(np.asarray(body)), rel=1e-5)
    # A real gradient later is captured, divided by the stored normaliser.
    late = jnp.asarray(rng.normal(size=8) * 1e-3, jnp.float32)
    _, state = tx.update({"key_bias": late, "w": body}, state)
    scales = optax_sai.gsnr_scales(state)
    want = np_gsnr(np.asarray(late)) / np_gsnr(np.asarray(body))
    assert float(scales["key_bias"]) == pytest.approx(want, rel=1e-5)

  @pytest.mark.parametrize("ratio, captured", [(2e-6, True), (5e-7, False)])
  def test_numerical_zero_line_is_relative_to_the_largest_block(self, rng, ratio, captured):
    # The line: a block is numerically zero when max|g| <= 1e-6 * the largest max|g| of
    # the step's gradients (optax_sai._gsnr.NUMERICAL_ZERO_RTOL).
    big = np.asarray(rng.normal(size=16), np.float64)
    small = np.asarray(rng.normal(size=5), np.float64)
    small *= ratio * np.abs(big).max() / np.abs(small).max()
    grads = {"big": jnp.asarray(big, jnp.float32), "small": jnp.asarray(small, jnp.float32)}
    tx = optax_sai.scale_by_gsnr(normalize=False, eps=0.0)
    _, state = tx.update(grads, tx.init(grads))
    assert bool(state.captured["small"]) == captured
    if captured:  # with eps = 0 the tiny block's g-SNR is the ordinary one
      assert float(state.gsnr["small"]) == pytest.approx(np_gsnr(small, eps=0.0), rel=1e-5)

  @pytest.mark.parametrize("factor", [1e-4, 1e-2, 1.0, 1e2, 1e4])
  def test_uniform_rescaling_captures_the_same_blocks(self, rng, factor):
    # Loss scaling must not change which blocks are captured (nor, with eps -> 0, the
    # scales): an exact zero, a 1e-9-relative residue and three ordinary blocks.
    base = {"zero": np.zeros(4), "residue": rng.normal(size=6) * 1e-9,
            "w": rng.normal(0.2, 1.0, size=(6, 5)), "b": rng.normal(size=5) * 1e-3,
            "ln": rng.normal(1.0, 0.1, size=5) * 1e-1}
    grads = {k: jnp.asarray(v * factor, jnp.float32) for k, v in base.items()}
    tx = optax_sai.scale_by_gsnr(eps=0.0)
    _, state = tx.update(grads, tx.init(grads))
    assert {k: bool(v) for k, v in state.captured.items()} == {
        "zero": False, "residue": False, "w": True, "b": True, "ln": True}
    snr = {k: np_gsnr(base[k], eps=0.0) for k in ("w", "b", "ln")}
    top = max(snr.values())
    scales = optax_sai.gsnr_scales(state)
    for k, v in snr.items():
      assert float(scales[k]) == pytest.approx(v / top, rel=1e-5)

  def test_attention_key_bias_of_a_real_layer_is_deferred(self):
    # Flax's MultiHeadAttention has a separate key bias; its gradient is float32 rounding.
    model = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False,
                                   rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 8, 16))
    grads = nnx.to_pure_dict(
        nnx.state(nnx.grad(lambda m: jnp.mean(jnp.tanh(m(x)) ** 2))(model), nnx.Param))
    assert 0 < float(jnp.abs(grads["key"]["bias"]).max()) < 1e-7  # not an exact zero
    tx = optax_sai.scale_by_gsnr()
    _, state = tx.update(grads, tx.init(grads))
    captured = state.captured
    assert not bool(captured["key"]["bias"])
    assert all(bool(c) for c in jax.tree.leaves(
        {k: v for k, v in captured.items() if k != "key"})) and bool(captured["key"]["kernel"])

  def test_one_element_blocks_scale_one(self):
    tx = optax_sai.scale_by_gsnr(normalize=False)
    params = {"s": jnp.array(1.0), "v": jnp.array([2.0])}
    grads = {"s": jnp.array(5.0), "v": jnp.array([-0.3])}
    (u,), state = run(tx, [grads], params)
    assert float(state.gsnr["s"]) == 1.0 and float(state.gsnr["v"]) == 1.0
    assert float(u["s"]) == 5.0  # the reference would multiply by ~5e8

  def test_stacked_blocks_captured_per_slice(self):
    w = jnp.stack([G22, jnp.zeros((2, 2)), -G22 * 2])
    tx = optax_sai.scale_by_gsnr(normalize=False, block_axes=0)
    (u,), state = run(tx, [{"w": w}], {"w": w})
    np.testing.assert_array_equal(state.captured["w"], [True, False, True])
    np.testing.assert_allclose(u["w"][2], np.asarray(-G22 * 2) * np_gsnr(G22), rtol=1e-5)

  def test_tree_mismatch_names_paths(self):
    tx = optax_sai.scale_by_gsnr()
    state = tx.init({"a": G22, "b": G3})
    with pytest.raises(ValueError, match=r"missing from the updates: \[\"\['b'\]\"\]"):
      tx.update({"a": G22}, state)
    with pytest.raises(ValueError, match=r"not in the parameters: \[\"\['c'\]\"\]"):
      tx.update({"a": G22, "b": G3, "c": G3}, state)

  def test_negative_eps_rejected(self):
    with pytest.raises(ValueError, match="eps"):
      optax_sai.scale_by_gsnr(-1.0)


class TestSaiMomentum:

  def test_buffer_starts_at_first_gradient_and_dampens(self):
    tx = optax_sai.sai_momentum(0.9)
    g1, g2 = jnp.array([1.0, -2.0]), jnp.array([3.0, 0.5])
    (u1, u2), _ = run(tx, [g1, g2], jnp.zeros(2))
    np.testing.assert_allclose(u1, g1)
    np.testing.assert_allclose(u2, 0.9 * g1 + 0.1 * g2, rtol=1e-7)
    # optax.trace differs: no dampening (u2 = 0.9 * g1 + g2).
    (_, t2), _ = run(optax.trace(0.9), [g1, g2], jnp.zeros(2))
    assert not np.allclose(t2, u2)

  def test_momentum_zero_is_plain_sgd(self, rng):
    tx = optax_sai.sai_momentum(0.0)
    seq = [jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(3)]
    outs, _ = run(tx, seq, jnp.zeros(5))
    for u, g in zip(outs, seq, strict=True):
      np.testing.assert_array_equal(u, g)

  @pytest.mark.parametrize("param_dtype", [jnp.bfloat16, jnp.float16])
  @pytest.mark.parametrize("mu_dtype", [None, jnp.float32, jnp.bfloat16])
  def test_low_precision(self, param_dtype, mu_dtype):
    params = {"w": jnp.ones((4, 4), param_dtype)}
    grads = {"w": (jnp.arange(16.0).reshape(4, 4) / 16 - 0.3).astype(param_dtype)}
    tx = optax_sai.sgd_sai(1e-2, mu_dtype=mu_dtype)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    gsnr_state = optax_sai.find_gsnr_state(state)
    assert gsnr_state.gsnr["w"].dtype == jnp.float32
    assert state[1].mu["w"].dtype == (mu_dtype or param_dtype)
    assert updates["w"].dtype == param_dtype
    expected = np_gsnr(np.asarray(grads["w"].astype(jnp.float32)))
    assert float(gsnr_state.gsnr["w"]) == pytest.approx(expected, rel=1e-5)


class TestPassThrough:

  def test_none_masked_empty_and_integer_leaves(self):
    params = {"w": G22, "none": None, "empty": {}, "masked": optax.MaskedNode(),
              "step": jnp.array(3, jnp.int32)}
    grads = {"w": G22, "none": None, "empty": {}, "masked": optax.MaskedNode(),
             "step": jnp.array(0, jnp.int32)}
    tx = optax_sai.sgd_sai(0.1)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert updates["none"] is None and updates["empty"] == {}
    assert isinstance(updates["masked"], optax.MaskedNode)
    assert float(updates["step"]) == 0.0
    new = optax.apply_updates(params, updates)
    assert int(new["step"]) == 3 and new["step"].dtype == jnp.int32

  def test_frozen_through_multi_transform(self):
    params = {"frozen": G22, "train": G3}
    tx = optax.multi_transform(
        {"sai": optax_sai.sgd_sai(0.1), "frozen": optax.set_to_zero()},
        {"frozen": "frozen", "train": "sai"},
    )
    state = tx.init(params)
    updates, state = tx.update({"frozen": G22, "train": G3}, state, params)
    np.testing.assert_array_equal(updates["frozen"], 0.0)
    assert float(optax_sai.gsnr_scales(state)["train"]) == 1.0

  def test_masked_transform(self):
    params = {"a": G22, "b": G3}
    tx = optax.masked(optax_sai.scale_by_gsnr(normalize=False), {"a": True, "b": False})
    state = tx.init(params)
    updates, state = tx.update(params, state)
    np.testing.assert_array_equal(updates["b"], G3)  # optax.masked passes it through
    np.testing.assert_allclose(updates["a"], np.asarray(G22) * np_gsnr(G22), rtol=1e-6)


def _steady_hlo(tx, params):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  state = tx.init(params)
  return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile().as_text()


def test_capture_and_steady_steps_share_one_trace():
  """Capture and steady steps are one program: a jitted step traces once, however many
  steps run and whichever blocks are captured late (the state keeps its types)."""
  params = {"w": jnp.ones((8, 4)), "stack": jnp.ones((3, 4, 2))}
  tx = optax_sai.sgd_sai(0.1, block_axes={"w": None, "stack": 0})

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  p = params
  for t in range(4):
    g = {"w": jnp.full((8, 4), 0.1) * jnp.arange(32.0).reshape(8, 4),
         "stack": jnp.ones((3, 4, 2)).at[1].set(0.0 if t < 2 else 1.0) * jnp.arange(8.0).reshape(
             4, 2)}
    p, state = step(p, state, g)
  captured = optax_sai.find_gsnr_state(state).captured
  assert bool(captured["w"]) and list(np.asarray(captured["stack"])) == [True, True, True]


def test_steady_step_has_no_reductions_over_gradient_entries():
  # Leaves with stacked axes too, so the per-block flags are arrays.
  params = {"w": jnp.ones((64, 32)), "b": jnp.ones((32,)), "stack": jnp.ones((4, 16, 8))}
  n_blocks = 1 + 1 + 4
  tx = optax_sai.sgd_sai(0.1, block_axes=lambda p, x: 0 if p[0].key == "stack" else None)
  comps, entry = hlo_utils.parse(_steady_hlo(tx, params))
  conds = hlo_utils.conditional_branches(comps)
  assert len(conds) == 1 and len(conds[0]) == 2
  reducers = {"reduce", "reduce-window", "all-reduce", "reduce-scatter"}
  # lax.cond(pred, steady, capture): branch 0 is the capture (false) branch.
  steady = hlo_utils.reachable(comps, entry, skip_branch=0)
  big = [(i.name, s) for _, i, s in hlo_utils.ops(comps, steady, reducers)
         if max(s, default=0) > n_blocks]
  assert big == []
  # Positive control: the capture branch does reduce over every leaf's entries.
  capture = hlo_utils.reachable(comps, conds[0][0], skip_branch=None)
  sizes = {max(s) for _, _, s in hlo_utils.ops(comps, capture, reducers) if s}
  assert {64 * 32, 32} <= sizes or max(sizes) >= 64 * 32


@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16])
def test_compiled_step_allocates_no_parameter_sized_scratch(mu_dtype):
  """The capture branch's buffers are allocated on every step, so its reductions must
  not materialise a copy of a gradient. optax.sgd with momentum, which moves the same
  bytes, needs no scratch; sgd_sai may add per-block scalars, not leaves."""
  params = {f"w{i}": jnp.zeros((256, 256)) for i in range(4)}
  params["stack"] = jnp.zeros((4, 64, 64))
  params["b"] = jnp.zeros((256,))
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  tx = optax_sai.sgd_sai(0.1, mu_dtype=mu_dtype,
                         block_axes=lambda p, x: 0 if p[0].key == "stack" else None)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params),
                                                        params).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip("this backend gives no memory analysis")
  if jax.__version_info__ < (0, 10, 2):
    # Measured on jax/jaxlib 0.9.0, 0.9.2, 0.10.0 and 0.10.1 (the minimum-versions CI leg):
    # 1,050,664 bytes of scratch, 1.0x the parameters. The property is XLA's, from 0.10.2.
    pytest.skip("XLA before jaxlib 0.10.2 keeps a gradient-sized temporary in this step")
  # Per-block scalars only (measured 3,096 bytes in float32, 3,112 with a bfloat16
  # momentum). The smallest leaf is 256 floats, 1 KiB; the old shared ``g / peak``
  # materialised all of them (1.0x the params), and an update taken from the float32
  # average beside a bfloat16 buffer kept a bfloat16-sized temporary per leaf (0.50x,
  # as optax.sgd's own bfloat16 accumulator still does).
  assert analysis.temp_size_in_bytes < 4096
  assert analysis.temp_size_in_bytes < 0.01 * param_bytes


class TestScannedEqualsUnrolled:

  class Block(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs):
      self.norm = nnx.LayerNorm(d, rngs=rngs)
      self.fc = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x):
      return x + jnp.tanh(self.fc(self.norm(x)))

  def test_four_layer_scan_matches_unrolled(self):
    d, layers = 8, 4
    Block = self.Block

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
      return Block(d, nnx.Rngs(key))

    stacked = make(jax.random.split(jax.random.key(0), layers))

    def scanned_loss(blocks, x):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def body(h, blk):
        return blk(h)
      return jnp.mean(body(x, blocks) ** 2)

    stacked_params = nnx.state(stacked, nnx.Param)
    unrolled = [Block(d, nnx.Rngs(1)) for _ in range(layers)]
    for i, blk in enumerate(unrolled):
      nnx.update(blk, jax.tree.map(lambda a, i=i: a[i], stacked_params))

    def unrolled_loss(blocks, x):
      for blk in blocks:
        x = blk(x)
      return jnp.mean(x ** 2)

    x = jax.random.normal(jax.random.key(1), (16, d))
    g_scan = nnx.grad(scanned_loss)(stacked, x)
    g_unroll = nnx.grad(unrolled_loss)(nnx.List(unrolled) if hasattr(nnx, "List") else unrolled,
                                       x)

    tx_scan = optax_sai.sgd_sai(0.1, block_axes=0)
    tx_unroll = optax_sai.sgd_sai(0.1)
    p_scan = nnx.state(stacked, nnx.Param)
    p_unroll = nnx.state(nnx.List(unrolled) if hasattr(nnx, "List") else unrolled, nnx.Param)
    _, s_scan = tx_scan.update(g_scan, tx_scan.init(p_scan), p_scan)
    _, s_unroll = tx_unroll.update(g_unroll, tx_unroll.init(p_unroll), p_unroll)
    sc_scan = optax_sai.gsnr_scales(s_scan)
    sc_unroll = optax_sai.gsnr_scales(s_unroll)
    for path, leaf in jax.tree_util.tree_flatten_with_path(sc_scan)[0]:
      assert leaf.shape == (layers,)
      for i in range(layers):
        per_layer = sc_unroll[i]
        for key in path:
          per_layer = per_layer[key.key]
        np.testing.assert_allclose(leaf[i], per_layer, rtol=1e-6, err_msg=str(path))
    # Without block_axes the stacked leaf would be one block: different scales.
    _, s_one = tx_unroll.update(g_scan, tx_unroll.init(p_scan), p_scan)
    assert optax_sai.gsnr_scales(s_one)["fc"]["kernel"].shape == ()


def test_lora_a_captured_once_b_moves_and_trains():
  # LoRA: W_eff = W + A @ B with B = 0 at init, so dL/dA = 0 at the first step.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(32, 5)), jnp.float32)
  frozen_w = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  params = {"A": jnp.asarray(rng.normal(size=(6, 2)) * 0.1, jnp.float32),
            "B": jnp.zeros((2, 5), jnp.float32)}

  def loss(p):
    return jnp.mean((x @ (frozen_w + p["A"] @ p["B"]) - target) ** 2)

  tx = optax_sai.sgd_sai(0.5, weight_decay=0.0)
  state = tx.init(params)
  a0 = params["A"]
  losses = []

  @jax.jit
  def train_step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value, grads

  for step in range(60):
    params, state, value, grads = train_step(params, state)
    losses.append(float(value))
    if step == 0:
      assert float(jnp.abs(grads["A"]).max()) == 0.0
    captured = optax_sai.find_gsnr_state(state).captured
    assert bool(captured["B"]) and bool(captured["A"]) == (step >= 1)
  assert float(jnp.abs(params["A"] - a0).max()) > 1e-2  # the reference would freeze A
  assert losses[-1] < 0.9 * losses[0]


def test_narrow_momentum_buffer_is_also_the_update():
  """With ``mu_dtype`` narrower than the gradients, the update is the stored (rounded)
  momentum: checked against the EMA computed in NumPy float32 and rounded to bfloat16."""
  rng = np.random.default_rng(3)
  grads = [rng.normal(size=7).astype(np.float32) for _ in range(3)]
  tx = optax_sai.sai_momentum(0.9, mu_dtype=jnp.bfloat16)
  state = tx.init(jnp.zeros(7, jnp.float32))
  decay = np.float32(0.9)
  m = None
  for g in grads:
    u, state = jax.jit(tx.update)(jnp.asarray(g), state)
    wide = g if m is None else decay * m.astype(np.float32) + (np.float32(1) - decay) * g
    m = wide.astype(ml_dtypes.bfloat16)
    assert state.mu.dtype == jnp.bfloat16 and u.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(state.mu), m)
    np.testing.assert_array_equal(np.asarray(u), m.astype(np.float32))


def test_body_below_a_zero_head_gets_scales_above_one():
  """``normalize=True`` below a zero-initialised head: at step 1 only the head is captured,
  so the stored normaliser is the head's g-SNR; the body, captured at step 2, is divided by
  it and its scale is ``gsnr(body) / gsnr(head)`` > 1 (~ sqrt(n_body / n_head) for
  zero-mean gradients). Checked against NumPy, with the body's first update."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(64, 1)), jnp.float32)
  params = {"body": jnp.asarray(rng.normal(size=(16, 32)) / 4, jnp.float32),
            "head": jnp.zeros((32, 1), jnp.float32)}

  def loss(p):
    return jnp.mean((jnp.tanh(x @ p["body"]) @ p["head"] - y) ** 2)

  lr = 0.05
  tx = optax_sai.sgd_sai(lr, momentum=0.9, weight_decay=0.0)
  state = tx.init(params)
  g1 = jax.grad(loss)(params)
  assert float(jnp.abs(g1["body"]).max()) == 0.0  # exactly zero below the zero head
  u1, state = tx.update(g1, state)
  params = optax.apply_updates(params, u1)
  head_snr = np_gsnr(np.asarray(g1["head"]))
  assert float(optax_sai.find_gsnr_state(state).normalizer) == pytest.approx(head_snr,
                                                                            rel=1e-5)
  g2 = jax.grad(loss)(params)
  u2, state = tx.update(g2, state)
  scale = np_gsnr(np.asarray(g2["body"])) / head_snr
  assert scale > 3  # sqrt(16 * 32 / 32) = 4 for zero-mean gradients
  assert float(optax_sai.gsnr_scales(state)["body"]) == pytest.approx(scale, rel=1e-5)
  # The body's buffer started at step 1's zero gradient: m_2 = 0.1 * scale * g_2.
  np.testing.assert_allclose(u2["body"], -lr * 0.1 * scale * np.asarray(g2["body"]),
                             rtol=1e-5, atol=1e-9)

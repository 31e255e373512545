"""The g-SNR statistic and the block partition (optax_sai._gsnr)."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from references import np_gsnr

import optax_sai

# docs/spec.md, test vectors (float64, computed with the reference).
SPEC_G4 = [1.0, 2.0, 3.0, 4.0]
SPEC_G4_SNR = 4.2426407  # sqrt(18)
SPEC_G22 = [[0.1, -0.2], [0.3, 0.4]]
SPEC_G22_SNR = 2.0701966
SPEC_G3 = [0.01, 0.02, 0.04]
SPEC_G3_SNR = 2.999998


@pytest.mark.parametrize(
    "g, expected",
    [(SPEC_G4, SPEC_G4_SNR), (SPEC_G22, SPEC_G22_SNR), (SPEC_G3, SPEC_G3_SNR)],
)
def test_spec_values_float32(g, expected):
  value = float(optax_sai.gsnr(jnp.asarray(g, jnp.float32)))
  # The spec's test vectors carry 8 significant digits.
  assert value == pytest.approx(expected, rel=1e-6)


def test_spec_values_float64_exact():
  with jax.enable_x64(True):
    exact = float(optax_sai.gsnr(jnp.asarray(SPEC_G4), eps=0.0))
    assert exact == pytest.approx(math.sqrt(18), rel=1e-12)
    for g in (SPEC_G4, SPEC_G22, SPEC_G3):
      value = float(optax_sai.gsnr(jnp.asarray(g)))
      assert value == pytest.approx(np_gsnr(g), rel=1e-12)
    assert optax_sai.gsnr(jnp.asarray(SPEC_G4)).dtype == jnp.float64


@pytest.mark.parametrize("shape, mean", [((4,), 0.0), ((17, 9), 0.3), ((8, 3, 5), 50.0),
                                         ((512, 256), 0.1), ((1,), 0.0)])
def test_two_passes_compute_the_papers_definition(rng, shape, mean):
  # The two-pass computation (both reduction paths: small blocks and LARGE_BLOCK ones)
  # against the definition written as it is printed, in float32 and float64.
  from optax_sai import _gsnr
  g = rng.normal(mean, 1.0, size=shape)
  for dtype, rtol in ((jnp.float32, 2e-5), (jnp.float64, 1e-12)):
    with jax.enable_x64(dtype == jnp.float64):
      x = jnp.asarray(g, dtype)
      want = float(_gsnr.reference_gsnr(x))
      assert float(optax_sai.gsnr(x)) == pytest.approx(want, rel=rtol)
      assert want == pytest.approx(np_gsnr(g), rel=rtol)


def test_unbiased_std_not_biased():
  # A biased std would give sqrt(24) = 4.899 for [1, 2, 3, 4].
  value = float(optax_sai.gsnr(jnp.asarray(SPEC_G4)))
  assert abs(value - math.sqrt(24)) > 0.5


def test_closed_form_against_moments(rng):
  # snr = sqrt(n-1) * sqrt(1 + m^2 / v) for eps -> 0 (docs/spec.md, what the g-SNR is).
  g = rng.normal(0.3, 1.0, size=(17, 9))
  n, m, v = g.size, g.mean(), g.var()
  expected = math.sqrt(n - 1) * math.sqrt(1 + m * m / v)
  with jax.enable_x64(True):
    assert float(optax_sai.gsnr(jnp.asarray(g), eps=0.0)) == pytest.approx(expected, rel=1e-12)


# Both reduction paths: blocks below and above optax_sai._gsnr.LARGE_BLOCK entries.
SHAPES = [(256, 64), (512, 256)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e19, 1e30])
def test_extreme_magnitudes_neither_overflow_nor_underflow(rng, magnitude, shape):
  # float32 sums of squares overflow above ~1e19 and underflow below ~1e-23; g-SNR is
  # scale invariant, so the value must be that of the unit-scale gradient (eps -> 0).
  g = rng.normal(0.1, 1.0, size=shape)
  expected = np_gsnr(g, eps=0.0)
  value = float(optax_sai.gsnr(jnp.asarray(g * magnitude, jnp.float32), eps=0.0))
  assert value == pytest.approx(expected, rel=1e-4)


def test_eps_is_absolute_not_relative():
  # eps is added to the unscaled std: a tiny gradient is dominated by it.
  g = jnp.array([1.0, 2.0, 3.0, 4.0]) * 1e-8
  expected = np_gsnr(np.asarray(g, np.float64), eps=1e-8)
  assert float(optax_sai.gsnr(g)) == pytest.approx(expected, rel=1e-5)
  assert expected < 0.6 * np_gsnr(np.asarray(g, np.float64), eps=0.0)


def test_one_element_block_is_one():
  assert float(optax_sai.gsnr(jnp.array([3.0]))) == 1.0
  assert float(optax_sai.gsnr(jnp.array(-2.5))) == 1.0


def test_tree_and_non_float_leaves():
  tree = {"a": jnp.asarray(SPEC_G22), "b": jnp.asarray(SPEC_G3), "i": jnp.arange(3), "n": None}
  out = optax_sai.gsnr(tree)
  assert out["i"] is None and out["n"] is None
  np.testing.assert_allclose(float(out["a"]), SPEC_G22_SNR, rtol=1e-6)
  np.testing.assert_allclose(float(out["b"]), SPEC_G3_SNR, rtol=1e-6)


def test_bfloat16_statistics_in_float32(rng):
  g = rng.normal(size=(64, 32)).astype(np.float32)
  g_bf16 = jnp.asarray(g, jnp.bfloat16)
  out = optax_sai.gsnr(g_bf16)
  assert out.dtype == jnp.float32
  # Same statistic as float32 applied to the bf16-rounded values.
  expected = np_gsnr(np.asarray(g_bf16.astype(jnp.float32)))
  assert float(out) == pytest.approx(expected, rel=1e-5)


class TestBlockAxes:

  def test_int_axis_splits_slices(self, rng):
    w = rng.normal(size=(4, 6, 5))
    out = optax_sai.gsnr({"w": jnp.asarray(w, jnp.float32)}, block_axes=0)
    assert out["w"].shape == (4,)
    np.testing.assert_allclose(out["w"], [np_gsnr(w[i]) for i in range(4)], rtol=1e-5)

  def test_maxtext_layer_axis_one(self, rng):
    w = rng.normal(size=(6, 3, 5))
    out = optax_sai.gsnr(jnp.asarray(w, jnp.float32), block_axes=1)
    np.testing.assert_allclose(out, [np_gsnr(w[:, i]) for i in range(3)], rtol=1e-5)

  def test_two_axes_and_negative(self, rng):
    w = rng.normal(size=(2, 3, 4, 5))
    out = optax_sai.gsnr(jnp.asarray(w, jnp.float32), block_axes=(0, -1))
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out[1, 3], np_gsnr(w[1, :, :, 3]), rtol=1e-5)

  def test_pytree_prefix_and_callable_agree(self, rng):
    params = {
        "layers": {"w": jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
        "head": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
    }
    by_tree = optax_sai.gsnr(params, block_axes={"layers": 0, "head": None})
    by_fn = optax_sai.gsnr(
        params, block_axes=lambda path, leaf: 0 if path[0].key == "layers" else None
    )
    jax.tree.map(np.testing.assert_array_equal, by_tree, by_fn)
    assert by_tree["layers"]["b"].shape == (3,) and by_tree["head"].shape == ()

  def test_axis_out_of_range_names_the_path(self):
    with pytest.raises(ValueError, match=r"\['blocks'\]\['bias'\].*1 dimension"):
      optax_sai.gsnr({"blocks": {"bias": jnp.ones(3)}}, block_axes=1)

  def test_malformed_spec(self):
    with pytest.raises(ValueError, match="expected None, an int or a tuple"):
      optax_sai.gsnr({"w": jnp.ones((2, 2))}, block_axes={"w": "layers"})
    with pytest.raises(ValueError, match="repeated axis"):
      optax_sai.gsnr(jnp.ones((2, 2)), block_axes=(0, -2))


finite_arrays = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6).filter(
        lambda s: math.prod(s) >= 2),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
).filter(lambda a: np.std(a) > 1e-3 * (np.abs(a).max() + 1e-12))


@settings(max_examples=60, deadline=None)
@given(finite_arrays, st.floats(1e-3, 1e3))
def test_scale_invariance(g, c):
  with jax.enable_x64(True):
    a = float(optax_sai.gsnr(jnp.asarray(g), eps=0.0))
    b = float(optax_sai.gsnr(jnp.asarray(g * c), eps=0.0))
  assert b == pytest.approx(a, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(finite_arrays)
def test_lower_bound_sqrt_n_minus_1(g):
  with jax.enable_x64(True):
    value = float(optax_sai.gsnr(jnp.asarray(g), eps=0.0))
  assert value >= math.sqrt(g.size - 1) * (1 - 1e-9)


def test_unusable_blocks_of_the_public_gsnr():
  # The spec's edge cases as `gsnr` reports them: an all-zero block (n >= 2) has g-SNR 0, a
  # block with a non-finite entry NaN, a one-entry block 1 (sqrt(n) for n = 1).
  out = optax_sai.gsnr({
      "zero": jnp.zeros(4), "nan": jnp.array([1.0, jnp.nan]), "inf": jnp.array([1.0, jnp.inf]),
      "one": jnp.array([3.0]), "one_zero": jnp.array([0.0]),
      "stacked": jnp.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])}, block_axes={
      "zero": None, "nan": None, "inf": None, "one": None, "one_zero": None, "stacked": 0})
  assert float(out["zero"]) == 0.0
  assert np.isnan(float(out["nan"])) and np.isnan(float(out["inf"]))
  assert float(out["one"]) == 1.0 and float(out["one_zero"]) == 1.0
  np.testing.assert_allclose(np.asarray(out["stacked"]), [math.sqrt(18.0), 0.0], rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ratio", [1e2, 1e4])
def test_large_mean_no_cancellation(rng, shape, ratio):
  # A block whose mean is `ratio` standard deviations (a norm layer's gradient can lean
  # one way): sum g^2 - n mean^2 would cancel catastrophically in float32 at 1e4.
  g = rng.normal(ratio, 1.0, size=shape)
  value = float(optax_sai.gsnr(jnp.asarray(g, jnp.float32), eps=0.0))
  # The float32 input is what is measured: compare with float64 on the same entries.
  assert value == pytest.approx(np_gsnr(np.asarray(g, np.float32), eps=0.0), rel=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_unusable_large_and_small_blocks(shape):
  zero = jnp.zeros(shape)
  nan = zero.at[3, 5].set(jnp.nan)
  inf = zero.at[0, 0].set(1.0).at[1, 1].set(-jnp.inf)
  out = optax_sai.gsnr({"zero": zero, "nan": nan, "inf": inf})
  assert float(out["zero"]) == 0.0
  assert np.isnan(float(out["nan"])) and np.isnan(float(out["inf"]))

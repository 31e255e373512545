"""Large blocks and large trees.

- Many small leaves (an unscanned model): leaves of one shape are captured together, so
  the capture compiles a few kernels per distinct shape, not per leaf, and gives every
  leaf the g-SNR it gets on its own.

- More than 2^31 entries in one block (an embedding of a large vocabulary, an unscanned
  7B model's fused kernel): the entry count no longer fits an int32. Checked with abstract
  shapes only: sgd_sai's step traces, lowers and compiles without allocating anything,
  and the count the g-SNR is computed with is the true one.
- More than 2^24 entries: float32 no longer counts every entry exactly, and a float32 sum
  of that many terms can drift. The g-SNR of such a block is compared with a float64
  NumPy reference (a real 64 MB array).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sai

ROWS, COLS = 1 << 16, (1 << 15) + 3  # 2^31 + 196,608 entries: past int32's range
EPS = 1e-8


def _step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


@pytest.mark.parametrize("normalize", [True, False])
def test_block_past_int32_range_traces_lowers_and_compiles(normalize):
  assert ROWS * COLS > 2**31
  params = {"embed": jax.ShapeDtypeStruct((ROWS, COLS), jnp.float32),
            "bias": jax.ShapeDtypeStruct((COLS,), jnp.float32)}
  tx = optax_sai.sgd_sai(1e-2, normalize=normalize)
  state = jax.eval_shape(tx.init, params)
  assert state[0].gsnr["embed"].shape == ()  # one block, one scalar
  lowered = jax.jit(_step(tx), donate_argnums=(0, 1)).lower(params, state, params)
  text = lowered.as_text()
  # No count wrapped around to a negative int32 anywhere in the program.
  assert not re.search(r"-21474\d{5}", text)
  lowered.compile()  # compiles without allocating the 8 GiB block
  out_params, out_state = jax.eval_shape(_step(tx), params, state, params)
  assert out_params["embed"].shape == (ROWS, COLS)
  assert out_state[0].gsnr["embed"].shape == ()


def test_gsnr_of_block_past_int32_range_uses_the_true_count():
  """The statistic's program, lowered for a 2^31+ block, evaluated on a stand-in.

  The count enters the g-SNR as ``n`` and ``n - 1`` (``sqrt(n - 1)`` for zero-mean
  gradients). The lowered program's float constants must hold the true count, not a
  wrapped or truncated one.
  """
  g = jax.ShapeDtypeStruct((ROWS, COLS), jnp.float32)
  text = jax.jit(optax_sai.gsnr).lower(g).as_text()
  n = ROWS * COLS
  consts = {float(c) for c in re.findall(r"dense<([-+0-9.eE]+)>\s*:\s*tensor<f32>", text)}
  # The count, as the float32 nearest to it (printed with 9 significant digits).
  assert any(abs(c - n) <= 1e-7 * n for c in consts), sorted(consts)
  assert not any(c < 0 and abs(c) > 2**30 for c in consts)


@pytest.mark.parametrize("mean", [0.0, 0.3, 30.0])
def test_gsnr_of_block_past_2_24_entries_matches_float64(mean):
  """A block of 2^24 + 4,097 entries, float32, against NumPy in float64: within 1e-6."""
  n = (1 << 24) + 4097
  rng = np.random.default_rng(7)
  g = (mean + rng.standard_normal(n)).astype(np.float32)
  g64 = g.astype(np.float64)
  expected = np.linalg.norm(g64) / (np.std(g64, ddof=1) + EPS)

  got = float(jax.jit(optax_sai.gsnr)(jnp.asarray(g)))
  assert got == pytest.approx(expected, rel=1e-6)

  # The same statistic through the optimizer's capture (normalize=False keeps it raw).
  tx = optax_sai.scale_by_gsnr(EPS, normalize=False)
  _, state = jax.jit(tx.update)(jnp.asarray(g), tx.init(jnp.zeros_like(g)))
  assert float(state.gsnr) == pytest.approx(expected, rel=1e-6)
  if mean == 0.0:  # zero-mean: g-SNR ~ sqrt(n - 1), a check independent of NumPy's std
    assert got == pytest.approx(math.sqrt(n - 1), rel=1e-3)


def _many_leaves(n):
  shapes = ((64,), (16, 16), (128,))
  rng = np.random.default_rng(3)
  return {f"l{i:03d}": jnp.asarray(rng.normal(0.1 * (i % 7), 1.0 + i % 5,
                                              shapes[i % 3]).astype(np.float32))
          for i in range(n)}


def test_many_small_leaves_are_captured_per_shape_not_per_leaf():
  grads = _many_leaves(60)
  tx = optax_sai.sgd_sai(1e-2)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), grads)
  text = jax.jit(tx.update).lower(abstract, jax.eval_shape(tx.init, abstract),
                                  abstract).as_text()
  # One call of the capture per distinct shape (3), not per leaf (60 before).
  assert len(re.findall(r"call @_capture_leaf", text)) == 3


@pytest.mark.parametrize("normalize", [True, False])
def test_many_small_leaves_get_their_own_gsnr(normalize):
  grads = _many_leaves(60)
  tx = optax_sai.scale_by_gsnr(EPS, normalize=normalize)
  _, state = jax.jit(tx.update)(grads, tx.init(grads))
  for name, g in grads.items():
    g64 = np.asarray(g, np.float64)
    expected = np.linalg.norm(g64) / (np.std(g64, ddof=1) + EPS)
    assert float(state.gsnr[name]) == pytest.approx(expected, rel=2e-6), name
  top = max(float(v) for v in state.gsnr.values())
  assert float(state.normalizer) == (top if normalize else 1.0)

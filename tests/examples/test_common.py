"""examples/common: schedule, decay mask, optimizer factory, mesh parsing, metrics files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_sai
from examples.common import mesh as mesh_lib
from examples.common import metrics, optim
from examples.common.config import OPTIMIZERS


def test_warmup_cosine_shape():
  sched = optim.warmup_cosine(1.0, warmup_steps=10, decay_steps=110, min_ratio=0.1)
  np.testing.assert_allclose(sched(0), 0.1, rtol=1e-6)  # (0 + 1) / 10
  np.testing.assert_allclose(sched(9), 1.0, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 1.0, rtol=1e-6)  # cosine starts at the peak
  np.testing.assert_allclose(sched(60), 0.55, rtol=1e-5)  # halfway: (1 + 0.1) / 2
  np.testing.assert_allclose(sched(110), 0.1, rtol=1e-6)
  np.testing.assert_allclose(sched(500), 0.1, rtol=1e-6)
  no_warmup = optim.warmup_cosine(2.0, warmup_steps=0, decay_steps=10)
  np.testing.assert_allclose(no_warmup(0), 2.0, rtol=1e-6)


class _Tiny(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(10, 4, rngs=rngs)
    self.dense = nnx.Linear(4, 4, rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)
    self.pos_embed = nnx.Param(jnp.zeros((3, 4)))


def test_decay_mask_exempts_biases_norms_embeddings():
  params = nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)
  mask = {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      optim.decay_mask(params))[0]}
  assert mask == {
      "dense/bias": False, "dense/kernel": True, "embed/embedding": False,
      "norm/bias": False, "norm/scale": False, "pos_embed": False,
  }


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_updates_and_decay_skips_exempt_leaves(name):
  params = nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = optim.make_optimizer(name, 0.1, weight_decay=0.5, clip_norm=1.0, params=params)
  state = tx.init(params)
  # A zero gradient: any change comes from weight decay, which must spare non-kernels.
  updates, state = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(new)[0]:
    if optim.path_str(path) != "dense/kernel":
      np.testing.assert_array_equal(value, flat_old[path], err_msg=optim.path_str(path))
  if name != "adafactor":  # adafactor decays relative to its (zero) update
    assert not np.allclose(new["dense"]["kernel"][...], params["dense"]["kernel"][...])


def test_sgd_sai_factory_reports_gsnr_by_path():
  params = nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
  tx = optim.make_optimizer("sgd_sai", 0.1, 0.0, clip_norm=1.0)
  _, state = tx.update(grads, tx.init(params), params)
  table = optim.gsnr_table(state)
  assert set(table) == {"dense/bias", "dense/kernel", "embed/embedding", "norm/bias",
                        "norm/scale", "pos_embed"}
  assert max(table.values()) == pytest.approx(1.0)
  # The largest block (the 10x4 embedding) has the largest g-SNR, ~sqrt(39).
  assert table["embed/embedding"] == pytest.approx(1.0)
  snr = optax_sai.gsnr(grads)
  assert table["dense/kernel"] == pytest.approx(
      float(snr["dense"]["kernel"][...] / snr["embed"]["embedding"][...]), rel=1e-5)


def test_parse_mesh():
  assert mesh_lib.parse_mesh(None, 8) == {"data": 8, "fsdp": 1}
  assert mesh_lib.parse_mesh("data=2,fsdp=4", 8) == {"data": 2, "fsdp": 4}
  assert mesh_lib.parse_mesh("fsdp=4", 8) == {"data": 2, "fsdp": 4}  # data takes the rest
  assert mesh_lib.parse_mesh("data=1,fsdp=8", 8) == {"data": 1, "fsdp": 8}
  assert mesh_lib.parse_mesh("data=-1,fsdp=2", 8) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError):
    mesh_lib.parse_mesh("data=3", 8)
  with pytest.raises(ValueError):
    mesh_lib.parse_mesh("model=2", 2)


def test_fsdp_spec_picks_largest_divisible_dim():
  P = jax.sharding.PartitionSpec
  assert mesh_lib.fsdp_spec((768, 3072), 4) == P(None, "fsdp")
  assert mesh_lib.fsdp_spec((50257, 768), 4) == P(None, "fsdp")  # 50257 is odd
  assert mesh_lib.fsdp_spec((3,), 4) == P()
  assert mesh_lib.fsdp_spec((), 4) == P()
  assert mesh_lib.fsdp_spec((768, 3072), 1) == P()


def test_metrics_writer_truncates_on_resume(tmp_path):
  w = metrics.MetricsWriter(tmp_path)
  for step in (5, 10, 15):
    w.write({"step": step, "train_loss": 1.0 / step, "lr": 0.1})
  w = metrics.MetricsWriter(tmp_path, resume_step=10)
  w.write({"step": 15, "train_loss": 2.0, "lr": 0.1, "val_loss": float("nan")})
  records = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in records] == [5, 10, 15]
  assert records[-1]["train_loss"] == 2.0 and records[-1]["val_loss"] is None
  path = metrics.plot_curves(tmp_path, title="t")
  assert path.stat().st_size > 1000

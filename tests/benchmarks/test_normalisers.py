"""benchmarks/normalisers.py on the tiny models: the normaliser is the first gradient's largest
g-SNR, recomputed here in float64 NumPy from the example's own loss."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks import normalisers
from examples.common import optim


def _numpy_gsnrs(model: str) -> dict[str, float]:
  """||g|| / std(g, ddof=1) of every block of the first gradient, in float64."""
  task = normalisers._task(model)
  graphdef, params, rest = nnx.split(task.make_model(nnx.Rngs(0)), nnx.Param, ...)
  batch = task.train_batch(0)
  grads = jax.grad(lambda p: task.loss_fn(nnx.merge(graphdef, p, rest), batch, None))(params)
  out = {}
  for path, g in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]:
    g = np.asarray(g, np.float64).ravel()
    out[optim.path_str(path)] = (np.linalg.norm(g) / (np.std(g, ddof=1) + 1e-8)
                                 if g.size > 1 and np.any(g) else 0.0)
  return out


@pytest.mark.parametrize("model", ["vit-tiny", "cnn-tiny"])
def test_normaliser_is_the_first_gradients_largest_gsnr(model):
  row = normalisers.measure(model)
  reference = _numpy_gsnrs(model)
  top = max(reference, key=reference.get)
  assert row.normaliser_block == top
  assert row.normaliser == pytest.approx(reference[top], rel=1e-4)
  assert row.normaliser >= np.sqrt(row.normaliser_numel - 1) * (1 - 1e-6)
  # The first step's blocks are scaled by their g-SNR over the normaliser.
  for name, snr in reference.items():
    if snr > 0 and name in row.scales:
      assert row.scales[name] == pytest.approx(snr / reference[top], rel=1e-3)
  if model == "vit-tiny":  # zero-initialised head: the body is captured at step 2
    assert row.late_blocks > 0 and row.max_scale > 1.0
  else:
    assert row.late_blocks == 0 and row.max_scale == pytest.approx(1.0)


def test_pipeline_writes_the_table(tmp_path):
  rows = normalisers.main(["--models", "cnn-tiny", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "normalisers.json").read_text())
  assert [r["model"] for r in saved["rows"]] == ["cnn-tiny"] == [r.model for r in rows]
  assert "| CNN tiny |" in (tmp_path / "normalisers.md").read_text()

"""The benchmark harness at a tiny size: it runs, reports every optimizer, counts bytes right."""

from __future__ import annotations

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _tables as tables
from benchmarks import _timing as timing
from benchmarks import _trees as trees
from benchmarks import compile_time, memory, step_time

TINY = trees.synthetic_params(widths=(16, 48, 16), depth=1)


def _nbytes(tree) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def _examples_available() -> bool:
  return (importlib.util.find_spec("examples.gpt2.model") is not None
          and importlib.util.find_spec("flax") is not None)


@pytest.mark.parametrize("name", [*tables.BENCHMARK_OPTIMIZERS, *tables.VARIANTS])
def test_step_bytes_match_nbytes_of_the_trees(name):
  params = trees.materialise(TINY)
  tx = tables.make_optimizer(name)
  state = tx.init(params)
  counted = trees.step_bytes(tx, TINY)
  assert counted.grads == counted.params == _nbytes(params)
  assert counted.state == _nbytes(state)
  assert counted.state_written <= counted.state
  assert counted.total == counted.grads + 2 * counted.params + counted.state + (
      counted.state_written)


@pytest.mark.parametrize("name,sizes", [("sgd_sai", 5), ("sgdm", 5), ("adamw", 7),
                                        ("lion", 5), ("sgd_sai_bf16", 4)])
def test_bytes_per_step_in_tree_sizes(name, sizes):
  counted = trees.step_bytes(tables.make_optimizer(name), TINY)
  assert counted.total / counted.params == pytest.approx(sizes, abs=0.02)


def test_sgd_sai_writes_all_of_its_state_and_prodigy_not_its_anchor():
  sai = trees.step_bytes(tables.make_optimizer("sgd_sai"), TINY)
  assert sai.total == sai.grads + 2 * sai.params + 2 * sai.state
  prodigy = trees.step_bytes(tables.make_optimizer("prodigy"), TINY)
  assert prodigy.state - prodigy.state_written == prodigy.params  # params0 is only read


def test_state_fractions_are_as_derived():
  leaves = jax.tree.leaves(TINY)
  p = sum(math.prod(x.shape) for x in leaves) * 4
  scalars = memory.sai_block_scalar_bytes(len(leaves))
  assert scalars == len(leaves) * 4 + 8  # a float32 g-SNR per block, normaliser, count
  rows = memory.state_rows(["synthetic"], ["sgd_sai", "sgd_sai_bf16", "adamw"],
                           {"synthetic": TINY})
  by = {r.optimizer: r.state_bytes for r in rows}
  assert by["adamw"] == 2 * p + 4  # mu, nu and an int32 count
  assert by["sgd_sai"] == p + scalars
  assert by["sgd_sai_bf16"] == p // 2 + scalars
  assert (by["sgd_sai"] - scalars) / by["adamw"] == pytest.approx(0.5, abs=1e-3)
  assert (by["sgd_sai_bf16"] - scalars) / by["adamw"] == pytest.approx(0.25, abs=1e-3)


def test_materialise_matches_shapes_and_is_cheap_noise():
  tree = trees.materialise(TINY, seed=3)
  for a, x in zip(jax.tree.leaves(TINY), jax.tree.leaves(tree), strict=True):
    assert x.shape == a.shape and x.dtype == a.dtype
    assert bool(jnp.all(jnp.abs(x) <= 0.02)) and float(jnp.std(x)) > 0.005
  other = trees.materialise(TINY, seed=4)
  assert not np.array_equal(jax.tree.leaves(tree)[0], jax.tree.leaves(other)[0])


def test_summary_median_and_quartiles():
  s = timing.Summary.of([1.0, 2.0, 3.0, 4.0, 5.0])
  assert (s.median, s.q1, s.q3, s.n) == (3.0, 2.0, 4.0, 5)
  assert timing.Summary.of([2.0]).iqr == 0.0


def test_step_time_cli_reports_every_optimizer(tmp_path):
  results = step_time.main(["--models", "synthetic", "--rounds", "2", "--steps", "1",
                            "--out", str(tmp_path)])
  (res,) = results
  assert [r.optimizer for r in res.rows] == list(step_time.DEFAULT_OPTIMIZERS)
  assert set(tables.BENCHMARK_OPTIMIZERS) <= set(step_time.DEFAULT_OPTIMIZERS)
  text = (tmp_path / "step_time.md").read_text()
  for name in step_time.DEFAULT_OPTIMIZERS:
    assert f"| {tables.OPTIMIZER_LABELS[name]} |" in text
  for r in res.rows:
    assert r.median_s > 0 and r.samples == 2 and r.compile_s > 0 and r.first_step_s > 0
    assert len(r.ratios["adamw"]) == len(r.ratios["sgdm"]) == 2
    assert r.bandwidth_fraction > 0
  assert {r.optimizer: r.ratio("adamw") for r in res.rows}["adamw"] == 1.0
  for png in ("step_time.png", "bandwidth.png"):
    assert os.path.getsize(tmp_path / png) > 1000
  assert (tmp_path / "step_time.json").exists()
  (tmp_path / "step_time.md").unlink()
  again = step_time.main(["--from-json", str(tmp_path / "step_time.json"), "--out",
                          str(tmp_path)])
  assert (tmp_path / "step_time.md").read_text() == text
  assert [r.optimizer for r in again[0].rows] == [r.optimizer for r in res.rows]


def test_memory_cli_reports_every_optimizer(tmp_path):
  result = memory.main(["--models", "synthetic", "--compile-models", "synthetic",
                        "--out", str(tmp_path)])
  text = (tmp_path / "memory.md").read_text()
  for name in memory.DEFAULT_OPTIMIZERS:
    assert f"| {tables.OPTIMIZER_LABELS[name]} |" in text
  assert {c["optimizer"] for c in result["compiled"]} == set(memory.DEFAULT_OPTIMIZERS)
  assert os.path.getsize(tmp_path / "memory.png") > 1000


def test_compile_time_cli_reports_ratios_and_scratch(tmp_path):
  rows = compile_time.main(["--models", "synthetic", "--optimizers", "sgd_sai,adamw",
                            "--rounds", "2", "--out", str(tmp_path)])
  by = {r.optimizer: r for r in rows}
  assert by["adamw"].ratio == 1.0 and by["adamw"].cpu_ratio == 1.0
  assert len(by["sgd_sai"].lower_s) == 2 and by["sgd_sai"].total_s > 0
  synthetic = tables.abstract_params("synthetic")
  assert by["sgd_sai"].temp_bytes >= 0 and by["sgd_sai"].param_bytes == trees.tree_nbytes(synthetic)
  text = (tmp_path / "compile_time.md").read_text()
  assert "| synthetic MLP | sgd_sai (f32) |" in text and "### Goals" in text


def test_llama2_7b_anchor_from_shapes():
  """The published Llama-2-7B architecture has 6,738,415,616 parameters; sgd_sai's float32
  state saves one parameter-sized tree against AdamW's two: 26.95 GB = 25.10 GiB."""
  tree = tables.abstract_params("llama2-7b")
  assert trees.tree_size(tree) == 6_738_415_616
  rows = memory.state_rows(["llama2-7b"], ["sgd_sai", "adamw"], {"llama2-7b": tree})
  by = {r.optimizer: r.state_bytes for r in rows}
  leaves = len(jax.tree.leaves(tree))
  assert by["adamw"] - by["sgd_sai"] == 4 * 6_738_415_616 + 4 - (4 * leaves + 8)


def test_low_memory_mode_releases_buffers():
  grads = trees.materialise(TINY, seed=9)
  runner = timing.optimizer_runner("sgd_sai", TINY, grads)
  timing.interleave([runner], rounds=2, steps=2, low_memory=True)
  assert runner.carry is None and len(runner.samples) == 4 and runner.first_s > 0


@pytest.mark.skipif(not _examples_available(), reason="examples' model code not present")
@pytest.mark.parametrize("model", ["gpt2-tiny", "vit-tiny"])
def test_example_model_trees_build_from_shapes(model):
  tree = tables.abstract_params(model)
  leaves = jax.tree.leaves(tree)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert trees.tree_nbytes(tree) == 4 * trees.tree_size(tree)

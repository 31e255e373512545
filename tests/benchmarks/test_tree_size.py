"""benchmarks/tree_size.py at a trivial size: the pipeline runs and its ratios are consistent."""

from __future__ import annotations

import json

import jax
import pytest

from benchmarks import tree_size


def test_tree_of_leaves_has_the_requested_leaves():
  tree = tree_size.tree_of_leaves(12)
  leaves = jax.tree.leaves(tree)
  assert len(leaves) == 12
  assert {leaf.shape for leaf in leaves} == set(tree_size.LEAF_SHAPES)


def test_pipeline_writes_rows_and_ratios(tmp_path):
  rows = tree_size.main(["--leaves", "3,6", "--optimizers", "sgd_sai,adamw,sgdm",
                         "--rounds", "1", "--steps", "1", "--first-repeats", "1",
                         "--out", str(tmp_path)])
  assert [(r.leaves, r.optimizer) for r in rows] == [
      (n, o) for n in (3, 6) for o in ("sgd_sai", "adamw", "sgdm")]
  for r in rows:
    assert r.compile_s > 0 and r.first_s > 0 and r.steady_s > 0
    ref = next(x for x in rows if x.leaves == r.leaves and x.optimizer == "adamw")
    assert r.steady_ratio == pytest.approx(r.steady_s / ref.steady_s)
    assert r.compile_ratio == pytest.approx(r.compile_s / ref.compile_s)
    assert r.first_ratio == pytest.approx(r.first_s / ref.first_s)
  saved = json.loads((tmp_path / "tree_size.json").read_text())
  assert len(saved["rows"]) == 6
  table = (tmp_path / "tree_size.md").read_text()
  assert table.count("| 6 |") == 3 and "optax.adamw" in table

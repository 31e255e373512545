"""The quick start: one copy, in the README, included by the docs' index page, and it runs as
written.

The README holds it between ``<!-- quickstart -->`` and ``<!-- /quickstart -->``; docs/index.md
includes that span with MyST's ``{include}`` (tests/test_docs.py checks the built page shows
it). Here the code block is run in a fresh interpreter exactly as a user would paste it, and
what it prints is checked against a NumPy g-SNR of its own first gradient.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- quickstart -->", "<!-- /quickstart -->"


def _readme_span() -> str:
  readme = (REPO_ROOT / "README.md").read_text()
  assert readme.count(START) == 1 and readme.count(END) == 1
  return readme[readme.index(START) + len(START):readme.index(END)]


def _quickstart_code() -> str:
  blocks = re.findall(r"^```python\n(.*?)^```$", _readme_span(), re.S | re.M)
  assert len(blocks) == 1, "the quick start holds exactly one python block"
  return blocks[0]


def _numpy_gsnr(g: np.ndarray) -> float:
  """||g||_2 / (unbiased std(g) + 1e-8) in float64 (1 for a one-element block)."""
  g = np.asarray(g, np.float64).ravel()
  if g.size == 1:
    return 1.0
  return float(np.linalg.norm(g) / (np.std(g, ddof=1) + 1e-8))


def test_docs_index_includes_the_readme_quickstart():
  index = (REPO_ROOT / "docs" / "index.md").read_text()
  include = re.search(r"```\{include\} \.\./README\.md\n(.*?)```", index, re.S)
  assert include, "docs/index.md does not include the README's quick start"
  assert f":start-after: {START}" in include.group(1)
  assert f":end-before: {END}" in include.group(1)
  # No second quick start next to it: the index's only sgd_sai training loop is the README's.
  assert "warmup_cosine_decay_schedule" not in index


def test_quickstart_runs_as_written_and_prints_real_scales():
  code = _quickstart_code()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=REPO_ROOT, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()

  # It trains: the loss it prints falls.
  losses = [float(m) for m in re.findall(r"loss (\d+\.\d+)", proc.stdout)]
  assert len(losses) >= 2, proc.stdout
  assert losses[-1] < 0.75 * losses[0], losses

  # It prints one non-zero scale per parameter block ...
  printed = ast.literal_eval(lines[-1])
  flat_printed, printed_tree = jax.tree.flatten(printed)
  assert all(s > 0 for s in flat_printed), printed

  # ... and they are the g-SNRs of the first gradient, relative to each other: recompute
  # that gradient from the snippet's own setup (everything above its training loop) and
  # take the statistic with NumPy. Ratios hold whichever normalisation the snippet uses.
  setup = code[:code.index("\nfor ")]
  namespace: dict = {}
  exec(compile(setup, "<quickstart setup>", "exec"), namespace)
  grads = jax.grad(namespace["loss_fn"])(namespace["params"], namespace["x"], namespace["y"])
  flat_grads, grads_tree = jax.tree.flatten(grads)
  assert grads_tree == printed_tree
  snr = np.array([_numpy_gsnr(g) for g in flat_grads])
  scales = np.array(flat_printed, np.float64)
  # Printed to 3 decimals: compare relative to the largest, within the rounding.
  np.testing.assert_allclose(scales / scales.max(), snr / snr.max(), atol=2e-3)
  assert np.ptp(snr / snr.max()) > 0.1  # the blocks' scales differ: a real comparison

"""The notebooks under notebooks/: stored without outputs, and they run top to bottom.

Execution uses nbclient with the ``python3`` kernel, from the repository root (so
``import examples`` works), in small mode (``OPTAX_SAI_NB_SMALL=1``: a few steps and
2-point sweeps). Each notebook writes a small JSON summary into ``OPTAX_SAI_NB_OUT``; the
tests check a few of its numbers with slack (the thresholds are measured values, halved or
widened, not the values themselves).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("quickstart", "gsnr_explorer", "compare_optimizers")
CELL_TIMEOUT_S = 600


def test_the_three_notebooks_exist():
  assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
  nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
  nbformat.validate(nb)
  assert nb.metadata["kernelspec"]["name"] == "python3"
  for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
      continue
    assert cell.outputs == [], f"{name}.ipynb cell {i} has stored outputs"
    assert cell.execution_count is None, f"{name}.ipynb cell {i} has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_states_its_run_time_and_installs_itself(name):
  nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
  intro = nb.cells[0].source
  assert nb.cells[0].cell_type == "markdown"
  # "**Run time:** about 95 s ..." (measured at the default size on 2 CPU cores): at most 3 min.
  match = re.search(r"\*\*Run time:\*\* about (\d+) s", intro)
  assert match, f"{name}.ipynb: the first cell does not state the measured run time"
  assert int(match.group(1)) <= 180
  setup = nb.cells[1].source
  assert nb.cells[1].cell_type == "code"
  assert "except ImportError:" in setup and "pip" in setup and "install" in setup


def _execute(name: str, out_dir: Path, monkeypatch) -> dict:
  """Runs the notebook in small mode from the repo root; returns its JSON summary."""
  monkeypatch.setenv("OPTAX_SAI_NB_SMALL", "1")
  monkeypatch.setenv("OPTAX_SAI_NB_OUT", str(out_dir))
  # Keep the kernel's JAX on the CPU and quiet, as in CI.
  monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
  nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(REPO_ROOT)}},
  )
  client.execute()  # raises CellExecutionError (with the traceback) if a cell fails
  return json.loads((out_dir / f"{name}.json").read_text())


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch):
  s = _execute("quickstart", tmp_path, monkeypatch)
  # 30 steps on digits: measured 2.61 -> 2.27 (sgd_sai) and 2.58 -> 1.56 (adamw).
  assert s["sgd_sai"]["last_loss"] < s["sgd_sai"]["first_loss"] - 0.1
  assert s["adamw"]["last_loss"] < s["adamw"]["first_loss"] - 0.3
  # normalize=False with lr / normalizer and wd * normalizer is the same optimizer.
  assert s["normalize_false_max_loss_diff"] < 1e-3
  # Max g-SNR at step 1 is about sqrt(numel) of the largest block (64 x 192 QKV kernel).
  assert 0.9 * math.sqrt(64 * 192) < s["normalizer"] < 1.5 * math.sqrt(64 * 192)
  # One momentum buffer (+ a few scalars per block) vs AdamW's two moments.
  ratio = s["state_bytes"]["sgd_sai"] / s["state_bytes"]["adamw"]
  assert 0.45 < ratio < 0.55


@pytest.mark.slow
def test_gsnr_explorer_runs(tmp_path, monkeypatch):
  s = _execute("gsnr_explorer", tmp_path, monkeypatch)
  for model, by_type in s["init"].items():
    for block_type, v in by_type.items():
      # g-SNR >= sqrt(n - 1) always; matrices at init sit at it (measured 0.99999-1.006).
      assert 0.999 < v["median_ratio_sqrt_n"] < 3.0, (model, block_type, v)
  assert s["init"]["GPT-2 tiny"]["MLP"]["median_gsnr"] > 5 * s["init"]["GPT-2 tiny"]["norm"][
      "median_gsnr"]
  assert s["scale_invariance_max_rel_err"] < 1e-3
  assert s["closed_form_max_rel_err"] < 1e-3
  # Zero-initialised head: only the head's two leaves have a gradient at step 1.
  assert s["zero_head"]["frozen_blocks"] > 40
  ours = s["zero_head"]["optax_sai (captured late)"]
  assert math.isfinite(ours["last_loss"]) and ours["last_loss"] < math.log(10) + 0.5
  # block_axes makes the scanned model's scales the unrolled model's (to float precision).
  assert s["block_axes_max_diff"] < 1e-4
  # Without it, a stacked leaf's g-SNR is ~sqrt(n_layer) (2 layers in small mode) larger.
  assert 1.3 < s["block_axes_none_ratio"] < 1.55


@pytest.mark.slow
def test_compare_optimizers_runs(tmp_path, monkeypatch):
  s = _execute("compare_optimizers", tmp_path, monkeypatch)
  runs = s["runs"]
  assert {r["optimizer"] for r in runs} == {"sgd_sai", "adamw", "sgdm"}
  assert all(math.isfinite(r["val_loss"]) for r in runs if r["optimizer"] != "sgdm")
  # Small mode (GPT-2 10 steps, ViT 20), sgd_sai's val loss, measured: GPT-2 3.85 (uniform over
  # bytes: 5.55), ViT 2.10 (uniform over digits: 2.30; its head starts at zero).
  for example, uniform, margin in (("GPT-2 tiny", math.log(256), 1.0),
                                   ("ViT tiny", math.log(10), 0.08)):
    best = min(r["val_loss"] for r in runs
               if r["example"] == example and r["optimizer"] == "sgd_sai")
    assert best < uniform - margin, (example, best)
  mem = {(m["model"], m["optimizer"]): m["bytes"] for m in s["state_bytes"]}
  for model in ("GPT-2 tiny", "ViT tiny", "GPT-2 small (124M)", "ViT-S/16"):
    ratio = mem[model, "sgd_sai"] / mem[model, "adamw"]
    assert 0.49 < ratio < 0.51, (model, ratio)
    assert mem[model, "sgdm"] <= mem[model, "sgd_sai"]

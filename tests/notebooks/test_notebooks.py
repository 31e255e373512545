"""The notebooks under notebooks/: their setup cell, their stored outputs, and that they run
top to bottom.

The docs site shows the outputs stored in the notebooks (executed at full size by
notebooks/refresh_outputs.py); a test checks they belong to the current code cells. The
suite's own execution uses nbclient with the ``python3`` kernel, from the repository root (so
``import examples`` works), in small mode (``OPTAX_SAI_NB_SMALL=1``: a few steps and
2-point sweeps). Each notebook writes a small JSON summary into ``OPTAX_SAI_NB_OUT``; the
tests check a few of its numbers with slack (the thresholds are measured values, halved or
widened, not the values themselves).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("quickstart", "gsnr_explorer", "compare_optimizers")
CELL_TIMEOUT_S = 600
# nbclient's default of 60 s is too short for a kernel that starts while other workers run JAX.
KERNEL_START_TIMEOUT_S = 300


def test_the_three_notebooks_exist():
  assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


def _code_sha256(nb) -> str:
  """SHA-256 of the code cells' sources in order: the key refresh_outputs.py records."""
  sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
  return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


# Plots each notebook draws at full size (its matplotlib figures).
MIN_IMAGES = {"quickstart": 4, "gsnr_explorer": 6, "compare_optimizers": 3}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_stores_fresh_full_size_outputs(name):
  path = NOTEBOOK_DIR / f"{name}.ipynb"
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata["kernelspec"]["name"] == "python3"
  stamp = nb.metadata.get("optax_sai", {})
  assert stamp.get("code_sha256") == _code_sha256(nb), (
      f"{name}.ipynb: its code cells changed since its outputs were stored; run "
      f"`python notebooks/refresh_outputs.py {name}` from the repository root")
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  # Executed top to bottom in one kernel, without an error, at full size.
  assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), name
  outputs = [out for cell in code for out in cell.outputs]
  assert not [out for out in outputs if out.output_type == "error"], name
  assert "small mode: False" in "".join(o.get("text", "") for o in code[0].outputs), name
  images = [out for out in outputs if "image/png" in out.get("data", {})]
  assert len(images) >= MIN_IMAGES[name], (name, len(images))
  # Small plots (80 dpi, 256-colour PNGs) keep the repository small: measured 71-172 kB.
  assert path.stat().st_size < 250_000, (name, path.stat().st_size)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_states_its_run_time(name):
  nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
  intro = nb.cells[0].source
  assert nb.cells[0].cell_type == "markdown"
  # "**Run time:** about 95 s ..." (measured at the default size on 2 CPU cores): at most 3 min.
  match = re.search(r"\*\*Run time:\*\* about (\d+) s", intro)
  assert match, f"{name}.ipynb: the first cell does not state the measured run time"
  assert int(match.group(1)) <= 180


def _setup_cell() -> str:
  """The notebooks' shared first code cell (the same in all three)."""
  cells = {name: nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4).cells[1]
           for name in NOTEBOOKS}
  assert all(cell.cell_type == "code" for cell in cells.values())
  sources = {cell.source for cell in cells.values()}
  assert len(sources) == 1, "the three notebooks' setup cells differ"
  return sources.pop()


def _repository_url() -> str | None:
  pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
  return pyproject["project"]["urls"].get("Repository")


def test_setup_cell_clones_nothing_and_the_url_lives_in_pyproject_only():
  setup = _setup_cell()
  # It installs nothing and downloads nothing: it checks, and says what to do.
  assert "subprocess" not in setup and "git clone" not in setup and "http" not in setup
  urls = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["urls"]
  assert urls["Paper"] == "https://arxiv.org/abs/2412.11768"
  # No page or notebook carries a placeholder address, or a copy of the repository's.
  forbidden = ["github.com/OWNER"] + [u for u in [_repository_url()] if u]
  for path in [REPO_ROOT / "README.md", *NOTEBOOK_DIR.glob("*.ipynb"),
               *(REPO_ROOT / "docs").rglob("*.md")]:
    text = path.read_text()
    for needle in forbidden:
      assert needle not in text, (path, needle)


def _run_setup_cell(cwd: Path, *python_flags: str,
                    prelude: str = "") -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if not k.startswith("OPTAX_SAI_NB")}
  return subprocess.run([sys.executable, *python_flags, "-c", prelude + _setup_cell()],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("where", [".", "notebooks"])
def test_setup_cell_passes_in_a_checkout(where):
  # Jupyter started at the repository's root, or in notebooks/.
  proc = _run_setup_cell(REPO_ROOT / where)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("small mode: False"), proc.stdout


def test_setup_cell_outside_a_checkout_says_what_to_do(tmp_path):
  # No site-packages (-S) and isolated (-I): nothing of the project or its extras imports,
  # and no installed optax_sai metadata is found.
  proc = _run_setup_cell(tmp_path, "-I", "-S")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("ModuleNotFoundError: missing: jax, optax, optax_sai, examples"), last
  assert "from a clone of the optax_sai repository:" in last, last
  assert 'pip install -e ".[examples]"' in last and "start Jupyter there" in last, last


def test_setup_cell_names_the_repository_from_installed_metadata(tmp_path):
  # An installed optax_sai whose metadata carries a `Repository` URL, as pip writes it from
  # pyproject.toml's [project.urls] (a made-up address: the real one is not public yet).
  url = _repository_url() or "https://example.org/optax_sai"
  dist = tmp_path / "site" / "optax_sai-0.0.dist-info"
  dist.mkdir(parents=True)
  (dist / "METADATA").write_text(
      f"Metadata-Version: 2.1\nName: optax_sai\nVersion: 0.0\n"
      f"Project-URL: Paper, https://arxiv.org/abs/2412.11768\nProject-URL: Repository, {url}\n")
  prelude = f"import sys; sys.path.insert(0, {str(dist.parent)!r})\n"
  proc = _run_setup_cell(tmp_path, "-I", "-S", prelude=prelude)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert f"from a clone of the optax_sai repository ({url}):" in last, last


def _execute(name: str, out_dir: Path, monkeypatch) -> dict:
  """Runs the notebook in small mode from the repo root; returns its JSON summary."""
  monkeypatch.setenv("OPTAX_SAI_NB_SMALL", "1")
  monkeypatch.setenv("OPTAX_SAI_NB_OUT", str(out_dir))
  # Keep the kernel's JAX on the CPU and quiet, as in CI.
  monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
  nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", startup_timeout=KERNEL_START_TIMEOUT_S,
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

"""Executes the notebooks at their default (full) size and stores their outputs in them.

The documentation site renders the notebooks as stored (``nb_execution_mode = "off"`` in
docs/conf.py), so the plots and tables it shows are the ones this script stores. Each notebook
records the SHA-256 of its code cells in its metadata (``optax_sai.code_sha256``), and
tests/notebooks/test_notebooks.py fails when a code cell changes without a refresh; the
suite itself only executes the notebooks at their reduced size.

Run it from the repository root after changing a notebook's code (the three take about 4 min
on an idle 2-core machine, by their stated run times; 15 min were measured under heavy load):

    python notebooks/refresh_outputs.py                # all three
    python notebooks/refresh_outputs.py quickstart     # or some of them
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import io
import json
import os
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ("quickstart", "gsnr_explorer", "compare_optimizers")
CELL_TIMEOUT_S = 1200


def code_sha256(nb: nbformat.NotebookNode) -> str:
  """The SHA-256 of the notebook's code cells' sources, in order (outputs excluded)."""
  sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
  return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def shrink_png(png_base64: str) -> str:
  """The PNG with a 256-colour palette (plots need no more), if that makes it smaller.

  Args:
    png_base64: a base64-encoded PNG, as a notebook stores it.

  Returns:
    The smaller of the original and its palette version, base64-encoded.
  """
  image = Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB")
  buffer = io.BytesIO()
  image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
      buffer, format="PNG", optimize=True)
  smaller = base64.b64encode(buffer.getvalue()).decode()
  return smaller if len(smaller) < len(png_base64.replace("\n", "")) else png_base64


def shrink_images(nb: nbformat.NotebookNode) -> None:
  """Replaces every stored PNG output of `nb` by its `shrink_png` version, in place."""
  for cell in nb.cells:
    for output in cell.get("outputs", []):
      data = output.get("data", {})
      if "image/png" in data:
        data["image/png"] = shrink_png(data["image/png"])


def refresh(name: str) -> float:
  """Executes notebooks/<name>.ipynb at full size and writes it back with its outputs.

  Args:
    name: the notebook's file name without ``.ipynb``.

  Returns:
    The wall-clock seconds the execution took.
  """
  path = NOTEBOOK_DIR / f"{name}.ipynb"
  nb = nbformat.read(path, as_version=4)
  env_before = dict(os.environ)
  with tempfile.TemporaryDirectory(prefix="optax_sai_nb_") as out:
    os.environ.pop("OPTAX_SAI_NB_SMALL", None)  # full size
    os.environ["OPTAX_SAI_NB_OUT"] = out
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
      client = nbclient.NotebookClient(
          nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
          resources={"metadata": {"path": str(REPO_ROOT)}})
      start = time.perf_counter()
      client.execute()
      seconds = time.perf_counter() - start
    finally:
      os.environ.clear()
      os.environ.update(env_before)
  shrink_images(nb)
  nb.metadata["optax_sai"] = {
      "code_sha256": code_sha256(nb),
      "executed_at": "full size",
      "jax": importlib.metadata.version("jax"),
  }
  nbformat.validate(nb)
  nbformat.write(nb, path)
  return seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", metavar="name",
                      help=f"which notebooks (default: all of {', '.join(NOTEBOOKS)})")
  args = parser.parse_args()
  unknown = sorted(set(args.names) - set(NOTEBOOKS))
  if unknown:
    parser.error(f"unknown notebook(s) {', '.join(unknown)}; choose from {', '.join(NOTEBOOKS)}")
  for name in args.names or NOTEBOOKS:
    seconds = refresh(name)
    size = (NOTEBOOK_DIR / f"{name}.ipynb").stat().st_size
    print(f"{name}.ipynb: executed in {seconds:.0f} s, stored {size / 1024:.0f} KiB")


if __name__ == "__main__":
  main()

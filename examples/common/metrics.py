"""``metrics.jsonl`` (one JSON object per logged step), ``gsnr.json``, ``curves.png`` and
``config.json`` (the resolved config a run started with, checked when it is resumed)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
GSNR_FILE = "gsnr.json"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.json"


def _clean(value: Any) -> Any:
  """JSON-safe scalar: floats stay floats, non-finite ones become ``None``."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsWriter:
  """Appends records to ``workdir/metrics.jsonl``.

  Opening with ``resume_step`` keeps only the records with ``step <= resume_step`` (those
  written before the checkpoint being resumed), so a resumed run's file equals an
  uninterrupted run's. A last line cut short (the process was killed while writing it) is
  dropped.
  """

  def __init__(self, workdir: str | os.PathLike[str], resume_step: int | None = None):
    self.path = Path(workdir) / METRICS_FILE
    self.path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if resume_step is not None and self.path.exists():
      kept = [r for r in read_metrics(self.path, partial_tail=True)
              if r["step"] <= resume_step]
    with self.path.open("w") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")

  def write(self, record: Mapping[str, Any]) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps({k: _clean(v) for k, v in record.items()}, allow_nan=False) + "\n")


def read_metrics(path: str | os.PathLike[str], partial_tail: bool = False
                 ) -> list[dict[str, Any]]:
  """Reads ``metrics.jsonl`` (a file, or a workdir containing one).

  Args:
    path: the file or its workdir.
    partial_tail: skip a last line without its newline that is not JSON (a write cut
      short), instead of raising.

  Returns:
    The records, in order.
  """
  path = Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  text = path.read_text()
  lines = text.splitlines()
  if partial_tail and lines and not text.endswith("\n"):
    try:
      json.loads(lines[-1])
    except json.JSONDecodeError:
      lines.pop()
  return [json.loads(line) for line in lines if line.strip()]


def write_config(workdir: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
  """Writes ``config.json``: the resolved config a run started with (``{field: value}``)."""
  path = Path(workdir) / CONFIG_FILE
  path.write_text(json.dumps(dict(config), indent=1, sort_keys=True, allow_nan=False) + "\n")
  return path


def read_config(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
  """The ``config.json`` of a run (``None``: the run predates it)."""
  path = Path(workdir) / CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def write_gsnr(workdir: str | os.PathLike[str], table: Mapping[str, Any]) -> Path:
  """Writes ``gsnr.json``: ``{parameter path: scale}``."""
  path = Path(workdir) / GSNR_FILE
  path.write_text(json.dumps(dict(table), indent=1, sort_keys=True) + "\n")
  return path


def plot_curves(workdir: str | os.PathLike[str], title: str = "") -> Path:
  """Draws ``curves.png``: train/val loss and val accuracy against steps.

  Uses matplotlib's object API (no pyplot), so it never changes the caller's backend
  (inline plots in a notebook keep working).
  """
  from matplotlib.figure import Figure

  records = read_metrics(workdir)

  def series(key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]

  fig = Figure(figsize=(10, 4), layout="constrained")
  ax_loss, ax_acc = fig.subplots(1, 2)
  for key, style in (("train_loss", "-"), ("val_loss", "o-")):
    steps, values = series(key)
    if steps:
      ax_loss.plot(steps, values, style, label=key.replace("_", " "), markersize=3)
  ax_loss.set(xlabel="step", ylabel="loss", title="loss")
  ax_loss.legend()
  steps, values = series("val_accuracy")
  if steps:
    ax_acc.plot(steps, values, "o-", color="tab:green", markersize=3)
  ax_acc.set(xlabel="step", ylabel="accuracy", title="val accuracy")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  path = Path(workdir) / CURVES_FILE
  fig.savefig(path, dpi=100)
  return path

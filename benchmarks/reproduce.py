"""A learning-rate x weight-decay study per optimizer, like the paper's Figure 2.

    python -m benchmarks.reproduce --task vit --grid small
    python -m benchmarks.reproduce --task gpt2 --grid small

Every cell trains one of the examples' ``tiny`` configs with the examples' own training
code (``examples.<task>.train.train``): the same model, data, schedule (linear warmup then
cosine), gradient clipping, steps and seeds for every optimizer; only the optimizer, its
learning rate and its weight decay change. The optimizers compared:

* ``sgd_sai``: SGD-SaI with the paper's max-normalised scales (``normalize=True``);
* ``sgd_sai_unnorm``: SGD-SaI with the released PyTorch package's semantics
  (``normalize=False``, step = lr x g-SNR);
* ``adamw`` (decoupled weight decay), ``adam`` (coupled L2, as ``torch.optim.Adam``) and
  ``sgdm`` (SGD with momentum and coupled L2, as ``torch.optim.SGD``).

Their names, labels and default learning rates are read from the examples' registry
(``examples.common.optim.REGISTRY`` and each task's tiny ``optimizer_defaults``).

Grids (see :func:`make_grid`):

* ``small`` (the default; 35 runs of 20-30 s, about 15 minutes per task on two quiet
  CPU cores, measured): each optimizer gets
  three learning rates a decade apart centred on the example's tuned ``tiny`` default
  (x0.1, x1, x10), and ``sgd_sai_unnorm`` the ``sgd_sai`` ones divided by the model's
  measured g-SNR normaliser (max_k s_k at seed 0: 256 for tiny GPT-2; 25 for tiny ViT,
  whose zero-initialised head leaves only the head's own blocks captured at step 1, so the
  body's normalised scales exceed 1), so the two columns are the same optimizer if the
  translation rule holds. Weight decay
  {1e-4, 1e-2} (the ends of the paper's axis). Short runs (GPT-2 60 steps, ViT 100 steps),
  seed 0 over the grid, then each optimizer's best cell is re-run with one more seed.
* ``paper``: the paper's grid, lr {1e-3, 1e-2, 1e-1} x wd {1e-4, 1e-3, 1e-2}, for every
  optimizer (``sgd_sai_unnorm``: those learning rates divided by the normaliser), with the
  examples' default ``tiny`` length (200 steps) and two seeds per cell.
* ``smoke``: one cell per optimizer, three steps of a one-layer model: tests the pipeline.

Outputs in ``benchmarks/results/study/<task>`` (``<task>-<grid>`` for other grids):
``cells.jsonl`` (one line per finished cell, the resume log), ``cells.csv``, ``table.md``,
``table.csv``, ``heatmaps.png``, ``best_curves.png``, ``study.json`` and, per cell,
``cells/<id>/metrics.jsonl`` (checkpoints and per-cell plots are deleted). Re-running the
same command skips the cells already in ``cells.jsonl``: an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.common.optim import REGISTRY, registry_defaults

RESULTS = Path(__file__).resolve().parent / "results" / "study"
TASKS = ("gpt2", "vit")
GRIDS = ("small", "paper", "smoke")

# The study's optimizers, their labels and the examples' default learning rates all come from
# the examples' registry (examples.common.optim.REGISTRY and each task's tiny config).
STUDY_OPTIMIZERS = ("sgd_sai", "sgd_sai_unnorm", "adamw", "sgdm", "adam")
# study name -> (examples optimizer, sai_normalize)
OPTIMIZERS: dict[str, tuple[str, bool]] = {
    k: (REGISTRY[k].optimizer, REGISTRY[k].sai_normalize) for k in STUDY_OPTIMIZERS}
LABELS = {k: REGISTRY[k].label for k in STUDY_OPTIMIZERS}


def centre(task: str, optimizer: str) -> float:
  """The ``small`` axis' centre: the example's tuned tiny default lr of ``optimizer``."""
  configs, _ = _example(task)
  return registry_defaults(configs.get_config("tiny").optimizer_defaults, optimizer)[0]


# The g-SNR normaliser max_k s_k measured at the first step of the tiny models (seed 0),
# rounded: learning rates of normalize=False = those of normalize=True / this.
NORMALISER = {"gpt2": 256.0, "vit": 25.0}
# Which metric ranks the cells (the paper reports val loss for GPT-2, top-1 for ViT).
PRIMARY = {"gpt2": "val_loss", "vit": "val_accuracy"}


@dataclasses.dataclass(frozen=True)
class Grid:
  """A study's grid and run length."""

  name: str
  lrs: dict[str, tuple[float, ...]]
  wds: tuple[float, ...]
  seeds: tuple[int, ...]  # seeds of every cell
  extra_seeds: tuple[int, ...]  # further seeds of each optimizer's best cell
  steps: int
  warmup_steps: int
  eval_every: int
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Cell:
  optimizer: str
  lr: float
  wd: float
  seed: int

  @property
  def id(self) -> str:
    return f"{self.optimizer}_lr{self.lr:.3g}_wd{self.wd:.3g}_s{self.seed}"


def _sig(x: float) -> float:
  return float(f"{x:.2g}")


def make_grid(task: str, name: str = "small", optimizers: Sequence[str] = tuple(OPTIMIZERS),
              ) -> Grid:
  """The ``small``, ``paper`` or ``smoke`` grid of ``task``."""
  norm = NORMALISER[task]
  if name == "small":
    lrs = {opt: tuple(_sig(centre(task, opt) * f) for f in (0.1, 1.0, 10.0))
           for opt in optimizers if opt != "sgd_sai_unnorm"}
    steps, warmup, every = (60, 10, 20) if task == "gpt2" else (100, 20, 50)
    wds, seeds, extra = (1e-4, 1e-2), (0,), (1,)
  elif name == "paper":
    lrs = {opt: (1e-3, 1e-2, 1e-1) for opt in optimizers}
    steps, warmup, every = 200, 20, 50
    wds, seeds, extra = (1e-4, 1e-3, 1e-2), (0, 1), ()
  elif name == "smoke":
    lrs = {opt: (centre(task, opt),) for opt in optimizers if opt != "sgd_sai_unnorm"}
    steps, warmup, every = 3, 1, 3
    wds, seeds, extra = (1e-2,), (0,), ()
  else:
    raise ValueError(f"unknown grid {name!r}; choose from {GRIDS}")
  if "sgd_sai_unnorm" in optimizers:
    base = lrs.get("sgd_sai") or (centre(task, "sgd_sai"),)
    lrs["sgd_sai_unnorm"] = tuple(_sig(lr / norm) for lr in base)
  lrs = {opt: lrs[opt] for opt in optimizers}
  overrides: dict[str, Any] = {}
  if name == "smoke":  # the tiny config shrunk further, so that compiling is quick
    overrides = (
        {"batch_size": 4, "eval_batches": 1, "n_layer": 1, "n_head": 2, "n_embd": 32,
         "block_size": 32} if task == "gpt2"
        else {"batch_size": 16, "depth": 1, "hidden_size": 32, "num_heads": 2, "mlp_dim": 64}
    )
  return Grid(name, lrs, wds, seeds, extra, steps, warmup, every, overrides)


def grid_cells(grid: Grid) -> list[Cell]:
  """The grid's cells (without the best cells' extra seeds).

  Ordered so that an interrupted study covers every optimizer evenly: the middle learning
  rate of every axis first (the tuned defaults, in ``small``), then the others.
  """
  n = max(len(lrs) for lrs in grid.lrs.values())
  order = [n // 2] + [i for i in range(n) if i != n // 2]
  return [Cell(opt, lrs[i], wd, seed) for seed in grid.seeds for i in order
          for wd in grid.wds for opt, lrs in grid.lrs.items() if i < len(lrs)]


# --------------------------------------------------------------------------------------
# Running cells
# --------------------------------------------------------------------------------------


def _example(task: str):
  if task == "gpt2":
    from examples.gpt2 import configs, train
  elif task == "vit":
    from examples.vit import configs, train
  else:
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
  return configs, train


def _finite(x: Any) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def run_cell(task: str, grid: Grid, cell: Cell, out: Path) -> dict[str, Any]:
  """Trains one cell with the example's ``train`` and returns its record."""
  import jax

  import optax_sai
  from examples.common.metrics import read_metrics

  configs, example = _example(task)
  name, normalize = OPTIMIZERS[cell.optimizer]
  config = dataclasses.replace(
      configs.get_config("tiny"), steps=grid.steps, warmup_steps=grid.warmup_steps,
      eval_every=grid.eval_every, learning_rate=cell.lr, weight_decay=cell.wd,
      seed=cell.seed, sai_normalize=normalize, ckpt_every=grid.steps, keep_checkpoints=1,
      **grid.overrides,
  )
  workdir = out / "cells" / cell.id
  if workdir.exists():  # an interrupted earlier attempt: start the cell afresh
    shutil.rmtree(workdir)
  t0 = time.perf_counter()
  result = example.train(config, optimizer=name, workdir=workdir, progress=False)
  elapsed = time.perf_counter() - t0
  gsnr_max = None
  if name == "sgd_sai":
    state = optax_sai.find_gsnr_state(result["opt_state"])
    if normalize:
      gsnr_max = float(state.normalizer)
    else:
      scales = jax.tree.leaves(optax_sai.gsnr_scales(result["opt_state"]))
      gsnr_max = max(float(jax.numpy.max(s)) for s in scales)
  for extra in ("checkpoints", "curves.png", "gsnr.json"):
    path = workdir / extra
    if path.is_dir():
      shutil.rmtree(path)
    elif path.exists():
      path.unlink()
  records = read_metrics(workdir)
  evals = [r for r in records if "val_loss" in r]
  losses = [r["val_loss"] for r in evals]
  final = evals[-1] if evals else {}
  finite_losses = [x for x in losses if _finite(x)]
  row = {
      "id": cell.id, "task": task, "grid": grid.name, "optimizer": cell.optimizer,
      "lr": cell.lr, "wd": cell.wd, "seed": cell.seed, "steps": grid.steps,
      "val_loss": final.get("val_loss"), "val_accuracy": final.get("val_accuracy"),
      "best_val_loss": min(finite_losses) if finite_losses else None,
      "train_loss": records[-1].get("train_loss"),
      "first_train_loss": _first_train_loss(records),
  }
  return {
      **row, "diverged": _diverged(row), "gsnr_max": gsnr_max,
      "train_wall_s": round(float(result["wall_time_s"]), 2),
      "cell_wall_s": round(elapsed, 2),
  }


def _first_train_loss(records: list[dict[str, Any]]) -> float | None:
  """The first logged train loss, when the run logged more than once."""
  return records[0].get("train_loss") if len(records) > 1 else None


def _diverged(row: dict[str, Any]) -> bool:
  """Non-finite losses, or a final val loss above the first logged train loss (the mean
  of steps 1-10, about the loss at initialisation): the run ended worse than it began."""
  val, train, first = row.get("val_loss"), row.get("train_loss"), row.get("first_train_loss")
  if not (_finite(val) and _finite(train)):
    return True
  return _finite(first) and val > first


def read_cells(out: Path) -> list[dict[str, Any]]:
  """The finished cells logged in ``out/cells.jsonl`` (a torn last line is ignored)."""
  path = out / "cells.jsonl"
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def _append(out: Path, row: dict[str, Any]) -> None:
  with (out / "cells.jsonl").open("a") as f:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _score(row: dict[str, Any], metric: str) -> tuple[float, float]:
  """Higher is better; a diverged cell scores -inf. Ties (accuracy is coarse on a small
  validation set) are broken by the validation loss."""
  value = row.get(metric)
  if row.get("diverged") or not _finite(value):
    return (-math.inf, -math.inf)
  loss = row.get("val_loss")
  tie = -loss if _finite(loss) else -math.inf
  return (-value if metric.endswith("loss") else value, tie)


def _cell_means(rows: list[dict[str, Any]], metric: str) -> dict[tuple, dict[str, Any]]:
  """Rows grouped by (optimizer, lr, wd): mean metrics over seeds, and the seeds' range."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault((row["optimizer"], row["lr"], row["wd"]), []).append(row)
  out = {}
  for key, group in groups.items():
    diverged = sum(bool(r["diverged"]) for r in group)
    agg: dict[str, Any] = {"optimizer": key[0], "lr": key[1], "wd": key[2],
                           "seeds": sorted(r["seed"] for r in group), "diverged": diverged}
    for m in ("val_loss", "val_accuracy", "best_val_loss", "train_loss"):
      values = [r[m] for r in group if _finite(r.get(m))]
      agg[m] = statistics.fmean(values) if values and not diverged else None
      agg[m + "_range"] = (min(values), max(values)) if values and not diverged else None
    agg["score"] = _score(agg, metric)
    out[key] = agg
  return out


def best_cells(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
  """Each optimizer's best (lr, wd) by the seed-mean of ``metric``."""
  best: dict[str, dict[str, Any]] = {}
  for agg in _cell_means(rows, metric).values():
    cur = best.get(agg["optimizer"])
    if cur is None or agg["score"] > cur["score"]:
      best[agg["optimizer"]] = agg
  return best


def run_study(task: str, grid: Grid, out: Path, *, log=print) -> dict[str, Any]:
  """Runs the grid's missing cells, then the best cells' extra seeds; returns the counts."""
  out.mkdir(parents=True, exist_ok=True)
  done = {r["id"] for r in read_cells(out) if r.get("steps") == grid.steps}
  trained = skipped = 0

  def run(cells: list[Cell]) -> None:
    nonlocal trained, skipped
    for cell in cells:
      if cell.id in done:
        skipped += 1
        continue
      row = run_cell(task, grid, cell, out)
      _append(out, row)
      done.add(cell.id)
      trained += 1
      log(f"[{task}] {cell.id}: val_loss {row['val_loss']} val_accuracy "
          f"{row['val_accuracy']} ({row['cell_wall_s']:.0f} s)")

  run(grid_cells(grid))
  if grid.extra_seeds:
    rows = _rows(out, grid)
    best = best_cells(rows, PRIMARY[task])
    run([Cell(opt, b["lr"], b["wd"], s) for opt, b in best.items() for s in grid.extra_seeds])
  return {"trained": trained, "skipped": skipped}


def _rows(out: Path, grid: Grid) -> list[dict[str, Any]]:
  """This grid's finished cells (the latest record of each id)."""
  from examples.common.metrics import read_metrics

  rows = {}
  for r in read_cells(out):
    if r.get("steps") == grid.steps and r["optimizer"] in grid.lrs:
      metrics = out / "cells" / r["id"] / "metrics.jsonl"
      if "first_train_loss" not in r and metrics.exists():  # logged by an older version
        r["first_train_loss"] = _first_train_loss(read_metrics(metrics))
      r["diverged"] = _diverged(r)
      rows[r["id"]] = r
  return list(rows.values())


# --------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
  if x is None:
    return "—"
  if isinstance(x, float):
    return f"{x:.{digits}f}"
  return str(x)


def summarise(task: str, rows: list[dict[str, Any]], grid: Grid) -> list[dict[str, Any]]:
  """One row per optimizer: its best cell (seed mean), and the spread over the grid."""
  metric = PRIMARY[task]
  cells = _cell_means(rows, metric)
  best = best_cells(rows, metric)
  table = []
  for opt in grid.lrs:
    if opt not in best:
      continue
    b = best[opt]
    mine = [c for c in cells.values() if c["optimizer"] == opt]
    values = [c[metric] for c in mine if _finite(c[metric])]
    n_div = sum(1 for c in mine if c["diverged"])
    worst = (max(values) if metric.endswith("loss") else min(values)) if values else None
    rng = b[metric + "_range"]
    # Robustness: cells within 2% (loss) or 2 points (accuracy) of the best cell.
    if metric.endswith("loss"):
      near = sum(1 for v in values if v <= b[metric] * 1.02)
    else:
      near = sum(1 for v in values if v >= b[metric] - 0.02)
    table.append({
        "optimizer": opt, "label": LABELS[opt], "lr": b["lr"], "wd": b["wd"],
        "seeds": len(b["seeds"]),
        "val_loss": b["val_loss"], "val_accuracy": b["val_accuracy"],
        "seed_range": (rng[1] - rng[0]) if rng and len(b["seeds"]) > 1 else None,
        "grid_median": statistics.median(values) if values else None,
        "grid_worst": worst,
        "grid_spread": abs(worst - b[metric]) if worst is not None and b[metric] is not None
        else None,
        "cells": len(mine), "diverged": n_div, "near_best": near,
        "gsnr_max": next((r["gsnr_max"] for r in rows
                          if r["optimizer"] == opt and r.get("gsnr_max")), None),
    })
  return table


def lr_relation(table: list[dict[str, Any]]) -> dict[str, Any] | None:
  """Best lr of normalize=True over best lr of normalize=False, against the normaliser."""
  by = {t["optimizer"]: t for t in table}
  if "sgd_sai" not in by or "sgd_sai_unnorm" not in by:
    return None
  a, b = by["sgd_sai"], by["sgd_sai_unnorm"]
  return {"lr_normalized": a["lr"], "lr_unnormalized": b["lr"],
          "ratio": a["lr"] / b["lr"], "normaliser": a["gsnr_max"] or b["gsnr_max"]}


def write_tables(task: str, grid: Grid, rows: list[dict[str, Any]], out: Path,
                 study: dict[str, Any]) -> list[dict[str, Any]]:
  """Writes ``table.csv``, ``table.md`` and ``cells.csv``; returns the summary rows."""
  metric = PRIMARY[task]
  table = summarise(task, rows, grid)
  fields = ["optimizer", "lr", "wd", "seeds", "val_loss", "val_accuracy", "seed_range",
            "grid_median", "grid_worst", "grid_spread", "near_best", "cells", "diverged",
            "gsnr_max"]
  with (out / "table.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
  cell_fields = ["optimizer", "lr", "wd", "seed", "val_loss", "val_accuracy", "best_val_loss",
                 "train_loss", "first_train_loss", "diverged", "gsnr_max", "train_wall_s",
                 "cell_wall_s"]
  with (out / "cells.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=cell_fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (list(OPTIMIZERS).index(r["optimizer"]),
                                                 r["lr"], r["wd"], r["seed"])))

  what = "val loss (lower is better)" if metric == "val_loss" else "val accuracy"
  lines = [
      f"## {task}: tiny config, `{grid.name}` grid, {grid.steps} steps",
      "",
      f"Best cell per optimizer by seed-mean final {what}. Over the optimizer's grid: "
      "median and worst cell of that metric, spread = |worst - best| (diverged cells, "
      "those ending with a val loss above their initial loss or non-finite, are excluded "
      "and counted), near-best = cells within "
      + ("2% of the best loss" if metric.endswith("loss") else "2 points of the best accuracy")
      + ". Seed range: max - min over the best cell's seeds.",
      "",
      "| optimizer | best lr | best wd | seeds | val loss | val acc | seed range "
      f"| grid median ({metric}) | grid worst | spread | near-best | diverged |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for t in table:
    lines.append(
        f"| {t['label']} | {t['lr']:g} | {t['wd']:g} | {t['seeds']} | {_fmt(t['val_loss'])} "
        f"| {_fmt(t['val_accuracy'])} | {_fmt(t['seed_range'])} | {_fmt(t['grid_median'])} "
        f"| {_fmt(t['grid_worst'])} | {_fmt(t['grid_spread'])} "
        f"| {t['near_best']}/{t['cells']} | {t['diverged']}/{t['cells']} |")
  rel = lr_relation(table)
  if rel:
    lines += [
        "",
        f"normalize=True best lr {rel['lr_normalized']:g}, normalize=False best lr "
        f"{rel['lr_unnormalized']:g}: ratio {rel['ratio']:.3g}; measured g-SNR normaliser "
        f"max_k s_k = {_fmt(rel['normaliser'], 1)} (the translation rule predicts "
        "ratio = normaliser).",
    ]
    cells = _cell_means(rows, metric)
    pairs = []
    for lr_a, lr_b in zip(grid.lrs["sgd_sai"], grid.lrs["sgd_sai_unnorm"], strict=True):
      for wd in grid.wds:
        a, b = cells.get(("sgd_sai", lr_a, wd)), cells.get(("sgd_sai_unnorm", lr_b, wd))
        if a and b:
          pairs.append(f"| {lr_a:g} | {lr_b:g} | {wd:g} | {_fmt(a[metric])} "
                       f"| {_fmt(b[metric])} |")
    if pairs:
      lines += [
          "",
          f"Same cells side by side (seed-mean {metric}):",
          "",
          "| lr, normalize=True | lr, normalize=False | wd | normalize=True "
          "| normalize=False |",
          "|---|---|---|---|---|",
          *pairs,
      ]
  lines += [
      "",
      "Learning-rate axes: " + "; ".join(
          f"{opt} {{{', '.join(f'{x:g}' for x in lrs)}}}" for opt, lrs in grid.lrs.items()),
      f"Weight decay {{{', '.join(f'{x:g}' for x in grid.wds)}}}; seeds {list(grid.seeds)} "
      f"per cell, extra seeds {list(grid.extra_seeds)} at each best cell.",
      f"Study wall time: {study.get('wall_s', 0) / 60:.1f} min elapsed; "
      f"{study.get('compute_s', 0) / 60:.1f} min in the {len(rows)} training runs "
      f"({study.get('host', '')}).",
      f"Command: `{study.get('command', '')}`",
      "",
  ]
  (out / "table.md").write_text("\n".join(lines))
  return table


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def plot_heatmaps(task: str, grid: Grid, rows: list[dict[str, Any]], out: Path) -> Path:
  """``heatmaps.png``: one panel per optimizer, wd rows x lr columns, seed-mean metric."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  metric = PRIMARY[task]
  cells = _cell_means(rows, metric)
  best = best_cells(rows, metric)
  values = [c[metric] for c in cells.values() if _finite(c[metric])]
  vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
  if vmin == vmax:
    vmax = vmin + 1e-6
  cmap = plt.get_cmap("viridis_r" if metric.endswith("loss") else "viridis").with_extremes(
      bad="lightgrey")
  opts = list(grid.lrs)
  fig, axes = plt.subplots(1, len(opts), figsize=(3.2 * len(opts) + 1, 3.2),
                           constrained_layout=True, squeeze=False)
  image = None
  for ax, opt in zip(axes[0], opts, strict=True):
    lrs, wds = grid.lrs[opt], grid.wds
    data = np.full((len(wds), len(lrs)), np.nan)
    for (o, lr, wd), c in cells.items():
      if o == opt and lr in lrs and wd in wds and _finite(c[metric]):
        data[wds.index(wd), lrs.index(lr)] = c[metric]
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax,
                      origin="lower", aspect="auto")
    for i, wd in enumerate(wds):
      for j, lr in enumerate(lrs):
        c = cells.get((opt, lr, wd))
        if c is None:
          ax.text(j, i, "not run", ha="center", va="center", fontsize=7)
        elif not _finite(c[metric]):
          ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                     edgecolor="dimgrey", linewidth=0))
          ax.text(j, i, "diverged", ha="center", va="center", fontsize=7)
        else:
          frac = (c[metric] - vmin) / (vmax - vmin)
          dark = frac > 0.5 if metric.endswith("loss") else frac < 0.5
          ax.text(j, i, f"{c[metric]:.3f}", ha="center", va="center", fontsize=8,
                  color="white" if dark else "black")
    b = best.get(opt)
    if b is not None and b["lr"] in lrs and b["wd"] in wds:
      ax.add_patch(plt.Rectangle((lrs.index(b["lr"]) - 0.5, wds.index(b["wd"]) - 0.5), 1, 1,
                                 fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs], fontsize=8)
    ax.set_yticks(range(len(wds)), [f"{x:g}" for x in wds], fontsize=8)
    ax.set(xlabel="learning rate", title=LABELS[opt])
    ax.title.set_fontsize(9)
  axes[0][0].set_ylabel("weight decay")
  if image is not None:
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9,
                 label=metric.replace("_", " ") + " (seed mean)")
  fig.suptitle(f"{task} tiny, {grid.steps} steps: final {metric.replace('_', ' ')} "
               "(red box: best cell)")
  path = out / "heatmaps.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_best_curves(task: str, grid: Grid, rows: list[dict[str, Any]], out: Path) -> Path:
  """``best_curves.png``: train and val loss (and val accuracy) of each best cell, seed 0."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from examples.common.metrics import read_metrics

  best = best_cells(rows, PRIMARY[task])
  fig, (ax_tr, ax_val, ax_acc) = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
  for opt in grid.lrs:
    if opt not in best:
      continue
    b = best[opt]
    cell = Cell(opt, b["lr"], b["wd"], min(b["seeds"]))
    path = out / "cells" / cell.id / "metrics.jsonl"
    if not path.exists():
      continue
    records = read_metrics(path)
    label = f"{LABELS[opt]} lr {b['lr']:g} wd {b['wd']:g}"
    for ax, key, style in ((ax_tr, "train_loss", "-"), (ax_val, "val_loss", "o-"),
                           (ax_acc, "val_accuracy", "o-")):
      pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
      if pts:
        ax.plot(*zip(*pts, strict=True), style, label=label, markersize=3)
  for ax, title in ((ax_tr, "train loss"), (ax_val, "val loss"), (ax_acc, "val accuracy")):
    ax.set(xlabel="step", title=title)
    ax.grid(alpha=0.3)
  ax_tr.legend(fontsize=7)
  fig.suptitle(f"{task} tiny: each optimizer's best cell (seed 0)")
  path = out / "best_curves.png"
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def default_out(task: str, grid: str) -> Path:
  return RESULTS / (task if grid == "small" else f"{task}-{grid}")


def report(task: str, grid: Grid, out: Path, study: dict[str, Any]) -> list[dict[str, Any]]:
  """Writes the tables and plots from whatever cells are finished."""
  rows = _rows(out, grid)
  study["compute_s"] = round(sum(r.get("cell_wall_s", 0.0) for r in rows), 1)
  study["runs"] = len(rows)
  table = write_tables(task, grid, rows, out, study)
  if rows:
    plot_heatmaps(task, grid, rows, out)
    plot_best_curves(task, grid, rows, out)
  study["table"] = table
  study["lr_relation"] = lr_relation(table)
  (out / "study.json").write_text(json.dumps(study, indent=1, default=str) + "\n")
  return table


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--task", choices=TASKS, required=True)
  parser.add_argument("--grid", choices=GRIDS, default="small")
  parser.add_argument("--out", type=Path, help="results folder (default: "
                      "benchmarks/results/study/<task>[-<grid>])")
  parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS),
                      default=list(OPTIMIZERS))
  parser.add_argument("--seeds", type=int, nargs="+",
                      help="seeds of every cell (default: the grid's; the small grid runs "
                      "seed 0 everywhere and one more seed at each optimizer's best cell)")
  parser.add_argument("--report-only", action="store_true",
                      help="rewrite tables and plots from the finished cells; train nothing")
  args = parser.parse_args(argv)
  out = args.out or default_out(args.task, args.grid)
  grid = make_grid(args.task, args.grid, args.optimizers)
  if args.seeds:
    extra = tuple(s for s in grid.extra_seeds if s not in args.seeds)
    grid = dataclasses.replace(grid, seeds=tuple(args.seeds), extra_seeds=extra)
  out.mkdir(parents=True, exist_ok=True)
  previous = {}
  if (out / "study.json").exists():
    previous = json.loads((out / "study.json").read_text())
  t0 = time.perf_counter()
  counts = {"trained": 0, "skipped": 0}
  if not args.report_only:
    counts = run_study(args.task, grid, out, log=lambda s: print(s, flush=True))
  elapsed = time.perf_counter() - t0
  study = {
      "command": "python -m benchmarks.reproduce " + " ".join(
          ["--task", args.task, "--grid", args.grid]
          + (["--optimizers", *args.optimizers] if args.optimizers != list(OPTIMIZERS)
             else [])
          + (["--seeds", *map(str, args.seeds)] if args.seeds else [])),
      "task": args.task, "grid": grid.to_json(), "metric": PRIMARY[args.task],
      "host": f"{platform.machine()}, {os.cpu_count()} CPU cores",
      "invocations": previous.get("invocations", []) + ([] if args.report_only else [
          {"trained": counts["trained"], "skipped": counts["skipped"],
           "wall_s": round(elapsed, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}]),
  }
  study["wall_s"] = round(sum(i["wall_s"] for i in study["invocations"]), 1)
  report(args.task, grid, out, study)
  print((out / "table.md").read_text())
  return {**counts, "out": out, "study": study}


if __name__ == "__main__":
  sys.exit(0 if main() else 1)

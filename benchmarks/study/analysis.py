"""The study's rules and measures: best, diverged, the sensitivity band, gaps and trends.

* **Best** (every model): the lowest seed-0 final validation loss; the accuracy of the
  classifiers is reported beside it, never used to choose. Seeds are then run at that
  point, and optimizers are compared by the seed mean of the final validation loss.
* **Diverged**: the final validation loss is not finite, or is above ``log(outputs)``
  (worse than a uniform guess over the vocabulary / classes). A diverged cell never wins.
* **Sensitivity band**: the width in decades of the contiguous interval around the best
  point whose seed-0 loss is within 2% (5%) of the best, interpolated in log scale
  (:func:`band_width`), along the learning rate and, where it is an axis, the weight decay.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.study.spec import Spec

# The differences reported, (a, b) = a - b of the seed means. The last two only where
# ``sgd_sai_unnorm`` was run: the released package's normalisation at the same weight decay.
GAPS = (("sgd_sai", "adamw"), ("sgd_sai", "sgdm"),
        ("sgd_sai_unnorm", "adamw"), ("sgd_sai_unnorm", "sgd_sai"))


def diverged(val_loss: float | None, outputs: int) -> bool:
  """The divergence rule: a non-finite final val loss, or one above ``log(outputs)``."""
  return val_loss is None or not math.isfinite(val_loss) or val_loss > math.log(outputs)


def cell_loss(row: dict[str, Any] | None) -> float:
  """What ranks cells: the final val loss, ``inf`` for a diverged (or missing) cell."""
  if row is None or row.get("diverged") or row.get("val_loss") is None:
    return math.inf
  return row["val_loss"]


def gap_name(lhs: str, other: str) -> str:
  """The stage key of ``lhs - other``: ``gap_adamw`` for sgd_sai's, else ``gap_lhs_other``."""
  return f"gap_{other}" if lhs == "sgd_sai" else f"gap_{lhs}_{other}"


def band_width(points: Sequence[tuple[float, float]], tol: float,
               absolute: bool = False) -> tuple[float, bool]:
  """Width in decades of the contiguous band around the best point whose loss is within
  ``tol`` (relative) of the best, interpolating linearly in ``log10(x)`` between points.

  Args:
    points: ``(x, loss)`` pairs (``inf`` loss for diverged points); ``x`` a learning rate
      or a weight decay.
    tol: 0.02 for "within 2%".
    absolute: ``tol`` is absolute (a classification error within 0.02 = 2 points).

  Returns:
    ``(width, open)``; ``open`` is True when the band reaches the grid's edge (the true
    band is at least that wide).
  """
  pts = sorted((math.log10(x), loss) for x, loss in points)
  if not pts:
    return 0.0, False
  i = min(range(len(pts)), key=lambda j: pts[j][1])
  best = pts[i][1]
  if math.isinf(best):
    return 0.0, False
  limit = best + tol if absolute else best * (1 + tol)
  ends, is_open = [], False
  for step in (-1, 1):
    j = i
    while 0 <= j + step < len(pts) and pts[j + step][1] <= limit:
      j += step
    if not 0 <= j + step < len(pts):
      ends.append(pts[j][0])
      is_open = True
      continue
    (x0, y0), (x1, y1) = pts[j], pts[j + step]
    frac = 1.0 if math.isinf(y1) else (limit - y0) / (y1 - y0)
    ends.append(x0 + frac * (x1 - x0))
  return abs(ends[1] - ends[0]), is_open


def _bands(info: dict[str, Any], prefix: str, points: Sequence[tuple[float, float]],
           acc_points: Sequence[tuple[float, float]] | None) -> None:
  for tol in (0.02, 0.05):
    t = int(tol * 100)
    w, is_open = band_width(points, tol)
    info[f"{prefix}{t}"], info[f"{prefix}{t}_open"] = round(w, 3), is_open
    if acc_points is not None:  # the band of accuracy within 2 (5) points of the best
      w, is_open = band_width([(x, 1.0 - a) for x, a in acc_points], tol, absolute=True)
      acc = prefix.replace("band", "band_acc")
      info[f"{acc}{t}"], info[f"{acc}{t}_open"] = round(w, 3), is_open


def optimizer_stage(spec: Spec, rows: Sequence[dict[str, Any]], budget: int, width: int,
                    key: str) -> dict[str, Any] | None:
  """One optimizer at one stage: its seed-0 points, best cell, seeds and bands."""
  from benchmarks.study import planner

  mine = {(r["k"], r.get("j", 0), r["seed"]): r for r in rows
          if r["budget"] == budget and r["width"] == width and r["optimizer"] == key}
  if not mine:
    return None
  state = planner.grid_state(spec, rows, budget, width, key)
  best = state["best"]
  line_j = best[1] if best else 0

  def line(axis_value, fixed, value_of):
    pts = [(value_of(r), r) for (k, j, s), r in mine.items()
           if s == 0 and (j if axis_value == "lr" else k) == fixed]
    return (sorted([x, cell_loss(r)] for x, r in pts),
            sorted([x, -math.inf if math.isinf(cell_loss(r)) else r["val_accuracy"]]
                   for x, r in pts))

  points, acc_points = line("lr", line_j, lambda r: r["lr"])
  info: dict[str, Any] = {
      "label": spec.arm(key).label, "grid_done": best is not None,
      "points": points,
      # Seed-0 val accuracy per learning rate, -inf where the cell diverged.
      "acc_points": acc_points,
      "extended": [mine[(k, j, 0)]["lr"] for k, j in state["extended"] if j == line_j],
      "edge": state["edge"],
      "pending": len(state["next"]) > 0,
  }
  if best is None:
    return info
  seeds = {s: r for (k, j, s), r in mine.items() if (k, j) == best}
  losses = [cell_loss(r) for r in seeds.values()]
  info.update(best_lr=seeds[min(seeds)]["lr"], seeds=sorted(seeds),
              per_seed={s: cell_loss(r) for s, r in seeds.items()},
              mean=statistics.fmean(losses), lo=min(losses), hi=max(losses),
              acc=statistics.fmean(r["val_accuracy"] or 0.0 for r in seeds.values()),
              acc_per_seed={s: r["val_accuracy"] or 0.0 for s, r in seeds.items()},
              curve=seeds[0]["curve"] if 0 in seeds else None)
  accuracy = spec.model_spec.accuracy
  _bands(info, "band", points, acc_points if accuracy else None)
  if len(spec.wd_ks) > 1:  # the weight-decay axis: its points at the best learning rate
    wd_points, wd_acc = line("wd", best[0], lambda r: r["wd"])
    info.update(best_wd=seeds[min(seeds)]["wd"], wd_points=wd_points,
                extended_wd=[mine[(k, j, 0)]["wd"] for k, j in state["extended"]
                             if k == best[0]])
    _bands(info, "band_wd", wd_points, wd_acc if accuracy else None)
  return info


def analyse(spec: Spec, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Best cells, gaps and sensitivity per stage, from the finished cells."""
  stages = []
  for budget, width in spec.stage_list():
    entry: dict[str, Any] = {"budget": budget, "width": width, "optimizers": {}}
    for key in spec.optimizers:
      info = optimizer_stage(spec, rows, budget, width, key)
      if info is not None:
        entry["optimizers"][key] = info
    for lhs, other in GAPS:
      a, b = entry["optimizers"].get(lhs), entry["optimizers"].get(other)
      if a and b and a.get("mean") is not None and b.get("mean") is not None:
        paired = [a["per_seed"][s] - b["per_seed"][s] for s in a["per_seed"]
                  if s in b["per_seed"]]
        paired_acc = [a["acc_per_seed"][s] - b["acc_per_seed"][s] for s in a["per_seed"]
                      if s in b["per_seed"]]
        entry[gap_name(lhs, other)] = {
            "mean": a["mean"] - b["mean"], "paired": paired,
            "lo": min(paired) if paired else None, "hi": max(paired) if paired else None,
            "acc_mean": a["acc"] - b["acc"],
            "acc_lo": min(paired_acc) if paired_acc else None,
            "acc_hi": max(paired_acc) if paired_acc else None,
            "final": not (a["pending"] or b["pending"])}
    measured = {r["normaliser"] for r in rows if r.get("normaliser") and
                r["budget"] == budget and r["width"] == width}
    if measured:
      entry["normaliser"] = max(measured)
    stages.append(entry)
  return {"stages": stages, "trend": gap_trend(spec, stages)}


def gap_trend(spec: Spec, stages: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Per width and reference: a least-squares line of the gap against ``log10(steps)`` over
  the finished budgets, its slope per decade and the budget where it would reach zero.

  With two or three budgets this is an extrapolation of a trend, not a prediction.
  """
  out: dict[str, Any] = {}
  for lhs, other in GAPS:
    if other == "sgd_sai":  # the weight-decay check's difference is not a gap to close
      continue
    name = gap_name(lhs, other)
    for width in spec.widths:
      pts = [(math.log10(st["budget"]), st[name]["mean"]) for st in stages
             if st["width"] == width and st.get(name) and st[name]["final"]]
      if len(pts) < 2:
        continue
      mx = statistics.fmean(x for x, _ in pts)
      my = statistics.fmean(y for _, y in pts)
      sxx = sum((x - mx) ** 2 for x, _ in pts)
      slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
      zero = None
      if slope != 0 and (my > 0) == (slope < 0):  # heading towards zero
        zero = 10 ** (mx - my / slope)
      out[f"{name.removeprefix('gap_')}_w{width}"] = {
          "lhs": lhs, "other": other, "budgets": [round(10 ** x) for x, _ in pts],
          "slope_per_decade": slope, "zero_at_steps": zero}
  return out

"""Does one learning rate carry over? Best learning rates across widths and kinds of model.

``python -m benchmarks.study.transfer`` reads finished study logs (it trains nothing) and
writes ``benchmarks/results/study/transfer/table.md`` and ``summary.json``:

* **Across width** (a scaling spec, one budget at a time): each optimizer's best learning
  rate per width, its drift in decades per doubling of width (a least-squares line of
  ``log10(best lr)`` against ``log2(width)``), and the loss lost at each width by reusing
  the smallest width's best learning rate (read off that width's seed-0 grid, interpolated
  linearly in ``log10(lr)`` where it is not a grid point).
* **Across kinds of model** (the kinds specs at the examples' decays, and the defaults
  specs with the decay tuned): each optimizer's best learning rate per model and their
  spread in decades, ``log10(max / min)``.

SGD-SaI's two conventions are one optimizer: ``normalize=False`` at learning rate
``lr / N`` and weight decay ``wd x N`` is ``normalize=True`` at ``(lr, wd)``, ``N`` the
normaliser measured at the first step (:func:`benchmarks.study.backends.normaliser`). So a
``normalize=False`` column at the same per-step decay needs no run of its own: it is the
``normalize=True`` runs read in the other convention (best lr / ``N(width)``; reusing the
smallest width's ``lr0 / N(w0)`` at width ``w`` is the ``normalize=True`` run at
``lr0 x N(w) / N(w0)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.study import analysis, log
from benchmarks.study.spec import RESULTS_ROOT, Spec

OUT = Path(RESULTS_ROOT) / "study" / "transfer"
OPTIMIZERS = ("sgd_sai", "adamw", "sgdm")
DERIVED = "sgd_sai, normalize=False (same per-step decay)"
# The studies with a width (or depth) axis, and the weight decays they ran at.
WIDTH_SPECS = (("scaling_gpt2", "the examples' weight decays"),
               ("scaling_vit", "the examples' weight decays"),
               ("width_gpt2", "tuned weight decays"), ("depth_gpt2", "tuned weight decays"))
# The comparisons across kinds of model: one spec per model, and how they ran.
KINDS_SPECS = ((("kinds_gpt2", "kinds_vit", "kinds_cnn"),
                "300 steps, one seed, the examples' weight decays"),
               (("defaults_gpt2", "defaults_vit", "defaults_cnn"),
                "the tiny configs as their commands run them: 200 steps, each model's own "
                "data and width, weight decay tuned per optimizer"))


def drift_per_doubling(points: Sequence[tuple[float, float]]) -> float | None:
  """Least-squares slope of ``log10(lr)`` against ``log2(width)``: decades per doubling.

  Args:
    points: ``(width, best learning rate)`` pairs, at least two widths.

  Returns:
    The slope, or ``None`` with fewer than two distinct widths.
  """
  xs = [math.log2(w) for w, _ in points]
  ys = [math.log10(lr) for _, lr in points]
  if len(set(xs)) < 2:
    return None
  mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
  return (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
          / sum((x - mx) ** 2 for x in xs))


def loss_at(points: Sequence[tuple[float, float]], lr: float) -> float | None:
  """The seed-0 loss at ``lr``, interpolated linearly in ``log10(lr)`` between grid points.

  Args:
    points: ``(lr, loss)`` grid points (``inf`` where a cell diverged).
    lr: the learning rate to read off.

  Returns:
    The loss (``inf`` next to a diverged point), or ``None`` outside the grid.
  """
  pts = sorted(points)
  for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
    if x0 <= lr <= x1:
      if math.isclose(lr, x0, rel_tol=1e-3):
        return y0
      if math.isclose(lr, x1, rel_tol=1e-3):
        return y1
      if math.isinf(y0) or math.isinf(y1):
        return math.inf
      t = (math.log10(lr) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
      return y0 + t * (y1 - y0)
  if len(pts) == 1 and math.isclose(lr, pts[0][0], rel_tol=1e-3):
    return pts[0][1]
  return None


def _best(spec: Spec, rows: Sequence[dict[str, Any]], budget: int, width: int,
          key: str) -> dict[str, Any] | None:
  info = analysis.optimizer_stage(spec, rows, budget, width, key)
  if info is None or not info["grid_done"]:
    return None
  points = [(lr, loss) for lr, loss in info["points"]]
  return {"best_lr": info["best_lr"], "points": points,
          "best_loss": min(loss for _, loss in points)}


def width_transfer(spec: Spec, rows: Sequence[dict[str, Any]], budget: int,
                   normaliser: Callable[[int], float]) -> dict[str, Any] | None:
  """Best learning rates across the widths of ``spec`` at ``budget`` (see the module doc).

  Args:
    spec: a study with a width axis.
    rows: its logged cells.
    budget: the steps to compare at.
    normaliser: width -> SGD-SaI's measured normaliser at that width.

  Returns:
    ``{"budget", "widths", "normalisers", "optimizers": {name: {"lrs", "drift",
    "reuse_loss", "reuse_lost"}}}``, or ``None`` with fewer than two finished widths.
  """
  widths = sorted(w for w in spec.widths
                  if all(_best(spec, rows, budget, w, k) for k in OPTIMIZERS))
  if len(widths) < 2:
    return None
  w0 = widths[0]
  norms = {w: normaliser(w) for w in widths}
  out: dict[str, Any] = {"budget": budget, "widths": widths, "normalisers": norms,
                         "optimizers": {}}
  for key in OPTIMIZERS:
    best = {w: _best(spec, rows, budget, w, key) for w in widths}
    for name in (key, DERIVED) if key == "sgd_sai" else (key,):
      derived = name == DERIVED
      lrs = {w: best[w]["best_lr"] / (norms[w] if derived else 1.0) for w in widths}
      reuse, lost = {}, {}
      for w in widths:
        # The smallest width's learning rate, as a normalize=True learning rate at width w.
        lr = best[w0]["best_lr"] * (norms[w] / norms[w0] if derived else 1.0)
        reuse[w] = loss_at(best[w]["points"], lr)
        lost[w] = None if reuse[w] is None else reuse[w] - best[w]["best_loss"]
      out["optimizers"][name] = {
          "lrs": lrs, "drift": drift_per_doubling(list(lrs.items())),
          "reuse_loss": reuse, "reuse_lost": lost}
  return out


def kinds_transfer(specs: Sequence[Spec], rows_of: Callable[[Spec], list[dict[str, Any]]],
                   normaliser: Callable[[Spec, int], float]) -> dict[str, Any]:
  """Best learning rates across the models of ``specs`` (one budget and width each).

  Returns:
    ``{"models": [...], "normalisers": {...}, "optimizers": {name: {"lrs": {model: lr},
    "spread": decades}}}``, with the derived ``normalize=False`` line beside the run ones.
  """
  models, norms, lrs = [], {}, {}
  for spec in specs:
    rows = rows_of(spec)
    budget, width = spec.stage_list()[0]
    bests = {k: _best(spec, rows, budget, width, k) for k in spec.optimizers}
    if not all(bests.values()):
      continue
    models.append(spec.model)
    norms[spec.model] = normaliser(spec, width)
    for key, b in bests.items():
      lrs.setdefault(key, {})[spec.model] = b["best_lr"]
    lrs.setdefault(DERIVED, {})[spec.model] = bests["sgd_sai"]["best_lr"] / norms[spec.model]
  return {"models": models, "normalisers": norms, "optimizers": {
      name: {"lrs": v, "spread": math.log10(max(v.values()) / min(v.values()))}
      for name, v in lrs.items()}}


def _label(name: str) -> str:
  from examples.common import optim

  return name if name == DERIVED else optim.OPTIMIZERS[name].label


def write_table(widths: Sequence[dict[str, Any]], kinds: Sequence[dict[str, Any]],
                out: Path) -> str:
  """``table.md`` and ``summary.json`` in ``out``; returns the table's text."""
  lines = ["# Does one learning rate carry over?", "",
           "Best learning rates read from the finished study logs (seed 0 of each grid; "
           "see `benchmarks/study/transfer.py`). The `normalize=False (same per-step decay)` "
           "line is the `normalize=True` runs read in the other convention: learning rate / "
           "normaliser, weight decay x normaliser, the same optimizer.", ""]
  for wt in widths:
    ws, axis = wt["widths"], wt.get("axis", "width")
    lines += [f"## Across {axis}: {wt['title']}, {wt['budget']} steps", "",
              f"Normaliser per {axis}: " + ", ".join(
                  f"{w}: {wt['normalisers'][w]:.3g}" for w in ws) + ".", "",
              "| optimizer | " + " | ".join(f"best lr, {axis} {w}" for w in ws)
              + " | drift (decades per doubling) | "
              + " | ".join(f"loss lost at {axis} {w} with {axis} {ws[0]}'s lr"
                           for w in ws[1:])
              + " |", "|---|" + "---|" * (2 * len(ws))]
    for name, o in wt["optimizers"].items():
      lost = [("outside the grid" if o["reuse_lost"][w] is None
               else f"{o['reuse_lost'][w]:+.3f}") for w in ws[1:]]
      lines.append(f"| {_label(name)} | " + " | ".join(f"{o['lrs'][w]:.3g}" for w in ws)
                   + f" | {o['drift']:+.2f} | " + " | ".join(lost) + " |")
    lines.append("")
  for kt in kinds:
    ms = kt["models"]
    if not ms:
      continue
    lines += [f"## Across kinds of model ({kt['title']})", "",
              "Normaliser per model: " + ", ".join(
                  f"{m}: {kt['normalisers'][m]:.3g}" for m in ms) + ".", "",
              "| optimizer | " + " | ".join(ms) + " | spread (decades) |",
              "|---|" + "---|" * (len(ms) + 1)]
    for name, o in kt["optimizers"].items():
      lines.append(f"| {_label(name)} | " + " | ".join(f"{o['lrs'][m]:.3g}" for m in ms)
                   + f" | {o['spread']:.2f} |")
    lines.append("")
  text = "\n".join(lines)
  out.mkdir(parents=True, exist_ok=True)
  (out / "table.md").write_text(text)
  (out / "summary.json").write_text(json.dumps(
      {"widths": widths, "kinds": kinds}, indent=1, default=str) + "\n")
  return text


def main() -> str:
  """Reads the scaling, width, depth, kinds and defaults logs, writes the transfer report;
  returns its text."""
  from benchmarks.study import backends
  from benchmarks.study.specs import SPECS

  widths = []
  for name, decays in WIDTH_SPECS:
    spec = SPECS[name]
    rows = log.read_cells(Path(spec.results_dir))
    for budget in spec.budgets:
      wt = width_transfer(spec, rows, budget, lambda w, s=spec: backends.normaliser(s, w))
      if wt is not None:
        wt["title"] = f"{spec.model_spec.title.format(dataset=spec.dataset)}, {decays}"
        wt["axis"] = spec.axis_name
        widths.append(wt)
  kinds = []
  for names, title in KINDS_SPECS:
    kt = kinds_transfer([SPECS[n] for n in names],
                        lambda s: log.read_cells(Path(s.results_dir)), backends.normaliser)
    kinds.append({**kt, "title": title})
  return write_table(widths, kinds, OUT)


if __name__ == "__main__":
  print(main())

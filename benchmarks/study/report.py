"""The one report writer: rebuilt from the whole log, with provenance in every output.

``table.md`` (best cells, gaps, sensitivity bands, the weight-decay axis where there is one,
the model's own section where it declares one, pending stages named, and the host, training
time and command that produced the log),
``summary.json`` (the spec, the same provenance and the analysis), ``gap.png`` and
``curves.png``. The report covers every cell in the log, whatever stages or optimizers the
run that writes it was restricted to, and never trains anything.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import host_line
from benchmarks.study import planner
from benchmarks.study.analysis import GAPS, analyse, gap_name
from benchmarks.study.log import read_cells, read_runs
from benchmarks.study.spec import Spec


def _corpus_meta(study: Spec) -> dict[str, Any] | None:
  """The prepared GPT-2 corpus's ``meta.json`` (files, bytes, split), if prepared."""
  data_lib = importlib.import_module("examples.gpt2.data")
  meta_path = data_lib.resolve_data_dir(study.dataset) / "meta.json"
  return json.loads(meta_path.read_text()) if meta_path.exists() else None


def train_set_size(study: Spec) -> tuple[int, str] | None:
  """``(size, unit)`` of the training split: tokens of the corpus (GPT-2), images (ViT)."""
  if study.model_spec.dataset == "digits":
    if study.dataset != "digits":
      return None
    data_lib = importlib.import_module("examples.vit.data")
    return len(data_lib.load_digits_split()[1]), "training images"
  meta = _corpus_meta(study)
  return None if meta is None else (int(meta["train_tokens"]), "training bytes")


def epochs_per_budget(study: Spec, budgets: Sequence[int]) -> dict[int, float] | None:
  """Training epochs each budget implies: batch (x context) per step over the split's size."""
  size = train_set_size(study)
  if size is None:
    return None
  cfg = dataclasses.replace(study.model_spec.module("configs").get_config("tiny"),
                            **dict(study.overrides))
  per_step = cfg.batch_size * getattr(cfg, "block_size", 1)
  return {b: b * per_step / size[0] for b in budgets}


def _f(x: Any, d: int = 3) -> str:
  if x is None:
    return "—"
  if isinstance(x, float):
    return "diverged" if math.isinf(x) else f"{x:.{d}f}"
  return str(x)


def write_table(study: Spec, analysis: dict[str, Any], out: Path, meta: dict[str, Any],
                own: Sequence[str] = (), section: Sequence[str] = ()) -> str:
  """``table.md``: best cells, gaps and sensitivity per stage; not-yet-run stages named;
  ``section``: the model's own lines (:func:`model_section`)."""
  spec = study.model_spec
  acc = study.model_spec.accuracy  # accuracy columns beside the loss
  lines = [
      f"# {study.heading}: {spec.title.format(dataset=study.dataset)}",
      "",
      f"Best seed-mean final val loss ({spec.loss_unit}) per optimizer (the best learning "
      "rate is the one with the lowest seed-0 val loss), with its learning rate, its seeds "
      "and their range [min, max]"
      + (", and the val accuracy (%) of those runs" if acc else "")
      + ". Gap = sgd_sai - adamw (and - sgdm) of the seed means; in brackets the range of "
      "the per-seed paired differences (same seed = same initialisation and batches). "
      "Stages marked *partial* are still running.",
      "",
      f"| steps | {study.axis_name} | optimizer | best lr | seeds | val loss | seed range | "
      + ("val acc % | " if acc else "")
      + "grid (seed 0) | extended | band 2% (dec) | band 5% (dec) |",
      "|---|---|---|---|---|---|---|" + ("---|" if acc else "") + "---|---|---|---|",
  ]
  gaps = ["", f"| steps | {study.axis_name} | sgd_sai - adamw [paired range] | sgd_sai - sgdm "
          "[paired range] | "
          + ("accuracy points vs adamw | vs sgdm | " if acc else "") + "status |",
          "|---|---|---|---|" + ("---|---|" if acc else "") + "---|"]
  missing = []
  for st in analysis["stages"]:
    b, w = st["budget"], st["width"]
    if not st["optimizers"]:
      missing.append((b, w))
      continue
    for key in study.optimizers:
      info = st["optimizers"].get(key)
      if info is None:
        if key not in own:  # an optional line (sgd_sai_unnorm) not run at this stage
          continue
        lines.append(f"| {b} | {w} | {study.arm(key).label} | not yet run "
                     + "| " * (8 if acc else 7) + "|")
        continue
      grid = ", ".join(  # each seed-0 point's loss (and accuracy)
          f"{lr:g}: {_f(loss)}" + (f" ({100 * a:.0f}%)" if acc and math.isfinite(a) else "")
          for (lr, loss), (_, a) in zip(info["points"], info["acc_points"], strict=True))
      ext = ", ".join(f"{x:g}" for x in info["extended"]) or "no"
      if info["edge"]:
        ext += f" (best still at the {info['edge']} edge: cap reached)"
      if not info["grid_done"]:
        lines.append(f"| {b} | {w} | {info['label']} | *grid partial* | | | | "
                     + ("| " if acc else "") + f"{grid} | {ext} | | |")
        continue

      def band(t: int, info=info) -> str:
        return (">=" if info[f"band{t}_open"] else "") + f"{info[f'band{t}']:.2f}"

      lines.append(
          f"| {b} | {w} | {info['label']} | {info['best_lr']:g} | "
          f"{','.join(map(str, info['seeds']))}{' *partial*' if info['pending'] else ''} | "
          f"{_f(info['mean'])} | [{_f(info['lo'])}, {_f(info['hi'])}] | "
          + (f"{100 * info['acc']:.1f} | " if acc else "") + f"{grid} | {ext} | "
          f"{band(2)} | {band(5)} |")
    ga, gs = st.get("gap_adamw"), st.get("gap_sgdm")
    status = "final" if ga and ga["final"] and gs and gs["final"] else "partial"
    gaps.append(f"| {b} | {w} | {_gap_text(ga)} | {_gap_text(gs)} | "
                + (f"{_gap_text(ga, True)} | {_gap_text(gs, True)} | " if acc else "")
                + f"{status} |")
  lines += gaps
  sens = ["", "Sensitivity: width in decades of each optimizer's learning-rate band within 2% "
          "(5%) of its best final loss ('>=': the band reaches the grid's edge)"
          + ("; for the accuracy, within 2 (5) points of its best accuracy" if acc else "")
          + ".", "",
          f"| steps | {study.axis_name} | " + " | ".join(study.optimizers)
          + "".join(f" | {k}, accuracy" for k in study.optimizers if acc) + " |",
          "|---|---|" + "---|" * len(study.optimizers) * (2 if acc else 1)]
  for st in analysis["stages"]:
    cells = []
    for prefix in ("band", "band_acc") if acc else ("band",):
      for key in study.optimizers:
        info = st["optimizers"].get(key) or {}
        if f"{prefix}2" not in info:
          cells.append("—")
          continue
        cells.append(" / ".join((">=" if info[f"{prefix}{t}_open"] else "")
                                + f"{info[f'{prefix}{t}']:.2f}" for t in (2, 5)))
    if any(c != "—" for c in cells):
      sens.append(f"| {st['budget']} | {st['width']} | " + " | ".join(cells) + " |")
  lines += sens
  lines += _unnormalised_section(study, analysis)
  lines += _weight_decay_section(study, analysis)
  lines += _scales_section(study, out)
  lines += section
  for name, t in analysis.get("trend", {}).items():
    width = name.rsplit("_w", 1)[1]
    zero = t["zero_at_steps"]
    if zero is None:
      where = "is not closing"
    elif zero > 1e7:
      where = "is closing too slowly to reach zero within 10^7 steps"
    else:
      where = f"would reach zero near {zero:,.0f} steps if the trend held"
    lines.append(f"\nTrend, width {width}, {t['lhs']} - {t['other']} over budgets "
                 f"{', '.join(map(str, t['budgets']))}: {t['slope_per_decade']:+.3f} nats per "
                 f"decade of steps; the gap {where} (a line through "
                 f"{len(t['budgets'])} points: an extrapolation, not a prediction).")
  epochs = meta.get("epochs")
  if epochs:
    lines += ["", "Epochs of the training split each budget implies: " + ", ".join(
        f"{b} steps = {e:.3f}" for b, e in sorted(epochs.items(), key=lambda x: int(x[0])))
        + f" ({meta.get('train_size', 0):,} {meta.get('train_unit', '')})."]
  if missing:
    lines += ["", "Not yet run (pending; each is queued in the order listed, cheapest first): "
              + ", ".join(f"{b} steps at {study.axis_name} {w}" for b, w in missing) + "."]
  note = study.note or study.model_spec.note
  lines += ["", note, ""] if note else [""]
  lines += [
      "Band = width in decades of the learning-rate interval around the best point whose "
      "seed-0 final loss is within 2% (5%) of the best, interpolated linearly in log lr; "
      "'>=' when it reaches the grid's edge. Grid: each optimizer's tiny default x "
      f"10^(k/2), k = {min(study.lr_ks)}..{max(study.lr_ks)}, extended half a decade at a "
      "time while the best is on an edge.",
      f"Cells: {meta.get('cells', 0)}; training time {meta.get('compute_h', 0):.2f} h "
      f"({meta.get('host', '')}). Command: `{meta.get('command', '')}`",
      "",
  ]
  text = "\n".join(lines)
  (out / "table.md").write_text(text)
  return text


def _unnormalised_section(study: Spec, analysis: dict[str, Any]) -> list[str]:
  """The weight-decay check's lines: sgd_sai_unnorm against sgd_sai and AdamW, if run."""
  stages = [st for st in analysis["stages"] if st.get("gap_sgd_sai_unnorm_sgd_sai")
            or st.get("gap_sgd_sai_unnorm_adamw")]
  if not stages:
    return []

  acc = study.model_spec.accuracy
  wd = planner.default_hyperparameters(study, "sgd_sai_unnorm")[1]
  lines = [
      "", "Weight-decay check: SGD-SaI with `normalize=False` (the released package's "
      "semantics, step = lr x g-SNR), its grid = sgd_sai's divided by the measured "
      f"normaliser, and the same weight decay ({wd:g}). That is the `normalize=True` "
      f"optimizer with weight decay {wd:g} / normaliser: the two lines differ only in how "
      "strongly the "
      "weights decay (lr x wd per step), which at sgd_sai's tuned learning rates is "
      "normaliser times weaker here. Differences of seed means, [per-seed paired range].",
      "",
      f"| steps | {study.axis_name} | normaliser | unnorm - sgd_sai | unnorm - adamw | "
      + ("points vs sgd_sai | points vs adamw | " if acc else "") + "status |",
      "|---|---|---|---|---|" + ("---|---|" if acc else "") + "---|"]
  for st in stages:
    gs, ga = st.get("gap_sgd_sai_unnorm_sgd_sai"), st.get("gap_sgd_sai_unnorm_adamw")
    final = all(g is not None and g["final"] for g in (gs, ga))
    lines.append(f"| {st['budget']} | {st['width']} | {st.get('normaliser', 0):g} | "
                 f"{_gap_text(gs)} | {_gap_text(ga)} | "
                 + (f"{_gap_text(gs, True)} | {_gap_text(ga, True)} | " if acc else "")
                 + ("final" if final else "partial") + " |")
  return lines


def _gap_text(g: dict[str, Any] | None, accuracy: bool = False) -> str:
  """``+0.123 [+0.100, +0.150]`` (loss) or ``-2.0 [-3.0, -1.3]`` (accuracy points)."""
  if g is None:
    return "—"
  if accuracy:
    return (f"{100 * g['acc_mean']:+.1f} [{100 * g['acc_lo']:+.1f}, "
            f"{100 * g['acc_hi']:+.1f}]")
  return f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]"


def plot(study: Spec, analysis: dict[str, Any], out: Path) -> list[Path]:
  """``gap.png`` (gap vs budget, one line per width) and ``curves.png`` (best runs)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from examples.common import optim

  paths = []
  # Gap rows: val loss (both models), and val accuracy in points (the ViT).
  metrics = [("", 1.0, f"val loss: sgd_sai - {{}} ({study.model_spec.loss_unit})")]
  if study.model_spec.accuracy:
    metrics.append(("acc_", 100.0, "val accuracy: sgd_sai - {} (points)"))
  fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 4 * len(metrics)),
                           constrained_layout=True, squeeze=False)
  for row, (prefix, factor, ylabel) in zip(axes, metrics, strict=True):
    for ax, other in zip(row, ("adamw", "sgdm"), strict=True):
      # sgd_sai's lines, and (dashed) the weight-decay check's where it was run.
      series = [(gap_name(lhs, o), width, lhs) for lhs, o in GAPS if o == other
                for width in study.widths]
      for name, width, lhs in series:
        pts = [(st["budget"], st[name]) for st in analysis["stages"]
               if st["width"] == width and st.get(name)
               and math.isfinite(st[name]["mean"])]  # not where one diverged
        if not pts:
          continue
        mean = [factor * g[f"{prefix}mean"] for _, g in pts]
        lo = [factor * g[f"{prefix}lo"] for _, g in pts]
        hi = [factor * g[f"{prefix}hi"] for _, g in pts]
        err = [[max(m - x, 0) for m, x in zip(mean, lo, strict=True)],
               [max(x - m, 0) for m, x in zip(mean, hi, strict=True)]]
        unnorm = lhs != "sgd_sai"
        ax.errorbar([b for b, _ in pts], mean, yerr=err, marker="s" if unnorm else "o",
                    capsize=3, ls="--" if unnorm else "-",
                    label=f"{study.axis_name} {width}" + (", normalize=False (wd / normaliser)"
                                              if unnorm else ""))
      ax.axhline(0.0, color="grey", lw=0.8)
      ax.set_xscale("log")
      ax.set(xlabel="training steps (own warmup + cosine schedule)",
             ylabel=ylabel.format(other),
             title=f"SGD-SaI minus {optim.OPTIMIZERS[other].label}, tuned lr each")
      ax.grid(alpha=0.3, which="both")
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
      else:
        ax.text(0.5, 0.5, "no finished stage yet", ha="center", transform=ax.transAxes)
  paths.append(_save(fig, out / "gap.png", 90))

  main_width = study.widths[0]
  stages = [st for st in analysis["stages"] if st["width"] == main_width and st["optimizers"]]
  if stages:
    fig, axes = plt.subplots(1, len(stages), figsize=(3.6 * len(stages) + 1, 3.4),
                             constrained_layout=True, squeeze=False)
    for ax, st in zip(axes[0], stages, strict=True):
      for key in study.optimizers:
        info = st["optimizers"].get(key)
        if not info or not info.get("curve"):
          continue
        c = info["curve"]
        line = ax.plot([p[0] for p in c], [p[1] for p in c], "--", alpha=0.6)[0]
        ax.plot([p[0] for p in c], [p[2] for p in c], "o-", color=line.get_color(),
                label=f"{key} lr {info['best_lr']:g}")
      ax.set(title=f"{st['budget']} steps, {study.axis_name} {main_width}", xlabel="step",
             ylabel="loss (o val, -- train)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    paths.append(_save(fig, out / "curves.png", 80))
  return paths


def _save(fig: Any, path: Path, dpi: int) -> Path:
  import matplotlib.pyplot as plt

  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def _finite_json(x: Any) -> Any:
  """``x`` with non-finite floats (diverged cells' losses) as ``None``: valid JSON."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {k: _finite_json(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite_json(v) for v in x]
  return x


def _weight_decay_section(study: Spec, analysis: dict[str, Any]) -> list[str]:
  """The weight-decay axis, where the spec has one: each best point's line along it."""
  if len(study.wd_ks) < 2:
    return []
  per_step = ("" if not study.decay_per_step else " (lr x wd per step)"
              if study.decay_per_step is True else
              f" (lr x wd per step for {', '.join(study.decay_per_step)})")
  lines = ["", f"Weight-decay axis{per_step}: each optimizer's seed-0 points along the "
           "weight decay at its best learning rate; band = decades of weight decay within "
           "2% (5%) of the best loss.", "",
           f"| steps | {study.axis_name} | optimizer | best lr | best wd | lr x wd | "
           "grid (seed 0) | extended | band 2% / 5% (dec) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for st in analysis["stages"]:
    for info in st["optimizers"].values():
      if "best_wd" not in info:
        continue
      grid = ", ".join(f"{wd:g}: {_f(loss)}" for wd, loss in info["wd_points"])
      ext = ", ".join(f"{x:g}" for x in info["extended_wd"]) or "no"
      band = " / ".join((">=" if info[f"band_wd{t}_open"] else "")
                        + f"{info[f'band_wd{t}']:.2f}" for t in (2, 5))
      lines.append(f"| {st['budget']} | {st['width']} | {info['label']} | "
                   f"{info['best_lr']:g} | {info['best_wd']:g} | "
                   f"{info['best_lr'] * info['best_wd']:.3g} | {grid} | {ext} | {band} |")
  return lines


def _scales_section(study: Spec, out: Path) -> list[str]:
  """sgd_sai's per-block scales after two steps, per width (all of them in scales.json)."""
  if not study.report_scales:
    return []
  import numpy as np

  from benchmarks.study import backends

  measured = {w: backends.first_step_gsnr(study, w) for w in study.widths}
  (out / "scales.json").write_text(json.dumps(
      {str(w): m for w, m in measured.items()}, indent=1) + "\n")
  lines = ["", "g-SNR scales of sgd_sai (`normalize=True`) captured in the first two steps "
           "(seed 0), per block; every block's in `scales.json`. Above 1: blocks captured "
           "after the normaliser was fixed (step 1) with a larger g-SNR.", "",
           f"| {study.axis_name} | normaliser | blocks | min | median | max | above 1 |",
           "|---|---|---|---|---|---|---|"]
  for w, m in measured.items():
    values = np.concatenate([np.ravel(v) for v in m["scales"].values()])
    above = [p for p, v in m["scales"].items() if np.max(v) > 1.0]
    lines.append(f"| {w} | {m['normaliser']:.3g} | {values.size} | {values.min():.3g} | "
                 f"{np.median(values):.3g} | {values.max():.3g} | "
                 f"{', '.join(above) or 'none'} |")
  lines.append("")
  lines += [f"- {study.axis_name} {w}: " + ", ".join(
      f"`{p}` {np.max(v):.3g}" for p, v in m["scales"].items()) for w, m in measured.items()]
  return lines


def model_section(study: Spec, analysis: dict[str, Any], rows: Sequence[dict[str, Any]]
                  ) -> tuple[list[str], dict[str, Any]]:
  """The model's own report section (``Model.report_section``): its ``table.md`` lines and
  its facts for ``summary.json``; none for a model without one."""
  section = study.model_spec.hook("report_section")
  return section(study, analysis, rows) if section is not None and rows else ([], {})


def covering(study: Spec, rows: Sequence[dict[str, Any]]) -> Spec:
  """``study`` widened to every optimizer, budget and width with a cell in ``rows``.

  The report covers the whole log, so that a run restricted to some stages or optimizers
  (``--budgets 3000 --widths 64``, ``--optimizers sgd_sai_unnorm``) rewrites the full
  table, not only its own part. The spec's optimizers come first, then the log's others
  (the optimizer table's order, then the arms').
  """
  if study.stages is not None:
    return study
  logged = {r["optimizer"] for r in rows}
  widths = list(study.widths) + sorted({r["width"] for r in rows} - set(study.widths))
  return dataclasses.replace(
      study, optimizers=tuple(study.optimizers) + tuple(
          k for k in study.keys() if k in logged and k not in study.optimizers),
      budgets=tuple(sorted(set(study.budgets) | {r["budget"] for r in rows})),
      widths=tuple(widths))


def provenance(out: Path, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Cells, training hours, the host and the command of the latest run that trained cells."""
  groups = {(r["budget"], r["width"], r["optimizer"], r["group_wall_s"], r["finished"])
            for r in rows}
  runs = read_runs(out)
  return {
      "command": runs[-1]["command"] if runs else "", "cells": len(rows),
      "compute_h": math.fsum(g[3] for g in groups) / 3600,  # exact: independent of set order
      "host": host_line(),
  }


def report(study: Spec, out: Path) -> dict[str, Any]:
  """Writes ``table.md``, ``summary.json``, ``gap.png`` and ``curves.png`` from the log."""
  out.mkdir(parents=True, exist_ok=True)
  rows = read_cells(out)
  own = study.optimizers
  study = covering(study, rows)
  analysis = analyse(study, rows)
  budgets = sorted({b for b, _ in study.stage_list()})
  meta = provenance(out, rows)
  meta["epochs"] = epochs_per_budget(study, budgets)
  size = train_set_size(study)
  if size is not None:
    meta["train_size"], meta["train_unit"] = size
  if study.model == "gpt2" and (corpus := _corpus_meta(study)) is not None:
    meta["data"] = corpus
  lines, facts = model_section(study, analysis, rows)
  write_table(study, analysis, out, meta, own, lines)
  if rows:
    plot(study, analysis, out)
  summary = {"study": study.to_json(), **meta, **analysis}
  if facts:
    summary["model_section"] = facts
  for st in summary["stages"]:  # the curves stay in cells.jsonl
    for info in st["optimizers"].values():
      info.pop("curve", None)
  (out / "summary.json").write_text(json.dumps(_finite_json(summary), indent=1, default=str)
                                    + "\n")
  return summary

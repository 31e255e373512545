"""The LoRA study: a learning-rate sweep per optimizer, the pinned-A ablation, state bytes.

    nice -n 10 python -m examples.lora.sweep --seeds 0 --out examples/lora/results
    python -m examples.lora.sweep --report-only --out examples/lora/results

Cells (one fine-tuning run each, ``tiny`` config, shared cached base): LoRA (rank 8) with
sgd_sai, adamw and sgdm at >= 4 learning rates each; full fine-tuning (``rank 0``) with
adamw as the ceiling; and sgd_sai with :func:`pin_a_scale_at_zero` (what the released
``sgd-sai`` 1.0.3 does to LoRA: A's g-SNR is stored as 0 at step 1, so A never trains).
Each finished cell is a small JSON file in ``OUT/cells``; a re-run skips them (resumable).
``OUT/table.md`` and ``OUT/summary.json`` are rebuilt from the cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from examples.common import metrics as metrics_lib
from examples.lora import configs
from examples.lora import train as lora_train

GRID: dict[str, tuple[str, int, tuple[float, ...]]] = {
    # arm: (optimizer, rank, learning rates)
    "lora-sgd_sai": ("sgd_sai", 8, (1.0, 3.0, 10.0, 30.0)),
    "lora-adamw": ("adamw", 8, (1e-3, 3e-3, 1e-2, 3e-2)),
    "lora-sgdm": ("sgdm", 8, (0.3, 1.0, 3.0, 10.0)),
    "full-adamw": ("adamw", 0, (1e-4, 3e-4, 1e-3, 3e-3)),
    "lora-sgd_sai-pinnedA": ("sgd_sai", 8, (1.0, 3.0, 10.0, 30.0)),
}
MAX_EXTENSIONS = 2  # grid points added beyond an edge when the best lr sits on it


def pin_a_scale_at_zero() -> optax.GradientTransformation:
  """ABLATION, not a fix: zero every LoRA ``A`` gradient before the optimizer sees it.

  This reproduces what the released ``sgd-sai`` 1.0.3 does with the standard LoRA
  initialisation: A's gradient is exactly zero at step 1 (B = 0), so 1.0.3 stores a g-SNR of
  0 for A and A's update is weight decay only, forever. With A's gradient zeroed, optax_sai
  never captures A (its scale stays 0) and A only decays, i.e. the same training. It is
  inserted after gradient clipping, so the clipping norm still counts A's gradient, as a
  clipping step before the 1.0.3 optimizer would.
  """

  def is_a(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: lora_train.optim.path_str(path).endswith("lora_a"), params)

  return optax.masked(optax.set_to_zero(), is_a)


def cell_name(arm: str, lr: float, seed: int) -> str:
  return f"{arm}_lr{lr:g}_s{seed}"


def run_cell(arm: str, lr: float, seed: int, config: configs.LoRAConfig, base: dict,
             workdir: Path | None) -> dict[str, Any]:
  """One fine-tuning run; returns the cell's record (small, JSON-able)."""
  optimizer, rank, _ = GRID[arm]
  cfg = dataclasses.replace(config, rank=rank, seed=seed, learning_rate=lr)
  mask = pin_a_scale_at_zero() if arm.endswith("pinnedA") else None
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = workdir or Path(tmp)
    out = lora_train.train(cfg, optimizer, workdir, base=base, grad_mask=mask, progress=False)
    records = metrics_lib.read_metrics(workdir)
  vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
  return {
      "arm": arm, "optimizer": optimizer, "rank": rank, "lr": lr, "seed": seed,
      "steps": cfg.steps, "final_val_loss": out.get("val_loss"),
      "best_val_loss": min(vals) if vals else out.get("val_loss"),
      "final_train_loss": out.get("train_loss"),
      "val_curve": [[r["step"], r["val_loss"]] for r in records if r.get("val_loss") is not None],
      **{k: out[k] for k in ("a_rel_change_mean", "b_norm_mean", "a_captured", "a_blocks",
                             "a_capture_step_max", "trainable_bytes", "opt_state_bytes",
                             "params_bytes", "num_params") if k in out},
      "wall_time_s": time.perf_counter() - t0,
  }


def state_memory(config: configs.LoRAConfig, base: dict) -> list[dict[str, Any]]:
  """Optimizer-state bytes, full fine-tuning vs LoRA, for AdamW and sgd_sai (shapes only)."""
  rows = []
  for rank in (0, config.rank):
    for optimizer in ("adamw", "sgd_sai"):
      cfg = dataclasses.replace(config, rank=rank)
      task = lora_train.build_task(cfg, optimizer, base=base)
      rows.append({"rank": rank, "optimizer": optimizer, **lora_train.state_bytes(task)})
  return rows


def base_val_loss(config: configs.LoRAConfig, base: dict) -> float:
  """The base model's validation loss on the fine-tuning data (before any fine-tuning)."""
  task = lora_train.build_task(dataclasses.replace(config, rank=0), "adamw", base=base)
  model = task.make_model(nnx.Rngs(0))
  step = nnx.jit(task.eval_fn)
  sums = [jax.device_get(step(model, b)) for b in task.eval_batches()]
  return float(sum(s["loss"] for s in sums) / sum(s["count"] for s in sums))


def lr_grid(arm: str, done: dict[float, float]) -> list[float]:
  """The arm's grid, extended (one step of the grid's ratio) past an edge holding the best."""
  grid = sorted(GRID[arm][2])
  ratio = grid[1] / grid[0]
  for _ in range(MAX_EXTENSIONS):
    if not all(lr in done for lr in grid):
      break
    best = min(grid, key=lambda lr: done[lr])
    if best == grid[0]:
      grid.insert(0, float(f"{grid[0] / ratio:.3g}"))
    elif best == grid[-1]:
      grid.append(float(f"{grid[-1] * ratio:.3g}"))
    else:
      break
  return grid


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
  a = np.asarray(xs, float)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def report(out: Path) -> dict[str, Any]:
  """Rebuilds ``table.md`` and ``summary.json`` from ``out/cells/*.json``."""
  cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
  arms: dict[str, dict[float, list[dict]]] = {}
  for c in cells:
    arms.setdefault(c["arm"], {}).setdefault(c["lr"], []).append(c)
  summary: dict[str, Any] = {"arms": {}}
  lines = ["| arm | optimizer | trainable | lr grid (mean final val loss) | best lr | "
           "best val loss (mean ± sd) | seeds | A captured at step | A moved ‖ΔA‖/‖A₀‖ |",
           "|---|---|---|---|---|---:|---:|---:|---:|"]
  for arm in GRID:
    if arm not in arms:
      continue
    by_lr = arms[arm]
    means = {lr: _mean_sd([c["final_val_loss"] for c in cs])[0] for lr, cs in by_lr.items()}
    best = min(means, key=means.get)
    cs = by_lr[best]
    mean, sd = _mean_sd([c["final_val_loss"] for c in cs])
    grid = ", ".join(f"{lr:g}: {means[lr]:.3f}" for lr in sorted(means))
    inside = min(means) < best < max(means)
    cap = sorted({c.get("a_capture_step_max") for c in cs} - {None})
    cap_txt = ("never" if cap == [-1] else ", ".join(str(x) for x in cap)) if cap else "n/a"
    moved = [c["a_rel_change_mean"] for c in cs if "a_rel_change_mean" in c]
    moved_txt = f"{np.mean(moved):.3g}" if moved else "n/a"
    trainable = cs[0].get("num_params")
    sd_txt = f" ± {sd:.3f}" if not math.isnan(sd) else ""
    lines.append(f"| {arm} | {cs[0]['optimizer']} | {trainable:,} | {grid} | {best:g}"
                 f"{'' if inside else ' (edge)'} | {mean:.3f}{sd_txt} | "
                 f"{', '.join(str(c['seed']) for c in cs)} | {cap_txt} | {moved_txt} |")
    summary["arms"][arm] = {"best_lr": best, "best_inside_grid": inside, "final_val_loss": mean,
                            "sd": sd, "seeds": [c["seed"] for c in cs], "grid": means,
                            "a_capture_step_max": cap, "a_rel_change_mean": moved}
  mem_path = out / "memory.json"
  if mem_path.exists():
    mem = json.loads(mem_path.read_text())
    summary["memory"] = mem
    lines += ["", "| fine-tuning | optimizer | trainable params (bytes) | optimizer state "
              "(bytes) | state / full-FT AdamW state |", "|---|---|---:|---:|---:|"]
    ref = next(r["opt_state_bytes"] for r in mem if r["rank"] == 0 and r["optimizer"] == "adamw")
    for r in mem:
      kind = "full" if r["rank"] == 0 else f"LoRA r={r['rank']}"
      lines.append(f"| {kind} | {r['optimizer']} | {r['trainable_bytes']:,} | "
                   f"{r['opt_state_bytes']:,} | {r['opt_state_bytes'] / ref:.2%} |")
  head = ["| fine-tuning (100 steps) | best lr | final val loss | seeds | A captured at step "
          "| ‖ΔA‖/‖A₀‖ | optimizer state |", "|---|---:|---:|---:|---:|---:|---:|"]
  state_of = {(r["rank"], r["optimizer"]): r["opt_state_bytes"]
         for r in summary.get("memory", [])}
  for arm, a in summary["arms"].items():
    optimizer, rank, _ = GRID[arm]
    sd = f" ± {a['sd']:.3f}" if not math.isnan(a["sd"]) else ""
    cap = a["a_capture_step_max"]
    cap_txt = ("never" if cap == [-1] else ", ".join(map(str, cap))) if cap else "n/a"
    moved = f"{np.mean(a['a_rel_change_mean']):.3g}" if a["a_rel_change_mean"] else "n/a"
    state = (f"{state_of[(rank, optimizer)] / 1e6:.2f} MB" if (rank, optimizer) in state_of
             else "n/a")
    head.append(f"| {arm} | {a['best_lr']:g} | {a['final_val_loss']:.3f}{sd} | "
                f"{len(a['seeds'])} | {cap_txt} | {moved} | {state} |")
  (out / "headline.md").write_text("\n".join(head) + "\n")
  base_path = out / "base.json"
  if base_path.exists():
    base = json.loads(base_path.read_text())
    summary["base"] = base
    lines = [f"Base model before fine-tuning: val loss {base['val_loss_before_finetuning']:.3f} "
             "on the fine-tuning data.", "", *lines]
  (out / "table.md").write_text("\n".join(lines) + "\n")
  (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
  return summary


def _finished(out: Path, arm: str) -> dict[float, float]:
  """Mean final val loss per lr over the arm's finished cells (all seeds)."""
  by_lr: dict[float, list[float]] = {}
  for p in (out / "cells").glob(f"{arm}_lr*.json"):
    c = json.loads(p.read_text())
    if c["arm"] == arm:
      by_lr.setdefault(c["lr"], []).append(c["final_val_loss"])
  return {lr: float(np.mean(v)) for lr, v in by_lr.items()}


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="examples/lora/results")
  p.add_argument("--seeds", default="0", help="comma-separated")
  p.add_argument("--arms", default=",".join(GRID), help="comma-separated subset of the grid")
  p.add_argument("--steps", type=int, help="override the config's steps")
  p.add_argument("--workdirs", default=None,
                 help="keep each run's workdir here (default: none; cells only)")
  p.add_argument("--report-only", action="store_true")
  p.add_argument("--readme", nargs="*", default=(),
                 help="markdown files whose lora-table / lora-headline markers get table.md "
                 "/ headline.md")
  args = p.parse_args(argv)
  out = Path(args.out)
  (out / "cells").mkdir(parents=True, exist_ok=True)
  if not args.report_only:
    config = configs.get_config("tiny")
    if args.steps:
      config = dataclasses.replace(config, steps=args.steps)
    base, source = lora_train.ensure_base(config)
    if not (out / "memory.json").exists():
      (out / "memory.json").write_text(json.dumps(state_memory(config, base), indent=1) + "\n")
    if not (out / "base.json").exists():
      (out / "base.json").write_text(json.dumps(
          {"base": source, "val_loss_before_finetuning": base_val_loss(config, base)}) + "\n")
    for seed in (int(s) for s in args.seeds.split(",")):
      for arm in args.arms.split(","):
        while True:
          done = _finished(out, arm)
          todo = [lr for lr in lr_grid(arm, done) if not (
              out / "cells" / f"{cell_name(arm, lr, seed)}.json").exists()]
          if not todo:
            break
          lr = todo[0]
          path = out / "cells" / f"{cell_name(arm, lr, seed)}.json"
          workdir = Path(args.workdirs) / path.stem if args.workdirs else None
          cell = run_cell(arm, lr, seed, config, base, workdir)
          cell["base"] = source
          path.write_text(json.dumps(cell) + "\n")
          print(f"{path.stem}: val {cell['final_val_loss']:.4f} "
                f"({cell['wall_time_s']:.0f} s)", flush=True)
          report(out)
  report(out)
  table = (out / "table.md").read_text()
  for readme in map(Path, args.readme):
    text = readme.read_text()
    for marker, fname in (("lora-table", "table.md"), ("lora-headline", "headline.md")):
      begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
      if begin in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = f"{head}{begin}\n{(out / fname).read_text()}{end}{tail}"
    readme.write_text(text)
  print(table)


if __name__ == "__main__":
  main()

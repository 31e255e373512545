"""What the LoRA example gives the study engine (``benchmarks.study``, model ``lora``).

* :func:`cell_fields`, logged with every cell: what was trained, its bytes and its optimizer
  state's (shapes only), how far A moved and when sgd_sai captured it, and the base model's
  val loss on the fine-tuning data.
* :func:`report_section`: LoRA's section of the study's ``table.md``, from those fields.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from examples.common import training
from examples.lora import train as lora_train

_BASE_LOSSES: dict[tuple[Any, ...], float] = {}


def base_val_loss(task: training.Task) -> float:
  """The val loss of the task's model before fine-tuning: the base's (with ``B = 0`` the
  adapted model computes the base's function). Computed once per base and data."""
  cfg = task.config
  key = (cfg.base_checkpoint or str(lora_train.base_workdir(cfg)), cfg.dataset, cfg.data_dir,
         cfg.block_size, cfg.batch_size, cfg.eval_batches)
  if key not in _BASE_LOSSES:
    model = task.make_model(nnx.Rngs(cfg.seed))
    step = nnx.jit(task.eval_fn)
    sums = [jax.device_get(step(model, batch)) for batch in task.eval_batches()]
    _BASE_LOSSES[key] = float(sum(s["loss"] for s in sums) / sum(s["count"] for s in sums))
  return _BASE_LOSSES[key]


def cell_fields(task: training.Task, params: Any, opt_state: Any) -> dict[str, Any]:
  """One fine-tuned cell's LoRA facts (``Model.cell_fields`` of the ``lora`` model).

  Args:
    task: the cell's task (``examples.lora.train.build_task``).
    params: its trained parameters (``task.trainable``).
    opt_state: its final optimizer state.

  Returns:
    ``rank`` (0: full fine-tuning), ``base_val_loss`` (:func:`base_val_loss`), the
    :func:`~examples.lora.train.state_bytes` and, with adapters, the
    :func:`~examples.lora.train.adapter_summary` (``a_rel_change_mean``, ``b_norm_mean``;
    under sgd_sai ``a_captured`` of ``a_blocks`` and ``a_capture_step_max``, -1 unless
    every A block was captured).
  """
  fields = {"rank": task.config.rank, "base_val_loss": base_val_loss(task),
            **lora_train.state_bytes(task)}
  if task.config.rank > 0:
    fields.update(lora_train.adapter_summary(
        lora_train.adapter_blocks(task, params, opt_state)))
  return fields


def _captured(row: dict[str, Any]) -> str:
  """When a cell's A blocks were captured: ``2``, ``never``, ``5/16``, or ``—`` (not sgd_sai)."""
  if "a_captured" not in row:
    return "—"
  if row["a_captured"] == 0:
    return "never"
  if row["a_captured"] < row["a_blocks"]:
    return f"{row['a_captured']}/{row['a_blocks']}"
  return str(row["a_capture_step_max"])


def report_section(study: Any, analysis: dict[str, Any], rows: Sequence[dict[str, Any]]
                   ) -> tuple[list[str], dict[str, Any]]:
  """LoRA's section of a study report (``Model.report_section`` of the ``lora`` model).

  Args:
    study: the :class:`benchmarks.study.spec.Spec` (its ``optimizers`` and ``arm``).
    analysis: :func:`benchmarks.study.analysis.analyse` of ``rows``.
    rows: the logged cells, with the :func:`cell_fields`.

  Returns:
    ``table.md`` lines (the base's val loss; per stage and arm at its best learning rate,
    over its seeds there: what it trains, the trainable and optimizer-state bytes, the
    state as a share of full fine-tuning with AdamW's, when A was captured, how far A
    moved) and the same facts for ``summary.json``.
  """
  base = sorted({round(r["base_val_loss"], 6) for r in rows if "base_val_loss" in r})
  lines = ["", "LoRA, per arm at its best learning rate (over its seeds there): what it "
           "trains; bytes of the trained parameters and of the optimizer state (shapes "
           "only), the state as a share of full fine-tuning with AdamW's; the step at which "
           "sgd_sai captured every A block (per seed; `never`: A was pinned); how far A "
           "moved, ‖A_T − A_0‖_F / ‖A_0‖_F (mean over blocks and seeds).",
           "", f"Base model before fine-tuning: val loss "
           f"{', '.join(f'{x:.3f}' for x in base) or '—'} on the fine-tuning data.", "",
           "| steps | width | arm | trains | trainable bytes | optimizer state bytes | "
           "/ full-FT AdamW | A captured at step | A moved |",
           "|---|---|---|---|---|---|---|---|---|"]
  facts: dict[str, Any] = {"base_val_loss": base, "stages": []}
  for st in analysis["stages"]:
    mine = [r for r in rows if (r["budget"], r["width"]) == (st["budget"], st["width"])]
    full = [r["opt_state_bytes"] for r in mine if r.get("rank") == 0
            and study.arm(r["optimizer"]).optimizer == "adamw"]
    arms: dict[str, Any] = {}
    for key in study.optimizers:
      info = st["optimizers"].get(key) or {}
      best = [r for r in mine if r["optimizer"] == key and r["lr"] == info.get("best_lr")
              and r["seed"] in info["seeds"] and r["wd"] == info.get("best_wd", r["wd"])]
      if not best:
        continue
      moved = [r["a_rel_change_mean"] for r in best if "a_rel_change_mean" in r]
      arm = {"rank": best[0]["rank"], "trainable_bytes": best[0]["trainable_bytes"],
             "opt_state_bytes": best[0]["opt_state_bytes"],
             "state_share_of_full_adamw": best[0]["opt_state_bytes"] / full[0] if full else None,
             "a_captured_at": [_captured(r) for r in best],
             "a_rel_change_mean": statistics.fmean(moved) if moved else None}
      arms[key] = arm
      share = arm["state_share_of_full_adamw"]
      lines.append(
          f"| {st['budget']} | {st['width']} | {info['label']} | "
          + ("all parameters" if arm["rank"] == 0 else f"adapters, rank {arm['rank']}")
          + f" | {arm['trainable_bytes']:,} | {arm['opt_state_bytes']:,} | "
          + ("—" if share is None else f"{share:.2%}") + " | "
          + ", ".join(dict.fromkeys(arm["a_captured_at"])) + " | "
          + ("—" if arm["a_rel_change_mean"] is None else f"{arm['a_rel_change_mean']:.3g}")
          + " |")
    if arms:
      facts["stages"].append({"budget": st["budget"], "width": st["width"], "arms": arms})
  return lines, facts

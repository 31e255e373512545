"""Runs a study: every stage's missing cells, cheapest stage first, logged as they finish."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._report import host_line
from benchmarks.study import backends, log, planner
from benchmarks.study.spec import Spec, cell_id


def run_study(spec: Spec, out: Path, *, optimizers: Sequence[str] | None = None,
              budgets: Sequence[int] | None = None, widths: Sequence[int] | None = None,
              command: str = "", log_fn: Callable[[str], None] = print,
              after_group: Callable[[], None] | None = None) -> dict[str, int]:
  """Trains the missing cells of ``spec`` (restricted to the given optimizers, budgets and
  widths, if any), appending each group's cells to the log; returns the counts.

  Args:
    spec: the study.
    out: its results folder (``cells.jsonl`` and ``_partial/``).
    optimizers, budgets, widths: run only these (the report still covers everything).
    command: recorded in ``runs.jsonl`` once this run has logged a cell (provenance).
    log_fn: where progress lines go.
    after_group: called after each logged group (the CLI rewrites the report).
  """
  out.mkdir(parents=True, exist_ok=True)
  (out / "_partial").mkdir(exist_ok=True)
  trained = groups = 0
  started = time.strftime("%Y-%m-%d %H:%M:%S")
  for budget, width in spec.stage_list():
    if (budgets and budget not in budgets) or (widths and width not in widths):
      continue
    for key in optimizers or spec.optimizers:
      while True:
        state = planner.grid_state(spec, log.read_cells(out), budget, width, key)
        if not state["next"]:
          break
        lrs = [planner.learning_rate(spec, width, key, k) for k, _, _ in state["next"]]
        members = [(lr, planner.weight_decay(spec, width, key, j, lr), s)
                   for lr, (_, j, s) in zip(lrs, state["next"], strict=True)]
        phase = "seeds" if any(s for _, _, s in state["next"]) else (
            "grid" if all(k in spec.lr_ks and j in spec.wd_ks for k, j, _ in state["next"])
            else "extend")
        name = hashlib.sha1(repr((budget, width, key, state["next"])).encode()).hexdigest()
        log_fn(f"[{budget} steps, {spec.axis_name} {width}] {key} {phase}: "
               + ", ".join(f"lr {lr:g} wd {wd:g} seed {s}" for lr, wd, s in members))
        results = backends.train_cells(spec, budget, width, key, members,
                                       partial=out / "_partial" / name[:12], log_fn=log_fn)
        extra = ({"normaliser": backends.normaliser(spec, width)}
                 if planner.lr_divisor(spec, width, key) != 1.0 else {})
        rows = []
        for (k, j, seed), res in zip(state["next"], results, strict=True):
          rows.append({"id": cell_id(budget, width, key, k, j, seed),
                       "budget": budget, "width": width, "optimizer": key, "k": k, "j": j,
                       "phase": phase, **res, **extra,
                       "load_average": [round(x, 2) for x in os.getloadavg()],
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        if groups == 0:
          log.append_run(out, {"command": command, "host": host_line(),
                               "started": started})
        log.append_cells(out, rows)
        trained += len(rows)
        groups += 1
        log_fn("  " + "; ".join(f"lr {r['lr']:g} s{r['seed']}: val {r['val_loss']}"
                                for r in rows) + f" ({results[0]['group_wall_s']:.0f} s)")
        if after_group is not None:
          after_group()
  return {"trained": trained, "groups": groups}

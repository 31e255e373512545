"""Step time of the jitted optimizer step on the examples' parameter trees.

    python -m benchmarks.step_time                         # GPT-2 124M and ViT-S/16
    python -m benchmarks.step_time --models gpt2-medium,vit-b16 --rounds 7

For every model, each optimizer's step (``tx.update`` + ``optax.apply_updates``,
parameters and state donated) is compiled ahead of time (timed), run once from a fresh
state (timed: for sgd_sai this is the g-SNR capture) and then timed over interleaved
rounds, together with an elementwise pass ``p + a * g`` over the same tree that measures
the machine's usable memory bandwidth. Reported: median and inter-quartile range of the
step, per-round ratios to AdamW and to SGD with momentum, and the achieved bandwidth
(bytes the step must move / step time) as a fraction of the elementwise pass's.

Writes ``step_time.md``, ``step_time.json``, ``step_time.png`` and ``bandwidth.png`` to
``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from benchmarks import _report as report
from benchmarks import _tables as tables
from benchmarks import _timing as timing
from benchmarks import _trees as trees

DEFAULT_MODELS = ("gpt2", "vit-s16")
DEFAULT_OPTIMIZERS = (*tables.BENCHMARK_OPTIMIZERS, "sgdm_wd")
REFERENCES = ("adamw", "sgdm", "sgdm_wd")


@dataclasses.dataclass
class Row:
  """One optimizer's results on one model."""

  model: str
  optimizer: str
  median_s: float
  q1_s: float
  q3_s: float
  samples: int
  ratios: dict[str, list[float]]  # reference optimizer -> per-round ratios
  bytes_per_step: int
  tree_sizes: float  # bytes per step / parameter bytes
  achieved_gbps: float
  bandwidth_fraction: float
  compile_s: float
  first_step_s: float

  def ratio(self, ref: str) -> float:
    """Median of the per-round ratios to ``ref`` (nan when ``ref`` was not run)."""
    vals = self.ratios.get(ref, [])
    return statistics.median(vals) if vals else math.nan

  def ratio_iqr(self, ref: str) -> tuple[float, float]:
    """Quartiles of the per-round ratios to ``ref``."""
    s = timing.Summary.of(self.ratios.get(ref, []))
    return s.q1, s.q3


@dataclasses.dataclass
class ModelResult:
  """All optimizers on one model, and the bandwidth limit measured alongside them."""

  model: str
  params: int
  param_bytes: int
  leaves: int
  limit_gbps: float
  limit_median_s: float
  rows: list[Row]


def _resident_bytes(abstract: Any, optimizers: Sequence[str]) -> int:
  """Bytes held when every optimizer keeps its parameters and state alive at once."""
  total = 3 * trees.tree_nbytes(abstract)  # gradients, and the probe's two trees
  for name in optimizers:
    total += trees.tree_nbytes(abstract) + trees.tree_nbytes(
        trees.abstract_state(tables.make_optimizer(name), abstract))
  return total


def run_model(model: str, optimizers: Sequence[str], rounds: int, steps: int,
              abstract: Any | None = None, low_memory: bool | None = None,
              first_repeats: int = 3, log: Callable[[str], None] = print) -> ModelResult:
  """Benchmarks ``optimizers`` on one model's parameter tree.

  Args:
    model: a key of :data:`benchmarks._tables.SIZES` (used to build the tree unless
      ``abstract`` is given, and as the label).
    optimizers: registry names.
    rounds: interleaved rounds.
    steps: timed steps per optimizer per round.
    abstract: an abstract parameter tree to use instead of the model's.
    low_memory: rebuild each optimizer's buffers per round (one optimizer resident at a
      time); ``None`` decides from the memory available.
    first_repeats: extra fresh starts timed for the first step (the reported first step
      is the median over all of them; see :func:`benchmarks._timing.time_first_steps`).
    log: where progress lines go.

  Returns:
    The :class:`ModelResult`.
  """
  abstract = tables.abstract_params(model) if abstract is None else abstract
  param_bytes = trees.tree_nbytes(abstract)
  if low_memory is None:
    avail = timing.available_memory_bytes()
    low_memory = avail is not None and _resident_bytes(abstract, optimizers) > 0.6 * avail
  log(f"{model}: {trees.tree_size(abstract) / 1e6:.1f}M parameters, "
      f"{len(jax.tree.leaves(abstract))} leaves, {report.fmt_bytes(param_bytes)}"
      + (" (low-memory mode)" if low_memory else ""))
  grads = trees.materialise(abstract, seed=100)
  probe = timing.elementwise_runner(abstract, grads)
  runners = [probe]
  for name in optimizers:
    r = timing.optimizer_runner(name, abstract, grads, seed=1)
    log(f"  compiled {name} in {r.compile_s:.2f} s")
    runners.append(r)
  if not low_memory:
    for r in runners:
      r.ensure()
  timing.interleave(runners, rounds=rounds, steps=steps, low_memory=low_memory, log=log)
  timing.time_first_steps(runners[1:], repeats=first_repeats)

  limit_s = statistics.median(probe.samples)
  limit_gbps = trees.elementwise_bytes(abstract) / limit_s / 1e9
  by_name = {r.name: r for r in runners}
  rows = []
  for r in runners[1:]:
    summary = timing.Summary.of(r.samples)
    nbytes = trees.step_bytes(tables.make_optimizer(r.name), abstract).total
    gbps = nbytes / summary.median / 1e9
    ratios = {ref: timing.round_ratios(r, by_name[ref]) for ref in REFERENCES if ref in by_name}
    rows.append(Row(
        model=model, optimizer=r.name, median_s=summary.median, q1_s=summary.q1,
        q3_s=summary.q3, samples=summary.n, ratios=ratios, bytes_per_step=nbytes,
        tree_sizes=nbytes / param_bytes, achieved_gbps=gbps,
        bandwidth_fraction=gbps / limit_gbps, compile_s=r.compile_s,
        first_step_s=r.first_s))
  for r in runners:
    r.release()
  del runners, probe, grads
  gc.collect()
  return ModelResult(model=model, params=trees.tree_size(abstract), param_bytes=param_bytes,
                     leaves=len(jax.tree.leaves(abstract)), limit_gbps=limit_gbps,
                     limit_median_s=limit_s, rows=rows)


def _fmt_ratio(row: Row, ref: str) -> str:
  if ref not in row.ratios or not row.ratios[ref]:
    return "-"
  q1, q3 = row.ratio_iqr(ref)
  return f"{row.ratio(ref):.2f} [{q1:.2f}, {q3:.2f}]"


def markdown(results: Sequence[ModelResult], machine: str, rounds: int, steps: int) -> str:
  """The results as Markdown: one table per model, then the one-time costs."""
  out = [
      "## Optimizer step time",
      "",
      f"Measured on: {machine}.",
      f"{rounds} interleaved rounds x {steps} steps per optimizer; median [IQR] in ms; "
      "ratios are medians [IQR] of per-round ratios. Bytes/step counts what the step must "
      "move (read gradient, parameters and state; write parameters and changed state), in "
      "parameter-tree sizes; bandwidth is that over the median time, as a fraction of an "
      "elementwise `p + a*g` pass over the same tree timed in the same rounds.",
  ]
  for res in results:
    out += ["", f"### {tables.MODEL_LABELS.get(res.model, res.model)} "
            f"({res.params / 1e6:.1f}M parameters, {res.leaves} leaves, "
            f"{report.fmt_bytes(res.param_bytes)}; elementwise limit "
            f"{res.limit_gbps:.1f} GB/s)", ""]
    out.append(report.markdown_table(
        ["optimizer", "step ms", "/ adamw", "/ sgdm", "bytes/step (trees)", "GB/s",
         "of limit"],
        [[tables.OPTIMIZER_LABELS.get(r.optimizer, r.optimizer),
          f"{1e3 * r.median_s:.1f} [{1e3 * r.q1_s:.1f}, {1e3 * r.q3_s:.1f}]",
          _fmt_ratio(r, "adamw"), _fmt_ratio(r, "sgdm"),
          f"{report.fmt_bytes(r.bytes_per_step)} ({r.tree_sizes:.2f})",
          f"{r.achieved_gbps:.1f}", f"{r.bandwidth_fraction:.2f}"] for r in res.rows]))
  out += ["", "### One-time costs (compile, and the first step from a fresh state, median "
          "over fresh starts of the warm executable; for sgd_sai the first step is the g-SNR "
          "capture)", ""]
  out.append(report.markdown_table(
      ["model", "optimizer", "compile s", "first step ms", "first / steady"],
      [[tables.MODEL_LABELS.get(r.model, r.model),
        tables.OPTIMIZER_LABELS.get(r.optimizer, r.optimizer),
        f"{r.compile_s:.2f}", f"{1e3 * r.first_step_s:.1f}",
        f"{r.first_step_s / r.median_s:.2f}"] for res in results for r in res.rows]))
  out += ["", targets(results)]
  return "\n".join(out) + "\n"


def targets(results: Sequence[ModelResult]) -> str:
  """The issue's step-time targets, checked on every model that has the rows."""
  lines = ["### Targets", ""]
  for res in results:
    rows = {r.optimizer: r for r in res.rows}
    if "sgd_sai" not in rows:
      continue
    sai = rows["sgd_sai"]
    label = tables.MODEL_LABELS.get(res.model, res.model)
    checks = []
    if "sgdm" in rows:
      v = sai.ratio("sgdm")
      checks.append(f"sgd_sai / sgdm = {v:.3f} (<= 1.05: {'met' if v <= 1.05 else 'NOT met'})")
    if "sgdm_wd" in rows:
      checks.append(f"sgd_sai / (sgd momentum + decay, same arithmetic) = "
                    f"{sai.ratio('sgdm_wd'):.3f}")
    if "adamw" in rows:
      v = sai.ratio("adamw")
      checks.append(f"sgd_sai / adamw = {v:.3f} (<= 0.80: {'met' if v <= 0.80 else 'NOT met'};"
                    f" byte ratio {sai.bytes_per_step / rows['adamw'].bytes_per_step:.3f})")
    v = sai.bandwidth_fraction
    checks.append(f"bandwidth {v:.3f} of limit (>= 0.70: {'met' if v >= 0.70 else 'NOT met'})")
    v = sai.first_step_s / sai.median_s
    checks.append(f"first (capture) / steady = {v:.2f} (<= 2: {'met' if v <= 2 else 'NOT met'})")
    lines.append(f"- {label}: " + "; ".join(checks))
  return "\n".join(lines)


def plots(results: Sequence[ModelResult], out_dir: str) -> list[str]:
  """``step_time.png`` (ratio to AdamW) and ``bandwidth.png`` (fraction of the limit)."""
  ratio = {res.model: {r.optimizer: r.ratio("adamw") for r in res.rows} for res in results}
  ratio_err = {res.model: {r.optimizer: r.ratio_iqr("adamw") for r in res.rows}
               for res in results}
  frac = {res.model: {r.optimizer: r.bandwidth_fraction for r in res.rows} for res in results}
  p1 = os.path.join(out_dir, "step_time.png")
  p2 = os.path.join(out_dir, "bandwidth.png")
  report.bar_plot(p1, ratio, ratio_err, "step time / adamw (per-round median, IQR)",
             "Optimizer step time relative to optax.adamw", hline=1.0)
  report.bar_plot(p2, frac, None, "achieved / elementwise bandwidth",
             "Achieved memory bandwidth (fraction of p + a*g pass)", hline=0.7)
  return [p1, p2]


def to_json(results: Sequence[ModelResult], machine: str) -> dict[str, Any]:
  """A JSON-serialisable record (read by ``benchmarks.memory`` for its growth table)."""
  return {"machine": machine, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
          "models": [dataclasses.asdict(r) for r in results]}


def from_json(record: dict[str, Any]) -> list[ModelResult]:
  """Rebuilds the results of a previous run from its ``step_time.json``."""
  results = []
  for m in record["models"]:
    rows = [Row(**r) for r in m["rows"]]
    results.append(ModelResult(**{**m, "rows": rows}))
  return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = report.benchmark_parser(__doc__, DEFAULT_MODELS, DEFAULT_OPTIMIZERS, rounds=7)
  p.add_argument("--steps", type=int, default=1, help="timed steps per optimizer per round")
  p.add_argument("--first-repeats", type=int, default=3,
                 help="extra fresh starts timed for the first (capture) step")
  p.add_argument("--low-memory", choices=("auto", "on", "off"), default="auto",
                 help="one optimizer's buffers resident at a time (auto: if they don't fit)")
  p.add_argument("--from-json", default=None,
                 help="re-render the tables and plots of a previous step_time.json (no timing)")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[ModelResult]:
  """Runs the benchmark, prints the Markdown and writes the results folder."""
  args = parse_args(argv)
  models, optimizers = report.names(args.models), report.names(args.optimizers)
  low_memory = {"auto": None, "on": True, "off": False}[args.low_memory]
  if args.from_json:
    with open(args.from_json) as f:
      record = json.load(f)
    machine, results = record["machine"], from_json(record)
    args.rounds = max(len(r.ratios.get("adamw", [])) for res in results for r in res.rows)
    args.steps = max(r.samples for res in results for r in res.rows) // max(args.rounds, 1)
  else:
    machine = report.machine_description()
    results = [run_model(m, optimizers, args.rounds, args.steps, low_memory=low_memory,
                         first_repeats=args.first_repeats, log=report.log_line)
               for m in models]
  text = markdown(results, machine, args.rounds, args.steps)
  # Re-rendering from the record keeps the record as it was.
  report.write_results(args.out, "step_time", text,
                       None if args.from_json else to_json(results, machine))
  plots(results, args.out)
  print(text)
  return results


if __name__ == "__main__":
  main()

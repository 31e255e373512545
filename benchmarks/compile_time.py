"""Compile time and compiled scratch of the jitted optimizer step.

    python -m benchmarks.compile_time                      # GPT-2 124M and ViT-S/16
    python -m benchmarks.compile_time --models gpt2 --rounds 5

For every model and optimizer, the donated step of ``benchmarks.step_time``
(``tx.update`` + ``optax.apply_updates``) is lowered from abstract trees (tracing and
lowering to StableHLO, timed) and compiled (timed), in interleaved rounds with JAX's caches
cleared before each, so that a loaded machine slows every optimizer alike; ratios to AdamW
are medians of per-round ratios. The compiled step's scratch (``temp_size_in_bytes`` of its
memory analysis: temporaries beyond arguments and outputs) is reported as a fraction of the
parameters' bytes. The first (capture) step against a steady step is measured by
``benchmarks.step_time``.

Writes ``compile_time.md`` and ``compile_time.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
DEFAULT_OPTIMIZERS = ("sgd_sai", "sgd_sai_bf16", "adamw", "sgdm", "sgdm_bf16")
# The goals: compile at most 2x AdamW's, scratch at most 1% of the parameters.
COMPILE_RATIO_GOAL = 2.0
SCRATCH_FRACTION_GOAL = 0.01


@dataclasses.dataclass
class CompileRow:
  """One optimizer's one-time costs on one model, over all rounds."""

  model: str
  optimizer: str
  lower_s: list[float]
  compile_s: list[float]
  cpu_s: list[float]  # process CPU seconds of lowering + compiling (less load-sensitive)
  temp_bytes: int
  param_bytes: int
  ratios: list[float]  # per-round (lower + compile) / AdamW's, wall clock
  cpu_ratios: list[float]  # per-round CPU seconds / AdamW's

  @property
  def total_s(self) -> float:
    return statistics.median(a + b for a, b in zip(self.lower_s, self.compile_s, strict=True))

  @property
  def ratio(self) -> float:
    return statistics.median(self.ratios) if self.ratios else float("nan")

  @property
  def cpu_ratio(self) -> float:
    return statistics.median(self.cpu_ratios) if self.cpu_ratios else float("nan")

  @property
  def scratch_fraction(self) -> float:
    return self.temp_bytes / self.param_bytes


def lower_and_compile(name: str, abstract: Any) -> tuple[float, float, float, int]:
  """Lowers and compiles one optimizer's step from a cold cache.

  Returns:
    (lowering wall s, compile wall s, CPU s of both, scratch bytes or -1).
  """
  jax.clear_caches()
  tx = tables.make_optimizer(name)
  step = timing.make_step(tx)
  c0 = time.process_time()
  t0 = time.perf_counter()
  state = trees.abstract_state(tx, abstract)
  lowered = step.lower(abstract, state, abstract)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  cpu = time.process_time() - c0
  analysis = compiled.memory_analysis()
  temp = -1 if analysis is None else int(analysis.temp_size_in_bytes)
  return t1 - t0, t2 - t1, cpu, temp


def run_model(model: str, optimizers: Sequence[str], rounds: int,
              log: Callable[[str], None] = print) -> list[CompileRow]:
  """Interleaved rounds of lowering + compiling every optimizer's step on one model."""
  abstract = tables.abstract_params(model)
  param_bytes = trees.tree_nbytes(abstract)
  samples: dict[str, list[tuple[float, float, float, int]]] = {o: [] for o in optimizers}
  for rnd in range(rounds):
    k = rnd % len(optimizers)
    for name in list(optimizers[k:]) + list(optimizers[:k]):
      samples[name].append(lower_and_compile(name, abstract))
    log(f"  {model} round {rnd + 1}/{rounds}: " + ", ".join(
        f"{o} {s[-1][0]:.2f}+{s[-1][1]:.2f} s" for o, s in samples.items()))
  rows = []
  for name, s in samples.items():
    totals = [a + b for a, b, _, _ in s]
    ratios = ([t / (a + b) for t, (a, b, _, _) in zip(totals, samples["adamw"], strict=True)]
              if "adamw" in samples else [])
    cpu_ratios = ([x[2] / y[2] for x, y in zip(s, samples["adamw"], strict=True)]
                  if "adamw" in samples else [])
    rows.append(CompileRow(model=model, optimizer=name, lower_s=[x[0] for x in s],
                           compile_s=[x[1] for x in s], cpu_s=[x[2] for x in s],
                           temp_bytes=s[0][3], param_bytes=param_bytes, ratios=ratios,
                           cpu_ratios=cpu_ratios))
  return rows


def markdown(rows: Sequence[CompileRow], machine: str, rounds: int) -> str:
  """The results as a Markdown table, then the goals."""
  out = ["## Compile time and scratch of the optimizer step", "",
         f"Measured on: {machine}. {rounds} interleaved rounds, caches cleared before each "
         "lowering; medians in seconds. Lowering includes tracing; the ratio is the median "
         "of per-round (lowering + compile) ratios to `optax.adamw`, in wall-clock and in "
         "process CPU seconds (the latter less sensitive to other jobs on a shared machine). "
         "Scratch is the compiled "
         "step's temporary buffers (`memory_analysis().temp_size_in_bytes`), parameters and "
         "state donated.", ""]
  out.append(report.markdown_table(
      ["model", "optimizer", "lower s", "compile s", "total s", "/ adamw", "CPU s",
       "CPU / adamw", "scratch", "scratch / params"],
      [[tables.MODEL_LABELS.get(r.model, r.model),
        tables.OPTIMIZER_LABELS.get(r.optimizer, r.optimizer),
        f"{statistics.median(r.lower_s):.2f}", f"{statistics.median(r.compile_s):.2f}",
        f"{r.total_s:.2f}", f"{r.ratio:.2f}", f"{statistics.median(r.cpu_s):.2f}",
        f"{r.cpu_ratio:.2f}", report.fmt_bytes(r.temp_bytes) if r.temp_bytes >= 0 else "-",
        f"{r.scratch_fraction:.4f}" if r.temp_bytes >= 0 else "-"] for r in rows]))
  out += ["", "### Goals", ""]
  for r in rows:
    if not r.optimizer.startswith("sgd_sai"):
      continue
    label = (f"{tables.MODEL_LABELS.get(r.model, r.model)}, "
             f"{tables.OPTIMIZER_LABELS.get(r.optimizer, r.optimizer)}")
    met_c = "met" if max(r.ratio, r.cpu_ratio) <= COMPILE_RATIO_GOAL else "NOT met"
    met_s = "met" if 0 <= r.scratch_fraction <= SCRATCH_FRACTION_GOAL else "NOT met"
    out.append(f"- {label}: compile / adamw = {r.ratio:.2f} wall, {r.cpu_ratio:.2f} CPU "
               f"(<= {COMPILE_RATIO_GOAL:g}: {met_c}); scratch / params = {r.scratch_fraction:.4f} "
               f"(<= {SCRATCH_FRACTION_GOAL:g}: {met_s})")
  return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = report.benchmark_parser(__doc__, DEFAULT_MODELS, DEFAULT_OPTIMIZERS, rounds=3,
                         optimizers_note="; include adamw for the ratios")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[CompileRow]:
  """Runs the benchmark, prints the Markdown and writes the results folder."""
  args = parse_args(argv)
  optimizers = report.names(args.optimizers)
  rows = [r for m in report.names(args.models)
          for r in run_model(m, optimizers, args.rounds, log=report.log_line)]
  report.publish(args.out, "compile_time", rows,
                 lambda machine: markdown(rows, machine, args.rounds))
  return rows


if __name__ == "__main__":
  main()

"""Optimizer-state memory, from shapes, on the examples' parameter trees.

    python -m benchmarks.memory                            # all GPT-2 sizes, ViT-S/16, ViT-B/16
    python -m benchmarks.memory --compile-models gpt2,gpt2-medium

Three tables:

1. State bytes per optimizer, from ``jax.eval_shape(tx.init, params)`` (nothing is
   allocated, so every size up to GPT-2 1.5B is exact), as a fraction of AdamW's; sgd_sai
   with float32 and bfloat16 momentum, and its per-block scalars counted separately.
2. The compiled step's memory analysis (arguments, outputs, aliased, scratch) where the
   backend reports it, for ``--compile-models`` (compiling needs no buffers either).
3. Growth from GPT-2 124M to 1.5B: state, the bytes a step must move, and the step time
   those bytes imply at the bandwidth ``benchmarks.step_time`` measured (its
   ``step_time.json`` in ``--out``; otherwise an elementwise pass is timed here).

Writes ``memory.md``, ``memory.json`` and ``memory.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

DEFAULT_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "vit-s16", "vit-b16",
                  "llama2-7b")
# The paper's largest memory anchor: optimizer state saved against AdamW, float32 (GB).
PAPER_SAVED_GB = {"llama2-7b": 25.15}
DEFAULT_OPTIMIZERS = ("sgd_sai", "sgd_sai_bf16", "adamw", "sgdm", "sgdm_bf16", "lion",
                      "adafactor", "prodigy")
GROWTH_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


@dataclasses.dataclass
class StateRow:
  """One optimizer's state on one model."""

  model: str
  optimizer: str
  params: int
  param_bytes: int
  leaves: int
  state_bytes: int
  step_bytes: int

  @property
  def per_param_bytes(self) -> float:
    return self.state_bytes / self.params


@dataclasses.dataclass
class CompiledRow:
  """The compiled step's memory analysis for one optimizer on one model."""

  model: str
  optimizer: str
  argument: int
  output: int
  alias: int
  temp: int
  compile_s: float


def sai_block_scalar_bytes(n_blocks: int) -> int:
  """sgd_sai's state beyond the momentum, derived independently of the library's ``init``.

  Per block (here one per floating leaf): a float32 g-SNR (0 until captured, so no
  separate flag); plus a float32 normaliser and ``sai_momentum``'s int32 step counter
  (the weight decay and a constant learning rate are stateless).
  """
  return n_blocks * 4 + 4 + 4


def state_rows(models: Sequence[str], optimizers: Sequence[str],
               param_trees: dict[str, Any]) -> list[StateRow]:
  """State and step bytes of every optimizer on every model, from shapes only."""
  rows = []
  for model in models:
    params = param_trees[model]
    for name in optimizers:
      tx = tables.make_optimizer(name)
      rows.append(StateRow(
          model=model, optimizer=name, params=trees.tree_size(params),
          param_bytes=trees.tree_nbytes(params), leaves=len(jax.tree.leaves(params)),
          state_bytes=trees.tree_nbytes(trees.abstract_state(tx, params)),
          step_bytes=trees.step_bytes(tx, params).total))
  return rows


def compiled_rows(models: Sequence[str], optimizers: Sequence[str], param_trees: dict[str, Any],
                  log: Callable[[str], None]) -> list[CompiledRow]:
  """``compiled.memory_analysis()`` of each optimizer's donated step (no buffers made)."""
  rows = []
  for model in models:
    params = param_trees[model]
    for name in optimizers:
      tx = tables.make_optimizer(name)
      state = trees.abstract_state(tx, params)
      t0 = time.perf_counter()
      compiled = timing.make_step(tx).lower(params, state, params).compile()
      seconds = time.perf_counter() - t0
      analysis = compiled.memory_analysis()
      if analysis is None:
        log(f"  {model} {name}: the backend gives no memory analysis")
        continue
      rows.append(CompiledRow(
          model=model, optimizer=name, argument=analysis.argument_size_in_bytes,
          output=analysis.output_size_in_bytes, alias=analysis.alias_size_in_bytes,
          temp=analysis.temp_size_in_bytes, compile_s=seconds))
      log(f"  compiled {model} {name} in {seconds:.1f} s")
  return rows


def bandwidth_from_step_time(out_dir: str) -> dict[str, Any] | None:
  """The bandwidth record of a previous ``benchmarks.step_time`` run, if any."""
  path = os.path.join(out_dir, "step_time.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def measure_limit_gbps(params: Any, rounds: int = 5) -> float:
  """Times the elementwise probe on ``params``'s shapes; returns GB/s (median)."""
  grads = trees.materialise(params, seed=100)
  probe = timing.elementwise_runner(params, grads)
  timing.interleave([probe], rounds=rounds, steps=1)
  seconds = statistics.median(probe.samples)
  probe.release()
  return trees.elementwise_bytes(params) / seconds / 1e9


def growth(rows: Sequence[StateRow], limit_gbps: float, fractions: dict[str, float],
           measured: dict[tuple[str, str], float]) -> list[list[str]]:
  """Rows of the growth table: state and (predicted or measured) step time per size."""
  by = {(r.model, r.optimizer): r for r in rows}
  out = []
  for model in GROWTH_MODELS:
    if (model, "sgd_sai") not in by or (model, "adamw") not in by:
      continue
    sai, adam = by[(model, "sgd_sai")], by[(model, "adamw")]
    bf16 = by.get((model, "sgd_sai_bf16"))
    cells = [tables.MODEL_LABELS.get(model, model), f"{sai.params / 1e6:.0f}M",
             report.fmt_bytes(sai.param_bytes), report.fmt_bytes(sai.state_bytes),
             report.fmt_bytes(bf16.state_bytes) if bf16 else "-",
             report.fmt_bytes(adam.state_bytes),
             f"{(adam.state_bytes - sai.state_bytes) / 1e9:.2f} GB"]
    for r in (sai, adam):
      key = (model, r.optimizer)
      if key in measured:
        cells.append(f"{1e3 * measured[key]:.0f} (measured)")
      else:
        frac = fractions.get(r.optimizer, 1.0)
        cells.append(f"{1e3 * r.step_bytes / (limit_gbps * 1e9 * frac):.0f}")
    out.append(cells)
  return out


def markdown(rows: Sequence[StateRow], comp: Sequence[CompiledRow],
             growth_rows: Sequence[Sequence[str]], machine: str, limit_note: str) -> str:
  """All three tables as Markdown."""
  models = list(dict.fromkeys(r.model for r in rows))
  optimizers = list(dict.fromkeys(r.optimizer for r in rows))
  by = {(r.model, r.optimizer): r for r in rows}
  out = ["## Optimizer state memory", "",
         "From `jax.eval_shape(tx.init, params)` on the examples' parameter trees (float32 "
         "parameters); each cell is the state's size and, in brackets, its fraction of "
         "`optax.adamw`'s.", ""]
  header = ["optimizer"] + [
      f"{tables.MODEL_LABELS.get(m, m)} ({by[(m, optimizers[0])].params / 1e6:.0f}M)"
      for m in models]
  table = []
  for name in optimizers:
    cells = [tables.OPTIMIZER_LABELS.get(name, name)]
    for m in models:
      r, ref = by[(m, name)], by.get((m, "adamw"))
      frac = f" ({r.state_bytes / ref.state_bytes:.3f})" if ref else ""
      cells.append(report.fmt_bytes(r.state_bytes) + frac)
    table.append(cells)
  out.append(report.markdown_table(header, table))
  out += ["", "sgd_sai's state is the momentum plus one float32 g-SNR per "
          "block (a leaf here), a normaliser and a step counter; exact fractions:", ""]
  exact = []
  for m in models:
    if (m, "sgd_sai") not in by or (m, "adamw") not in by:
      continue
    sai, adam = by[(m, "sgd_sai")], by[(m, "adamw")]
    scalars = sai_block_scalar_bytes(sai.leaves)
    line = (f"- {tables.MODEL_LABELS.get(m, m)}: sgd_sai / adamw = "
            f"{sai.state_bytes / adam.state_bytes:.6f} (momentum alone "
            f"{(sai.state_bytes - scalars) / adam.state_bytes:.6f}; per-block scalars "
            f"{scalars} bytes for {sai.leaves} blocks)")
    if (m, "sgd_sai_bf16") in by:
      line += f"; bfloat16 momentum {by[(m, 'sgd_sai_bf16')].state_bytes / adam.state_bytes:.6f}"
    exact.append(line)
  out += exact
  for m, paper in PAPER_SAVED_GB.items():
    if (m, "sgd_sai") in by and (m, "adamw") in by:
      saved = by[(m, "adamw")].state_bytes - by[(m, "sgd_sai")].state_bytes
      billions = by[(m, "sgd_sai")].params / 1e9
      out += ["", f"Paper anchor, {tables.MODEL_LABELS.get(m, m)} ({billions:.2f}B "
              f"parameters): state saved against AdamW in float32 = {saved / 1e9:.2f} GB = "
              f"{saved / 2**30:.2f} GiB (the paper reports {paper} GB, which matches the GiB "
              f"figure to {abs(saved / 2**30 - paper) / paper:.1%})."]
  if comp:
    out += ["", "### Compiled step (`compiled.memory_analysis()`, parameters and state "
            "donated)", "",
            "Scratch is the step's temporary buffers beyond its arguments and outputs.", ""]
    out.append(report.markdown_table(
        ["model", "optimizer", "arguments", "outputs", "aliased", "scratch",
         "scratch / params", "compile s"],
        [[tables.MODEL_LABELS.get(c.model, c.model),
          tables.OPTIMIZER_LABELS.get(c.optimizer, c.optimizer),
          report.fmt_bytes(c.argument), report.fmt_bytes(c.output), report.fmt_bytes(c.alias),
          report.fmt_bytes(c.temp), f"{c.temp / by[(c.model, c.optimizer)].param_bytes:.3f}",
          f"{c.compile_s:.1f}"] for c in comp]))
  if growth_rows:
    out += ["", "### Growth from GPT-2 124M to 1.5B", "",
            f"Step times in ms: bytes the step must move / ({limit_note}); 'measured' where "
            "`benchmarks.step_time` ran that size. Saved = AdamW's state - sgd_sai's "
            "(float32).", ""]
    out.append(report.markdown_table(
        ["model", "params", "param bytes", "sgd_sai state", "sgd_sai bf16 state",
         "adamw state", "saved", "sgd_sai step ms", "adamw step ms"], growth_rows))
  out += ["", f"Machine: {machine}."]
  return "\n".join(out) + "\n"


def plot(rows: Sequence[StateRow], path: str) -> None:
  """``memory.png``: state / AdamW per optimizer, and state vs model size."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by = {(r.model, r.optimizer): r for r in rows}
  models = list(dict.fromkeys(r.model for r in rows))
  optimizers = list(dict.fromkeys(r.optimizer for r in rows))
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
  first = models[0]
  fracs = [by[(first, o)].state_bytes / by[(first, "adamw")].state_bytes
           if (first, "adamw") in by else float("nan") for o in optimizers]
  ax1.bar(range(len(optimizers)), fracs, color="tab:blue")
  ax1.set_xticks(range(len(optimizers)),
                 [tables.OPTIMIZER_LABELS.get(o, o) for o in optimizers], rotation=30, ha="right",
                 fontsize=8)
  for i, f in enumerate(fracs):
    ax1.text(i, f, f"{f:.3f}", ha="center", va="bottom", fontsize=7)
  ax1.set_ylabel("state / adamw state")
  ax1.set_title(f"Optimizer state, {tables.MODEL_LABELS.get(first, first)}")
  sizes = [m for m in GROWTH_MODELS if m in models]
  if sizes:
    for o in optimizers:
      xs = [by[(m, o)].params / 1e6 for m in sizes]
      ys = [by[(m, o)].state_bytes / 2**30 for m in sizes]
      ax2.plot(xs, ys, marker="o", label=tables.OPTIMIZER_LABELS.get(o, o))
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("parameters (M), GPT-2 124M to 1.5B")
    ax2.set_ylabel("state (GiB)")
    ax2.set_title("State growth with model size")
    ax2.legend(fontsize=7)
  else:  # no GPT-2 sizes among --models: nothing to show growth over
    ax2.set_axis_off()
    ax2.text(0.5, 0.5, "no GPT-2 sizes in --models", ha="center", va="center")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                 help=f"comma-separated, from {sorted(tables.SIZES)} (shapes only: any size)")
  p.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS))
  p.add_argument("--compile-models", default="gpt2",
                 help="models whose compiled step's memory analysis is reported ('' for none)")
  p.add_argument("--bandwidth-model", default="gpt2",
                 help="tree timed for the bandwidth when no step_time.json is in --out")
  p.add_argument("--out", default=os.path.join("benchmarks", "results"))
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the memory benchmark, prints the Markdown and writes the results folder."""
  args = parse_args(argv)
  models, optimizers = report.names(args.models), report.names(args.optimizers)
  compile_models = report.names(args.compile_models)
  param_trees = {m: tables.abstract_params(m) for m in dict.fromkeys(models + compile_models)}
  rows = state_rows(models, optimizers, param_trees)
  comp = compiled_rows(compile_models, optimizers, param_trees, report.log_line)
  machine = report.machine_description()

  record = bandwidth_from_step_time(args.out)
  fractions: dict[str, float] = {}
  measured: dict[tuple[str, str], float] = {}
  if record is not None:
    limits = {m["model"]: m["limit_gbps"] for m in record["models"]}
    base = "gpt2" if "gpt2" in limits else next(iter(limits))
    limit = limits[base]
    for m in record["models"]:
      for r in m["rows"]:
        measured[(m["model"], r["optimizer"])] = r["median_s"]
        if m["model"] == base:
          fractions[r["optimizer"]] = r["bandwidth_fraction"]
    note = (f"{limit:.1f} GB/s elementwise limit x each optimizer's achieved fraction on "
            f"{tables.MODEL_LABELS.get(base, base)}, from step_time.json")
  elif any(m in models for m in GROWTH_MODELS):
    tree = param_trees.get(args.bandwidth_model) or tables.abstract_params(args.bandwidth_model)
    limit = measure_limit_gbps(tree)
    note = f"{limit:.1f} GB/s, the elementwise limit measured here: a lower bound"
  else:
    limit, note = float("nan"), ""
  growth_rows = growth(rows, limit, fractions, measured) if note else []

  text = markdown(rows, comp, growth_rows, machine, note)
  result = {"machine": machine, "state": [dataclasses.asdict(r) for r in rows],
            "compiled": [dataclasses.asdict(c) for c in comp], "limit_gbps": limit}
  report.write_results(args.out, "memory", text, result)
  plot(rows, os.path.join(args.out, "memory.png"))
  print(text)
  return result


if __name__ == "__main__":
  main()

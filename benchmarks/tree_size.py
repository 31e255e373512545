"""How the optimizer step's costs grow with the number of leaves in the parameter tree.

    python -m benchmarks.tree_size                       # 100, 1,000 and 10,000 leaves
    python -m benchmarks.tree_size --leaves 100,1000 --rounds 3

Real models often arrive unscanned, with thousands of small leaves (one per bias, norm
scale and kernel of every layer). For each leaf count, a tree of that many small float32
leaves (a few shapes, 64 to 512 entries each) is built, and for every optimizer the donated
step of ``benchmarks.step_time`` (``tx.update`` + ``optax.apply_updates``) is measured:

- compile: tracing, lowering and compiling the step from a cold cache (wall seconds);
- first step: the first step from a freshly initialised state (for sgd_sai, the g-SNR
  capture), the median over several fresh starts of the compiled step;
- steady step: the median step time over interleaved rounds.

Each is reported as a ratio to ``optax.adamw`` in the same run, so the growth of a ratio
with the leaf count is the growth of sgd_sai's cost beyond its peers'.

Writes ``tree_size.md`` and ``tree_size.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from benchmarks import _report as report
from benchmarks import _tables as tables
from benchmarks import _timing as timing
from benchmarks import _trees as trees

DEFAULT_LEAVES = (100, 1_000, 10_000)
DEFAULT_OPTIMIZERS = ("sgd_sai", "adamw", "sgdm")
REFERENCE = "adamw"
# Small leaves of a few shapes, as in an unscanned model: biases, norm scales, small kernels.
LEAF_SHAPES = ((64,), (128,), (16, 16), (8, 64), (512,))


@dataclasses.dataclass
class TreeSizeRow:
  """One optimizer's costs on one tree."""

  leaves: int
  optimizer: str
  compile_s: float  # trace + lower + compile, cold cache
  first_s: float  # median first step from a fresh state
  steady_s: float  # median steady step
  compile_ratio: float = float("nan")  # / the reference's, same run
  first_ratio: float = float("nan")
  steady_ratio: float = float("nan")


def tree_of_leaves(n: int) -> dict[str, jax.ShapeDtypeStruct]:
  """An abstract flat tree of ``n`` small float32 leaves, shapes cycling through LEAF_SHAPES."""
  return {f"leaf{i:05d}": jax.ShapeDtypeStruct(LEAF_SHAPES[i % len(LEAF_SHAPES)], jnp.float32)
          for i in range(n)}


def optimizer_runner(name: str, abstract: dict[str, jax.ShapeDtypeStruct],
                     params0: dict[str, jax.Array], grads: dict[str, jax.Array]) -> timing.Runner:
  """A runner for one optimizer's donated step, compiled ahead of time (timed).

  Fresh buffers are copies of ``params0``: rebuilding them with ``trees.materialise`` (a new
  jitted fill per call) would recompile a fill of every leaf at each fresh start.
  """
  tx = tables.make_optimizer(name)
  step = timing.make_step(tx)
  state_abstract = trees.abstract_state(tx, abstract)
  compile_s, compiled = timing.timed(
      lambda: step.lower(abstract, state_abstract, abstract).compile())
  init = jax.jit(tx.init)

  def make_carry() -> tuple[dict[str, jax.Array], object]:
    params = jax.tree.map(jnp.copy, params0)
    return params, jax.block_until_ready(init(params))

  return timing.Runner(name, compiled, make_carry, (grads,), compile_s=compile_s)


def measure(n_leaves: int, optimizers: Sequence[str], rounds: int, steps: int,
            first_repeats: int, log: Callable[[str], None] = print) -> list[TreeSizeRow]:
  """Compile, first-step and steady-step times of every optimizer on one tree."""
  abstract = tree_of_leaves(n_leaves)
  grads = trees.materialise(abstract, seed=3)
  params0 = trees.materialise(abstract, seed=1)
  runners = []
  for name in optimizers:
    jax.clear_caches()  # each compile from a cold cache (sgd_sai's per-shape jits too)
    runners.append(optimizer_runner(name, abstract, params0, grads))
    log(f"  {n_leaves} leaves: {name} compiled in {runners[-1].compile_s:.2f} s")
  timing.time_first_steps(runners, first_repeats)
  timing.interleave(runners, rounds=rounds, steps=steps, log=log)
  rows = [TreeSizeRow(leaves=n_leaves, optimizer=r.name, compile_s=r.compile_s,
                      first_s=r.first_s, steady_s=statistics.median(r.samples))
          for r in runners]
  ref = next((r for r in rows if r.optimizer == REFERENCE), None)
  if ref is not None:
    for r in rows:
      r.compile_ratio = r.compile_s / ref.compile_s
      r.first_ratio = r.first_s / ref.first_s
      r.steady_ratio = r.steady_s / ref.steady_s
  return rows


def markdown(rows: Sequence[TreeSizeRow], machine: str, rounds: int, steps: int) -> str:
  """The results as a Markdown table of seconds and ratios to AdamW."""
  out = ["## Step costs against the number of leaves", "",
         f"Measured on: {machine}. Flat trees of small float32 leaves "
         f"(shapes {', '.join(str(s) for s in LEAF_SHAPES)}, cycled). Compile: trace + lower + "
         "compile of the donated step from a cold cache. First step: median over fresh "
         "starts (sgd_sai's g-SNR capture). Steady step: median over "
         f"{rounds} interleaved rounds of {steps} steps. Ratios are to `optax.adamw` "
         "in the same run.", ""]
  out.append(report.markdown_table(
      ["leaves", "optimizer", "compile s", "/ adamw", "first step ms", "/ adamw",
       "steady step ms", "/ adamw"],
      [[f"{r.leaves:,}", tables.OPTIMIZER_LABELS.get(r.optimizer, r.optimizer),
        f"{r.compile_s:.2f}", f"{r.compile_ratio:.2f}", f"{1e3 * r.first_s:.2f}",
        f"{r.first_ratio:.2f}", f"{1e3 * r.steady_s:.2f}", f"{r.steady_ratio:.2f}"]
       for r in rows]))
  return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--leaves", default=",".join(str(n) for n in DEFAULT_LEAVES),
                 help="comma-separated leaf counts")
  p.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                 help=f"comma-separated; include {REFERENCE} for the ratios")
  p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
  p.add_argument("--steps", type=int, default=5, help="timed steps per round")
  p.add_argument("--first-repeats", type=int, default=3, help="fresh starts per optimizer")
  p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="results folder")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[TreeSizeRow]:
  """Runs the benchmark, prints the Markdown and writes the results folder."""
  args = parse_args(argv)
  optimizers = report.names(args.optimizers)
  rows = [r for n in report.names(args.leaves)
          for r in measure(int(n), optimizers, args.rounds, args.steps, args.first_repeats,
                           log=report.log_line)]
  report.publish(args.out, "tree_size", rows,
                 lambda machine: markdown(rows, machine, args.rounds, args.steps),
                 rounds=args.rounds, steps=args.steps)
  return rows

if __name__ == "__main__":
  main()

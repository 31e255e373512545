"""SGD-SaI's normaliser and per-block scales on the examples' models, from two real steps.

    python -m benchmarks.normalisers              # GPT-2 124M, ViT-S/16 and B/16, the tiny ones
    python -m benchmarks.normalisers --models gpt2-tiny,vit-tiny

For each size: the example's model at its config and the example's own loss on a random
batch (GPT-2: uniform random token ids, one sequence of the config's context; ViT and CNN:
Gaussian images and uniform labels, 8 of them), then two steps of ``sgd_sai`` at its
default learning rate's first warmup value (the first
captures every block with a gradient; the blocks below a zero-initialised head are
captured at the second). Reported: the normaliser ``max_k s_k`` (the largest g-SNR of the
first step), the block that set it, and the range of the ``normalize=True`` scales. The
normaliser is the factor between the two conventions' learning rates (``normalize=False``
at ``lr / N`` is ``normalize=True`` at ``lr``); the paper-size configs' defaults are read
from it (``docs/guides/algorithm.md``). For a block of ``n`` entries with a zero-mean
gradient the g-SNR is ``sqrt(n - 1)`` whatever the data, so random data stands in for the
real set wherever the largest block's gradient has mean ~0 (a tied embedding, a head).

Writes ``normalisers.md`` and ``normalisers.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from benchmarks import _report as report
from benchmarks import _tables as tables

DEFAULT_MODELS = ("gpt2-tiny", "gpt2", "vit-tiny", "vit-s16", "vit-b16", "cnn-tiny")


@dataclasses.dataclass
class NormaliserRow:
  """One model's captured g-SNRs after two steps."""

  model: str
  params: int
  normaliser: float
  normaliser_block: str
  normaliser_numel: int
  min_scale: float
  max_scale: float
  max_scale_block: str
  late_blocks: int  # blocks captured at the second step (below a zero-initialised head)
  scales: dict[str, float]


def _batch(family: str, cfg: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
  if family == "gpt2":
    tokens = rng.integers(0, cfg.vocab_size, size=(1, cfg.block_size + 1), dtype=np.int32)
    return {"x": tokens[:, :-1], "y": tokens[:, 1:]}
  images = rng.standard_normal((8, cfg.image_size, cfg.image_size, cfg.channels), np.float32)
  return {"image": images, "label": rng.integers(0, cfg.num_classes, 8, dtype=np.int32)}


def _task(model: str) -> Any:
  """The example's Task for a size, on random batches (its loss, model and optimizer)."""
  from examples.common import training

  family, config_name, _ = tables.SIZES[model]
  spec = tables.MODELS[family]
  cfg = spec.module("configs").get_config(config_name).resolved("sgd_sai")
  if getattr(cfg, "vocab_size", 0) is None:  # the tiny GPT-2 is byte-level
    cfg = dataclasses.replace(cfg, vocab_size=256)
  train = spec.module("train")
  loss = train.lm_loss if family == "gpt2" else importlib.import_module(
      "examples.vit.train").make_loss(cfg.label_smoothing)
  module, cls_name = spec.model_class.split(":")
  cls = getattr(importlib.import_module(module), cls_name)
  batches = [_batch(family, cfg, np.random.default_rng(s)) for s in range(2)]
  return training.Task(name=model, config=cfg, make_model=lambda rngs: cls(cfg, rngs=rngs),
                       loss_fn=loss, eval_fn=lambda m, b: {}, train_batch=batches.__getitem__,
                       eval_batches=lambda: [])


def measure(model: str) -> NormaliserRow:
  """Two ``sgd_sai`` steps of ``model`` at its default learning rate's first warmup value
  (as :func:`benchmarks.study.backends.first_step_gsnr`); its captured g-SNRs."""
  from flax import nnx

  import optax_sai
  from examples.common import optim, training

  task = _task(model)
  graphdef, params, rest = nnx.split(task.make_model(nnx.Rngs(0)), nnx.Param, ...)
  cfg = task.config
  tx = optim.task_optimizer(task, cfg.learning_rate / max(cfg.warmup_steps, 1), 0.0)
  step = jax.jit(training.make_train_step(graphdef, rest, task, tx))
  state = tx.init(params)
  params, state, _ = step(params, state, task.train_batch(0), 0)
  first = {k for k, v in optim.gsnr_table(state).items() if np.max(v) > 0}
  params, state, _ = step(params, state, task.train_batch(1), 1)
  scales = {k: float(np.max(v)) for k, v in optim.gsnr_table(state).items()}
  normaliser = float(optax_sai.find_gsnr_state(state).normalizer)
  sizes = {optim.path_str(p): int(np.size(x))
           for p, x in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]}
  top = max(first, key=lambda k: scales[k])  # the first step's largest: scale 1
  captured = {k: v for k, v in scales.items() if v > 0}
  biggest = max(captured, key=captured.get)
  return NormaliserRow(
      model=model, params=sum(sizes.values()), normaliser=normaliser, normaliser_block=top,
      normaliser_numel=sizes.get(top, 0), min_scale=min(captured.values()),
      max_scale=captured[biggest], max_scale_block=biggest,
      late_blocks=len(set(captured) - first), scales=scales)


def markdown(rows: Sequence[NormaliserRow], machine: str) -> str:
  """The normalisers as a Markdown table."""
  out = ["## The g-SNR normaliser of the examples' models", "",
         f"Measured on: {machine}. Two `sgd_sai` steps on random data of each config's "
         "shapes (`python -m benchmarks.normalisers`); N = the largest g-SNR of the first "
         "step; sqrt(numel - 1) of that block beside it.", ""]
  out.append(report.markdown_table(
      ["model", "parameters", "N", "set by", "sqrt(numel - 1)", "smallest scale",
       "largest scale (block)", "captured at step 2"],
      [[tables.MODEL_LABELS.get(r.model, r.model), f"{r.params:,}", f"{r.normaliser:.4g}",
        f"`{r.normaliser_block}`", f"{math.sqrt(max(r.normaliser_numel - 1, 0)):.4g}",
        f"{r.min_scale:.3g}", f"{r.max_scale:.3g} (`{r.max_scale_block}`)",
        str(r.late_blocks)] for r in rows]))
  return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> list[NormaliserRow]:
  """Measures, prints the Markdown and writes the results folder."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                 help=f"comma-separated, from {sorted(tables.SIZES)}")
  p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="results folder")
  args = p.parse_args(argv)
  rows = []
  for model in report.names(args.models):
    report.log_line(f"normalisers: {model}")
    rows.append(measure(model))
  report.publish(args.out, "normalisers", rows, lambda machine: markdown(rows, machine))
  return rows


if __name__ == "__main__":
  main()

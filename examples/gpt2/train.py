"""Train GPT-2 on nanoGPT-format tokens with SGD-SaI or a baseline optimizer.

    python -m examples.gpt2.train --config tiny --optimizer sgd_sai --steps 200 \
        --workdir runs/gpt2-tiny
    python -m examples.gpt2.train --config gpt2 --optimizer adamw --mesh data=8 \
        --data-dir data/gpt2/openwebtext --workdir runs/gpt2-124m

In Python: ``train(get_config("tiny"), optimizer="adamw", workdir=..., steps=100)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import optax

from examples.common import training
from examples.common.optim import stacked_axes
from examples.gpt2 import configs
from examples.gpt2 import data as data_lib
from examples.gpt2.configs import GPTConfig
from examples.gpt2.model import GPT


def lm_loss(model: GPT, batch: dict, dropout_key: jax.Array | None) -> jax.Array:
  """Mean next-token cross-entropy."""
  logits = model(batch["x"], dropout_key=dropout_key)
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def lm_eval(model: GPT, batch: dict) -> dict[str, jax.Array]:
  """Summed loss and next-token accuracy over a batch's tokens."""
  logits = model(batch["x"])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
  correct = (logits.argmax(-1) == batch["y"]).sum()
  return {"loss": losses.sum(), "correct": correct, "count": losses.size}


def build_task(config: GPTConfig, optimizer: str | None = None) -> training.Task:
  """Resolves the config (optimizer defaults, vocabulary from the data) into a Task."""
  cfg = config.resolved(optimizer)
  data_dir = data_lib.resolve_data_dir(cfg.dataset, cfg.data_dir)
  meta = data_lib.ensure_data(data_dir, cfg.dataset, cfg.tokenizer)
  if cfg.vocab_size is None:
    cfg = dataclasses.replace(cfg, vocab_size=int(meta["vocab_size"]))
  elif cfg.vocab_size < meta["vocab_size"]:
    raise ValueError(f"vocab_size {cfg.vocab_size} < the data's {meta['vocab_size']}")
  data = data_lib.LMData(data_dir, cfg.block_size, cfg.batch_size, cfg.seed, cfg.eval_batches)
  return training.Task(
      name=f"gpt2-{cfg.name}",
      config=cfg,
      make_model=lambda rngs: GPT(cfg, rngs=rngs),
      loss_fn=lm_loss,
      eval_fn=lm_eval,
      train_batch=data.train_batch,
      eval_batches=data.val_batches,
      unit="tokens",
      units_per_step=cfg.batch_size * cfg.block_size,
      # One g-SNR block per layer slice of the stacked blocks, as the unrolled model has.
      block_axes=stacked_axes("h") if cfg.scan_layers else None,
      dropout=cfg.dropout > 0,
      batch_rows=True,  # each process reads only its rows of the global batch
  )


def train(config: GPTConfig, optimizer: str | None = None, *args: Any, **kwargs: Any
          ) -> dict[str, Any]:
  """:func:`examples.common.training.train` with this example's task: the same arguments
  (``workdir``, ``steps``, ``resume``, ``mesh``, ...); returns the final metrics
  (``val_loss``, ``val_accuracy``, ``tokens_per_s``, ...) and the final ``params`` and
  ``opt_state``."""
  return training.train(build_task, config, optimizer, *args, **kwargs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line (``--help`` lists the flags; any config field: ``--set key=value``)."""
  return training.main(argv, description=__doc__.split("\n\n")[0], configs=configs.CONFIGS,
                       get_config=configs.get_config, train_fn=train,
                       prog="python -m examples.gpt2.train",
                       choices={"dtype": ("float32", "bfloat16")})


if __name__ == "__main__":
  main()

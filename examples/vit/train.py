"""Train a ViT classifier with SGD-SaI or a baseline optimizer.

    python -m examples.vit.train --config tiny --optimizer sgd_sai --steps 200 \
        --workdir runs/vit-tiny
    python -m examples.vit.train --config vit-s16 --optimizer sgd_sai --mesh data=8 \
        --data-dir /data/imagenet --workdir runs/vit-s16

In Python: ``train(get_config("tiny"), optimizer="adamw", workdir=..., steps=100)``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from examples.common import cli, training
from examples.common.config import override
from examples.vit import configs
from examples.vit import data as data_lib
from examples.vit.configs import ViTConfig
from examples.vit.model import ViT


def make_loss(label_smoothing: float = 0.0):
  """Mean softmax cross-entropy, optionally with label smoothing."""

  def loss_fn(model: ViT, batch: dict, dropout_key: jax.Array | None) -> jax.Array:
    logits = model(batch["image"], dropout_key=dropout_key)
    labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
    if label_smoothing:
      labels = optax.smooth_labels(labels, label_smoothing)
    return optax.softmax_cross_entropy(logits, labels).mean()

  return loss_fn


def classification_eval(model: ViT, batch: dict) -> dict[str, jax.Array]:
  """Summed loss and correct predictions over the real (unpadded) examples."""
  logits = model(batch["image"])
  mask = batch["mask"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (logits.argmax(-1) == batch["label"]).astype(jnp.float32)
  return {"loss": (losses * mask).sum(), "correct": (correct * mask).sum(), "count": mask.sum()}


def make_data(cfg: ViTConfig) -> data_lib.Digits | data_lib.ImageFolder:
  if cfg.dataset == "digits":
    return data_lib.Digits(cfg.image_size, cfg.batch_size, cfg.seed, cfg.augment)
  if cfg.dataset == "imagefolder":
    if cfg.data_dir is None:
      raise ValueError("the imagefolder dataset needs --data-dir (with train/ and val/)")
    return data_lib.ImageFolder(cfg.data_dir, cfg.image_size, cfg.batch_size, cfg.seed,
                                cfg.augment, cfg.eval_batches)
  raise ValueError(f"unknown dataset {cfg.dataset!r}; choose digits or imagefolder")


def build_task(config: ViTConfig, optimizer: str | None = None) -> training.Task:
  """Resolves the config (optimizer defaults; classes and channels from the data) into a Task."""
  cfg = config.resolved(optimizer)
  data = make_data(cfg)
  if (data.num_classes, data.channels) != (cfg.num_classes, cfg.channels):
    cfg = dataclasses.replace(cfg, num_classes=data.num_classes, channels=data.channels)
  return training.Task(
      name=f"vit-{cfg.name}",
      config=cfg,
      make_model=lambda rngs: ViT(cfg, rngs=rngs),
      loss_fn=make_loss(cfg.label_smoothing),
      eval_fn=classification_eval,
      train_batch=data.train_batch,
      eval_batches=data.val_batches,
      unit="images",
      units_per_step=cfg.batch_size,
      dropout=cfg.dropout > 0,
  )


def train(
    config: ViTConfig,
    optimizer: str | None = None,
    workdir: str | Path | None = None,
    steps: int | None = None,
    *,
    resume: bool = False,
    mesh: str | None = None,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
  """Trains and returns the final metrics (``val_loss``, ``val_accuracy``, ``train_loss``,
  ``images_per_s``, ``wall_time_s``, ...; plus the final ``params`` and ``opt_state``)."""
  if steps is not None:
    config = dataclasses.replace(config, steps=steps)
  task = build_task(config, optimizer)
  return training.fit(task, workdir, mesh=mesh, resume=resume, stop_after=stop_after,
                      progress=progress)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = cli.base_parser(__doc__.split("\n\n")[0], configs.CONFIGS)
  parser.add_argument("--dataset", choices=["digits", "imagefolder"])
  parser.add_argument("--image-size", type=int)
  parser.add_argument("--dropout", type=float)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
  parser.add_argument("--zero-head", action=argparse.BooleanOptionalAction, default=None,
                      help="zero-initialise the classifier head (default: on)")
  args = parser.parse_args(argv)
  config = override(
      configs.get_config(args.config), **cli.overrides(args), dataset=args.dataset,
      image_size=args.image_size, dropout=args.dropout, dtype=args.dtype,
      zero_head=args.zero_head,
  )
  result = train(config, args.optimizer, args.workdir, resume=args.resume, mesh=args.mesh,
                 stop_after=args.stop_after, progress=args.progress)
  print(cli.summary(result))
  return result


if __name__ == "__main__":
  main()

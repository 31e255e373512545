"""Train a ViT classifier with SGD-SaI or a baseline optimizer.

    python -m examples.vit.train --config tiny --optimizer sgd_sai --steps 200 \
        --workdir runs/vit-tiny
    python -m examples.vit.train --config vit-s16 --optimizer sgd_sai --mesh data=8 \
        --data-dir /data/imagenet --workdir runs/vit-s16

In Python: ``train(get_config("tiny"), optimizer="adamw", workdir=..., steps=100)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from examples.common import training
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


def train(config: ViTConfig, optimizer: str | None = None, *args: Any, **kwargs: Any
          ) -> dict[str, Any]:
  """:func:`examples.common.training.train` with this example's task: the same arguments
  (``workdir``, ``steps``, ``resume``, ``mesh``, ...); returns the final metrics
  (``val_loss``, ``val_accuracy``, ``images_per_s``, ...) and the final ``params`` and
  ``opt_state``."""
  return training.train(build_task, config, optimizer, *args, **kwargs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line (``--help`` lists the flags; any config field: ``--set key=value``)."""
  return training.main(argv, description=__doc__.split("\n\n")[0], configs=configs.CONFIGS,
                       get_config=configs.get_config, train_fn=train,
                       prog="python -m examples.vit.train",
                       choices={"dtype": ("float32", "bfloat16"),
                                "dataset": ("digits", "imagefolder")})


if __name__ == "__main__":
  main()

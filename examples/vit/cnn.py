"""A small convolutional network on the ViT example's data: the studies' third kind of model.

Two 3x3 convolutions of ``conv_width`` channels (ReLU, 2x2 average pooling after each),
then a dense hidden layer and a dense head, trained on the same digits (or image folder)
pipeline, loss and evaluation as the ViT (``examples.vit.train``): only the model differs.
The head is not zero-initialised, so every block has a non-zero gradient at step 1.

    python -m examples.vit.cnn --config tiny --optimizer sgd_sai
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from examples.common import training
from examples.vit import configs as vit_configs
from examples.vit import train as vit_train


@dataclasses.dataclass(frozen=True)
class CNNConfig(vit_configs.ViTConfig):
  """The ViT config's data and training fields; the model is a small CNN."""

  conv_width: int = 32  # channels of both convolutions (the studies' width axis)
  dense_width: int = 64  # the hidden dense layer before the head


CONFIGS = ("tiny",)

# sgd_sai, adamw and sgdm at their best (lr, wd) for this config run as its command runs it
# (200 steps, digits, conv width 32), measured on lr x wd grids, seeds 0 and 1:
# benchmarks/results/study/defaults_cnn/table.md (val acc 98.7%, 98.8%, 98.5%). Lion's and
# Adafactor's are the ViT's, not measured here.
_TINY_LEARNING_RATES = {"sgd_sai": 10.0, "adamw": 3e-2, "sgdm": 9.49e-2}
_TINY_WEIGHT_DECAYS = {"sgd_sai": 1e-3, "adamw": 5e-3, "sgdm": 3.16e-4}


def get_config(name: str = "tiny") -> CNNConfig:
  """``tiny``: the ViT ``tiny`` config's data and schedule, with its own measured settings."""
  if name != "tiny":
    raise ValueError(f"unknown CNN config {name!r}; choose from {CONFIGS}")
  tiny = vit_configs.get_config("tiny")
  fields = {f.name: getattr(tiny, f.name) for f in dataclasses.fields(tiny)}
  return CNNConfig(**{**fields,
                      "learning_rates": {**tiny.learning_rates, **_TINY_LEARNING_RATES},
                      "weight_decays": {**tiny.weight_decays, **_TINY_WEIGHT_DECAYS}})


class CNN(nnx.Module):
  """conv 3x3 -> ReLU -> avg-pool 2x2, twice; flatten; dense -> ReLU; dense head."""

  def __init__(self, cfg: CNNConfig, *, rngs: nnx.Rngs):
    c = cfg.conv_width
    self.conv1 = nnx.Conv(cfg.channels, c, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(c, c, (3, 3), rngs=rngs)
    pooled = cfg.image_size // 4
    self.dense = nnx.Linear(pooled * pooled * c, cfg.dense_width, rngs=rngs)
    self.head = nnx.Linear(cfg.dense_width, cfg.num_classes, rngs=rngs)

  def __call__(self, images: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    del dropout_key  # no dropout
    x = images
    for conv in (self.conv1, self.conv2):
      x = nnx.avg_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
    x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
    return self.head(x).astype(jnp.float32)


def build_task(config: CNNConfig, optimizer: str | None = None) -> training.Task:
  """The ViT example's task (data, loss, evaluation) with the CNN as its model."""
  task = vit_train.build_task(config, optimizer)
  cfg = task.config
  return dataclasses.replace(task, name=f"cnn-{cfg.name}", dropout=False,
                             make_model=lambda rngs: CNN(cfg, rngs=rngs))


def train(config: CNNConfig, optimizer: str | None = None, workdir: str | Path | None = None,
          steps: int | None = None, **kwargs: Any) -> dict[str, Any]:
  """Trains and returns the final metrics, as :func:`examples.vit.train.train` does."""
  return training.train(build_task, config, optimizer, workdir, steps, **kwargs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line (``--help`` lists the flags; any config field: ``--set key=value``)."""
  return training.main(argv, description=__doc__.split("\n\n")[0], configs=CONFIGS,
                       get_config=get_config, train_fn=train,
                       choices={"dataset": ("digits", "imagefolder")})


if __name__ == "__main__":
  main()

"""The training fields every example shares (a frozen dataclass, overridden with ``replace``)."""

from __future__ import annotations

import dataclasses
from typing import Any

OPTIMIZERS = ("sgd_sai", "adamw", "sgdm", "adam", "lion", "adafactor")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and bookkeeping fields; each example's config extends it with its model.

  ``learning_rate`` / ``weight_decay`` left at ``None`` take the per-optimizer defaults of
  the example (``optimizer_defaults``), so ``--optimizer adamw`` gets an AdamW learning rate.
  """

  name: str = "custom"
  optimizer: str = "sgd_sai"
  steps: int = 200
  batch_size: int = 16
  learning_rate: float | None = None
  weight_decay: float | None = None
  warmup_steps: int = 20
  decay_steps: int | None = None  # cosine horizon; None = ``steps``
  min_lr_ratio: float = 0.1  # the cosine ends at ``min_lr_ratio * learning_rate``
  clip_norm: float | None = 1.0  # global-norm gradient clipping; None = off
  momentum: float = 0.9  # sgd_sai, sgdm; also AdamW's and Lion's b1
  b2: float = 0.95  # AdamW's / Lion's second coefficient
  sai_normalize: bool = True  # sgd_sai: paper's max-normalised scales (False = sgd-sai 1.0.3)
  optimizer_defaults: tuple[tuple[str, float, float], ...] = ()  # (optimizer, lr, wd)
  seed: int = 0
  log_every: int = 10
  eval_every: int = 50
  eval_batches: int = 8
  ckpt_every: int = 100
  keep_checkpoints: int = 2
  data_dir: str | None = None

  def resolved(self, optimizer: str | None = None) -> TrainConfig:
    """Returns a copy with ``optimizer`` set and its default lr / weight decay filled in."""
    optimizer = optimizer or self.optimizer
    if optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}")
    table = {name: (lr, wd) for name, lr, wd in self.optimizer_defaults}
    lr, wd = table.get(optimizer, (1e-3, 0.0))
    return dataclasses.replace(
        self,
        optimizer=optimizer,
        learning_rate=lr if self.learning_rate is None else self.learning_rate,
        weight_decay=wd if self.weight_decay is None else self.weight_decay,
    )


def override(config: Any, **fields: Any) -> Any:
  """``dataclasses.replace`` that ignores ``None`` values (unset command-line flags)."""
  return dataclasses.replace(config, **{k: v for k, v in fields.items() if v is not None})

"""LoRA fine-tuning configurations: the GPT-2 example's model fields plus the adapters.

``tiny``: the GPT-2 example's ``tiny`` model (4 layers, 128 wide, byte-level; context 64 to
keep the study cheap on two shared CPU cores), pretrained for 300 steps on
the ``pydoc`` corpus (English documentation) and fine-tuned on Python source code
(``pysource``, see ``data.py``) with rank-8 adapters on every attention and MLP projection.
"""

from __future__ import annotations

import dataclasses

from examples.common.config import ConfigError, check_range
from examples.gpt2.configs import GPTConfig

# sgd_sai, adamw, sgdm: the best learning rates of the LoRA study (rank 8, tiny, 100 steps,
# seed 0; `python -m benchmarks.study lora`, benchmarks/results/study/lora/table.md); the
# others are untuned guesses. No weight decay on the adapters (a common LoRA recipe).
_TINY_OPTIMIZERS = dict(
    learning_rates={"sgd_sai": 3.0, "adamw": 1e-2, "sgdm": 0.3, "adam": 1e-2, "lion": 1e-3,
                    "adafactor": 3e-2},
    weight_decays={"sgd_sai": 0.0, "adamw": 0.0, "sgdm": 0.0, "adam": 0.0, "lion": 0.0,
                   "adafactor": 0.0},
)


@dataclasses.dataclass(frozen=True)
class LoRAConfig(GPTConfig):
  """A GPT-2 fine-tuning run: the base model's fields, the adapters, where the base comes from.

  ``rank`` 0 means full fine-tuning (every parameter trained, no adapters): the ceiling.
  """

  rank: int = 8  # adapter rank r: W x + (x A) B with A (d_in, r), B (r, d_out), B = 0 at start
  # The base model: a GPT-2 example workdir (its latest checkpoint), or None to pretrain one
  # with the GPT-2 example on ``base_dataset`` (cached under ``base_dir``, reused).
  base_checkpoint: str | None = None
  base_dataset: str = "pydoc"
  base_optimizer: str = "adamw"
  # The base recipe's peak learning rate and weight decay, pinned (not the GPT-2 tiny
  # config's current defaults) so that the cached base and the LoRA study stay the same.
  base_learning_rate: float = 3e-3
  base_weight_decay: float = 0.1
  base_steps: int = 400
  base_seed: int = 0
  base_dir: str = "runs/lora-base"
  base_data_dir: str | None = None
  # ABLATION, not a recommendation: every A's gradient is zeroed (after clipping), so A is
  # never captured and never moves, as under the released ``sgd-sai`` 1.0.3 (which stores
  # g-SNR 0 for A, whose gradient is exactly zero at step 1). See ``pin_a_gradients``.
  pin_a: bool = False

  def check(self) -> None:
    """The GPT-2 fields' checks plus the adapters' and the base recipe's."""
    super().check()
    check_range("rank", self.rank, low=0)
    check_range("base_steps", self.base_steps, low=1)
    check_range("base_learning_rate", self.base_learning_rate, low=0, low_open=True)
    check_range("base_weight_decay", self.base_weight_decay, low=0)
    if self.pin_a and self.rank == 0:
      raise ConfigError("needs adapters (rank > 0): full fine-tuning has no A", "pin_a")


CONFIGS = ("tiny",)


def get_config(name: str = "tiny") -> LoRAConfig:
  """The named configuration (``tiny``)."""
  if name == "tiny":
    return LoRAConfig(
        name="tiny", vocab_size=None, block_size=64, n_layer=4, n_head=4, n_embd=128,
        dataset="pysource", tokenizer="byte", batch_size=16, steps=100, warmup_steps=10,
        log_every=10, eval_every=50, eval_batches=8, ckpt_every=50, base_steps=300,
        **_TINY_OPTIMIZERS,
    )
  raise ValueError(f"unknown LoRA config {name!r}; choose from {CONFIGS}")

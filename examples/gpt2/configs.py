"""GPT-2 configurations: ``tiny`` (CPU, minutes) and the published sizes (124M to 1.5B).

``get_config(name)`` returns a frozen dataclass. Change fields as the command line does,
``apply_overrides(cfg, ["steps=50"])`` (:mod:`examples.common.config`), or with
``dataclasses.replace(cfg, steps=50)``; both check the values.
The published sizes follow nanoGPT's OpenWebText recipe (the paper's GPT-2 setting):
context 1024, ~0.5M tokens per step, warmup 2000 then cosine to 10%, clip 1.0, b2 0.95.
"""

from __future__ import annotations

import dataclasses

from examples.common.config import TrainConfig, check_divides, check_range

# Per-optimizer learning rate and weight decay, used when --lr / --weight-decay are not given
# (plain config data: --set learning_rates.adamw=1e-3).
# The published sizes: AdamW is nanoGPT's (6e-4, 0.1). SGD-SaI's are derived, not measured
# at these sizes (the paper gives none; docs/guides/algorithm.md, "The examples' settings"):
# lr 20 gives the MLP matrices the step that was best on the tiny GPT-2 (lr 5 at scale 1,
# benchmarks/results/study/lr_wd_gpt2), since here the tied embedding sets the normaliser
# (6,210 against the MLP's 1,536, benchmarks/results/normalisers.md); wd 3e-6 is AdamW's
# per-step decay, 6e-5 = lr x wd.
_GPT2_OPTIMIZERS = dict(
    learning_rates={"sgd_sai": 20.0, "adamw": 6e-4, "sgdm": 1e-1, "lion": 1e-4, "adafactor": 1e-2},
    weight_decays={"sgd_sai": 3e-6, "adamw": 0.1, "sgdm": 1e-4, "lion": 1.0, "adafactor": 0.0},
)
# The tiny config: sgd_sai, adamw and sgdm at their best (lr, wd) for this config run as its
# command runs it (200 steps, pydoc, width 128), measured on lr x wd grids, seeds 0 and 1:
# benchmarks/results/study/defaults_gpt2/table.md (val 2.374, 2.241, 2.397 nats/byte).
# The weight decay barely matters at 200 steps (sgd_sai within 2% over 3 decades).
# Lion's and Adafactor's are not measured.
_TINY_OPTIMIZERS = dict(
    learning_rates={"sgd_sai": 1.58, "adamw": 3e-3, "sgdm": 0.158, "lion": 3e-4, "adafactor": 3e-2},
    weight_decays={"sgd_sai": 3.16e-5, "adamw": 1e-3, "sgdm": 3.16e-4, "lion": 1.0,
                   "adafactor": 0.0},
)


@dataclasses.dataclass(frozen=True)
class GPTConfig(TrainConfig):
  """Model, data and training fields of a GPT-2 run."""

  # Model.
  vocab_size: int | None = 50257  # None: read from the data's meta.json
  block_size: int = 1024  # context length
  n_layer: int = 12
  n_head: int = 12
  n_embd: int = 768
  dropout: float = 0.0
  bias: bool = True
  scan_layers: bool = False  # stack the blocks (nnx.vmap) and apply them with nnx.scan
  dtype: str = "float32"  # compute dtype (parameters stay float32); "bfloat16" on GPU/TPU
  # Data.
  dataset: str = "openwebtext"  # a folder under data/gpt2 with train.bin, val.bin, meta.json
  tokenizer: str = "gpt2"  # used only when the data is prepared automatically

  def check(self) -> None:
    """The training fields' checks plus the model's (sizes positive, heads divide width)."""
    super().check()
    check_range("vocab_size", self.vocab_size, low=1, optional=True)
    for name in ("block_size", "n_layer", "n_head", "n_embd"):
      check_range(name, getattr(self, name), low=1)
    check_divides("n_embd", self.n_embd, "n_head", self.n_head)
    check_range("dropout", self.dropout, low=0, high=1, high_open=True)


_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

CONFIGS = ("tiny", *_SIZES)


def get_config(name: str = "tiny") -> GPTConfig:
  """The named configuration (``tiny``, ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``)."""
  if name == "tiny":
    # Byte-level model of the Python documentation (pydoc_data): ~0.8M parameters, about
    # a minute for 200 steps on two CPU cores.
    return GPTConfig(
        name="tiny", vocab_size=None, block_size=128, n_layer=4, n_head=4, n_embd=128,
        dataset="pydoc", tokenizer="byte", batch_size=16, steps=200, warmup_steps=20,
        log_every=10, eval_every=50, eval_batches=8, ckpt_every=100,
        **_TINY_OPTIMIZERS,
    )
  if name in _SIZES:
    return GPTConfig(
        name=name, **_SIZES[name], vocab_size=50257, block_size=1024, batch_size=480,
        steps=600_000, warmup_steps=2000, min_lr_ratio=0.1, clip_norm=1.0, b2=0.95,
        log_every=100, eval_every=2000, eval_batches=200, ckpt_every=2000, dtype="bfloat16",
        **_GPT2_OPTIMIZERS,
    )
  raise ValueError(f"unknown GPT-2 config {name!r}; choose from {CONFIGS}")

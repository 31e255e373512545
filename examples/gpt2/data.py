"""nanoGPT-format token data: memory-mapped uint16 ``train.bin`` / ``val.bin`` + ``meta.json``.

Training batches are random windows whose offsets are drawn from a generator seeded with
``(seed, step)``: any step's batch can be rebuilt exactly, so resumed runs repeat
uninterrupted ones. Validation uses a fixed set of windows (the same for every run).

In a multi-process job each process asks for its own rows of the global batch
(``train_batch(step, rows)``): the offsets of all rows are drawn (a few integers), but only
the requested windows are read from the token file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from examples.gpt2 import prepare as prepare_lib

DEFAULT_ROOT = Path("data") / "gpt2"
_VAL_SEED = 0x5EED


def resolve_data_dir(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
  return Path(data_dir) if data_dir is not None else DEFAULT_ROOT / dataset


def ensure_data(data_dir: Path, dataset: str, tokenizer: str) -> dict:
  """Returns ``meta.json``; prepares the built-in ``pydoc`` / ``stdlib`` corpora if missing."""
  if not (data_dir / "train.bin").exists():
    if dataset == "stdlib":
      prepare_lib.prepare_stdlib(data_dir)
      return load_meta(data_dir)
    if dataset != "pydoc":
      raise FileNotFoundError(
          f"{data_dir}/train.bin not found: run `python -m examples.gpt2.prepare --input "
          f"<text files> --out {data_dir}` first (or use --config tiny, whose data is built in)"
      )
    prepare_lib.prepare(prepare_lib.pydoc_texts(), data_dir, tokenizer,
                        source="pydoc_data.topics")
  return load_meta(data_dir)


def load_meta(data_dir: str | os.PathLike[str]) -> dict:
  path = Path(data_dir) / "meta.json"
  if not path.exists():
    return {"vocab_size": 50257, "tokenizer": "gpt2"}
  return json.loads(path.read_text())


class TokenData:
  """One split (``train`` or ``val``) of a token file, memory-mapped."""

  def __init__(self, data_dir: str | os.PathLike[str], split: str, block_size: int):
    self.tokens = np.memmap(Path(data_dir) / f"{split}.bin", dtype=np.uint16, mode="r")
    self.block_size = block_size
    if len(self.tokens) <= block_size + 1:
      raise ValueError(f"{split}.bin has {len(self.tokens)} tokens; need > {block_size + 1}")

  def windows(self, rng: np.random.Generator, batch_size: int,
              rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``batch_size`` random windows: inputs ``x`` and next-token targets ``y`` (int32).

    With ``rows`` (indices into the ``batch_size`` windows), only those windows are read,
    in that order: the same values as the full batch's rows ``rows``.
    """
    t = self.block_size
    starts = rng.integers(0, len(self.tokens) - t - 1, size=batch_size)
    if rows is not None:
      starts = starts[np.asarray(rows, dtype=np.int64)]
    chunk = np.stack([self.tokens[s : s + t + 1] for s in starts]).astype(np.int32)
    return {"x": chunk[:, :-1], "y": chunk[:, 1:]}


class LMData:
  """Train / val batches for a GPT run."""

  def __init__(self, data_dir: str | os.PathLike[str], block_size: int, batch_size: int,
               seed: int = 0, eval_batches: int = 8):
    self.train = TokenData(data_dir, "train", block_size)
    self.val = TokenData(data_dir, "val", block_size)
    self.batch_size, self.seed, self.eval_batches = batch_size, seed, eval_batches

  def train_batch(self, step: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The batch of training step ``step``: a pure function of ``(seed, step)``.

    ``rows`` selects global rows of it (a process's share in a multi-process job); only
    those are built.
    """
    return self.train.windows(np.random.default_rng([self.seed, step]), self.batch_size, rows)

  def val_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The fixed validation windows (independent of the training seed)."""
    for i in range(self.eval_batches):
      yield self.val.windows(np.random.default_rng([_VAL_SEED, i]), self.batch_size)

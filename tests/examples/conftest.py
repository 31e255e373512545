"""Shared fixtures for the example tests: small data made on the fly, small configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from examples.gpt2 import configs as gpt_configs
from examples.gpt2 import prepare


@pytest.fixture(scope="session")
def pydoc_data(tmp_path_factory) -> Path:
  """The tiny config's corpus (pydoc_data.topics), byte-level, prepared once per session."""
  out = tmp_path_factory.mktemp("pydoc")
  prepare.prepare(prepare.pydoc_texts(), out, tokenizer="byte", source="pydoc_data.topics")
  return out


@pytest.fixture
def micro_gpt(pydoc_data):
  """A very small GPT config for fast loop tests (resume, mesh, CLI)."""
  return dataclasses.replace(
      gpt_configs.get_config("tiny"), n_layer=2, n_head=2, n_embd=32, block_size=32,
      batch_size=8, steps=20, warmup_steps=4, log_every=5, eval_every=10, eval_batches=2,
      ckpt_every=10, data_dir=str(pydoc_data),
  )

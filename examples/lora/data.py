"""The fine-tuning corpus: Python source code from the standard library (no download).

The tiny base model is pretrained on English prose (the ``pydoc`` documentation corpus of
the GPT-2 example); fine-tuning moves it to a different domain, the source of a fixed list
of pure-Python standard-library modules, byte-level like the base. The token files are
nanoGPT-format (``examples.gpt2.prepare``), written once under ``data/gpt2/pysource``.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from examples.gpt2 import data as gpt_data
from examples.gpt2 import prepare as prepare_lib

# Present (as a module or a package __init__) in every CPython 3.10+.
MODULES = (
    "argparse", "ast", "bisect", "calendar", "configparser", "contextlib", "csv", "dataclasses",
    "difflib", "enum", "fnmatch", "fractions", "functools", "gettext", "glob", "heapq",
    "inspect", "numbers", "pprint", "queue", "random", "sched", "shlex", "shutil",
    "statistics", "string", "tempfile", "textwrap", "tokenize", "uuid",
)
DATASET = "pysource"


def pysource_texts() -> list[str]:
  """The source text of :data:`MODULES`, in that order."""
  lib = Path(sysconfig.get_paths()["stdlib"])
  texts = []
  for name in MODULES:
    path = lib / f"{name}.py"
    if not path.exists():
      path = lib / name / "__init__.py"
    texts.append(path.read_text(encoding="utf-8"))
  return texts


def ensure_pysource(data_dir: str | Path | None = None) -> Path:
  """Prepares the corpus (byte-level tokens) if missing; returns its folder."""
  out = gpt_data.resolve_data_dir(DATASET, data_dir)
  if not (out / "train.bin").exists():
    prepare_lib.prepare(pysource_texts(), out, tokenizer="byte",
                        source="stdlib:" + ",".join(MODULES))
  return out

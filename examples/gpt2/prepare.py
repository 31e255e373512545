"""Turns text files into nanoGPT token files: ``train.bin`` / ``val.bin`` (uint16) + ``meta.json``.

    python -m examples.gpt2.prepare --input a.txt b.txt --out data/gpt2/mydata
    python -m examples.gpt2.prepare --dataset pydoc --out data/gpt2/pydoc --tokenizer byte

Tokenizers: ``gpt2`` (tiktoken's GPT-2 BPE, vocab 50257, documents separated by
``<|endoftext|>``) when its encoding can be loaded (it downloads once into tiktoken's
cache; set ``TIKTOKEN_CACHE_DIR`` to a pre-filled cache on offline machines), otherwise a
byte-level fallback (vocab 256, the UTF-8 bytes); ``byte`` picks the fallback directly.
The ``pydoc`` dataset is the English documentation text shipped with every Python
(``pydoc_data.topics``): a real corpus (~0.47 MB) with no download. The ``stdlib``
dataset is the installed Python standard library's ``.py`` source (``site-packages``
excluded; ~32 MB on CPython 3.11), always byte-level, split by file: a file goes to
validation when the first byte of the SHA-1 of its relative path is below 13 (~5% of
the files), so the split is deterministic for a given Python version.

    python -m examples.gpt2.prepare --dataset stdlib --out data/gpt2/stdlib
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOKENIZERS = ("gpt2", "byte")


def pydoc_texts() -> list[str]:
  """The Python documentation topics shipped in the standard library, in a fixed order."""
  from pydoc_data import topics

  return [topics.topics[k] for k in sorted(topics.topics)]


def stdlib_files(root: str | os.PathLike[str] | None = None) -> list[Path]:
  """The standard library's ``.py`` files (``site-packages`` excluded), sorted by path."""
  base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
  return sorted(p for p in base.rglob("*.py")
                if "site-packages" not in p.relative_to(base).parts and p.is_file())


def stdlib_split(relpath: str) -> str:
  """``"val"`` for ~5% of the files (SHA-1 of the relative path), else ``"train"``."""
  return "val" if hashlib.sha1(relpath.encode()).digest()[0] < 13 else "train"


def prepare_stdlib(out_dir: str | os.PathLike[str],
                   root: str | os.PathLike[str] | None = None) -> dict:
  """Writes the byte-level ``stdlib`` corpus, split by file; returns its meta."""
  base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
  parts: dict[str, list[bytes]] = {"train": [], "val": []}
  for path in stdlib_files(base):
    parts[stdlib_split(path.relative_to(base).as_posix())].append(path.read_bytes())
  if not parts["train"] or not parts["val"]:
    raise ValueError(f"too few .py files under {base} for a train/val split")
  streams = {k: np.frombuffer(b"\n\n".join(v), np.uint8).astype(np.uint16)
             for k, v in parts.items()}
  meta = {"tokenizer": "byte", "vocab_size": 256, "dtype": "uint16",
          "train_tokens": int(len(streams["train"])), "val_tokens": int(len(streams["val"])),
          "train_files": len(parts["train"]), "val_files": len(parts["val"]),
          "source": f"Python {platform.python_version()} standard library *.py ({base})"}
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  _write_atomically(out / "val.bin", streams["val"].tobytes())
  _write_atomically(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
  _write_atomically(out / "train.bin", streams["train"].tobytes())
  return meta


def _byte_encode(texts: Sequence[str]) -> np.ndarray:
  data = "\n\n".join(texts).encode("utf-8")
  return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)


def encode(texts: Sequence[str], tokenizer: str = "gpt2") -> tuple[np.ndarray, dict]:
  """Tokenizes documents into one uint16 stream; returns it and its ``meta`` fields.

  With ``tokenizer="gpt2"`` and no loadable tiktoken encoding, warns on stderr and falls
  back to bytes; ``meta["tokenizer"]`` records what was actually used.
  """
  if tokenizer not in TOKENIZERS:
    raise ValueError(f"unknown tokenizer {tokenizer!r}; choose from {TOKENIZERS}")
  if tokenizer == "gpt2":
    try:
      import tiktoken

      enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # noqa: BLE001 - any failure (offline, not installed) falls back
      print(
          f"prepare: cannot load tiktoken's GPT-2 encoding ({type(e).__name__}); this machine "
          "may be offline. Falling back to byte-level tokens (vocab 256). To use GPT-2 BPE, "
          "run once with internet or point TIKTOKEN_CACHE_DIR at a cache holding it.",
          file=sys.stderr,
      )
    else:
      ids: list[int] = []
      for text in texts:
        ids.extend(enc.encode_ordinary(text))
        ids.append(enc.eot_token)
      return np.asarray(ids, dtype=np.uint16), {"tokenizer": "gpt2", "vocab_size": enc.n_vocab}
  return _byte_encode(texts), {"tokenizer": "byte", "vocab_size": 256}


def prepare(
    texts: Sequence[str],
    out_dir: str | os.PathLike[str],
    tokenizer: str = "gpt2",
    val_fraction: float = 0.1,
    source: str = "",
) -> dict:
  """Writes ``train.bin``, ``val.bin`` (the last ``val_fraction`` of the stream) and ``meta.json``.

  Returns the meta dictionary (``vocab_size``, ``tokenizer``, token counts, ``source``).
  """
  if not 0.0 < val_fraction < 1.0:
    raise ValueError("val_fraction must be in (0, 1)")
  tokens, meta = encode(texts, tokenizer)
  split = int(len(tokens) * (1.0 - val_fraction))
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  meta.update(train_tokens=int(split), val_tokens=int(len(tokens) - split), source=source,
              dtype="uint16")
  # Each file is written under a private name and renamed into place, train.bin last:
  # readers wait for train.bin (see data.ensure_data), so a run started while another
  # process prepares the same folder never reads a half-written file.
  _write_atomically(out / "val.bin", tokens[split:].tobytes())
  _write_atomically(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
  _write_atomically(out / "train.bin", tokens[:split].tobytes())
  return meta


def _write_atomically(path: Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  src = parser.add_mutually_exclusive_group()
  src.add_argument("--input", nargs="+", help="text files (each one document)")
  src.add_argument("--dataset", default="pydoc", choices=["pydoc", "stdlib"],
                   help="a built-in corpus (default: pydoc; stdlib is always byte-level)")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--tokenizer", default="gpt2", choices=TOKENIZERS)
  parser.add_argument("--val-fraction", type=float, default=0.1)
  args = parser.parse_args(argv)
  if args.dataset == "stdlib" and not args.input:
    meta = prepare_stdlib(args.out)
    print(f"wrote {args.out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val "
          f"bytes from {meta['train_files']} / {meta['val_files']} files")
    return
  if args.input:
    texts = [Path(p).read_text(encoding="utf-8") for p in args.input]
    source = ",".join(args.input)
  else:
    texts, source = pydoc_texts(), "pydoc_data.topics"
  meta = prepare(texts, args.out, args.tokenizer, args.val_fraction, source)
  print(f"wrote {args.out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val "
        f"tokens, tokenizer {meta['tokenizer']}, vocab {meta['vocab_size']}")


if __name__ == "__main__":
  main()

"""The append-only study log: one JSON line per finished cell, one per run, and snapshots.

``cells.jsonl`` is the only record of results; reports are rebuilt from all of it. A torn
last line (an interrupted write) is skipped, and a cell logged twice counts once (its
latest line). ``runs.jsonl`` records each invocation that trained cells (the command and
host: provenance). A vmapped group saves its state at each evaluation in ``_partial/`` (not
committed), so an interrupted group resumes from its last evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOG_FILE = "cells.jsonl"
RUNS_FILE = "runs.jsonl"  # one line per invocation that trained cells: its command, host
_PARTIAL_FORMAT = 3  # 3: members carry their own learning rate and weight decay


def read_cells(out: Path) -> list[dict[str, Any]]:
  """The finished cells logged in ``out/cells.jsonl`` (the latest line of each id)."""
  return list({row["id"]: row for row in _read_lines(out / LOG_FILE)}.values())


def _read_lines(path: Path) -> list[dict[str, Any]]:
  """The JSON lines of ``path`` (none if it is absent), a torn last line skipped."""
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # an interrupted write
      continue
  return records


def append_cells(out: Path, rows: Sequence[dict[str, Any]]) -> None:
  """Appends ``rows`` to the log and syncs it to disk."""
  with (out / LOG_FILE).open("a") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def append_run(out: Path, record: dict[str, Any]) -> None:
  """Appends an invocation's record (``command``, ``host``, ``started``) to ``runs.jsonl``."""
  with (out / RUNS_FILE).open("a") as f:
    f.write(json.dumps(record) + "\n")


def read_runs(out: Path) -> list[dict[str, Any]]:
  """The invocations that trained cells into ``out``, oldest first."""
  return _read_lines(out / RUNS_FILE)


def save_partial(path: Path, step: int, tree: Any, extra: dict[str, Any]) -> None:
  """Saves a group's ``(params, opt_state)`` after ``step`` (``path``.npz / .json)."""
  import jax
  import numpy as np

  leaves = jax.tree.leaves(jax.device_get(tree))
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, *leaves)
  os.replace(tmp, path.with_suffix(".npz"))
  path.with_suffix(".json").write_text(
      json.dumps({"step": step, "format": _PARTIAL_FORMAT, **extra}))


def load_partial(path: Path, like: Any) -> tuple[int, Any, dict[str, Any]] | None:
  """``(step, tree, extra)`` saved by :func:`save_partial`, or ``None`` if absent / stale."""
  import jax
  import numpy as np

  if not (path.with_suffix(".npz").exists() and path.with_suffix(".json").exists()):
    return None
  meta = json.loads(path.with_suffix(".json").read_text())
  if meta.pop("format", None) != _PARTIAL_FORMAT:
    return None
  with np.load(path.with_suffix(".npz")) as f:
    leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
  treedef = jax.tree.structure(like)
  if treedef.num_leaves != len(leaves):
    return None
  return meta.pop("step"), jax.tree.unflatten(treedef, leaves), meta


def drop_partial(path: Path) -> None:
  for suffix in (".npz", ".json"):
    path.with_suffix(suffix).unlink(missing_ok=True)

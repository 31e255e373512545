"""Orbax checkpoints of the training state (parameters, optimizer state, step, loss sums)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` in ``workdir/checkpoints``.

  The state is any pytree of arrays (here ``{"params", "opt_state", "step", ...}``).
  ``restore`` takes a target whose leaves carry shapes, dtypes and shardings, so arrays
  come back laid out on the current mesh.
  """

  def __init__(self, workdir: str | os.PathLike[str], max_to_keep: int = 2):
    self.directory = Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously (training continues); ``close`` waits for it."""
    self.manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores ``step`` (default: the latest) into the structure and shardings of ``target``."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        target,
    )
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

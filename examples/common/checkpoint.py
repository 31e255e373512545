"""Orbax checkpoints of the training state (parameters, optimizer state, step, loss sums).

A checkpoint that cannot be written or read raises :class:`CheckpointError`, whose message
names the directory, the step, the one-line reason and what to do (which older checkpoint
is intact and how to resume from it); the orbax traceback stays attached as its cause.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or restored; the message says which and what to do."""


def _reason(error: BaseException) -> str:
  """The first line of an error, shortened (orbax / TensorStore messages run for pages)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  # Long messages keep their head (what failed) and their tail (the OS error, if any).
  text = text if len(text) <= 300 else f"{text[:150]} ... {text[-150:]}"
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Checkpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` in ``workdir/checkpoints``.

  The state is any pytree of arrays (here ``{"params", "opt_state", "step", ...}``).
  ``restore`` takes a target whose leaves carry shapes, dtypes and shardings, so arrays
  come back laid out on the current mesh.

  Args:
    workdir: the run's folder; checkpoints go to its ``checkpoints`` folder.
    max_to_keep: how many checkpoints to keep (older ones are deleted).
    create: create the folder if missing (``False`` to only read an existing run).
  """

  def __init__(self, workdir: str | os.PathLike[str], max_to_keep: int = 2,
               *, create: bool = True):
    self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create),
    )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step (``None``: there is none)."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the complete checkpoints, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously (training continues); ``close`` waits for it.

    Raises:
      CheckpointError: this save, or the previous one still being written, failed (disk
        full, read-only folder, ...); the message names the last complete checkpoint.
    """
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state))
    except Exception as e:
      raise self._write_error(e) from e

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores ``step`` (default: the latest) into the structure and shardings of ``target``.

    Raises:
      CheckpointError: the checkpoint is missing or cannot be read (a truncated array file,
        damaged metadata); the message names the newest older checkpoint that restores.
    """
    steps = self.all_steps()
    step = self.latest_step() if step is None else step
    if step not in steps:
      raise CheckpointError(
          f"no checkpoint of step {step} in {self.directory}; it holds steps "
          f"{', '.join(map(str, steps)) or 'none'}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        target,
    )
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
      intact = None
      for older in reversed([s for s in steps if s < step]):
        try:
          self.manager.restore(older, args=ocp.args.StandardRestore(abstract))
        except Exception:  # also damaged: keep looking
          continue
        intact = older
        break
      advice = (f"step {intact} is intact: continue from it with --resume --resume-step "
                f"{intact} (fit(resume_step={intact})), which deletes the later checkpoints"
                if intact is not None else
                "no older checkpoint restores either: start again in a new --workdir")
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} is damaged ({_reason(e)}); "
          f"{advice}") from e

  def restore_pure(self, step: int | None = None, item: str | None = None) -> Any:
    """Restores a checkpoint without a target, as plain nested dicts of NumPy arrays.

    The layout is ``nnx.to_pure_dict``'s (``{"h": {0: {"attn": ...}}}``: integer keys,
    no ``value`` wrappers), so ``nnx.replace_by_pure_dict`` loads it into a model.
    See also :func:`restore_pure`.

    Args:
      step: the checkpoint (default: the latest).
      item: one entry of the saved state (``"params"``); ``None``: all of it.

    Returns:
      The restored tree.

    Raises:
      CheckpointError: there is no checkpoint, or it cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      raw = self.manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} cannot be read ({_reason(e)})") from e
    return _pure(raw if item is None else raw[item])

  def delete_after(self, step: int) -> list[int]:
    """Deletes the checkpoints later than ``step`` (resuming from an older one); returns them."""
    later = [s for s in self.all_steps() if s > step]
    for s in later:
      self.manager.delete(s)
    return later

  def close(self) -> None:
    """Waits for the last save and closes the manager.

    Raises:
      CheckpointError: the last save failed.
    """
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._write_error(e) from e
    finally:
      self.manager.close()

  def _write_error(self, error: BaseException) -> CheckpointError:
    try:
      self.manager.reload()
      last = self.manager.latest_step()
    except Exception:  # the folder itself may be unreadable
      last = None
    where = (f"the last complete checkpoint, step {last}, is intact: free space or fix the "
             f"folder, then continue with --resume" if last is not None
             else "there is no complete checkpoint yet")
    return CheckpointError(
        f"writing a checkpoint in {self.directory} failed ({_reason(error)}); {where}")


def restore_pure(path: str | os.PathLike[str], step: int | None = None,
                 item: str | None = "params") -> Any:
  """Reads a run's checkpoint as plain nested dicts (:meth:`Checkpointer.restore_pure`).

  Args:
    path: a run's workdir, or its ``checkpoints`` folder.
    step: the checkpoint (default: the latest).
    item: the entry of the saved state (default ``"params"``; ``None``: all of it).

  Returns:
    The restored tree, in ``nnx.to_pure_dict``'s layout.

  Raises:
    CheckpointError: there is no checkpoint, or it cannot be read.
  """
  workdir = Path(path)
  if not (workdir / CHECKPOINT_DIR).is_dir() and workdir.name == CHECKPOINT_DIR:
    workdir = workdir.parent
  if not (workdir / CHECKPOINT_DIR).is_dir():
    raise CheckpointError(f"no checkpoints folder in {workdir.absolute()}")
  ckpt = Checkpointer(workdir, create=False)
  try:
    return ckpt.restore_pure(step, item)
  finally:
    ckpt.manager.close()


def _pure(tree: Any) -> Any:
  """A raw orbax restore of an nnx state in ``nnx.to_pure_dict``'s layout."""
  if isinstance(tree, dict):
    if set(tree) == {"value"}:
      return _pure(tree["value"])
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _pure(v)
            for k, v in tree.items()}
  if isinstance(tree, list | tuple):  # optimizer states (chains, named tuples) come back so
    return [_pure(v) for v in tree]
  return tree if tree is None else np.asarray(tree)

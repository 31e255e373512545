"""State-format versions and the migration of checkpoints written by older releases.

The optimizer state's *format* is its structure: which NamedTuples, which fields, which
trees. :data:`STATE_FORMAT_VERSION` changes whenever that structure does, so that a
checkpoint written by one release is either restored as it is or migrated by
:func:`migrate_state`, never silently misread. The formats:

- 1 (optax_sai 0.1.0): ``ScaleByGsnrState(captured, gsnr, normalizer)``, where
  ``captured`` is a tree of bools like ``gsnr``.
- 2 (optax_sai 0.2.0): ``ScaleByGsnrState(gsnr, normalizer)``; a block is captured when
  its g-SNR is > 0 (``state.captured`` is derived).

``SaiMomentumState(count, mu)`` is the same in both. The functions here work on the tree
a checkpointing library returns when it restores *without* a target (Orbax:
``StandardCheckpointer().restore(path)``), in which NamedTuples are dicts keyed by field
name and tuples are lists; they do not import a checkpointing library.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STATE_FORMAT_VERSION = 2

_FORMAT_KEYS = {
    1: frozenset({"captured", "gsnr", "normalizer"}),
    2: frozenset({"gsnr", "normalizer"}),
}
_FORMAT_NAMES = ("format 1 (optax_sai 0.1.0: ScaleByGsnrState(captured, gsnr, normalizer)) "
                 "and format 2 (optax_sai >= 0.2.0: ScaleByGsnrState(gsnr, normalizer))")


def _is_gsnr_state(node: Any) -> bool:
  """Whether a raw node is a serialised ``ScaleByGsnrState`` of some format."""
  return isinstance(node, dict) and "gsnr" in node and "normalizer" in node


def _gsnr_states(raw: Any) -> list[tuple[str, dict[str, Any]]]:
  """Every serialised ``ScaleByGsnrState`` in a raw tree, with its path."""
  found = jax.tree_util.tree_flatten_with_path(raw, is_leaf=_is_gsnr_state)[0]
  return [(jax.tree_util.keystr(path), node) for path, node in found if _is_gsnr_state(node)]


def _format_of(path: str, node: dict[str, Any]) -> int:
  for version, keys in _FORMAT_KEYS.items():
    if set(node) == keys:
      return version
  raise ValueError(
      f"The g-SNR state at {path} has fields {sorted(node)}, which match neither "
      f"{_FORMAT_NAMES}; it was not written by a released optax_sai."
  )


def state_format(raw: Any) -> int:
  """The state-format version of an optimizer state restored without a target.

  Args:
    raw: a tree as a checkpointing library restores it without a target (NamedTuples
      as dicts keyed by field name), containing the state of ``sgd_sai``,
      ``scale_by_sai`` or ``scale_by_gsnr`` anywhere inside (a whole checkpoint will do).

  Returns:
    1 or 2 (see the module docstring); :data:`STATE_FORMAT_VERSION` is the current one.

  Raises:
    ValueError: if the tree holds no g-SNR state, one of an unknown layout, or states
      of different formats.
  """
  states = _gsnr_states(raw)
  if not states:
    raise ValueError("No optax_sai g-SNR state (a node with 'gsnr' and 'normalizer') found "
                     "in this tree; pass the tree restored without a target.")
  versions = {_format_of(path, node) for path, node in states}
  if len(versions) > 1:
    raise ValueError(f"This tree mixes state formats {sorted(versions)}.")
  return versions.pop()


def _captured_gsnr(captured: Any, gsnr: Any) -> Any:
  """Format 1's ``gsnr`` under format 2's rule: > 0 exactly where ``captured``."""

  def leaf(flag, value):
    value = jnp.asarray(value)
    tiny = jnp.finfo(value.dtype).tiny
    return jnp.where(np.asarray(flag), jnp.maximum(value, tiny), 0).astype(value.dtype)

  return jax.tree.map(leaf, captured, gsnr)


def migrate_state(raw: Any) -> Any:
  """Converts an optimizer state restored without a target to the current format.

  Format 1's ``captured`` tree is folded into ``gsnr`` (a captured block keeps its
  g-SNR, at least the smallest normal number; a block not captured holds 0), which is
  how format 2 marks capture. A tree already in the current format is returned as is.
  Restore the result into your target structure with the checkpointing library, e.g.
  ``orbax.checkpoint.tree.deserialize_tree(migrate_state(raw), target)``.

  Args:
    raw: a tree as a checkpointing library restores it without a target (see
      :func:`state_format`); a whole checkpoint (parameters and optimizer state) will do.

  Returns:
    The same tree with every g-SNR state in the current format.

  Raises:
    ValueError: as :func:`state_format`, naming both formats.

  Example:
    >>> import jax.numpy as jnp, optax_sai
    >>> old = [{"captured": {"w": jnp.array([True, False])},
    ...         "gsnr": {"w": jnp.array([2.5, 0.0])}, "normalizer": jnp.array(2.5)},
    ...        {"count": jnp.array(1), "mu": {"w": jnp.zeros((2, 3))}}]
    >>> optax_sai.state_format(old)
    1
    >>> new = optax_sai.migrate_state(old)
    >>> sorted(new[0]), new[0]["gsnr"]["w"].tolist()
    (['gsnr', 'normalizer'], [2.5, 0.0])
  """
  version = state_format(raw)
  if version == STATE_FORMAT_VERSION:
    return raw

  def convert(node):
    if not _is_gsnr_state(node):
      return node
    return {"gsnr": _captured_gsnr(node["captured"], node["gsnr"]),
            "normalizer": node["normalizer"]}

  return jax.tree.map(convert, raw, is_leaf=_is_gsnr_state)

"""What optax_sai knows about Flax's containers, in one place (Flax is never imported here).

Flax wraps arrays in objects that pytrees flatten through, so optax transforms mostly see
plain arrays. Two places need to know more, and this module is the only one that does:

- **Metadata boxes** around one parameter: ``flax.nnx.Variable`` (``nnx.Param``, and the
  variables ``nnx.Optimizer`` keeps its state in) and Flax Linen's ``nn.Partitioned`` /
  ``nn.LogicallyPartitioned``. They carry the parameter's sharding annotation. The
  per-block statistics of :func:`optax_sai.scale_by_gsnr` have another shape (a scalar per
  leaf), so they are built from the unboxed arrays: the box's annotation must not reach
  them (a scalar cannot take a rank-2 spec). Recognised by their protocol, not their names:
  NNX variables have ``get_metadata`` and ``get_value``; Linen boxes have
  ``replace_boxed``.
- **NNX optimizer state variables** (``OptState``; formerly ``OptVariable`` and
  ``OptArray``), which :func:`optax_sai.find_gsnr_state` unwraps to return plain arrays.

``tests/test_flax_compat.py`` checks these predicates against the real Flax classes, so a
rename or protocol change in Flax fails a test instead of silently changing behaviour.
"""

from typing import Any

import jax

# Names of NNX optimizer-state containers that older Flax releases used without the
# ``get_value`` protocol; matched by name because Flax is not imported here.
NNX_OPT_STATE_NAMES = frozenset({"OptState", "OptVariable", "OptArray"})


def is_box(x: Any) -> bool:
  """Whether ``x`` is a metadata box around one array (an NNX Variable, a Linen box)."""
  t = type(x)
  boxed = (hasattr(t, "get_metadata") and hasattr(t, "get_value")) or hasattr(t, "replace_boxed")
  return boxed and len(jax.tree.leaves(x)) == 1


def strip_boxes(tree: Any) -> Any:
  """``tree`` with every metadata box replaced by the one array it holds."""
  return jax.tree.map(lambda x: jax.tree.leaves(x)[0] if is_box(x) else x, tree, is_leaf=is_box)


def is_variable(x: Any) -> bool:
  """Whether ``x`` is an NNX variable (any kind, optimizer state included) to unwrap."""
  return hasattr(x, "get_value") or type(x).__name__ in NNX_OPT_STATE_NAMES


def unwrap(x: Any) -> Any:
  """The array inside an NNX variable (``x`` itself for anything else)."""
  if hasattr(x, "get_value"):
    return x.get_value()
  return getattr(x, "value", x)

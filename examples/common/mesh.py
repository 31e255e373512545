"""The device mesh and the shardings of parameters, optimizer state and batches.

``--mesh data=2,fsdp=4`` builds a 2-D ``jax.sharding.Mesh``. The batch's leading axis is
split over ``data`` and ``fsdp`` together; each parameter (and each optimizer-state leaf,
by the same rule) is split over ``fsdp`` along its largest dimension divisible by the
``fsdp`` size, and replicated over ``data`` (FSDP / ZeRO-3 style). XLA inserts the
all-gathers and reduce-scatters; the training code does not change. The default mesh puts
every device on ``data`` (plain data parallelism).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def parse_mesh(spec: str | None, n_devices: int | None = None) -> dict[str, int]:
  """Parses ``"data=2,fsdp=4"`` into axis sizes; a ``-1`` size takes the remaining devices.

  An axis left out is ``fsdp=1`` / ``data=-1`` (so ``None`` puts every device on ``data``).
  The product must equal the device count.
  """
  n = jax.device_count() if n_devices is None else n_devices
  sizes = {"data": -1, "fsdp": 1}
  if spec:
    for part in spec.split(","):
      key, _, value = part.partition("=")
      key = key.strip()
      if key not in AXES or not value.strip().lstrip("-").isdigit():
        raise ValueError(f"bad --mesh entry {part!r}; expected e.g. 'data=2,fsdp=4'")
      sizes[key] = int(value)
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError("at most one mesh axis may be -1")
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if n % known:
      raise ValueError(f"cannot fill mesh {sizes} with {n} devices")
    sizes[free[0]] = n // known
  if math.prod(sizes.values()) != n:
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {n}")
  return sizes


def make_mesh(spec: str | None = None) -> Mesh:
  """A ``Mesh`` with axes ``("data", "fsdp")`` over all devices."""
  sizes = parse_mesh(spec)
  devices = np.asarray(jax.devices()).reshape(tuple(sizes[a] for a in AXES))
  return Mesh(devices, AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
  """Shards the largest dimension divisible by ``fsdp`` over ``fsdp``; else replicates."""
  if fsdp <= 1 or not shape:
    return PartitionSpec()
  candidates = [(d, i) for i, d in enumerate(shape) if d % fsdp == 0 and d >= fsdp]
  if not candidates:
    return PartitionSpec()
  _, axis = max(candidates, key=lambda c: (c[0], -c[1]))
  spec: list[str | None] = [None] * len(shape)
  spec[axis] = "fsdp"
  return PartitionSpec(*spec)


def tree_shardings(mesh: Mesh, tree: Any) -> Any:
  """``NamedSharding`` for every array leaf of ``tree`` (abstract or concrete) by the FSDP rule.

  The rule depends on the shape only, so momentum buffers get their parameter's sharding.
  """
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data`` and ``fsdp``."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places the global batch on the mesh; the batch must divide the data shards.

  Every process computes the same global batch (the data order is a function of seed and
  step) and hands over only the shards its own devices hold, so this also works on several
  hosts after ``jax.distributed.initialize()``.
  """
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in batch.items():
    if value.shape[0] % n:
      raise ValueError(f"batch size {value.shape[0]} is not divisible by the {n} data shards")
    out[key] = jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
  return out

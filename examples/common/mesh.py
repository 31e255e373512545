"""The device mesh and the shardings of parameters, optimizer state and batches.

``--mesh data=2,fsdp=4`` builds a 2-D ``jax.sharding.Mesh``. The batch's leading axis is
split over ``data`` and ``fsdp`` together; each parameter (and each optimizer-state leaf,
by the same rule) is split over ``fsdp`` along its largest dimension divisible by the
``fsdp`` size, and replicated over ``data`` (FSDP / ZeRO-3 style). XLA inserts the
all-gathers and reduce-scatters; the training code does not change. The default mesh puts
every device on ``data`` (plain data parallelism).

Several processes (hosts, or local processes on CPU) join one job through the environment,
before JAX touches a device: :func:`join_distributed` (called by :func:`make_mesh`) reads
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` and calls
``jax.distributed.initialize``. The mesh then spans every process's devices, and each
process builds only the rows of the global batch that its own devices hold
(:func:`process_rows`, :func:`shard_batch`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
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


COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
AUTO_ENV = "OPTAX_SAI_DISTRIBUTED"


def join_distributed(environ: Mapping[str, str] | None = None) -> bool:
  """Joins the multi-process job the environment describes; returns whether there is one.

  The variables (all strings):

  * ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0's coordinator (read by JAX too);
  * ``JAX_NUM_PROCESSES``: how many processes take part;
  * ``JAX_PROCESS_ID``: this process's index, ``0 .. JAX_NUM_PROCESSES - 1``;
  * ``OPTAX_SAI_DISTRIBUTED=1``: join with ``jax.distributed.initialize()`` and no
    arguments, leaving everything to JAX's cluster detection (Cloud TPU, SLURM, Open MPI).

  Any of them set means a multi-process job; the ones left unset are filled in by JAX's
  cluster detection (``JAX_LOCAL_DEVICE_IDS`` and ``JAX_COORDINATOR_BIND_ADDRESS`` are
  read by JAX itself). On CPU the processes exchange collectives with gloo (unless
  ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise), so several local processes on
  one machine make a real multi-controller job over loopback.

  Must run before anything initialises JAX's backends; a second call is a no-op.

  Args:
    environ: the variables to read (default ``os.environ``).

  Returns:
    ``True`` if this process is part of a multi-process job (now or already).
  """
  env = os.environ if environ is None else environ
  is_initialized = getattr(jax.distributed, "is_initialized", None)  # not in every jax
  if is_initialized is not None and is_initialized():
    return True
  address = env.get(COORDINATOR_ENV) or None
  num, pid = env.get(NUM_PROCESSES_ENV) or None, env.get(PROCESS_ID_ENV) or None
  auto = env.get(AUTO_ENV, "").strip().lower() not in ("", "0", "false", "no")
  if address is None and num is None and pid is None and not auto:
    return False
  if not env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=address,
      num_processes=None if num is None else int(num),
      process_id=None if pid is None else int(pid),
  )
  return True


def make_mesh(spec: str | None = None) -> Mesh:
  """A ``Mesh`` with axes ``("data", "fsdp")`` over all devices of all processes.

  Joins a multi-process job first if the environment describes one (:func:`join_distributed`).
  """
  join_distributed()
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


def _check_divisible(batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % n:
    raise ValueError(f"batch size {batch_size} is not divisible by the {n} data shards")


def put_replicated(value: Any, mesh: Mesh) -> jax.Array:
  """A host value as an array replicated on every device of the mesh, in every process.

  Each process passes the same value (a step count, a running sum reset to zero). Unlike
  ``jnp.asarray``, whose result lives on one local device, the result is a global array
  that orbax can checkpoint in a multi-process job.
  """
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, replicated(mesh), lambda index: value[index])


def process_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
  """The rows of a global batch of ``batch_size`` that this process's devices hold.

  Ascending global row indices. In a single process that is every row; with ``P``
  processes sharing the batch axes it is ``batch_size / P`` of them.
  """
  _check_divisible(batch_size, mesh)
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  rows: set[int] = set()
  for index in index_map.values():
    rows.update(range(*index[0].indices(batch_size)))
  return np.asarray(sorted(rows), dtype=np.int64)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, *,
                rows: np.ndarray | None = None,
                batch_size: int | None = None) -> dict[str, jax.Array]:
  """Places a batch on the mesh as global arrays split over ``data`` x ``fsdp``.

  Args:
    batch: host arrays. Either the whole global batch (``rows=None``: each process hands
      over only the slices its devices hold), or only the global rows ``rows`` of it, in
      that order, as :func:`process_rows` gives them (then no process ever builds rows
      that other processes' devices hold).
    mesh: the device mesh.
    rows: the global row indices that ``batch`` holds; ``None`` for the whole batch.
    batch_size: the global batch size; required with ``rows``.

  Returns:
    The global arrays, whose leading dimension is the global batch size.
  """
  if rows is not None and batch_size is None:
    raise ValueError("shard_batch(rows=...) needs the global batch_size")
  sharding = batch_sharding(mesh)
  positions = None if rows is None else {int(r): i for i, r in enumerate(rows)}
  out = {}
  for key, value in batch.items():
    if rows is None:
      shape = value.shape
    else:
      if value.shape[0] != len(rows):
        raise ValueError(f"{key!r} has {value.shape[0]} rows; expected {len(rows)}")
      shape = (batch_size, *value.shape[1:])
    _check_divisible(shape[0], mesh)

    def callback(index, value=value, n=shape[0]):
      if positions is None:
        return value[index]
      try:
        take = [positions[r] for r in range(*index[0].indices(n))]
      except KeyError as e:
        raise ValueError(f"row {e.args[0]} of the global batch was not built here") from None
      return value[(np.asarray(take), *index[1:])]

    out[key] = jax.make_array_from_callback(shape, sharding, callback)
  return out

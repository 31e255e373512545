"""Shardings of the optimizer state, derived from the parameters' shardings.

The momentum of SGD-SaI is a parameter-sized tree: it is sharded exactly like
the parameters. The per-block g-SNR values, the normaliser and the step counters
are a few bytes each: they are replicated on every device, whatever the
parameters' sharding, so the steady-state step multiplies a sharded gradient by a
local copy of its scale and needs no communication. This is the one rule, kept at
init (the statistics are created replicated) and in the capture (statistics of a
leaf sharded along its stacked axis over an explicit mesh axis are gathered, see
``_transforms._replicated``), so both branches of the capture ``cond`` agree under
``jax.set_mesh`` with explicit axes as under auto ones. ``optax.tree_map_params``
alone cannot tell them apart: the per-block trees have the parameters' structure
(one scalar per leaf), so it would give a scalar its parameter's rank-2 spec.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from optax_sai import _transforms


def _replicated_like(param_shardings: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """The replicated counterpart of the given shardings (a spec, or a sharding on the mesh)."""
  leaves = jax.tree.leaves(param_shardings)
  if mesh is None:
    named = [s for s in leaves if isinstance(s, NamedSharding)]
    if named:
      mesh = named[0].mesh
    elif leaves and all(isinstance(s, PartitionSpec) for s in leaves):
      return PartitionSpec()
    elif leaves:
      raise ValueError(
          "state_shardings: pass `mesh=` when the parameter shardings are not "
          f"NamedShardings or PartitionSpecs (got {type(leaves[0]).__name__})."
      )
    else:
      return PartitionSpec()
  return NamedSharding(mesh, PartitionSpec())


def _spec_rank(sharding: Any) -> int | None:
  """How many dimensions a sharding's spec names (None when it has no spec)."""
  spec = sharding if isinstance(sharding, PartitionSpec) else getattr(sharding, "spec", None)
  return None if spec is None else len(spec)


def state_shardings(
    tx: optax.GradientTransformation | Any,
    params: Any,
    param_shardings: Any,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> Any:
  """Shardings for an optimizer state, given the shardings of its parameters.

  Parameter-like state (the SGD-SaI momentum, Adam's moments, ...) takes its
  parameter's sharding; everything else (per-block g-SNR values, the
  normaliser, counters, injected hyperparameters) is replicated. A params-like
  leaf whose shape differs from its parameter's (e.g. the scalar placeholder
  kept for an integer leaf) is replicated too. Works for ``sgd_sai`` and for any
  optax transformation around it (``chain``, ``inject_hyperparams``,
  ``MultiSteps``, ``masked``, ``apply_if_finite``): a subtree of the state is
  parameter-like when it has the parameters' tree structure (masked-out leaves
  allowed), as in ``optax.tree_map_params``, except that the per-block trees of
  :class:`ScaleByGsnrState`, which have that structure too, are replicated.

  Args:
    tx: an ``optax.GradientTransformation`` (or its ``init`` function).
    params: the parameters, concrete or abstract (``jax.ShapeDtypeStruct``);
      only shapes and dtypes are read (through ``jax.eval_shape``).
    param_shardings: a pytree like ``params`` of ``jax.sharding.NamedSharding``
      or of ``PartitionSpec`` (the result then holds ``PartitionSpec`` objects).
    mesh: the mesh of the replicated shardings; by default the mesh of the
      first ``NamedSharding`` in ``param_shardings``.

  Returns:
    A pytree with the structure of ``jax.eval_shape(tx.init, params)`` whose
    leaves are shardings (or specs), ready for ``jax.jit(...,
    out_shardings=...)``, ``jax.device_put`` or an Orbax restore.

  Example:
    >>> import jax, jax.numpy as jnp, optax_sai
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ("fsdp",))
    >>> params = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    >>> shardings = {"w": NamedSharding(mesh, P("fsdp", None))}
    >>> tx = optax_sai.sgd_sai(1.0)
    >>> out = optax_sai.state_shardings(tx, params, shardings)
    >>> out[0].gsnr["w"].spec == P(), out[1].mu["w"].spec == P("fsdp", None)
    (True, True)
    >>> state = jax.jit(tx.init, out_shardings=out)({"w": jnp.zeros((8, 4))})
  """
  init = tx.init if hasattr(tx, "init") else tx
  state_shape = jax.eval_shape(init, params)
  replicated = _replicated_like(param_shardings, mesh)
  params_def = jax.tree.structure(params)
  shapes = jax.tree.map(lambda x: tuple(x.shape), params)

  def is_masked(x):
    return isinstance(x, optax.MaskedNode)

  def is_params_like(x):
    return jax.tree.structure(x, is_leaf=is_masked) == params_def

  def params_like_leaf(leaf, shape, sharding):
    if is_masked(leaf):
      return leaf
    rank = _spec_rank(sharding)
    if tuple(leaf.shape) != shape or (rank is not None and rank > len(leaf.shape)):
      return replicated
    return sharding

  def node(x):
    if isinstance(x, _transforms.ScaleByGsnrState):  # per-block scalars: replicated
      return jax.tree.map(lambda _: replicated, x)
    if is_params_like(x):
      return jax.tree.map(params_like_leaf, x, shapes, param_shardings, is_leaf=is_masked)
    return replicated

  return jax.tree.map(
      node, state_shape,
      is_leaf=lambda x: isinstance(x, _transforms.ScaleByGsnrState) or is_params_like(x),
  )


def init_sharded(
    tx: optax.GradientTransformation,
    params: Any,
    param_shardings: Any = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> Any:
  """Creates the optimizer state directly sharded, without a replicated copy.

  With abstract ``params`` (``jax.ShapeDtypeStruct`` objects) no parameter is ever
  materialised: ``tx.init`` is traced on stand-in zeros inside one ``jax.jit``
  whose outputs are the sharded state, so a model too large for one device gets
  its state created in place, shard by shard. (``sgd_sai``'s init reads only
  shapes and dtypes; a transformation whose init reads parameter values would
  see zeros.)

  Args:
    tx: the optimizer.
    params: the parameters, concrete arrays or ``jax.ShapeDtypeStruct`` objects.
    param_shardings: a pytree like ``params`` of ``NamedSharding`` objects; by default
      each leaf's own ``.sharding``.
    mesh: see :func:`state_shardings`.

  Returns:
    The optimizer state, each leaf placed with :func:`state_shardings`.

  Example:
    >>> import jax, jax.numpy as jnp, optax_sai
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ("fsdp",))
    >>> w = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))
    >>> state = optax_sai.init_sharded(optax_sai.sgd_sai(1.0), {"w": w})
    >>> state[1].mu["w"].sharding.spec == P("fsdp")
    True
  """
  if param_shardings is None:
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
  out_shardings = state_shardings(tx, params, param_shardings, mesh=mesh)
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
    # Stand-in zeros, traced inside the jit: XLA never materialises them, only the
    # (sharded) state they are the shapes of.
    def init_from_shapes():
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
      return tx.init(zeros)
    return jax.jit(init_from_shapes, out_shardings=out_shardings)()
  return jax.jit(tx.init, out_shardings=out_shardings)(params)

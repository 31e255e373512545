"""Multi-device checks of optax_sai under SPMD sharding, run in a subprocess.

``tests/test_sharding.py`` runs this file with 8 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set before JAX starts) and
reads one JSON object from its last stdout line: ``{case: result}``. Each case returns
plain numbers and strings, or ``{"error": traceback}``; the assertions live in the test
module so that a failure names its case.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_sai  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hlo_utils  # noqa: E402

STEPS = 5
COLLECTIVES = {"all-reduce", "all-reduce-start", "reduce-scatter", "all-gather",
               "all-gather-start", "all-to-all", "collective-permute",
               "collective-permute-start"}


def _mesh(shape, names):
  """A mesh whose axes are Auto: XLA's sharding propagation inserts the communication."""
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def _params(key):
  """A small MLP with a norm scale and a stacked (scanned-style) leaf of 4 layers."""
  k = jax.random.split(key, 5)
  return {
      "w1": jax.random.normal(k[0], (16, 64)) / 4,
      "b1": jnp.zeros((64,)),
      "scale": jnp.ones((64,)),
      "stack": jax.random.normal(k[1], (4, 64, 64)) / 8,
      "w2": jax.random.normal(k[2], (64, 8)) / 8,
      "b2": jnp.zeros((8,)),
  }


def _loss(p, batch):
  h = jnp.tanh(batch["x"] @ p["w1"] + p["b1"]) * p["scale"]
  for i in range(p["stack"].shape[0]):
    h = h + jnp.tanh(h @ p["stack"][i])
  return jnp.mean((h @ p["w2"] + p["b2"] - batch["y"]) ** 2)


def _batch(key, n=64):
  kx, ky = jax.random.split(key)
  return {"x": jax.random.normal(kx, (n, 16)), "y": jax.random.normal(ky, (n, 8))}


def _tx():
  return optax_sai.sgd_sai(0.05, momentum=0.9, weight_decay=1e-2,
                           block_axes={"stack": 0, "w1": None, "b1": None, "scale": None,
                                       "w2": None, "b2": None})


def _step_fn(tx):
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(_loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss
  return step


def _run(params, state, batches, step):
  losses = []
  for b in batches:
    params, state, loss = step(params, state, b)
    losses.append(float(loss))
  return params, state, losses


def _diff(a, b):
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  abs_ = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(a, b, strict=True))
  rel = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))
                         / (np.abs(np.asarray(y)) + 1e-6))) for x, y in zip(a, b, strict=True))
  return abs_, rel


def _diff_of_max(a, b):
  """The largest ``max |a - b| / max |b|`` over the leaves: the error in units of each
  array's scale (robust to entries near zero, unlike an entrywise relative error)."""
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _spec(x):
  s = x.sharding
  return "replicated" if s.is_fully_replicated else str(tuple(s.spec))


def _equivalence(mesh, param_specs, batch_spec):
  """Sharded vs single-device run of the same global batches."""
  tx = _tx()
  params = _params(jax.random.key(0))
  batches = [_batch(jax.random.key(i + 1)) for i in range(STEPS)]
  # Single device: everything on device 0.
  dev0 = jax.devices()[0]
  p1 = jax.device_put(params, dev0)
  ref_p, ref_s, ref_losses = _run(p1, tx.init(p1), jax.device_put(batches, dev0),
                                  jax.jit(_step_fn(tx)))
  # Sharded: parameters by ``param_specs``, batch by ``batch_spec``, state by the helper.
  shardings = {k: NamedSharding(mesh, s) for k, s in param_specs.items()}
  ps = jax.device_put(params, shardings)
  state = optax_sai.init_sharded(tx, ps)
  expected = optax_sai.state_shardings(tx, ps, shardings)
  batch_sh = NamedSharding(mesh, batch_spec)
  bs = jax.device_put(batches, batch_sh)
  # The usual production form: shardings pinned on both sides of the step.
  step = jax.jit(_step_fn(tx), in_shardings=(shardings, expected, batch_sh),
                 out_shardings=(shardings, expected, NamedSharding(mesh, P())))
  sh_p, sh_s, sh_losses = _run(ps, state, bs, step)
  # Without any shardings given to jit, XLA's propagation must hand the per-block
  # state back exactly as it came in (no resharding, no recompilation for it).
  free = jax.jit(_step_fn(tx))
  _, s1, _ = free(ps, state, bs[0])
  _, s2, _ = free(ps, s1, bs[1])
  gs0, gs2 = optax_sai.find_gsnr_state(state), optax_sai.find_gsnr_state(s2)
  dp = _diff(sh_p, ref_p)
  ds = _diff(optax_sai.gsnr_scales(sh_s), optax_sai.gsnr_scales(ref_s))
  gs = optax_sai.find_gsnr_state(sh_s)
  mu = sh_s[1].mu
  return {
      "param_abs": dp[0], "param_rel": dp[1], "scale_abs": ds[0], "scale_rel": ds[1],
      "loss_abs": max(abs(a - b) for a, b in zip(sh_losses, ref_losses, strict=True)),
      "cache_size": step._cache_size(),
      "free_per_block_stable": all(
          a.sharding == b.sharding
          for a, b in zip(jax.tree.leaves(gs0), jax.tree.leaves(gs2), strict=True)),
      "params_keep_sharding": all(
          x.sharding == shardings[k] for k, x in sh_p.items()),
      "state_keeps_sharding": all(
          x.sharding.is_equivalent_to(s, x.ndim)
          for x, s in zip(jax.tree.leaves(sh_s), jax.tree.leaves(expected), strict=True)),
      "mu_specs": {k: _spec(v) for k, v in mu.items()},
      "param_specs": {k: _spec(v) for k, v in sh_p.items()},
      "gsnr_specs": sorted({_spec(v) for v in jax.tree.leaves(gs.gsnr)}),
      "scalar_specs": sorted({_spec(gs.normalizer), _spec(sh_s[1].count)}),
      "stack_gsnr_shape": list(gs.gsnr["stack"].shape),
  }


def case_fsdp():
  mesh = _mesh((8,), ("fsdp",))
  specs = {"w1": P(None, "fsdp"), "b1": P("fsdp"), "scale": P("fsdp"),
           "stack": P(None, "fsdp", None), "w2": P("fsdp", None), "b2": P()}
  return _equivalence(mesh, specs, P("fsdp"))


def case_data_model():
  mesh = _mesh((2, 4), ("data", "model"))
  specs = {"w1": P(None, "model"), "b1": P("model"), "scale": P("model"),
           "stack": P(None, None, "model"), "w2": P("model", None), "b2": P()}
  return _equivalence(mesh, specs, P("data"))


def _collectives(comps, names):
  return sorted(i.op for _, i, _ in hlo_utils.ops(comps, names, COLLECTIVES))


def _split_hlo(compiled_text):
  comps, entry = hlo_utils.parse(compiled_text)
  conds = hlo_utils.conditional_branches(comps)
  steady = hlo_utils.reachable(comps, entry, skip_branch=0)  # branch 0: the capture
  capture = set()
  for branches in conds:
    capture |= hlo_utils.reachable(comps, branches[0], skip_branch=None)
  return comps, conds, steady, capture


def case_hlo():
  """The compiled optimizer step under FSDP: collectives only in the capture branch."""
  mesh = _mesh((8,), ("fsdp",))
  specs = {"w1": P(None, "fsdp"), "b1": P("fsdp"), "scale": P("fsdp"),
           "stack": P(None, "fsdp", None), "w2": P("fsdp", None), "b2": P()}
  shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  tx = _tx()
  params = jax.device_put(_params(jax.random.key(0)), shardings)
  state = optax_sai.init_sharded(tx, params)
  state_sh = optax_sai.state_shardings(tx, params, shardings)

  def opt_step(params, state, grads):  # gradients arrive sharded like the parameters
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(opt_step, in_shardings=(shardings, state_sh, shardings),
                   out_shardings=(shardings, state_sh), donate_argnums=(0, 1))
  text = jitted.lower(params, state, params).compile().as_text()
  comps, conds, steady, capture = _split_hlo(text)

  # The whole train step on a 2-D mesh: the steady path's collectives equal those
  # of the same step with plain SGD + momentum + weight decay (the gradient's own).
  mesh2 = _mesh((2, 4), ("data", "fsdp"))
  specs2 = {k: P(*[("fsdp" if a == "fsdp" else None) for a in s]) for k, s in specs.items()}
  sh2 = {k: NamedSharding(mesh2, s) for k, s in specs2.items()}
  p2 = jax.device_put(_params(jax.random.key(0)), sh2)
  b2 = jax.device_put(_batch(jax.random.key(1)), NamedSharding(mesh2, P(("data", "fsdp"))))
  full = {}
  for name, t in {"sgd_sai": tx, "sgdm": optax.chain(
      optax.trace(0.9), optax.add_decayed_weights(1e-2), optax.scale(-0.05))}.items():
    s2 = optax_sai.init_sharded(t, p2)
    txt = jax.jit(_step_fn(t)).lower(p2, s2, b2).compile().as_text()
    c, cd, st, cap = _split_hlo(txt)
    full[name] = {"steady": _collectives(c, st), "capture": _collectives(c, cap - st)}
  # Output element counts of the capture's collectives (a gathered gradient would be big).
  capture_sizes = [math.prod(c.shapes[i.name][1]) for c, i, _ in
                   hlo_utils.ops(comps, capture - steady, COLLECTIVES) if i.name in c.shapes]
  return {
      "n_conditionals": len(conds),
      "steady": _collectives(comps, steady),
      "capture_only": _collectives(comps, capture - steady),
      "capture_largest_collective": max(capture_sizes, default=0),
      "full_step": full,
  }


def case_abstract_init():
  """Initialise straight from ShapeDtypeStructs, sharded; also jit(tx.init, out_shardings)."""
  mesh = _mesh((8,), ("fsdp",))
  tx = optax.inject_hyperparams(optax_sai.sgd_sai, static_args=("block_axes",))(
      learning_rate=1e-2, block_axes={"layers": 0, "head": None})
  big = {"layers": jax.ShapeDtypeStruct((6, 512, 256), jnp.bfloat16,
                                        sharding=NamedSharding(mesh, P(None, "fsdp", None))),
         "head": jax.ShapeDtypeStruct((256, 1024), jnp.float32,
                                      sharding=NamedSharding(mesh, P(None, "fsdp")))}
  state = optax_sai.init_sharded(tx, big)
  gs = optax_sai.find_gsnr_state(state)
  mu = state.inner_state[1].mu
  # The low-level route a user may write by hand: eval_shape + rule + jit(init).
  shardings = jax.tree.map(lambda x: x.sharding, big)
  out = optax_sai.state_shardings(tx, jax.eval_shape(lambda: big), shardings)
  concrete = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), big)
  state2 = jax.jit(tx.init, out_shardings=out)(concrete)
  return {
      "mu_specs": {k: _spec(v) for k, v in mu.items()},
      "mu_shard_shape": {k: list(v.addressable_shards[0].data.shape) for k, v in mu.items()},
      "mu_dtypes": {k: str(v.dtype) for k, v in mu.items()},
      "gsnr_shapes": {k: list(v.shape) for k, v in gs.gsnr.items()},
      "gsnr_specs": sorted({_spec(v) for v in jax.tree.leaves(gs)}),
      "hyper_specs": sorted({_spec(v) for v in jax.tree.leaves(state.hyperparams)}),
      "same_as_concrete": all(
          a.sharding == b.sharding
          for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state2), strict=True)),
  }


def case_scan_layers():
  """block_axes on a stacked, sharded leaf gives the unrolled model's per-layer scales."""
  mesh = _mesh((8,), ("fsdp",))
  layers = [jax.random.normal(jax.random.key(i), (32, 64)) * (i + 1) + 0.1 * i
            for i in range(4)]
  grads_unrolled = {f"layer{i}": g for i, g in enumerate(layers)}
  out = {}
  for name, axis in {"nnx_axis0": 0, "maxtext_axis1": 1}.items():
    stacked = jnp.stack(layers, axis=axis)
    spec = P(None, "fsdp", None) if axis == 0 else P("fsdp", None, None)
    g = {"stack": jax.device_put(stacked, NamedSharding(mesh, spec))}
    tx = optax_sai.scale_by_gsnr(block_axes=axis)
    _, st = jax.jit(tx.update)(g, optax_sai.init_sharded(tx, g))
    tx1 = optax_sai.scale_by_gsnr()
    _, st1 = tx1.update(grads_unrolled, tx1.init(grads_unrolled))
    per_layer = np.asarray(optax_sai.gsnr_scales(st)["stack"])
    unrolled = np.asarray([optax_sai.gsnr_scales(st1)[f"layer{i}"] for i in range(4)])
    out[name] = {"max_abs": float(np.max(np.abs(per_layer - unrolled))),
                 "shape": list(per_layer.shape)}
  return out


def case_nnx():
  """nnx.Optimizer under an explicit mesh: out_sharding and optimizer_sharding metadata."""
  from flax import nnx

  mesh = jax.make_mesh((2, 4), ("data", "fsdp"),
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.fc1 = nnx.Linear(16, 64, rngs=rngs,
                            kernel_metadata={"out_sharding": (None, "fsdp")},
                            bias_metadata={"out_sharding": ("fsdp",)})
      # Parameters replicated, optimizer state sharded (ZeRO-1 style).
      self.fc2 = nnx.Linear(64, 8, rngs=rngs,
                            kernel_metadata={"out_sharding": (None, None),
                                             "optimizer_sharding": ("fsdp", None)})

    def __call__(self, x):
      h = jnp.tanh(self.fc1(x))
      if jax.sharding.get_abstract_mesh().axis_names:  # explicit mesh: gather the features
        h = jax.sharding.reshard(h, P("data", None))
      return self.fc2(h)

  def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)

  @nnx.jit
  def train_step(model, opt, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    opt.update(model, grads)
    return loss

  batches = [_batch(jax.random.key(i + 1), 32) for i in range(STEPS)]
  # Single-device reference: no mesh, sharding annotations not applied.
  with nnx.use_eager_sharding(False):
    ref = Model(nnx.Rngs(0))
    ref_opt = nnx.Optimizer(ref, _nnx_tx(), wrt=nnx.Param)
  ref_losses = [float(train_step(ref, ref_opt, b["x"], b["y"])) for b in batches]

  with jax.set_mesh(mesh):
    model = Model(nnx.Rngs(0))
    opt = nnx.Optimizer(model, _nnx_tx(), wrt=nnx.Param)
    specs = nnx.get_partition_spec(nnx.state(opt.opt_state))
    flat = {jax.tree_util.keystr(k): str(tuple(v)) for k, v in
            jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]}
    actual = {jax.tree_util.keystr(k): _spec(v) for k, v in
              jax.tree_util.tree_flatten_with_path(nnx.state(opt.opt_state))[0]}
    losses = []
    for b in batches:
      x = jax.device_put(b["x"], P("data"))
      y = jax.device_put(b["y"], P("data"))
      losses.append(float(train_step(model, opt, x, y)))
    after = {jax.tree_util.keystr(k): _spec(v) for k, v in
             jax.tree_util.tree_flatten_with_path(nnx.state(opt.opt_state))[0]}
  dp = _diff(nnx.state(model, nnx.Param), nnx.state(ref, nnx.Param))
  return {"declared": flat, "actual": actual, "after_steps": after,
          "loss_abs": max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True)),
          "param_abs": dp[0], "param_rel": dp[1]}


def _nnx_tx():
  return optax_sai.sgd_sai(0.05, momentum=0.9, weight_decay=1e-2)


def case_linen():
  """Linen logically partitioned params: nn.get_partition_spec of the abstract state."""
  import flax.linen as nn

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Dense(64, kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("embed", "mlp")))(x)
      return nn.Dense(8, kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("mlp", "embed")))(jnp.tanh(h))

  mesh = _mesh((2, 4), ("data", "fsdp"))
  rules = (("embed", None), ("mlp", "fsdp"))
  model, tx = MLP(), _nnx_tx()
  x = jnp.ones((8, 16))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x)["params"])
  abstract_state = jax.eval_shape(tx.init, abstract)
  logical = nn.get_partition_spec(abstract_state)
  state_sh = nn.logical_to_mesh_sharding(logical, mesh, rules)
  param_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), x)["params"]),
                   out_shardings=param_sh)()
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  helper = optax_sai.state_shardings(tx, params, param_sh)
  gs = optax_sai.find_gsnr_state(logical)
  return {
      "gsnr_logical": sorted({str(tuple(s)) for s in jax.tree.leaves(
          gs, is_leaf=lambda v: isinstance(v, P))}),
      "mu_logical": str(jax.tree.map(lambda s: tuple(s), logical[1].mu,
                                     is_leaf=lambda v: isinstance(v, P))),
      "matches_helper": all(
          a.sharding.is_equivalent_to(b, a.ndim)
          for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(helper), strict=True)),
  }


# ---------------------------------------------------------------- the sharding matrix

# How the stacked leaf (4 layers x 16 x 4) is laid out on the (4, 2) mesh ('x', 'y'). Specs
# name every dimension, as jit's outputs do, so that a step's outputs have the inputs' types.
LAYOUTS = {"stacked": P("x", None, None), "inner": P(None, "y", None),
           "both": P("x", "y", None), "replicated": P(None, None, None)}
MATRIX_STEPS = 3


def _matrix_params():
  k = jax.random.split(jax.random.key(7), 3)
  return {"stack": jax.random.normal(k[0], (4, 16, 4)), "w": jax.random.normal(k[1], (16, 8)),
          "b": jnp.ones((8,))}


def _matrix_grads():
  """Gradients for each step; layer 1 of the stack is all zero at step 1 (captured late)."""
  out = []
  for t in range(MATRIX_STEPS):
    k = jax.random.split(jax.random.key(100 + t), 3)
    g = {"stack": jax.random.normal(k[0], (4, 16, 4)) * jnp.arange(1.0, 5.0)[:, None, None]
         + 0.3, "w": jax.random.normal(k[1], (16, 8)) + 0.1,
         "b": jax.random.normal(k[2], (8,))}
    if t == 0:
      g["stack"] = g["stack"].at[1].set(0.0)
    out.append(g)
  return out


def _matrix_tx(block_axes, normalize):
  return optax_sai.sgd_sai(0.05, momentum=0.9, weight_decay=1e-2, normalize=normalize,
                           block_axes={"stack": 0, "w": None, "b": None} if block_axes else None)


def _opt_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _matrix_cell(axis_type, layout, block_axes, normalize, reference):
  mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type,) * 2)
  specs = {"stack": LAYOUTS[layout], "w": P("y", None), "b": P(None)}
  shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  tx = _matrix_tx(block_axes, normalize)
  params = jax.device_put(_matrix_params(), shardings)
  grads = [jax.device_put(g, shardings) for g in _matrix_grads()]
  expected = optax_sai.state_shardings(tx, params, shardings)
  explicit = axis_type == jax.sharding.AxisType.Explicit
  with jax.set_mesh(mesh) if explicit else _nullcontext():
    if explicit:  # the types carry the shardings: plain jit, plain init
      state = jax.jit(tx.init)(params)
      step = jax.jit(_opt_step(tx))
    else:  # auto axes: the production form, shardings pinned on both sides
      state = optax_sai.init_sharded(tx, params)
      step = jax.jit(_opt_step(tx), in_shardings=(shardings, expected, shardings),
                     out_shardings=(shardings, expected))
    init_follows = _follows(state, expected)
    for g in grads:
      params, state = step(params, state, g)
  ref_params, ref_state = reference
  dp = _diff(params, ref_params)
  ds = _diff(optax_sai.gsnr_scales(state), optax_sai.gsnr_scales(ref_state))
  return {"param_abs": dp[0], "param_of_max": _diff_of_max(params, ref_params),
          "scale_rel": ds[1],
          "init_follows_rule": init_follows,
          "state_follows_rule": _follows(state, expected),
          "mu_like_params": all(state[1].mu[k].sharding.is_equivalent_to(shardings[k], 3)
                                for k in shardings),
          "gsnr_replicated": all(x.sharding.is_fully_replicated for x in
                                 jax.tree.leaves(optax_sai.find_gsnr_state(state))),
          "compilations": step._cache_size(),
          "stack_scales": np.asarray(optax_sai.gsnr_scales(state)["stack"]).tolist()}


def _follows(state, expected):
  return all(x.sharding.is_equivalent_to(s, x.ndim)
             for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True))


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def case_matrix():
  """Explicit and auto axes x 4 layouts of the stacked leaf x block_axes x normalize."""
  dev0 = jax.devices()[0]
  out = {}
  for block_axes in (True, False):
    for normalize in (True, False):
      tx = _matrix_tx(block_axes, normalize)
      p = jax.device_put(_matrix_params(), dev0)
      s = tx.init(p)
      step = jax.jit(_opt_step(tx))
      for g in _matrix_grads():
        p, s = step(p, s, jax.device_put(g, dev0))
      for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
        for layout in LAYOUTS:
          name = f"{axis_type.name.lower()}/{layout}/block_axes={block_axes}/normalize={normalize}"
          try:
            out[name] = _matrix_cell(axis_type, layout, block_axes, normalize, (p, s))
          except Exception:  # reported per cell, so one failure does not hide the others
            out[name] = {"error": traceback.format_exc()}
  return out


def main(names):
  results = {}
  for name in names:
    try:
      results[name] = globals()[f"case_{name}"]()
    except Exception:  # reported to the test, which fails with the traceback
      results[name] = {"error": traceback.format_exc()}
  print(json.dumps(results))


if __name__ == "__main__":
  main(sys.argv[1:])

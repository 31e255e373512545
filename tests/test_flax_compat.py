"""optax_sai._flax_compat against the real Flax classes: a Flax rename fails here."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx.training import optimizer as nnx_optimizer

import optax_sai
from optax_sai import _flax_compat


def _nnx_variables():
  x = jnp.arange(6.0).reshape(2, 3)
  return {
      "Variable": nnx.Variable(x),
      "Param": nnx.Param(x),
      "BatchStat": nnx.BatchStat(x),
      "OptState": nnx_optimizer.OptState(x),
      "OptArray": nnx_optimizer.OptArray(x),
      "OptVariable": nnx_optimizer.OptVariable(x),
  }


NNX_KINDS = ["Variable", "Param", "BatchStat", "OptState", "OptArray", "OptVariable"]


@pytest.mark.parametrize("name", NNX_KINDS)
def test_nnx_variables_are_boxes_and_unwrap(name):
  v = _nnx_variables()[name]
  assert set(_nnx_variables()) == set(NNX_KINDS)
  assert _flax_compat.is_box(v) and _flax_compat.is_variable(v)
  np.testing.assert_array_equal(_flax_compat.unwrap(v), np.arange(6.0).reshape(2, 3))
  stripped = _flax_compat.strip_boxes({"w": v})
  assert isinstance(stripped["w"], jax.Array)


def test_nnx_optimizer_state_classes_are_known_by_name():
  """The names matched without Flax's protocol are Flax's optimizer-state classes."""
  present = {n for n in _flax_compat.NNX_OPT_STATE_NAMES if hasattr(nnx_optimizer, n)}
  assert "OptState" in present  # the base class of NNX's optimizer state today
  for n in present:
    assert issubclass(getattr(nnx_optimizer, n), nnx.Variable)


@pytest.mark.parametrize("box", [
    nn.Partitioned(jnp.ones((3, 4)), ("layers", "model")),
    nn.LogicallyPartitioned(jnp.ones((3, 4)), ("embed", "mlp")),
], ids=["Partitioned", "LogicallyPartitioned"])
def test_linen_boxes(box):
  assert _flax_compat.is_box(box)
  stripped = _flax_compat.strip_boxes({"p": box})["p"]
  assert isinstance(stripped, jax.Array) and stripped.shape == (3, 4)


@pytest.mark.parametrize("x", [
    jnp.ones(3), np.ones(3), 1.0, None, {"a": jnp.ones(2)}, (jnp.ones(2), jnp.ones(2)),
    optax.ScaleByAdamState(jnp.zeros([], jnp.int32), jnp.ones(2), jnp.ones(2)),
], ids=["jax", "numpy", "float", "None", "dict", "tuple", "namedtuple"])
def test_plain_values_are_neither(x):
  assert not _flax_compat.is_box(x)
  assert not _flax_compat.is_variable(x)


def test_real_nnx_optimizer_state_is_found_unwrapped():
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax_sai.sgd_sai(1e-2), wrt=nnx.Param)
  gs = optax_sai.find_gsnr_state(opt.opt_state)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(gs))
  assert gs.gsnr["kernel"].shape == () and float(gs.normalizer) == 0.0


def test_library_import_does_not_import_flax():
  code = "import sys, optax_sai; assert 'flax' not in sys.modules, 'flax imported'"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=False, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]

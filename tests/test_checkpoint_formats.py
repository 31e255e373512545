"""Golden checkpoints of every state format restore, and hold the values NumPy predicts.

Each case under tests/data/checkpoints/format<N>/<case>/ was written by the code of the
commit named in its case.json (see the README there): ``sgd_sai`` after two steps on the
recorded gradients. Here the state and parameters are recomputed independently in NumPy
(float64; the bfloat16 momentum rounded as it is stored) and compared with what restores:
directly for the current format, through ``optax_sai.migrate_state`` for older ones. A
third, resumed step is checked as well.
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from references import np_gsnr

import optax_sai

ocp = pytest.importorskip("orbax.checkpoint")

ROOT = pathlib.Path(__file__).parent / "data" / "checkpoints"
CASES = sorted(ROOT.glob("format*/*/case.json"))


def _load(case_json: pathlib.Path) -> dict:
  return json.loads(case_json.read_text())


def _blocks(x: np.ndarray, axes: int | None) -> list[np.ndarray]:
  return [x] if axes is None else [np.take(x, i, axis=axes) for i in range(x.shape[axes])]


class Reference:
  """sgd_sai in NumPy, per block: late capture, stored normaliser, EMA of scaled gradients."""

  def __init__(self, case: dict):
    opts = case["sgd_sai"]
    self.lr, self.mu, self.wd = opts["learning_rate"], opts["momentum"], opts["weight_decay"]
    self.normalize = opts["normalize"]
    self.bf16 = opts.get("mu_dtype") == "bfloat16"
    self.axes = {k: (opts.get("block_axes") or {}).get(k) for k in case["params"]}
    self.params = {k: np.asarray(v, np.float64) for k, v in case["params"].items()}
    self.snr = {k: np.zeros(1 if a is None else len(self.params[k]))
                for k, a in self.axes.items()}
    self.normalizer = 0.0 if self.normalize else 1.0
    self.m = None
    self.count = 0

  def step(self, grads: dict) -> None:
    grads = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    fresh = False
    for k, g in grads.items():
      for i, block in enumerate(_blocks(g, self.axes[k])):
        if self.snr[k][i] == 0 and np.any(block != 0):
          self.snr[k][i] = np_gsnr(block)
          fresh = True
    if self.normalize and self.normalizer == 0 and fresh:
      self.normalizer = max(float(v.max()) for v in self.snr.values())
    scaled = {}
    for k, g in grads.items():
      scale = self.snr[k] / (self.normalizer or 1.0)
      if self.axes[k] is None:
        scaled[k] = g * scale[0]
      else:
        scaled[k] = g * scale.reshape((-1,) + (1,) * (g.ndim - 1))
    if self.m is None:
      self.m = scaled
    else:
      self.m = {k: self.mu * self.m[k] + (1 - self.mu) * scaled[k] for k in scaled}
    if self.bf16:  # stored, and used, rounded to bfloat16
      self.m = {k: v.astype(ml_dtypes.bfloat16).astype(np.float64) for k, v in self.m.items()}
    self.params = {k: p - self.lr * (self.m[k] + self.wd * p) for k, p in self.params.items()}
    self.count += 1


def _optimizer(case: dict) -> optax.GradientTransformation:
  kwargs = dict(case["sgd_sai"])
  if "mu_dtype" in kwargs:
    kwargs["mu_dtype"] = jnp.dtype(kwargs["mu_dtype"])
  return optax_sai.sgd_sai(**kwargs)


def _as_arrays(tree: dict) -> dict:
  return {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}


def _check(restored: dict, ref: Reference, *, captured: dict | None = None) -> None:
  """The restored checkpoint against the reference; ``captured``: format 1's flags."""
  tol = dict(rtol=2**-7, atol=1e-6) if ref.bf16 else dict(rtol=1e-5, atol=1e-7)
  gsnr_state = optax_sai.find_gsnr_state(restored["opt_state"])
  momentum = restored["opt_state"][1]
  for k, axes in ref.axes.items():
    want = ref.snr[k][0] if axes is None else ref.snr[k]
    np.testing.assert_allclose(np.asarray(gsnr_state.gsnr[k]), want, rtol=1e-5, err_msg=k)
    np.testing.assert_array_equal(np.asarray(gsnr_state.captured[k]), np.asarray(want) > 0)
    if captured is not None:
      np.testing.assert_array_equal(np.asarray(captured[k]), np.asarray(want) > 0)
    np.testing.assert_allclose(np.asarray(momentum.mu[k], np.float64), ref.m[k], **tol)
    np.testing.assert_allclose(np.asarray(restored["params"][k]), ref.params[k], **tol)
  np.testing.assert_allclose(float(gsnr_state.normalizer), ref.normalizer, rtol=1e-5)
  assert int(momentum.count) == ref.count


def test_every_state_format_has_golden_checkpoints():
  formats = {_load(c)["state_format"] for c in CASES}
  assert formats == set(range(1, optax_sai.STATE_FORMAT_VERSION + 1))
  for fmt in formats:
    names = {c.parent.name for c in CASES if _load(c)["state_format"] == fmt}
    assert names == {"normalized", "unnormalized", "stacked", "bf16_momentum"}, fmt


@pytest.mark.parametrize("case_json", CASES,
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_golden_checkpoint_restores_with_the_values_numpy_predicts(case_json):
  case = _load(case_json)
  path = (case_json.parent / "checkpoint").resolve()
  ref = Reference(case)
  for g in case["grads"][:case["steps_saved"]]:
    ref.step(g)
  tx = _optimizer(case)
  params0 = _as_arrays(case["params"])
  target = {"params": params0, "opt_state": tx.init(params0)}
  checkpointer = ocp.StandardCheckpointer()

  raw = checkpointer.restore(path)  # no target: the tree as it was saved
  assert optax_sai.state_format(raw) == case["state_format"]
  if case["state_format"] == optax_sai.STATE_FORMAT_VERSION:
    restored = checkpointer.restore(path, target)
    assert optax_sai.migrate_state(raw) is raw
    _check(restored, ref)
  else:
    # Restoring an old format straight into today's target is refused, not misread...
    with pytest.raises(ValueError, match="captured"):
      checkpointer.restore(path, target)
    # ...and the documented migration restores it.
    restored = ocp.tree.deserialize_tree(optax_sai.migrate_state(raw), target)
    _check(restored, ref, captured=raw["opt_state"][0]["captured"])

  # Training resumes from the restored state as NumPy predicts.
  updates, opt_state = tx.update(_as_arrays(case["grads"][2]), restored["opt_state"],
                                 restored["params"])
  ref.step(case["grads"][2])
  _check({"params": optax.apply_updates(restored["params"], updates),
          "opt_state": opt_state}, ref)


def test_migrate_state_rejects_an_unknown_layout():
  raw = [{"captured": {"w": np.array(True)}, "gsnr": {"w": np.array(2.0)},
          "normalizer": np.array(2.0), "extra": np.array(0)}]
  with pytest.raises(ValueError, match=r"format 1 .*format 2"):
    optax_sai.migrate_state(raw)
  with pytest.raises(ValueError, match="No optax_sai g-SNR state"):
    optax_sai.state_format({"params": {"w": np.zeros(3)}})


def test_migration_keeps_a_captured_zero_as_captured():
  # Format 1 could flag a block captured with a g-SNR that underflowed to 0; format 2
  # marks capture by g-SNR > 0, so the migration stores the smallest normal number.
  raw = [{"captured": {"a": np.array([True, False])}, "gsnr": {"a": np.zeros(2, np.float32)},
          "normalizer": np.array(1.0, np.float32)}]
  gsnr = np.asarray(optax_sai.migrate_state(raw)[0]["gsnr"]["a"])
  np.testing.assert_array_equal(gsnr, [np.finfo(np.float32).tiny, 0.0])
  assert gsnr.dtype == np.float32

"""Faults of a training run, provoked for real: SIGKILL, a non-finite loss, a full disk.

- A run killed (SIGKILL) at a random moment while it trains and checkpoints, then resumed,
  ends with the uninterrupted run's ``metrics.jsonl`` (byte for byte) and parameters.
- A non-finite training loss stops the examples' loop before the diverged state is
  checkpointed; ``optax.apply_if_finite(sgd_sai(...))`` skips such a step without touching
  the captured g-SNR or the momentum (checked against a NumPy reference of the algorithm).
- A checkpoint that cannot be written (per-file size limit, ``RLIMIT_FSIZE``: it applies to
  root too, where a read-only ``chmod`` does not) ends the command with one line naming the
  intact checkpoint, which still restores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_sai
from examples.common import checkpoint, metrics, training
from examples.common.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]

# A micro GPT-2 run whose steps are slowed to ~50 ms (in the batch-building thread), so that
# a kill lands inside the run; the delay changes no number.
DRIVER = r"""
import dataclasses, sys, time
import numpy as np
import jax
from examples.common import training
from examples.common.optim import path_str
from examples.gpt2 import configs, train as train_lib

data_dir, workdir, mode = sys.argv[1:4]
cfg = dataclasses.replace(
    configs.get_config("tiny"), n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8,
    steps=24, warmup_steps=4, log_every=2, eval_every=12, eval_batches=1, ckpt_every=3,
    keep_checkpoints=2, data_dir=data_dir)
task = train_lib.build_task(cfg, "sgd_sai")
build = task.train_batch

def slow_batch(step, **kwargs):
  time.sleep(0.05)
  return build(step, **kwargs)

task = dataclasses.replace(task, train_batch=slow_batch)
result = training.fit(task, workdir, resume=mode == "resume", progress=False)
flat = {path_str(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(result["params"])[0]}
np.savez(f"{workdir}/final_params.npz", **flat)
"""


def _env() -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


def _drive(script: Path, *args: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_equals_the_uninterrupted_run(
    pydoc_data, tmp_path):
  script = tmp_path / "driver.py"
  script.write_text(DRIVER)
  full = _drive(script, str(pydoc_data), str(tmp_path / "full"), "fresh")
  killed_dir = tmp_path / "killed"
  killed = _drive(script, str(pydoc_data), str(killed_dir), "fresh")
  # Kill after the first checkpoint is complete, somewhere in the next ~1 s (of ~1.2 s of
  # steps left): during a step, a metrics write, an orbax save or the deletion of an old one.
  delay = random.Random().uniform(0.0, 0.9)
  deadline = time.monotonic() + 240
  while not (killed_dir / "checkpoints" / "3").is_dir():
    assert killed.poll() is None, killed.communicate()[1][-3000:]
    assert time.monotonic() < deadline, "no checkpoint within 240 s"
    time.sleep(0.01)
  time.sleep(delay)
  killed.send_signal(signal.SIGKILL)
  killed.communicate()
  assert killed.returncode == -signal.SIGKILL, f"the run ended before the kill ({delay=:.2f})"
  assert not (killed_dir / "final_params.npz").exists()

  resumed = _drive(script, str(pydoc_data), str(killed_dir), "resume")
  for proc in (full, resumed):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  assert ((killed_dir / metrics.METRICS_FILE).read_bytes()
          == (tmp_path / "full" / metrics.METRICS_FILE).read_bytes()), f"{delay=:.2f}"
  assert ((killed_dir / metrics.GSNR_FILE).read_bytes()
          == (tmp_path / "full" / metrics.GSNR_FILE).read_bytes())
  ref = np.load(tmp_path / "full" / "final_params.npz")
  got = np.load(killed_dir / "final_params.npz")
  assert sorted(ref) == sorted(got) and len(ref.files) > 10
  for name in ref.files:
    np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{name} ({delay=:.2f})")


# --- a non-finite loss ----------------------------------------------------------------------


class _Linear(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(3, 1, rngs=rngs)

  def __call__(self, x):
    return self.dense(x)


def _regression_task(config: TrainConfig, bad_step: int | None) -> training.Task:
  """Least squares on y = x1 + x2 + x3; the batch of 0-based step ``bad_step`` has y = inf."""

  def batch(step: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(step).normal(size=(8, 3)).astype(np.float32)
    y = x.sum(1, keepdims=True)
    if step == bad_step:
      y[0] = np.inf
    return {"x": x, "y": y}

  def loss_fn(model, b, key):
    del key
    return jnp.mean((model(b["x"]) - b["y"]) ** 2)

  def eval_fn(model, b):
    err = (model(b["x"]) - b["y"]) ** 2
    return {"loss": err.sum(), "correct": jnp.float32(0), "count": err.size}

  return training.Task(name="regression", config=config, make_model=_Linear, loss_fn=loss_fn,
                       eval_fn=eval_fn, train_batch=batch, eval_batches=lambda: [batch(10**6)])


@pytest.mark.parametrize("log_every, ckpt_every, bad_step, stop_at, last_good", [
    (2, 4, 6, 8, 4),  # seen at the log step 8, whose checkpoint is not written
    (5, 3, 6, 9, 6),  # seen at the checkpoint step 9 (not a log step), before it is written
])
def test_a_non_finite_loss_stops_before_its_state_is_checkpointed(
    log_every, ckpt_every, bad_step, stop_at, last_good, tmp_path):
  config = TrainConfig(steps=12, batch_size=8, learning_rate=0.1, weight_decay=0.0,
                       warmup_steps=0, log_every=log_every, eval_every=12, eval_batches=1,
                       ckpt_every=ckpt_every, keep_checkpoints=5).resolved()
  with pytest.raises(training.NonFiniteLossError) as error:
    training.fit(_regression_task(config, bad_step), tmp_path / "bad", progress=False)
  assert f"{stop_at}; the last checkpoint (step {last_good}) predates it" in str(error.value)
  ckpt = checkpoint.Checkpointer(tmp_path / "bad", create=False)
  assert ckpt.all_steps()[-1] == last_good
  ckpt.close()
  records = metrics.read_metrics(tmp_path / "bad")
  assert all(np.isfinite(r["train_loss"]) for r in records if r["step"] <= bad_step)
  if stop_at % log_every == 0:
    assert records[-1] == {"step": stop_at, "train_loss": None,
                           "lr": pytest.approx(0.1 * (0.1 + 0.45 * (1 + np.cos(
                               np.pi * (stop_at - 1) / 12))), rel=1e-6)}
  # The last checkpoint holds the state of a run that never saw the bad batch.
  good = training.fit(_regression_task(config, None), tmp_path / "good", stop_after=last_good,
                      progress=False)
  saved = checkpoint.restore_pure(tmp_path / "bad", last_good)
  np.testing.assert_array_equal(saved["dense"]["kernel"], good["params"]["dense"]["kernel"][...])
  assert np.isfinite(saved["dense"]["kernel"]).all()


def _numpy_sgd_sai(p0, grads, lr, mu, wd, eps=1e-8):
  """SGD-SaI, Algorithm 1, in float64 NumPy (one block per leaf, max-normalised)."""
  snr = {k: np.linalg.norm(g) / (np.std(g, ddof=1) + eps) for k, g in grads[0].items()}
  top = max(snr.values())
  p = {k: v.astype(np.float64) for k, v in p0.items()}
  m = None
  for g in grads:
    m = dict(g) if m is None else {k: mu * m[k] + (1 - mu) * g[k] for k in g}
    p = {k: p[k] - lr * (snr[k] / top * m[k] + wd * p[k]) for k in p}
  return p, snr, m


def test_apply_if_finite_skips_the_step_and_keeps_scales_and_momentum():
  p0 = {"w": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": np.array([0.5, -0.5, 0.25])}
  g1 = {"w": np.array([[0.1, -0.2], [0.3, 0.4]]), "b": np.array([0.01, 0.02, 0.04])}
  g2 = {"w": np.array([[-0.1, 0.05], [0.2, -0.3]]), "b": np.array([0.03, -0.01, 0.02])}
  bad = {"w": np.array([[np.nan, 0.0], [0.0, 0.0]]), "b": np.array([np.inf, 0.0, 0.0])}
  lr, mu, wd = 0.01, 0.9, 0.1
  tx = optax.apply_if_finite(optax_sai.sgd_sai(lr, momentum=mu, weight_decay=wd), 3)
  as32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)  # noqa: E731
  params = as32(p0)
  state = tx.init(params)
  for g in (bad, g1, bad, g2):  # a bad step before the capture, and one after it
    updates, state = tx.update(as32(g), state, params)
    params = optax.apply_updates(params, updates)
  assert int(state.total_notfinite) == 2 and int(state.notfinite_count) == 0

  ref_p, ref_snr, ref_m = _numpy_sgd_sai(p0, [g1, g2], lr, mu, wd)
  for k in p0:
    np.testing.assert_allclose(params[k], ref_p[k], rtol=1e-6, err_msg=k)
  gsnr_state = optax_sai.find_gsnr_state(state)
  for k in p0:
    np.testing.assert_allclose(gsnr_state.gsnr[k], ref_snr[k], rtol=1e-6, err_msg=k)
  np.testing.assert_allclose(gsnr_state.normalizer, max(ref_snr.values()), rtol=1e-6)
  (_, momentum), = optax.tree.get_all_with_path(
      state, "SaiMomentumState",
      filtering=lambda _, v: isinstance(v, optax_sai.SaiMomentumState))
  assert int(momentum.count) == 2
  top = max(ref_snr.values())
  for k in p0:  # the buffer follows the g-SNR scaling (scale * m: the scale is constant)
    np.testing.assert_allclose(momentum.mu[k], ref_snr[k] / top * ref_m[k], rtol=1e-6,
                               err_msg=k)


# --- a checkpoint that cannot be written ------------------------------------------------------

FULL_DISK = r"""
import resource, runpy, signal, sys
# Files may not grow past 20 kB: metrics.jsonl and orbax's small files fit, a checkpoint's
# array data (~0.3 MB) does not. Writes past the limit fail with EFBIG, even as root.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_module("examples.gpt2.train", run_name="__main__")
"""


@pytest.mark.slow
def test_a_full_disk_ends_with_one_line_and_the_last_checkpoint_intact(
    micro_gpt, pydoc_data, tmp_path):
  cfg = dataclasses.replace(micro_gpt, steps=10, ckpt_every=2, log_every=2, eval_every=10)
  workdir = tmp_path / "run"
  from examples.gpt2 import train as train_lib

  train_lib.train(cfg, "sgd_sai", workdir, stop_after=4, progress=False)
  before = checkpoint.restore_pure(workdir, 4, item=None)
  script = tmp_path / "full_disk.py"
  script.write_text(FULL_DISK)
  argv = ["--config", "tiny", "--workdir", str(workdir), "--resume", "--no-progress"]
  for f in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps",
            "warmup_steps", "log_every", "eval_every", "eval_batches", "ckpt_every",
            "data_dir"):
    argv += [f"--{f.replace('_', '-')}", str(getattr(cfg, f))]
  proc = subprocess.run([sys.executable, str(script), *argv], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stdout == ""
  # One error line from the command and no traceback through our code. (Orbax logs one
  # line per failed writer; TensorStore's callbacks sometimes still print a bare "Event loop
  # is closed" traceback from its C++ threads, which no Python hook sees.)
  (last,) = [line for line in proc.stderr.splitlines() if line.startswith("python -m")]
  assert "examples/" not in proc.stderr.replace(last, "")
  assert last.startswith(f"python -m examples.gpt2.train: error: writing a checkpoint in "
                         f"{workdir / 'checkpoints'} failed ("), last
  assert "File too large" in last
  assert last.endswith("the last complete checkpoint, step 4, is intact: free space or fix "
                       "the folder, then continue with --resume"), last
  ckpt = checkpoint.Checkpointer(workdir, create=False)
  assert ckpt.latest_step() == 4
  ckpt.close()
  after = checkpoint.restore_pure(workdir, 4, item=None)
  jax.tree.map(np.testing.assert_array_equal, after, before)
  assert json.loads((workdir / metrics.CONFIG_FILE).read_text())["steps"] == 10

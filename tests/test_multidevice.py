"""The GPT-2 example on 8 CPU devices (``--mesh data=2,fsdp=4``) vs one device.

Each run is a subprocess: the 8-device one sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, so this
process (and the rest of the suite) keeps its single device. Both runs see the same
global batch (16 sequences) each step; only XLA's summation order differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
# Measured (6 steps, tiny config): train loss within 1e-6 abs, g-SNR scales within ~1e-6 rel.
LOSS_RTOL = 1e-5
SCALE_RTOL = 1e-4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "examples" / "gpt2" / "train.py").exists(),
                       reason="examples/gpt2/train.py is not there"),
]


def _train(workdir: Path, devices: int, *extra: str) -> tuple[list[dict], dict]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  if devices > 1:
    flags += f" --xla_force_host_platform_device_count={devices}"
  env["XLA_FLAGS"] = flags
  cmd = [sys.executable, "-m", "examples.gpt2.train", "--config", "tiny",
         "--optimizer", "sgd_sai", "--steps", str(STEPS), "--log-every", "1",
         "--eval-every", str(STEPS), "--eval-batches", "1", "--ckpt-every", str(STEPS),
         "--no-progress", "--workdir", str(workdir), *extra]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  gsnr = json.loads((workdir / "gsnr.json").read_text())
  return [r for r in rows if "train_loss" in r], gsnr


def _flat(x, prefix=""):
  """gsnr.json values as a flat {key: float} (lists for stacked layers are expanded)."""
  if isinstance(x, dict):
    out = {}
    for k, v in x.items():
      out.update(_flat(v, f"{prefix}/{k}" if prefix else k))
    return out
  if isinstance(x, list):
    out = {}
    for i, v in enumerate(x):
      out.update(_flat(v, f"{prefix}[{i}]"))
    return out
  return {prefix: float(x)}


def _compare(single, sharded):
  (rows1, g1), (rows8, g8) = single, sharded
  assert [r["step"] for r in rows1] == [r["step"] for r in rows8] == list(range(1, STEPS + 1))
  for a, b in zip(rows1, rows8, strict=True):
    assert abs(a["train_loss"] - b["train_loss"]) <= LOSS_RTOL * abs(a["train_loss"])
  f1, f8 = _flat(g1), _flat(g8)
  assert f1.keys() == f8.keys() and f1
  for k in f1:
    assert abs(f1[k] - f8[k]) <= SCALE_RTOL * abs(f1[k]) + 1e-7, k


def test_gpt2_mesh_matches_single_device(tmp_path):
  _compare(_train(tmp_path / "single", 1),
           _train(tmp_path / "mesh", 8, "--mesh", "data=2,fsdp=4"))


"""Multi-process training for real: JAX's multi-controller runtime on CPU, over loopback.

The GPT-2 example's command line runs as 2 processes x 4 CPU devices (gloo collectives,
joined through ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``) and
as 1 process x 8 devices. Both must log the same metrics and end with the same parameters
to float32 rounding; a checkpoint the 2-process job wrote must resume in 1 process and
finish like the uninterrupted run; and each process must have built only its own rows of
every global batch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examples.common import mesh as mesh_lib
from examples.common.metrics import read_metrics
from examples.gpt2 import data as data_lib

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_multiprocess_worker.py")
STEPS, BATCH, BLOCK = 20, 8, 128  # the tiny config's context; a small global batch
FLAGS = ["--config", "tiny", "--steps", str(STEPS), "--batch-size", str(BATCH),
         "--warmup-steps", "4", "--log-every", "5", "--eval-every", "10", "--eval-batches", "2",
         "--ckpt-every", "10"]
TIMEOUT_S = 900


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(out: Path, workdir: Path, data_dir: Path, processes: int, devices: int,
            extra: tuple[str, ...] = ()) -> None:
  """Runs the example as ``processes`` local processes with ``devices`` CPU devices each."""
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                               "OPTAX_SAI_DISTRIBUTED"))}
  base.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  port = _free_port()
  argv = [sys.executable, str(WORKER), str(out), "--", *FLAGS, "--data-dir", str(data_dir),
          "--workdir", str(workdir), *extra]
  procs = []
  for i in range(processes):
    env = dict(base)
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
    assert p.returncode == 0, f"process {i} of {processes} failed:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pydoc_data) -> dict[str, Path]:
  """The three runs: 1 x 8 devices, 2 x 4 devices, and 1 x 8 resumed from the 2-process
  job's step-10 checkpoint."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  _launch(tmp / "one", tmp / "one", pydoc_data, processes=1, devices=8)
  _launch(tmp / "two", tmp / "two", pydoc_data, processes=2, devices=4)
  # The resumed run starts from a copy of the 2-process workdir without its last checkpoint.
  shutil.copytree(tmp / "two", tmp / "resumed",
                  ignore=lambda d, names: [str(STEPS)] if Path(d).name == "checkpoints" else [])
  assert sorted(os.listdir(tmp / "resumed" / "checkpoints")) == ["10"]
  _launch(tmp / "resumed", tmp / "resumed", pydoc_data, processes=1, devices=8,
          extra=("--resume",))
  return {"one": tmp / "one", "two": tmp / "two", "resumed": tmp / "resumed"}


def _params(prefix: Path) -> dict[str, np.ndarray]:
  with np.load(f"{prefix}.params.npz") as f:
    return dict(f)


def _assert_same_run(a: Path, b: Path) -> None:
  ma, mb = read_metrics(a), read_metrics(b)
  assert [r["step"] for r in ma] == [r["step"] for r in mb] == [5, 10, 15, 20]
  for ra, rb in zip(ma, mb, strict=True):
    assert ra.keys() == rb.keys()
    for key in ra:
      np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, err_msg=f"{key} at {ra['step']}")
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys() and len(pa) > 10
  for key in pa:
    assert pa[key].dtype == np.float32
    np.testing.assert_allclose(pb[key], pa[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # It trained: the loss fell well beyond the tolerance.
  assert mb[-1]["train_loss"] < mb[0]["train_loss"] - 0.5


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
  rows = json.loads(Path(f"{runs['two']}.rows0.json").read_text())
  assert (rows["processes"], rows["local_devices"], rows["devices"]) == (2, 4, 8)
  one = json.loads(Path(f"{runs['one']}.rows0.json").read_text())
  assert (one["processes"], one["local_devices"], one["devices"]) == (1, 8, 8)
  _assert_same_run(runs["one"], runs["two"])


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_in_one(runs):
  _assert_same_run(runs["one"], runs["resumed"])
  # It really resumed: the resumed process built batches for steps 10..19 only.
  built = json.loads(Path(f"{runs['resumed']}.rows0.json").read_text())["built"]
  assert sorted(b["step"] for b in built) == list(range(10, STEPS))


@pytest.mark.slow
def test_each_process_builds_only_its_rows(runs, pydoc_data):
  full = data_lib.LMData(pydoc_data, BLOCK, BATCH, seed=0)
  records = [json.loads(Path(f"{runs['two']}.rows{i}.json").read_text()) for i in (0, 1)]
  for process, record in enumerate(records):
    assert record["process"] == process
    assert sorted(b["step"] for b in record["built"]) == list(range(STEPS))
  for step in range(STEPS):
    expected = full.train_batch(step)["x"].astype(np.int64).sum(axis=1)
    mine = [next(b for b in r["built"] if b["step"] == step) for r in records]
    # Each process built half of the global rows, they are disjoint and cover the batch.
    assert [len(m["rows"]) for m in mine] == [BATCH // 2, BATCH // 2]
    assert sorted(mine[0]["rows"] + mine[1]["rows"]) == list(range(BATCH))
    # ... and the windows it read are exactly those rows of the global batch.
    for m in mine:
      assert m["checksums"] == [int(expected[r]) for r in m["rows"]]
  # In one process, that process builds every row.
  single = json.loads(Path(f"{runs['one']}.rows0.json").read_text())["built"]
  assert all(b["rows"] == list(range(BATCH)) for b in single)


def test_train_batch_rows_are_rows_of_the_global_batch(pydoc_data):
  data = data_lib.LMData(pydoc_data, 16, 8, seed=3)
  full = data.train_batch(5)
  rows = np.array([6, 1, 4])
  part = data.train_batch(5, rows=rows)
  for key in ("x", "y"):
    np.testing.assert_array_equal(part[key], full[key][rows])
  assert not np.array_equal(part["x"], full["x"][:3])


def test_shard_batch_from_this_process_rows_equals_the_whole_batch(pydoc_data):
  import jax

  mesh = mesh_lib.make_mesh(None)
  rows = mesh_lib.process_rows(mesh, 8)
  np.testing.assert_array_equal(rows, np.arange(8))  # one process holds every row
  data = data_lib.LMData(pydoc_data, 16, 8, seed=1)
  whole = mesh_lib.shard_batch(data.train_batch(2), mesh)
  # Rows handed over in any order land at their global positions.
  shuffled = np.array([3, 0, 7, 5, 1, 6, 2, 4])
  parts = mesh_lib.shard_batch(data.train_batch(2, rows=shuffled), mesh, rows=shuffled,
                               batch_size=8)
  for key in ("x", "y"):
    assert parts[key].shape == whole[key].shape == (8, 16)
    np.testing.assert_array_equal(jax.device_get(parts[key]), jax.device_get(whole[key]))
  with pytest.raises(ValueError, match="not built here"):
    mesh_lib.shard_batch({"x": np.zeros((4, 16))}, mesh, rows=np.arange(4), batch_size=8)


def test_a_single_process_environment_joins_nothing():
  assert mesh_lib.join_distributed({}) is False
  assert mesh_lib.join_distributed({"OPTAX_SAI_DISTRIBUTED": "0"}) is False

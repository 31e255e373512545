"""GPT-2 example: sizes, data preparation and loading, scan layers, training, resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_sai
from examples.common import metrics
from examples.common.optim import path_str, stacked_axes
from examples.common.training import count_params
from examples.gpt2 import configs, prepare
from examples.gpt2 import data as data_lib
from examples.gpt2 import train as train_lib
from examples.gpt2.model import GPT, stack_layers


def test_gpt2_small_has_the_published_parameter_count():
  n = count_params(lambda rngs: GPT(configs.get_config("gpt2"), rngs=rngs))
  assert abs(n - 124_439_808) <= 0.01 * 124_439_808
  # The larger published sizes (OpenAI's 355M, 774M, 1558M), within 1%.
  for name, published in (("gpt2-medium", 354.8e6), ("gpt2-large", 774.0e6),
                          ("gpt2-xl", 1557.6e6)):
    n = count_params(lambda rngs, name=name: GPT(configs.get_config(name), rngs=rngs))
    assert abs(n - published) <= 0.01 * published, name


def test_prepare_text_files_round_trip(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("The quick brown fox jumps over the lazy dog. " * 40)
  b.write_text("Pack my box with five dozen liquor jugs. " * 40)
  out = tmp_path / "data"
  prepare.main(["--input", str(a), str(b), "--out", str(out), "--tokenizer", "byte",
                "--val-fraction", "0.25"])
  meta = json.loads((out / "meta.json").read_text())
  assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 256
  train = np.fromfile(out / "train.bin", dtype=np.uint16)
  val = np.fromfile(out / "val.bin", dtype=np.uint16)
  assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
  text = bytes(np.concatenate([train, val]).astype(np.uint8)).decode()
  assert text == a.read_text() + "\n\n" + b.read_text()


def test_gpt2_tokenizer_falls_back_to_bytes_with_a_message(tmp_path, monkeypatch, capsys):
  import tiktoken

  def offline(name):
    raise ConnectionError("no internet")

  monkeypatch.setattr(tiktoken, "get_encoding", offline)
  meta = prepare.prepare(["hello world, " * 30], tmp_path, tokenizer="gpt2")
  assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 256
  assert "Falling back to byte-level" in capsys.readouterr().err


def test_lm_batches_are_a_function_of_seed_and_step(pydoc_data):
  data = data_lib.LMData(pydoc_data, block_size=16, batch_size=4, seed=3, eval_batches=2)
  b1, b2 = data.train_batch(7), data.train_batch(7)
  np.testing.assert_array_equal(b1["x"], b2["x"])
  assert not np.array_equal(b1["x"], data.train_batch(8)["x"])
  np.testing.assert_array_equal(b1["x"][:, 1:], b1["y"][:, :-1])  # targets are shifted inputs
  assert b1["x"].dtype == np.int32 and b1["x"].shape == (4, 16)
  val = list(data.val_batches())
  assert len(val) == 2
  np.testing.assert_array_equal(val[0]["x"], next(iter(data.val_batches()))["x"])


def test_tiny_data_is_english_text(pydoc_data):
  meta = data_lib.load_meta(pydoc_data)
  assert meta["source"] == "pydoc_data.topics" and meta["train_tokens"] > 300_000
  head = bytes(np.fromfile(pydoc_data / "train.bin", dtype=np.uint16)[:2000].astype(np.uint8))
  assert b" the " in head


def test_scan_layers_matches_unrolled_model_and_its_gsnr_scales(pydoc_data):
  cfg = dataclasses.replace(configs.get_config("tiny"), vocab_size=256, n_layer=3, n_embd=32,
                            n_head=2, block_size=16)
  unrolled = GPT(cfg, rngs=nnx.Rngs(0))
  scanned = GPT(dataclasses.replace(cfg, scan_layers=True), rngs=nnx.Rngs(1))
  params_u = nnx.state(unrolled, nnx.Param)
  params_s = nnx.state(scanned, nnx.Param)
  nnx.replace_by_pure_dict(params_s, stack_layers(params_u))
  nnx.update(scanned, params_s)
  batch = data_lib.LMData(pydoc_data, 16, 4).train_batch(0)
  forward = nnx.jit(lambda m, x: m(x))
  np.testing.assert_allclose(forward(scanned, batch["x"]), forward(unrolled, batch["x"]),
                             rtol=1e-5, atol=1e-5)

  @nnx.jit
  def grads(model):
    return nnx.grad(lambda m: train_lib.lm_loss(m, batch, None))(model)

  scales = []
  for model, axes in ((unrolled, None), (scanned, stacked_axes("h"))):
    params = nnx.state(model, nnx.Param)
    tx = optax_sai.sgd_sai(0.1, block_axes=axes)
    _, state = jax.jit(tx.update)(grads(model), tx.init(params), params)
    scales.append({path_str(p): np.asarray(v) for p, v in
                   jax.tree_util.tree_flatten_with_path(optax_sai.gsnr_scales(state))[0]})
  unrolled_scales, scanned_scales = scales
  assert scanned_scales["h/attn/c_attn/kernel"].shape == (3,)
  for path, value in scanned_scales.items():
    if path.startswith("h/"):
      per_layer = [unrolled_scales[f"h/{i}/{path[2:]}"] for i in range(3)]
      np.testing.assert_allclose(value, per_layer, rtol=1e-4, err_msg=path)
    else:
      np.testing.assert_allclose(value, unrolled_scales[path], rtol=1e-4, err_msg=path)
  assert all(np.all(v > 0) for v in scanned_scales.values())


def test_dropout_is_off_by_default_and_keyed(pydoc_data):
  cfg = dataclasses.replace(configs.get_config("tiny"), vocab_size=256, n_layer=1, n_embd=32,
                            n_head=2, block_size=16, dropout=0.2)
  model = GPT(cfg, rngs=nnx.Rngs(0))
  x = jnp.zeros((2, 16), jnp.int32)
  np.testing.assert_array_equal(model(x), model(x))
  k = jax.random.key(0)
  np.testing.assert_array_equal(model(x, dropout_key=k), model(x, dropout_key=k))
  assert not np.allclose(model(x, dropout_key=k), model(x))


def test_resume_reproduces_the_uninterrupted_run(micro_gpt, tmp_path):
  full = train_lib.train(micro_gpt, "sgd_sai", tmp_path / "full")
  train_lib.train(micro_gpt, "sgd_sai", tmp_path / "split", stop_after=10)
  assert [r["step"] for r in metrics.read_metrics(tmp_path / "split")] == [5, 10]
  resumed = train_lib.train(micro_gpt, "sgd_sai", tmp_path / "split", resume=True)
  assert metrics.read_metrics(tmp_path / "split") == metrics.read_metrics(tmp_path / "full")
  assert resumed["val_loss"] == full["val_loss"]
  jax.tree.map(np.testing.assert_array_equal, resumed["params"], full["params"])
  gsnr_full = json.loads((tmp_path / "full" / "gsnr.json").read_text())
  assert gsnr_full == json.loads((tmp_path / "split" / "gsnr.json").read_text())


def _micro_argv(cfg, workdir, *extra) -> list[str]:
  """The command line of ``micro_gpt`` (every field it changes from ``tiny``)."""
  fields = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "steps", "warmup_steps",
            "log_every", "eval_every", "eval_batches", "ckpt_every", "data_dir")
  argv = ["--config", "tiny", "--workdir", str(workdir), "--no-progress"]
  for f in fields:
    argv += [f"--{f.replace('_', '-')}", str(getattr(cfg, f))]
  return argv + list(extra)


def test_fresh_run_refuses_a_workdir_with_checkpoints(micro_gpt, tmp_path, capsys):
  cfg = dataclasses.replace(micro_gpt, steps=2, ckpt_every=2)
  train_lib.train(cfg, "adamw", tmp_path)
  with pytest.raises(FileExistsError, match="--resume"):
    train_lib.train(cfg, "adamw", tmp_path)
  # The command line prints the message alone (no traceback) and exits 2.
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    train_lib.main(_micro_argv(cfg, tmp_path, "--optimizer", "adamw"))
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and "Traceback" not in err
  assert err.strip().splitlines() == [
      f"python -m examples.gpt2.train: error: {tmp_path / 'checkpoints'} already holds "
      "checkpoints (latest step 2); pass --resume to continue that run, or use a new --workdir."]


def test_resume_refuses_a_longer_cosine_and_extends_with_its_horizon_kept(
    micro_gpt, tmp_path, capsys):
  cfg = dataclasses.replace(micro_gpt, steps=10, ckpt_every=5, eval_every=10)
  train_lib.train(cfg, "sgd_sai", tmp_path, progress=False)
  first = metrics.read_metrics(tmp_path)
  longer = dataclasses.replace(cfg, steps=20)
  with pytest.raises(train_lib.training.ResumeMismatchError,
                     match="horizon 10.*add --decay-steps 10"):
    train_lib.train(longer, "sgd_sai", tmp_path, resume=True)
  lr = cfg.learning_rates["sgd_sai"]  # the run's learning rate, from the config's table
  with pytest.raises(train_lib.training.ResumeMismatchError,
                     match=re.escape(f"learning_rate {lr!r} -> {lr / 5!r}")):
    train_lib.train(dataclasses.replace(cfg, learning_rate=lr / 5), "sgd_sai", tmp_path,
                    resume=True)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    train_lib.main(_micro_argv(longer, tmp_path, "--resume"))
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and "Traceback" not in err
  assert err.startswith("python -m examples.gpt2.train: error: --resume: the run in")
  assert metrics.read_metrics(tmp_path) == first  # nothing was touched

  # The documented extension: the same cosine horizon, the learning rate stays at its floor.
  train_lib.train(dataclasses.replace(longer, decay_steps=10), "sgd_sai", tmp_path,
                  resume=True, progress=False)
  records = metrics.read_metrics(tmp_path)
  assert records[:2] == first
  floor = cfg.min_lr_ratio * cfg.learning_rates["sgd_sai"]
  assert [r["step"] for r in records[2:]] == [15, 20]
  assert [r["lr"] for r in records[2:]] == pytest.approx([floor, floor], rel=1e-6)


@pytest.fixture(scope="module")
def uninterrupted_10_steps(pydoc_data, tmp_path_factory):
  """``micro_gpt`` at 10 steps, checkpointed every 5: its config, workdir and result."""
  cfg = dataclasses.replace(
      configs.get_config("tiny"), n_layer=2, n_head=2, n_embd=32, block_size=32,
      batch_size=8, steps=10, warmup_steps=4, log_every=5, eval_every=10, eval_batches=2,
      ckpt_every=5, data_dir=str(pydoc_data))
  workdir = tmp_path_factory.mktemp("full")
  return cfg, workdir, train_lib.train(cfg, "sgd_sai", workdir, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated array file", "garbage in _METADATA"])
def test_a_damaged_checkpoint_names_the_intact_one_and_resumes_from_it(
    damage, uninterrupted_10_steps, tmp_path, capsys):
  cfg, full_dir, full = uninterrupted_10_steps
  run = tmp_path / "run"
  train_lib.train(dataclasses.replace(cfg), "sgd_sai", run, stop_after=8, progress=False)
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [5, 8]
  step8 = run / "checkpoints" / "8" / "default"
  if damage == "truncated array file":
    data = max((p for p in step8.rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  else:
    (step8 / "_METADATA").write_text("{garbage")
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    train_lib.main(_micro_argv(cfg, run, "--resume"))
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_info.value.code == 1 and not any("Traceback" in line for line in err)
  assert err[-1].startswith(f"python -m examples.gpt2.train: error: checkpoint step 8 in "
                            f"{run / 'checkpoints'} is damaged (")
  assert err[-1].endswith("; step 5 is intact: continue from it with --resume --resume-step 5 "
                          "(fit(resume_step=5)), which deletes the later checkpoints")
  # Following the advice reproduces the uninterrupted run.
  resumed = train_lib.main(_micro_argv(cfg, run, "--resume", "--resume-step", "5"))
  assert metrics.read_metrics(run) == metrics.read_metrics(full_dir)
  jax.tree.map(np.testing.assert_array_equal, resumed["params"], full["params"])


def test_output_is_one_json_line_then_a_human_summary(micro_gpt, tmp_path, capsys):
  # One step: no step after the compiling one is timed, so the rate is undefined (null).
  cfg = dataclasses.replace(micro_gpt, steps=1)
  train_lib.main(_micro_argv(cfg, tmp_path))
  out, err = capsys.readouterr()

  def no_constants(name):
    raise AssertionError(f"{name} is not JSON")

  (line,) = out.splitlines()
  result = json.loads(line, parse_constant=no_constants)
  assert result["tokens_per_s"] is None and result["step"] == 1
  assert result["val_loss"] == metrics.read_metrics(tmp_path)[-1]["val_loss"]  # full precision
  for name in ("metrics.jsonl", "curves.png", "checkpoints"):
    assert str(tmp_path / name) in err


def test_cli_writes_every_artifact(pydoc_data, tmp_path, capsys):
  workdir = tmp_path / "run"
  result = train_lib.main([
      "--config", "tiny", "--optimizer", "adamw", "--steps", "6", "--workdir", str(workdir),
      "--data-dir", str(pydoc_data), "--batch-size", "4", "--lr", "1e-3", "--warmup-steps",
      "2", "--weight-decay", "0.05", "--seed", "1", "--log-every", "3", "--eval-batches", "1",
      "--clip-norm", "0",
  ])
  records = metrics.read_metrics(workdir)
  assert [r["step"] for r in records] == [3, 6]
  assert {"step", "train_loss", "lr", "val_loss", "val_accuracy"} <= set(records[-1])
  assert records[0]["lr"] == pytest.approx(1e-3)  # step 3 used schedule(2): the peak
  assert records[1]["lr"] == pytest.approx(1e-4 + 0.5 * 0.9e-3 * (1 + np.cos(np.pi * 3 / 4)))
  gsnr = json.loads((workdir / "gsnr.json").read_text())
  assert "h/0/attn/c_attn/kernel" in gsnr and max(gsnr.values()) == pytest.approx(1.0)
  assert (workdir / "curves.png").stat().st_size > 1000
  assert (workdir / "checkpoints" / "6").is_dir()
  assert result["step"] == 6
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["val_loss"] == pytest.approx(records[-1]["val_loss"])


@pytest.mark.slow
def test_tiny_config_learns_english(pydoc_data):
  """The tiny byte-level model on pydoc text: ln(256) = 5.55 and 1/256 accuracy at init;
  measured 2.70 val loss and 36% next-byte accuracy after 80 steps (sgd_sai, ~25 s)."""
  cfg = dataclasses.replace(configs.get_config("tiny"), data_dir=str(pydoc_data), steps=80,
                            eval_every=40)
  result = train_lib.train(cfg, "sgd_sai", progress=False)
  assert result["val_loss"] < 3.0
  assert result["val_accuracy"] > 0.3


MESH_SCRIPT = r"""
import dataclasses, json, sys
import jax
from examples.gpt2 import train as train_lib, configs
cfg = dataclasses.replace(configs.get_config("tiny"), n_layer=2, n_head=2, n_embd=32,
    block_size=32, batch_size=8, steps=4, warmup_steps=2, log_every=1, eval_every=2,
    eval_batches=2, data_dir=sys.argv[1])
out = {}
for mesh in (sys.argv[2:]):
  r = train_lib.train(cfg, "sgd_sai", None, mesh=mesh, progress=False)
  kernel = r["params"]["h"][0]["mlp"]["c_fc"]["kernel"][...]
  out[mesh] = {"val_loss": r["val_loss"], "train_loss": r["train_loss"],
               "spec": str(kernel.sharding.spec), "devices": jax.device_count()}
print("RESULT" + json.dumps(out))
"""


def _run_mesh(pydoc_data, tmp_path, n_devices: int, meshes: list[str]) -> dict:
  import os
  import subprocess

  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
  script = tmp_path / "mesh_run.py"
  script.write_text(MESH_SCRIPT)
  proc = subprocess.run([sys.executable, str(script), str(pydoc_data), *meshes], env=env,
                        capture_output=True, text=True, timeout=300,
                        cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_fsdp_mesh_on_8_devices_matches_one_device(pydoc_data, tmp_path):
  single = _run_mesh(pydoc_data, tmp_path, 1, [""])[""]
  fsdp = _run_mesh(pydoc_data, tmp_path, 8, ["data=2,fsdp=4"])["data=2,fsdp=4"]
  assert fsdp["devices"] == 8 and "fsdp" in fsdp["spec"]
  assert fsdp["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)
  assert fsdp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)

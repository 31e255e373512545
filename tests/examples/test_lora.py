"""examples/lora: frozen base, adapters captured by sgd_sai (A at step 2), exact resume."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from examples.common import checkpoint, metrics, optim, training
from examples.lora import configs
from examples.lora import train as lora_train

STEPS = 4


@pytest.fixture(scope="module")
def micro_lora(tmp_path_factory, pydoc_data):
  """A 2-layer, 32-wide LoRA config whose base is pretrained for 10 steps (once)."""
  root = tmp_path_factory.mktemp("lora")
  return dataclasses.replace(
      configs.get_config("tiny"), n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4,
      steps=STEPS, warmup_steps=2, log_every=1, eval_every=STEPS, eval_batches=1, ckpt_every=1,
      keep_checkpoints=STEPS, rank=4, base_steps=10, base_dir=str(root / "base"),
      base_data_dir=str(pydoc_data), data_dir=str(root / "pysource"),
  )


def _flat(tree) -> dict[str, np.ndarray]:
  return {optim.path_str(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _params_at(workdir, step) -> dict[str, np.ndarray]:
  return _flat(checkpoint.restore_pure(workdir, step))


def test_lora_trains_adapters_only_captures_a_at_step_2_and_resumes(micro_lora, tmp_path):
  full = lora_train.train(micro_lora, "sgd_sai", tmp_path / "full", progress=False)
  trained = _flat(full["params"])
  # Only adapters are trained: 2 layers x 4 projections x (A, B), nothing else.
  assert len(trained) == 16 and all(p.rsplit("/", 1)[1] in ("lora_a", "lora_b")
                                    for p in trained)
  # Optimizer state for the adapters only (float32: 4 bytes per entry).
  base = _flat(lora_train.load_base(lora_train.base_workdir(micro_lora)))
  task = lora_train.build_task(micro_lora, "sgd_sai")
  sizes = lora_train.state_bytes(task)
  adapter_floats = sum(v.size for v in trained.values())
  assert sizes["trainable_bytes"] == 4 * adapter_floats
  assert sizes["params_bytes"] == 4 * (adapter_floats + sum(v.size for v in base.values()))
  # sgd_sai: one momentum per entry plus a few scalars per block; AdamW: two per entry.
  assert 4 * adapter_floats <= sizes["opt_state_bytes"] < 4 * adapter_floats + 16 * 16 + 64
  assert lora_train.state_bytes(task, "adamw")["opt_state_bytes"] >= 8 * adapter_floats

  # The base inside the fine-tuned model is the checkpoint on disk, bit for bit.
  model = task.make_model(nnx.Rngs(micro_lora.seed))
  nnx.update(model, full["params"])
  for path, value in _flat(nnx.state(model, nnx.Param)).items():
    if path.endswith(("lora_a", "lora_b")):
      continue
    key = path.replace("/base_module", "")
    np.testing.assert_array_equal(value, base[key], err_msg=path)

  # Every A and B block captured, with a positive scale: B at step 1, A at step 2 (B = 0
  # makes every A gradient exactly zero at step 1).
  gsnr = json.loads((tmp_path / "full" / metrics.GSNR_FILE).read_text())
  for path in trained:
    row = gsnr["adapters"][path]
    assert row["scale"] > 0, path
    assert row["captured_at_step"] == (2 if path.endswith("lora_a") else 1), path
  # A does not move at step 1 (zero gradient, no weight decay) and moves from step 2 on.
  init = _flat(training.init_params(task))
  step1, step2 = _params_at(tmp_path / "full", 1), _params_at(tmp_path / "full", 2)
  for path in trained:
    if path.endswith("lora_a"):
      np.testing.assert_array_equal(step1[path], init[path], err_msg=path)
      assert np.abs(step2[path] - init[path]).max() > 0, path
    else:
      assert np.abs(step1[path]).max() > 0 and not init[path].any(), path
  assert full["a_captured"] == full["a_blocks"] == 8 and full["a_rel_change_mean"] > 0

  # Pre-empted at step 2, resumed: the same metrics and adapters as the uninterrupted run.
  lora_train.train(micro_lora, "sgd_sai", tmp_path / "split", stop_after=2, progress=False)
  resumed = lora_train.train(micro_lora, "sgd_sai", tmp_path / "split", resume=True,
                             progress=False)
  assert metrics.read_metrics(tmp_path / "split") == metrics.read_metrics(tmp_path / "full")
  for path, value in _flat(resumed["params"]).items():
    np.testing.assert_array_equal(value, trained[path], err_msg=path)
  assert json.loads((tmp_path / "split" / metrics.GSNR_FILE).read_text()) == gsnr


@pytest.mark.slow
def test_pinned_a_scale_never_captures_or_moves_a(micro_lora):
  # The sgd-sai 1.0.3 rule (A's g-SNR stored as 0 at step 1) emulated by the config's
  # labelled ablation (pin_a: A's gradient zeroed): A keeps its initial value, B trains.
  cfg = dataclasses.replace(micro_lora, steps=3, pin_a=True)
  out = lora_train.train(cfg, "sgd_sai", None, progress=False)
  init = _flat(training.init_params(lora_train.build_task(cfg, "sgd_sai")))
  for path, value in _flat(out["params"]).items():
    if path.endswith("lora_a"):
      np.testing.assert_array_equal(value, init[path], err_msg=path)
      assert out["adapters"][path]["captured_at_step"] == -1
    else:
      assert np.abs(value).max() > 0 and out["adapters"][path]["captured_at_step"] == 1
  assert out["a_captured"] == 0 and out["a_rel_change_mean"] == 0.0


@pytest.mark.slow
def test_cli_announces_pretraining_and_keeps_outputs_by_default(
    micro_lora, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  argv = ["--config", "tiny", "--no-progress", "--steps", "2", "--eval-every", "2",
          "--base-steps", "3", "--base-dir", str(tmp_path / "base")]
  for f in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "warmup_steps",
            "log_every", "eval_batches", "ckpt_every", "rank", "base_data_dir", "data_dir"):
    argv += [f"--{f.replace('_', '-')}", str(getattr(micro_lora, f))]
  lora_train.main(argv)
  out, err = capsys.readouterr()
  assert "pretraining the base model first: 3 adamw steps on pydoc, cached in " in err
  assert "no --workdir given: writing to runs/lora-tiny-sgd_sai-r4" in err
  workdir = tmp_path / "runs" / "lora-tiny-sgd_sai-r4"
  assert [r["step"] for r in metrics.read_metrics(workdir)] == [1, 2]
  assert f"metrics:     {workdir.relative_to(tmp_path) / 'metrics.jsonl'}" in err
  assert json.loads(out)["step"] == 2
  # The cached base is reused: no second announcement.
  lora_train.main([*argv, "--workdir", str(tmp_path / "again")])
  assert "the base model first" not in capsys.readouterr().err


def test_pin_a_needs_adapters():
  from examples.common.config import ConfigError

  with pytest.raises(ConfigError, match="pin_a: needs adapters"):
    dataclasses.replace(configs.get_config("tiny"), rank=0, pin_a=True)
  assert dataclasses.replace(configs.get_config("tiny"), pin_a=True).pin_a

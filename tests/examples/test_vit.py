"""ViT example: size, image-folder and digits loaders, zero-head training, resume, CLI."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from PIL import Image

import optax_sai
from examples.common import metrics
from examples.common.optim import path_str
from examples.common.training import count_params
from examples.vit import configs
from examples.vit import data as data_lib
from examples.vit import train as train_lib
from examples.vit.model import ViT


def test_vit_s16_has_the_published_parameter_count():
  n = count_params(lambda rngs: ViT(configs.get_config("vit-s16"), rngs=rngs))
  assert abs(n - 22_050_664) <= 0.01 * 22_050_664
  n = count_params(lambda rngs: ViT(configs.get_config("vit-b16"), rngs=rngs))
  assert abs(n - 86_567_656) <= 0.01 * 86_567_656


@pytest.fixture
def image_folder(tmp_path):
  """train/val folders of two classes: red-ish and blue-ish PNGs of assorted sizes."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("val", 3)):
    for name, channel in (("blue", 2), ("red", 0)):
      folder = tmp_path / split / name
      folder.mkdir(parents=True)
      for i in range(count):
        h, w = rng.integers(20, 60, size=2)
        img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        img[..., channel] = 230
        Image.fromarray(img).save(folder / f"{i}.png")
  (tmp_path / "train" / "red" / "notes.txt").write_text("not an image")
  return tmp_path


def test_image_folder_loader(image_folder):
  data = data_lib.ImageFolder(image_folder, image_size=16, batch_size=4, seed=0)
  assert data.classes == ["blue", "red"] and len(data.train_files) == 12
  batch = data.train_batch(0)
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
  np.testing.assert_array_equal(batch["image"], data.train_batch(0)["image"])  # (seed, step)
  assert not np.array_equal(batch["image"], data.train_batch(1)["image"])
  # The label matches the dominant channel after normalisation, through crops and flips.
  dominant = batch["image"].mean(axis=(1, 2))[:, [2, 0]].argmax(-1)
  np.testing.assert_array_equal(dominant, batch["label"])
  # One epoch (12 images, batch 4) visits every image once.
  idx = np.concatenate([data_lib.batch_indices(0, s, 4, 12) for s in range(3)])
  assert sorted(idx.tolist()) == list(range(12))
  val = list(data.val_batches())
  assert [int(b["mask"].sum()) for b in val] == [4, 2]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in val])[[0, 1, 2, 4]],
                                [0, 0, 0, 1])


def test_crops_have_the_right_size():
  img = Image.new("RGB", (50, 30))
  rng = np.random.default_rng(0)
  assert data_lib.random_resized_crop(img, 24, rng).size == (24, 24)
  assert data_lib.random_resized_crop(Image.new("RGB", (300, 10)), 24, rng).size == (24, 24)
  assert data_lib.center_crop(img, 24).size == (24, 24)


def test_digits_split_is_fixed_and_disjoint():
  tx, ty, vx, vy = data_lib.load_digits_split()
  assert len(tx) == 1500 and len(vx) == 297 and set(np.unique(ty)) == set(range(10))
  tx2, _, vx2, _ = data_lib.load_digits_split()
  np.testing.assert_array_equal(vx, vx2)
  train_set = {x.tobytes() for x in tx}
  assert sum(x.tobytes() in train_set for x in vx) < 10  # only true duplicate images
  digits = data_lib.Digits(image_size=16, batch_size=8)
  batch = digits.train_batch(3)
  assert batch["image"].shape == (8, 16, 16, 1)
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0


def test_zero_head_vit_gets_every_block_captured_by_sgd_sai():
  cfg = dataclasses.replace(configs.get_config("tiny"), depth=2, steps=1, batch_size=16,
                            log_every=1, eval_every=100)
  assert cfg.zero_head
  one = train_lib.train(cfg, "sgd_sai", progress=False)
  scales = {path_str(p): float(v) for p, v in
            jax.tree_util.tree_flatten_with_path(optax_sai.gsnr_scales(one["opt_state"]))[0]}
  # Step 1: below the zero head every gradient is zero; only the head is captured.
  assert {k for k, v in scales.items() if v > 0} == {"head/bias", "head/kernel"}
  assert one["val_loss"] == pytest.approx(np.log(10), abs=1e-3)  # zero logits
  three = train_lib.train(dataclasses.replace(cfg, steps=3), "sgd_sai", progress=False)
  scales = {path_str(p): float(v) for p, v in
            jax.tree_util.tree_flatten_with_path(optax_sai.gsnr_scales(three["opt_state"]))[0]}
  assert all(v > 0 for v in scales.values()), [k for k, v in scales.items() if v <= 0]
  assert {"cls_token", "pos_embed", "patch_embed/kernel", "blocks/0/qkv/kernel"} <= set(scales)


def test_tiny_config_learns_digits():
  """Zero-head tiny ViT on digits: ln(10) = 2.30 at init; measured 0.61 val loss and 82%
  accuracy after 150 steps (sgd_sai, 2 CPU cores, ~25 s)."""
  cfg = dataclasses.replace(configs.get_config("tiny"), steps=150)
  result = train_lib.train(cfg, "sgd_sai", progress=False)
  assert result["val_loss"] < 0.9
  assert result["val_accuracy"] > 0.7


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
  cfg = dataclasses.replace(configs.get_config("tiny"), depth=2, steps=20, batch_size=16,
                            warmup_steps=4, log_every=5, eval_every=10, ckpt_every=10)
  full = train_lib.train(cfg, "sgd_sai", tmp_path / "full")
  train_lib.train(cfg, "sgd_sai", tmp_path / "split", stop_after=7)  # between log steps
  resumed = train_lib.train(cfg, "sgd_sai", tmp_path / "split", resume=True)
  assert metrics.read_metrics(tmp_path / "split") == metrics.read_metrics(tmp_path / "full")
  assert resumed["val_accuracy"] == full["val_accuracy"]
  jax.tree.map(np.testing.assert_array_equal, resumed["opt_state"], full["opt_state"])


def test_cli_on_an_image_folder(image_folder, tmp_path, capsys):
  workdir = tmp_path / "run"
  train_lib.main([
      "--config", "tiny", "--dataset", "imagefolder", "--data-dir", str(image_folder),
      "--optimizer", "sgdm", "--steps", "4", "--batch-size", "4", "--log-every", "2",
      "--workdir", str(workdir),
  ])
  records = metrics.read_metrics(workdir)
  assert [r["step"] for r in records] == [2, 4] and "val_accuracy" in records[-1]
  gsnr = json.loads((workdir / "gsnr.json").read_text())
  assert gsnr["head/kernel"] == pytest.approx(1.0)  # zero head: only it has a gradient
  assert (workdir / "curves.png").exists()

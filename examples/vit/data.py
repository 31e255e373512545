"""Image data for ViT: an ImageNet-style image folder, or scikit-learn's bundled digits.

Both give batches ``{"image": float32 NHWC, "label": int32}`` plus, for evaluation, a
``"mask"`` (0 for padding in the last batch). A training batch is a pure function of
``(seed, step)``: the sample order is a per-epoch permutation seeded by ``(seed, epoch)``,
and augmentation draws from a generator seeded by ``(seed, step, i)``, so resuming at any
step rebuilds the same batches.

Image folder layout (torchvision's ``ImageFolder``)::

    root/train/<class>/*.{jpg,jpeg,png,...}
    root/val/<class>/*.{jpg,jpeg,png,...}

Training applies random-resized-crop (scale 0.08-1, ratio 3/4-4/3) and a horizontal
flip; evaluation resizes the shorter side to ``image_size / 0.875`` and center-crops.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EVAL_CROP = 0.875


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Indices of training step ``step``: consecutive slices of per-epoch permutations."""
  start = step * batch_size
  out = []
  while len(out) < batch_size:
    epoch, offset = divmod(start + len(out), n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    out.extend(perm[offset : offset + batch_size - len(out)].tolist())
  return np.asarray(out, np.int64)


def _eval_batches(n: int, batch_size: int, limit: int = 0) -> Iterator[tuple[np.ndarray, int]]:
  """Index batches over ``range(n)`` padded to ``batch_size`` (with the real count)."""
  num = math.ceil(n / batch_size)
  if limit > 0:
    num = min(num, limit)
  for b in range(num):
    idx = np.arange(b * batch_size, min((b + 1) * batch_size, n))
    real = len(idx)
    yield np.pad(idx, (0, batch_size - real), mode="edge"), real


def _with_mask(batch: dict[str, np.ndarray], real: int) -> dict[str, np.ndarray]:
  mask = np.zeros(len(batch["label"]), np.float32)
  mask[:real] = 1.0
  return {**batch, "mask": mask}


# --------------------------------------------------------------------------- image folder


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
  """Inception-style crop (torchvision's ``RandomResizedCrop``), resized to ``size``."""
  w, h = img.size
  area = w * h
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < cw <= w and 0 < ch <= h:
      x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
      return img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
  # Fallback: the largest central crop within the ratio bounds.
  r = w / h
  if r < ratio[0]:
    cw, ch = w, round(w / ratio[0])
  elif r > ratio[1]:
    cw, ch = round(h * ratio[1]), h
  else:
    cw, ch = w, h
  x0, y0 = (w - cw) // 2, (h - ch) // 2
  return img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))


def center_crop(img: Image.Image, size: int, crop_fraction: float = EVAL_CROP) -> Image.Image:
  """Resize the shorter side to ``size / crop_fraction``, then take the central square."""
  w, h = img.size
  short = round(size / crop_fraction)
  scale = short / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  img = img.resize((nw, nh), Image.BICUBIC)
  x0, y0 = (nw - size) // 2, (nh - size) // 2
  return img.crop((x0, y0, x0 + size, y0 + size))


def _normalize(img: Image.Image) -> np.ndarray:
  x = np.asarray(img, np.float32) / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def list_images(split_dir: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray, list[str]]:
  """``(files, labels, class names)`` of a folder of class subfolders, in sorted order."""
  split_dir = Path(split_dir)
  classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
  if not classes:
    raise FileNotFoundError(f"{split_dir} has no class subfolders")
  files, labels = [], []
  for label, name in enumerate(classes):
    for f in sorted((split_dir / name).rglob("*")):
      if f.suffix.lower() in IMAGE_EXTENSIONS:
        files.append(f)
        labels.append(label)
  if not files:
    raise FileNotFoundError(f"{split_dir} has no images")
  return files, np.asarray(labels, np.int32), classes


class ImageFolder:
  """ImageNet-style train/val folders, decoded with PIL on a small thread pool (RGB)."""

  channels = 3

  def __init__(self, root: str | os.PathLike[str], image_size: int, batch_size: int,
               seed: int = 0, augment: bool = True, eval_batches: int = 0, workers: int = 8):
    root = Path(root)
    self.train_files, self.train_labels, self.classes = list_images(root / "train")
    self.val_files, self.val_labels, val_classes = list_images(root / "val")
    if val_classes != self.classes:
      raise ValueError(f"{root}: train and val have different class folders")
    self.image_size, self.batch_size, self.seed = image_size, batch_size, seed
    self.augment, self.eval_batches = augment, eval_batches
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def _load_train(self, index: int, rng: np.random.Generator) -> np.ndarray:
    with Image.open(self.train_files[index]) as f:
      img = f.convert("RGB")
    if self.augment:
      img = random_resized_crop(img, self.image_size, rng)
      if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
      img = center_crop(img, self.image_size)
    return _normalize(img)

  def _load_val(self, index: int) -> np.ndarray:
    with Image.open(self.val_files[index]) as f:
      return _normalize(center_crop(f.convert("RGB"), self.image_size))

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    idx = batch_indices(self.seed, step, self.batch_size, len(self.train_files))
    rngs = [np.random.default_rng([self.seed, step, i]) for i in range(len(idx))]
    images = list(self._pool.map(self._load_train, idx, rngs))
    return {"image": np.stack(images), "label": self.train_labels[idx]}

  def val_batches(self) -> Iterator[dict[str, np.ndarray]]:
    for idx, real in _eval_batches(len(self.val_files), self.batch_size, self.eval_batches):
      images = list(self._pool.map(self._load_val, idx))
      yield _with_mask({"image": np.stack(images), "label": self.val_labels[idx]}, real)


# --------------------------------------------------------------------------- digits


def load_digits_split(val_size: int = 297) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]:
  """scikit-learn's 1797 8x8 digits (bundled, no download), split by a fixed permutation.

  Returns ``(train_images, train_labels, val_images, val_labels)``; images are float32
  in [0, 1] with shape ``(n, 8, 8)``.
  """
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(images))
  train, val = perm[val_size:], perm[:val_size]
  return images[train], labels[train], images[val], labels[val]


class Digits:
  """The digits, upsampled (nearest) to ``image_size``, standardised to [-1, 1], 1 channel.

  Training augmentation (``augment``): a random shift of up to one source pixel.
  """

  num_classes = 10
  channels = 1

  def __init__(self, image_size: int, batch_size: int, seed: int = 0, augment: bool = True):
    tx, self.train_labels, vx, self.val_labels = load_digits_split()
    if image_size % 8:
      raise ValueError(f"digits need an image_size multiple of 8, got {image_size}")
    self.factor = image_size // 8
    self.train_images, self.val_images = self._upsample(tx), self._upsample(vx)
    self.batch_size, self.seed, self.augment = batch_size, seed, augment

  def _upsample(self, x: np.ndarray) -> np.ndarray:
    x = np.repeat(np.repeat(x, self.factor, axis=1), self.factor, axis=2)
    return ((x - 0.5) / 0.5)[..., None]

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    idx = batch_indices(self.seed, step, self.batch_size, len(self.train_images))
    images = self.train_images[idx]
    if self.augment:
      rng = np.random.default_rng([self.seed, step])
      shifts = rng.integers(-1, 2, size=(len(idx), 2)) * self.factor
      pad = self.factor
      padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
      size = images.shape[1]
      images = np.stack([
          padded[i, pad + dy : pad + dy + size, pad + dx : pad + dx + size]
          for i, (dy, dx) in enumerate(shifts)
      ])
    return {"image": images, "label": self.train_labels[idx]}

  def val_batches(self) -> Iterator[dict[str, np.ndarray]]:
    for idx, real in _eval_batches(len(self.val_images), self.batch_size):
      yield _with_mask({"image": self.val_images[idx], "label": self.val_labels[idx]}, real)

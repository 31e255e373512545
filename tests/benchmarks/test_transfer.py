"""benchmarks.study.transfer: learning-rate drift across width and kinds, from study logs."""

from __future__ import annotations

import math

import pytest

from benchmarks.study import transfer
from benchmarks.study.spec import Spec

SQRT10 = math.sqrt(10.0)


def test_drift_is_the_least_squares_slope_in_decades_per_doubling():
  # Halving per doubling is log10(1/2) = -0.30103 decades per doubling, whatever the start.
  assert transfer.drift_per_doubling([(64, 1.0), (128, 0.5), (256, 0.25)]) == pytest.approx(
      -0.30103, abs=1e-5)
  # Through (1, 0) and (2, -1) in (log2 width, log10 lr) with a middle point 0.3 above the
  # line: the least-squares slope of (0, 0), (1, -0.2), (2, -1) is -0.5.
  assert transfer.drift_per_doubling([(2, 1.0), (4, 10 ** -0.2), (8, 0.1)]) == pytest.approx(
      -0.5)
  assert transfer.drift_per_doubling([(64, 1.0)]) is None


def test_loss_at_interpolates_in_log_lr_and_says_where_it_cannot():
  points = [(0.1, 2.0), (1.0, 1.0), (10.0, math.inf)]
  assert transfer.loss_at(points, 1.0) == 1.0
  assert transfer.loss_at(points, 10 ** -0.5) == pytest.approx(1.5)  # halfway in log10
  assert transfer.loss_at(points, 0.01 * 10 ** 1.25) == pytest.approx(1.75)  # a quarter
  assert transfer.loss_at(points, 3.0) == math.inf  # next to a diverged point
  assert transfer.loss_at(points, 20.0) is None and transfer.loss_at(points, 0.05) is None


def _rows(optimizer, width, losses, default):
  """Seed-0 cells of a 3-point grid ``default x 10^(k/2)``, k = -1, 0, 1."""
  return [{"id": f"{optimizer}{width}{k}", "budget": 100, "width": width,
           "optimizer": optimizer, "k": k, "j": 0, "seed": 0,
           "lr": default * SQRT10 ** k, "wd": 0.01, "val_loss": loss, "val_accuracy": 0.5,
           "diverged": False, "curve": []} for k, loss in zip((-1, 0, 1), losses, strict=True)]


def test_width_transfer_reads_both_conventions_from_the_normalize_true_runs():
  spec = Spec("t", model="gpt2", widths=(64, 128), budgets=(100,), lr_ks=(-1, 0, 1),
              seeds_best=(), seeds_best_largest=())
  rows = (_rows("sgd_sai", 64, (3.0, 2.0, 2.5), 0.5) + _rows("sgd_sai", 128, (2.8, 1.9, 2.2), 0.5)
          + _rows("adamw", 64, (2.6, 2.1, 2.4), 3e-3) + _rows("adamw", 128, (1.7, 1.8, 2.3), 3e-3)
          + _rows("sgdm", 64, (2.9, 2.2, 2.7), 0.3) + _rows("sgdm", 128, (2.5, 2.0, 2.6), 0.3))
  got = transfer.width_transfer(spec, rows, 100, lambda w: 2.0 * w)  # N = 2 x width
  assert got["widths"] == [64, 128]
  sai = got["optimizers"]["sgd_sai"]
  assert sai["lrs"] == {64: pytest.approx(0.5), 128: pytest.approx(0.5)}
  assert sai["drift"] == pytest.approx(0.0) and sai["reuse_lost"][128] == pytest.approx(0.0)
  # normalize=False: 0.5 / 128 and 0.5 / 256; width 64's 0.5/128 reused at width 128 is the
  # normalize=True run at 0.5 x 256/128 = 1.0, log10(1/0.5) / 0.5 = 0.60206 of the way from
  # 0.5 (1.9) to 1.58 (2.2): 1.9 + 0.60206 x 0.3 = 2.080618, 0.180618 above the best.
  unnorm = got["optimizers"][transfer.DERIVED]
  assert unnorm["lrs"] == {64: pytest.approx(0.00390625), 128: pytest.approx(0.001953125)}
  assert unnorm["drift"] == pytest.approx(-0.30103, abs=1e-5)
  assert unnorm["reuse_loss"][128] == pytest.approx(2.080618, abs=1e-6)
  assert unnorm["reuse_lost"][128] == pytest.approx(0.180618, abs=1e-6)
  # AdamW's best moves from 3e-3 to 3e-3 / sqrt(10): -0.5 decades; reusing 3e-3 costs 0.1.
  adamw = got["optimizers"]["adamw"]
  assert adamw["drift"] == pytest.approx(-0.5) and adamw["reuse_lost"][128] == pytest.approx(0.1)
  # Without every optimizer's grid at two widths there is nothing to compare.
  assert transfer.width_transfer(spec, [r for r in rows if r["width"] == 64], 100,
                                 lambda w: 1.0) is None


def test_kinds_transfer_spreads_are_decades_between_the_extremes():
  specs = [Spec(f"k_{m}", model=m, widths=(w,), budgets=(100,), lr_ks=(-1, 0, 1),
                optimizers=("sgd_sai", "adamw", "sgdm"), seeds_best=(), seeds_best_largest=())
           for m, w in (("gpt2", 64), ("cnn", 32))]
  logs = {"gpt2": _rows("sgd_sai", 64, (3, 2, 2.5), 1.0) + _rows("adamw", 64, (3, 2, 2.5), 1e-2)
          + _rows("sgdm", 64, (3, 2, 2.5), 0.1),
          "cnn": _rows("sgd_sai", 32, (3, 2.5, 2), 1.0) + _rows("adamw", 32, (2, 2.5, 3), 1e-2)
          + _rows("sgdm", 32, (3, 2, 2.5), 0.1)}
  norms = {"gpt2": 100.0, "cnn": 10.0}
  got = transfer.kinds_transfer(specs, lambda s: logs[s.model],
                                lambda s, w: norms[s.model])
  assert got["models"] == ["gpt2", "cnn"]
  o = got["optimizers"]
  assert o["sgd_sai"]["lrs"] == {"gpt2": pytest.approx(1.0), "cnn": pytest.approx(SQRT10)}
  assert o["sgd_sai"]["spread"] == pytest.approx(0.5)
  assert o["adamw"]["spread"] == pytest.approx(0.5) and o["sgdm"]["spread"] == pytest.approx(0)
  # normalize=False at the same per-step decay: 1 / 100 and sqrt(10) / 10, 1.5 decades apart.
  assert o[transfer.DERIVED]["lrs"] == {"gpt2": pytest.approx(0.01),
                                        "cnn": pytest.approx(SQRT10 / 10)}
  assert o[transfer.DERIVED]["spread"] == pytest.approx(1.5)

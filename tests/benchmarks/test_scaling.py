"""The budget-scaling study (benchmarks.scaling): grid logic, bands, pipeline, resume."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from benchmarks import scaling
from examples.common import optim

# A trivial size: a one-layer, width-16 model on the built-in pydoc corpus, a few steps.
TINY = scaling.Study(
    optimizers=("sgd_sai", "adamw"), budgets=(3, 4), widths=(16,), grid_ks=(0, 1),
    max_extend=0, seeds_best=(), seeds_best_largest=(), evals=2, dataset="pydoc",
    overrides=(("eval_batches", 1), ("n_layer", 1), ("block_size", 16), ("batch_size", 4)),
)


def test_band_width_interpolates_in_log_lr():
  # Best 1.0 at lr 0.1; 2% limit 1.02: left crossing 2% of the way to lr 0.01 (loss 2.0),
  # right crossing half-way to lr 1 (loss 1.04): 1.02 - 0.5 = 0.52 decades.
  points = [(0.01, 2.0), (0.1, 1.0), (1.0, 1.04)]
  width, is_open = scaling.band_width(points, 0.02)
  assert width == pytest.approx(0.52) and not is_open
  # 5%: lr 1 is inside and is the grid's edge: at least 1 + 0.05 decades.
  width, is_open = scaling.band_width(points, 0.05)
  assert width == pytest.approx(1.05) and is_open
  # A diverged neighbour closes the band at that neighbour.
  width, _ = scaling.band_width([(0.01, math.inf), (0.1, 1.0), (1.0, math.inf)], 0.02)
  assert width == pytest.approx(2.0)
  # Absolute: error rates within 2 points of the best 0.05, i.e. up to 0.07. Left: 0.02 of
  # the 0.25 rise to lr 0.01, 8% of a decade; right: lr 1 (0.06) is inside, at the edge.
  points = [(0.01, 0.30), (0.1, 0.05), (1.0, 0.06)]
  width, is_open = scaling.band_width(points, 0.02, absolute=True)
  assert width == pytest.approx(1.08) and is_open


def test_gap_trend_fits_a_line_in_log_steps():
  def stage(budget, gap):
    return {"budget": budget, "width": 16, "gap_adamw": {"mean": gap, "final": True}}

  # 0.3 at 100 steps, 0.2 at 1000: -0.1 per decade, zero at 10**(2 + 3) steps.
  trend = scaling.gap_trend(TINY, [stage(100, 0.3), stage(1000, 0.2)])["adamw_w16"]
  assert trend["slope_per_decade"] == pytest.approx(-0.1)
  assert trend["zero_at_steps"] == pytest.approx(1e5, rel=1e-6)
  widening = scaling.gap_trend(TINY, [stage(100, 0.2), stage(1000, 0.3)])["adamw_w16"]
  assert widening["zero_at_steps"] is None


def _row(budget, key, k, seed, loss):
  return {"id": scaling.cell_id(budget, 16, key, k, seed), "budget": budget, "width": 16,
          "optimizer": key, "k": k, "seed": seed, "val_loss": loss, "diverged": loss is None}


def test_grid_state_extends_edges_then_adds_seeds():
  study = dataclasses.replace(TINY, grid_ks=(-1, 0, 1), max_extend=1, seeds_best=(1,),
                              seeds_best_largest=(1, 2), largest_budget=4)
  rows = [_row(3, "adamw", -1, 0, 2.0), _row(3, "adamw", 0, 0, 1.5)]
  assert scaling.grid_state(study, rows, 3, 16, "adamw")["next"] == [(1, 0)]
  rows.append(_row(3, "adamw", 1, 0, 1.2))  # best on the high edge: extend once
  assert scaling.grid_state(study, rows, 3, 16, "adamw")["next"] == [(2, 0)]
  rows.append(_row(3, "adamw", 2, 0, 1.1))  # still on the edge, cap reached: seeds
  state = scaling.grid_state(study, rows, 3, 16, "adamw")
  assert state["edge"] == "high" and state["extended"] == [2]
  assert state["best_k"] == 2 and state["next"] == [(2, 1)]
  # Interior best at the largest budget: two extra seeds; diverged points never win.
  rows = [_row(4, "sgdm", k, 0, loss) for k, loss in ((-1, 1.4), (0, 1.3), (1, None))]
  state = scaling.grid_state(study, rows, 4, 16, "sgdm")
  assert state["best_k"] == 0 and state["next"] == [(0, 1), (0, 2)]


def test_learning_rates_come_from_the_registry():
  from examples.gpt2 import configs

  table = {n: lr for n, lr, _ in configs.get_config("tiny").optimizer_defaults}
  for key in scaling.OPTIMIZERS:
    assert key in optim.REGISTRY
    assert scaling.lr_of(key, 0) == pytest.approx(table[key])
    assert scaling.lr_of(key, 1) / scaling.lr_of(key, -1) == pytest.approx(10.0, rel=1e-2)


def test_pipeline_writes_table_and_plots_and_resumes(tmp_path):
  first = dataclasses.replace(TINY, budgets=(3,))
  counts = scaling.run_study(first, tmp_path, log=lambda s: None)
  assert counts == {"trained": 4, "groups": 2}
  rows = scaling.read_cells(tmp_path)
  assert {(r["optimizer"], r["k"]) for r in rows} == {
      (k, i) for k in ("sgd_sai", "adamw") for i in (0, 1)}
  for r in rows:
    assert r["lr"] == pytest.approx(scaling.lr_of(r["optimizer"], r["k"]))
    assert math.isfinite(r["val_loss"]) and r["val_loss"] < math.log(256) + 1
    assert [c[0] for c in r["curve"]] == [2, 3] and r["group_size"] == 2

  # Resume with a second budget: the finished cells are skipped, only budget 4 runs.
  counts = scaling.run_study(TINY, tmp_path, log=lambda s: None)
  assert counts == {"trained": 4, "groups": 2}
  summary = scaling.report(TINY, tmp_path, "cmd")
  assert len(scaling.read_cells(tmp_path)) == 8
  for st in summary["stages"]:
    a, b = st["optimizers"]["sgd_sai"], st["optimizers"]["adamw"]
    assert st["gap_adamw"]["mean"] == pytest.approx(a["mean"] - b["mean"])
    # The best point is the lower loss of the two; both are on an edge (no extension).
    assert a["mean"] == min(loss for _, loss in a["points"])
    assert a["edge"] in ("low", "high")
  table = (tmp_path / "table.md").read_text()
  assert "SGD-SaI (normalize=True)" in table and "AdamW" in table
  assert "cap reached" in table and "| 4 | 16 |" in table
  for name in ("gap.png", "curves.png"):
    assert (tmp_path / name).stat().st_size > 1000
  assert json.loads((tmp_path / "summary.json").read_text())["cells"] == 8


@pytest.mark.slow
def test_vmapped_group_matches_the_examples_fit_and_resumes_midway(tmp_path):
  """Each member of a vmapped group trains as the example's own ``fit`` would, and a group
  interrupted midway resumes to the same result."""
  from examples.gpt2 import train as gpt2_train

  budget, members = 4, [(scaling.lr_of("adamw", 0), 0), (scaling.lr_of("adamw", 1), 1)]
  whole = scaling.train_group(TINY, budget, 16, "adamw", members, log=lambda s: None)
  for (lr, seed), row in zip(members, whole, strict=True):
    cfg = dataclasses.replace(scaling.base_config(TINY, 16, budget, "adamw", seed),
                              learning_rate=lr, eval_every=budget)
    fit = gpt2_train.train(cfg, workdir=None, progress=False)
    assert row["val_loss"] == pytest.approx(fit["val_loss"], rel=1e-4)
  partial = tmp_path / "group"
  assert scaling.train_group(TINY, budget, 16, "adamw", members, partial=partial,
                             stop_after=2, log=lambda s: None) is None
  assert partial.with_suffix(".npz").exists()
  resumed = scaling.train_group(TINY, budget, 16, "adamw", members, partial=partial,
                                log=lambda s: None)
  assert [r["val_loss"] for r in resumed] == pytest.approx([r["val_loss"] for r in whole],
                                                           rel=1e-5)
  assert resumed[0]["curve"][0] == whole[0]["curve"][0]
  assert not partial.with_suffix(".npz").exists()


def test_stdlib_corpus_is_split_by_file_and_skips_site_packages(tmp_path):
  import hashlib

  import numpy as np

  from examples.gpt2 import data as data_lib
  from examples.gpt2 import prepare

  root = tmp_path / "lib"
  files = {f"m{i}.py": f"x = {i}\n".encode() * (i + 1) for i in range(40)}
  files["pkg/sub.py"] = b"def f():\n  return 1\n"
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(text)
  (root / "site-packages").mkdir()
  (root / "site-packages" / "third_party.py").write_bytes(b"import nothing\n")
  (root / "notes.txt").write_bytes(b"not python\n")

  meta = prepare.prepare_stdlib(tmp_path / "out", root)
  is_val = {n: hashlib.sha1(n.encode()).digest()[0] < 13 for n in files}
  assert any(is_val.values()) and not all(is_val.values())
  for split, want in (("train", False), ("val", True)):
    expected = b"\n\n".join(files[n] for n in sorted(files) if is_val[n] == want)
    got = np.fromfile(tmp_path / "out" / f"{split}.bin", np.uint16).astype(np.uint8)
    assert got.tobytes() == expected
    assert meta[f"{split}_tokens"] == len(expected)
  assert meta["train_files"] + meta["val_files"] == len(files)  # site-packages skipped
  assert data_lib.load_meta(tmp_path / "out")["vocab_size"] == 256


def test_vit_study_uses_the_vit_example_and_reports_accuracy(tmp_path):
  """``model="vit"``: the ViT example's tiny config at the study's width, its own learning
  rates, and a table with the val accuracy and its gap beside the loss."""
  from examples.vit import configs as vit_configs

  study = scaling.Study(model="vit", optimizers=("sgd_sai", "adamw"), budgets=(4,),
                        widths=(16,), grid_ks=(-2, -1), max_extend=0, seeds_best=(),
                        seeds_best_largest=(), evals=2)
  assert study.dataset == "digits" and dict(study.overrides) == {"augment": True}
  cfg = scaling.base_config(study, 32, 4, "adamw", seed=3)
  assert (cfg.hidden_size, cfg.mlp_dim, cfg.steps, cfg.seed) == (32, 64, 4, 3)
  table = {n: lr for n, lr, _ in vit_configs.get_config("tiny").optimizer_defaults}
  assert scaling.lr_of("sgd_sai", 0, "vit") == pytest.approx(table["sgd_sai"])
  assert scaling.lr_of("adamw", -2, "vit") == pytest.approx(table["adamw"] / 10, rel=1e-2)

  assert scaling.run_study(study, tmp_path, log=lambda s: None) == {"trained": 4, "groups": 2}
  rows = scaling.read_cells(tmp_path)
  # A member of the vmapped group trains as the ViT example's own ``fit`` does.
  from examples.vit import train as vit_train

  row = next(r for r in rows if r["optimizer"] == "adamw" and r["k"] == -1)
  cfg = dataclasses.replace(scaling.base_config(study, 16, 4, "adamw", 0),
                            learning_rate=row["lr"], eval_every=4)
  fit = vit_train.train(cfg, workdir=None, progress=False)
  assert row["val_loss"] == pytest.approx(fit["val_loss"], rel=1e-4)
  assert row["val_accuracy"] == pytest.approx(fit["val_accuracy"])
  for r in rows:
    assert r["lr"] == pytest.approx(scaling.lr_of(r["optimizer"], r["k"], "vit"))
    assert 0.0 <= r["val_accuracy"] <= 1.0
    # 297 held-out images: the accuracy is a whole number of them.
    assert r["val_accuracy"] * 297 == pytest.approx(round(r["val_accuracy"] * 297), abs=1e-6)
    assert r["num_params"] < 50_000  # width 16, not the tiny config's 64
  summary = scaling.report(study, tmp_path, "cmd")
  st = summary["stages"][0]
  a, b = st["optimizers"]["sgd_sai"], st["optimizers"]["adamw"]
  assert st["gap_adamw"]["acc_mean"] == pytest.approx(a["acc"] - b["acc"])
  assert a["acc"] == pytest.approx(a["acc_per_seed"][0])
  # 4 steps of 64 images over the 1,500 training images.
  assert summary["epochs"][4] == pytest.approx(4 * 64 / 1500)
  assert {"band_acc2", "band_acc5"} <= set(a) and len(a["acc_points"]) == 2
  text = (tmp_path / "table.md").read_text()
  assert "tiny ViT" in text and "val acc %" in text and "1,500 training images" in text
  assert (tmp_path / "gap.png").stat().st_size > 1000


def test_unnormalised_line_divides_the_grid_by_the_measured_normaliser():
  """``sgd_sai_unnorm``'s grid is sgd_sai's divided by ``max_k snr_k`` of the first step,
  which is recomputed here in NumPy from the gradient of the example's own loss."""
  import jax
  import numpy as np
  from flax import nnx

  from examples.gpt2 import train as gpt2_train

  task = gpt2_train.build_task(scaling.base_config(TINY, 16, 4, "sgd_sai", 0))
  model = task.make_model(nnx.Rngs(jax.random.PRNGKey(0)))
  grads = nnx.grad(lambda m: task.loss_fn(m, task.train_batch(0), None))(model)
  snrs = []
  for path, g in jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]:
    g = np.asarray(g, np.float64)
    keys = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)
    # Scanned layers (under ``h``) are one block per layer, the rest one block per leaf.
    blocks = list(g) if task.block_axes and task.block_axes(keys, g) == 0 else [g]
    snrs += [np.linalg.norm(b) / (np.std(b, ddof=1) + 1e-8) for b in blocks if b.size > 1]
  normaliser = scaling.gsnr_normaliser(TINY, 16)
  assert normaliser == pytest.approx(float(f"{max(snrs):.3g}"))
  # snr >= sqrt(numel - 1) (spec, section 2): the largest block is the 256 x 16 embedding.
  assert normaliser >= math.sqrt(256 * 16 - 1) * 0.999
  assert scaling.lr_divisor(TINY, 16, "sgd_sai") == scaling.lr_divisor(TINY, 16, "adamw") == 1
  for k in (-1, 0, 2):
    assert scaling.grid_lr(TINY, 16, "sgd_sai_unnorm", k) == pytest.approx(
        scaling.lr_of("sgd_sai", k) / normaliser, rel=5e-3)


def test_report_covers_the_whole_log_and_the_weight_decay_check(tmp_path):
  """A report written by a run restricted to one optimizer still covers every logged cell,
  and the sgd_sai_unnorm rows get their own differences (hand-computed here)."""
  rows = []
  for key, losses in (("sgd_sai", (2.0, 1.8, 1.9)), ("adamw", (1.6, 1.5, 1.7)),
                      ("sgd_sai_unnorm", (1.9, 1.7, 2.2))):
    for k, loss in zip((-1, 0, 1), losses, strict=True):
      rows.append(_row(3, key, k, 0, loss))
    rows.append(_row(3, key, 0, 1, losses[1] + 0.1))  # seed 1 at the best (k = 0)
  for r in rows:
    r.update(val_accuracy=0.5, curve=[[3, r["val_loss"], r["val_loss"], 0.5]],
             group_wall_s=1.0, finished="t", lr=0.1)
  (tmp_path / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  study = dataclasses.replace(TINY, optimizers=("sgd_sai_unnorm",), budgets=(3,),
                              grid_ks=(-1, 0, 1), seeds_best=(1,))
  summary = scaling.report(study, tmp_path, "cmd")
  assert list(summary["study"]["optimizers"]) == ["sgd_sai", "adamw", "sgd_sai_unnorm"]
  st = summary["stages"][0]
  # Seed means: sgd_sai 1.85, adamw 1.55, unnorm 1.75; paired per seed.
  assert st["gap_adamw"]["mean"] == pytest.approx(0.30)
  assert st["gap_sgd_sai_unnorm_adamw"]["mean"] == pytest.approx(0.20)
  assert st["gap_sgd_sai_unnorm_sgd_sai"]["mean"] == pytest.approx(-0.10)
  assert st["gap_sgd_sai_unnorm_sgd_sai"]["paired"] == pytest.approx([-0.10, -0.10])
  assert st["normaliser"] == scaling.gsnr_normaliser(TINY, 16)
  table = (tmp_path / "table.md").read_text()
  assert "SGD-SaI (normalize=False)" in table and "| 3 | 16 | AdamW | " in table
  assert "Weight-decay check" in table and "| -0.100 [-0.100, -0.100] | +0.200" in table

"""The study engine (benchmarks.study): rules, planner, log, backends and the report."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks.study import __main__ as cli
from benchmarks.study import analysis, backends, log, planner, report, runner
from benchmarks.study.spec import Arm, Spec, cell_id
from benchmarks.study.specs import SPECS
from benchmarks.study.specs import lora as lora_specs
from examples.common import optim

# A trivial size: a one-layer, width-16 model on the built-in pydoc corpus, a few steps.
TINY = Spec(
    "tiny", optimizers=("sgd_sai", "adamw"), budgets=(3, 4), widths=(16,), lr_ks=(0, 1),
    max_extend=0, seeds_best=(), seeds_best_largest=(), evals=2, dataset="pydoc",
    overrides=(("eval_batches", 1), ("n_layer", 1), ("block_size", 16), ("batch_size", 4)),
)
FIXTURE = Path(__file__).parent / "fixtures" / "study_vit_100"


def quiet(_):
  return None


def test_band_width_interpolates_in_log_lr():
  # Best 1.0 at lr 0.1; 2% limit 1.02: left crossing 2% of the way to lr 0.01 (loss 2.0),
  # right crossing half-way to lr 1 (loss 1.04): 1.02 - 0.5 = 0.52 decades.
  points = [(0.01, 2.0), (0.1, 1.0), (1.0, 1.04)]
  width, is_open = analysis.band_width(points, 0.02)
  assert width == pytest.approx(0.52) and not is_open
  # 5%: lr 1 is inside and is the grid's edge: at least 1 + 0.05 decades.
  width, is_open = analysis.band_width(points, 0.05)
  assert width == pytest.approx(1.05) and is_open
  # A diverged neighbour closes the band at that neighbour.
  width, _ = analysis.band_width([(0.01, math.inf), (0.1, 1.0), (1.0, math.inf)], 0.02)
  assert width == pytest.approx(2.0)
  # Absolute: error rates within 2 points of the best 0.05, i.e. up to 0.07. Left: 0.02 of
  # the 0.25 rise to lr 0.01, 8% of a decade; right: lr 1 (0.06) is inside, at the edge.
  points = [(0.01, 0.30), (0.1, 0.05), (1.0, 0.06)]
  width, is_open = analysis.band_width(points, 0.02, absolute=True)
  assert width == pytest.approx(1.08) and is_open


def test_divergence_and_best_rules():
  # Ten classes: a uniform guess scores log(10) = 2.3026 nats; worse than that diverged.
  assert not analysis.diverged(2.30, 10) and analysis.diverged(2.31, 10)
  assert analysis.diverged(None, 10) and analysis.diverged(math.nan, 10)
  assert analysis.diverged(math.inf, 256) and not analysis.diverged(5.5, 256)  # log 256 = 5.55
  # Best = lowest final val loss; diverged or missing cells rank last.
  assert analysis.cell_loss({"val_loss": 1.5, "diverged": False}) == 1.5
  assert analysis.cell_loss({"val_loss": 1.5, "diverged": True}) == math.inf
  assert analysis.cell_loss(None) == analysis.cell_loss({"val_loss": None}) == math.inf


def test_gap_trend_fits_a_line_in_log_steps():
  def stage(budget, gap):
    return {"budget": budget, "width": 16, "gap_adamw": {"mean": gap, "final": True}}

  # 0.3 at 100 steps, 0.2 at 1000: -0.1 per decade, zero at 10**(2 + 3) steps.
  trend = analysis.gap_trend(TINY, [stage(100, 0.3), stage(1000, 0.2)])["adamw_w16"]
  assert trend["slope_per_decade"] == pytest.approx(-0.1)
  assert trend["zero_at_steps"] == pytest.approx(1e5, rel=1e-6)
  widening = analysis.gap_trend(TINY, [stage(100, 0.2), stage(1000, 0.3)])["adamw_w16"]
  assert widening["zero_at_steps"] is None


def _row(budget, key, k, seed, loss, j=0):
  return {"id": cell_id(budget, 16, key, k, j, seed), "budget": budget, "width": 16,
          "optimizer": key, "k": k, "j": j, "seed": seed, "val_loss": loss,
          "diverged": loss is None}


def test_planner_extends_edges_then_adds_seeds():
  spec = dataclasses.replace(TINY, lr_ks=(-1, 0, 1), max_extend=1, seeds_best=(1,),
                             seeds_best_largest=(1, 2), largest_budget=4)
  rows = [_row(3, "adamw", -1, 0, 2.0), _row(3, "adamw", 0, 0, 1.5)]
  assert planner.grid_state(spec, rows, 3, 16, "adamw")["next"] == [(1, 0, 0)]
  rows.append(_row(3, "adamw", 1, 0, 1.2))  # best on the high edge: extend once
  assert planner.grid_state(spec, rows, 3, 16, "adamw")["next"] == [(2, 0, 0)]
  rows.append(_row(3, "adamw", 2, 0, 1.1))  # still on the edge, cap reached: seeds
  state = planner.grid_state(spec, rows, 3, 16, "adamw")
  assert state["edge"] == "high" and state["extended"] == [(2, 0)]
  assert state["best"] == (2, 0) and state["next"] == [(2, 0, 1)]
  # Interior best at the largest budget: two extra seeds; diverged points never win.
  rows = [_row(4, "sgdm", k, 0, loss) for k, loss in ((-1, 1.4), (0, 1.3), (1, None))]
  state = planner.grid_state(spec, rows, 4, 16, "sgdm")
  assert state["best"] == (0, 0) and state["next"] == [(0, 0, 1), (0, 0, 2)]


def test_planner_extends_the_weight_decay_axis():
  spec = dataclasses.replace(TINY, lr_ks=(-1, 0, 1), wd_ks=(-1, 0, 1), max_extend=1,
                             seeds_best=(1,))
  losses = {(-1, -1): 2.0, (-1, 0): 1.9, (-1, 1): 1.95, (0, -1): 1.6, (0, 0): 1.5,
            (0, 1): 1.4, (1, -1): 1.8, (1, 0): 1.7, (1, 1): 1.75}
  rows = [_row(3, "adamw", k, 0, loss, j) for (k, j), loss in losses.items()]
  state = planner.grid_state(spec, rows, 3, 16, "adamw")
  # Interior learning rate, highest weight decay: one more weight decay at lr point 0.
  assert state["best"] == (0, 1) and state["next"] == [(0, 2, 0)]
  rows.append(_row(3, "adamw", 0, 0, 1.45, j=2))
  state = planner.grid_state(spec, rows, 3, 16, "adamw")
  assert state["extended"] == [(0, 2)] and state["next"] == [(0, 1, 1)]


def test_grids_come_from_the_optimizer_table_and_the_example_defaults():
  from examples.gpt2 import configs

  table = {n: (lr, wd) for n, lr, wd in configs.get_config("tiny").optimizer_defaults}
  for key in ("sgd_sai", "adamw", "sgdm"):
    assert key in optim.OPTIMIZERS
    assert planner.learning_rate(TINY, 16, key, 0) == pytest.approx(table[key][0])
    ratio = planner.learning_rate(TINY, 16, key, 1) / planner.learning_rate(TINY, 16, key, -1)
    assert ratio == pytest.approx(10.0, rel=1e-2)
    assert planner.weight_decay(TINY, 16, key, 2, 0.1) == pytest.approx(10 * table[key][1])
  # Per-step decay: wd = default lr x default wd x 10**(j/2) / lr, to 3 significant digits
  # (a relative rounding of at most 5e-3).
  per_step = dataclasses.replace(TINY, decay_per_step=True)
  lr, wd = table["sgd_sai"]
  assert planner.weight_decay(per_step, 16, "sgd_sai", 0, 0.05) == pytest.approx(
      lr * wd / 0.05, rel=5e-3)
  assert planner.weight_decay(per_step, 16, "sgd_sai", -2, lr) == pytest.approx(wd / 10,
                                                                                rel=5e-3)


def test_per_step_decay_for_some_optimizers_and_a_depth_axis():
  from examples.gpt2 import configs

  table = {n: (lr, wd) for n, lr, wd in configs.get_config("tiny").optimizer_defaults}
  # Only sgd_sai's decay is per step: its wd follows 1 / lr, AdamW's stays at its default.
  mixed = dataclasses.replace(TINY, decay_per_step=("sgd_sai",))
  assert mixed.per_step("sgd_sai") and not mixed.per_step("adamw")
  lr, wd = table["sgd_sai"]
  assert planner.weight_decay(mixed, 16, "sgd_sai", 0, 10 * lr) == pytest.approx(wd / 10,
                                                                                 rel=5e-3)
  assert planner.weight_decay(mixed, 16, "adamw", 0, 1.0) == pytest.approx(table["adamw"][1])
  # A depth axis sets n_layer and leaves the width where the overrides put it.
  depth = dataclasses.replace(TINY, axis="n_layer", widths=(1, 2),
                              overrides=(*TINY.overrides, ("n_embd", 16)))
  cfg = planner.base_config(depth, 2, 3, "sgd_sai")
  assert (cfg.n_layer, cfg.n_embd) == (2, 16) and depth.axis_name == "n_layer"
  # The width and depth transfer specs: SGD-SaI at 5e-4 per step, the others at fixed wd.
  for name in ("width_gpt2", "depth_gpt2"):
    spec = SPECS[name]
    for lr in (0.05, 5.0):
      assert lr * planner.weight_decay(spec, 64, "sgd_sai", 0, lr) == pytest.approx(5e-4)
      assert planner.weight_decay(spec, 64, "adamw", 0, lr) == pytest.approx(0.316)
      assert planner.weight_decay(spec, 64, "sgdm", 0, lr) == pytest.approx(1e-5)
  assert planner.base_config(SPECS["depth_gpt2"], 8, 300, "adamw").n_layer == 8


def test_every_spec_names_known_optimizers_and_models():
  assert {"scaling_gpt2", "scaling_vit", "lr_wd_gpt2", "kinds_cnn", "lora"} <= set(SPECS)
  for spec in SPECS.values():
    assert {spec.arm(k).optimizer for k in spec.optimizers} <= set(optim.OPTIMIZERS)
  assert SPECS["scaling_gpt2"].results_dir == "benchmarks/results/study_scaling/gpt2"
  assert SPECS["kinds_cnn"].results_dir == "benchmarks/results/study/kinds_cnn"


def test_log_skips_a_torn_line_and_keeps_the_latest_record(tmp_path):
  log.append_cells(tmp_path, [{"id": "a", "v": 1}, {"id": "b", "v": 2}])
  log.append_cells(tmp_path, [{"id": "a", "v": 3}])
  with (tmp_path / log.LOG_FILE).open("a") as f:
    f.write('{"id": "c", "v"')  # an interrupted write
  assert sorted((r["id"], r["v"]) for r in log.read_cells(tmp_path)) == [("a", 3), ("b", 2)]


def test_report_rewrites_the_committed_table_byte_for_byte(tmp_path, monkeypatch):
  """The fixture's table.md was written by the study program these cells were run with
  (benchmarks/scaling.py, commit 98c3ac9); the engine must write the same bytes."""
  for name in ("cells.jsonl", "runs.jsonl"):
    shutil.copy(FIXTURE / name, tmp_path / name)
  monkeypatch.setattr(report, "host_line", lambda: "x86_64, 2 CPU cores")
  spec = Spec("fixture", model="vit", budgets=(100,), widths=(64,))
  report.report(spec, tmp_path)
  assert (tmp_path / "table.md").read_bytes() == (FIXTURE / "table.md").read_bytes()


def test_report_covers_the_whole_log_and_the_weight_decay_check(tmp_path):
  """A report covers every logged optimizer, and the sgd_sai_unnorm rows get their own
  differences (hand-computed here) and the logged normaliser."""
  rows = []
  for key, losses in (("sgd_sai", (2.0, 1.8, 1.9)), ("adamw", (1.6, 1.5, 1.7)),
                      ("sgd_sai_unnorm", (1.9, 1.7, 2.2))):
    for k, loss in zip((-1, 0, 1), losses, strict=True):
      rows.append(_row(3, key, k, 0, loss))
    rows.append(_row(3, key, 0, 1, losses[1] + 0.1))  # seed 1 at the best (k = 0)
  for r in rows:
    r.update(val_accuracy=0.5, curve=[[3, r["val_loss"], r["val_loss"], 0.5]],
             group_wall_s=1.0, finished="t", lr=0.1, wd=0.01)
    if r["optimizer"] == "sgd_sai_unnorm":
      r["normaliser"] = 33.0
  log.append_cells(tmp_path, rows)
  spec = dataclasses.replace(TINY, optimizers=("sgd_sai", "adamw"), budgets=(3,),
                             lr_ks=(-1, 0, 1), seeds_best=(1,))
  summary = report.report(spec, tmp_path)
  assert list(summary["study"]["optimizers"]) == ["sgd_sai", "adamw", "sgd_sai_unnorm"]
  st = summary["stages"][0]
  # Seed means: sgd_sai 1.85, adamw 1.55, unnorm 1.75; paired per seed.
  assert st["gap_adamw"]["mean"] == pytest.approx(0.30)
  assert st["gap_sgd_sai_unnorm_adamw"]["mean"] == pytest.approx(0.20)
  assert st["gap_sgd_sai_unnorm_sgd_sai"]["mean"] == pytest.approx(-0.10)
  assert st["gap_sgd_sai_unnorm_sgd_sai"]["paired"] == pytest.approx([-0.10, -0.10])
  assert st["normaliser"] == 33.0
  table = (tmp_path / "table.md").read_text()
  assert "SGD-SaI (normalize=False)" in table and "| 3 | 16 | AdamW | " in table
  assert "Weight-decay check" in table and "| 3 | 16 | 33 | -0.100 [-0.100, -0.100]" in table


def test_pipeline_writes_table_and_plots_and_resumes(tmp_path):
  counts = runner.run_study(TINY, tmp_path, budgets=(3,), command="cmd one", log_fn=quiet)
  assert counts == {"trained": 4, "groups": 2}
  rows = log.read_cells(tmp_path)
  assert {(r["optimizer"], r["k"]) for r in rows} == {
      (k, i) for k in ("sgd_sai", "adamw") for i in (0, 1)}
  for r in rows:
    assert r["lr"] == pytest.approx(planner.learning_rate(TINY, 16, r["optimizer"], r["k"]))
    assert math.isfinite(r["val_loss"]) and r["val_loss"] < math.log(256) + 1
    assert [c[0] for c in r["curve"]] == [2, 3] and r["group_size"] == 2

  # Resume with a second budget: the finished cells are skipped, only budget 4 runs.
  counts = runner.run_study(TINY, tmp_path, command="cmd two", log_fn=quiet)
  assert counts == {"trained": 4, "groups": 2}
  summary = report.report(TINY, tmp_path)
  assert len(log.read_cells(tmp_path)) == 8
  for st in summary["stages"]:
    a, b = st["optimizers"]["sgd_sai"], st["optimizers"]["adamw"]
    assert st["gap_adamw"]["mean"] == pytest.approx(a["mean"] - b["mean"])
    # The best point is the lower loss of the two; both are on an edge (no extension).
    assert a["mean"] == min(loss for _, loss in a["points"])
    assert a["edge"] in ("low", "high")
  table = (tmp_path / "table.md").read_text()
  assert "SGD-SaI (normalize=True)" in table and "AdamW" in table
  assert "cap reached" in table and "| 4 | 16 |" in table
  assert table.rstrip().endswith("Command: `cmd two`")
  for name in ("gap.png", "curves.png"):
    assert (tmp_path / name).stat().st_size > 1000
  assert json.loads((tmp_path / "summary.json").read_text())["cells"] == 8


@pytest.mark.slow
def test_vmapped_group_matches_the_examples_fit_and_resumes_midway(tmp_path):
  """Each member of a vmapped group (its own lr, weight decay and seed) trains as the
  example's own ``fit`` would, through the ``fit`` backend too, and a group interrupted
  midway resumes to the same result."""
  budget = 4
  members = [(planner.learning_rate(TINY, 16, "adamw", 0), 0.01, 0),
             (planner.learning_rate(TINY, 16, "adamw", 1), 0.3, 1)]
  whole = backends.train_group(TINY, budget, 16, "adamw", members, log_fn=quiet)
  fit_spec = dataclasses.replace(TINY, backend="fit")
  for member, row in zip(members, whole, strict=True):
    fit = backends.train_cells(fit_spec, budget, 16, "adamw", [member])[0]
    assert row["val_loss"] == pytest.approx(fit["val_loss"], rel=1e-4)
    assert (row["wd"], row["seed"]) == member[1:]
  partial = tmp_path / "group"
  assert backends.train_group(TINY, budget, 16, "adamw", members, partial=partial,
                              stop_after=2, log_fn=quiet) is None
  assert partial.with_suffix(".npz").exists()
  resumed = backends.train_group(TINY, budget, 16, "adamw", members, partial=partial,
                                 log_fn=quiet)
  assert [r["val_loss"] for r in resumed] == pytest.approx([r["val_loss"] for r in whole],
                                                           rel=1e-5)
  assert resumed[0]["curve"][0] == whole[0]["curve"][0]
  assert not partial.with_suffix(".npz").exists()


def test_measured_normaliser_is_the_largest_block_gsnr():
  """``sgd_sai_unnorm``'s grid is sgd_sai's divided by ``max_k snr_k`` of the first step,
  recomputed here in NumPy from the gradient of the example's own loss."""
  import jax
  import numpy as np
  from flax import nnx

  task = backends.build_task(TINY, 16, 4, "sgd_sai", 0)
  model = task.make_model(nnx.Rngs(jax.random.PRNGKey(0)))
  grads = nnx.grad(lambda m: task.loss_fn(m, task.train_batch(0), None))(model)
  snrs = []
  for path, g in jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]:
    g = np.asarray(g, np.float64)
    keys = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)
    # Scanned layers (under ``h``) are one block per layer, the rest one block per leaf.
    blocks = list(g) if task.block_axes and task.block_axes(keys, g) == 0 else [g]
    snrs += [np.linalg.norm(b) / (np.std(b, ddof=1) + 1e-8) for b in blocks if b.size > 1]
  normaliser = backends.normaliser(TINY, 16)
  assert normaliser == pytest.approx(float(f"{max(snrs):.3g}"))
  # snr >= sqrt(numel - 1): the largest block is the 256 x 16 embedding.
  assert normaliser >= math.sqrt(256 * 16 - 1) * 0.999
  assert planner.lr_divisor(TINY, 16, "sgd_sai") == planner.lr_divisor(TINY, 16, "adamw") == 1
  for k in (-1, 0, 2):
    assert planner.learning_rate(TINY, 16, "sgd_sai_unnorm", k) == pytest.approx(
        planner.learning_rate(TINY, 16, "sgd_sai", k) / normaliser, rel=5e-3)


def test_cnn_trains_in_the_engine_and_reports_its_scales(tmp_path):
  """The third model: a small CNN on the digits, its accuracy and per-block scales."""
  spec = Spec("cnn", model="cnn", optimizers=("sgd_sai",), budgets=(3,), widths=(4,),
              lr_ks=(0,), seeds_best=(), evals=1, report_scales=True)
  assert runner.run_study(spec, tmp_path, log_fn=quiet) == {"trained": 1, "groups": 1}
  row = log.read_cells(tmp_path)[0]
  assert 0.0 <= row["val_accuracy"] <= 1.0 and row["val_accuracy"] * 297 == pytest.approx(
      round(row["val_accuracy"] * 297), abs=1e-6)
  # conv 3x3x1x4 + 4, conv 3x3x4x4 + 4, dense (4x4x4) x 64 + 64, head 64 x 10 + 10.
  assert row["num_params"] == 36 + 4 + 144 + 4 + 64 * 64 + 64 + 640 + 10
  report.report(spec, tmp_path)
  scales = json.loads((tmp_path / "scales.json").read_text())["4"]["scales"]
  assert set(scales) == {f"{layer}/{p}" for layer in ("conv1", "conv2", "dense", "head")
                         for p in ("kernel", "bias")}
  # The largest block's scale is 1 by construction (no zero-initialised head here).
  assert max(scales.values()) == pytest.approx(1.0)
  assert "g-SNR scales of sgd_sai" in (tmp_path / "table.md").read_text()


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


def _lora_row(key, k, seed, loss, **fields):
  return {"id": cell_id(100, 128, key, k, 0, seed), "budget": 100, "width": 128,
          "optimizer": key, "k": k, "j": 0, "seed": seed, "val_loss": loss,
          "diverged": False, "wd": 0.0, **fields}


def test_lora_spec_plans_its_five_arms_then_two_seeds_at_each_best():
  spec = SPECS["lora"]
  assert spec.stage_list() == [(100, 128)]
  # Half a decade around the pinned centres (3, 1e-2, 0.3; AdamW's for both of its arms).
  grids = {"sgd_sai": [0.3, 0.949, 3.0, 9.49, 30.0], "adamw": [1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1],
           "sgdm": [0.03, 0.0949, 0.3, 0.949, 3.0]}
  grids.update(full_adamw=grids["adamw"], sgd_sai_pinned_a=grids["sgd_sai"])
  assert list(spec.optimizers) == list(grids)
  for key, lrs in grids.items():
    assert planner.grid_state(spec, [], 100, 128, key)["next"] == [(k, 0, 0)
                                                                   for k in (-2, -1, 0, 1, 2)]
    assert [planner.learning_rate(spec, 128, key, k) for k in (-2, -1, 0, 1, 2)] == lrs
    assert planner.weight_decay(spec, 128, key, 0, lrs[2]) == 0.0
  # Interior best: seeds 1 and 2 there. Best on the low edge: one point beyond it first.
  rows = [_lora_row("full_adamw", k, 0, loss) for k, loss in zip(
      (-2, -1, 0, 1, 2), (2.5, 2.4, 2.45, 2.6, 3.0), strict=True)]
  assert planner.grid_state(spec, rows, 100, 128, "full_adamw")["next"] == [(-1, 0, 1),
                                                                           (-1, 0, 2)]
  rows = [_lora_row("sgdm", k, 0, 2.5 + k / 10) for k in (-2, -1, 0, 1, 2)]
  assert planner.grid_state(spec, rows, 100, 128, "sgdm")["next"] == [(-3, 0, 0)]


def test_lora_arms_overrides_reach_the_config():
  spec = SPECS["lora"]
  expected = {"sgd_sai": ("sgd_sai", 8, False), "adamw": ("adamw", 8, False),
              "sgdm": ("sgdm", 8, False), "full_adamw": ("adamw", 0, False),
              "sgd_sai_pinned_a": ("sgd_sai", 8, True)}
  for key, (optimizer, rank, pin_a) in expected.items():
    cfg = planner.base_config(spec, 128, 100, key, seed=2)
    assert (cfg.optimizer, cfg.rank, cfg.pin_a) == (optimizer, rank, pin_a), key
    assert (cfg.n_embd, cfg.steps, cfg.warmup_steps, cfg.seed, cfg.dataset) == (
        128, 100, 10, 2, "pysource")
  assert spec.arm("full_adamw").label == "AdamW, full fine-tuning"
  # An arm names a table optimizer; it may reuse only its own optimizer's name.
  with pytest.raises(ValueError, match="arm 'adamw'"):
    Spec("bad", arms=(Arm("adamw", "sgd_sai"),))
  with pytest.raises(ValueError, match="unknown optimizers or arms"):
    Spec("bad", optimizers=("full_adamw",))
  # The command line takes the spec's arms and refuses names that are neither.
  with pytest.raises(SystemExit):
    cli.main(["lora", "--optimizers", "full_sgdm", "--report-only"])


def test_lora_report_section_from_a_synthetic_log(tmp_path, monkeypatch):
  """LoRA's own columns at each arm's best point, numbers worked out by hand."""
  lora = {"rank": 8, "base_val_loss": 2.7, "trainable_bytes": 400_000}
  arms = {  # seed-0 losses at k = -1, 0, 1; seed 1 at the best (k = 0); per-seed extras
      "sgd_sai": ((2.60, 2.55, 2.70), 2.57, dict(opt_state_bytes=404_000, a_blocks=16),
                  ({"a_captured": 16, "a_capture_step_max": 2, "a_rel_change_mean": 0.05},
                   {"a_captured": 16, "a_capture_step_max": 2, "a_rel_change_mean": 0.07})),
      "adamw": ((2.50, 2.45, 2.48), 2.47, dict(opt_state_bytes=800_000),
                ({"a_rel_change_mean": 0.5}, {"a_rel_change_mean": 0.6})),
      "full_adamw": ((2.40, 2.38, 2.39), 2.36, dict(rank=0, trainable_bytes=4_000_000,
                                                    opt_state_bytes=8_000_000), ({}, {})),
      "sgd_sai_pinned_a": ((2.61, 2.58, 2.75), 2.60, dict(opt_state_bytes=404_000, a_blocks=16),
                           ({"a_captured": 0, "a_capture_step_max": -1,
                             "a_rel_change_mean": 0.0},) * 2),
  }
  rows = []
  for key, (losses, seed1, common, per_seed) in arms.items():
    for k, loss in zip((-1, 0, 1), losses, strict=True):
      lr = planner.learning_rate(SPECS["lora"], 128, key, k)
      rows.append(_lora_row(key, k, 0, loss, lr=lr, **{**lora, **common, **per_seed[0]}))
    rows.append(_lora_row(key, 0, 1, seed1, lr=rows[-2]["lr"],
                          **{**lora, **common, **per_seed[1]}))
  rows.append({**rows[0], "id": "other", "k": 2, "lr": 30.0, "a_captured": 5})  # not at best
  for r in rows:
    r.update(val_accuracy=0.3, curve=[[100, r["val_loss"], r["val_loss"], 0.3]],
             group_wall_s=1.0, finished="t")
  log.append_cells(tmp_path, rows)
  monkeypatch.setattr(report, "host_line", lambda: "x86_64, 2 CPU cores")
  spec = dataclasses.replace(SPECS["lora"], lr_ks=(-1, 0, 1), max_extend=0, seeds_best=(1,))
  summary = report.report(spec, tmp_path)
  table = (tmp_path / "table.md").read_text()
  assert "Base model before fine-tuning: val loss 2.700 on the fine-tuning data." in table
  # State shares of full fine-tuning with AdamW's 8,000,000 bytes: 404,000 -> 5.05%,
  # 800,000 -> 10.00%; A moved: seed means (0.05 + 0.07) / 2 and (0.5 + 0.6) / 2.
  for line in (
      "| 100 | 128 | SGD-SaI, LoRA r=8 | adapters, rank 8 | 400,000 | 404,000 | 5.05% | 2 | "
      "0.06 |",
      "| 100 | 128 | AdamW, LoRA r=8 | adapters, rank 8 | 400,000 | 800,000 | 10.00% | — | "
      "0.55 |",
      "| 100 | 128 | AdamW, full fine-tuning | all parameters | 4,000,000 | 8,000,000 | "
      "100.00% | — | — |",
      "| 100 | 128 | SGD-SaI, LoRA r=8, A pinned (1.0.3; ablation) | adapters, rank 8 | "
      "400,000 | 404,000 | 5.05% | never | 0 |"):
    assert line in table, line
  assert "SGD-momentum, LoRA r=8 | adapters" not in table  # not logged: no line
  facts = summary["model_section"]
  assert facts["base_val_loss"] == [2.7]
  arms_out = facts["stages"][0]["arms"]
  assert arms_out["sgd_sai"]["state_share_of_full_adamw"] == pytest.approx(0.0505)
  assert arms_out["sgd_sai"]["a_rel_change_mean"] == pytest.approx(0.06)
  assert arms_out["sgd_sai_pinned_a"]["a_captured_at"] == ["never", "never"]
  # The engine's own table: sgd_sai's best is 3 (its k = 0), seed mean (2.55 + 2.57) / 2.
  assert "| 100 | 128 | SGD-SaI, LoRA r=8 | 3 | 0,1 | 2.560 | [2.550, 2.570] |" in table
  # The vit fixture's model declares no section: nothing is added to its report.
  assert report.model_section(Spec("v", model="vit"), {"stages": []}, rows) == ([], {})


@pytest.mark.slow
def test_lora_arms_train_in_a_vmapped_group_as_fit_does(tmp_path):
  """LoRA's trainable variables are the members' (the base is shared and frozen): a group
  of the pinned-A arm and one of full fine-tuning equal the example's ``fit``."""
  spec = Spec("micro_lora", model="lora", arms=lora_specs.ARMS,
              optimizers=("sgd_sai_pinned_a", "full_adamw"), budgets=(3,), widths=(16,),
              lr_ks=(0,), max_extend=0, seeds_best=(), seeds_best_largest=(), evals=1,
              overrides=(("n_layer", 1), ("n_head", 2), ("block_size", 16),
                         ("batch_size", 4), ("eval_batches", 1), ("base_steps", 5),
                         ("base_dir", str(tmp_path / "base")),
                         ("learning_rates", lora_specs.CENTRES)))
  fit_spec = dataclasses.replace(spec, backend="fit")
  for key in spec.optimizers:
    members = [(planner.learning_rate(spec, 16, key, 0), 0.0, 0),
               (planner.learning_rate(spec, 16, key, -1), 0.0, 1)]
    group = backends.train_group(spec, 3, 16, key, members, log_fn=quiet)
    assert group[0]["val_loss"] != group[1]["val_loss"]
    for member, row in zip(members[1:], group[1:], strict=True):  # lr k = -1, seed 1
      fit = backends.train_cells(fit_spec, 3, 16, key, [member])[0]
      assert row["val_loss"] == pytest.approx(fit["val_loss"], rel=1e-4)
      assert row["num_params"] == fit["num_params"]
      assert row["base_val_loss"] == fit["base_val_loss"]
      if key == "sgd_sai_pinned_a":
        # Rank-8 adapters on 1 layer of width 16: A 16x8 and B 8x(48, 16, 64, 16) for
        # c_attn, attn c_proj, c_fc, mlp c_proj; and 64x8 for the last A.
        assert row["num_params"] == 3 * 16 * 8 + 64 * 8 + 8 * (48 + 16 + 64 + 16)
        assert (row["a_captured"], row["a_rel_change_mean"]) == (0, 0.0)
        assert fit["a_captured"] == 0 and fit["a_rel_change_mean"] == 0.0
        assert row["b_norm_mean"] == pytest.approx(fit["b_norm_mean"], rel=1e-4)
      else:
        assert row["rank"] == 0 and row["trainable_bytes"] == row["params_bytes"]
        assert row["num_params"] * 4 == row["trainable_bytes"]

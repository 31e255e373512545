"""The learning-rate x weight-decay study: grids, table, plots, resume (benchmarks.reproduce)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from benchmarks import reproduce


def test_grids_cover_every_optimizer_and_translate_the_unnormalised_lrs():
  for task in reproduce.TASKS:
    small = reproduce.make_grid(task, "small")
    assert set(small.lrs) == set(reproduce.OPTIMIZERS)
    assert all(len(lrs) == 3 for lrs in small.lrs.values())
    norm = reproduce.NORMALISER[task]
    for lr, lr_unnorm in zip(small.lrs["sgd_sai"], small.lrs["sgd_sai_unnorm"], strict=True):
      assert lr / lr_unnorm == pytest.approx(norm, rel=0.1)
    paper = reproduce.make_grid(task, "paper")
    assert paper.lrs["adamw"] == (1e-3, 1e-2, 1e-1)
    assert paper.wds == (1e-4, 1e-3, 1e-2)
    cells = reproduce.grid_cells(small)
    assert len({c.id for c in cells}) == len(cells) == 5 * 3 * len(small.wds)
    # The tuned (middle) learning rates of every optimizer come first.
    assert {c.optimizer for c in cells[:5]} == set(reproduce.OPTIMIZERS)


def test_grids_centre_on_the_examples_registry_defaults():
  """No drift: the small grid's middle lr of each optimizer is the example's tiny default."""
  from examples.gpt2 import configs as gpt2_configs
  from examples.vit import configs as vit_configs

  for task, configs in (("gpt2", gpt2_configs), ("vit", vit_configs)):
    table = {n: lr for n, lr, _ in configs.get_config("tiny").optimizer_defaults}
    lrs = reproduce.make_grid(task, "small").lrs
    for opt in ("sgd_sai", "adamw", "sgdm"):
      assert lrs[opt][1] == pytest.approx(table[opt])
    assert lrs["adam"][1] == pytest.approx(table["adamw"])  # Adam starts from AdamW's


def _fake_rows(tmp_path, grid, task):
  """Synthetic finished cells (one diverged), with metrics.jsonl files for the curves."""
  rows = []
  for k, cell in enumerate(reproduce.grid_cells(grid)):
    diverged = cell.optimizer == "sgdm" and cell.lr == max(grid.lrs["sgdm"])
    loss = None if diverged else 2.0 + 0.1 * k
    rows.append({"id": cell.id, "task": task, "grid": grid.name, "optimizer": cell.optimizer,
                 "lr": cell.lr, "wd": cell.wd, "seed": cell.seed, "steps": grid.steps,
                 "val_loss": loss, "val_accuracy": None if diverged else 0.5 - 0.01 * k,
                 "best_val_loss": loss, "train_loss": loss, "diverged": diverged,
                 "gsnr_max": 250.0 if cell.optimizer.startswith("sgd_sai") else None,
                 "train_wall_s": 1.0, "cell_wall_s": 1.5})
    workdir = tmp_path / "cells" / cell.id
    workdir.mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "train_loss": 9.0 - s / 100, "val_loss": 3.0 - s / 90,
                    "val_accuracy": s / 100}) + "\n" for s in (10, 20)))
  return rows


def test_table_and_plots_from_synthetic_cells(tmp_path):
  task = "gpt2"
  grid = reproduce.make_grid(task, "small")
  for row in _fake_rows(tmp_path, grid, task):
    reproduce._append(tmp_path, row)
  study = {"command": "python -m benchmarks.reproduce --task gpt2", "host": "test"}
  table = reproduce.report(task, grid, tmp_path, study)

  assert [t["optimizer"] for t in table] == list(reproduce.OPTIMIZERS)
  by = {t["optimizer"]: t for t in table}
  assert by["sgdm"]["diverged"] == 2 and by["sgdm"]["cells"] == 6
  assert by["adamw"]["val_loss"] == min(
      r["val_loss"] for r in reproduce.read_cells(tmp_path) if r["optimizer"] == "adamw")
  assert by["adamw"]["grid_spread"] > 0
  # A finite run that ends above its initial loss counts as diverged too.
  row = {"val_loss": 5.0, "train_loss": 5.0, "first_train_loss": 4.5}
  assert reproduce._diverged(row) and not reproduce._diverged({**row, "val_loss": 4.0})
  assert reproduce._diverged({**row, "val_loss": None})
  rel = reproduce.lr_relation(table)
  assert rel["normaliser"] == 250.0 and rel["ratio"] == pytest.approx(256.0, rel=0.1)

  with (tmp_path / "table.csv").open() as f:
    parsed = list(csv.DictReader(f))
  assert [r["optimizer"] for r in parsed] == list(reproduce.OPTIMIZERS)
  assert math.isfinite(float(parsed[0]["val_loss"]))
  with (tmp_path / "cells.csv").open() as f:
    assert len(list(csv.DictReader(f))) == 30
  md = (tmp_path / "table.md").read_text()
  for label in reproduce.LABELS.values():
    assert label in md
  assert "ratio" in md and study["command"] in md
  for name in ("heatmaps.png", "best_curves.png"):
    assert (tmp_path / name).stat().st_size > 1000
  saved = json.loads((tmp_path / "study.json").read_text())
  assert saved["runs"] == 30 and saved["compute_s"] == pytest.approx(45.0)


def test_read_cells_ignores_a_torn_last_line(tmp_path):
  reproduce._append(tmp_path, {"id": "a", "steps": 3})
  with (tmp_path / "cells.jsonl").open("a") as f:
    f.write('{"id": "b", "ste')
  assert [r["id"] for r in reproduce.read_cells(tmp_path)] == ["a"]


@pytest.mark.slow
def test_smoke_study_runs_end_to_end_and_resumes(tmp_path):
  args = ["--task", "vit", "--grid", "smoke", "--out", str(tmp_path)]
  first = reproduce.main(args)
  assert first["trained"] == len(reproduce.OPTIMIZERS) and first["skipped"] == 0

  rows = reproduce.read_cells(tmp_path)
  assert {r["optimizer"] for r in rows} == set(reproduce.OPTIMIZERS)
  assert all(r["steps"] == 3 and not r["diverged"] for r in rows)
  assert all(math.isfinite(r["val_loss"]) for r in rows)
  assert {r["optimizer"] for r in rows if r["gsnr_max"]} == {"sgd_sai", "sgd_sai_unnorm"}
  with (tmp_path / "table.csv").open() as f:
    assert {r["optimizer"] for r in csv.DictReader(f)} == set(reproduce.OPTIMIZERS)
  for name in ("heatmaps.png", "best_curves.png", "table.md", "study.json"):
    assert (tmp_path / name).stat().st_size > 0
  # Only the small files stay: no checkpoints or per-cell plots.
  assert not list(tmp_path.glob("cells/*/checkpoints"))
  assert not list(tmp_path.glob("cells/*/*.png"))

  second = reproduce.main(args)  # resume: every cell is already done
  assert second["trained"] == 0 and second["skipped"] == len(reproduce.OPTIMIZERS)
  assert len(reproduce.read_cells(tmp_path)) == len(reproduce.OPTIMIZERS)
  study = json.loads((tmp_path / "study.json").read_text())
  assert [i["trained"] for i in study["invocations"]] == [5, 0]

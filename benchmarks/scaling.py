"""Does SGD-SaI catch up with AdamW as training grows? A budget x width scaling study.

    python -m benchmarks.scaling                      # run (resumes), then write the report
    python -m benchmarks.scaling --report-only        # rewrite table / plots from the log
    python -m benchmarks.scaling --measure-throughput # vmapped vs one-by-one cells per hour
    python -m benchmarks.scaling --model vit          # the same study of the ViT example

By default (``--model gpt2``) every cell trains the GPT-2 example's ``tiny`` model (4
layers, 4 heads, context 128, batch 16; its width ``n_embd`` is the study's width axis) on
the ``stdlib`` corpus (the installed standard library's source, byte-level, split by
file: see ``examples/gpt2/prepare.py``) with the example's own data pipeline, loss
(``examples.gpt2.train.build_task``), optimizer factory, decay mask, clipping and
schedule (``examples.common.optim``) and training step (``examples.common.training``
``make_train_step`` / ``make_eval_step``). What the study adds is the batching: the cells
of one optimizer (its learning rates and seeds) train together as one ``jax.vmap``-ed
program, each member with its own initialisation (its seed) and its own batches (a pure
function of its seed and step, as in the example); ``--measure-throughput`` measures the
speed-up against running them one by one.

``--model vit`` runs the same study on the ViT example's ``tiny`` model (4 layers, 4 heads,
16x16 images in 4x4 patches, batch 64; width ``hidden_size``, MLP ``2 x width``) trained
on scikit-learn's digits with the example's +-1 pixel shifts, and reports the val
accuracy beside the loss (results in ``study_scaling/vit``). The digits are the only
image set every machine has: 1,500 training images, so 3,000 steps are 128 epochs.

Per budget (steps) and width, each optimizer of :data:`OPTIMIZERS` (read with its label
and default learning rate / weight decay from ``examples.common.optim.REGISTRY`` and the
tiny config's ``optimizer_defaults``):

1. **Grid.** learning rates ``default x 10**(k/2)`` for ``k = -2..2`` (five points half a
   decade apart), seed 0, each budget with its own warmup (10% of the steps) and cosine
   decay to 10% of the peak, compared at the end of training.
2. **Extension.** While the best point (lowest final val loss) is at an edge of the grid,
   the next half-decade point beyond that edge is run (at most ``max_extend`` per side);
   every extension is recorded in the table.
3. **Seeds.** The best learning rate gets seeds 1 (and 2 at the largest budget).

Stages (budget, width) run cheapest first by estimated cost, steps x (width / 128) ** 1.5:
100 at widths 64 and 128, 300 at 64, 100 at 256, 300 at 128, 1000 at 64, 300 at 256,
1000 at 128, 3000 at 64, 1000 at 256, 3000 at 128, 3000 at 256; within a stage every
optimizer's grid, extensions and seeds complete before the next stage starts. Finished
cells are appended to ``cells.jsonl`` (one line per cell, with its short loss curve), the
resume log: re-running skips them, and a group of cells interrupted mid-run restarts from
its last evaluation (``_partial/``, not committed). After every group the report is
rewritten: ``table.md``, ``summary.json``, ``gap.png`` (the gap sgd_sai - adamw against
budget, one line per width, error bars = the range of the per-seed paired differences)
and ``curves.png``. The report covers every cell in the log, whatever stages or optimizers
the run that writes it was restricted to.

**The weight-decay check** (``--optimizers sgd_sai_unnorm``): SGD-SaI's decay is multiplied
by its learning rate only, and with ``normalize=True`` the tuned learning rates are
``normaliser`` (``max_k snr_k``, 2 x width for the GPT-2) times those of the released
PyTorch package (``normalize=False``). At the same weight decay (the package's default,
1e-2, is the top of the paper's weight-decay grid), the ``normalize=True`` line therefore
decays its weights ``normaliser`` times more strongly per step than the package does.
``sgd_sai_unnorm`` runs the package's semantics on
sgd_sai's grid divided by the measured normaliser (:func:`lr_divisor`): the same optimizer
with weight decay / normaliser. The table adds its differences to sgd_sai and AdamW.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_ROOT = Path(__file__).resolve().parent / "results" / "study_scaling"
OPTIMIZERS = ("sgd_sai", "adamw", "sgdm")
BUDGETS = (100, 300, 1000, 3000)
WIDTHS = (128, 64, 256)  # the first is the main width; the others follow within a budget
# The differences reported, (a, b) = a - b of the seed means. The last two only where
# ``sgd_sai_unnorm`` was run (``--optimizers sgd_sai_unnorm``): the released package's
# normalisation at the same weight decay, i.e. weight decay / normaliser (see lr_divisor).
GAPS = (("sgd_sai", "adamw"), ("sgd_sai", "sgdm"),
        ("sgd_sai_unnorm", "adamw"), ("sgd_sai_unnorm", "sgd_sai"))


def gap_name(lhs: str, other: str) -> str:
  """The stage key of ``lhs - other``: ``gap_adamw`` for sgd_sai's, else ``gap_lhs_other``."""
  return f"gap_{other}" if lhs == "sgd_sai" else f"gap_{lhs}_{other}"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How the study drives one example: its tiny config's width fields and study data."""

  example: str  # the package under ``examples``: its ``configs`` and ``train`` modules
  title: str  # the table's heading
  loss_unit: str
  dataset: str  # the study's default dataset
  overrides: tuple[tuple[str, Any], ...]  # config fields the study changes
  width_fields: Callable[[int], dict[str, int]]  # width -> config fields
  accuracy: bool  # report the val accuracy (and its gaps and bands) beside the loss
  note: str  # the table's paragraph on the data


MODELS = {
    # The stdlib corpus (tens of MB of real code): 3,000 steps are 0.2 epochs.
    "gpt2": ModelSpec(
        example="gpt2", title="tiny GPT-2 on the `{dataset}` corpus", loss_unit="nats/byte",
        dataset="stdlib", overrides=(("eval_batches", 16),),
        width_fields=lambda w: {"n_embd": w}, accuracy=False,
        note="The ViT's study is in `../vit/table.md` (its data, scikit-learn's digits, "
             "repeats: see there)."),
    # scikit-learn's digits (1,500 training images) with the example's +-1 pixel shifts:
    # many epochs at the longer budgets, evaluated on the 297 held-out images.
    "vit": ModelSpec(
        example="vit", title="tiny ViT on scikit-learn's `{dataset}`", loss_unit="nats",
        dataset="digits", overrides=(("augment", True),),
        width_fields=lambda w: {"hidden_size": w, "mlp_dim": 2 * w}, accuracy=True,
        note="Data: scikit-learn's digits (bundled, no download), 1,500 training and 297 "
             "held-out images, with the example's augmentation (random shifts of up to one "
             "source pixel). It is the only image set on every machine, so the longer "
             "budgets train for many epochs (listed above): they measure how each optimizer "
             "does when a small data set is seen many times, not a single pass over fresh "
             "data as the GPT-2 study on the `stdlib` corpus does."),
}


@dataclasses.dataclass(frozen=True)
class Study:
  """The study's axes and per-run settings."""

  model: str = "gpt2"  # a key of MODELS
  optimizers: tuple[str, ...] = OPTIMIZERS
  budgets: tuple[int, ...] = BUDGETS
  widths: tuple[int, ...] = WIDTHS
  grid_ks: tuple[int, ...] = (-2, -1, 0, 1, 2)  # half-decades around the default lr
  max_extend: int = 3  # extra half-decade points allowed beyond each edge
  seeds_best: tuple[int, ...] = (1,)  # extra seeds at the best lr
  seeds_best_largest: tuple[int, ...] = (1, 2)  # ... at budgets >= largest_budget
  largest_budget: int = 3000
  warmup_fraction: float = 0.1
  evals: int = 4  # validation points per run (the last one at the final step)
  dataset: str | None = None  # None: the model's (MODELS)
  overrides: tuple[tuple[str, Any], ...] | None = None  # config fields; None: the model's
  stages: tuple[tuple[int, int], ...] | None = None  # (budget, width); None: all

  def __post_init__(self):
    if self.model not in MODELS:
      raise ValueError(f"unknown model {self.model!r}; choose from {list(MODELS)}")
    spec = MODELS[self.model]
    if self.dataset is None:
      object.__setattr__(self, "dataset", spec.dataset)
    if self.overrides is None:
      object.__setattr__(self, "overrides", spec.overrides)

  @property
  def spec(self) -> ModelSpec:
    return MODELS[self.model]

  def stage_list(self) -> list[tuple[int, int]]:
    if self.stages is not None:
      return list(self.stages)
    # Cheapest first, by estimated cost: steps x (width / main width) ** 1.5.
    main = self.widths[0]
    return sorted(((b, w) for b in self.budgets for w in self.widths),
                  key=lambda bw: (bw[0] * (bw[1] / main) ** 1.5, bw[0], bw[1]))

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# Configs and grids (from the examples' registry)
# --------------------------------------------------------------------------------------


def example_module(model: str, name: str):
  """``examples.<model's example>.<name>`` (``configs``, ``train`` or ``data``)."""
  import importlib

  return importlib.import_module(f"examples.{MODELS[model].example}.{name}")


def base_config(study: Study, width: int, budget: int, key: str, seed: int = 0):
  """The example's tiny config at this width, budget and optimizer (lr set per member)."""
  from examples.common import optim

  spec = optim.REGISTRY[key]
  cfg = example_module(study.model, "configs").get_config("tiny")
  _, wd = optim.registry_defaults(cfg.optimizer_defaults, key)
  warmup = max(1, round(study.warmup_fraction * budget))
  return dataclasses.replace(
      cfg, dataset=study.dataset, steps=budget, warmup_steps=warmup,
      optimizer=spec.optimizer, sai_normalize=spec.sai_normalize, weight_decay=wd,
      seed=seed, **study.spec.width_fields(width), **dict(study.overrides))


def default_lr(key: str, model: str = "gpt2") -> float:
  """The tiny config's default learning rate of registry optimizer ``key``."""
  from examples.common import optim

  cfg = example_module(model, "configs").get_config("tiny")
  return optim.registry_defaults(cfg.optimizer_defaults, key)[0]


def lr_of(key: str, k: int, model: str = "gpt2", divisor: float = 1.0) -> float:
  """Grid point ``k``: the default learning rate / ``divisor`` times ``10**(k/2)``, to 3
  significant digits (``divisor``: see :func:`lr_divisor`)."""
  return float(f"{default_lr(key, model) / divisor * 10 ** (k / 2):.3g}")


_NORMALISERS: dict[tuple[Any, ...], float] = {}  # measured once per process


def gsnr_normaliser(study: Study, width: int) -> float:
  """SGD-SaI's normaliser ``max_k snr_k`` at the first step of seed 0, to 3 significant
  digits: the factor between the two normalisations' learning rates at this width.

  It is measured, not assumed: one step of ``sgd_sai`` (``normalize=True``) on the
  example's first batch, read back with ``optax_sai.find_gsnr_state``. For the GPT-2 it is
  ``2 x width`` (the MLP's ``width x 4 width`` matrix: snr = sqrt(numel) for zero-mean
  gradients), for the ViT smaller (25 at width 64).
  """
  cache_key = (study.model, width, study.dataset, study.overrides)
  if cache_key not in _NORMALISERS:
    import jax
    from flax import nnx

    import optax_sai
    from examples.common import optim, training

    task = example_module(study.model, "train").build_task(
        base_config(study, width, max(study.budgets), "sgd_sai", 0))
    cfg = task.config
    graphdef, params, rest = nnx.split(
        task.make_model(nnx.Rngs(jax.random.PRNGKey(0))), nnx.Param, ...)
    tx = optim.make_optimizer("sgd_sai", 1.0, cfg.weight_decay, momentum=cfg.momentum,
                              clip_norm=cfg.clip_norm, block_axes=task.block_axes,
                              sai_normalize=True)
    step = jax.jit(training.make_train_step(graphdef, rest, task, tx))
    _, state, _ = step(params, tx.init(params), task.train_batch(0), 0)
    norm = float(optax_sai.find_gsnr_state(state).normalizer)
    _NORMALISERS[cache_key] = float(f"{norm:.3g}")
  return _NORMALISERS[cache_key]


def lr_divisor(study: Study, width: int, key: str) -> float:
  """What registry entry ``key``'s default learning rate is divided by at this width.

  1, except for SGD-SaI with ``normalize=False`` (the released PyTorch package's
  semantics, step = lr x g-SNR): the examples' defaults are ``normalize=True`` learning
  rates, and the two are the same optimizer when the learning rate is divided by the
  normaliser (:func:`gsnr_normaliser`). Its grid is therefore sgd_sai's divided by it,
  point for point. Its weight decay is sgd_sai's too, so relative to its learning rate
  it decays ``normaliser`` times less: that is what the two lines compare.
  """
  from examples.common import optim

  spec = optim.REGISTRY[key]
  if spec.optimizer != "sgd_sai" or spec.sai_normalize:
    return 1.0
  return gsnr_normaliser(study, width)


def grid_lr(study: Study, width: int, key: str, k: int) -> float:
  """The learning rate of grid point ``k`` of optimizer ``key`` at this width."""
  return lr_of(key, k, study.model, lr_divisor(study, width, key))


def cell_id(budget: int, width: int, key: str, k: int, seed: int) -> str:
  return f"b{budget}_w{width}_{key}_k{k:+d}_s{seed}"


# --------------------------------------------------------------------------------------
# The vmapped trainer
# --------------------------------------------------------------------------------------


_PARTIAL_FORMAT = 2  # 2: the optimizer state holds no schedule count


def _save_partial(path: Path, step: int, tree: Any, extra: dict[str, Any]) -> None:
  import jax
  import numpy as np

  leaves = jax.tree.leaves(jax.device_get(tree))
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, *leaves)
  os.replace(tmp, path.with_suffix(".npz"))
  path.with_suffix(".json").write_text(
      json.dumps({"step": step, "format": _PARTIAL_FORMAT, **extra}))


def _load_partial(path: Path, like: Any) -> tuple[int, Any, dict[str, Any]] | None:
  import jax
  import numpy as np

  if not (path.with_suffix(".npz").exists() and path.with_suffix(".json").exists()):
    return None
  meta = json.loads(path.with_suffix(".json").read_text())
  if meta.pop("format", None) != _PARTIAL_FORMAT:
    return None
  with np.load(path.with_suffix(".npz")) as f:
    leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
  treedef = jax.tree.structure(like)
  if treedef.num_leaves != len(leaves):
    return None
  return meta.pop("step"), jax.tree.unflatten(treedef, leaves), meta


_PROGRAMS: dict[tuple[Any, ...], dict[str, Any]] = {}


def _programs(study: Study, width: int, key: str, task: Any) -> dict[str, Any]:
  """The jitted init, train and eval steps of (optimizer, width), built once per process.

  Nothing in them depends on the budget or the learning rate: the train step takes each
  member's current learning rate (the schedule's value at this step) as an argument, and
  builds the example's optimizer with it as a constant. The optimizer's state carries no
  schedule count then, and the update is the one the scheduled optimizer makes.
  """
  import jax
  from flax import nnx

  from examples.common import optim, training

  cache_key = (study.model, key, width, study.dataset, study.overrides)
  if cache_key in _PROGRAMS:
    return _PROGRAMS[cache_key]
  cfg = task.config
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))),
                             nnx.Param, ...)
  rest = jax.jit(lambda: nnx.split(task.make_model(nnx.Rngs(0)), nnx.Param, ...)[2])()

  def make_tx(lr):
    return optim.make_optimizer(
        cfg.optimizer, lr, cfg.weight_decay, momentum=cfg.momentum, b2=cfg.b2,
        clip_norm=cfg.clip_norm, block_axes=task.block_axes, sai_normalize=cfg.sai_normalize)

  def init_member(seed):
    # The raw key data of ``jax.random.key(seed)``: the stream ``nnx.Rngs(seed)`` draws.
    params = nnx.split(task.make_model(nnx.Rngs(jax.random.PRNGKey(seed))), nnx.Param, ...)[1]
    return params, make_tx(1.0).init(params)

  def member_step(params, opt_state, lr, batch, step):
    step_fn = training.make_train_step(graphdef, rest, task, make_tx(lr))
    return step_fn(params, opt_state, batch, step)

  _PROGRAMS[cache_key] = {
      "init": jax.jit(init_member),
      "train_step": jax.jit(jax.vmap(member_step, in_axes=(0, 0, 0, 0, None)),
                            donate_argnums=(0, 1)),
      "eval_step": jax.jit(jax.vmap(training.make_eval_step(graphdef, rest, task),
                                    in_axes=(0, None))),
  }
  return _PROGRAMS[cache_key]


def _num_outputs(cfg: Any) -> int:
  """The size of the model's softmax: the vocabulary (GPT-2) or the classes (ViT)."""
  return getattr(cfg, "vocab_size", None) or cfg.num_classes


def train_group(study: Study, budget: int, width: int, key: str,
                members: Sequence[tuple[float, int]], *, partial: Path | None = None,
                stop_after: int | None = None, log: Callable[[str], None] = print,
                ) -> list[dict[str, Any]] | None:
  """Trains ``members`` = ``[(lr, seed), ...]`` of one optimizer as one vmapped program.

  Args:
    study: the study's settings; budget, width, key: the stage and registry optimizer.
    members: the cells, each with its own initialisation and batches (its seed).
    partial: where to save the group's state at each evaluation, and resume from.
    stop_after: stop after this step with the state saved in ``partial`` and return
      ``None`` (an interruption, for testing resume).
    log: where progress lines go.

  Returns:
    One record per member: final val loss / accuracy, final train loss, the curve (train
    loss over each eval interval and the val loss), ``diverged``, the group's wall time.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from examples.common import optim
  t0, c0 = time.perf_counter(), time.process_time()
  build_task = example_module(study.model, "train").build_task
  seeds = sorted({s for _, s in members})
  tasks = {s: build_task(base_config(study, width, budget, key, s)) for s in seeds}
  task = tasks[seeds[0]]
  cfg = task.config
  prog = _programs(study, width, key, task)
  # The example's schedule per member, evaluated here and fed to the step as a value, so
  # that one compiled step serves every budget and learning rate of (optimizer, width).
  lr_table = np.stack([
      np.asarray(optim.warmup_cosine(lr, cfg.warmup_steps, cfg.decay_steps or cfg.steps,
                                     cfg.min_lr_ratio)(jnp.arange(budget)), np.float32)
      for lr, _ in members], axis=1)
  # Each seed initialised as the example's ``fit`` does (``nnx.Rngs(seed)``), then stacked.
  by_seed = {s: prog["init"](jnp.uint32(s)) for s in seeds}
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *[by_seed[s] for _, s in members])
  del by_seed
  train_step, eval_step = prog["train_step"], prog["eval_step"]
  start, curve = 0, [[] for _ in members]
  if partial is not None:
    loaded = _load_partial(partial, state)
    if loaded is not None:
      start, state, extra = loaded
      curve = extra["curve"]
      log(f"  resuming {partial.name} at step {start}")
  params, opt_state = state
  k = len(members)
  val_batches = list(task.eval_batches())
  eval_at = sorted({max(1, round(budget * (i + 1) / study.evals)) for i in range(study.evals)})

  def batch_of(step):
    per_seed = {s: tasks[s].train_batch(step) for s in seeds}
    return {name: np.stack([per_seed[s][name] for _, s in members])
            for name in per_seed[seeds[0]]}

  def evaluate(p):
    sums: dict[str, Any] = {}
    for b in val_batches:
      for name, v in eval_step(p, b).items():
        sums[name] = sums.get(name, 0.0) + np.asarray(v, np.float64)
    count = np.maximum(sums["count"], 1.0)
    return sums["loss"] / count, sums["correct"] / count

  loss_sum, since, t_train = jnp.zeros((k,), jnp.float32), 0, time.perf_counter()
  for step in range(start, budget):
    params, opt_state, loss = train_step(params, opt_state, lr_table[step], batch_of(step),
                                         jnp.int32(step))
    loss_sum, since = loss_sum + loss, since + 1
    if step + 1 in eval_at:
      val_loss, val_acc = evaluate(params)
      train_loss = np.asarray(loss_sum) / since
      for i in range(k):
        curve[i].append([step + 1, float(train_loss[i]), float(val_loss[i]),
                         float(val_acc[i])])
      loss_sum, since = jnp.zeros((k,), jnp.float32), 0
      log(f"  step {step + 1}/{budget}: val " + " ".join(f"{x:.3f}" for x in val_loss)
          + f" ({time.perf_counter() - t0:.0f} s)")
      if partial is not None and step + 1 < budget:
        _save_partial(partial, step + 1, (params, opt_state), {"curve": curve})
    if stop_after is not None and step + 1 >= stop_after:
      return None
  jax.block_until_ready(params)
  wall = time.perf_counter() - t0
  rows = []
  for i, (lr, seed) in enumerate(members):
    last = curve[i][-1]
    finite = all(math.isfinite(x) for x in last[1:])
    rows.append({
        "lr": lr, "seed": seed, "val_loss": last[2] if finite else None,
        "val_accuracy": last[3] if finite else None, "train_loss": last[1] if finite else None,
        # Diverged: non-finite, or it ended worse than a uniform guess over the outputs.
        "diverged": (not finite) or last[2] > math.log(_num_outputs(cfg)),
        "curve": [[c[0], *(round(x, 5) if math.isfinite(x) else None for x in c[1:])]
                  for c in curve[i]],
        "group_size": k, "group_wall_s": round(wall, 2),
        "group_cpu_s": round(time.process_time() - c0, 2),
        "group_train_s": round(time.perf_counter() - t_train, 2),
        "num_params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)) // k),
    })
  if partial is not None:
    for suffix in (".npz", ".json"):
      partial.with_suffix(suffix).unlink(missing_ok=True)
  return rows


# --------------------------------------------------------------------------------------
# The plan: which cells come next
# --------------------------------------------------------------------------------------


def read_cells(out: Path) -> list[dict[str, Any]]:
  """The finished cells logged in ``out/cells.jsonl`` (the latest line of each id)."""
  path = out / "cells.jsonl"
  if not path.exists():
    return []
  rows: dict[str, dict[str, Any]] = {}
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a torn last line
      continue
    rows[row["id"]] = row
  return list(rows.values())


def _append(out: Path, rows: Sequence[dict[str, Any]]) -> None:
  with (out / "cells.jsonl").open("a") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _loss(row: dict[str, Any] | None) -> float:
  if row is None or row.get("diverged") or row.get("val_loss") is None:
    return math.inf
  return row["val_loss"]


def grid_state(study: Study, rows: Sequence[dict[str, Any]], budget: int, width: int,
               key: str) -> dict[str, Any]:
  """Seed-0 grid of one (budget, width, optimizer): points, best, extensions, next cells."""
  mine = {(r["k"], r["seed"]): r for r in rows
          if r["budget"] == budget and r["width"] == width and r["optimizer"] == key}
  ks = sorted({k for k, s in mine if s == 0} | set(study.grid_ks))
  missing = [k for k in study.grid_ks if (k, 0) not in mine]
  state: dict[str, Any] = {"ks": ks, "extended": [], "edge": None, "best_k": None,
                           "next": []}
  if missing:
    state["next"] = [(k, 0) for k in missing]
    return state
  done = sorted(k for k, s in mine if s == 0)
  state["ks"] = done
  state["extended"] = [k for k in done if k not in study.grid_ks]
  best = min(done, key=lambda k: (_loss(mine[(k, 0)]), abs(k)))
  state["best_k"] = best
  if math.isinf(_loss(mine[(best, 0)])):
    state["edge"] = "all diverged"
    return state
  lo, hi = min(study.grid_ks) - study.max_extend, max(study.grid_ks) + study.max_extend
  if best == done[0] or best == done[-1]:
    nxt = best - 1 if best == done[0] else best + 1
    if lo <= nxt <= hi:
      state["next"] = [(nxt, 0)]
      return state
    state["edge"] = "low" if best == done[0] else "high"
  largest = budget >= study.largest_budget
  extra = study.seeds_best_largest if largest else study.seeds_best
  state["next"] = [(best, s) for s in extra if (best, s) not in mine]
  return state


def run_study(study: Study, out: Path, *, log: Callable[[str], None] = print,
              after_group: Callable[[], None] | None = None) -> dict[str, int]:
  """Runs every stage's missing cells, cheapest stage first; returns the counts."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "_partial").mkdir(exist_ok=True)
  trained = groups = 0
  for budget, width in study.stage_list():
    for key in study.optimizers:
      while True:
        state = grid_state(study, read_cells(out), budget, width, key)
        if not state["next"]:
          break
        members = [(grid_lr(study, width, key, k), s) for k, s in state["next"]]
        phase = "seeds" if any(s for _, s in state["next"]) else (
            "grid" if all(k in study.grid_ks for k, _ in state["next"]) else "extend")
        name = hashlib.sha1(repr((budget, width, key, state["next"])).encode()).hexdigest()
        log(f"[{budget} steps, width {width}] {key} {phase}: "
            + ", ".join(f"lr {lr:g} seed {s}" for lr, s in members))
        results = train_group(study, budget, width, key, members,
                              partial=out / "_partial" / name[:12], log=log)
        rows = []
        for (k, seed), res in zip(state["next"], results, strict=True):
          rows.append({"id": cell_id(budget, width, key, k, seed), "budget": budget,
                       "width": width, "optimizer": key, "k": k, "phase": phase, **res,
                       "load_average": [round(x, 2) for x in os.getloadavg()],
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        _append(out, rows)
        trained += len(rows)
        groups += 1
        log("  " + "; ".join(f"lr {r['lr']:g} s{r['seed']}: val {r['val_loss']}"
                             for r in rows) + f" ({results[0]['group_wall_s']:.0f} s)")
        if after_group is not None:
          after_group()
  return {"trained": trained, "groups": groups}


# --------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------


def band_width(points: Sequence[tuple[float, float]], tol: float,
               absolute: bool = False) -> tuple[float, bool]:
  """Width in decades of the contiguous lr band around the best point whose loss is within
  ``tol`` (relative) of the best, interpolating linearly in ``log10(lr)`` between points.

  Args:
    points: ``(lr, loss)`` pairs (``inf`` loss for diverged points).
    tol: 0.02 for "within 2%".
    absolute: ``tol`` is absolute (a classification error within 0.02 = 2 points).

  Returns:
    ``(width, open)``; ``open`` is True when the band reaches the grid's edge (the true
    band is at least that wide).
  """
  pts = sorted((math.log10(lr), loss) for lr, loss in points)
  if not pts:
    return 0.0, False
  i = min(range(len(pts)), key=lambda j: pts[j][1])
  best = pts[i][1]
  if math.isinf(best):
    return 0.0, False
  limit = best + tol if absolute else best * (1 + tol)
  ends, is_open = [], False
  for step in (-1, 1):
    j = i
    while 0 <= j + step < len(pts) and pts[j + step][1] <= limit:
      j += step
    if not 0 <= j + step < len(pts):
      ends.append(pts[j][0])
      is_open = True
      continue
    (x0, y0), (x1, y1) = pts[j], pts[j + step]
    frac = 1.0 if math.isinf(y1) else (limit - y0) / (y1 - y0)
    ends.append(x0 + frac * (x1 - x0))
  return abs(ends[1] - ends[0]), is_open


def analyse(study: Study, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Best cells, gaps and sensitivity per stage, from the finished cells."""
  from examples.common import optim

  stages = []
  for budget, width in study.stage_list():
    entry: dict[str, Any] = {"budget": budget, "width": width, "optimizers": {}}
    for key in study.optimizers:
      state = grid_state(study, rows, budget, width, key)
      mine = {(r["k"], r["seed"]): r for r in rows if r["budget"] == budget
              and r["width"] == width and r["optimizer"] == key}
      if not mine:
        continue
      best_k = state["best_k"]
      grid_done = best_k is not None
      info: dict[str, Any] = {
          "label": optim.REGISTRY[key].label, "grid_done": grid_done,
          "points": sorted([grid_lr(study, width, key, k), _loss(r)]
                           for (k, s), r in mine.items() if s == 0),
          # Seed-0 val accuracy per learning rate, -inf where the cell diverged.
          "acc_points": sorted([grid_lr(study, width, key, k),
                                -math.inf if math.isinf(_loss(r)) else r["val_accuracy"]]
                               for (k, s), r in mine.items() if s == 0),
          "extended": [grid_lr(study, width, key, k) for k in state["extended"]],
          "edge": state["edge"],
          "pending": len(state["next"]) > 0,
      }
      if grid_done:
        seeds = {s: r for (k, s), r in mine.items() if k == best_k}
        losses = [_loss(r) for r in seeds.values()]
        info.update(best_lr=grid_lr(study, width, key, best_k), seeds=sorted(seeds),
                    per_seed={s: _loss(r) for s, r in seeds.items()},
                    mean=statistics.fmean(losses), lo=min(losses), hi=max(losses),
                    acc=statistics.fmean(r["val_accuracy"] or 0.0 for r in seeds.values()),
                    acc_per_seed={s: r["val_accuracy"] or 0.0 for s, r in seeds.items()},
                    curve=seeds[0]["curve"] if 0 in seeds else None)
        for tol in (0.02, 0.05):
          w, is_open = band_width(info["points"], tol)
          info[f"band{int(tol * 100)}"] = round(w, 3)
          info[f"band{int(tol * 100)}_open"] = is_open
          if study.spec.accuracy:  # the band of accuracy within 2 (5) points of the best
            w, is_open = band_width([(lr, 1.0 - a) for lr, a in info["acc_points"]], tol,
                                    absolute=True)
            info[f"band_acc{int(tol * 100)}"] = round(w, 3)
            info[f"band_acc{int(tol * 100)}_open"] = is_open
      entry["optimizers"][key] = info
    for lhs, other in GAPS:
      a, b = entry["optimizers"].get(lhs), entry["optimizers"].get(other)
      if a and b and a.get("mean") is not None and b.get("mean") is not None:
        paired = [a["per_seed"][s] - b["per_seed"][s] for s in a["per_seed"]
                  if s in b["per_seed"]]
        paired_acc = [a["acc_per_seed"][s] - b["acc_per_seed"][s] for s in a["per_seed"]
                      if s in b["per_seed"]]
        entry[gap_name(lhs, other)] = {
            "mean": a["mean"] - b["mean"], "paired": paired,
            "lo": min(paired) if paired else None, "hi": max(paired) if paired else None,
            "acc_mean": a["acc"] - b["acc"],
            "acc_lo": min(paired_acc) if paired_acc else None,
            "acc_hi": max(paired_acc) if paired_acc else None,
            "final": not (a["pending"] or b["pending"])}
    if any(lr_divisor(study, width, k) != 1.0 for k in entry["optimizers"]):
      entry["normaliser"] = gsnr_normaliser(study, width)
    stages.append(entry)
  return {"stages": stages, "trend": gap_trend(study, stages)}


def gap_trend(study: Study, stages: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Per width and reference: a least-squares line of the gap against ``log10(steps)`` over
  the finished budgets, its slope per decade and the budget where it would reach zero.

  With two or three budgets this is an extrapolation of a trend, not a prediction.
  """
  out: dict[str, Any] = {}
  for lhs, other in GAPS:
    if other == "sgd_sai":  # the weight-decay check's difference is not a gap to close
      continue
    name = gap_name(lhs, other)
    for width in study.widths:
      pts = [(math.log10(st["budget"]), st[name]["mean"]) for st in stages
             if st["width"] == width and st.get(name) and st[name]["final"]]
      if len(pts) < 2:
        continue
      mx = statistics.fmean(x for x, _ in pts)
      my = statistics.fmean(y for _, y in pts)
      sxx = sum((x - mx) ** 2 for x, _ in pts)
      slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
      zero = None
      if slope != 0 and (my > 0) == (slope < 0):  # heading towards zero
        zero = 10 ** (mx - my / slope)
      out[f"{name.removeprefix('gap_')}_w{width}"] = {
          "lhs": lhs, "other": other, "budgets": [round(10 ** x) for x, _ in pts],
          "slope_per_decade": slope, "zero_at_steps": zero}
  return out


def _corpus_meta(study: Study) -> dict[str, Any] | None:
  """The prepared GPT-2 corpus's ``meta.json`` (files, bytes, split), if prepared."""
  meta_path = example_module("gpt2", "data").resolve_data_dir(study.dataset) / "meta.json"
  return json.loads(meta_path.read_text()) if meta_path.exists() else None


def train_set_size(study: Study) -> tuple[int, str] | None:
  """``(size, unit)`` of the training split: tokens of the corpus (GPT-2), images (ViT)."""
  if study.model == "vit":
    data_lib = example_module("vit", "data")
    if study.dataset != "digits":
      return None
    return len(data_lib.load_digits_split()[1]), "training images"
  meta = _corpus_meta(study)
  return None if meta is None else (int(meta["train_tokens"]), "training bytes")


def epochs_per_budget(study: Study, budgets: Sequence[int]) -> dict[int, float] | None:
  """Training epochs each budget implies: batch (x context) per step over the split's size."""
  size = train_set_size(study)
  if size is None:
    return None
  cfg = dataclasses.replace(example_module(study.model, "configs").get_config("tiny"),
                            **dict(study.overrides))
  per_step = cfg.batch_size * getattr(cfg, "block_size", 1)
  return {b: b * per_step / size[0] for b in budgets}


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _f(x: Any, d: int = 3) -> str:
  if x is None:
    return "—"
  if isinstance(x, float):
    return "diverged" if math.isinf(x) else f"{x:.{d}f}"
  return str(x)


def write_table(study: Study, analysis: dict[str, Any], out: Path, meta: dict[str, Any]) -> str:
  """``table.md``: best cells, gaps and sensitivity per stage; not-yet-run stages named."""
  from examples.common import optim

  spec = study.spec
  acc = study.spec.accuracy  # accuracy columns beside the loss
  lines = [
      f"# Budget-scaling study: {spec.title.format(dataset=study.dataset)}",
      "",
      f"Best seed-mean final val loss ({spec.loss_unit}) per optimizer (the best learning "
      "rate is the one with the lowest seed-0 val loss), with its learning rate, its seeds "
      "and their range [min, max]"
      + (", and the val accuracy (%) of those runs" if acc else "")
      + ". Gap = sgd_sai - adamw (and - sgdm) of the seed means; in brackets the range of "
      "the per-seed paired differences (same seed = same initialisation and batches). "
      "Stages marked *partial* are still running.",
      "",
      "| steps | width | optimizer | best lr | seeds | val loss | seed range | "
      + ("val acc % | " if acc else "")
      + "grid (seed 0) | extended | band 2% (dec) | band 5% (dec) |",
      "|---|---|---|---|---|---|---|" + ("---|" if acc else "") + "---|---|---|---|",
  ]
  gaps = ["", "| steps | width | sgd_sai - adamw [paired range] | sgd_sai - sgdm "
          "[paired range] | "
          + ("accuracy points vs adamw | vs sgdm | " if acc else "") + "status |",
          "|---|---|---|---|" + ("---|---|" if acc else "") + "---|"]
  missing = []
  for st in analysis["stages"]:
    b, w = st["budget"], st["width"]
    if not st["optimizers"]:
      missing.append((b, w))
      continue
    for key in study.optimizers:
      info = st["optimizers"].get(key)
      if info is None:
        if key not in OPTIMIZERS:  # an optional line (sgd_sai_unnorm) not run at this stage
          continue
        lines.append(f"| {b} | {w} | {optim.REGISTRY[key].label} | not yet run "
                     + "| " * (8 if acc else 7) + "|")
        continue
      grid = ", ".join(  # each seed-0 point's loss (and accuracy)
          f"{lr:g}: {_f(loss)}" + (f" ({100 * a:.0f}%)" if acc and math.isfinite(a) else "")
          for (lr, loss), (_, a) in zip(info["points"], info["acc_points"], strict=True))
      ext = ", ".join(f"{x:g}" for x in info["extended"]) or "no"
      if info["edge"]:
        ext += f" (best still at the {info['edge']} edge: cap reached)"
      if not info["grid_done"]:
        lines.append(f"| {b} | {w} | {info['label']} | *grid partial* | | | | "
                     + ("| " if acc else "") + f"{grid} | {ext} | | |")
        continue

      def band(t: int, info=info) -> str:
        return (">=" if info[f"band{t}_open"] else "") + f"{info[f'band{t}']:.2f}"

      lines.append(
          f"| {b} | {w} | {info['label']} | {info['best_lr']:g} | "
          f"{','.join(map(str, info['seeds']))}{' *partial*' if info['pending'] else ''} | "
          f"{_f(info['mean'])} | [{_f(info['lo'])}, {_f(info['hi'])}] | "
          + (f"{100 * info['acc']:.1f} | " if acc else "") + f"{grid} | {ext} | "
          f"{band(2)} | {band(5)} |")
    ga, gs = st.get("gap_adamw"), st.get("gap_sgdm")
    status = "final" if ga and ga["final"] and gs and gs["final"] else "partial"
    gaps.append(f"| {b} | {w} | {_gap_text(ga)} | {_gap_text(gs)} | "
                + (f"{_gap_text(ga, True)} | {_gap_text(gs, True)} | " if acc else "")
                + f"{status} |")
  lines += gaps
  sens = ["", "Sensitivity: width in decades of each optimizer's learning-rate band within 2% "
          "(5%) of its best final loss ('>=': the band reaches the grid's edge)"
          + ("; for the accuracy, within 2 (5) points of its best accuracy" if acc else "")
          + ".", "",
          "| steps | width | " + " | ".join(study.optimizers)
          + "".join(f" | {k}, accuracy" for k in study.optimizers if acc) + " |",
          "|---|---|" + "---|" * len(study.optimizers) * (2 if acc else 1)]
  for st in analysis["stages"]:
    cells = []
    for prefix in ("band", "band_acc") if acc else ("band",):
      for key in study.optimizers:
        info = st["optimizers"].get(key) or {}
        if f"{prefix}2" not in info:
          cells.append("—")
          continue
        cells.append(" / ".join((">=" if info[f"{prefix}{t}_open"] else "")
                                + f"{info[f'{prefix}{t}']:.2f}" for t in (2, 5)))
    if any(c != "—" for c in cells):
      sens.append(f"| {st['budget']} | {st['width']} | " + " | ".join(cells) + " |")
  lines += sens
  lines += _unnormalised_section(study, analysis)
  for name, t in analysis.get("trend", {}).items():
    width = name.rsplit("_w", 1)[1]
    zero = t["zero_at_steps"]
    if zero is None:
      where = "is not closing"
    elif zero > 1e7:
      where = "is closing too slowly to reach zero within 10^7 steps"
    else:
      where = f"would reach zero near {zero:,.0f} steps if the trend held"
    lines.append(f"\nTrend, width {width}, {t['lhs']} - {t['other']} over budgets "
                 f"{', '.join(map(str, t['budgets']))}: {t['slope_per_decade']:+.3f} nats per "
                 f"decade of steps; the gap {where} (a line through "
                 f"{len(t['budgets'])} points: an extrapolation, not a prediction).")
  epochs = meta.get("epochs")
  if epochs:
    lines += ["", "Epochs of the training split each budget implies: " + ", ".join(
        f"{b} steps = {e:.3f}" for b, e in sorted(epochs.items(), key=lambda x: int(x[0])))
        + f" ({meta.get('train_size', 0):,} {meta.get('train_unit', '')})."]
  if missing:
    lines += ["", "Not yet run (pending; each is queued in the order listed, cheapest first): "
              + ", ".join(f"{b} steps at width {w}" for b, w in missing) + "."]
  lines += ["", study.spec.note, ""]
  lines += [
      "Band = width in decades of the learning-rate interval around the best point whose "
      "seed-0 final loss is within 2% (5%) of the best, interpolated linearly in log lr; "
      "'>=' when it reaches the grid's edge. Grid: each optimizer's tiny default x "
      "10^(k/2), k = -2..2, extended half a decade at a time while the best is on an edge.",
      f"Cells: {meta.get('cells', 0)}; training time {meta.get('compute_h', 0):.2f} h "
      f"({meta.get('host', '')}). Command: `{meta.get('command', '')}`",
      "",
  ]
  text = "\n".join(lines)
  (out / "table.md").write_text(text)
  return text


def _unnormalised_section(study: Study, analysis: dict[str, Any]) -> list[str]:
  """The weight-decay check's lines: sgd_sai_unnorm against sgd_sai and AdamW, if run."""
  stages = [st for st in analysis["stages"] if st.get("gap_sgd_sai_unnorm_sgd_sai")
            or st.get("gap_sgd_sai_unnorm_adamw")]
  if not stages:
    return []
  from examples.common import optim

  acc = study.spec.accuracy
  wd = optim.registry_defaults(example_module(study.model, "configs").get_config(
      "tiny").optimizer_defaults, "sgd_sai_unnorm")[1]
  lines = [
      "", "Weight-decay check: SGD-SaI with `normalize=False` (the released package's "
      "semantics, step = lr x g-SNR), its grid = sgd_sai's divided by the measured "
      f"normaliser, and the same weight decay ({wd:g}). That is the `normalize=True` "
      f"optimizer with weight decay {wd:g} / normaliser: the two lines differ only in how "
      "strongly the "
      "weights decay (lr x wd per step), which at sgd_sai's tuned learning rates is "
      "normaliser times weaker here. Differences of seed means, [per-seed paired range].",
      "",
      "| steps | width | normaliser | unnorm - sgd_sai | unnorm - adamw | "
      + ("points vs sgd_sai | points vs adamw | " if acc else "") + "status |",
      "|---|---|---|---|---|" + ("---|---|" if acc else "") + "---|"]
  for st in stages:
    gs, ga = st.get("gap_sgd_sai_unnorm_sgd_sai"), st.get("gap_sgd_sai_unnorm_adamw")
    final = all(g is not None and g["final"] for g in (gs, ga))
    lines.append(f"| {st['budget']} | {st['width']} | {st.get('normaliser', 0):g} | "
                 f"{_gap_text(gs)} | {_gap_text(ga)} | "
                 + (f"{_gap_text(gs, True)} | {_gap_text(ga, True)} | " if acc else "")
                 + ("final" if final else "partial") + " |")
  return lines


def _gap_text(g: dict[str, Any] | None, accuracy: bool = False) -> str:
  """``+0.123 [+0.100, +0.150]`` (loss) or ``-2.0 [-3.0, -1.3]`` (accuracy points)."""
  if g is None:
    return "—"
  if accuracy:
    return (f"{100 * g['acc_mean']:+.1f} [{100 * g['acc_lo']:+.1f}, "
            f"{100 * g['acc_hi']:+.1f}]")
  return f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]"


def plot(study: Study, analysis: dict[str, Any], out: Path) -> list[Path]:
  """``gap.png`` (gap vs budget, one line per width) and ``curves.png`` (best runs)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from examples.common import optim

  paths = []
  # Gap rows: val loss (both models), and val accuracy in points (the ViT).
  metrics = [("", 1.0, f"val loss: sgd_sai - {{}} ({study.spec.loss_unit})")]
  if study.spec.accuracy:
    metrics.append(("acc_", 100.0, "val accuracy: sgd_sai - {} (points)"))
  fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 4 * len(metrics)),
                           constrained_layout=True, squeeze=False)
  for row, (prefix, factor, ylabel) in zip(axes, metrics, strict=True):
    for ax, other in zip(row, ("adamw", "sgdm"), strict=True):
      # sgd_sai's lines, and (dashed) the weight-decay check's where it was run.
      series = [(gap_name(lhs, o), width, lhs) for lhs, o in GAPS if o == other
                for width in study.widths]
      for name, width, lhs in series:
        pts = [(st["budget"], st[name]) for st in analysis["stages"]
               if st["width"] == width and st.get(name)
               and math.isfinite(st[name]["mean"])]  # not where one diverged
        if not pts:
          continue
        mean = [factor * g[f"{prefix}mean"] for _, g in pts]
        lo = [factor * g[f"{prefix}lo"] for _, g in pts]
        hi = [factor * g[f"{prefix}hi"] for _, g in pts]
        err = [[max(m - x, 0) for m, x in zip(mean, lo, strict=True)],
               [max(x - m, 0) for m, x in zip(mean, hi, strict=True)]]
        unnorm = lhs != "sgd_sai"
        ax.errorbar([b for b, _ in pts], mean, yerr=err, marker="s" if unnorm else "o",
                    capsize=3, ls="--" if unnorm else "-",
                    label=f"width {width}" + (", normalize=False (wd / normaliser)"
                                              if unnorm else ""))
      ax.axhline(0.0, color="grey", lw=0.8)
      ax.set_xscale("log")
      ax.set(xlabel="training steps (own warmup + cosine schedule)",
             ylabel=ylabel.format(other),
             title=f"SGD-SaI minus {optim.REGISTRY[other].label}, tuned lr each")
      ax.grid(alpha=0.3, which="both")
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
      else:
        ax.text(0.5, 0.5, "no finished stage yet", ha="center", transform=ax.transAxes)
  path = out / "gap.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  paths.append(path)

  main_width = study.widths[0]
  stages = [st for st in analysis["stages"] if st["width"] == main_width and st["optimizers"]]
  if stages:
    fig, axes = plt.subplots(1, len(stages), figsize=(3.6 * len(stages) + 1, 3.4),
                             constrained_layout=True, squeeze=False)
    for ax, st in zip(axes[0], stages, strict=True):
      for key in study.optimizers:
        info = st["optimizers"].get(key)
        if not info or not info.get("curve"):
          continue
        c = info["curve"]
        line = ax.plot([p[0] for p in c], [p[1] for p in c], "--", alpha=0.6)[0]
        ax.plot([p[0] for p in c], [p[2] for p in c], "o-", color=line.get_color(),
                label=f"{key} lr {info['best_lr']:g}")
      ax.set(title=f"{st['budget']} steps, width {main_width}", xlabel="step",
             ylabel="loss (o val, -- train)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)
  return paths


def _finite_json(x: Any) -> Any:
  """``x`` with non-finite floats (diverged cells' losses) as ``None``: valid JSON."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {k: _finite_json(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite_json(v) for v in x]
  return x


def covering(study: Study, rows: Sequence[dict[str, Any]]) -> Study:
  """``study`` widened to every optimizer, budget and width with a cell in ``rows``.

  The report covers the whole log, so that a run restricted to some stages or optimizers
  (``--budgets 3000 --widths 64``, ``--optimizers sgd_sai_unnorm``) rewrites the full
  table, not only its own part.
  """
  from examples.common import optim

  if study.stages is not None:
    return study
  keys = set(study.optimizers) | {r["optimizer"] for r in rows}
  widths = list(study.widths) + sorted({r["width"] for r in rows} - set(study.widths))
  return dataclasses.replace(
      study, optimizers=tuple([k for k in OPTIMIZERS if k in keys] + [
          k for k in optim.REGISTRY if k in keys and k not in OPTIMIZERS]),
      budgets=tuple(sorted(set(study.budgets) | {r["budget"] for r in rows})),
      widths=tuple(widths))


def report(study: Study, out: Path, command: str = "") -> dict[str, Any]:
  """Writes ``table.md``, ``summary.json``, ``gap.png`` and ``curves.png`` from the log."""
  out.mkdir(parents=True, exist_ok=True)
  rows = read_cells(out)
  study = covering(study, rows)
  analysis = analyse(study, rows)
  budgets = sorted({b for b, _ in study.stage_list()})
  epochs = epochs_per_budget(study, budgets)
  groups = {(r["budget"], r["width"], r["optimizer"], r["group_wall_s"], r["finished"])
            for r in rows}
  meta = {
      "command": command, "cells": len(rows), "epochs": epochs,
      "compute_h": math.fsum(g[3] for g in groups) / 3600,  # exact: independent of set order
      "host": f"{platform.machine()}, {os.cpu_count()} CPU cores",
  }
  size = train_set_size(study)
  if size is not None:
    meta["train_size"], meta["train_unit"] = size
  if study.model == "gpt2" and (corpus := _corpus_meta(study)) is not None:
    meta["data"] = corpus
  write_table(study, analysis, out, meta)
  if rows:
    plot(study, analysis, out)
  summary = {"study": study.to_json(), **meta, **analysis}
  for st in summary["stages"]:  # the curves stay in cells.jsonl
    for info in st["optimizers"].values():
      info.pop("curve", None)
  (out / "summary.json").write_text(json.dumps(_finite_json(summary), indent=1, default=str)
                                    + "\n")
  return summary


# --------------------------------------------------------------------------------------
# Throughput: vmapped cells against one by one
# --------------------------------------------------------------------------------------


def measure_throughput(study: Study, out: Path, budget: int = 100, width: int = 128,
                       key: str = "adamw", n: int = 5, single: bool = False,
                       log=print) -> dict[str, Any]:
  """Cells per hour of ``n`` learning rates: the example's ``fit`` one cell at a time, all
  ``n`` as one vmapped group, and (``single``) this module's trainer one cell at a time.
  The load average before each phase is recorded: on a shared machine it varies."""
  train_fn = example_module(study.model, "train").train

  ks = list(study.grid_ks)[:n]
  members = [(grid_lr(study, width, key, k), 0) for k in ks]
  loads = {"fit": os.getloadavg()}
  t, c = time.perf_counter(), time.process_time()
  fit_losses = []
  for lr, seed in members:
    cfg = dataclasses.replace(base_config(study, width, budget, key, seed), learning_rate=lr,
                              eval_every=budget)
    fit_losses.append(train_fn(cfg, workdir=None, progress=False)["val_loss"])
  fit_s, fit_cpu = time.perf_counter() - t, time.process_time() - c
  loads["group"] = os.getloadavg()
  t, c = time.perf_counter(), time.process_time()
  group = [r["val_loss"] for r in train_group(study, budget, width, key, members, log=log)]
  group_s, group_cpu = time.perf_counter() - t, time.process_time() - c
  res: dict[str, Any] = {
      "budget": budget, "width": width, "optimizer": key, "cells": n,
      "fit_one_by_one_s": round(fit_s, 1), "vmap_group_s": round(group_s, 1),
      "cells_per_hour": {"fit_one_by_one": round(n * 3600 / fit_s, 1),
                         "vmap_group": round(n * 3600 / group_s, 1)},
      "speedup_vs_fit": round(fit_s / group_s, 2),
      # CPU seconds (all threads of this process): the cost on a shared machine, where
      # wall time depends on what else runs.
      "fit_one_by_one_cpu_s": round(fit_cpu, 1), "vmap_group_cpu_s": round(group_cpu, 1),
      "cells_per_cpu_hour": {"fit_one_by_one": round(n * 3600 / fit_cpu, 1),
                             "vmap_group": round(n * 3600 / group_cpu, 1)},
      "cpu_speedup_vs_fit": round(fit_cpu / group_cpu, 2),
      "max_abs_diff_val_loss_group_vs_fit": max(abs(a - b) for a, b in
                                                zip(group, fit_losses, strict=True)),
      "host": f"{platform.machine()}, {os.cpu_count()} CPU cores",
      "load_average_before": loads,
      "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  if single:
    loads["single"] = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    for m in members:
      train_group(study, budget, width, key, [m], log=log)
    single_s, single_cpu = time.perf_counter() - t, time.process_time() - c
    res["vmap_one_by_one_cpu_s"] = round(single_cpu, 1)
    res["cpu_speedup_vs_single"] = round(single_cpu / group_cpu, 2)
    res["vmap_one_by_one_s"] = round(single_s, 1)
    res["cells_per_hour"]["vmap_one_by_one"] = round(n * 3600 / single_s, 1)
    res["speedup_vs_single"] = round(single_s / group_s, 2)
  log(json.dumps(res, indent=1))
  out.mkdir(parents=True, exist_ok=True)
  (out / "throughput.json").write_text(json.dumps(res, indent=1) + "\n")
  return res


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=list(MODELS), default="gpt2")
  parser.add_argument("--out", type=Path, default=None,
                      help="results folder (default: benchmarks/results/study_scaling/MODEL)")
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
  parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
  parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
  parser.add_argument("--report-only", action="store_true")
  parser.add_argument("--measure-throughput", action="store_true")
  args = parser.parse_args(argv)
  from examples.common import optim

  unknown = [k for k in args.optimizers if k not in optim.REGISTRY]
  if unknown:
    parser.error(f"unknown optimizers {unknown}; the registry has {list(optim.REGISTRY)}")
  study = Study(model=args.model, optimizers=tuple(args.optimizers),
                budgets=tuple(args.budgets), widths=tuple(args.widths))
  if args.out is None:
    args.out = RESULTS_ROOT / args.model
  command = "python -m benchmarks.scaling" + (
      f" --model {args.model}" if args.model != "gpt2" else "") + "".join(
      f" --{name} {' '.join(map(str, getattr(args, name)))}"
      for name, default in (("optimizers", OPTIMIZERS), ("budgets", BUDGETS),
                            ("widths", WIDTHS))
      if tuple(getattr(args, name)) != tuple(default))
  if args.measure_throughput:
    return measure_throughput(study, args.out)
  counts = {"trained": 0, "groups": 0}
  if not args.report_only:
    counts = run_study(study, args.out, log=lambda s: print(s, flush=True),
                       after_group=lambda: report(study, args.out, command))
  summary = report(study, args.out, command)
  print((args.out / "table.md").read_text())
  return {**counts, "summary": summary}


if __name__ == "__main__":
  sys.exit(0 if main() else 1)

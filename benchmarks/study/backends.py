"""Training backends: cells of one optimizer as one vmapped program, or one at a time.

Both train the model's example task (``build_task``: model, data, loss, what is trainable)
with the optimizer ``examples.common.optim.task_optimizer`` assembles, as the example's
``fit`` does, and return one record per cell (:func:`train_cells`). ``vmap``: the members
(learning rate, weight decay, seed) of one optimizer train together, each with its own
initialisation of the task's trainable variables and its own batches (pure functions of its
seed and step), the rest (a frozen base) shared; the schedule's value is fed to the step
each step, so one compiled step serves every budget and learning rate of (optimizer, width).
``fit``: the example's own ``fit``, one cell after the other.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.study import analysis, log
from benchmarks.study import planner as planner_lib
from benchmarks.study.spec import Spec

Member = tuple[float, float, int]  # (learning rate, weight decay, seed)

_PROGRAMS: dict[tuple[Any, ...], dict[str, Any]] = {}
_FIRST_STEPS: dict[tuple[Any, ...], dict[str, Any]] = {}


def build_task(spec: Spec, width: int, budget: int, key: str, seed: int = 0) -> Any:
  """The model's example task for one cell's config (its lr / wd set by the backend)."""
  cfg = planner_lib.base_config(spec, width, budget, key, seed)
  return spec.model_spec.module("train").build_task(cfg)


def first_step_gsnr(spec: Spec, width: int) -> dict[str, Any]:
  """SGD-SaI's g-SNR capture over the first two steps of seed 0 at this width:
  ``normaliser`` (``max_k snr_k``, fixed at step 1) and ``scales`` (each block's
  ``normalize=True`` scale, by path; blocks below a zero-initialised head are captured at
  step 2).

  Measured, not assumed: two steps of ``sgd_sai`` (``normalize=True``, at its default
  learning rate's first warmup value) on the task's first batches, read back with
  ``optax_sai.find_gsnr_state`` and ``optim.gsnr_table``.
  """
  cache_key = (spec.model, spec.axis, width, spec.dataset, spec.overrides)
  if cache_key not in _FIRST_STEPS:
    import jax
    from flax import nnx

    import optax_sai
    from examples.common import optim, training

    task = build_task(spec, width, max(spec.budgets), "sgd_sai", 0)
    graphdef, params, rest = nnx.split(
        task.make_model(nnx.Rngs(jax.random.PRNGKey(0))), task.trainable, ...)
    cfg = task.config
    tx = optim.task_optimizer(task, planner_lib.default_hyperparameters(spec, "sgd_sai")[0]
                              / max(cfg.warmup_steps, 1))
    step = jax.jit(training.make_train_step(graphdef, rest, task, tx))
    state = tx.init(params)
    for t in range(2):
      params, state, _ = step(params, state, task.train_batch(t), t)
    _FIRST_STEPS[cache_key] = {
        "normaliser": float(optax_sai.find_gsnr_state(state).normalizer),
        "scales": optim.gsnr_table(state)}
  return _FIRST_STEPS[cache_key]


def normaliser(spec: Spec, width: int) -> float:
  """The measured normaliser (:func:`first_step_gsnr`) to 3 significant digits: the factor
  between the two conventions' learning rates at this width."""
  return float(f"{first_step_gsnr(spec, width)['normaliser']:.3g}")


def num_outputs(cfg: Any) -> int:
  """The size of the model's softmax: the vocabulary (GPT-2) or the classes."""
  return getattr(cfg, "vocab_size", None) or cfg.num_classes


def _programs(spec: Spec, width: int, key: str, task: Any) -> dict[str, Any]:
  """The jitted init, train and eval steps of (optimizer, width), built once per process."""
  import jax
  from flax import nnx

  from examples.common import optim, training

  cache_key = (spec.model, spec.axis, key, width, spec.dataset, spec.overrides)
  if cache_key in _PROGRAMS:
    return _PROGRAMS[cache_key]
  # The task's trainable variables are the members' own (all parameters, or adapters);
  # the rest (e.g. a frozen base) is built once and shared.
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0))),
                             task.trainable, ...)
  rest = jax.jit(lambda: nnx.split(task.make_model(nnx.Rngs(0)), task.trainable, ...)[2])()

  def init_member(seed):
    # The raw key data of ``jax.random.key(seed)``: the stream ``nnx.Rngs(seed)`` draws.
    params = nnx.split(task.make_model(nnx.Rngs(jax.random.PRNGKey(seed))), task.trainable,
                       ...)[1]
    return params, optim.task_optimizer(task, 1.0, 0.0).init(params)

  def member_step(params, opt_state, lr, wd, batch, step):
    tx = optim.task_optimizer(task, lr, wd)
    return training.make_train_step(graphdef, rest, task, tx)(params, opt_state, batch, step)

  _PROGRAMS[cache_key] = {
      "init": jax.jit(init_member),
      "train_step": jax.jit(jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, None)),
                            donate_argnums=(0, 1)),
      "eval_step": jax.jit(jax.vmap(training.make_eval_step(graphdef, rest, task),
                                    in_axes=(0, None))),
  }
  return _PROGRAMS[cache_key]


def _record(cfg: Any, curve: list[list[float]]) -> dict[str, Any]:
  """A cell's final numbers from its curve ``[[step, train, val, acc], ...]``."""
  last = curve[-1]
  finite = all(x is not None and math.isfinite(x) for x in last[1:])
  return {
      "val_loss": last[2] if finite else None, "val_accuracy": last[3] if finite else None,
      "train_loss": last[1] if finite else None,
      "diverged": analysis.diverged(last[2] if finite else None, num_outputs(cfg)),
      "curve": [[c[0], *(round(x, 5) if x is not None and math.isfinite(x) else None
                         for x in c[1:])] for c in curve],
  }


def train_group(spec: Spec, budget: int, width: int, key: str, members: Sequence[Member], *,
                partial: Path | None = None, stop_after: int | None = None,
                log_fn: Callable[[str], None] = print) -> list[dict[str, Any]] | None:
  """Trains ``members`` of one optimizer as one vmapped program.

  Args:
    spec, budget, width, key: the study, stage and optimizer.
    members: ``(lr, wd, seed)`` per cell.
    partial: where to save the group's state at each evaluation, and resume from.
    stop_after: stop after this step with the state saved in ``partial`` and return
      ``None`` (an interruption, for testing resume).
    log_fn: where progress lines go.

  Returns:
    One record per member (see :func:`train_cells`).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from examples.common import optim
  t0, c0 = time.perf_counter(), time.process_time()
  seeds = sorted({s for _, _, s in members})
  tasks = {s: build_task(spec, width, budget, key, s) for s in seeds}
  task = tasks[seeds[0]]
  cfg = task.config
  prog = _programs(spec, width, key, task)
  lr_table = np.stack([
      np.asarray(optim.warmup_cosine(lr, cfg.warmup_steps, cfg.decay_steps or cfg.steps,
                                     cfg.min_lr_ratio)(jnp.arange(budget)), np.float32)
      for lr, _, _ in members], axis=1)
  wds = jnp.asarray([wd for _, wd, _ in members], jnp.float32)
  # Each seed initialised as the example's ``fit`` does (``nnx.Rngs(seed)``), then stacked.
  by_seed = {s: prog["init"](jnp.uint32(s)) for s in seeds}
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *[by_seed[s] for _, _, s in members])
  del by_seed
  start, curve = 0, [[] for _ in members]
  if partial is not None:
    loaded = log.load_partial(partial, state)
    if loaded is not None:
      start, state, extra = loaded
      curve = extra["curve"]
      log_fn(f"  resuming {partial.name} at step {start}")
  params, opt_state = state
  k = len(members)
  val_batches = list(task.eval_batches())
  eval_at = sorted({max(1, round(budget * (i + 1) / spec.evals)) for i in range(spec.evals)})

  def batch_of(step):
    per_seed = {s: tasks[s].train_batch(step) for s in seeds}
    return {name: np.stack([per_seed[s][name] for _, _, s in members])
            for name in per_seed[seeds[0]]}

  def evaluate(p):
    sums: dict[str, Any] = {}
    for b in val_batches:
      for name, v in prog["eval_step"](p, b).items():
        sums[name] = sums.get(name, 0.0) + np.asarray(v, np.float64)
    count = np.maximum(sums["count"], 1.0)
    return sums["loss"] / count, sums["correct"] / count

  loss_sum, since, t_train = jnp.zeros((k,), jnp.float32), 0, time.perf_counter()
  for step in range(start, budget):
    params, opt_state, loss = prog["train_step"](params, opt_state, lr_table[step], wds,
                                                 batch_of(step), jnp.int32(step))
    loss_sum, since = loss_sum + loss, since + 1
    if step + 1 in eval_at:
      val_loss, val_acc = evaluate(params)
      train_loss = np.asarray(loss_sum) / since
      for i in range(k):
        curve[i].append([step + 1, float(train_loss[i]), float(val_loss[i]),
                         float(val_acc[i])])
      loss_sum, since = jnp.zeros((k,), jnp.float32), 0
      log_fn(f"  step {step + 1}/{budget}: val " + " ".join(f"{x:.3f}" for x in val_loss)
             + f" ({time.perf_counter() - t0:.0f} s)")
      if partial is not None and step + 1 < budget:
        log.save_partial(partial, step + 1, (params, opt_state), {"curve": curve})
    if stop_after is not None and step + 1 >= stop_after:
      return None
  jax.block_until_ready(params)
  wall = time.perf_counter() - t0
  shared = {"group_size": k, "group_wall_s": round(wall, 2),
            "group_cpu_s": round(time.process_time() - c0, 2),
            "group_train_s": round(time.perf_counter() - t_train, 2),
            "num_params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)) // k)}
  fields = [_cell_fields(spec, tasks[seed], jax.tree.map(lambda x, i=i: x[i], params),
                         jax.tree.map(lambda x, i=i: x[i], opt_state))
            for i, (_, _, seed) in enumerate(members)]
  if partial is not None:
    log.drop_partial(partial)
  return [{"lr": lr, "wd": wd, "seed": seed, **_record(cfg, curve[i]), **shared, **fields[i]}
          for i, (lr, wd, seed) in enumerate(members)]


def _cell_fields(spec: Spec, task: Any, params: Any, opt_state: Any) -> dict[str, Any]:
  """The model's own facts about one trained cell (``Model.cell_fields``), if it has any."""
  hook = spec.model_spec.hook("cell_fields")
  return {} if hook is None else dict(hook(task, params, opt_state))


def fit_cell(spec: Spec, budget: int, width: int, key: str, member: Member) -> dict[str, Any]:
  """One cell through the example's own ``fit`` (its metrics log gives the curve)."""
  from examples.common.metrics import read_metrics

  lr, wd, seed = member
  t0, c0 = time.perf_counter(), time.process_time()
  every = max(1, budget // spec.evals)
  cfg = dataclasses.replace(planner_lib.base_config(spec, width, budget, key, seed),
                            learning_rate=lr, weight_decay=wd, eval_every=every,
                            log_every=every, ckpt_every=budget)
  with tempfile.TemporaryDirectory() as tmp:
    result = spec.model_spec.module("train").train(cfg, workdir=Path(tmp), progress=False)
    records = read_metrics(Path(tmp))
  evals = {r["step"]: r for r in records if "val_loss" in r}
  trains = {r["step"]: r["train_loss"] for r in records if "train_loss" in r}
  curve = [[step, trains.get(step), r["val_loss"], r.get("val_accuracy", 0.0)]
           for step, r in sorted(evals.items())]
  wall = time.perf_counter() - t0
  resolved = build_task(spec, width, budget, key, seed).config  # the data's outputs
  return {"lr": lr, "wd": wd, "seed": seed, **_record(resolved, curve), "group_size": 1,
          "group_wall_s": round(wall, 2), "group_cpu_s": round(time.process_time() - c0, 2),
          "num_params": int(result["num_params"]),
          **_cell_fields(spec, result["task"], result["params"], result["opt_state"])}


def train_cells(spec: Spec, budget: int, width: int, key: str, members: Sequence[Member], *,
                partial: Path | None = None, log_fn: Callable[[str], None] = print,
                ) -> list[dict[str, Any]]:
  """Trains the cells of one optimizer with the spec's backend.

  Returns:
    One record per member: ``lr``, ``wd``, ``seed``, final ``val_loss`` /
    ``val_accuracy`` / ``train_loss`` (``None`` where not finite), ``diverged``
    (:func:`benchmarks.study.analysis.diverged`), the ``curve`` (per evaluation: step,
    mean train loss since the last one, val loss, val accuracy), the group's wall time,
    and the model's ``cell_fields``.
  """
  if spec.backend == "fit":
    return [fit_cell(spec, budget, width, key, m) for m in members]
  rows = train_group(spec, budget, width, key, members, partial=partial, log_fn=log_fn)
  assert rows is not None
  return rows


def measure_throughput(spec: Spec, out: Path, budget: int = 100, width: int = 128,
                       key: str = "adamw", n: int = 5,
                       log_fn: Callable[[str], None] = print) -> dict[str, Any]:
  """Cells per hour of ``n`` learning rates: the ``fit`` backend one cell at a time against
  the ``vmap`` backend's one group; writes ``out/throughput.json``. The load average before
  each phase is recorded: on a shared machine it varies."""
  import json
  import os

  from benchmarks._report import host_line

  members = [(planner_lib.learning_rate(spec, width, key, k),
              planner_lib.weight_decay(spec, width, key, 0, 1.0), 0) for k in spec.lr_ks[:n]]
  loads, timings, losses = {}, {}, {}
  for name, backend in (("fit_one_by_one", "fit"), ("vmap_group", "vmap")):
    loads[name] = os.getloadavg()
    t, c = time.perf_counter(), time.process_time()
    rows = train_cells(dataclasses.replace(spec, backend=backend), budget, width, key, members,
                       log_fn=log_fn)
    timings[name] = (time.perf_counter() - t, time.process_time() - c)
    losses[name] = [r["val_loss"] for r in rows]
  (fit_s, fit_cpu), (group_s, group_cpu) = timings["fit_one_by_one"], timings["vmap_group"]
  res: dict[str, Any] = {
      "budget": budget, "width": width, "optimizer": key, "cells": len(members),
      "fit_one_by_one_s": round(fit_s, 1), "vmap_group_s": round(group_s, 1),
      "cells_per_hour": {k: round(len(members) * 3600 / v[0], 1) for k, v in timings.items()},
      "speedup_vs_fit": round(fit_s / group_s, 2),
      "fit_one_by_one_cpu_s": round(fit_cpu, 1), "vmap_group_cpu_s": round(group_cpu, 1),
      "cpu_speedup_vs_fit": round(fit_cpu / group_cpu, 2),
      "max_abs_diff_val_loss_group_vs_fit": max(
          abs(a - b) for a, b in zip(losses["vmap_group"], losses["fit_one_by_one"],
                                     strict=True)),
      "host": host_line(),
      "load_average_before": loads, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  out.mkdir(parents=True, exist_ok=True)
  (out / "throughput.json").write_text(json.dumps(res, indent=1) + "\n")
  return res

"""The training loop both examples share: jitted train/eval steps, logging, checkpoints.

An example describes itself as a :class:`Task` (how to build the model, its loss, its
evaluation sums and its batches); :func:`fit` does the rest:

* builds the mesh and initialises parameters directly in their (FSDP) shardings,
* builds the optimizer (same schedule, clipping and decay mask for all) and its state,
* runs ``jax.jit``-ed steps with explicit in/out shardings, prefetching host batches,
* logs ``metrics.jsonl``, evaluates, checkpoints with orbax and resumes exactly,
* writes ``gsnr.json`` and ``curves.png`` at the end.

Determinism: a batch is a pure function of ``(seed, step)`` and dropout keys are
``fold_in(seed, step)``, so a run resumed from any checkpoint repeats an uninterrupted one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_sai
from examples.common import mesh as mesh_lib
from examples.common import metrics as metrics_lib
from examples.common import optim
from examples.common.checkpoint import Checkpointer
from examples.common.config import TrainConfig

Batch = Mapping[str, np.ndarray]


@dataclasses.dataclass
class Task:
  """What an example hands to :func:`fit`.

  Attributes:
    name: a label for plots and logs.
    config: the example's config, already ``resolved()`` (optimizer, lr, wd filled in).
    make_model: ``rngs -> nnx.Module``; called under ``jit`` / ``eval_shape``.
    loss_fn: ``(model, batch, dropout_key or None) -> scalar`` mean training loss.
    eval_fn: ``(model, batch) -> {"loss": sum, "correct": sum, "count": n}`` over a batch.
    train_batch: ``step -> batch`` of host arrays; a pure function of (seed, step).
      With ``batch_rows`` it also takes ``rows=`` (global row indices) and returns only
      those rows of the batch.
    eval_batches: ``() -> iterable of batches``, the same every time.
    unit: what throughput counts (``"tokens"`` or ``"images"``).
    units_per_step: how many of them one training step consumes.
    block_axes: sgd_sai's ``block_axes`` (stacked layers), or ``None``.
    dropout: whether the loss wants a dropout key.
    batch_rows: ``train_batch`` takes ``rows=``, so each process builds only the rows of
      the global batch its devices hold (else each builds the whole batch and keeps those).
    trainable: an ``nnx`` filter of the variables trained (default ``nnx.Param``); the
      others (e.g. frozen base weights under LoRA adapters) stay as built by
      ``make_model``, get no optimizer state and are not checkpointed.
    decay_mask: which trainable leaves weight decay applies to (default: kernels,
      :func:`optim.decay_mask`).
    wrap_optimizer: ``tx -> tx`` applied to the optimizer after gradient clipping (an
      example's instrumentation or a labelled ablation); ``None``: none.
  """

  name: str
  config: TrainConfig
  make_model: Callable[[nnx.Rngs], nnx.Module]
  loss_fn: Callable[[nnx.Module, Batch, jax.Array | None], jax.Array]
  eval_fn: Callable[[nnx.Module, Batch], dict[str, jax.Array]]
  train_batch: Callable[[int], Batch]
  eval_batches: Callable[[], Iterable[Batch]]
  unit: str = "examples"
  units_per_step: int = 1
  block_axes: optim.BlockAxesFn | None = None
  dropout: bool = False
  batch_rows: bool = False
  trainable: Any = nnx.Param
  decay_mask: Callable[[Any], Any] | None = None
  wrap_optimizer: Callable[[optax.GradientTransformation], optax.GradientTransformation] | None = (
      None)


def abstract_params(make_model: Callable[[nnx.Rngs], nnx.Module]) -> nnx.State:
  """Parameter shapes of a model without allocating it (``nnx.eval_shape``)."""
  model = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


def count_params(make_model: Callable[[nnx.Rngs], nnx.Module]) -> int:
  """Number of parameters, counted from shapes only."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(make_model)))


def make_train_step(
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    task: Task,
    tx: optax.GradientTransformation,
) -> Callable[..., tuple[nnx.State, optax.OptState, jax.Array]]:
  """``(params, opt_state, batch, step) -> (params, opt_state, loss)``, not yet jitted."""
  seed = task.config.seed

  def train_step(params, opt_state, batch, step):
    key = jax.random.fold_in(jax.random.key(seed), step) if task.dropout else None

    def loss_of(p):
      return task.loss_fn(nnx.merge(graphdef, p, rest), batch, key)

    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, rest: nnx.State, task: Task) -> Callable[..., Any]:
  """``(params, batch) -> {"loss", "correct", "count"}`` sums, not yet jitted."""

  def eval_step(params, batch):
    return task.eval_fn(nnx.merge(graphdef, params, rest), batch)

  return eval_step


class _Prefetcher:
  """Builds the next host batches on a thread while the device trains."""

  def __init__(self, fn: Callable[[int], Batch], start: int, end: int, depth: int = 2):
    self._fn, self._next, self._end = fn, start, end
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    self._queue: list[concurrent.futures.Future[Batch]] = []
    for _ in range(depth):
      self._submit()

  def _submit(self) -> None:
    if self._next < self._end:
      self._queue.append(self._pool.submit(self._fn, self._next))
      self._next += 1

  def get(self) -> Batch:
    batch = self._queue.pop(0).result()
    self._submit()
    return batch

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)


def _progress(total: int, initial: int, enabled: bool | None):
  from tqdm import tqdm  # the plain bar: it is shown on terminals only

  if enabled is None:
    enabled = sys.stdout.isatty()
  return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
              dynamic_ncols=True, file=sys.stdout)


def fit(
    task: Task,
    workdir: str | Path | None = None,
    *,
    mesh: str | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
  """Trains ``task`` for ``task.config.steps`` steps (or until ``stop_after``).

  Args:
    task: the example's :class:`Task`.
    workdir: where ``metrics.jsonl``, ``gsnr.json``, ``checkpoints/`` and ``curves.png``
      go; ``None`` trains without writing anything.
    mesh: a ``--mesh`` string such as ``"data=2,fsdp=4"`` (default: all devices on data).
    resume: continue from the latest checkpoint in ``workdir``.
    stop_after: stop (and checkpoint) after this step; the schedule still spans
      ``config.steps`` (a pre-emption, for testing ``resume``).
    progress: show a tqdm bar; ``None``: only when stdout is a terminal.

  Returns:
    The final metrics: ``step``, ``train_loss``, ``lr``, ``val_loss``, ``val_accuracy``,
    ``wall_time_s``, ``<unit>_per_s``, ``num_params``.
  """
  cfg = task.config
  if cfg.learning_rate is None or cfg.weight_decay is None:
    raise ValueError("Task.config must be resolved (config.resolved(optimizer))")
  end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
  device_mesh = mesh_lib.make_mesh(mesh)
  repl = mesh_lib.replicated(device_mesh)

  # Shapes first, then shardings, then arrays created directly in place.
  abstract_model = nnx.eval_shape(lambda: task.make_model(nnx.Rngs(cfg.seed)))
  graphdef, abs_params, abs_rest = nnx.split(abstract_model, task.trainable, ...)
  param_sh = mesh_lib.tree_shardings(device_mesh, abs_params)
  rest_sh = jax.tree.map(lambda _: repl, abs_rest)

  schedule = optim.warmup_cosine(
      cfg.learning_rate, cfg.warmup_steps, cfg.decay_steps or cfg.steps, cfg.min_lr_ratio
  )
  tx = optim.task_optimizer(task, schedule)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  # Momentum-like state follows its parameter; per-block scalars (g-SNR values, flags,
  # counts) are replicated, also the per-layer vectors of scanned layers.
  opt_sh = optax_sai.state_shardings(tx, abs_params, param_sh)

  @jax.jit
  def _init_rest():
    return nnx.split(task.make_model(nnx.Rngs(cfg.seed)), task.trainable, ...)[2]

  rest = jax.device_put(_init_rest(), rest_sh)
  batch_sh = mesh_lib.batch_sharding(device_mesh)
  # This process's rows of every global batch (all rows in a single-process job).
  rows = mesh_lib.process_rows(device_mesh, cfg.batch_size) if task.batch_rows else None
  fetch_batch = (task.train_batch if rows is None
                 else lambda s: task.train_batch(s, rows=rows))
  # One process writes the logs and plots; every process takes part in checkpointing.
  primary = jax.process_index() == 0
  train_step = jax.jit(
      make_train_step(graphdef, rest, task, tx),
      in_shardings=(param_sh, opt_sh, batch_sh, repl),
      out_shardings=(param_sh, opt_sh, repl),
      donate_argnums=(0, 1),
  )
  eval_step = jax.jit(make_eval_step(graphdef, rest, task), in_shardings=(param_sh, batch_sh),
                      out_shardings=repl)

  ckpt = Checkpointer(workdir, cfg.keep_checkpoints) if workdir is not None else None
  start = 0
  loss_sum = mesh_lib.put_replicated(np.float32(0), device_mesh)
  if ckpt is not None and resume and ckpt.latest_step() is not None:
    target = {
        "params": _abstract(abs_params, param_sh),
        "opt_state": _abstract(abs_opt, opt_sh),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),
        "loss_sum": jax.ShapeDtypeStruct((), jnp.float32, sharding=repl),
    }
    state = ckpt.restore(target)
    params, opt_state = state["params"], state["opt_state"]
    start, loss_sum = int(state["step"]), state["loss_sum"]
  else:
    if ckpt is not None and ckpt.latest_step() is not None:
      raise FileExistsError(
          f"{ckpt.directory} already holds checkpoints (latest step {ckpt.latest_step()}); "
          "pass --resume to continue that run, or use a new --workdir."
      )

    def _init_params():
      return nnx.split(task.make_model(nnx.Rngs(cfg.seed)), task.trainable, ...)[1]

    params = jax.jit(_init_params, out_shardings=param_sh)()
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)

  writer = (metrics_lib.MetricsWriter(workdir, resume_step=start)
            if workdir and primary else None)
  gsnr_table: dict[str, Any] | None = None
  if workdir is not None and cfg.optimizer != "sgd_sai" and start == 0 and end > 0:
    gsnr_table = _first_gradient_gsnr(graphdef, rest, task, params, device_mesh)

  def evaluate(p) -> dict[str, float]:
    sums: dict[str, float] = {}
    for batch in task.eval_batches():
      out = eval_step(p, mesh_lib.shard_batch(batch, device_mesh))
      for k, v in jax.device_get(out).items():
        sums[k] = sums.get(k, 0.0) + float(v)
    count = max(sums.get("count", 0.0), 1.0)
    return {"val_loss": sums["loss"] / count, "val_accuracy": sums["correct"] / count}

  record: dict[str, Any] = {}
  last_eval: dict[str, float] = {}
  bar = _progress(end, start, progress if primary else False)
  prefetch = _Prefetcher(fetch_batch, start, end)
  t0 = time.perf_counter()
  t_first: float | None = None  # time after the first (compiling) step
  first_step = start
  try:
    for step in range(start, end):
      batch = mesh_lib.shard_batch(prefetch.get(), device_mesh, rows=rows,
                                   batch_size=cfg.batch_size)
      params, opt_state, loss = train_step(params, opt_state, batch, jnp.int32(step))
      loss_sum = loss_sum + loss
      done = step + 1
      bar.update(1)
      if t_first is None:
        jax.block_until_ready(loss)
        t_first, first_step = time.perf_counter(), done
      if done % cfg.log_every == 0 or done == cfg.steps:
        # Mean over the steps since the previous log step (the sum is checkpointed, so a
        # run pre-empted between log steps resumes the same mean).
        since = done - (done - 1) // cfg.log_every * cfg.log_every
        record = {"step": done, "train_loss": float(loss_sum) / since,
                  "lr": float(schedule(done - 1))}
        loss_sum = mesh_lib.put_replicated(np.float32(0), device_mesh)
        if done % cfg.eval_every == 0 or done == cfg.steps:
          last_eval = evaluate(params)
          record.update(last_eval)
          if not bar.disable:
            bar.write(f"step {done}: val_loss {record['val_loss']:.4f} "
                      f"val_accuracy {record['val_accuracy']:.4f}")
        if writer is not None:
          writer.write(record)
        rate = (done - first_step) * task.units_per_step / max(time.perf_counter() - t_first,
                                                                1e-9)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{f"{task.unit}/s": f"{rate:.0f}"})
      if ckpt is not None and (done % cfg.ckpt_every == 0 or done == end):
        ckpt.save(done, {"params": params, "opt_state": opt_state,
                         "step": mesh_lib.put_replicated(np.int32(done), device_mesh),
                         "loss_sum": loss_sum})
  finally:
    prefetch.close()
    bar.close()
    if ckpt is not None:
      ckpt.close()
  jax.block_until_ready(params)
  t_end = time.perf_counter()

  if workdir is not None and primary:
    if cfg.optimizer == "sgd_sai":
      metrics_lib.write_gsnr(workdir, optim.gsnr_table(opt_state))
    elif gsnr_table is not None:
      metrics_lib.write_gsnr(workdir, gsnr_table)
    metrics_lib.plot_curves(workdir, title=f"{task.name} / {cfg.optimizer}")

  result = dict(record)
  result.setdefault("step", end)
  result.update(last_eval)
  steps_timed = end - first_step
  result["wall_time_s"] = t_end - t0
  result[f"{task.unit}_per_s"] = (
      steps_timed * task.units_per_step / (t_end - t_first) if t_first and steps_timed
      else float("nan")
  )
  result["num_params"] = sum(math.prod(x.shape) for x in jax.tree.leaves(abs_params))
  result["params"] = params
  result["opt_state"] = opt_state
  return result


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _first_gradient_gsnr(graphdef, rest, task: Task, params, device_mesh) -> dict[str, Any]:
  """For optimizers other than sgd_sai: the scales sgd_sai would capture at step 0."""
  batch = mesh_lib.shard_batch(task.train_batch(0), device_mesh)

  @jax.jit
  def grads(p, b):
    return jax.grad(lambda q: task.loss_fn(nnx.merge(graphdef, q, rest), b, None))(p)

  return optim.gradient_gsnr_table(grads(params, batch), task.block_axes)


def train(
    build_task: Callable[[TrainConfig, str | None], Task],
    config: TrainConfig,
    optimizer: str | None = None,
    workdir: str | Path | None = None,
    steps: int | None = None,
    *,
    resume: bool = False,
    mesh: str | None = None,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
  """Builds an example's task from ``config`` and trains it (see :func:`fit`).

  Args:
    build_task: the example's ``(config, optimizer) -> Task``.
    config: the example's config (unresolved: per-optimizer defaults are filled in here).
    optimizer: overrides ``config.optimizer``.
    workdir, resume, mesh, stop_after, progress: as in :func:`fit`.
    steps: overrides ``config.steps``.

  Returns:
    :func:`fit`'s final metrics, with the final ``params`` and ``opt_state``.
  """
  if steps is not None:
    config = dataclasses.replace(config, steps=steps)
  return fit(build_task(config, optimizer), workdir, mesh=mesh, resume=resume,
             stop_after=stop_after, progress=progress)


def main(
    argv: Sequence[str] | None,
    *,
    description: str,
    configs: Sequence[str],
    get_config: Callable[[str], TrainConfig],
    train_fn: Callable[..., dict[str, Any]],
    choices: Mapping[str, Sequence[str]] | None = None,
    extra_flags: Callable[[argparse.ArgumentParser], None] | None = None,
) -> dict[str, Any]:
  """An example's command line: parse, build the config, train, print the summary line.

  Args:
    argv: the arguments (``None``: ``sys.argv[1:]``).
    description: the ``--help`` header.
    configs: the config names (the first is the default).
    get_config: ``name -> config``.
    train_fn: ``(config, optimizer, workdir, *, resume, mesh, stop_after, progress, **extra)``
      with ``extra`` the values of ``extra_flags``'s arguments.
    choices: allowed values of some config fields (see :func:`cli.build_parser`).
    extra_flags: adds the example's own run flags (not config fields) to the parser.

  Returns:
    ``train_fn``'s result.
  """
  from examples.common import cli

  config_cls = type(get_config(configs[0]))
  parser = cli.build_parser(description, configs, config_cls, choices=choices)
  base = {a.dest for a in parser._actions}
  if extra_flags is not None:
    extra_flags(parser)
  args = parser.parse_args(argv)
  config = cli.config_from_args(args, get_config, parser)
  extra = {a.dest: getattr(args, a.dest) for a in parser._actions
           if a.dest not in base and hasattr(args, a.dest)}
  result = train_fn(config, args.optimizer, args.workdir, resume=args.resume, mesh=args.mesh,
                    stop_after=args.stop_after, progress=args.progress, **extra)
  print(cli.summary(result))
  return result

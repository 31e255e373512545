"""The training loop every example shares: jitted train/eval steps, logging, checkpoints.

An example describes itself as a :class:`Task` (how to build the model, its loss, its
evaluation sums and its batches); :func:`fit` does the rest:

* builds the mesh and initialises parameters directly in their (FSDP) shardings,
* builds the optimizer (same schedule, clipping and decay mask for all) and its state,
* runs ``jax.jit``-ed steps with explicit in/out shardings, prefetching host batches,
* logs ``metrics.jsonl``, evaluates, checkpoints with orbax and resumes exactly,
* writes ``gsnr.json`` and ``curves.png`` at the end.

Determinism: a batch is a pure function of ``(seed, step)`` and dropout keys are
``fold_in(seed, step)``, so a run resumed from any checkpoint repeats an uninterrupted one.

Faults stop a run with a :class:`RunError` (or a
:class:`~examples.common.checkpoint.CheckpointError`) whose message says what happened and
what to do; the command line prints it alone. They are: a workdir that already holds a
run (without ``--resume``), a resume whose config would change the run (a longer ``--steps``
re-planning the cosine, another learning rate, ...), a damaged checkpoint, a non-finite
training loss (the run stops at the log or checkpoint step that sees it, before that state
is saved; wrap the optimizer in ``optax.apply_if_finite`` through ``Task.wrap_optimizer``
to skip such steps instead), and a folder that cannot be written (disk full, read-only).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
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
from examples.common.checkpoint import Checkpointer, CheckpointError
from examples.common.config import TrainConfig

Batch = Mapping[str, np.ndarray]
log = logging.getLogger(__name__)


class RunError(Exception):
  """A run cannot start or go on; the message says why and what to do.

  Attributes:
    exit_status: what the command line exits with (2: the command asked for something
      the workdir cannot give, as a usage error; 1: a failure during the run).
  """

  exit_status = 1


class WorkdirInUseError(RunError, FileExistsError):
  """A fresh run was asked for in a workdir that already holds a run's checkpoints."""

  exit_status = 2


class ResumeMismatchError(RunError):
  """``--resume`` with a config that would change the run being resumed."""

  exit_status = 2


class NonFiniteLossError(RunError):
  """The training loss became NaN or infinite."""


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
    gsnr_fields: ``(task, params, opt_state) -> {name: value}`` of extra per-block facts
      for ``gsnr.json``, called after training; when given, ``gsnr.json`` is
      ``{"scales": <the scale table>, **fields}`` and the fields are also returned by
      :func:`fit`. ``None``: ``gsnr.json`` is the scale table alone.
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
  gsnr_fields: Callable[[Task, Any, Any], Mapping[str, Any]] | None = None


def abstract_params(make_model: Callable[[nnx.Rngs], nnx.Module]) -> nnx.State:
  """Parameter shapes of a model without allocating it (``nnx.eval_shape``)."""
  model = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


def count_params(make_model: Callable[[nnx.Rngs], nnx.Module]) -> int:
  """Number of parameters, counted from shapes only."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(make_model)))


def tree_nbytes(tree: Any) -> int:
  """Bytes of a pytree's leaves, from shapes and dtypes only (arrays or ``ShapeDtypeStruct``)."""
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def init_params(task: Task, shardings: Any = None) -> nnx.State:
  """The trainable parameters at step 0: a pure function of ``task.config.seed``.

  Args:
    task: the example's :class:`Task`.
    shardings: where to create them (a pytree of shardings like the parameters), or
      ``None`` for the default device.

  Returns:
    The ``task.trainable`` state of a freshly built model.
  """

  def build():
    return nnx.split(task.make_model(nnx.Rngs(task.config.seed)), task.trainable, ...)[1]

  return jax.jit(build, out_shardings=shardings)()


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
    resume_step: int | None = None,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
  """Trains ``task`` for ``task.config.steps`` steps (or until ``stop_after``).

  Args:
    task: the example's :class:`Task`.
    workdir: where ``metrics.jsonl``, ``gsnr.json``, ``checkpoints/``, ``curves.png`` and
      ``config.json`` go; ``None`` trains without writing anything.
    mesh: a ``--mesh`` string such as ``"data=2,fsdp=4"`` (default: all devices on data).
    resume: continue from the latest checkpoint in ``workdir``. The config must be the
      one the run started with (``config.json``), except for bookkeeping fields
      (:data:`RESUME_MAY_CHANGE`); ``steps`` may grow only with the cosine horizon kept,
      ``decay_steps`` set to the original ``steps``.
    resume_step: with ``resume``: continue from this checkpoint instead of the latest
      (the later ones are deleted), e.g. when the latest is damaged.
    stop_after: stop (and checkpoint) after this step; the schedule still spans
      ``config.steps`` (a pre-emption, for testing ``resume``).
    progress: show a tqdm bar; ``None``: only when stdout is a terminal.

  Returns:
    The final metrics: ``step``, ``train_loss``, ``lr``, ``val_loss``, ``val_accuracy``,
    ``wall_time_s``, ``<unit>_per_s`` (``None`` when no step after the first was timed),
    ``num_params``, the final ``params`` and ``opt_state``, and ``task.gsnr_fields``.

  Raises:
    RunError: the workdir holds another run, the resumed run's config differs, or the
      training loss is not finite (see the module docstring).
    CheckpointError: a checkpoint cannot be written or read.
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

  if resume_step is not None and not resume:
    raise ResumeMismatchError("--resume-step needs --resume")
  ckpt = None
  if workdir is not None:
    workdir = Path(workdir)
    ckpt = Checkpointer(workdir, cfg.keep_checkpoints)
  start = 0
  loss_sum = mesh_lib.put_replicated(np.float32(0), device_mesh)
  if ckpt is not None and resume and ckpt.latest_step() is not None:
    restore_at = ckpt.latest_step() if resume_step is None else resume_step
    _check_resumable(workdir, cfg, restore_at)
    target = {
        "params": _abstract(abs_params, param_sh),
        "opt_state": _abstract(abs_opt, opt_sh),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),
        "loss_sum": jax.ShapeDtypeStruct((), jnp.float32, sharding=repl),
    }
    state = ckpt.restore(target, restore_at)
    params, opt_state = state["params"], state["opt_state"]
    start, loss_sum = int(state["step"]), state["loss_sum"]
    if (dropped := ckpt.delete_after(start)) and primary:  # every process takes part
      log.warning("resuming from step %d: deleted the later checkpoints %s", start, dropped)
  else:
    if ckpt is not None and ckpt.latest_step() is not None:
      raise WorkdirInUseError(
          f"{ckpt.directory} already holds checkpoints (latest step {ckpt.latest_step()}); "
          "pass --resume to continue that run, or use a new --workdir."
      )
    if resume_step is not None:
      raise ResumeMismatchError(f"--resume-step {resume_step}: {workdir} holds no checkpoint")
    if workdir is not None and primary:
      metrics_lib.write_config(workdir, _config_record(cfg))
    params = init_params(task, param_sh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)

  writer = (metrics_lib.MetricsWriter(workdir, resume_step=start)
            if workdir and primary else None)
  gsnr_table: dict[str, Any] | None = None
  if workdir is not None and cfg.optimizer != "sgd_sai" and end > start:
    # What sgd_sai would capture from the first gradient (at the initial parameters, also
    # when resuming, so a resumed run writes the uninterrupted run's table).
    first = params if start == 0 else init_params(task, param_sh)
    gsnr_table = _first_gradient_gsnr(graphdef, rest, task, first, device_mesh)

  def evaluate(p) -> dict[str, float]:
    sums: dict[str, float] = {}
    for batch in task.eval_batches():
      out = eval_step(p, mesh_lib.shard_batch(batch, device_mesh))
      for k, v in jax.device_get(out).items():
        sums[k] = sums.get(k, 0.0) + float(v)
    count = max(sums.get("count", 0.0), 1.0)
    return {"val_loss": sums["loss"] / count, "val_accuracy": sums["correct"] / count}

  def last_checkpoint() -> str:
    last = ckpt.latest_step() if ckpt is not None else None
    return (f"the last checkpoint (step {last}) predates it" if last is not None
            else "no checkpoint was written")

  record: dict[str, Any] = {}
  last_eval: dict[str, float] = {}
  bar = _progress(end, start, progress if primary else False)
  prefetch = _Prefetcher(fetch_batch, start, end)
  t0 = time.perf_counter()
  t_first: float | None = None  # time after the first (compiling) step
  first_step = start
  completed = False
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
      # Mean over the steps since the previous log step (the sum is checkpointed, so a
      # run pre-empted between log steps resumes the same mean).
      since = done - (done - 1) // cfg.log_every * cfg.log_every
      if done % cfg.log_every == 0 or done == cfg.steps:
        record = {"step": done, "train_loss": float(loss_sum) / since,
                  "lr": float(schedule(done - 1))}
        loss_sum = mesh_lib.put_replicated(np.float32(0), device_mesh)
        finite = math.isfinite(record["train_loss"])
        if finite and (done % cfg.eval_every == 0 or done == cfg.steps):
          last_eval = evaluate(params)
          record.update(last_eval)
          if not bar.disable:
            bar.write(f"step {done}: val_loss {record['val_loss']:.4f} "
                      f"val_accuracy {record['val_accuracy']:.4f}")
        if writer is not None:
          _write_or_stop(writer.write, record, writer.path, last_checkpoint)
        if not finite:
          raise NonFiniteLossError(
              f"the training loss (the mean of steps {done - since + 1}-{done}) is "
              f"{record['train_loss']} at step {done}; {last_checkpoint()}. Lower the "
              f"learning rate (--lr) or clip harder (--clip-norm), in a new --workdir.")
        rate = (done - first_step) * task.units_per_step / max(time.perf_counter() - t_first,
                                                                1e-9)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{f"{task.unit}/s": f"{rate:.0f}"})
      if ckpt is not None and (done % cfg.ckpt_every == 0 or done == end):
        if not math.isfinite(float(loss_sum)):  # never checkpoint a diverged state
          raise NonFiniteLossError(
              f"the training loss is not finite between steps {done - since + 1} and {done}; "
              f"{last_checkpoint()}. Lower the learning rate (--lr) or clip harder "
              f"(--clip-norm), in a new --workdir.")
        ckpt.save(done, {"params": params, "opt_state": opt_state,
                         "step": mesh_lib.put_replicated(np.int32(done), device_mesh),
                         "loss_sum": loss_sum})
    completed = True
  finally:
    prefetch.close()
    bar.close()
    if ckpt is not None:
      if completed:
        ckpt.close()
      else:  # already failing: do not let a second error from the close hide the first
        try:
          ckpt.close()
        except CheckpointError as e:
          log.error("%s", e)
  jax.block_until_ready(params)
  t_end = time.perf_counter()

  fields = dict(task.gsnr_fields(task, params, opt_state)) if task.gsnr_fields else {}
  if workdir is not None and primary:
    table = (optim.gsnr_table(opt_state) if cfg.optimizer == "sgd_sai" else gsnr_table)
    if table is not None:
      _write_or_stop(metrics_lib.write_gsnr, workdir,
                     workdir / metrics_lib.GSNR_FILE, last_checkpoint,
                     {"scales": table, **fields} if fields else table)
    _write_or_stop(metrics_lib.plot_curves, workdir, workdir / metrics_lib.CURVES_FILE,
                   last_checkpoint, title=f"{task.name} / {cfg.optimizer}")

  result = dict(record)
  result.setdefault("step", end)
  result.update(last_eval)
  steps_timed = end - first_step
  result["wall_time_s"] = t_end - t0
  result[f"{task.unit}_per_s"] = (
      steps_timed * task.units_per_step / (t_end - t_first) if t_first and steps_timed
      else None
  )
  result["num_params"] = sum(math.prod(x.shape) for x in jax.tree.leaves(abs_params))
  result.update(fields)
  result["params"] = params
  result["opt_state"] = opt_state
  return result


# Config fields a resumed run may change: they do not change what is computed.
RESUME_MAY_CHANGE = frozenset({
    "steps", "decay_steps", "eval_every", "eval_batches", "ckpt_every", "keep_checkpoints",
    "data_dir", "base_data_dir", "base_dir", "base_checkpoint",
})


def _config_record(cfg: TrainConfig) -> dict[str, Any]:
  """The config as JSON-able ``{field: value}`` (tables as plain dicts)."""
  return {f.name: (dict(v) if isinstance(v := getattr(cfg, f.name), Mapping) else v)
          for f in dataclasses.fields(cfg)}


def _check_resumable(workdir: Path, cfg: TrainConfig, step: int) -> None:
  """Refuses a resume that would silently change the run (see :func:`fit`'s ``resume``)."""
  recorded = metrics_lib.read_config(workdir)
  if recorded is None:
    log.warning("%s has no %s (an older run): resuming without checking the config",
                workdir, metrics_lib.CONFIG_FILE)
    return
  now = json.loads(json.dumps(_config_record(cfg)))  # the same JSON round trip
  changed = sorted(k for k in set(recorded) | set(now)
                   if k not in RESUME_MAY_CHANGE and recorded.get(k) != now.get(k))
  if changed:
    diffs = ", ".join(f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in changed)
    raise ResumeMismatchError(
        f"--resume: this command changes the run in {workdir} ({diffs}); resume with the "
        f"values it started with (its {metrics_lib.CONFIG_FILE}), or start a new --workdir.")
  old_horizon = recorded.get("decay_steps") or recorded["steps"]
  new_horizon = cfg.decay_steps or cfg.steps
  if new_horizon != old_horizon:
    raise ResumeMismatchError(
        f"--resume: the run in {workdir} was planned for {recorded['steps']} steps (cosine "
        f"horizon {old_horizon}); this command's horizon is {new_horizon}, which would change "
        f"the learning rate from step {step} on. To train longer on the same schedule keep "
        f"the horizon: add --decay-steps {old_horizon} (after step {old_horizon} the "
        f"learning rate stays at its floor), or start a new --workdir.")
  if cfg.steps < step:
    raise ResumeMismatchError(
        f"--resume: the checkpoint is at step {step}, past --steps {cfg.steps}; pass "
        f"--steps {recorded['steps']} (what the run was started with).")


def _write_or_stop(write: Callable[..., Any], first: Any, path: Path,
                   last_checkpoint: Callable[[], str], *args: Any, **kwargs: Any) -> Any:
  """``write(first, *args, **kwargs)``; an ``OSError`` (disk full, ...) becomes a RunError."""
  try:
    return write(first, *args, **kwargs)
  except OSError as e:
    raise RunError(f"cannot write {path} ({e.strerror or e}); {last_checkpoint()}. Free "
                   "space or fix the folder, then continue with --resume.") from e


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
    build_task: Callable[..., Task],
    config: TrainConfig,
    optimizer: str | None = None,
    workdir: str | Path | None = None,
    steps: int | None = None,
    *,
    resume: bool = False,
    resume_step: int | None = None,
    mesh: str | None = None,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
  """Builds an example's task from ``config`` and trains it (see :func:`fit`).

  Args:
    build_task: the example's ``(config, optimizer) -> Task`` (bind its own options
      with ``functools.partial``).
    config: the example's config (unresolved: per-optimizer defaults are filled in here).
    optimizer: overrides ``config.optimizer``.
    workdir, resume, resume_step, mesh, stop_after, progress: as in :func:`fit`.
    steps: overrides ``config.steps``.

  Returns:
    :func:`fit`'s final metrics, with the final ``params`` and ``opt_state``, and the
    ``task`` that was trained.
  """
  if steps is not None:
    config = dataclasses.replace(config, steps=steps)
  task = build_task(config, optimizer)
  result = fit(task, workdir, mesh=mesh, resume=resume, resume_step=resume_step,
               stop_after=stop_after, progress=progress)
  result["task"] = task
  return result


def _drop_tracebacks(record: logging.LogRecord) -> bool:
  """A logging filter that keeps a record's first line, without any traceback."""
  lines = record.getMessage().splitlines()
  record.msg, record.args = (lines[0] if lines else ""), ()
  record.exc_info, record.exc_text, record.stack_info = None, None, None
  return True


def main(
    argv: Sequence[str] | None,
    *,
    description: str,
    configs: Sequence[str],
    get_config: Callable[[str], TrainConfig],
    train_fn: Callable[..., dict[str, Any]],
    choices: Mapping[str, Sequence[str]] | None = None,
    extra_flags: Callable[[argparse.ArgumentParser], None] | None = None,
    prog: str | None = None,
    default_workdir: Callable[[TrainConfig, str], str] | None = None,
) -> dict[str, Any]:
  """An example's command line: parse, check, build the config, train, report.

  Every bad value is refused before anything is written (a usage error naming the flag,
  exit status 2); a :class:`RunError` or ``CheckpointError`` is printed alone (no
  traceback) with its exit status. Standard output gets one JSON line of the final
  metrics (full-precision floats; ``null`` for a value that is not a number); standard
  error gets a short human summary saying where the outputs are.

  Args:
    argv: the arguments (``None``: ``sys.argv[1:]``).
    description: the ``--help`` header.
    configs: the config names (the first is the default).
    get_config: ``name -> config``.
    train_fn: ``(config, optimizer, workdir, *, resume, resume_step, mesh, stop_after,
      progress, **extra)`` with ``extra`` the values of ``extra_flags``'s arguments.
    choices: allowed values of some config fields (see :func:`cli.build_parser`).
    extra_flags: adds the example's own run flags (not config fields) to the parser.
    prog: the command in usage lines (``python -m examples.gpt2.train``).
    default_workdir: ``(config, optimizer) -> folder`` used when ``--workdir`` is not
      given (``None``: such runs write nothing).

  Returns:
    ``train_fn``'s result.
  """
  from examples.common import cli

  config_cls = type(get_config(configs[0]))
  parser = cli.build_parser(description, configs, config_cls, choices=choices, prog=prog)
  base = set(vars(parser.parse_args([])))
  if extra_flags is not None:
    extra_flags(parser)
  args = parser.parse_args(argv)
  config = cli.config_from_args(args, get_config, parser)
  optimizer = args.optimizer or config.optimizer
  if args.resume_step is not None and not args.resume:
    parser.error("--resume-step: needs --resume")
  try:
    mesh_lib.join_distributed()  # before the device count (a multi-process job's count)
    mesh_lib.parse_mesh(args.mesh, jax.device_count())
  except ValueError as e:
    parser.error(f"--mesh: {e}")
  workdir = args.workdir
  if workdir is None and default_workdir is not None:
    workdir = default_workdir(config, optimizer)
    print(f"no --workdir given: writing to {workdir}", file=sys.stderr)
  extra = {k: v for k, v in vars(args).items() if k not in base}
  # Orbax logs a failed background save with a traceback per thread and per write task
  # (hundreds of lines); keep one line of each, the error below says what to do.
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_drop_tracebacks)
  try:
    result = train_fn(config, args.optimizer, workdir, resume=args.resume,
                      resume_step=args.resume_step, mesh=args.mesh,
                      stop_after=args.stop_after, progress=args.progress, **extra)
  except (RunError, CheckpointError) as e:
    parser.exit(getattr(e, "exit_status", 1), f"{parser.prog}: error: {e}\n")
  print(cli.summary(result), flush=True)
  print(cli.human_summary(result, workdir), file=sys.stderr)
  return result

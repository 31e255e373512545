"""LoRA fine-tuning of the GPT-2 example with SGD-SaI or a baseline optimizer.

    python -m examples.lora.train --config tiny --optimizer sgd_sai --rank 8 --steps 150 \
        --workdir runs/lora-tiny
    python -m examples.lora.train --config tiny --optimizer adamw --rank 0 --workdir runs/full-ft
    python -m examples.lora.train --config tiny --base-checkpoint runs/gpt2-tiny ...

Without ``--base-checkpoint`` the base model is first pretrained with the GPT-2 example's
own code on ``base_dataset`` (English prose, ``pydoc``; minutes on a CPU, announced on
standard error, with a progress bar on a terminal) and cached under ``base_dir``; later
runs reuse it. Without ``--workdir`` the command line writes to
``runs/lora-<config>-<optimizer>-r<rank>``. Fine-tuning then trains only the adapters
(``nnx.LoRAParam``; the base ``nnx.Param`` weights are frozen and get no optimizer state)
on Python source code.
``--rank 0`` fine-tunes every parameter instead (the full fine-tuning ceiling);
``--pin-a`` zeroes A's gradient (an ablation: the released ``sgd-sai`` 1.0.3's training of
LoRA). The study of these arms is ``python -m benchmarks.study lora``.

In Python: ``train(get_config("tiny"), optimizer="sgd_sai", workdir=..., steps=100)``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_sai
from examples.common import checkpoint, optim, training
from examples.gpt2 import configs as gpt_configs
from examples.gpt2 import data as gpt_data
from examples.gpt2 import train as gpt_train
from examples.gpt2.model import GPT
from examples.lora import configs
from examples.lora import data as lora_data
from examples.lora.configs import LoRAConfig
from examples.lora.model import add_adapters

# --- the base model ---------------------------------------------------------------------


def base_config(cfg: LoRAConfig) -> gpt_configs.GPTConfig:
  """The GPT-2 example's ``tiny`` recipe with this run's model fields, on ``base_dataset``."""
  model_fields = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "dtype",
                  "tokenizer")
  return dataclasses.replace(
      gpt_configs.get_config("tiny"), **{f: getattr(cfg, f) for f in model_fields},
      dataset=cfg.base_dataset, data_dir=cfg.base_data_dir, steps=cfg.base_steps,
      seed=cfg.base_seed, optimizer=cfg.base_optimizer, learning_rate=cfg.base_learning_rate,
      weight_decay=cfg.base_weight_decay, ckpt_every=cfg.base_steps,
      eval_every=cfg.base_steps, dropout=0.0, scan_layers=False,
  )


def base_workdir(cfg: LoRAConfig) -> Path:
  """Where the pretrained base is cached: one folder per base recipe."""
  key = (f"{cfg.base_dataset}-L{cfg.n_layer}-H{cfg.n_head}-D{cfg.n_embd}-T{cfg.block_size}"
         f"-{cfg.base_optimizer}-lr{cfg.base_learning_rate:g}-wd{cfg.base_weight_decay:g}"
         f"-{cfg.base_steps}steps-seed{cfg.base_seed}")
  return Path(cfg.base_dir) / key


def load_base(workdir: str | Path) -> dict:
  """The parameters of a GPT-2 example run's latest checkpoint, as a pure dict."""
  return checkpoint.restore_pure(workdir, item="params")


def ensure_base(cfg: LoRAConfig, progress: bool | None = None) -> tuple[dict, str]:
  """The base parameters and where they come from (pretraining them first if needed)."""
  if cfg.base_checkpoint is not None:
    return load_base(cfg.base_checkpoint), str(cfg.base_checkpoint)
  workdir = base_workdir(cfg)
  latest = None
  if (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    latest = ckpt.latest_step()
    ckpt.close()
  if latest != cfg.base_steps:
    # Pretrain with the GPT-2 example (resuming a pre-empted pretraining run).
    what = ("resuming" if latest is not None else "pretraining") + " the base model first"
    print(f"{what}: {cfg.base_steps} {cfg.base_optimizer} steps on {cfg.base_dataset}, "
          f"cached in {workdir} and reused by later runs (minutes on a CPU)", file=sys.stderr)
    gpt_train.train(base_config(cfg), workdir=workdir, resume=latest is not None,
                    progress=progress)
  return load_base(workdir), str(workdir)


# --- instrumentation: the step each block's g-SNR was captured at -----------------------


class CaptureStepState(NamedTuple):
  """``inner``'s state, the step count, and per g-SNR block the step it was captured at."""

  inner: optax.OptState
  count: jax.Array
  captured_at: Any  # like ScaleByGsnrState.captured, int32, -1 until captured


def track_capture_steps(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Wraps an optimizer containing ``scale_by_gsnr``; records when each block is captured.

  Step numbers are 1-based (the update that captured it). The record is part of the
  optimizer state (arrays only), so it is checkpointed and survives a resume.
  """

  def init(params):
    inner = tx.init(params)
    captured = optax_sai.find_gsnr_state(inner).captured
    return CaptureStepState(inner, jnp.zeros([], jnp.int32),
                            jax.tree.map(lambda c: jnp.full(c.shape, -1, jnp.int32), captured))

  def update(updates, state, params=None):
    updates, inner = tx.update(updates, state.inner, params)
    count = state.count + 1
    captured = optax_sai.find_gsnr_state(inner).captured
    at = jax.tree.map(lambda a, c: jnp.where((a < 0) & c, count, a), state.captured_at,
                      captured)
    return updates, CaptureStepState(inner, count, at)

  return optax.GradientTransformation(init, update)


def capture_steps(opt_state: Any) -> dict[str, int]:
  """``{parameter path: step its g-SNR was captured at (-1: never)}``."""
  found = optax.tree.get_all_with_path(opt_state, CaptureStepState.__name__,
                                       filtering=lambda _, v: isinstance(v, CaptureStepState))
  if not found:
    return {}
  at = found[0][1].captured_at
  return {optim.path_str(p): int(np.asarray(v).max()) if np.asarray(v).min() >= 0 else -1
          for p, v in jax.tree_util.tree_flatten_with_path(at)[0]}


def adapter_gsnr_fields(task: training.Task, params: Any, opt_state: Any) -> dict[str, Any]:
  """``gsnr.json``'s extra fields (``Task.gsnr_fields``): ``adapters``, ``captured_at_step``."""
  fields: dict[str, Any] = {"adapters": adapter_blocks(task, params, opt_state)}
  if steps := capture_steps(opt_state):
    fields["captured_at_step"] = steps
  return fields


def _adapter_decay_mask(params: Any) -> Any:
  return jax.tree.map(lambda _: True, params)


def pin_a_gradients() -> optax.GradientTransformation:
  """ABLATION, not a fix (``LoRAConfig.pin_a``): zero every LoRA ``A`` gradient.

  This reproduces what the released ``sgd-sai`` 1.0.3 does with the standard LoRA
  initialisation: A's gradient is exactly zero at step 1 (B = 0), so 1.0.3 stores a g-SNR
  of 0 for A and A's update is weight decay only, forever. With A's gradient zeroed,
  optax_sai never captures A (its scale stays 0) and A only decays: the same training. The
  task inserts it after gradient clipping, so the clipping norm still counts A's gradient,
  as a clipping step before the 1.0.3 optimizer would.
  """

  def is_a(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: optim.path_str(path).endswith("lora_a"), params)

  return optax.masked(optax.set_to_zero(), is_a)


# --- the task -----------------------------------------------------------------------------


def build_task(
    config: LoRAConfig,
    optimizer: str | None = None,
    *,
    base: dict | None = None,
    progress: bool | None = None,
) -> training.Task:
  """The fine-tuning task: base loaded (or pretrained), adapters added, data, loss.

  Args:
    config: the run's config (``pin_a``: the 1.0.3 ablation, :func:`pin_a_gradients`
      after gradient clipping and before the optimizer).
    optimizer: overrides ``config.optimizer``.
    base: the base parameters (a pure dict); default: :func:`ensure_base`.
    progress: the tqdm bar of a base pretraining run.

  Returns:
    A :class:`examples.common.training.Task` training only the adapters (``rank > 0``)
    or every parameter (``rank == 0``).
  """
  cfg = config.resolved(optimizer)
  if cfg.scan_layers:
    raise ValueError("the LoRA example uses the unrolled GPT-2 (scan_layers=False)")
  if cfg.dataset == lora_data.DATASET:
    data_dir = lora_data.ensure_pysource(cfg.data_dir)
    meta = gpt_data.load_meta(data_dir)
  else:
    data_dir = gpt_data.resolve_data_dir(cfg.dataset, cfg.data_dir)
    meta = gpt_data.ensure_data(data_dir, cfg.dataset, cfg.tokenizer)
  if cfg.vocab_size is None:
    cfg = dataclasses.replace(cfg, vocab_size=int(meta["vocab_size"]))
  if base is None:
    base, _ = ensure_base(cfg, progress)
  if base["wte"]["embedding"].shape[0] != cfg.vocab_size:
    raise ValueError(f"the base has vocabulary {base['wte']['embedding'].shape[0]}, "
                     f"the fine-tuning data {cfg.vocab_size}")
  data = gpt_data.LMData(data_dir, cfg.block_size, cfg.batch_size, cfg.seed, cfg.eval_batches)

  def make_model(rngs: nnx.Rngs) -> GPT:
    model = GPT(cfg, rngs=rngs)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, base)
    nnx.update(model, state)
    return add_adapters(model, cfg.rank, rngs) if cfg.rank > 0 else model

  wrap = None
  if cfg.pin_a or cfg.optimizer == "sgd_sai":

    def wrap(tx: optax.GradientTransformation) -> optax.GradientTransformation:
      if cfg.pin_a:
        tx = optax.chain(pin_a_gradients(), tx)
      return track_capture_steps(tx) if cfg.optimizer == "sgd_sai" else tx

  return training.Task(
      name=f"lora-{cfg.name}-r{cfg.rank}" if cfg.rank else f"full-ft-{cfg.name}",
      config=cfg,
      make_model=make_model,
      loss_fn=gpt_train.lm_loss,
      eval_fn=gpt_train.lm_eval,
      train_batch=data.train_batch,
      eval_batches=data.val_batches,
      unit="tokens",
      units_per_step=cfg.batch_size * cfg.block_size,
      dropout=cfg.dropout > 0,
      trainable=nnx.LoRAParam if cfg.rank > 0 else nnx.Param,
      decay_mask=_adapter_decay_mask if cfg.rank > 0 else None,
      wrap_optimizer=wrap,
      gsnr_fields=adapter_gsnr_fields if cfg.rank > 0 else None,
  )


def adapter_blocks(task: training.Task, params: Any, opt_state: Any) -> dict[str, Any]:
  """Per adapter block: g-SNR scale and capture step (sgd_sai), how far it moved.

  ``rel_change`` is ``||X_T - X_0||_F / ||X_0||_F`` for ``A`` (random at start) and
  ``||B_T||_F`` for ``B`` (zero at start; reported as ``norm``).
  """
  start = {optim.path_str(p): np.asarray(v)
           for p, v in jax.tree_util.tree_flatten_with_path(training.init_params(task))[0]}
  end = {optim.path_str(p): np.asarray(v)
         for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  scales = optim.gsnr_table(opt_state) if task.config.optimizer == "sgd_sai" else {}
  steps = capture_steps(opt_state)
  blocks: dict[str, dict[str, Any]] = {}
  for path, x1 in end.items():
    x0 = start[path]
    row: dict[str, Any] = {"shape": list(x1.shape)}
    if path.endswith("lora_a"):
      row["rel_change"] = float(np.linalg.norm(x1 - x0) / np.linalg.norm(x0))
    elif path.endswith("lora_b"):
      row["norm"] = float(np.linalg.norm(x1))
    else:
      continue
    if path in scales:
      row["scale"] = scales[path]
    if path in steps:
      row["captured_at_step"] = steps[path]
    blocks[path] = row
  return blocks


def adapter_summary(blocks: dict[str, Any]) -> dict[str, Any]:
  """Means over :func:`adapter_blocks`: how far A moved, ‖B‖, when the A blocks were captured."""
  a_rows = [r for p, r in blocks.items() if p.endswith("lora_a")]
  summary: dict[str, Any] = {}
  if a_rows:
    summary["a_rel_change_mean"] = float(np.mean([r["rel_change"] for r in a_rows]))
    summary["b_norm_mean"] = float(np.mean([r["norm"] for p, r in blocks.items()
                                            if p.endswith("lora_b")]))
    if all("captured_at_step" in r for r in a_rows):
      at = [r["captured_at_step"] for r in a_rows]
      summary["a_captured"] = sum(s >= 0 for s in at)
      summary["a_blocks"] = len(at)
      summary["a_capture_step_max"] = max(at) if min(at) >= 0 else -1
  return summary


def state_bytes(task: training.Task, optimizer: str | None = None) -> dict[str, int]:
  """Bytes of the trainable parameters and of the optimizer state (shapes only)."""
  cfg = task.config if optimizer is None else dataclasses.replace(task.config,
                                                                  optimizer=optimizer)
  abstract = nnx.eval_shape(lambda: task.make_model(nnx.Rngs(0)))
  trainable = nnx.state(abstract, task.trainable)
  everything = nnx.state(abstract, nnx.Param)
  # The optimizer as fit assembles it, without the example's capture-step instrumentation.
  tx = optim.task_optimizer(dataclasses.replace(task, config=cfg, wrap_optimizer=None), 1e-3,
                            cfg.weight_decay or 0.0)
  return {"params_bytes": training.tree_nbytes(everything),
          "trainable_bytes": training.tree_nbytes(trainable),
          "opt_state_bytes": training.tree_nbytes(jax.eval_shape(tx.init, trainable))}


def train(
    config: LoRAConfig,
    optimizer: str | None = None,
    workdir: str | Path | None = None,
    steps: int | None = None,
    *,
    base: dict | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
  """Fine-tunes and returns the final metrics plus ``adapters`` (see :func:`adapter_blocks`),
  their :func:`adapter_summary` and the :func:`state_bytes`.

  Keyword arguments (``resume``, ``resume_step``, ``mesh``, ``stop_after``, ``progress``)
  are those of :func:`examples.common.training.fit`; ``base`` that of :func:`build_task`.
  """
  build = functools.partial(build_task, base=base, progress=kwargs.get("progress"))
  result = training.train(build, config, optimizer, workdir, steps, **kwargs)
  result.setdefault("adapters", {})  # full fine-tuning (rank 0) has none
  result.update(adapter_summary(result["adapters"]))
  result.update(state_bytes(result["task"]))
  return result


def default_workdir(config: LoRAConfig, optimizer: str) -> str:
  """Where the command line writes without ``--workdir``: ``runs/lora-tiny-sgd_sai-r8``."""
  return f"runs/lora-{config.name}-{optimizer}-r{config.rank}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line (``--help`` lists the flags; any config field: ``--set key=value``)."""
  return training.main(argv, description=__doc__.split("\n\n")[0], configs=configs.CONFIGS,
                       get_config=configs.get_config, train_fn=train,
                       prog="python -m examples.lora.train", default_workdir=default_workdir,
                       choices={"dtype": ("float32", "bfloat16")})


if __name__ == "__main__":
  main()

"""The command line both ``train.py`` scripts share (the contract: keep these flag names)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from examples.common.config import OPTIMIZERS


def base_parser(description: str, configs: Sequence[str]) -> argparse.ArgumentParser:
  """Flags common to every example; an example adds its own to the returned parser."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--config", default="tiny", choices=list(configs), help="default: tiny")
  p.add_argument("--optimizer", default="sgd_sai", choices=OPTIMIZERS, help="default: sgd_sai")
  p.add_argument("--steps", type=int, help="training steps (the schedule's length)")
  p.add_argument("--workdir", help="metrics.jsonl, gsnr.json, checkpoints/, curves.png")
  p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
  p.add_argument("--mesh", default=None, help="e.g. 'data=2,fsdp=4' (default: all on data)")
  g = p.add_argument_group("config overrides")
  g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
  g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float)
  g.add_argument("--batch-size", type=int, help="global batch size")
  g.add_argument("--warmup-steps", "--warmup", dest="warmup_steps", type=int)
  g.add_argument("--decay-steps", type=int, help="cosine horizon (default: --steps)")
  g.add_argument("--seed", type=int)
  g.add_argument("--clip-norm", type=float, help="global-norm clipping; 0 turns it off")
  g.add_argument("--momentum", type=float)
  g.add_argument("--log-every", type=int)
  g.add_argument("--eval-every", type=int)
  g.add_argument("--eval-batches", type=int)
  g.add_argument("--ckpt-every", type=int)
  g.add_argument("--data-dir")
  p.add_argument("--stop-after", type=int,
                 help="stop after this step (simulated pre-emption; the schedule keeps --steps)")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="tqdm bar (default: only when stdout is a terminal)")
  return p


_OVERRIDES = ("learning_rate", "weight_decay", "batch_size", "warmup_steps", "decay_steps",
              "seed", "clip_norm", "momentum", "log_every", "eval_every", "eval_batches",
              "ckpt_every", "data_dir", "steps")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
  """The config fields set on the command line (unset flags are omitted)."""
  return {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k, None) is not None}


def summary(result: Mapping[str, Any]) -> str:
  """The final metrics as one JSON line (arrays left out)."""
  return json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str)})

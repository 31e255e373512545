"""The command line every example's ``train.py`` shares, generated from its config dataclass.

Run flags: ``--config NAME``, ``--optimizer NAME``, ``--workdir DIR``, ``--resume``,
``--resume-step N``, ``--mesh data=2,fsdp=4``, ``--stop-after N``, ``--[no-]progress``.

Config overrides, all through :func:`examples.common.config.apply_overrides` (so they are
checked against the dataclass's fields and types the same way, applied in command-line
order):

* ``--set key=value [key=value ...]`` for any field, including table entries such as
  ``--set learning_rates.adamw=1e-3``;
* a ``--field-name VALUE`` flag for every scalar field (``--steps 50``, ``--clip-norm 0``,
  ``--scan-layers`` / ``--no-scan-layers`` for booleans), generated from the dataclass,
  plus the short aliases ``--lr``, ``--wd`` and ``--warmup``.

Adding a field to a config dataclass is all it takes to make it settable. A value the config
rejects (:meth:`examples.common.config.TrainConfig.check`) is a usage error naming the flag,
raised before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from examples.common.config import OPTIMIZERS, ConfigError, apply_overrides, field_types

# Short spellings of a few fields (the documented flags).
ALIASES = {"learning_rate": ("--lr",), "weight_decay": ("--wd",), "warmup_steps": ("--warmup",)}
# Fields that are run flags (``--optimizer``) or the config's own name.
_NOT_FLAGS = ("name", "optimizer")
_HELP = {
    "steps": "training steps (the schedule's length)",
    "batch_size": "global batch size",
    "learning_rate": "peak learning rate (default: the config's learning_rates[optimizer])",
    "weight_decay": "decoupled weight decay (default: the config's weight_decays[optimizer])",
    "decay_steps": "cosine horizon (default: --steps)",
    "clip_norm": "global-norm gradient clipping; 0 or none turns it off",
    "data_dir": "folder holding the dataset",
}


class _Override(argparse.Action):
  """Appends ``(field, text)`` to ``namespace.overrides`` (kept in command-line order)."""

  def __init__(self, option_strings, dest, field: str | None = None, **kwargs):
    self.field = field
    super().__init__(option_strings, dest, **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    items = getattr(namespace, "overrides", None) or []
    if self.field is None:  # --set key=value ...
      for text in values:
        key, sep, value = text.partition("=")
        if not sep:
          parser.error(f"--set {text!r}: expected key=value")
        items.append((key, value))
    elif self.nargs == 0:  # --flag / --no-flag
      items.append((self.field, "false" if option_string.startswith("--no-") else "true"))
    else:
      items.append((self.field, values))
    namespace.overrides = items


def _type_name(tp: Any) -> str:
  return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _settable(tp: Any) -> bool:
  if typing.get_origin(tp) not in (None, typing.Union, types.UnionType):
    return False
  args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
  return all(a in (int, float, str, bool) for a in args)


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
  return value


def build_parser(
    description: str,
    configs: Sequence[str],
    config_cls: type,
    *,
    choices: Mapping[str, Sequence[str]] | None = None,
    prog: str | None = None,
) -> argparse.ArgumentParser:
  """The parser of an example: run flags, ``--set``, and one flag per scalar config field.

  Args:
    description: the ``--help`` header.
    configs: the names ``--config`` accepts (the first is the default).
    config_cls: the example's config dataclass; its fields become flags.
    choices: optional allowed values of some fields (``{"dtype": ["float32", ...]}``).
    prog: the command shown in usage lines (``python -m examples.gpt2.train``).

  Returns:
    An ``argparse.ArgumentParser``; parse with it, then call :func:`config_from_args`.
  """
  choices = dict(choices or {})
  p = argparse.ArgumentParser(
      prog=prog, description=description,
      # One usage line (the full list is long): errors stay two lines.
      usage="%(prog)s [--config NAME] [--optimizer NAME] [--workdir DIR] [--resume] "
      "[FLAG VALUE ...] (--help lists them)")
  p.add_argument("--config", default=configs[0], choices=list(configs),
                 help=f"default: {configs[0]}")
  p.add_argument("--optimizer", default=None, choices=OPTIMIZERS,
                 help="default: the config's (sgd_sai)")
  p.add_argument("--workdir", help="metrics.jsonl, gsnr.json, checkpoints/, curves.png")
  p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
  p.add_argument("--resume-step", type=_positive_int, metavar="STEP",
                 help="with --resume: continue from this checkpoint instead of the latest "
                 "(later ones are deleted), e.g. when the latest is damaged")
  p.add_argument("--mesh", default=None, help="e.g. 'data=2,fsdp=4' (default: all on data)")
  p.add_argument("--stop-after", type=_positive_int, metavar="STEP",
                 help="stop after this step (simulated pre-emption; the schedule keeps --steps)")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="tqdm bar (default: only when stdout is a terminal)")
  p.add_argument("--set", nargs="+", metavar="KEY=VALUE", action=_Override, dest="overrides",
                 default=[], help="override any config field, e.g. --set warmup_steps=10 "
                 "learning_rates.adamw=1e-3 (checked against the config's fields and types)")
  g = p.add_argument_group("config fields (each also settable with --set field=value)")
  for name, tp in field_types(config_cls).items():
    if name in _NOT_FLAGS or not _settable(tp):
      continue
    flags = [f"--{name.replace('_', '-')}", *ALIASES.get(name, ())]
    kw: dict[str, Any] = {"field": name, "dest": "overrides", "default": argparse.SUPPRESS}
    if tp is bool:
      flags += [f"--no-{name.replace('_', '-')}"]
      kw.update(nargs=0, help=_HELP.get(name, "on / off"))
    else:
      kw.update(metavar=name.upper(), help=_HELP.get(name, _type_name(tp)))
      if name in choices:
        kw["choices"] = list(choices[name])
    g.add_argument(*flags, action=_Override, **kw)
  return p


def flag_names(field: str) -> str:
  """How the command line spells a config field: ``--learning-rate/--lr``, ``--set a.b``."""
  if "." in field:
    return f"--set {field}"
  return "/".join([f"--{field.replace('_', '-')}", *ALIASES.get(field, ())])


def config_from_args(
    args: argparse.Namespace, get_config: Callable[[str], Any],
    parser: argparse.ArgumentParser | None = None,
) -> Any:
  """The named config with the command line's overrides applied.

  A bad key or value (unknown field, wrong type, out of range) is a usage error naming the
  flag (``parser.error``: exit status 2) when ``parser`` is given, else a ``ConfigError``.
  """
  config = get_config(args.config)
  try:
    return apply_overrides(config, getattr(args, "overrides", None) or [])
  except ConfigError as e:
    if parser is None:
      raise
    parser.error(f"{flag_names(e.field)}: {e.reason}" if e.field else str(e))


def _json_scalar(value: Any) -> Any:
  return None if isinstance(value, float) and not math.isfinite(value) else value


def summary(result: Mapping[str, Any]) -> str:
  """The final metrics as one JSON line (arrays left out, full precision, no NaN: null)."""
  return json.dumps({k: _json_scalar(v) for k, v in result.items()
                     if isinstance(v, int | float | str) or v is None}, allow_nan=False)


def human_summary(result: Mapping[str, Any], workdir: str | None) -> str:
  """A few lines for people: the final numbers and where the outputs are."""
  parts = [f"step {result['step']}"] if "step" in result else []
  for key in ("train_loss", "val_loss", "val_accuracy"):
    if isinstance(result.get(key), float) and math.isfinite(result[key]):
      parts.append(f"{key} {result[key]:.4f}")
  if isinstance(result.get("wall_time_s"), float):
    parts.append(f"{result['wall_time_s']:.1f} s")
  lines = ["done: " + ", ".join(parts)]
  if workdir is None:
    lines.append("nothing was written (pass --workdir DIR to keep metrics, plot and "
                 "checkpoints)")
  else:
    from examples.common import metrics  # the file names

    root = Path(workdir)
    for label, name in (("metrics", metrics.METRICS_FILE), ("plot", metrics.CURVES_FILE),
                        ("g-SNR", metrics.GSNR_FILE), ("checkpoints", "checkpoints")):
      if (root / name).exists():
        lines.append(f"{label + ':':13s}{root / name}")
  return "\n".join(lines)


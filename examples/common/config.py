"""The training fields every example shares, their checks, and overrides written as text.

A config is a frozen dataclass (``TrainConfig`` extended by each example with its model and
data fields). Text overrides (the command line's ``--set key=value`` and generated flags)
go through :func:`apply_overrides`, which checks the key against the dataclass's fields and
parses the value according to the field's type::

    cfg = apply_overrides(get_config("tiny"), ["learning_rate=3e-3", "clip_norm=none",
                                               "learning_rates.adamw=1e-3"])

In Python, ``dataclasses.replace(cfg, steps=50)`` does the same with typed values. Either
way the config checks its values when it is built (:meth:`TrainConfig.check`): a negative
learning rate, zero steps or a momentum of 1.5 raise :class:`ConfigError` naming the field.

Per-optimizer defaults are plain data: ``learning_rates`` and ``weight_decays`` map an
optimizer name to the value used when ``learning_rate`` / ``weight_decay`` are left unset.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from flax.core import FrozenDict

from examples.common import optim

OPTIMIZERS = tuple(optim.OPTIMIZERS)  # every optimizer the examples and the studies accept

class ConfigError(ValueError):
  """A config field is unknown, or its value does not fit the field's type or range.

  Attributes:
    field: the field (``learning_rate``, or ``learning_rates.adamw`` for a table entry) the
      error is about, or ``None``; the command line turns it into the flag's name.
  """

  def __init__(self, message: str, field: str | None = None):
    super().__init__(f"{field}: {message}" if field else message)
    self.field = field
    self.reason = message


def check_range(field: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
  """Checks that a config value lies in an interval.

  Args:
    field: the field's name (for the message).
    value: its value.
    low, high: the bounds (``None``: unbounded on that side).
    low_open, high_open: exclude the bound itself.
    optional: ``None`` is allowed.

  Raises:
    ConfigError: ``value`` is outside the interval, not finite, or ``None`` when not optional.
  """
  if value is None:
    if optional:
      return
    raise ConfigError("must be set (got none)", field)
  if isinstance(value, float) and not math.isfinite(value):
    raise ConfigError(f"must be a finite number (got {value})", field)
  too_low = low is not None and (value <= low if low_open else value < low)
  too_high = high is not None and (value >= high if high_open else value > high)
  if too_low or too_high:
    if high is None:
      want = f"> {low:g}" if low_open else f">= {low:g}"
    elif low is None:
      want = f"< {high:g}" if high_open else f"<= {high:g}"
    else:
      want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ConfigError(f"must be {want} (got {value})", field)


def check_divides(field: str, value: int, divisor_field: str, divisor: int) -> None:
  """Raises :class:`ConfigError` unless ``divisor`` (field ``divisor_field``) divides ``value``."""
  if value % divisor:
    raise ConfigError(f"must be a multiple of {divisor_field} ({divisor}) (got {value})", field)


# Fallbacks when a config's tables have no entry for the chosen optimizer.
_FALLBACK_LR = 1e-3
_FALLBACK_WD = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and bookkeeping fields; each example's config extends it with its model.

  ``learning_rate`` / ``weight_decay`` left at ``None`` take the example's per-optimizer
  defaults (``learning_rates[optimizer]``, ``weight_decays[optimizer]``), so
  ``--optimizer adamw`` gets an AdamW learning rate.
  """

  name: str = "custom"
  optimizer: str = "sgd_sai"
  steps: int = 200
  batch_size: int = 16
  learning_rate: float | None = None
  weight_decay: float | None = None
  warmup_steps: int = 20
  decay_steps: int | None = None  # cosine horizon; None = ``steps``
  min_lr_ratio: float = 0.1  # the cosine ends at ``min_lr_ratio * learning_rate``
  clip_norm: float | None = 1.0  # global-norm gradient clipping; None (or 0) = off
  momentum: float = 0.9  # sgd_sai, sgdm; also AdamW's and Lion's b1
  b2: float = 0.95  # AdamW's / Lion's second coefficient
  sai_normalize: bool = True  # sgd_sai: paper's max-normalised scales (False = sgd-sai 1.0.3)
  # Per-optimizer defaults ({optimizer: value}); plain dicts are accepted and frozen.
  learning_rates: Mapping[str, float] = dataclasses.field(default_factory=FrozenDict)
  weight_decays: Mapping[str, float] = dataclasses.field(default_factory=FrozenDict)
  seed: int = 0
  log_every: int = 10
  eval_every: int = 50
  eval_batches: int = 8
  ckpt_every: int = 100
  keep_checkpoints: int = 2
  data_dir: str | None = None

  def __post_init__(self):
    # Hashable mappings: the config is a static attribute of the nnx models.
    for f in ("learning_rates", "weight_decays"):
      object.__setattr__(self, f, FrozenDict(getattr(self, f)))
    self.check()

  def check(self) -> None:
    """Checks every field's range (subclasses extend it with their own fields).

    Raises:
      ConfigError: the first field out of range, by name.
    """
    for name in ("steps", "batch_size", "log_every", "eval_every", "ckpt_every",
                 "keep_checkpoints"):
      check_range(name, getattr(self, name), low=1)
    for name in ("warmup_steps", "eval_batches"):
      check_range(name, getattr(self, name), low=0)
    check_range("decay_steps", self.decay_steps, low=1, optional=True)
    check_range("learning_rate", self.learning_rate, low=0, low_open=True, optional=True)
    check_range("weight_decay", self.weight_decay, low=0, optional=True)
    check_range("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
    check_range("clip_norm", self.clip_norm, low=0, optional=True)
    check_range("momentum", self.momentum, low=0, high=1, high_open=True)
    check_range("b2", self.b2, low=0, high=1, high_open=True)
    for opt, lr in self.learning_rates.items():
      check_range(f"learning_rates.{opt}", lr, low=0, low_open=True)
    for opt, wd in self.weight_decays.items():
      check_range(f"weight_decays.{opt}", wd, low=0)

  @property
  def optimizer_defaults(self) -> tuple[tuple[str, float, float], ...]:
    """``(optimizer, lr, wd)`` for every optimizer with a default learning rate."""
    return tuple((o, lr, self.weight_decays.get(o, _FALLBACK_WD))
                 for o, lr in self.learning_rates.items())

  def resolved(self, optimizer: str | None = None) -> TrainConfig:
    """Returns a copy with ``optimizer`` set and its default lr / weight decay filled in."""
    optimizer = optimizer or self.optimizer
    if optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}")
    lr = self.learning_rates.get(optimizer, _FALLBACK_LR)
    wd = self.weight_decays.get(optimizer, _FALLBACK_WD)
    return dataclasses.replace(
        self,
        optimizer=optimizer,
        learning_rate=lr if self.learning_rate is None else self.learning_rate,
        weight_decay=wd if self.weight_decay is None else self.weight_decay,
    )


def field_types(config_cls: type) -> dict[str, Any]:
  """``{field name: resolved type}`` of a config dataclass (string annotations evaluated)."""
  hints = typing.get_type_hints(config_cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def parse_value(tp: Any, text: str, key: str = "value") -> Any:
  """Parses command-line ``text`` as type ``tp`` (int, float, str, bool, ``X | None``).

  Raises:
    ConfigError: the text is not a value of that type.
  """
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if type(None) in args and text.strip().lower() in _NONE_WORDS:
      return None
    for a in args:
      if a is not type(None):
        try:
          return parse_value(a, text, key)
        except ConfigError:
          pass
    raise ConfigError(f"cannot read {text!r} as {_type_name(tp)}", key)
  if tp is bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
      return True
    if word in _FALSE_WORDS:
      return False
    raise ConfigError(f"expected a bool (true/false), got {text!r}", key)
  if tp is int:
    try:
      return int(text)
    except ValueError:
      # Integers written as 1e4 or 2_000 are fine when they are whole numbers.
      try:
        value = float(text)
      except ValueError:
        value = float("nan")
      if value == value and value == int(value):
        return int(value)
      raise ConfigError(f"expected an int, got {text!r}", key) from None
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"expected a float, got {text!r}", key) from None
  if tp is str:
    return text
  raise ConfigError(f"fields of type {_type_name(tp)} cannot be set from text", key)


def _type_name(tp: Any) -> str:
  return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unknown(key: str, choices: Iterable[str], what: str) -> ConfigError:
  choices = sorted(choices)
  close = difflib.get_close_matches(key, choices, n=3)
  hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(choices)}"
  return ConfigError(f"unknown {what} {key!r}{hint}")


def apply_overrides(config: Any, assignments: Iterable[str | tuple[str, str]]) -> Any:
  """Applies ``key=value`` overrides to a frozen config dataclass, in order.

  ``key`` is a field name (``learning_rate``; dashes are read as underscores) or, for a
  mapping field, ``field.entry`` (``learning_rates.adamw``). Values are parsed with the
  field's type: ``none``/``null`` for optional fields, ``true``/``false`` for booleans.

  Args:
    config: a config dataclass instance (``TrainConfig`` or a subclass).
    assignments: ``"key=value"`` strings or ``(key, value_text)`` pairs.

  Returns:
    A new config with the fields replaced.

  Raises:
    ConfigError: unknown key, a value that does not parse as the field's type, or one out
      of the field's range (:meth:`TrainConfig.check`).

  Example:
    >>> from examples.gpt2.configs import get_config
    >>> cfg = apply_overrides(get_config("tiny"), ["steps=50", "learning_rates.adamw=1e-3"])
    >>> cfg.steps, cfg.learning_rates["adamw"]
    (50, 0.001)
  """
  types_ = field_types(type(config))
  changes: dict[str, Any] = {}
  for item in assignments:
    if isinstance(item, str):
      key, sep, text = item.partition("=")
      if not sep:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    else:
      key, text = item
    key = key.strip().replace("-", "_")
    name, _, entry = key.partition(".")
    if name not in types_:
      raise _unknown(name, types_, "config field")
    tp = types_[name]
    if typing.get_origin(tp) in (Mapping, dict) or tp in (Mapping, dict):
      if not entry:
        raise ConfigError(f"{name} is a table: set one entry with {name}.<key>=<value>")
      key_tp, value_tp = typing.get_args(tp) or (str, Any)
      current = dict(changes.get(name, getattr(config, name)))
      if name in ("learning_rates", "weight_decays") and entry not in OPTIMIZERS:
        raise _unknown(entry, OPTIMIZERS, "optimizer")
      current[parse_value(key_tp, entry, key)] = parse_value(value_tp, text, key)
      changes[name] = current
    elif entry:
      raise ConfigError(f"{name} is not a table; set it with {name}=<value>")
    else:
      changes[name] = parse_value(tp, text, key)
  return dataclasses.replace(config, **changes)

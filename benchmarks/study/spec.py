"""What a study is: its model, optimizers, axes, budgets, widths, seeds and rules.

A :class:`Spec` is data. Each optimizer's learning rates are half-decade points
``k`` around its example default (``default x 10**(k/2)``) and its weight decays
half-decade points ``j`` around its default weight decay, or, with ``decay_per_step``,
around its default per-step decay ``lr x wd`` (``wd = that / lr``: SGD-SaI's learning rates
are ~100x AdamW's, so its grid then compares with theirs point for point). A cell is
(budget, width, optimizer, k, j, seed), where ``optimizer`` names an optimizer of the
examples' table or one of the spec's :class:`Arm` (an optimizer with config overrides).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmarks._tables import MODELS, Model

RESULTS_ROOT = "benchmarks/results"


@dataclasses.dataclass(frozen=True)
class Arm:
  """A study arm that is not a plain optimizer: an optimizer run with config overrides.

  Attributes:
    name: what ``Spec.optimizers``, ``--optimizers`` and a cell's ``optimizer`` call it
      (an optimizer's own key only for that optimizer: a relabelled plain arm).
    optimizer: a key of ``examples.common.optim.OPTIMIZERS``.
    overrides: config fields set on top of the spec's (``(("rank", 0),)``).
    label: a readable name for tables and plots (``""``: the optimizer's).
  """

  name: str
  optimizer: str
  overrides: tuple[tuple[str, Any], ...] = ()
  label: str = ""


@dataclasses.dataclass(frozen=True)
class Spec:
  """A study's axes and per-run settings.

  Attributes:
    name: the spec's name (``python -m benchmarks.study NAME``).
    heading: the report's title (before the model's).
    model: a key of :data:`benchmarks._tables.MODELS`.
    optimizers: keys of ``examples.common.optim.OPTIMIZERS`` or names of ``arms``.
    arms: named arms beyond the plain optimizers (see :class:`Arm`).
    budgets: training steps (each with its own warmup and cosine decay).
    widths: the model's width axis (the first is the main width).
    axis: ``""``: ``widths`` set the model's width fields; else the one config field they
      set instead (``"n_layer"``: a depth axis), named so in the report.
    lr_ks: half-decade learning-rate points around each optimizer's default.
    wd_ks: half-decade weight-decay points around its default (``(0,)``: the default only).
    decay_per_step: the weight-decay axis is ``lr x wd`` per step (see the module doc):
      ``True`` for every optimizer, or the optimizers and arms for which it is.
    max_extend: points added beyond an edge of either axis while the best sits on it.
    seeds_best: extra seeds at the best point.
    seeds_best_largest: ... at budgets >= ``largest_budget``.
    largest_budget: see ``seeds_best_largest``.
    warmup_fraction: warmup steps / budget.
    evals: validation points per run (the last at the final step).
    backend: ``"vmap"`` (each optimizer's cells as one vmapped program) or ``"fit"``
      (one cell at a time through the example's ``fit``).
    dataset: ``None``: the model's study dataset.
    overrides: config fields; ``None``: the model's.
    stages: ``(budget, width)`` pairs to run; ``None``: all, cheapest first.
    results: the results folder under ``benchmarks/results``; ``""``: ``study/NAME``.
    report_scales: the report lists sgd_sai's per-block scales after its first two steps.
    note: a paragraph for the report (default: the model's note on its data).
  """

  name: str
  heading: str = "Budget-scaling study"
  model: str = "gpt2"
  optimizers: tuple[str, ...] = ("sgd_sai", "adamw", "sgdm")
  arms: tuple[Arm, ...] = ()
  budgets: tuple[int, ...] = (100, 300, 1000, 3000)
  widths: tuple[int, ...] = (128, 64, 256)
  axis: str = ""
  lr_ks: tuple[int, ...] = (-2, -1, 0, 1, 2)
  wd_ks: tuple[int, ...] = (0,)
  decay_per_step: bool | tuple[str, ...] = False
  max_extend: int = 3
  seeds_best: tuple[int, ...] = (1,)
  seeds_best_largest: tuple[int, ...] = (1, 2)
  largest_budget: int = 3000
  warmup_fraction: float = 0.1
  evals: int = 4
  backend: str = "vmap"
  dataset: str | None = None
  overrides: tuple[tuple[str, Any], ...] | None = None
  stages: tuple[tuple[int, int], ...] | None = None
  results: str = ""
  report_scales: bool = False
  note: str = ""

  def __post_init__(self):
    if self.model not in MODELS:
      raise ValueError(f"unknown model {self.model!r}; choose from {list(MODELS)}")
    if self.backend not in ("vmap", "fit"):
      raise ValueError(f"unknown backend {self.backend!r}; choose vmap or fit")
    if self.dataset is None:
      object.__setattr__(self, "dataset", self.model_spec.dataset)
    if self.overrides is None:
      object.__setattr__(self, "overrides", self.model_spec.overrides)
    from examples.common import optim

    for arm in self.arms:  # an optimizer's own name only for itself (relabelled)
      if arm.optimizer not in optim.OPTIMIZERS or arm.name in set(optim.OPTIMIZERS) - {
          arm.optimizer}:
        raise ValueError(f"arm {arm.name!r}: its optimizer must be one of "
                         f"{list(optim.OPTIMIZERS)}, its name not another one's")
    if unknown := set(self.optimizers) - set(self.keys()):
      raise ValueError(f"unknown optimizers or arms {sorted(unknown)}; "
                       f"choose from {self.keys()}")

  @property
  def model_spec(self) -> Model:
    return MODELS[self.model]

  def keys(self) -> list[str]:
    """Every name a cell's ``optimizer`` may have: the optimizer table's, then the arms'."""
    from examples.common import optim

    return list(dict.fromkeys([*optim.OPTIMIZERS, *(a.name for a in self.arms)]))

  def arm(self, key: str) -> Arm:
    """The arm named ``key``; a plain optimizer is an arm without overrides."""
    from examples.common import optim

    arm = {a.name: a for a in self.arms}.get(key) or Arm(key, key)
    return dataclasses.replace(arm, label=arm.label or optim.OPTIMIZERS[arm.optimizer].label)

  def per_step(self, key: str) -> bool:
    """Whether optimizer or arm ``key``'s weight decay is set as ``lr x wd`` per step."""
    d = self.decay_per_step
    return d if isinstance(d, bool) else key in d

  @property
  def axis_name(self) -> str:
    """What the report calls the width axis: ``width``, or the config field it sets."""
    return self.axis or "width"

  @property
  def results_dir(self) -> str:
    return f"{RESULTS_ROOT}/{self.results or 'study/' + self.name}"

  def stage_list(self) -> list[tuple[int, int]]:
    """``(budget, width)`` stages, cheapest first: steps x (width / main width) ** 1.5."""
    if self.stages is not None:
      return list(self.stages)
    main = self.widths[0]
    return sorted(((b, w) for b in self.budgets for w in self.widths),
                  key=lambda bw: (bw[0] * (bw[1] / main) ** 1.5, bw[0], bw[1]))

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def cell_id(budget: int, width: int, key: str, k: int, j: int, seed: int) -> str:
  """``b100_w64_adamw_k+1_s0`` (``_j-2`` before the seed where the weight decay moved)."""
  return f"b{budget}_w{width}_{key}_k{k:+d}" + (f"_j{j:+d}" if j else "") + f"_s{seed}"

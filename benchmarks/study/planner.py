"""Which cells a study runs next: grids from the examples' defaults, edges extended, seeds.

Per (budget, width, optimizer): the seed-0 grid ``lr_ks x wd_ks``; while the best point
(:func:`benchmarks.study.analysis.cell_loss`, ties to the point nearest the defaults) is on
an edge of the learning-rate axis, the next half-decade point beyond it (at most
``max_extend``), then likewise along the weight-decay axis; then the extra seeds at the
best point.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from benchmarks.study import analysis
from benchmarks.study.spec import Spec


def _tiny_config(spec: Spec, key: str) -> Any:
  """The model's tiny config with the spec's and then arm ``key``'s overrides."""
  cfg = spec.model_spec.module("configs").get_config("tiny")
  return dataclasses.replace(cfg, **{**dict(spec.overrides), **dict(spec.arm(key).overrides)})


def base_config(spec: Spec, width: int, budget: int, key: str, seed: int = 0) -> Any:
  """The model's tiny config at this width, budget and optimizer or arm ``key`` (lr and wd
  set per cell)."""
  warmup = max(1, round(spec.warmup_fraction * budget))
  return dataclasses.replace(
      _tiny_config(spec, key), dataset=spec.dataset, steps=budget, warmup_steps=warmup,
      optimizer=spec.arm(key).optimizer, weight_decay=default_hyperparameters(spec, key)[1],
      seed=seed, **({spec.axis: width} if spec.axis else spec.model_spec.width_fields(width)))


def default_hyperparameters(spec: Spec, key: str) -> tuple[float, float]:
  """The default ``(learning rate, weight decay)`` of optimizer or arm ``key``: the model's
  tiny config's, with the spec's and the arm's overrides."""
  from examples.common import optim

  return optim.default_hyperparameters(_tiny_config(spec, key).optimizer_defaults,
                                       spec.arm(key).optimizer)


def _sig3(x: float) -> float:
  return float(f"{x:.3g}")


def lr_divisor(spec: Spec, width: int, key: str) -> float:
  """What optimizer ``key``'s default learning rate is divided by at this width.

  1, except for ``sgd_sai_unnorm`` (step = lr x g-SNR): the examples' defaults are
  ``normalize=True`` learning rates, and the two are the same optimizer when the learning
  rate is divided by the measured normaliser (:func:`benchmarks.study.backends.normaliser`).
  """
  if spec.arm(key).optimizer != "sgd_sai_unnorm":
    return 1.0
  from benchmarks.study import backends

  return backends.normaliser(spec, width)


def learning_rate(spec: Spec, width: int, key: str, k: int) -> float:
  """Point ``k``: the default / divisor x ``10**(k/2)``, to 3 significant digits."""
  lr = default_hyperparameters(spec, key)[0]
  return _sig3(lr / lr_divisor(spec, width, key) * 10 ** (k / 2))


def weight_decay(spec: Spec, width: int, key: str, j: int, lr: float) -> float:
  """Point ``j`` of the weight-decay axis for a cell at learning rate ``lr``.

  The default x ``10**(j/2)``; where ``spec.per_step(key)``, the default per-step decay
  (default lr / divisor x default wd) x ``10**(j/2)``, divided by ``lr``. 3 significant
  digits.
  """
  default_lr, wd = default_hyperparameters(spec, key)
  if not spec.per_step(key):
    return _sig3(wd * 10 ** (j / 2))
  per_step = default_lr / lr_divisor(spec, width, key) * wd * 10 ** (j / 2)
  return _sig3(per_step / lr)


def grid_state(spec: Spec, rows: Sequence[dict[str, Any]], budget: int, width: int,
               key: str) -> dict[str, Any]:
  """Seed-0 grid of one (budget, width, optimizer): its points, best, extensions, next cells.

  Returns:
    ``points`` (done seed-0 ``(k, j)``), ``extended`` (those outside the base grid),
    ``best`` (``(k, j)`` or ``None`` while the grid is incomplete), ``edge`` (where the best
    stayed when the cap was reached, or ``"all diverged"``) and ``next`` (``(k, j, seed)``).
  """
  mine = {(r["k"], r.get("j", 0), r["seed"]): r for r in rows
          if r["budget"] == budget and r["width"] == width and r["optimizer"] == key}
  base = [(k, j) for k in spec.lr_ks for j in spec.wd_ks]
  state: dict[str, Any] = {"points": [], "extended": [], "edge": None, "best": None,
                           "next": []}
  missing = [(k, j, 0) for k, j in base if (k, j, 0) not in mine]
  if missing:
    state["next"] = missing
    return state
  done = sorted((k, j) for k, j, s in mine if s == 0)
  state["points"] = done
  state["extended"] = [p for p in done if p not in base]
  best = min(done, key=lambda p: (analysis.cell_loss(mine[(*p, 0)]), abs(p[0]) + abs(p[1])))
  state["best"] = best
  if math.isinf(analysis.cell_loss(mine[(*best, 0)])):
    state["edge"] = "all diverged"
    return state
  edges = []
  for axis, ks, name in ((0, spec.lr_ks, ""), (1, spec.wd_ks, "weight-decay ")):
    if len(ks) < 2:
      continue
    line = sorted(p[axis] for p in done if p[1 - axis] == best[1 - axis])
    if best[axis] not in (line[0], line[-1]):
      continue
    low = best[axis] == line[0]
    nxt = best[axis] - 1 if low else best[axis] + 1
    if min(ks) - spec.max_extend <= nxt <= max(ks) + spec.max_extend:
      point = (nxt, best[1]) if axis == 0 else (best[0], nxt)
      state["next"] = [(*point, 0)]
      return state
    edges.append(name + ("low" if low else "high"))
  state["edge"] = " and ".join(edges) or None
  extra = spec.seeds_best_largest if budget >= spec.largest_budget else spec.seeds_best
  state["next"] = [(*best, s) for s in extra if (*best, s) not in mine]
  return state

"""Timing for the benchmarks: compiled donated steps, interleaved rounds, medians.

Timings interleave the subjects over rounds in one process and are summarised by their
median and inter-quartile range: on a shared machine only ratios measured this way are
meaningful.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks._tables import make_optimizer
from benchmarks._trees import PyTree, abstract_state, materialise


def make_step(tx: optax.GradientTransformation) -> Callable[..., tuple[PyTree, PyTree]]:
  """The benchmarked step, ``(params, opt_state, grads) -> (params, opt_state)``, jitted.

  Parameters and optimizer state are donated, as in a real training loop, so XLA
  updates them in place.
  """

  def step(params: PyTree, opt_state: PyTree, grads: PyTree) -> tuple[PyTree, PyTree]:
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step, donate_argnums=(0, 1))


def make_elementwise_pass() -> Callable[[PyTree, PyTree], PyTree]:
  """The bandwidth probe: ``p + a * g`` over the tree (reads 2 trees, writes 1), donated."""

  def axpy(params: PyTree, grads: PyTree) -> PyTree:
    return jax.tree.map(lambda p, g: p + jnp.asarray(1e-3, p.dtype) * g, params, grads)

  return jax.jit(axpy, donate_argnums=(0,))


@dataclasses.dataclass
class Summary:
  """Median and spread of a list of samples (seconds)."""

  median: float
  q1: float
  q3: float
  n: int

  @property
  def iqr(self) -> float:
    return self.q3 - self.q1

  @classmethod
  def of(cls, samples: Sequence[float]) -> Summary:
    if not samples:
      return cls(math.nan, math.nan, math.nan, 0)
    if len(samples) == 1:
      return cls(samples[0], samples[0], samples[0], 1)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return cls(statistics.median(samples), q1, q3, len(samples))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """Runs ``fn``, blocks on its result, returns (seconds, result)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t0, out


class Runner:
  """One timed subject: a compiled donated function and the buffers it threads through.

  ``make_carry`` builds fresh donated buffers (parameters, optimizer state); ``advance``
  runs the function once, replaces the carried buffers with its outputs (the inputs were
  donated) and returns the elapsed seconds. ``release`` drops the buffers, so that a
  low-memory run holds one subject's buffers at a time.
  """

  def __init__(self, name: str, fn: Callable[..., Any],
               make_carry: Callable[[], tuple[Any, ...]], const: tuple[Any, ...],
               compile_s: float = math.nan) -> None:
    self.name = name
    self.fn = fn
    self.make_carry = make_carry
    self.const = const
    self.compile_s = compile_s
    self.carry: tuple[Any, ...] | None = None
    self.firsts: list[float] = []  # one per build of fresh buffers
    self.rounds: list[list[float]] = []

  @property
  def first_s(self) -> float:
    """Median seconds of the first step from fresh buffers (nan before any)."""
    return statistics.median(self.firsts) if self.firsts else math.nan

  @property
  def samples(self) -> list[float]:
    """All timed samples, over all rounds."""
    return [s for r in self.rounds for s in r]

  def ensure(self) -> None:
    """Builds the buffers if released, and runs (and times) the first step from them."""
    if self.carry is None:
      self.carry = self.make_carry()
      self.firsts.append(self.advance())

  def release(self) -> None:
    """Drops the carried buffers (the compiled function is kept)."""
    self.carry = None

  def advance(self) -> float:
    """Runs one step on the carried buffers; returns its seconds."""
    assert self.carry is not None, "call ensure() first"
    carry = self.carry
    self.carry = None  # the inputs are donated: never touch them again
    seconds, out = timed(lambda: self.fn(*carry, *self.const))
    self.carry = out if isinstance(out, tuple) else (out,)
    return seconds


def optimizer_runner(name: str, params_abstract: PyTree, grads: PyTree,
                     seed: int = 1) -> Runner:
  """A runner for one optimizer's step, compiled ahead of time (the compile is timed).

  The first step from a freshly initialised state (for sgd_sai: the g-SNR capture) is
  timed by :meth:`Runner.ensure` into ``first_s``.
  """
  tx = make_optimizer(name)
  step = make_step(tx)
  state_abstract = abstract_state(tx, params_abstract)
  compile_s, compiled = timed(
      lambda: step.lower(params_abstract, state_abstract, params_abstract).compile())
  init = jax.jit(tx.init)

  def make_carry() -> tuple[Any, ...]:
    params = materialise(params_abstract, seed=seed)
    return params, jax.block_until_ready(init(params))

  return Runner(name, compiled, make_carry, (grads,), compile_s=compile_s)


def elementwise_runner(params_abstract: PyTree, grads: PyTree) -> Runner:
  """The bandwidth probe as a runner, compiled ahead of time."""
  fn = make_elementwise_pass()
  compile_s, compiled = timed(lambda: fn.lower(params_abstract, params_abstract).compile())
  return Runner("elementwise", compiled, lambda: (materialise(params_abstract, seed=2),),
                (grads,), compile_s=compile_s)


def interleave(runners: Sequence[Runner], rounds: int, steps: int, warmup: int = 1,
               low_memory: bool = False, log: Callable[[str], None] | None = None) -> None:
  """Times every runner ``steps`` times per round, rotating their order each round.

  Each step is timed on its own (``block_until_ready``); ``warmup`` untimed steps precede
  each runner's first round (every round when ``low_memory``, where buffers are rebuilt
  per round and released after it). Samples go to ``runner.rounds``.
  """
  for rnd in range(rounds):
    k = rnd % max(len(runners), 1)
    for r in list(runners[k:]) + list(runners[:k]):
      fresh = r.carry is None
      r.ensure()
      for _ in range(warmup if fresh else 0):
        r.advance()
      r.rounds.append([r.advance() for _ in range(steps)])
      if low_memory:
        r.release()
    if log is not None:
      log(f"  round {rnd + 1}/{rounds}: " + ", ".join(
          f"{r.name} {1e3 * statistics.median(r.rounds[-1]):.1f} ms" for r in runners))


def time_first_steps(runners: Sequence[Runner], repeats: int) -> None:
  """Times ``repeats`` more first steps per runner, each from freshly built buffers.

  The very first run of an executable also pays one-off costs (thread pools, first-touch
  page faults) that differ between optimizers by more than the step itself (measured on
  GPT-2 124M: AdamW's first step at 1.2x and ViT-S/16's at 9.6x its steady step, in the
  same run), so the first step is the median over several fresh starts of the warm
  executable: for sgd_sai, the g-SNR capture.
  """
  for r in runners:
    for _ in range(repeats):
      r.release()
      r.ensure()
    r.release()


def round_ratios(runner: Runner, reference: Runner) -> list[float]:
  """Per-round ratios of median step times: interleaved, so shared-machine noise cancels."""
  return [statistics.median(a) / statistics.median(b)
          for a, b in zip(runner.rounds, reference.rounds, strict=False)]


def available_memory_bytes() -> int | None:
  """``MemAvailable`` from ``/proc/meminfo`` (None where unreadable)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    return None
  return None

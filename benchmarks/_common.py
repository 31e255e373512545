"""Shared pieces of the benchmarks: parameter trees, the optimizer registry, timing, writers.

Parameter trees come from the examples' model code (``examples/gpt2``, ``examples/vit``):
the model is built under ``jax.eval_shape`` (nothing allocated), its ``nnx.Param`` leaves
are taken as a pure pytree of ``ShapeDtypeStruct`` and, where a benchmark needs real
buffers, materialised with a cheap random fill. Timings interleave the optimizers over
rounds in one process and are summarised by their median and inter-quartile range: on a
shared machine only ratios measured this way are meaningful.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_sai

PyTree = Any

# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

# benchmark name -> (example package, config name, model class name)
MODELS: dict[str, tuple[str, str, str]] = {
    "gpt2-tiny": ("gpt2", "tiny", "GPT"),
    "gpt2": ("gpt2", "gpt2", "GPT"),
    "gpt2-medium": ("gpt2", "gpt2-medium", "GPT"),
    "gpt2-large": ("gpt2", "gpt2-large", "GPT"),
    "gpt2-xl": ("gpt2", "gpt2-xl", "GPT"),
    "vit-tiny": ("vit", "tiny", "ViT"),
    "vit-s16": ("vit", "vit-s16", "ViT"),
    "vit-b16": ("vit", "vit-b16", "ViT"),
}

# Human-readable labels for tables.
MODEL_LABELS: dict[str, str] = {
    "synthetic": "synthetic MLP",
    "gpt2-tiny": "GPT-2 tiny",
    "gpt2": "GPT-2 124M",
    "gpt2-medium": "GPT-2 350M",
    "gpt2-large": "GPT-2 774M",
    "gpt2-xl": "GPT-2 1.5B",
    "vit-tiny": "ViT tiny",
    "vit-s16": "ViT-S/16",
    "vit-b16": "ViT-B/16",
    "llama2-7b": "Llama-2-7B (shapes)",
}


def abstract_params(model: str) -> PyTree:
  """The ``nnx.Param`` tree of an example model as ``ShapeDtypeStruct`` leaves.

  Args:
    model: a key of :data:`MODELS` (e.g. ``gpt2``, ``vit-s16``), or ``synthetic`` for
      :func:`synthetic_params` (a small hand-built tree: tests and smoke runs).

  Returns:
    A pure pytree (nested dicts) of ``jax.ShapeDtypeStruct``; nothing is allocated.
  """
  if model == "synthetic":
    return synthetic_params()
  if model == "llama2-7b":
    return llama2_7b_params()
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
  from flax import nnx  # imported lazily: only the model trees need flax

  package, config_name, cls_name = MODELS[model]
  model_mod = importlib.import_module(f"examples.{package}.model")
  configs = importlib.import_module(f"examples.{package}.configs")
  config = configs.get_config(config_name)
  if getattr(config, "vocab_size", 0) is None:  # tiny GPT-2 reads it from its data: bytes
    config = dataclasses.replace(config, vocab_size=256)
  cls = getattr(model_mod, cls_name)

  def build() -> PyTree:
    return nnx.to_pure_dict(nnx.state(cls(config, rngs=nnx.Rngs(0)), nnx.Param))

  return jax.eval_shape(build)


def synthetic_params(widths: Sequence[int] = (64, 256, 64), depth: int = 2,
                     dtype: Any = jnp.float32) -> PyTree:
  """A small hand-built abstract tree (an MLP stack with norms) for tests and smoke runs."""
  tree: dict[str, Any] = {"embed": jax.ShapeDtypeStruct((widths[0] * 4, widths[0]), dtype)}
  for layer in range(depth):
    block = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
      block[f"fc{i}"] = {"kernel": jax.ShapeDtypeStruct((a, b), dtype),
                         "bias": jax.ShapeDtypeStruct((b,), dtype)}
    block["norm"] = {"scale": jax.ShapeDtypeStruct((widths[-1],), dtype),
                     "bias": jax.ShapeDtypeStruct((widths[-1],), dtype)}
    tree[f"layer{layer}"] = block
  return tree


def llama2_7b_params(vocab: int = 32000, dim: int = 4096, layers: int = 32,
                     hidden: int = 11008, dtype: Any = jnp.float32) -> PyTree:
  """A Llama-2-7B-shaped abstract tree (6.74B parameters), for shape-only memory tables.

  The published architecture: untied 32,000 x 4,096 embedding and output head, 32 layers
  of attention (q, k, v, o: 4,096 x 4,096, no biases) and a SwiGLU MLP (gate and up
  4,096 x 11,008, down 11,008 x 4,096), two RMSNorm scales per layer and a final one. One
  leaf per tensor, as a PyTorch module has (the paper's memory anchor: 25.15 GB saved
  against AdamW in float32).
  """
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
  tree: dict[str, Any] = {"embed": s(vocab, dim), "norm": s(dim), "lm_head": s(dim, vocab)}
  for i in range(layers):
    tree[f"layer{i}"] = {
        "attn": {k: s(dim, dim) for k in ("q", "k", "v", "o")},
        "mlp": {"gate": s(dim, hidden), "up": s(dim, hidden), "down": s(hidden, dim)},
        "attn_norm": s(dim), "mlp_norm": s(dim)}
  return tree


def _hash_fill(shape: Sequence[int], dtype: Any, salt: int, scale: float) -> jax.Array:
  """Pseudo-random values in ``[-scale, scale)`` from an integer hash of the index.

  Much cheaper than ``jax.random.normal`` on CPU (one elementwise pass, no threefry), and
  just as good for timing: no benchmarked step depends on the values.
  """
  n = math.prod(shape)
  h = jax.lax.iota(jnp.uint32, n) + jnp.uint32(salt * 0x9E3779B9 % 2**32)
  h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
  h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
  h = h ^ (h >> 16)
  unit = (h >> 8).astype(jnp.float32) * (2.0 / 2**24) - 1.0
  return (scale * unit).reshape(shape).astype(dtype)


def materialise(abstract: PyTree, seed: int = 0, scale: float = 0.02) -> PyTree:
  """Real arrays for an abstract tree: a cheap pseudo-random fill, one jitted call.

  Values do not matter for step time (no optimizer here branches on them in the steady
  step), so a fixed hash of each entry's index (different per leaf and seed) is enough.
  """
  leaves, treedef = jax.tree.flatten(abstract)

  @jax.jit
  def fill() -> list[jax.Array]:
    return [_hash_fill(leaf.shape, leaf.dtype, seed * 7919 + i + 1, scale)
            for i, leaf in enumerate(leaves)]

  return jax.block_until_ready(treedef.unflatten(fill()))


# --------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------

# name -> factory. Learning rates are constants: a schedule adds a scalar, never a pass.
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "sgd_sai": lambda: optax_sai.sgd_sai(1e-2, momentum=0.9, weight_decay=1e-2),
    "adamw": lambda: optax.adamw(1e-3, weight_decay=1e-2),
    "sgdm": lambda: optax.sgd(1e-2, momentum=0.9),
    "lion": lambda: optax.lion(1e-4, weight_decay=1e-2),
    "adafactor": lambda: optax.adafactor(1e-3),
    "prodigy": lambda: optax.contrib.prodigy(1.0),
}

# Extra variants used by the memory benchmark (and selectable in step_time).
VARIANTS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "sgd_sai_bf16": lambda: optax_sai.sgd_sai(
        1e-2, momentum=0.9, weight_decay=1e-2, mu_dtype=jnp.bfloat16),
    # optax's own bfloat16 accumulator: the peer of sgd_sai_bf16 for the compiled scratch.
    "sgdm_bf16": lambda: optax.sgd(1e-2, momentum=0.9, accumulator_dtype=jnp.bfloat16),
    # The examples' sgdm: SGD momentum with weight decay, the same arithmetic class as
    # sgd_sai (which always decays), so their ratio isolates the cost of the g-SNR scale.
    "sgdm_wd": lambda: optax.chain(optax.add_decayed_weights(1e-2),
                                   optax.sgd(1e-2, momentum=0.9)),
}

OPTIMIZER_LABELS: dict[str, str] = {
    "sgd_sai": "sgd_sai (f32)",
    "sgd_sai_bf16": "sgd_sai (bf16 mu)",
    "adamw": "optax.adamw",
    "sgdm": "optax.sgd momentum",
    "sgdm_wd": "sgd momentum + decay",
    "sgdm_bf16": "optax.sgd momentum (bf16 acc.)",
    "lion": "optax.lion",
    "adafactor": "optax.adafactor",
    "prodigy": "optax.contrib.prodigy",
}


def make_optimizer(name: str) -> optax.GradientTransformation:
  """Builds a registered optimizer (see :data:`OPTIMIZERS` and :data:`VARIANTS`)."""
  factories = {**OPTIMIZERS, **VARIANTS}
  if name not in factories:
    raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(factories)}")
  return factories[name]()


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


# --------------------------------------------------------------------------------------
# Byte accounting
# --------------------------------------------------------------------------------------


def tree_nbytes(tree: PyTree) -> int:
  """Bytes of all array leaves of a (concrete or abstract) tree."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None or dtype == jax.dtypes.float0:
      continue
    total += math.prod(shape) * np.dtype(dtype).itemsize
  return total


def tree_size(tree: PyTree) -> int:
  """Number of entries in all array leaves."""
  return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))


def abstract_state(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
  """The optimizer state's shapes, from ``jax.eval_shape(tx.init, params)``."""
  return jax.eval_shape(tx.init, params)


def forwarded_state_leaves(tx: optax.GradientTransformation, params: PyTree,
                           state: PyTree) -> list[bool]:
  """For each state leaf, whether the step returns it unchanged (no write needed).

  Read from the step's jaxpr: an output variable that *is* the matching input variable is
  passed through (Prodigy's ``params0``, for example).
  """

  def step(p: PyTree, s: PyTree, g: PyTree) -> tuple[PyTree, PyTree]:
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  jaxpr = jax.make_jaxpr(step)(params, state, params).jaxpr
  n_params = len(jax.tree.leaves(params))
  n_state = len(jax.tree.leaves(state))
  ins = jaxpr.invars[n_params:n_params + n_state]
  outs = jaxpr.outvars[n_params:n_params + n_state]
  return [o is i for i, o in zip(ins, outs, strict=True)]


@dataclasses.dataclass(frozen=True)
class StepBytes:
  """The bytes one optimizer step must move through memory (its physical minimum).

  The model: the step reads the gradient, the parameters and the whole optimizer state
  once, and writes the parameters and every state leaf it changes, once.
  """

  grads: int
  params: int
  state: int
  state_written: int

  @property
  def read(self) -> int:
    return self.grads + self.params + self.state

  @property
  def written(self) -> int:
    return self.params + self.state_written

  @property
  def total(self) -> int:
    return self.read + self.written


def step_bytes(tx: optax.GradientTransformation, params: PyTree,
               grads: PyTree | None = None) -> StepBytes:
  """Counts :class:`StepBytes` for ``tx`` from the trees' shapes (abstract trees work)."""
  grads = params if grads is None else grads
  state = abstract_state(tx, params)
  forwarded = forwarded_state_leaves(tx, params, state)
  state_leaves = jax.tree.leaves(state)
  written = sum(tree_nbytes(x) for x, f in zip(state_leaves, forwarded, strict=True) if not f)
  return StepBytes(grads=tree_nbytes(grads), params=tree_nbytes(params),
                   state=tree_nbytes(state), state_written=written)


def elementwise_bytes(params: PyTree) -> int:
  """Bytes the bandwidth probe moves: read parameters and gradient, write parameters."""
  return 3 * tree_nbytes(params)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def machine_description() -> str:
  """A one-line description of the backend and host the numbers were measured on."""
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return (f"{dev.platform.upper()} backend ({kind}), {os.cpu_count()} cores [{cpu}], "
          f"jax {jax.__version__}, optax {optax.__version__}")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A GitHub Markdown table; numbers are expected pre-formatted as strings."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def fmt_bytes(n: float) -> str:
  """Bytes in MiB / GiB with three significant digits."""
  if n >= 2**30:
    return f"{n / 2**30:.3g} GiB"
  if n >= 2**20:
    return f"{n / 2**20:.3g} MiB"
  return f"{n / 2**10:.3g} KiB"


def ensure_dir(path: str) -> str:
  """Creates ``path`` if needed and returns it."""
  os.makedirs(path, exist_ok=True)
  return path


def bar_plot(path: str, groups: Mapping[str, Mapping[str, float]],
             errors: Mapping[str, Mapping[str, tuple[float, float]]] | None,
             ylabel: str, title: str, hline: float | None = None) -> None:
  """A grouped bar chart (groups = models, bars = optimizers) saved as PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  group_names = list(groups)
  bars = list(dict.fromkeys(b for g in groups.values() for b in g))
  width = 0.8 / max(len(bars), 1)
  fig, ax = plt.subplots(figsize=(max(7.0, 1.8 * len(group_names) + 3), 4.6))
  xs = np.arange(len(group_names))
  for i, bar in enumerate(bars):
    vals = [groups[g].get(bar, np.nan) for g in group_names]
    yerr = None
    if errors is not None:
      lo = [vals[j] - errors[g].get(bar, (vals[j], vals[j]))[0] for j, g in enumerate(group_names)]
      hi = [errors[g].get(bar, (vals[j], vals[j]))[1] - vals[j] for j, g in enumerate(group_names)]
      yerr = np.array([lo, hi])
    ax.bar(xs + (i - (len(bars) - 1) / 2) * width, vals, width, yerr=yerr, capsize=2,
           label=OPTIMIZER_LABELS.get(bar, bar))
  if hline is not None:
    ax.axhline(hline, color="k", lw=0.8, ls="--")
  ax.set_xticks(xs, [MODEL_LABELS.get(g, g) for g in group_names])
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def benchmark_parser(doc: str, default_models: Sequence[str], default_optimizers: Sequence[str],
                     rounds: int, optimizers_note: str = "") -> argparse.ArgumentParser:
  """The flags every timing benchmark shares: models, optimizers, rounds and results folder."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(default_models),
                 help=f"comma-separated, from {sorted(MODELS)}")
  p.add_argument("--optimizers", default=",".join(default_optimizers),
                 help=f"comma-separated, from {sorted({**OPTIMIZERS, **VARIANTS})}"
                 + optimizers_note)
  p.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
  p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="results folder")
  return p

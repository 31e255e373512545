"""The one model table and the benchmarks' settings of the examples' optimizer table.

:data:`MODELS` names every model family the benchmarks and the studies use: where its
config, task and model class live, and how a study drives it (its width fields, data and
metrics). :data:`SIZES` names the sizes the timing benchmarks build (``gpt2-medium`` is the
``gpt2`` family's ``gpt2-medium`` config). Optimizers come from
``examples.common.optim.OPTIMIZERS``; :data:`BENCHMARK_OPTIMIZERS` and :data:`VARIANTS` only
fix the constant learning rate, weight decay and dtype options each timing uses.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks._trees import PyTree, llama2_7b_params, synthetic_params


@dataclasses.dataclass(frozen=True)
class Model:
  """A model family of the examples.

  Attributes:
    key: the family's name (``gpt2``, ``vit``, ``cnn``, ``lora``).
    configs: the module with ``get_config(name)``.
    train: the module with ``build_task(config)`` and ``train(config, ...)``.
    model_class: ``module:Class`` of the ``nnx.Module``.
    title: the study table's heading (``{dataset}`` is filled in).
    loss_unit: the unit of its loss.
    dataset: the studies' dataset.
    overrides: config fields the studies change.
    width_fields: width -> the config fields a study's width axis sets.
    accuracy: report the val accuracy beside the loss.
    note: the study table's paragraph on the data.
    cell_fields: ``module:function``, ``(task, params, opt_state) -> {field: value}``: facts
      a study logs with each cell after training it (``""``: none).
    report_section: ``module:function``, ``(spec, analysis, rows) -> (lines, facts)``: the
      model's own section of a study's ``table.md`` and its facts for ``summary.json``
      (``""``: none).
  """

  key: str
  configs: str
  train: str
  model_class: str
  title: str
  loss_unit: str
  dataset: str
  overrides: tuple[tuple[str, Any], ...]
  width_fields: Callable[[int], dict[str, int]]
  accuracy: bool
  note: str
  cell_fields: str = ""
  report_section: str = ""

  def module(self, name: str) -> Any:
    """The family's ``configs`` or ``train`` module, imported."""
    return importlib.import_module(getattr(self, name))

  def hook(self, name: str) -> Callable[..., Any] | None:
    """The function ``cell_fields`` or ``report_section`` names, or ``None``."""
    if not getattr(self, name):
      return None
    module, function = getattr(self, name).split(":")
    return getattr(importlib.import_module(module), function)


_DIGITS_NOTE = (
    "Data: scikit-learn's digits (bundled, no download), 1,500 training and 297 "
    "held-out images, with the example's augmentation (random shifts of up to one "
    "source pixel). It is the only image set on every machine, so the longer "
    "budgets train for many epochs (listed above): they measure how each optimizer "
    "does when a small data set is seen many times, not a single pass over fresh "
    "data as the GPT-2 study on the `stdlib` corpus does.")

# The studies' grid centres: each optimizer's (learning rate, weight decay) in the examples'
# tiny configs when the studies ran, pinned here so that the logged grid points keep their
# values whatever the examples' defaults become (sgd_sai_unnorm derives from sgd_sai's).
_GPT2_CENTRES = (("learning_rates", (("sgd_sai", 0.5), ("adamw", 3e-3), ("sgdm", 0.5))),
                 ("weight_decays", (("sgd_sai", 1e-2), ("adamw", 0.1), ("sgdm", 1e-4))))
_DIGITS_CENTRES = (("learning_rates", (("sgd_sai", 1.0), ("adamw", 3e-3), ("sgdm", 0.3))),
                   ("weight_decays", (("sgd_sai", 1e-2), ("adamw", 0.05), ("sgdm", 1e-4))))

MODELS: dict[str, Model] = {m.key: m for m in (
    # The stdlib corpus (tens of MB of real code): 3,000 steps are 0.2 epochs.
    Model("gpt2", "examples.gpt2.configs", "examples.gpt2.train", "examples.gpt2.model:GPT",
          title="tiny GPT-2 on the `{dataset}` corpus", loss_unit="nats/byte",
          dataset="stdlib", overrides=(("eval_batches", 16), *_GPT2_CENTRES),
          width_fields=lambda w: {"n_embd": w}, accuracy=False, note=""),
    # scikit-learn's digits (1,500 training images) with the example's +-1 pixel shifts:
    # many epochs at the longer budgets, evaluated on the 297 held-out images.
    Model("vit", "examples.vit.configs", "examples.vit.train", "examples.vit.model:ViT",
          title="tiny ViT on scikit-learn's `{dataset}`", loss_unit="nats",
          dataset="digits", overrides=(("augment", True), *_DIGITS_CENTRES),
          width_fields=lambda w: {"hidden_size": w, "mlp_dim": 2 * w}, accuracy=True,
          note=_DIGITS_NOTE),
    # The same digits pipeline, a small convolutional network (width = its channels).
    Model("cnn", "examples.vit.cnn", "examples.vit.cnn", "examples.vit.cnn:CNN",
          title="small CNN on scikit-learn's `{dataset}`", loss_unit="nats",
          dataset="digits", overrides=(("augment", True), *_DIGITS_CENTRES),
          width_fields=lambda w: {"conv_width": w}, accuracy=True, note=_DIGITS_NOTE),
    # The tiny GPT-2 pretrained on English prose (``pydoc``, cached per recipe under
    # runs/lora-base), fine-tuned on Python source. One width: the base's n_embd.
    Model("lora", "examples.lora.configs", "examples.lora.train", "examples.gpt2.model:GPT",
          title="the tiny GPT-2 (pretrained on `pydoc`) on `{dataset}`", loss_unit="nats/byte",
          dataset="pysource", overrides=(), width_fields=lambda w: {"n_embd": w},
          accuracy=False, note="", cell_fields="examples.lora.study:cell_fields",
          report_section="examples.lora.study:report_section"),
)}

# benchmark name -> (family, config name, label)
SIZES: dict[str, tuple[str, str, str]] = {
    "gpt2-tiny": ("gpt2", "tiny", "GPT-2 tiny"),
    "gpt2": ("gpt2", "gpt2", "GPT-2 124M"),
    "gpt2-medium": ("gpt2", "gpt2-medium", "GPT-2 350M"),
    "gpt2-large": ("gpt2", "gpt2-large", "GPT-2 774M"),
    "gpt2-xl": ("gpt2", "gpt2-xl", "GPT-2 1.5B"),
    "vit-tiny": ("vit", "tiny", "ViT tiny"),
    "vit-s16": ("vit", "vit-s16", "ViT-S/16"),
    "vit-b16": ("vit", "vit-b16", "ViT-B/16"),
    "cnn-tiny": ("cnn", "tiny", "CNN tiny"),
}
# Trees built by hand, not from an example.
HAND_BUILT: dict[str, tuple[Callable[[], PyTree], str]] = {
    "synthetic": (synthetic_params, "synthetic MLP"),
    "llama2-7b": (llama2_7b_params, "Llama-2-7B (shapes)"),
}
MODEL_LABELS: dict[str, str] = {
    **{k: label for k, (_, label) in HAND_BUILT.items()},
    **{k: label for k, (_, _, label) in SIZES.items()},
}


def abstract_params(model: str) -> PyTree:
  """The ``nnx.Param`` tree of a model size as ``ShapeDtypeStruct`` leaves.

  Args:
    model: a key of :data:`SIZES` (e.g. ``gpt2``, ``vit-s16``) or of :data:`HAND_BUILT`
      (``synthetic``: a small hand-built tree for tests and smoke runs; ``llama2-7b``).

  Returns:
    A pure pytree (nested dicts) of ``jax.ShapeDtypeStruct``; nothing is allocated.
  """
  if model in HAND_BUILT:
    return HAND_BUILT[model][0]()
  if model not in SIZES:
    raise ValueError(f"unknown model {model!r}; choose from {sorted(SIZES)}")
  from flax import nnx  # imported lazily: only the model trees need flax

  family, config_name, _ = SIZES[model]
  spec = MODELS[family]
  config = spec.module("configs").get_config(config_name)
  if getattr(config, "vocab_size", 0) is None:  # tiny GPT-2 reads it from its data: bytes
    config = dataclasses.replace(config, vocab_size=256)
  module, cls_name = spec.model_class.split(":")
  cls = getattr(importlib.import_module(module), cls_name)

  def build() -> PyTree:
    return nnx.to_pure_dict(nnx.state(cls(config, rngs=nnx.Rngs(0)), nnx.Param))

  return jax.eval_shape(build)


@dataclasses.dataclass(frozen=True)
class Setting:
  """How a timing benchmark runs one optimizer of the examples' table.

  Learning rates are constants: a schedule adds a scalar, never a pass. No decay mask.
  """

  optimizer: str  # a key of examples.common.optim.OPTIMIZERS
  label: str
  learning_rate: float
  weight_decay: float = 0.0
  options: tuple[tuple[str, Any], ...] = ()  # the optax constructor's dtype options


BENCHMARK_OPTIMIZERS: dict[str, Setting] = {
    "sgd_sai": Setting("sgd_sai", "sgd_sai (f32)", 1e-2, 1e-2),
    "adamw": Setting("adamw", "optax.adamw", 1e-3, 1e-2),
    "sgdm": Setting("sgdm", "optax.sgd momentum", 1e-2),
    "lion": Setting("lion", "optax.lion", 1e-4, 1e-2),
    "adafactor": Setting("adafactor", "optax.adafactor", 1e-3),
    "prodigy": Setting("prodigy", "optax.contrib.prodigy", 1.0),
}
# Extra variants used by the memory benchmark (and selectable in step_time).
VARIANTS: dict[str, Setting] = {
    "sgd_sai_bf16": Setting("sgd_sai", "sgd_sai (bf16 mu)", 1e-2, 1e-2,
                            (("mu_dtype", jnp.bfloat16),)),
    # optax's own bfloat16 accumulator: the peer of sgd_sai_bf16 for the compiled scratch.
    "sgdm_bf16": Setting("sgdm", "optax.sgd momentum (bf16 acc.)", 1e-2,
                         options=(("accumulator_dtype", jnp.bfloat16),)),
    # The examples' sgdm: SGD momentum with weight decay, the same arithmetic class as
    # sgd_sai (which always decays), so their ratio isolates the cost of the g-SNR scale.
    "sgdm_wd": Setting("sgdm", "sgd momentum + decay", 1e-2, 1e-2),
}
OPTIMIZER_LABELS: dict[str, str] = {
    k: s.label for k, s in {**BENCHMARK_OPTIMIZERS, **VARIANTS}.items()}


def make_optimizer(name: str) -> optax.GradientTransformation:
  """Builds a benchmark optimizer (:data:`BENCHMARK_OPTIMIZERS` or :data:`VARIANTS`)."""
  from examples.common import optim

  settings = {**BENCHMARK_OPTIMIZERS, **VARIANTS}
  if name not in settings:
    raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(settings)}")
  s = settings[name]
  return optim.make_optimizer(s.optimizer, s.learning_rate, s.weight_decay, mask=None,
                              b2=0.999, **dict(s.options))

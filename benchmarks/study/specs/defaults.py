"""The examples' tiny configs as their commands run them: where the defaults come from.

Each example's ``tiny`` config exactly as ``python -m examples.<name>.train --config tiny``
runs it (its own data set, width, 200 steps, warmup 20, no augmentation), with
learning rates half a decade apart around the studies' pinned centres and three per-step
decays ``lr x wd`` a decade apart, both axes extended while the best sits on an edge; seed 1
at the best. Each optimizer's best (lr, wd) here is its default in that tiny config.
"""

from benchmarks._tables import MODELS
from benchmarks.study.spec import Spec


def _centres(model: str) -> tuple:
  """The model's pinned grid centres, without the studies' other overrides."""
  return tuple(o for o in MODELS[model].overrides if o[0] in ("learning_rates", "weight_decays"))


_AXES = dict(heading="The examples' defaults", optimizers=("sgd_sai", "adamw", "sgdm"),
             lr_ks=(-2, -1, 0, 1, 2), wd_ks=(-2, 0, 2), decay_per_step=True, budgets=(200,),
             seeds_best=(1,), seeds_best_largest=(1,),
             note="The tiny config as its command runs it: its own data set and width, "
                  "200 steps, no augmentation. Each optimizer's best point is its default "
                  "in the config.")

SPECS = tuple(
    Spec(f"defaults_{model}", model=model, dataset=dataset, widths=(width,),
         overrides=_centres(model), **_AXES)
    for model, dataset, width in (("gpt2", "pydoc", 128), ("vit", "digits", 64),
                                  ("cnn", "digits", 32)))

"""The documented settings as a row of the study: what the README's quick start recommends.

SGD-SaI (``normalize=True``) at peak learning rate 1 and the library's default weight decay
1e-3 (``lr x wd`` = 1e-3 per step), with the examples' warmup and cosine schedule, on the
tiny GPT-2 and the tiny ViT at 1,000 steps (width 64) and the small CNN at 300 steps (width
32), two seeds: the budgets and widths of the learning-rate x weight-decay and kinds studies,
whose tuned bests it is compared with (``docs/guides/study.md``). One point, no grid.

``documented_vit_zero_head`` applies the documented rule for a zero-initialised head (the
ViT's): divide the learning rate by the largest g-SNR scale read after the second step,
4.38 for this ViT (``benchmarks/results/study/kinds_vit/scales.json``; the body is captured
at step 2 and divided by the head's g-SNR), and keep ``lr x wd`` = 1e-3 per step.
"""

from benchmarks._tables import MODELS
from benchmarks.study.spec import Spec

ZERO_HEAD_MAX_SCALE = 4.38  # the tiny ViT's largest scale after step 2 (kinds_vit/scales.json)


def _point(name: str, model: str, budget: int, width: int, lr: float, heading: str,
           note: str) -> Spec:
  """One SGD-SaI cell (two seeds) at ``lr`` and ``lr x wd`` = 1e-3 per step."""
  setting = (("learning_rates", (("sgd_sai", lr),)), ("weight_decays", (("sgd_sai", 1e-3 / lr),)))
  return Spec(name, heading=heading, model=model, optimizers=("sgd_sai",), lr_ks=(0,),
              wd_ks=(0,), budgets=(budget,), widths=(width,), max_extend=0, seeds_best=(1,),
              seeds_best_largest=(1,), overrides=(*MODELS[model].overrides, *setting),
              note=note)


SPECS = tuple(
    _point(f"documented_{model}", model, budget, width, 1.0, "Documented settings",
           "One point: peak lr 1 and weight decay 1e-3, the README quick start's setting.")
    for model, budget, width in (("gpt2", 1000, 64), ("vit", 1000, 64), ("cnn", 300, 32))) + (
    _point("documented_vit_zero_head", "vit", 1000, 64, 1.0 / ZERO_HEAD_MAX_SCALE,
           "Documented settings, zero-head rule",
           "One point: lr 1 / 4.38 (the largest scale after step 2) and lr x wd = 1e-3."),
)

"""The documented settings as a row of the study: what the README's quick start recommends.

SGD-SaI (``normalize=True``) at peak learning rate 1 and the library's default weight decay
1e-3 (``lr x wd`` = 1e-3 per step), with the examples' warmup and cosine schedule, on the
tiny GPT-2 and the tiny ViT at 1,000 steps (width 64) and the small CNN at 300 steps (width
32), two seeds: the budgets and widths of the learning-rate x weight-decay and kinds studies,
whose tuned bests it is compared with (``docs/guides/study.md``). One point, no grid.
"""

from benchmarks._tables import MODELS
from benchmarks.study.spec import Spec

SETTING = (("learning_rates", (("sgd_sai", 1.0),)), ("weight_decays", (("sgd_sai", 1e-3),)))

SPECS = tuple(
    Spec(f"documented_{model}", heading="Documented settings", model=model,
         optimizers=("sgd_sai",), lr_ks=(0,), wd_ks=(0,), budgets=(budget,), widths=(width,),
         max_extend=0, seeds_best=(1,), seeds_best_largest=(1,),
         overrides=(*MODELS[model].overrides, *SETTING),
         note="One point: peak lr 1 and weight decay 1e-3, the README quick start's setting.")
    for model, budget, width in (("gpt2", 1000, 64), ("vit", 1000, 64), ("cnn", 300, 32)))

"""Does one learning rate carry over across kinds of model? GPT-2, ViT and a CNN.

Each optimizer's best learning rate (half-decade grid around its example default, extended
while the best sits on an edge) at 300 steps, one seed, the weight decay at each optimizer's
example default: both SGD-SaI conventions, AdamW and SGD-momentum, on the tiny GPT-2
(``stdlib``, width 64), the tiny ViT and the small CNN (digits with shifts). The report lists each
model's per-block g-SNR scales after the first two steps.
"""

from benchmarks.study.spec import Spec

_AXES = dict(heading="Kinds of model", optimizers=("sgd_sai", "sgd_sai_unnorm", "adamw", "sgdm"),
             budgets=(300,), seeds_best=(), seeds_best_largest=(), report_scales=True)

SPECS = (
    Spec("kinds_gpt2", model="gpt2", widths=(64,), **_AXES),
    Spec("kinds_vit", model="vit", widths=(64,), **_AXES),
    Spec("kinds_cnn", model="cnn", widths=(32,), **_AXES),
)

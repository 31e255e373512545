"""Does one learning rate carry over across width and depth, at tuned weight decays?

GPT-2 (``stdlib``) at 300 steps: widths 64, 128, 256 and 512 (``n_embd``, 4 layers) and
depths 2, 4 and 8 (``n_layer``, width 64). Each optimizer's learning rates half a decade
apart around its example default, extended while the best sits on an edge; seed 1 at the
best. The weight decay is each optimizer's best of the learning-rate x weight-decay study
(``lr_wd_gpt2``, 1,000 steps, width 64), held fixed across the axis: for SGD-SaI as
``lr x wd`` = 5e-4 per step (its best: lr 5, wd 1e-4), for AdamW as wd = 0.316, for
SGD-momentum as wd = 1e-5. ``python -m benchmarks.study.transfer`` reads the drift.
"""

from benchmarks._tables import MODELS
from benchmarks.study.spec import Spec

# Each optimizer's tuned weight decay (lr_wd_gpt2 at 1,000 steps): SGD-SaI's as its per-step
# decay 5e-4 at the grid's centre lr 0.5 (wd 1e-3; decay_per_step keeps lr x wd fixed).
TUNED_DECAYS = (("weight_decays", (("sgd_sai", 1e-3), ("adamw", 0.316), ("sgdm", 1e-5))),)
_NOTE = ("Weight decays: each optimizer's best of `lr_wd_gpt2` (1,000 steps, width 64), held "
         "fixed along the axis: SGD-SaI's as lr x wd = 5e-4 per step, AdamW's wd 0.316, "
         "SGD-momentum's wd 1e-5. The drift of each best learning rate: "
         "`python -m benchmarks.study.transfer`.")
_AXES = dict(heading="Learning-rate transfer", model="gpt2", budgets=(300,),
             optimizers=("sgd_sai", "adamw", "sgdm"), decay_per_step=("sgd_sai",),
             seeds_best=(1,), seeds_best_largest=(1,),
             overrides=(*MODELS["gpt2"].overrides, *TUNED_DECAYS), note=_NOTE)

SPECS = (
    Spec("width_gpt2", widths=(64, 128, 256, 512), **_AXES),
    Spec("depth_gpt2", widths=(4, 2, 8), axis="n_layer",
         **{**_AXES, "overrides": (*_AXES["overrides"], ("n_embd", 64))}),
)

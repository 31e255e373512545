"""Learning rate x weight decay for every optimizer, like the paper's Figure 2.

Learning rates half a decade apart around each optimizer's default, and three weight decays
a decade apart around its default per-step decay ``lr x wd`` (so SGD-SaI's grid, whose
learning rates are ~100x AdamW's, compares with the others point for point); both axes
extended while the best sits on an edge; seed 1 (2 at 3,000 steps) at the best.
GPT-2 at 1,000 and 3,000 steps (width 64) and 1,000 steps at width 128; the ViT at both
budgets and widths 64 and 128. Stages run in the order listed: the width-64 budgets first.
"""

from benchmarks.study.spec import Spec

_AXES = dict(heading="Learning rate x weight decay",
             optimizers=("sgd_sai", "sgd_sai_unnorm", "adamw", "sgdm"), lr_ks=(-2, -1, 0, 1, 2),
             wd_ks=(-2, 0, 2), decay_per_step=True, budgets=(1000, 3000), widths=(64, 128))

SPECS = (
    Spec("lr_wd_gpt2", model="gpt2", stages=((1000, 64), (3000, 64), (1000, 128)), **_AXES),
    Spec("lr_wd_vit", model="vit", stages=((1000, 64), (3000, 64), (1000, 128), (3000, 128)),
         **_AXES),
)

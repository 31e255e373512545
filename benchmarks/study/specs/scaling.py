"""Does SGD-SaI catch up with AdamW as training grows? A budget x width study.

Per budget (100 to 3,000 steps) and width, each optimizer's learning rates half a decade
apart around its example default, extended while the best sits on an edge; seed 1 (and 2 at
3,000 steps) at the best. GPT-2 (width ``n_embd``; the ``stdlib`` corpus) and the ViT (width
``hidden_size``, MLP 2 x width; the digits with +-1 pixel shifts). ``sgd_sai_unnorm`` (the
released package's ``normalize=False``, its grid sgd_sai's divided by the measured
normaliser) is the weight-decay check: ``--optimizers sgd_sai_unnorm --widths 64``.
"""

from benchmarks.study.spec import Spec

SPECS = (
    Spec("scaling_gpt2", model="gpt2", widths=(128, 64, 256), results="study_scaling/gpt2",
         note="The ViT's study is in `../vit/table.md` (its data, scikit-learn's digits, "
              "repeats: see there)."),
    Spec("scaling_vit", model="vit", widths=(64, 128), results="study_scaling/vit"),
)

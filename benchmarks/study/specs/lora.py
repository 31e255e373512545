"""LoRA fine-tuning: SGD-SaI, AdamW and SGD-momentum on rank-8 adapters, the full
fine-tuning ceiling, and SGD-SaI with A pinned, the released package's behaviour.

The tiny GPT-2, pretrained on English prose (``pydoc``, cached), fine-tuned for 100 steps
on Python source (``pysource``). Each arm's learning rates are half a decade apart around
its example default (the adapters are not decayed), extended while the best sits on an
edge; seeds 1 and 2 at each best. ``full_adamw`` trains every parameter (``rank=0``);
``sgd_sai_pinned_a`` zeroes A's gradient (``LoRAConfig.pin_a``): what ``sgd-sai`` 1.0.3
does to LoRA's A, whose gradient is exactly zero at step 1. An ablation. The report adds
LoRA's own columns (``examples.lora.study``).
"""

from benchmarks.study.spec import Arm, Spec

ARMS = (
    Arm("sgd_sai", "sgd_sai", label="SGD-SaI, LoRA r=8"),
    Arm("adamw", "adamw", label="AdamW, LoRA r=8"),
    Arm("sgdm", "sgdm", label="SGD-momentum, LoRA r=8"),
    Arm("full_adamw", "adamw", (("rank", 0),), "AdamW, full fine-tuning"),
    Arm("sgd_sai_pinned_a", "sgd_sai", (("pin_a", True),),
        "SGD-SaI, LoRA r=8, A pinned (1.0.3; ablation)"),
)

# The grid centres: the example's rank-8 defaults when the study ran, pinned here so that
# the logged points keep their learning rates whatever the defaults become.
CENTRES = (("sgd_sai", 3.0), ("adamw", 1e-2), ("sgdm", 0.3))

SPECS = (
    Spec("lora", heading="LoRA fine-tuning", model="lora", arms=ARMS,
         optimizers=tuple(a.name for a in ARMS), budgets=(100,), widths=(128,),
         seeds_best=(1, 2), seeds_best_largest=(1, 2),
         overrides=(("learning_rates", CENTRES),),
         note="Grid centres: the example's rank-8 defaults when this study ran (SGD-SaI 3, "
              "AdamW 1e-2 for both of its arms, SGD-momentum 0.3), pinned in the spec. "
              "No weight decay (the adapters' recipe)."),
)

"""The studies, each a :class:`benchmarks.study.spec.Spec`: ``python -m benchmarks.study NAME``."""

from __future__ import annotations

from benchmarks.study.spec import Spec
from benchmarks.study.specs import defaults, documented, kinds, lora, lr_wd, scaling, width

SPECS: dict[str, Spec] = {
    s.name: s for m in (scaling, lr_wd, kinds, lora, documented, width, defaults) for s in m.SPECS}

"""One study engine: specs, a planner, the log, training backends, analysis and reports.

* :mod:`~benchmarks.study.spec`: what a study is (model, optimizers, learning-rate and
  weight-decay axes, budgets, widths, seeds, backend); the studies are in ``specs/``.
* :mod:`~benchmarks.study.planner`: which cells run next (grids, edge extensions, seeds).
* :mod:`~benchmarks.study.log`: the append-only resumable log (``cells.jsonl``).
* :mod:`~benchmarks.study.backends`: a vmapped group, or one cell at a time through ``fit``.
* :mod:`~benchmarks.study.analysis`: the rules for best and diverged, the sensitivity band.
* :mod:`~benchmarks.study.report`: the one report writer (tables, plots, summary).

Optimizers come from ``examples.common.optim.OPTIMIZERS`` and models from
``benchmarks._tables.MODELS``. See ``docs/guides/study.md``.
"""

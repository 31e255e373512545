"""Re-exports of the benchmarks' shared modules, for callers written against one module.

New code imports the module of its concern: :mod:`benchmarks._tables` (the model table,
the optimizer settings), :mod:`benchmarks._trees` (parameter trees, byte counts),
:mod:`benchmarks._timing` (compiled steps, interleaved timing) and
:mod:`benchmarks._report` (host description, tables, plots).
"""

from benchmarks._report import (  # noqa: F401
    bar_plot,
    benchmark_parser,
    ensure_dir,
    fmt_bytes,
    host_line,
    machine_description,
    markdown_table,
)
from benchmarks._tables import (  # noqa: F401
    BENCHMARK_OPTIMIZERS,
    MODEL_LABELS,
    MODELS,
    OPTIMIZER_LABELS,
    SIZES,
    VARIANTS,
    abstract_params,
    make_optimizer,
)
from benchmarks._timing import (  # noqa: F401
    Runner,
    Summary,
    available_memory_bytes,
    elementwise_runner,
    interleave,
    make_elementwise_pass,
    make_step,
    optimizer_runner,
    round_ratios,
    time_first_steps,
    timed,
)
from benchmarks._trees import (  # noqa: F401
    StepBytes,
    abstract_state,
    elementwise_bytes,
    forwarded_state_leaves,
    llama2_7b_params,
    materialise,
    step_bytes,
    synthetic_params,
    tree_nbytes,
    tree_size,
)

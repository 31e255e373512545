"""``python -m benchmarks.study SPEC``: run a study (resumable), then rewrite its report.

    python -m benchmarks.study scaling_gpt2                    # run, then report
    python -m benchmarks.study scaling_gpt2 --report-only      # rewrite from the log
    python -m benchmarks.study scaling_gpt2 --budgets 3000 --widths 64
    python -m benchmarks.study scaling_vit --optimizers sgd_sai_unnorm --widths 64
    python -m benchmarks.study lora --optimizers full_adamw            # an arm of the spec
    python -m benchmarks.study scaling_gpt2 --measure-throughput   # throughput.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.study import report, runner
from benchmarks.study.specs import SPECS


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line; returns the counts and the report's summary."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("spec", choices=list(SPECS))
  parser.add_argument("--out", type=Path, default=None,
                      help="results folder (default: the spec's, under benchmarks/results)")
  parser.add_argument("--optimizers", nargs="+",
                      help="run only these optimizers or arms of the spec (default: the "
                      "spec's)")
  parser.add_argument("--budgets", type=int, nargs="+", help="run only these budgets")
  parser.add_argument("--widths", type=int, nargs="+", help="run only these widths")
  parser.add_argument("--report-only", action="store_true",
                      help="rewrite the report from the log; train nothing")
  parser.add_argument("--measure-throughput", action="store_true",
                      help="five 100-step AdamW cells: fit one by one vs one vmapped group")
  args = parser.parse_args(argv)
  spec = SPECS[args.spec]
  if unknown := set(args.optimizers or ()) - set(spec.keys()):
    parser.error(f"--optimizers: unknown {sorted(unknown)}; choose from {spec.keys()}")
  out = args.out or Path(spec.results_dir)
  command = "python -m benchmarks.study " + " ".join(argv if argv is not None else sys.argv[1:])
  if args.measure_throughput:
    from benchmarks.study import backends

    return backends.measure_throughput(spec, out)
  counts = {"trained": 0, "groups": 0}
  if not args.report_only:
    counts = runner.run_study(
        spec, out, optimizers=args.optimizers, budgets=args.budgets, widths=args.widths,
        command=command, log_fn=lambda s: print(s, flush=True),
        after_group=lambda: report.report(spec, out))
  summary = report.report(spec, out)
  print((out / "table.md").read_text())
  return {**counts, "summary": summary}


if __name__ == "__main__":
  sys.exit(0 if main() else 1)

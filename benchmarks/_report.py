"""Reporting for the benchmarks and the studies: host description, tables, bar plots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from benchmarks._tables import BENCHMARK_OPTIMIZERS, MODEL_LABELS, OPTIMIZER_LABELS, SIZES, VARIANTS


def host_line() -> str:
  """The short host description every study output carries: ``x86_64, 2 CPU cores``."""
  return f"{platform.machine()}, {os.cpu_count()} CPU cores"


def machine_description() -> str:
  """A one-line description of the backend and host the numbers were measured on."""
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return (f"{dev.platform.upper()} backend ({kind}), {os.cpu_count()} cores [{cpu}], "
          f"jax {jax.__version__}, optax {optax.__version__}")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A GitHub Markdown table; numbers are expected pre-formatted as strings."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def fmt_bytes(n: float) -> str:
  """Bytes in MiB / GiB with three significant digits."""
  if n >= 2**30:
    return f"{n / 2**30:.3g} GiB"
  if n >= 2**20:
    return f"{n / 2**20:.3g} MiB"
  return f"{n / 2**10:.3g} KiB"


def ensure_dir(path: str) -> str:
  """Creates ``path`` if needed and returns it."""
  os.makedirs(path, exist_ok=True)
  return path


def write_results(out: str, name: str, text: str, record: Mapping[str, Any] | None) -> None:
  """Writes ``out/name.md`` and, unless ``record`` is None, ``out/name.json``.

  The record is stamped with the local time it was written (``time``), after its own keys.
  """
  ensure_dir(out)
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write(text)
  if record is not None:
    with open(os.path.join(out, f"{name}.json"), "w") as f:
      json.dump({**record, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)


def log_line(message: str) -> None:
  """A benchmark's progress line, on standard error (its Markdown goes to standard output)."""
  print(message, file=sys.stderr, flush=True)


def names(flag: str) -> list[str]:
  """The names of a comma-separated flag (``"sgd_sai,adamw"``), empty ones dropped."""
  return [name for name in flag.split(",") if name]


def publish(out: str, name: str, rows: Sequence[Any], markdown: Callable[[str], str],
            **record: Any) -> None:
  """The end of a benchmark run: its Markdown printed and written to ``out/name.md``, and
  ``out/name.json`` holding the machine, ``record`` and the rows.

  Args:
    out: the results folder.
    name: the benchmark's name (the files' stem).
    rows: the measured rows (dataclasses).
    markdown: ``machine description -> Markdown`` of the rows.
    **record: further fields of the JSON record (before ``rows``).
  """
  machine = machine_description()
  text = markdown(machine)
  write_results(out, name, text, {"machine": machine, **record,
                                  "rows": [dataclasses.asdict(r) for r in rows]})
  print(text)


def bar_plot(path: str, groups: Mapping[str, Mapping[str, float]],
             errors: Mapping[str, Mapping[str, tuple[float, float]]] | None,
             ylabel: str, title: str, hline: float | None = None) -> None:
  """A grouped bar chart (groups = models, bars = optimizers) saved as PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  group_names = list(groups)
  bars = list(dict.fromkeys(b for g in groups.values() for b in g))
  width = 0.8 / max(len(bars), 1)
  fig, ax = plt.subplots(figsize=(max(7.0, 1.8 * len(group_names) + 3), 4.6))
  xs = np.arange(len(group_names))
  for i, bar in enumerate(bars):
    vals = [groups[g].get(bar, np.nan) for g in group_names]
    yerr = None
    if errors is not None:
      lo = [vals[j] - errors[g].get(bar, (vals[j], vals[j]))[0] for j, g in enumerate(group_names)]
      hi = [errors[g].get(bar, (vals[j], vals[j]))[1] - vals[j] for j, g in enumerate(group_names)]
      yerr = np.array([lo, hi])
    ax.bar(xs + (i - (len(bars) - 1) / 2) * width, vals, width, yerr=yerr, capsize=2,
           label=OPTIMIZER_LABELS.get(bar, bar))
  if hline is not None:
    ax.axhline(hline, color="k", lw=0.8, ls="--")
  ax.set_xticks(xs, [MODEL_LABELS.get(g, g) for g in group_names])
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def benchmark_parser(doc: str, default_models: Sequence[str], default_optimizers: Sequence[str],
                     rounds: int, optimizers_note: str = "") -> argparse.ArgumentParser:
  """The flags every timing benchmark shares: models, optimizers, rounds and results folder."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default=",".join(default_models),
                 help=f"comma-separated, from {sorted(SIZES)}")
  p.add_argument("--optimizers", default=",".join(default_optimizers),
                 help=f"comma-separated, from {sorted({**BENCHMARK_OPTIMIZERS, **VARIANTS})}"
                 + optimizers_note)
  p.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
  p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="results folder")
  return p

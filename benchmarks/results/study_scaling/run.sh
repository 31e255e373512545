#!/bin/sh
# The study as run here (resumable: re-running skips finished cells). From the repo root:
#   nohup sh benchmarks/results/study_scaling/run.sh > /tmp/scaling.log 2>&1 &
set -e
PY="nice -n 15 python -m benchmarks.scaling"
$PY --budgets 100
[ -f benchmarks/results/study_scaling/gpt2/throughput.json ] || $PY --measure-throughput
$PY

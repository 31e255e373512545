#!/bin/sh
# The study as run here (resumable: re-running skips finished cells). From the repo root,
# with the project's environment active:
#   nohup sh benchmarks/results/study_scaling/run.sh > /tmp/scaling_study.log 2>&1 &
# Cheapest first: every optimizer and width at 100 steps, then the throughput measurement,
# then 300, 1000 and 3000 steps.
set -e
PY="nice -n 15 python -m benchmarks.scaling"
$PY --budgets 100
[ -f benchmarks/results/study_scaling/gpt2/throughput.json ] || $PY --measure-throughput
$PY

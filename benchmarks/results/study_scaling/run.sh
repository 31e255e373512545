#!/bin/sh
# The study as run here (resumable: re-running skips finished cells). From the repo root,
# with the project's environment active:
#   nohup sh benchmarks/results/study_scaling/run.sh > /tmp/scaling_study.log 2>&1 &
# GPT-2 (results in gpt2/): every optimizer and width at 100 steps, then the throughput
# measurement, then 3,000 steps at width 64 (moved ahead of the 300 x 256 and 1000 x 128
# stages so that the budget axis reaches 3,000 first). ViT (results in vit/): widths 64
# (the tiny config's) and 128, every budget, cheapest first. Then the rest of GPT-2's
# stages, cheapest first.
set -e
PY="nice -n 15 python -m benchmarks.scaling"
$PY --budgets 100
[ -f benchmarks/results/study_scaling/gpt2/throughput.json ] || $PY --measure-throughput
$PY --budgets 3000 --widths 64
$PY --model vit --widths 64 --budgets 100 300
$PY --model vit --widths 64 128
# The weight-decay check: SGD-SaI with normalize=False on sgd_sai's grid / the measured
# normaliser, i.e. the same optimizer with weight decay / normaliser (width 64, every budget).
$PY --optimizers sgd_sai_unnorm --widths 64
$PY --model vit --optimizers sgd_sai_unnorm --widths 64
$PY

#!/bin/sh
# The budget studies as run here (resumable: re-running skips finished cells). From the
# repo root, with the project's environment active:
#   nohup sh benchmarks/results/study_scaling/run.sh > /tmp/scaling_study.log 2>&1 &
# GPT-2 (results in gpt2/): every optimizer and width at 100 steps, then 3,000 steps at
# width 64 (ahead of the 300 x 256 and 1000 x 128 stages so that the budget axis reaches
# 3,000 first). ViT (results in vit/): widths 64 (the tiny config's) and 128, every budget,
# cheapest first. Then the rest of GPT-2's stages, cheapest first. (The committed cells were
# run by benchmarks/scaling.py, which this engine replaced; its logs were converted.)
set -e
PY="nice -n 15 python -m benchmarks.study"
$PY scaling_gpt2 --budgets 100
$PY scaling_gpt2 --budgets 3000 --widths 64
$PY scaling_vit --widths 64 --budgets 100 300
$PY scaling_vit
# The weight-decay check: SGD-SaI with normalize=False on sgd_sai's grid / the measured
# normaliser, i.e. the same optimizer with weight decay / normaliser (width 64, every budget).
$PY scaling_gpt2 --optimizers sgd_sai_unnorm --widths 64
$PY scaling_vit --optimizers sgd_sai_unnorm --widths 64
$PY scaling_gpt2

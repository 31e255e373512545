#!/bin/sh
# The learning-rate x weight-decay and transfer studies as run here (resumable: re-running
# skips finished cells; an interrupted group resumes from its last evaluation). From the
# repo root, with the project's environment active:
#   nohup sh benchmarks/results/study/run.sh > /tmp/study.log 2>&1 &
# Finished: lr_wd at 1,000 steps, width 64, both models, every optimizer (the ViT's
# normalize=False arm too); the ViT's 3,000 steps at width 64; kinds, lora, the documented
# rows, the defaults_* specs; width_gpt2 at widths 64 and 128. Still queued, the question
# that can change the verdict first (GPT-2 at 3,000 steps):
set -e
PY="nice -n 10 python -m benchmarks.study"
$PY width_gpt2 --widths 64 128 256
$PY lr_wd_gpt2 --budgets 3000 --widths 64 --optimizers sgd_sai adamw sgdm
$PY depth_gpt2
$PY lr_wd_vit --budgets 1000 --widths 128 --optimizers sgd_sai adamw sgdm
$PY lr_wd_gpt2 --budgets 1000 --widths 128 --optimizers sgd_sai adamw sgdm
$PY lr_wd_vit --budgets 3000 --widths 128 --optimizers sgd_sai adamw sgdm
$PY width_gpt2 --widths 512
python -m benchmarks.study.transfer

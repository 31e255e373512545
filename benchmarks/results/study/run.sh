#!/bin/sh
# The learning-rate x weight-decay and transfer studies as run here (resumable: re-running
# skips finished cells; an interrupted group resumes from its last evaluation). From the
# repo root, with the project's environment active:
#   nohup sh benchmarks/results/study/run.sh > /tmp/study.log 2>&1 &
# Finished before this script: lr_wd at 1,000 steps, width 64, both models, every optimizer
# (the ViT's normalize=False arm too); the ViT's SGD-SaI at 3,000 steps; kinds, lora and the
# documented rows. The queue, cheapest question first (defaults_*: the examples' tiny
# configs as their commands run them, where their default settings come from):
set -e
PY="nice -n 10 python -m benchmarks.study"
$PY lr_wd_vit --budgets 3000 --widths 64 --optimizers sgd_sai adamw sgdm
$PY defaults_vit
$PY defaults_cnn
$PY defaults_gpt2
$PY width_gpt2 --widths 64 128 256
$PY depth_gpt2
$PY lr_wd_gpt2 --budgets 3000 --widths 64 --optimizers sgd_sai adamw sgdm
$PY lr_wd_vit --budgets 1000 --widths 128 --optimizers sgd_sai adamw sgdm
$PY lr_wd_gpt2 --budgets 1000 --widths 128 --optimizers sgd_sai adamw sgdm
$PY lr_wd_vit --budgets 3000 --widths 128 --optimizers sgd_sai adamw sgdm
$PY width_gpt2 --widths 512
python -m benchmarks.study.transfer

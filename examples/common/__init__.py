"""Training utilities shared by the GPT-2, ViT and LoRA examples.

``config``: the training fields every example shares and their checks; ``optim``:
optimizers, schedules and weight-decay masks; ``mesh``: the device mesh and FSDP
shardings; ``training``: the jitted steps, the training loop, the examples' ``train()`` /
``main()`` and the run errors; ``layers``: dropout; ``checkpoint``: orbax checkpoints;
``metrics``: ``metrics.jsonl``, ``gsnr.json``, ``curves.png`` and ``config.json``; ``cli``:
the shared command line.
"""

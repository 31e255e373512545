"""Training utilities shared by the GPT-2 and ViT examples.

``config``: the training fields both examples share; ``optim``: optimizers, schedules
and weight-decay masks; ``mesh``: the device mesh and FSDP shardings; ``training``: the
jitted steps, the training loop and the examples'
``train()`` / ``main()``; ``layers``: dropout; ``checkpoint``: orbax checkpoints; ``metrics``:
``metrics.jsonl``, ``gsnr.json`` and ``curves.png``; ``cli``: the shared command line.
"""

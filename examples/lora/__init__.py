"""LoRA fine-tuning of the GPT-2 example with SGD-SaI (see ``train.py``)."""

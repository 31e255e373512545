"""Vision Transformer (ViT) classification trained with SGD-SaI or a baseline, in Flax NNX."""

"""GPT-2 (nanoGPT recipe) trained with SGD-SaI or a baseline optimizer, in Flax NNX."""

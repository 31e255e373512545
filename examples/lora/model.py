"""Low-rank adapters (``nnx.LoRA``) on the GPT-2 example's attention and MLP projections.

:func:`add_adapters` wraps each target ``nnx.Linear`` of a built ``GPT`` in ``nnx.LoRA``
(``y = W x + b + (x A) B``, ``A ~ he_uniform``, ``B = 0``): the base kernels and biases keep
their ``nnx.Param`` type, the adapters are ``nnx.LoRAParam``, so ``nnx.LoRAParam`` selects
exactly what to train. With ``B = 0`` the adapted model starts equal to the base, and every
``A`` has an exactly zero gradient at the first step (``dL/dA = x^T (dL/dy) B^T``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from examples.gpt2.model import GPT

# The projections adapted in every block (nanoGPT names).
TARGETS = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")


def add_adapters(model: GPT, rank: int, rngs: nnx.Rngs) -> GPT:
  """Wraps every :data:`TARGETS` projection of ``model`` in a rank-``rank`` ``nnx.LoRA``.

  Args:
    model: an unrolled ``GPT`` (``scan_layers=False``).
    rank: the adapters' rank (> 0).
    rngs: draws the ``A`` matrices.

  Returns:
    ``model``, modified in place: ``h/<i>/<target>/base_module/{kernel,bias}`` (base, frozen
    by the caller's filter) and ``h/<i>/<target>/{lora_a,lora_b}`` (``nnx.LoRAParam``).
  """
  if rank <= 0:
    raise ValueError(f"rank must be positive, got {rank}")
  if model.cfg.scan_layers:
    raise ValueError("adapters need the unrolled model (scan_layers=False)")
  dtype = jnp.dtype(model.cfg.dtype)
  for block in model.h:
    for target in TARGETS:
      parent_name, name = target.split("/")
      parent = getattr(block, parent_name)
      base = getattr(parent, name)
      setattr(parent, name, nnx.LoRA(base.in_features, rank, base.out_features,
                                     base_module=base, dtype=dtype, param_dtype=jnp.float32,
                                     rngs=rngs))
  return model

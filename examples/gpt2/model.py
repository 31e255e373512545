"""GPT-2 in Flax NNX: pre-LayerNorm blocks, GELU MLP, learned positions, tied embeddings.

Matches OpenAI's GPT-2 / nanoGPT: weights ~ N(0, 0.02), the residual projections
(``attn.c_proj``, ``mlp.c_proj``) ~ N(0, 0.02 / sqrt(2 * n_layer)), biases and LayerNorm
offsets zero, and the output layer reuses the token embedding. With ``scan_layers`` the
blocks' parameters are stacked along a leading layer axis (created with ``nnx.vmap``,
applied with ``nnx.scan``), which compiles once per block instead of once per layer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from examples.common.layers import dropout
from examples.gpt2.configs import GPTConfig


def _linear(cfg: GPTConfig, d_in: int, d_out: int, std: float, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      d_in, d_out, use_bias=cfg.bias, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32,
      kernel_init=nnx.initializers.normal(std), bias_init=nnx.initializers.zeros_init(),
      rngs=rngs,
  )


def _layer_norm(cfg: GPTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(cfg.n_embd, epsilon=1e-5, use_bias=cfg.bias,
                       dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32, rngs=rngs)


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with one fused QKV projection."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    if cfg.n_embd % cfg.n_head:
      raise ValueError(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
    self.n_head, self.rate = cfg.n_head, cfg.dropout
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    self.c_attn = _linear(cfg, cfg.n_embd, 3 * cfg.n_embd, 0.02, rngs)
    self.c_proj = _linear(cfg, cfg.n_embd, cfg.n_embd, residual_std, rngs)

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    b, t, c = x.shape
    qkv = self.c_attn(x).reshape(b, t, 3, self.n_head, c // self.n_head)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, c)
    return dropout(self.c_proj(y), self.rate, key)


class MLP(nnx.Module):
  """The 4x-wide GELU feed-forward layer."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    self.rate = cfg.dropout
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    self.c_fc = _linear(cfg, cfg.n_embd, 4 * cfg.n_embd, 0.02, rngs)
    self.c_proj = _linear(cfg, 4 * cfg.n_embd, cfg.n_embd, residual_std, rngs)

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return dropout(self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=True)), self.rate, key)


class Block(nnx.Module):
  """One pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    self.ln_1 = _layer_norm(cfg, rngs)
    self.attn = CausalSelfAttention(cfg, rngs=rngs)
    self.ln_2 = _layer_norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    x = x + self.attn(self.ln_1(x), k1)
    return x + self.mlp(self.ln_2(x), k2)


class GPT(nnx.Module):
  """GPT-2 language model: ``GPT(config, rngs=nnx.Rngs(0))(tokens) -> logits``.

  Parameters live under ``wte`` (tied token embedding), ``wpe``, ``h`` (the blocks: a list,
  or one stacked block with a leading layer axis when ``config.scan_layers``) and ``ln_f``.
  """

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    if cfg.vocab_size is None:
      raise ValueError("GPTConfig.vocab_size is None: fill it from the data's meta.json")
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    emb_init = nnx.initializers.normal(0.02)
    self.wte = nnx.Embed(cfg.vocab_size, cfg.n_embd, dtype=dtype, param_dtype=jnp.float32,
                         embedding_init=emb_init, rngs=rngs)
    self.wpe = nnx.Embed(cfg.block_size, cfg.n_embd, dtype=dtype, param_dtype=jnp.float32,
                         embedding_init=emb_init, rngs=rngs)
    if cfg.scan_layers:

      @nnx.split_rngs(splits=cfg.n_layer)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make_blocks(rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs=rngs)

      self.h = make_blocks(rngs)
    else:
      self.h = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
    self.ln_f = _layer_norm(cfg, rngs)

  def __call__(self, idx: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
    """Token ids ``(batch, time)`` -> float32 logits ``(batch, time, vocab)``.

    ``dropout_key`` switches dropout on (training); ``None`` is deterministic.
    """
    cfg = self.cfg
    t = idx.shape[1]
    if t > cfg.block_size:
      raise ValueError(f"sequence length {t} exceeds the context {cfg.block_size}")
    x = self.wte(idx) + self.wpe(jnp.arange(t))[None]
    keys = None
    if dropout_key is not None and cfg.dropout > 0:
      keys = jax.random.split(dropout_key, cfg.n_layer + 1)
      x = dropout(x, cfg.dropout, keys[0])
    if cfg.scan_layers:
      if keys is None:

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x: jax.Array, block: Block) -> jax.Array:
          return block(x)

        x = run(x, self.h)
      else:

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def run_dropout(x: jax.Array, block: Block, key: jax.Array) -> jax.Array:
          return block(x, key)

        x = run_dropout(x, self.h, keys[1:])
    else:
      for i, block in enumerate(self.h):
        x = block(x, None if keys is None else keys[i + 1])
    x = self.ln_f(x)
    return self.wte.attend(x).astype(jnp.float32)


def stack_layers(params: nnx.State) -> dict:
  """Unrolled ``GPT`` parameters (``h/0``, ``h/1``, ...) as the ``scan_layers`` layout.

  Returns a pure dict (``nnx.to_pure_dict`` layout) whose ``h`` leaves carry a
  leading layer axis; load it with ``nnx.replace_by_pure_dict``.
  """
  pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else dict(params)
  layers = [pure["h"][i] for i in sorted(pure["h"])]
  out = {k: v for k, v in pure.items() if k != "h"}
  out["h"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out

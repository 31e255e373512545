"""Vision Transformer (Dosovitskiy et al. 2021) in Flax NNX, timm / big_vision layout.

Patch-embedding convolution, a class token, learned position embeddings, pre-LN encoder
blocks (fused QKV attention, GELU MLP), a final LayerNorm and a linear head on the class
token. With ``zero_head`` the head starts at zero (Google's recipe): at step 1 every block
below it has a zero gradient, which SGD-SaI handles by capturing their g-SNR at the first
step their gradient is non-zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from examples.common.layers import dropout
from examples.vit.configs import ViTConfig

_xavier = nnx.initializers.xavier_uniform()



class EncoderBlock(nnx.Module):
  """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
    if d % cfg.num_heads:
      raise ValueError(f"hidden_size {d} is not divisible by num_heads {cfg.num_heads}")
    self.num_heads, self.rate = cfg.num_heads, cfg.dropout

    def linear(a: int, b: int, bias_std: float = 0.0) -> nnx.Linear:
      bias_init = nnx.initializers.normal(bias_std) if bias_std else nnx.initializers.zeros_init()
      return nnx.Linear(a, b, kernel_init=_xavier, bias_init=bias_init, dtype=dtype,
                        param_dtype=jnp.float32, rngs=rngs)

    self.norm1 = nnx.LayerNorm(d, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.qkv = linear(d, 3 * d)
    self.proj = linear(d, d)
    self.norm2 = nnx.LayerNorm(d, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.fc1 = linear(d, cfg.mlp_dim, 1e-6)
    self.fc2 = linear(cfg.mlp_dim, d, 1e-6)

  def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    b, n, d = x.shape
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    x = x + dropout(self.proj(y.reshape(b, n, d)), self.rate, k1)
    h = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
    return x + dropout(h, self.rate, k2)


class ViT(nnx.Module):
  """``ViT(config, rngs=nnx.Rngs(0))(images NHWC) -> logits (batch, num_classes)``."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    if cfg.image_size % cfg.patch_size:
      raise ValueError(f"image_size {cfg.image_size} is not divisible by {cfg.patch_size}")
    self.cfg = cfg
    d, dtype = cfg.hidden_size, jnp.dtype(cfg.dtype)
    num_patches = (cfg.image_size // cfg.patch_size) ** 2
    p = cfg.patch_size
    self.patch_embed = nnx.Conv(cfg.channels, d, kernel_size=(p, p), strides=(p, p),
                                padding="VALID", dtype=dtype, param_dtype=jnp.float32,
                                kernel_init=nnx.initializers.lecun_normal(), rngs=rngs)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, d), jnp.float32))
    self.pos_embed = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (1, num_patches + 1, d), jnp.float32))
    self.blocks = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = nnx.LayerNorm(d, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    head_init = nnx.initializers.zeros_init() if cfg.zero_head else _xavier
    self.head = nnx.Linear(d, cfg.num_classes, kernel_init=head_init,
                           bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                           param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, images: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
    """Images ``(batch, height, width, channels)`` -> float32 logits.

    ``dropout_key`` switches dropout on (training); ``None`` is deterministic.
    """
    cfg = self.cfg
    x = self.patch_embed(images.astype(jnp.dtype(cfg.dtype)))
    b = x.shape[0]
    x = x.reshape(b, -1, cfg.hidden_size)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, cfg.hidden_size))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    keys = (jax.random.split(dropout_key, cfg.depth + 1)
            if dropout_key is not None and cfg.dropout > 0 else None)
    if keys is not None:
      x = dropout(x, cfg.dropout, keys[0])
    for i, block in enumerate(self.blocks):
      x = block(x, None if keys is None else keys[i + 1])
    return self.head(self.norm(x)[:, 0]).astype(jnp.float32)

"""Independent NumPy references for the tests (float64), written from the paper and docs/spec.md."""

from __future__ import annotations

import numpy as np


def np_gsnr(g: np.ndarray, eps: float = 1e-8) -> float:
  """The reference's statistic, written independently in NumPy (float64)."""
  g = np.asarray(g, np.float64).ravel()
  if g.size == 1:
    return 1.0
  return float(np.linalg.norm(g) / (np.std(g, ddof=1) + eps))


def np_sgd_sai(params, grad_seq, lr, momentum, weight_decay, eps=1e-8, normalize=True):
  """The update rule of the reference PyTorch optimizer, transcribed in NumPy.

  ``params`` is a list of arrays (one block each); ``grad_seq`` a list of such
  lists; ``lr`` a float or a function of the step index (0-based). Mirrors
  ``SGD_sai.step``: p *= 1 - lr*wd; buf = g (first) else mu*buf + (1-mu)*g;
  p -= lr * scale * buf, with scale = snr (1.0.3) or snr / max snr (Algorithm 1).
  Returns the parameters after every step.
  """
  p = [np.array(x, np.float64) for x in params]
  buf = [None] * len(p)
  scale = None
  history = []
  for t, grads in enumerate(grad_seq):
    grads = [np.asarray(g, np.float64) for g in grads]
    if scale is None:
      snr = [np_gsnr(g, eps) for g in grads]
      top = max(snr) if normalize else 1.0
      scale = [s / top for s in snr]
    lr_t = lr(t) if callable(lr) else lr
    for i, g in enumerate(grads):
      p[i] = p[i] * (1 - lr_t * weight_decay)
      buf[i] = g.copy() if buf[i] is None else momentum * buf[i] + (1 - momentum) * g
      p[i] = p[i] - lr_t * scale[i] * buf[i]
    history.append([x.copy() for x in p])
  return history

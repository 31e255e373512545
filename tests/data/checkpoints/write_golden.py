"""Writes the golden checkpoints of the optax_sai installed on ``PYTHONPATH``.

Run with the code of the release or commit whose state format is to be recorded (see
README.md here); the test (tests/test_checkpoint_formats.py) never needs that code:

    git -C <repo> archive <commit> optax_sai | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/data/checkpoints/write_golden.py --commit <commit>

For every case it trains ``sgd_sai`` two steps on recorded gradients and saves
``{"params", "opt_state"}`` with Orbax's ``StandardCheckpointer`` to
``format<N>/<case>/checkpoint``, where N is the state format of the code that ran, and
writes ``format<N>/<case>/case.json``: the commit, the version, the hyperparameters, the
initial parameters and three steps of gradients (the third is for the test's resumed step).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import optax_sai

HERE = pathlib.Path(__file__).resolve().parent
HYPER = {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01}
# name -> (extra sgd_sai arguments as JSON, parameter shapes, blocks whose step-1 gradient is 0)
CASES = {
    "normalized": ({"normalize": True}, {"w": [3, 4], "b": [4]}, {}),
    "unnormalized": ({"normalize": False}, {"w": [3, 4], "b": [4]}, {}),
    # A stacked leaf split along axis 0; its slice 1 has a zero first gradient (late capture).
    "stacked": ({"normalize": True, "block_axes": {"layers": 0, "b": None}},
                {"layers": [3, 2, 3], "b": [4]}, {"layers": 1}),
    "bf16_momentum": ({"normalize": True, "mu_dtype": "bfloat16"}, {"w": [3, 4], "b": [4]}, {}),
}


def state_format_of_this_code() -> int:
  return 1 if "captured" in optax_sai.ScaleByGsnrState._fields else 2


def make_case(seed: int, shapes: dict, zero_first: dict) -> dict:
  rng = np.random.default_rng(seed)
  f32 = lambda a: np.asarray(a, np.float32).tolist()  # noqa: E731
  params = {k: f32(rng.normal(size=s)) for k, s in shapes.items()}
  grads = []
  for step in range(3):
    g = {k: np.asarray(rng.normal(0.1, 1.0, size=s) * 0.1, np.float32) for k, s in shapes.items()}
    for k, i in zero_first.items():
      if step == 0:
        g[k][i] = 0.0
    grads.append({k: f32(v) for k, v in g.items()})
  return {"params": params, "grads": grads}


def optimizer(options: dict):
  kwargs = dict(options)
  if "mu_dtype" in kwargs:
    kwargs["mu_dtype"] = jnp.dtype(kwargs["mu_dtype"])
  return optax_sai.sgd_sai(**HYPER, **kwargs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--commit", required=True, help="the commit the code on PYTHONPATH is")
  args = parser.parse_args()
  fmt = state_format_of_this_code()
  for seed, (name, (options, shapes, zero_first)) in enumerate(CASES.items()):
    case = make_case(seed, shapes, zero_first)
    tx = optimizer(options)
    as_arrays = lambda t: {k: jnp.asarray(v, jnp.float32) for k, v in t.items()}  # noqa: E731
    params = as_arrays(case["params"])
    state = tx.init(params)
    for g in case["grads"][:2]:
      updates, state = tx.update(as_arrays(g), state, params)
      params = jax.tree.map(lambda p, u: p + u, params, updates)
    out = HERE / f"format{fmt}" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "checkpoint", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    meta = {"state_format": fmt, "commit": args.commit, "optax_sai": optax_sai.__version__,
            "sgd_sai": {**HYPER, **options}, "steps_saved": 2, **case}
    (out / "case.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out} (state format {fmt}, optax_sai {optax_sai.__version__})")


if __name__ == "__main__":
  main()

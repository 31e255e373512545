"""One process of the multi-process GPT-2 test (run by ``test_multiprocess.py``).

    python tests/examples/_multiprocess_worker.py OUT_PREFIX -- <examples.gpt2.train flags>

Runs the example's command line unchanged. The job is joined (or not) through the
environment, exactly as a user's run would be. Around it, this records which global rows of
each training batch this process built, with a checksum of each row's tokens, in
``OUT_PREFIX.rows<process>.json``. Then process 0 writes the final parameters, gathered from
all processes, to ``OUT_PREFIX.params.npz``.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np


def main() -> None:
  out, sep, *argv = sys.argv[1:]
  assert sep == "--", sys.argv
  # As in the test suite (pyproject.toml): our own code must not use deprecated APIs.
  warnings.filterwarnings("error", category=DeprecationWarning,
                          module=r"(optax_sai|examples)(\.|$)")
  from examples.gpt2 import data as data_lib

  built: list[dict] = []
  original = data_lib.LMData.train_batch

  def recording(self, step, rows=None):
    batch = original(self, step, rows)
    built.append({
        "step": int(step),
        "rows": None if rows is None else [int(r) for r in rows],
        "checksums": [int(x.astype(np.int64).sum()) for x in batch["x"]],
    })
    return batch

  data_lib.LMData.train_batch = recording
  from examples.gpt2 import train

  result = train.main(argv)

  import jax
  from jax.experimental import multihost_utils

  process = jax.process_index()
  with open(f"{out}.rows{process}.json", "w") as f:
    json.dump({"process": process, "processes": jax.process_count(),
               "local_devices": jax.local_device_count(), "devices": jax.device_count(),
               "built": built}, f)
  params = multihost_utils.process_allgather(result["params"], tiled=True)
  if process == 0:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    np.savez(f"{out}.params.npz",
             **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat})


if __name__ == "__main__":
  main()

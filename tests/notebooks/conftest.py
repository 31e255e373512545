"""The notebooks' kernels inherit this environment: flax's `nnx.State` deprecation is an
error there too (the same policy as pyproject.toml's filterwarnings for the suite)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _deprecations_are_errors_in_kernels(monkeypatch):
  # PYTHONWARNINGS matches the message's start literally; flax attributes the warning
  # to itself, so the message is what identifies it.
  monkeypatch.setenv("PYTHONWARNINGS",
                     "error:`flax.nnx.State` will be deprecated:DeprecationWarning")

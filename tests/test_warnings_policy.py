"""The suite's warning policy (pyproject.toml): our code's deprecations are errors.

CI runs the suite on two stacks (Python 3.11 with the oldest supported jax and flax, and
Python 3.12 with the newest); a deprecated API used by our code must fail there, not
scroll past in a warnings summary. These tests check that the filters are in force.
"""

from __future__ import annotations

import warnings

import pytest


def _warn_from(module: str, message: str = "old API") -> None:
  warnings.warn_explicit(message, DeprecationWarning, f"{module.replace('.', '/')}.py", 1,
                         module=module)


@pytest.mark.parametrize("module", ["optax_sai._alias", "examples.common.training",
                                    "benchmarks.step_time", "test_alias", "conftest"])
def test_a_deprecation_in_our_code_is_an_error(module):
  with pytest.raises(DeprecationWarning, match="old API"):
    _warn_from(module)


def test_flax_state_deprecation_is_an_error_wherever_it_is_attributed():
  message = ("`flax.nnx.State` will be deprecated and be replaced by the built-in Python "
             "dict. Please use the equivalent `nnx.to_pure_dict` instead.")
  with pytest.raises(DeprecationWarning, match="nnx.to_pure_dict"):
    _warn_from("flax.nnx.statelib", message)


@pytest.mark.parametrize("module", ["jax._src.deprecations", "flax.nnx.module",
                                    "optax_sai_fork", "examplesx"])
def test_a_deprecation_inside_other_code_stays_a_warning(module):
  with pytest.warns(DeprecationWarning, match="old API"):
    _warn_from(module)

"""The examples in the library's docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import optax_sai

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(optax_sai.__path__, prefix="optax_sai.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(
      module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
  )
  assert result.failed == 0


def test_public_api_is_documented():
  for name in optax_sai.__all__:
    obj = getattr(optax_sai, name)
    assert obj.__doc__ and len(obj.__doc__.strip()) > 40, name

"""The lower bounds pyproject.toml declares are exactly the versions CI's minimum leg installs.

``.ci/minimums.txt`` pins every package that ``dependencies`` or the ``examples`` extra
bounds from below; CI's minimum-versions leg installs the project under those pins and
runs the library's tests there. A bound raised or lowered without its pin (or the other
way round) fails here, so a declared minimum is always a tested one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
MINIMUMS = ROOT / ".ci" / "minimums.txt"


def _lower_bounds() -> dict[str, str]:
  """``{package: version}`` of every ``>=`` bound in dependencies and the examples extra."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  bounds = {}
  for line in [*project["dependencies"], *project["optional-dependencies"]["examples"]]:
    req = Requirement(line)
    for spec in req.specifier:
      if spec.operator == ">=":
        bounds[canonicalize_name(req.name)] = spec.version
  return bounds


def _pins() -> dict[str, str]:
  """``{package: version}`` of the ``==`` pins in .ci/minimums.txt."""
  pins = {}
  for line in MINIMUMS.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    req = Requirement(line)
    (spec,) = req.specifier
    assert spec.operator == "==", f"{line!r}: pins only"
    pins[canonicalize_name(req.name)] = spec.version
  return pins


def test_every_lower_bound_is_pinned_at_its_value():
  assert _lower_bounds() == _pins()


def test_the_library_and_the_examples_are_bounded():
  # The packages whose APIs the library and examples call: each has a tested minimum.
  assert {"jax", "jaxlib", "optax", "flax", "orbax-checkpoint"} <= set(_lower_bounds())


@pytest.mark.parametrize("package", ["jax", "jaxlib", "optax", "flax", "orbax-checkpoint"])
def test_installed_version_meets_the_bound(package):
  """Whatever leg this runs on, the installed release is at or above the declared bound."""
  from importlib.metadata import PackageNotFoundError, version

  from packaging.version import Version
  try:
    installed = version(package)
  except PackageNotFoundError:
    pytest.skip(f"{package} is not installed")
  assert Version(installed) >= Version(_lower_bounds()[package])

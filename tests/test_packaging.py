"""Packaging: one version, a changelog, and a wheel that works on its own.

The slow test builds the sdist and the wheel with ``python -m build`` (the wheel from
the sdist, so the sdist is checked complete), installs the wheel into a fresh virtual
environment without the examples' extras (jax and optax only), and runs the library's
docstring examples there, from outside the repository so the checkout cannot leak in.
"""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import optax_sai

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# The library's own runtime dependencies; anything else belongs in an extra.
CORE_DEPENDENCIES = {"jax", "jaxlib", "optax", "chex"}


def _dist_name(requirement: str) -> str:
  return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower()


def test_version_has_one_source():
  project = PYPROJECT["project"]
  assert "version" not in project
  assert "version" in project["dynamic"]
  assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
      "attr": "optax_sai.__version__"}
  assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", optax_sai.__version__)


def test_changelog_has_the_current_version():
  text = (REPO_ROOT / "CHANGELOG.md").read_text()
  headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
  assert headings[0] == "Unreleased"
  assert optax_sai.__version__ in headings


def test_core_dependencies_are_the_library_only():
  deps = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
  assert deps <= CORE_DEPENDENCIES, deps
  assert {"jax", "optax"} <= deps


def test_test_extra_includes_docs_and_build():
  extras = PYPROJECT["project"]["optional-dependencies"]
  assert "optax_sai[docs]" in extras["test"]
  assert "build" in {_dist_name(r) for r in extras["test"]}
  assert {_dist_name(r) for r in extras["docs"]} >= {"sphinx", "myst-nb"}


def _run(cmd, **kwargs):
  proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
  assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


# Run from a directory outside the checkout, against the installed wheel only.
_CHECK_INSTALLED = r"""
import doctest, importlib, pkgutil, sys
import optax_sai
assert "site-packages" in optax_sai.__file__, optax_sai.__file__
failed = attempted = 0
for m in sorted(pkgutil.iter_modules(optax_sai.__path__, prefix="optax_sai.")):
  r = doctest.testmod(importlib.import_module(m.name),
                      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  failed += r.failed
  attempted += r.attempted
for mod in ("flax", "examples"):
  try:
    importlib.import_module(mod)
  except ImportError:
    pass
  else:
    raise SystemExit(f"{mod} is importable in the clean environment")
print(optax_sai.__version__, attempted, failed)
sys.exit(1 if failed or not attempted else 0)
"""


@pytest.mark.slow
def test_sdist_and_wheel_build_install_and_pass_the_doctests(tmp_path):
  dist = tmp_path / "dist"
  _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO_ROOT)])
  (wheel,) = dist.glob("optax_sai-*.whl")
  (sdist,) = dist.glob("optax_sai-*.tar.gz")
  version = optax_sai.__version__
  assert wheel.name.startswith(f"optax_sai-{version}-py3-none-any"), wheel.name
  assert sdist.name == f"optax_sai-{version}.tar.gz"

  with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    metadata = email.parser.Parser().parsestr(
        zf.read(f"optax_sai-{version}.dist-info/METADATA").decode())
  assert "optax_sai/py.typed" in names
  assert "optax_sai/__init__.py" in names
  top_level = {n.split("/")[0] for n in names}
  assert top_level == {"optax_sai", f"optax_sai-{version}.dist-info"}, top_level
  assert metadata["Version"] == version
  core = {_dist_name(r) for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
  assert core <= CORE_DEPENDENCIES, core

  with tarfile.open(sdist) as tf:
    sdist_names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
  assert {"pyproject.toml", "README.md", "optax_sai/py.typed"} <= sdist_names

  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)])
  python = venv / "bin" / "python"
  # A clean environment: no PYTHONPATH (the checkout's optax_sai.egg-info would make pip
  # think the package is installed); pip's configuration and cache are kept.
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
  env |= {"PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", "JAX_PLATFORMS": "cpu"}
  _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
       cwd=tmp_path, env=env)
  out = _run([str(python), "-c", _CHECK_INSTALLED], cwd=tmp_path, env=env)
  got_version, attempted, failed = out.split()
  assert got_version == version
  assert int(attempted) >= 10 and int(failed) == 0

"""The documentation: docstring examples run, every public name has an API entry, and the
Sphinx site builds with warnings as errors and all its code examples pass."""

import doctest
import html as htmllib
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import optax_sai

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
MODULES = sorted(
    m.name for m in pkgutil.iter_modules(optax_sai.__path__, prefix="optax_sai.")
)
# The pages other parts of the project (README, notebooks, issues) link to.
PAGES = ("index", "api", "spec", "changelog", "guides/algorithm", "guides/state",
         "guides/recipes", "guides/scale_out", "guides/performance",
         "guides/study", "guides/lora", "guides/examples")
NOTEBOOKS = ("quickstart", "gsnr_explorer", "compare_optimizers")


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


def test_every_public_name_has_an_api_entry():
  api = (DOCS / "api.md").read_text()
  documented = set(re.findall(r"^\.\. auto(?:function|class|data):: optax_sai\.(\w+)", api, re.M))
  assert documented == set(optax_sai.__all__)


def test_pages_and_notebooks_are_in_place():
  for page in PAGES:
    assert (DOCS / f"{page}.md").is_file(), page
  for name in NOTEBOOKS:
    link = DOCS / "notebooks" / f"{name}.ipynb"
    assert link.resolve() == (REPO_ROOT / "notebooks" / f"{name}.ipynb").resolve(), name


def _sphinx(builder, out, doctrees):
  cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
         "-d", str(doctrees), str(DOCS), str(out)]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
  assert proc.returncode == 0, (
      f"sphinx-build -b {builder}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
  return proc


def _check_math_is_served_locally(html: Path) -> None:
  """No page loads a script from the network; math uses the MathJax copied into _static."""
  scripts = {}
  for page in html.rglob("*.html"):
    for src in re.findall(r'<script\b[^>]*\bsrc="([^"]+)"', page.read_text()):
      scripts.setdefault(src, page.relative_to(html))
  remote = {src: page for src, page in scripts.items() if re.match(r"(https?:)?//", src)}
  assert not remote, remote
  algorithm = (html / "guides" / "algorithm.html").read_text()
  assert r"\(" in algorithm or r"\[" in algorithm  # the guide has math for MathJax to render
  mathjax = re.findall(r'<script\b[^>]*\bsrc="([^"]*mathjax[^"]*)"', algorithm)
  assert mathjax == ["../_static/mathjax/tex-chtml.js"], mathjax
  assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
  assert list((html / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))


def _check_index_shows_the_readme_quickstart(html: Path) -> None:
  """Every line of the README's quick-start code is on the built index page."""
  readme = (REPO_ROOT / "README.md").read_text()
  span = readme[readme.index("<!-- quickstart -->"):readme.index("<!-- /quickstart -->")]
  code = re.search(r"^```python\n(.*?)^```$", span, re.S | re.M).group(1)
  page = htmllib.unescape(re.sub(r"<[^>]+>", "", (html / "index.html").read_text()))
  for line in filter(str.strip, code.splitlines()):
    assert line in page, line


@pytest.mark.slow
def test_docs_site_builds_and_its_examples_run(tmp_path):
  pytest.importorskip("sphinx")
  doctrees = tmp_path / "doctrees"
  _sphinx("html", tmp_path / "html", doctrees)
  html = tmp_path / "html"
  for page in PAGES:
    assert (html / f"{page}.html").is_file(), page
  for name in NOTEBOOKS:
    text = (html / "notebooks" / f"{name}.html").read_text()
    # Rendered with their code and the outputs stored in them (plots included), as executed
    # by notebooks/refresh_outputs.py; tests/notebooks checks those outputs are current.
    assert text.count('class="cell_input') >= 5, name
    assert text.count('class="cell_output') >= 5, name
    assert re.search(r'<img [^>]*src="[^"]+\.png"', text), name
  api = (html / "api.html").read_text()
  for name in optax_sai.__all__:
    assert f'id="optax_sai.{name}"' in api, name
  _check_math_is_served_locally(html)
  _check_index_shows_the_readme_quickstart(html)

  # Every {doctest}/{testcode} block of the pages and every docstring example of the API page.
  _sphinx("doctest", tmp_path / "doctest", doctrees)
  report = (tmp_path / "doctest" / "output.txt").read_text()
  summary = re.search(r"Doctest summary\n=+\n\s*(\d+) tests?\n\s*(\d+) failures? in tests",
                      report)
  assert summary, report[-3000:]
  assert int(summary.group(2)) == 0, report[-3000:]
  assert int(summary.group(1)) >= 50, report[-3000:]
  documents = set(re.findall(r"^Document: (\S+)", report, re.M))
  assert {"index", "api", "guides/algorithm", "guides/recipes", "guides/scale_out"} <= documents


def test_readme_links_to_the_docs_and_every_link_resolves():
  readme = (REPO_ROOT / "README.md").read_text()
  for marker in ("<!-- main-command -->", "<!-- test-command -->"):
    assert readme.count(marker) == 1, marker
  link = r"\]\(((?:docs|notebooks|examples|benchmarks)/[^)#\s]+|CHANGELOG\.md)"
  targets = re.findall(link, readme)
  for target in targets:
    assert (REPO_ROOT / target).exists(), target
  linked = {t for t in targets if t.startswith("docs/")}
  guides = {f"docs/{p}.md" for p in PAGES if p.startswith("guides/")}
  assert {"docs/index.md", "docs/api.md"} | guides <= linked

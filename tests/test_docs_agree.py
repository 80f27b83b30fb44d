"""The README and the files it points to say the same thing as the program (issue #25, "Docs that
disagree with the program")."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def _minutes(text: str) -> set[int]:
    found = re.findall(r"about (\w+) minutes? on 2 CPU cores", text, flags=re.IGNORECASE)
    return {NUMBERS.get(word.lower(), int(word) if word.isdigit() else -1) for word in found}


def test_the_quickstart_takes_as_long_in_the_readme_as_in_its_study_file():
    study = (ROOT / "studies" / "quickstart.yaml").read_text()
    readme_intro = README.split("<!-- main-command -->")[0]
    assert _minutes(readme_intro) and _minutes(readme_intro) == _minutes(study)


def test_the_readmes_point_to_nothing_outside_the_repository():
    for page in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        assert "../shared" not in page.read_text(), page


def test_every_script_and_notebook_the_readme_names_is_shipped():
    named = set(re.findall(r"\b((?:benchmarks|notebooks|studies)/[\w./-]+\.(?:py|sh|ipynb|yaml))", README))
    named.discard("notebooks/fixed_vs_dynamic_run.ipynb")  # what `jupyter execute` writes
    assert named, "the README names no script"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing


def test_the_readme_says_how_to_open_and_run_the_notebook_with_extras_that_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "jupyter lab notebooks/fixed_vs_dynamic.ipynb" in README
    assert "jupyter execute notebooks/fixed_vs_dynamic.ipynb" in README
    for extra in re.findall(r"pip install -e '\.\[(\w+)\]'", README):
        assert extra in extras, extra
    assert any("jupyterlab" in dep for dep in extras["notebook"])
    assert any(dep.startswith("nbclient") for dep in extras["dev"])  # provides `jupyter execute`

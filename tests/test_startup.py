"""Commands that never compute start without importing the heavy libraries (issue #17's < 1 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "pandas", "ray", "sklearn", "scipy", "faiss", "optuna", "matplotlib")
PROBE = """
import sys
from dmltune.cli import main
code = main(sys.argv[1:])
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def imported_heavy(*args) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode in (0, 2), done.stderr[-2000:]  # 2: bad input, also told without the heavy imports
    line = next(line for line in done.stderr.splitlines() if line.startswith("HEAVY"))
    return eval(line[len("HEAVY "):])


@pytest.mark.parametrize("args", [["list"], ["list", "miners"], ["validate", "studies/quickstart.yaml"],
                                  ["validate", "--no-data", "studies/fixed_vs_dynamic.yaml"]])
def test_list_and_validate_import_no_heavy_library(args):
    assert imported_heavy(*args) == []


@pytest.mark.parametrize("args", [["studies/quickstart.yaml", "--set", "resources.gpu=0.5"],
                                  ["studies/fixed_vs_dynamic.yaml"]])  # no CUB here: exit 2, a line per problem
def test_counting_gpus_is_the_one_reason_validate_imports_torch(args):
    assert imported_heavy("validate", *args) == ["torch"]


def test_the_lazy_names_still_resolve_to_the_real_objects():
    import torch

    from dmltune import analysis, generation, models
    from dmltune.lazy import LazyModule, lazy_module

    assert models.EmbeddingModel.__mro__[1] is torch.nn.Module and callable(models.global_pool)
    assert issubclass(generation.Mirage, generation.Generation) and callable(analysis.analyse)
    assert lazy_module("torch") is torch  # already imported: the module itself
    lazy = LazyModule("json")
    assert lazy.dumps([1]) == "[1]" and "dumps" in vars(lazy)  # imported on first use, then plain lookups
    with pytest.raises(AttributeError):
        models.no_such_name


def test_a_lazily_exported_function_stays_a_function_after_its_module_is_imported():
    import importlib

    from dmltune.lazy import lazy_attributes

    importlib.import_module("dmltune.analysis.expected_best_curve")
    from dmltune.analysis import expected_best, expected_max

    assert callable(expected_best) and callable(expected_max)
    with pytest.raises(ValueError, match="rename the submodule"):
        lazy_attributes("pkg", {"thing": "thing"})

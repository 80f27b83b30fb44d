"""The shipped notebooks run from top to bottom without a cell error."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthetic_study import write_study_dir

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.slow
def test_fixed_vs_dynamic_notebook_runs_on_a_study_folder(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    folder = write_study_dir(tmp_path / "fixture", analysis={"reference": "ddtas", "delta": 0.01})
    monkeypatch.setenv("DMLTUNE_STUDY_DIR", str(folder))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOKS / "fixed_vs_dynamic.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on any cell error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6  # every figure drew
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "asms_grid" in text and "ddtas" in text
    assert "not_matched" in text and "inconclusive" in text   # the verdicts table

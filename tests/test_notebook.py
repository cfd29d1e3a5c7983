"""``notebooks/analysis.ipynb`` runs top to bottom on a real MLflow store and shows the logged numbers."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from report_fixtures import report_store  # noqa: F401

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return data.get("text/plain", "") + data.get("text/html", "")


@pytest.fixture(scope="module")
def executed(report_store, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("nb_report")
    nb = nbformat.read(NOTEBOOKS / "analysis.ipynb", as_version=4)
    old = {k: os.environ.get(k) for k in ("MEDGR2_TRACKING_URI", "MEDGR2_REPORT_OUT", "OMP_NUM_THREADS")}
    os.environ.update(MEDGR2_TRACKING_URI=report_store.uri, MEDGR2_REPORT_OUT=str(out), OMP_NUM_THREADS="1")
    try:  # the kernel inherits this environment; "python3" resolves to this interpreter (jupyter_client)
        NotebookClient(nb, kernel_name="python3", timeout=120,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return report_store, nb, out


def test_the_notebook_runs_top_to_bottom_without_errors(executed):
    _, nb, out = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert (out / "report.md").exists()


def test_the_notebook_shows_the_logged_accuracies_in_its_tables(executed):
    store, nb, _ = executed
    table_outputs = [_text(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "execute_result"]
    tables = "\n".join(table_outputs)
    # Table 1: the grpo run's CT accuracy, logged as 0.6875, shown as percent.
    assert f"{100 * store.metrics['grpo']['test/acc/modality/CT']:.2f}" in tables
    # Table 2: SFT rewarded's macro-F1 0.53125 -> 53.12 (pandas rounds the display to 2 decimals).
    assert "MedGR2 (SFT+GRPO)" in tables and "SFT rewarded" in tables and "53.12" in tables
    # The skipped run is named in the last cell's table.
    assert "think-without-eval" in tables


def test_the_notebook_shows_the_figures_inline(executed):
    _, nb, _ = executed
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # Figure 2, Figure 4 (a) and (b), Figure 5


def test_the_notebook_prints_a_paired_comparison_and_the_claims_table(executed):
    _, nb, _ = executed
    text = "\n".join(_text(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "B = grpo   vs   A = sft_raw" in text and "McNemar" in text
    assert "rewarded SFT > raw SFT" in text and "verdict" in text

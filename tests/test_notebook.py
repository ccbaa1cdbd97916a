"""The Colab notebook, executed headless end to end (CPU smoke path)."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_pretrain.ipynb")


def test_notebook_runs_unchanged_in_smoke_mode(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    # Like papermill: a cell after the parameters cell overrides them.
    corpus = tmp_path / "corpus.txt"
    with open(os.path.join(ROOT, "data", "sample", "clue_small.txt"), encoding="utf-8") as f:
        corpus.write_text("".join(f.readline() for _ in range(400)), encoding="utf-8")
    nb.cells.insert(params[0] + 1, nbformat.v4.new_code_cell(
        "CORPUS = %r\nOUTPUT = %r\nWORKERS = 1" % (str(corpus), str(tmp_path / "out"))))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                        for o in c.get("outputs", []))
    assert "CPU/GPU smoke mode" in outputs
    assert "北[MASK]是中国的首都。 ->" in outputs
    assert os.path.exists(tmp_path / "out" / "curves.png")

"""launch/colab.ipynb runs headlessly (nbclient, a local python3 kernel) with its parameters cell
shrunk; the install cell skips because cl_jax is importable here."""
import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO


def test_colab_notebook_runs_and_shows_table_and_plot(tmp_path):
  nb = nbformat.read(os.path.join(REPO, "launch", "colab.ipynb"), as_version=4)
  parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(parameters) == 1
  parameters[0].source = f'METHOD = "vicreg"\nBITS = [5]\nNUM_STEPS = 4\nWORKDIR = "{tmp_path}/runs"'
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": REPO}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  texts = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                  for o in outputs)
  assert "| random bits | digit (label) | bits |" in texts and "| 5 |" in texts
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the suppression plot
  assert "NT-Xent" in texts
  assert "step 4: features (450, 128), digit accuracy of a scikit-learn probe" in texts
  for bits in (5,):
    assert (tmp_path / "runs" / f"bits{bits}" / "eval.json").exists()

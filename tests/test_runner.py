"""run.py when a notebook fails: non-zero exit, the notebook and cell named, executed copies kept."""
import json
import subprocess
import sys

import pytest

from utils.config import REPO_ROOT


@pytest.mark.notebooks
def test_a_failing_notebook_stops_the_run_and_names_notebook_and_cell(tmp_path, cifar_dir):
    out = tmp_path / "executed"
    overrides = {"data_dir": str(cifar_dir), "run_dir": str(tmp_path / "ckpt"), "figures_dir": str(tmp_path / "fig"),
                 "submission_path": str(tmp_path / "submission.csv"), "lr": ".nan", "epochs": "1"}
    args = [a for k, v in overrides.items() for a in ("-p", k, v)]
    proc = subprocess.run([sys.executable, "run.py", "--profile", "smoke", "--out", str(out), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0, message
    assert "03_train.ipynb" in message and "NonFiniteLossError" in message
    assert "cell" in message.lower()
    # The notebooks that ran are kept (the failed one with its traceback); the later ones never ran.
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["01_data.ipynb", "02_model.ipynb", "03_train.ipynb"]
    failed = json.loads((out / "03_train.ipynb").read_text())
    errors = [o for c in failed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "NonFiniteLossError"
    assert not (tmp_path / "submission.csv").exists()

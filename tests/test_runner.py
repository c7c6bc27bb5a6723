"""run.py when a notebook fails or the user presses Ctrl-C: the right exit code, the notebook and cell named,
executed copies and checkpoints kept; and what it shows of the notebooks' output: each setup cell's lines once."""
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

import run as runner
from utils.checkpoint import load_checkpoint
from utils.config import load_config
from utils.runtime.platforms import REPO_ROOT
from utils.train import fit


def tiny_run_args(tmp_path, cifar_dir, **extra):
    overrides = {"data_dir": str(cifar_dir), "run_dir": str(tmp_path / "ckpt"), "figures_dir": str(tmp_path / "fig"),
                 "submission_path": str(tmp_path / "submission.csv"), "subset_per_class": "20", "batch_size": "32",
                 "test_limit": "200", "corruption_images": "20", **extra}
    return [a for k, v in overrides.items() for a in ("-p", k, v)]


PLATFORM_LINE = "platform: local | outputs: /repo (kept) | detected by: no Kaggle or Colab signal"
NOTE = "val_fraction 0: no validation split"


def test_shown_once_leaves_out_lines_said_before_and_passes_the_rest_as_it_comes():
    """The platform line and the notes, which every setup cell prints again, are left out of run.py's stream, split
    over writes or not; anything else passes at once, a line that cannot become one of them before its end too."""
    out = io.StringIO()
    shown = runner.ShownOnce(out, {PLATFORM_LINE, NOTE})
    shown.write(f"{PLATFORM_LINE}\nprofile 'tiny' on cpu\n")
    assert out.getvalue() == "profile 'tiny' on cpu\n"
    shown.write(NOTE[:12])                                    # may become the note: held back
    assert out.getvalue() == "profile 'tiny' on cpu\n"
    shown.write(NOTE[12:] + "\nepoch   1")                    # it did; the epoch line's start is shown at once
    assert out.getvalue() == "profile 'tiny' on cpu\nepoch   1"
    shown.write(f"  train loss 2.3\nsee: {NOTE[:5]}")          # a line that starts otherwise passes whole
    shown.write(f"{NOTE[5:]}\n{NOTE}, and more\n")
    assert out.getvalue() == f"profile 'tiny' on cpu\nepoch   1  train loss 2.3\nsee: {NOTE}\n{NOTE}, and more\n"
    shown.write(PLATFORM_LINE[:8])
    shown.end()                                               # the notebook ended: what was held back is shown
    assert out.getvalue().endswith(f"{NOTE}, and more\n{PLATFORM_LINE[:8]}\n")


def test_setup_said_reads_what_the_setup_cell_printed(tmp_path):
    cell = nbformat.v4.new_code_cell
    stream = nbformat.v4.new_output
    setup = cell("cfg, DEVICE = setup(globals())", outputs=[
        stream("stream", name="stdout", text=f"nothing to install\n{PLATFORM_LINE}\n\n"),
        stream("stream", name="stderr", text="a warning\n"), stream("stream", name="stdout", text=f"{NOTE}\n")])
    later = cell("print(1)", outputs=[stream("stream", name="stdout", text="1\n")])
    path = tmp_path / "01_data.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell("profile = 'paper'"), setup, later]), path)
    assert runner.setup_said(path) == {"nothing to install", PLATFORM_LINE, NOTE}
    assert runner.setup_said(tmp_path / "never-written.ipynb") == set()


@pytest.mark.notebooks
def test_a_failing_notebook_stops_the_run_and_names_notebook_and_cell(tmp_path, cifar_dir):
    out = tmp_path / "executed"
    # lr 1e30 is a valid setting (refused values never reach a notebook) that makes the loss non-finite in 03.
    args = tiny_run_args(tmp_path, cifar_dir, lr="1e30", epochs="1")
    proc = subprocess.run([sys.executable, "run.py", "--profile", "smoke", "--out", str(out), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    message = proc.stdout + proc.stderr
    assert proc.returncode == 1, message
    assert "03_train.ipynb" in message and "NonFiniteLossError" in message
    assert "run.py: 03_train.ipynb FAILED in cell In [" in proc.stderr, proc.stderr
    # The notebooks that ran are kept (the failed one with its traceback); the later ones never ran.
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["01_data.ipynb", "02_model.ipynb", "03_train.ipynb"]
    failed = json.loads((out / "03_train.ipynb").read_text())
    errors = [o for c in failed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "NonFiniteLossError"
    assert not (tmp_path / "submission.csv").exists()


def test_after_ctrl_c_papermill_and_asyncio_log_to_the_kernels_log_not_the_terminal(tmp_path, monkeypatch, caplog):
    """Ctrl-C's shutdown noise (nbclient's "Kernel died", an unretrieved DeadKernelError, the way CI saw it) goes to
    kernels.log, not the terminal; what they log before it is shown as ever; a second Ctrl-C is Python's usual one."""
    for name in ("papermill", "asyncio"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    log = tmp_path / "kernels.log"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        runner.quiet_after_ctrl_c(log)
        logging.getLogger("papermill").error("before Ctrl-C")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        logging.getLogger("papermill").error("Kernel died while waiting for execute reply.")
        logging.getLogger("asyncio").error("Task exception was never retrieved")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert caplog.messages == ["before Ctrl-C"]
    assert log.read_text().splitlines() == ["Kernel died while waiting for execute reply.",
                                            "Task exception was never retrieved"]


def test_a_sigint_ignored_at_start_stays_ignored(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)       # as in a background job (`python run.py &`)
    try:
        runner.quiet_after_ctrl_c(tmp_path / "kernels.log")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.notebooks
def test_ctrl_c_during_training_exits_130_with_one_line_on_resuming_and_whole_checkpoints(tmp_path, cifar_dir):
    args = tiny_run_args(tmp_path, cifar_dir, epochs="60")
    # SIGINT at its default in the child, as in a terminal: a shell starts a background job (`pytest &`) with SIGINT
    # ignored, the child would inherit that, and Python then never raises KeyboardInterrupt (seen: run.py hung).
    proc = subprocess.Popen([sys.executable, "run.py", "--profile", "smoke", "--out", str(tmp_path / "executed"),
                             *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "ckpt" / "last.pt"
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert last.exists(), "training never saved an epoch"
    os.kill(proc.pid, signal.SIGINT)          # what Ctrl-C in the terminal sends to run.py
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("run.py: interrupted")]
    assert len(lines) == 1 and "during 03_train.ipynb" in lines[0] and "run the same command again" in lines[0]
    assert "Traceback" not in err
    saved = load_checkpoint(last)             # whole, and training resumes from it
    cfg = load_config("smoke", data_dir=str(cifar_dir), run_dir=str(tmp_path / "ckpt"), subset_per_class=20,
                      batch_size=32, test_limit=200, corruption_images=20, epochs=60)
    logged = []
    fit(cfg, progress=False, max_epochs_this_call=1, log=logged.append)
    assert any(line.startswith(f"Resumed {last}") for line in logged), logged
    assert load_checkpoint(last)["epoch"] >= saved["epoch"] + 1

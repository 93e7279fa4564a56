"""The layers the folder tree shows hold: import-linter's contracts (setup.cfg) pass."""

import subprocess
import sys
from pathlib import Path

from feature_pipeline_dagster_tests.conftest import REPO


def test_import_contracts_hold():
    """The core never imports dagster, the orchestration layer or the CLI; the
    orchestration layer never imports the CLI; the sensor's import closure, lazy
    imports included, holds no torch, open_clip, transformers or decoder library (decord,
    torchcodec, PyAV, PyNvVideoCodec); inside the core, each floor imports only the floors
    below it (`core-floors`: engine, then search, store, ledger, settings, models and
    decode, down to batches and errors)."""
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / "setup.cfg")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout

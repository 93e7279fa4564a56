"""The layers the folder tree shows hold: import-linter's contracts (setup.cfg) pass."""

import re
import subprocess
import sys
from pathlib import Path

from feature_pipeline_dagster_tests.conftest import REPO


def test_import_contracts_hold():
    """The core never imports dagster, the orchestration layer or the CLI; the
    orchestration layer never imports the CLI; neither imports the search page, which never
    imports the CLI; the sensor's import closure, lazy
    imports included, holds no torch, open_clip, transformers or decoder library (decord,
    torchcodec, PyAV, PyNvVideoCodec)."""
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / "setup.cfg")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_every_path_the_architecture_names_exists():
    """docs/ARCHITECTURE.md is the newcomer's map: each module or folder it names in
    backticks (a path ending in `.py` or `/`) is there, relative to the package or to the
    repository's root."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    named = {span for span in re.findall(r"`([^`\s]+)`", text) if span.endswith((".py", "/"))}
    assert len(named) > 50, sorted(named)  # the map names the modules, not a handful
    missing = [p for p in sorted(named) if not ((REPO / "feature_pipeline_dagster" / p).exists() or (REPO / p).exists())]
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"

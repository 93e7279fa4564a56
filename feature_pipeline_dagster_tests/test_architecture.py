"""The layers the folder tree shows hold: import-linter's contracts (setup.cfg) pass, and
no module imports Dagster's private API."""

import ast
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
    torchcodec, PyAV, PyNvVideoCodec); inside the core, each floor imports only the floors
    below it (`core-floors`: engine, then search, store, ledger, settings, models and
    decode, down to batches and errors)."""
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / "setup.cfg")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


def test_every_path_the_architecture_names_exists():
    """docs/ARCHITECTURE.md is the newcomer's map: each module or folder it names in
    backticks (a path ending in `.py` or `/`) is there, relative to the package or to the
    repository's root."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    named = {span for span in re.findall(r"`([^`\s]+)`", text) if span.endswith((".py", "/"))}
    assert len(named) > 50, sorted(named)  # the map names the modules, not a handful
    missing = [p for p in sorted(named) if not ((REPO / "feature_pipeline_dagster" / p).exists() or (REPO / p).exists())]
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def private_dagster_imports(package: Path) -> list[str]:
    """`file:line module` for each import of a `dagster._*` module under `package`,
    lazy imports in functions included."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [f"dagster.{a.name}" for a in node.names] if node.module == "dagster" else [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(package.parent)}:{node.lineno} {m}" for m in modules
                      if m.startswith("dagster._")]
    return found


def test_no_private_dagster_import(tmp_path):
    """Dagster's private modules (`dagster._*`) change without notice between releases:
    the package imports only what `dagster` exports. import-linter cannot say it (an
    external package is one module to it), hence this walk; it sees such an import. Two
    exceptions, named here: the instance's event log extends Dagster's SQLite one, from the
    module path Dagster's docs give for it in dagster.yaml, and writes the sensor's
    observations as one batch of no run, built as Dagster builds one (orchestration/event_log.py;
    test_event_log.py checks both against Dagster's own); the run launcher's warm process
    executes a run by id through the function `dagster api execute_run` calls, since no
    public entry executes an existing run in the calling process (orchestration/run_launcher.py;
    test_run_launcher.py runs it under the daemon)."""
    found = private_dagster_imports(REPO / "feature_pipeline_dagster")
    assert [line.split(":")[0] + " " + line.split()[-1] for line in found] == [
        "feature_pipeline_dagster/orchestration/event_log.py dagster._core.storage.event_log",
        "feature_pipeline_dagster/orchestration/event_log.py dagster._core.events",
        "feature_pipeline_dagster/orchestration/event_log.py dagster._core.instance.utils",
        "feature_pipeline_dagster/orchestration/run_launcher.py dagster._cli.api"], found
    planted = tmp_path / "pkg"
    planted.mkdir()
    (planted / "m.py").write_text("def f():\n    from dagster._core.events import DagsterEvent\n")
    (planted / "n.py").write_text("import dagster\nfrom dagster import _check\nfrom dagster import asset\n")
    assert private_dagster_imports(planted) == ["pkg/m.py:2 dagster._core.events", "pkg/n.py:2 dagster._check"]

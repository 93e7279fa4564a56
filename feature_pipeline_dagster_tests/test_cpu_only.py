"""Nothing of the project needs the CUDA packages on a CPU machine (issue 24, point 5: a
6.4 GB install on a CPU machine, 3.2 GB of it `nvidia-*` libraries and 0.9 GB triton).

torch's PyPI wheel for Linux is its CUDA build: it depends on the `nvidia-*` wheels, triton
and cuda-bindings, and its `libtorch_cuda.so` links the `nvidia-*` libraries (without them
`import torch` fails: `libcudnn.so.9: cannot open shared object file`). torch's CPU build
(the README's CPU-only install) has none of them. What the project controls is that
nothing of its own imports them or asks for their metadata, and that a run works without
them: here every module of the package is imported, and a one-video `feature-pipeline run`
made, with those packages absent from the environment's view (every process of the run:
`import nvidia...`, `import triton`, `import cuda...` raise ModuleNotFoundError and
importlib.metadata does not list their distributions), the CUDA build's shared libraries
still reachable by the dynamic loader, as the CPU build needs none of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster_tests.conftest import REPO, clip_config, stop_lite_server, write_config

HIDDEN_MODULES = ("nvidia", "triton", "cuda")  # import names of nvidia-*, triton, cuda-bindings/-pathfinder/-toolkit
SITECUSTOMIZE = textwrap.dedent('''
    """Hides the CUDA packages from this process's view (test_cpu_only.py)."""
    import importlib.abc
    import importlib.metadata
    import os
    import sys

    HIDDEN_MODULES = {hidden!r}
    HIDDEN_DISTS = ("nvidia-", "nvidia_", "triton", "cuda-", "cuda_")


    class HideCuda(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN_MODULES:
                with open(os.environ["FP_HIDDEN_LOG"], "a") as log:  # who asked, for the test's message
                    log.write(f"{{os.getpid()}} import {{name}}\\n")
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: no CUDA packages)", name=name)
            return None


    sys.meta_path.insert(0, HideCuda())
    _discover = importlib.metadata.Distribution.discover.__func__


    def discover(cls, **kwargs):
        for dist in _discover(cls, **kwargs):
            name = (dist.metadata["Name"] or "").lower()
            if not name.startswith(HIDDEN_DISTS):
                yield dist


    importlib.metadata.Distribution.discover = classmethod(discover)
    with open(os.environ["FP_HIDDEN_LOG"], "a") as log:
        log.write(f"{{os.getpid()}} hidden\\n")
''').format(hidden=HIDDEN_MODULES)

IMPORT_ALL = textwrap.dedent("""
    import importlib, importlib.metadata, pkgutil, sys
    for name in ("triton", "nvidia.cublas", "cuda.bindings"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            pass
        else:
            sys.exit(f"{name} is not hidden")
    for dist in ("triton", "nvidia-cublas", "nvidia-cudnn-cu13", "cuda-bindings"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
        else:
            sys.exit(f"{dist} is not hidden")
    import torch
    assert not torch.cuda.is_available()
    import feature_pipeline_dagster
    modules = [m.name for m in pkgutil.walk_packages(feature_pipeline_dagster.__path__, "feature_pipeline_dagster.")
               if not m.name.endswith(".__main__")]  # `python -m feature_pipeline_dagster.cli`: the run below
    for name in modules:
        importlib.import_module(name)
    feature_pipeline_dagster.defs  # the code location, resolved
    print(len(modules), "modules")
""")


def test_every_module_imports_and_a_run_works_without_the_cuda_packages(tmp_path, tiny_clip):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "hidden.log"
    videos = tmp_path / "videos"
    write_video(videos / "one.mp4", seconds=2.0)
    config = write_config(tmp_path, clip_config(tmp_path, tiny_clip, videos))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(REPO)]), "FP_HIDDEN_LOG": str(log),
           "FEATURE_PIPELINE_CONFIG": str(config), "DAGSTER_HOME": str(home), "CUDA_VISIBLE_DEVICES": "",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        imported = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
        assert imported.returncode == 0, imported.stderr[-3000:]
        assert int(imported.stdout.split()[0]) > 50
        run = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "run"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "embedded 1 of 1 video(s), 2 rows" in run.stderr, run.stderr[-3000:]
    finally:
        stop_lite_server(tmp_path)
    hidden = log.read_text().splitlines()
    assert len({line.split()[0] for line in hidden if line.endswith(" hidden")}) >= 2  # the CLI and its run(s)
    asked = sorted({line.split(" import ")[1] for line in hidden if " import " in line})
    print("imports of hidden packages tried (and refused) by libraries:", asked)


def test_readme_gives_the_install_size_and_the_cpu_only_way():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    assert "torch==2.14.1" in readme and "torchvision==0.29.1" in readme
    assert "cannot reach" in readme and "GB" in readme
    # the two commands of the quick start stay
    assert ".venv/bin/pip install -e . && .venv/bin/feature-pipeline --config config/smoke-config.yaml quickstart" in readme
    assert ".venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest" in readme

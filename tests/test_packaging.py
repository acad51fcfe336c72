"""What ``pip install .`` and Dataflow's ``--setup_file`` ship: one top-level package,
``beam_anon`` (the registry inside it as ``beam_anon.registry``), and the ``beam-anon`` command.

The source package is the one Beam's stager builds for a Dataflow job (``--setup_file``, dry
run); the wheel is built from it and installed into a fresh virtualenv that sees this
environment's dependencies but not the repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from beam_anon import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_tree(dest) -> str:
    """The files setup.py packages, copied (the build leaves egg-info and build/ there)."""
    for name in ("beam_anon", "models", "pipelines"):
        shutil.copytree(os.path.join(ROOT, name), dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), dest / name)
    return str(dest / "setup.py")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> str:
    """The source package the Dataflow dry run stages for ``--setup_file``."""
    from apache_beam.runners.portability.stager import Stager

    setup_file = _copy_tree(tmp_path_factory.mktemp("src"))
    keep = tmp_path_factory.mktemp("sdist")
    built = []
    original = Stager._build_setup_package

    def capture(setup_file, temp_dir, build_setup_args=None):
        path = original(setup_file, temp_dir, build_setup_args)
        built.append(shutil.copy(path, keep))
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Stager, "_build_setup_package", staticmethod(capture))
        result = cli.main(["--input", "gs://bkt/photos/**.jpg", "--output", "gs://bkt/anon",
                           "--runner=DataflowRunner", "--project=my-project",
                           "--region=us-central1", "--temp_location=gs://bkt/tmp",
                           "--dry_run=True", f"--setup_file={setup_file}"])
    assert result is not None and len(built) == 1
    return built[0]


def test_dataflow_setup_file_ships_registry_not_pipelines(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"setup.py", "beam_anon/cli.py", "beam_anon/models/__init__.py",
            "models/registry.json"} <= names
    assert not any(n.startswith("pipelines/") for n in names)


@pytest.fixture(scope="module")
def venv(sdist, tmp_path_factory) -> str:
    """A fresh virtualenv with the wheel built from ``sdist``; dependencies come from this
    environment's site-packages through a path file (whose own path files do not run, so the
    repository is not on its path)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(work), sdist], check=True, cwd=work)
    wheel = next(str(work / n) for n in os.listdir(work) if n.endswith(".whl"))
    with zipfile.ZipFile(wheel) as zf:
        top = {n.split("/", 1)[0] for n in zf.namelist()}
    assert top == {"beam_anon", "beam_anon-0.1.0.dist-info"}, top
    env_dir = str(work / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True)
    python = os.path.join(env_dir, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    with open(os.path.join(site.stdout.strip(), "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                    "--no-deps", "--no-index", wheel], check=True)
    return env_dir


def _run(venv: str, *cmd: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([os.path.join(venv, "bin", cmd[0]), *cmd[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_installed_command_and_only_beam_anon(venv, tmp_path):
    help_run = _run(venv, "beam-anon", "--help", cwd=tmp_path)
    assert help_run.returncode == 0, help_run.stderr[-2000:]
    assert help_run.stdout.startswith("usage: beam-anon") and "--model_spec FILE" in help_run.stdout
    for generic in ("models", "pipelines"):
        run = _run(venv, "python", "-c", f"import {generic}", cwd=tmp_path)
        assert run.returncode != 0 and "ModuleNotFoundError" in run.stderr, generic
    run = _run(venv, "python", "-c", "from beam_anon import models; import beam_anon.registry;"
               " print(models.registry_dir(), len(models.model_names()))", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    where, count = run.stdout.split()
    assert where.startswith(venv) and where.endswith("beam_anon/registry") and int(count) >= 5


def test_command_exit_status_follows_the_pipeline_state(monkeypatch):
    from types import SimpleNamespace

    from beam_anon import cli

    for state, status in (("PipelineState.DONE", 0), ("RUNNING", 0), ("PipelineState.FAILED", 1),
                          ("CANCELLED", 1)):
        monkeypatch.setattr(cli, "main", lambda: SimpleNamespace(state=state))
        assert cli.command() == status, state

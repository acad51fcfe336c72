"""Test doubles shared by the model-store tests: a remote-looking Beam filesystem backed by a
local folder, and a one-byte corruption of a file."""
from __future__ import annotations

import os

from apache_beam.io.localfilesystem import LocalFileSystem


def mapped_filesystem(scheme: str, root_env: str) -> type:
    """A Beam filesystem class for ``<scheme>://x`` that reads and writes ``$<root_env>/x``:
    a non-local models dir (like ``gs://``) for tests. Beam finds it once it is defined."""
    prefix = f"{scheme}://"

    class Mapped(LocalFileSystem):
        @classmethod
        def scheme(cls):
            return scheme

        @staticmethod
        def _local(path):
            return os.path.join(os.environ[root_env], path[len(prefix):])

        def create(self, path, *args, **kwargs):
            return super().create(self._local(path), *args, **kwargs)

        def open(self, path, *args, **kwargs):
            return super().open(self._local(path), *args, **kwargs)

        def exists(self, path):
            return super().exists(self._local(path))

    Mapped.__name__ = Mapped.__qualname__ = f"{scheme.capitalize()}FileSystem"
    return Mapped


def flip_byte(path, offset: int = 1000) -> None:
    """Corrupt ``path`` by inverting the byte at ``offset``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))

"""Read an output folder on local disk or on S3 the same way, for the audit.

The audit must see what a user would see, not what the run believed: on S3 it reads
straight from the moto server (never through the fault proxy), with listings uncached.
"""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import Any, Optional, Union

import fsspec


class OutputStore:
    """Files under one output root, by path relative to the root.

    Args:
        root: a local folder or an fsspec URL such as ``s3://bucket/out``.
        storage_options: fsspec options (for S3: the moto endpoint itself, no faults).

    Example:
        ```python
        from reliability.store import OutputStore
        store = OutputStore("/tmp/out")
        for rel in store.files():
            print(rel, store.size(rel))
        ```
    """

    def __init__(self, root: Union[str, Path], storage_options: Optional[dict] = None) -> None:
        self.url = str(root)
        opts = dict(storage_options or {})
        if self.url.startswith("s3://"):
            opts.setdefault("use_listings_cache", False)
        self.fs, path = fsspec.core.url_to_fs(self.url, **opts)
        self.root = path.rstrip("/")
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def relative(self, path_or_url: str) -> Optional[str]:
        """The path relative to the root of a path or URL results.csv names (None if outside)."""
        if self.local:
            p = str(Path(path_or_url).resolve())
            root = str(Path(self.root).resolve())
        else:
            p = self.fs._strip_protocol(path_or_url).rstrip("/")
            root = self.root
        if not p.startswith(root + "/"):
            return None
        return p[len(root) + 1 :]

    def files(self) -> list[str]:
        """Every file under the root, relative, sorted (``.kf2v/`` included)."""
        if not self.fs.exists(self.root):
            return []
        if not self.local:
            self.fs.invalidate_cache()
        out = []
        for p in self.fs.find(self.root):
            rel = (
                posixpath.relpath(p, self.root)
                if not self.local
                else str(Path(p).relative_to(Path(self.root)))
            )
            out.append(rel.replace("\\", "/"))
        return sorted(out)

    def exists(self, rel: str) -> bool:
        return bool(self.fs.isfile(self._abs(rel)))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._abs(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._abs(rel))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self._abs(rel), "rb", block_size=8 << 20) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def count(self, prefix: str, suffix: str = "") -> int:
        """Files directly under ``prefix`` (relative) whose name ends with ``suffix``."""
        try:
            if not self.local:
                self.fs.invalidate_cache()
            names = self.fs.ls(self._abs(prefix), detail=False)
        except (FileNotFoundError, OSError):
            return 0
        return sum(1 for n in names if n.endswith(suffix))


def as_store(output: Any, storage_options: Optional[dict] = None) -> OutputStore:
    """``output`` as an :class:`OutputStore` (a store is returned as it is)."""
    return output if isinstance(output, OutputStore) else OutputStore(output, storage_options)

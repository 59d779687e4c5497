"""The one way pantheon publishes a file or folder: write it beside its final path, then rename it into place.

A reader (a resumed job, another rank, a user) sees either the previous complete version or the new complete
one, never a half-written one, whenever the writer is killed. Renames within one directory are atomic on POSIX
file systems; a folder that replaces an existing one is swapped through `<path>.old` (see `previous`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def previous(path: str | Path) -> Path:
    """Where the folder that `publish` is replacing waits until the new one is in place."""
    path = Path(path)
    return path.with_name(path.name + ".old")


def discard(path: Path) -> None:
    """Remove a staged file or folder, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def swap_in(staging: Path, path: Path) -> None:
    """Rename a complete `staging` file or folder to `path`, replacing what was there."""
    if staging.is_dir() and path.is_dir():
        old = previous(path)
        discard(old)
        os.replace(path, old)  # a crash from here on leaves `<path>.old` complete
        os.replace(staging, path)
        discard(old)
    else:
        os.replace(staging, path)


@contextlib.contextmanager
def publish(path: str | Path, directory: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a private staging path next to `path` (an empty folder when `directory`, else a file name to write);
    when the block ends without an error, it replaces `path`, else it is deleted. With `keep_existing`, a `path` that appeared meanwhile (a rank
    or process that raced here and won) is kept and the staged copy discarded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; what we publish is shared like any folder
    else:  # one writer per file; the pid keeps two processes that race here apart
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        discard(staging)
    try:
        yield staging
        if keep_existing and path.exists():
            return
        swap_in(staging, path)
    finally:
        if staging.exists():
            discard(staging)

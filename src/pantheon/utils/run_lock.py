"""One run per run directory: two trainings started into the same folder would both write its last.ckpt.

The lock is an advisory `flock` on `<run dir>/.lock`, taken by the global rank-0 process of a run and held until
it exits or leaves `held`: the kernel drops it when the process dies however it dies (SIGKILL, a lost node's NFS lease), so a
requeued or resumed run never finds a stale lock. The file holds the owner's host and pid for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pantheon.utils.errors import UserError

LOCK_NAME = ".lock"
_held: dict[Path, IO[str]] = {}  # open while held: closing the file drops the lock


def _refuse(run_dir: Path, handle: IO[str]) -> UserError:
    owner = Path(handle.name).read_text().strip() or "another process"
    return UserError(
        f"run directory {run_dir} is in use by another run ({owner}): wait for it to finish, or start this one "
        "in another directory (drop hydra.run.dir, or pass a new one)"
    )


def lock_run_dir(run_dir: str | Path) -> None:
    """Take the run directory's lock for this process, or raise a UserError naming the run that holds it."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_NAME, "a+")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _refuse(run_dir, handle)
        handle.close()
        raise error from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _held[run_dir] = handle


@contextlib.contextmanager
def held(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the block (a no-op when not `enabled`, e.g. on ranks other than 0)."""
    if not enabled or Path(run_dir).resolve() in _held:
        yield
        return
    lock_run_dir(run_dir)
    try:
        yield
    finally:
        _held.pop(Path(run_dir).resolve()).close()


def check_run_dir_free(run_dir: str | Path) -> None:
    """Raise the same UserError as lock_run_dir when another process holds the directory, without taking the lock:
    for checks made before anything is written into the directory."""
    path = Path(run_dir).resolve() / LOCK_NAME
    if not path.exists() or path.parent in _held:
        return
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refuse(path.parent, handle) from None

"""SLURM's warning that a job is about to end (time limit or preemption): remembered, acted on later.

The handler only records the signal. Saving a checkpoint inside a signal handler would interrupt whatever
the process was doing, possibly a collective that the other ranks are waiting in; the requeue callback
(pantheon.cluster.requeue) acts on the flag at the next step boundary, on every rank at once.

Both user signals are warnings: the sbatch templates ask SLURM for SIGUSR1 (`--signal=USR1@<s>`, Lightning's
convention), submitit always asks for SIGUSR2. Installing our handler for SIGUSR2 also replaces submitit's own
checkpoint-and-requeue handler, which is how that second mechanism is switched off (see requeue.py).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

_received: signal.Signals | None = None


def _record(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signal.Signals(signum)


def install() -> None:
    """Record WARNING_SIGNALS from now on (idempotent). Call it as early as possible: until then SIGUSR1
    kills the process (its default action) and SIGUSR2 runs submitit's handler."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (e.g. not in some test runners)
    for sig in WARNING_SIGNALS:
        signal.signal(sig, _record)


def received() -> signal.Signals | None:
    """The warning signal this process received, or None."""
    return _received


def clear() -> None:
    global _received
    _received = None

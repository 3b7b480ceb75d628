"""Worker processes that do not outlive their parent.

``ProcessPoolExecutor(initializer=die_with_parent, initargs=(os.getpid(),))``: on Linux each worker
asks the kernel to send it SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a parent
killed with SIGKILL leaves no busy workers behind. Elsewhere it is a no-op.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: SIGTERM this process when ``parent_pid`` (its parent) dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: nothing to do
        return
    # The parent may have died before prctl took effect: then the signal never comes.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def pool_kwargs() -> dict:
    """``initializer``/``initargs`` for a ProcessPoolExecutor whose workers die with this process."""
    return {"initializer": die_with_parent, "initargs": (os.getpid(),)}

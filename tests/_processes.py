"""Test helpers for tests that start processes: whatever a test's outcome, nothing it started
keeps running after it.

``subprocess.run`` already kills its child on a timeout or an exception, but not that child's
own children (torchrun's workers, which run in their own process groups), and a ``Popen`` is
killed only by the code that a failing assertion skips. Every process such a test starts names
the test's ``tmp_path`` on its command line (``--out``, a run folder), so the fixture of those
test files kills every process whose command line contains it once the test is over.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = ["catches", "kill_matching", "restore_sigint"]


def kill_matching(needle: str) -> list[int]:
    """SIGKILL every process but this one whose command line contains ``needle``; their pids."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def restore_sigint() -> None:
    """``preexec_fn`` of a child that must see Ctrl-C: SIGINT back to its default disposition.

    A shell starts background jobs (``cmd &``, ``nohup``) with SIGINT ignored, and an ignored
    signal stays ignored across fork and exec; Python then does not install its KeyboardInterrupt
    handler either. With the default restored before exec, the child's Python installs it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux: SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError(f"/proc/{pid}/status has no SigCgt line")

"""One writer per result: an exclusive lock per run folder (and per evaluation cache entry, per replay set).

``with exclusive(path, what="run phase1/..."):`` takes ``.<name>.lock`` beside ``path`` with ``flock``; the lock
file holds the holder's PID, host and start time, so a second process that finds it taken says who holds it
(and waits, or stops with :class:`LockedError` when ``wait=0``). The kernel releases an ``flock`` when its process
dies, so a lock left by a killed process (SIGKILL, OOM, a lost node's job on local disk) is never stale: the next
process takes it at once and says that it took over from a process that is gone. NFSv4 and Lustre (with the
``flock`` mount option) carry these locks between hosts. The lock is re-entrant within a process.

Bottom layer: imports nothing from the package.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the lock (the message names its PID and host)."""


_HELD: dict[str, list] = {}  # lock file -> [fd, depth]


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``.<name>.lock`` in the same folder."""
    p = Path(path)
    return p.parent / f".{p.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(path: str | os.PathLike) -> dict | None:
    """What the lock file of ``path`` says about its last holder (pid, host, since, what), or None."""
    try:
        text = lock_path(path).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def describe(info: dict | None) -> str:
    """``pid 123 on host node7 since 2026-...`` (with what it is doing), for messages."""
    if not info:
        return "another process (it has not written its PID yet)"
    gone = info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _alive(info["pid"])
    s = f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')}"
    if info.get("what"):
        s += f" ({info['what']})"
    if gone:  # the flock is still held, so a child that inherited the descriptor lives on
        s += "; that process is gone, a child it started may still hold the lock"
    return s


@contextmanager
def exclusive(path: str | os.PathLike, what: str | None = None, wait: float | None = None, poll: float = 0.5,
              quiet: bool = False):
    """Hold the lock of ``path`` for the block.

    ``wait``: None waits as long as it takes (saying once who holds it), a number of seconds waits that long, 0
    does not wait; then :class:`LockedError` names the holder.
    """
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    key = str(lp.resolve())
    if key in _HELD:  # re-entrant in this process
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        t0, said = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            info = holder(path)
            if wait is not None and time.monotonic() - t0 >= wait:
                raise LockedError(f"{what or path} is being written by {describe(info)}; lock file {lp}. "
                                  f"Wait for it to finish (or stop that process) and run again.") from None
            if not said and not quiet:
                print(f"[lock] waiting for {what or path}: held by {describe(info)}", file=sys.stderr, flush=True)
                said = True
            time.sleep(poll)
        previous = holder(path)
        if previous and previous.get("pid") and not quiet and (
                previous.get("host") != socket.gethostname() or not _alive(previous["pid"])) and previous.get("held"):
            print(f"[lock] {what or path}: took over a lock left by {describe(previous)} (that process is gone)",
                  file=sys.stderr, flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "held": True,
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            _HELD.pop(key, None)
            # released cleanly: say so, so the next holder does not report a takeover
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({**me, "held": False}).encode(), 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

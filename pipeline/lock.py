"""One writer per run folder: an advisory lock on RUN/.lock.

Commands that write a run (prep, train, index, and a search that must first build its index)
hold the lock while they work; a second one on the same run stops at once with one line
saying who holds it. Readers (search, eval, eval-retrieval) never take it. The lock is an
`fcntl.flock`, which the kernel drops when its holder dies, so a killed command leaves no
lock behind; while held, the file names the holder's pid, host and command for the message,
and a name left in it after the lock was released tells of a holder that died. Taking
the lock also removes the temporary files that killed writers left in the run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from .errors import AlexnetError
from .files import pid_alive, remove_stale_temps
from .layout import RunPaths

log = logging.getLogger(__name__)


class RunLock:
    def __init__(self, run: str | Path, command: str):
        self.paths, self.command = RunPaths(run), command
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        path = self.paths.lock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise AlexnetError(
                f"cannot write to {path.parent}: {e.strerror}; choose a writable {{run}} folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlexnetError(
                f"{self.paths.root} is in use by {holder}: wait for it to finish, or use "
                "another {run}"
            ) from None
        previous = os.pread(fd, 1024, 0).decode(errors="replace").split()
        if previous[:2] and previous[0] == "pid" and previous[1].isdigit():
            pid = int(previous[1])
            if pid != os.getpid() and not pid_alive(pid):
                log.info("%s: taking over from pid %d, which is no longer running", path, pid)
        me = f"pid {os.getpid()} on {socket.gethostname()} (alexnet {self.command})\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        self._fd = fd
        for tmp in remove_stale_temps(self.paths.root):
            log.info("removed %s, left by a command that was killed", tmp)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean exit leaves no name behind; a crash does
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

"""Named points in long commands where a test can stop the process, so that tests of kills
and Ctrl-C never race the work they interrupt (no sleeps, no guessing how far it got).

ALEXNET_TEST_KILL=POINT: the process kills itself (SIGKILL) on reaching POINT.
ALEXNET_TEST_PAUSE=POINT: on reaching POINT it prints "paused at POINT" on stderr and waits
for a signal (the test sends SIGINT once it has read the line), then goes on as the signal's
handler decides. Unset, `reached` does nothing.
"""

from __future__ import annotations

import os
import signal
import sys


def reached(point: str) -> None:
    if os.environ.get("ALEXNET_TEST_KILL") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("ALEXNET_TEST_PAUSE") == point:
        # Not signal.pause(): a signal that comes between the line and the wait (a handler
        # that only sets a flag, as the trainer's) would leave it waiting forever. Every
        # handled signal writes a byte to the wakeup pipe, whichever thread it reaches and
        # whether or not the wait has begun; its handler then runs in this thread.
        r, w = os.pipe()
        os.set_blocking(w, False)
        old = signal.set_wakeup_fd(w)
        try:
            print(f"paused at {point}", file=sys.stderr, flush=True)
            os.read(r, 1)
        finally:
            signal.set_wakeup_fd(old)
            os.close(r)
            os.close(w)

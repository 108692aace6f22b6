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
        print(f"paused at {point}", file=sys.stderr, flush=True)
        signal.pause()

"""Experiment entry points that fail on purpose, for the isolation tests (importable by the
forkserver, which unpickles them by module path)."""

import os
import signal
import time


def killed_by_signal(payload, conn):
    conn.send(("progress", "about to die"))
    os.kill(os.getpid(), signal.SIGKILL)


def hangs(payload, conn):
    time.sleep(60)


def exits_without_record(payload, conn):
    os._exit(3)

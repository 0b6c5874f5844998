"""The soak's CPU of a process tree (PostgreSQL: the server and its backends) counts
children, living and ended, and not only the parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from bench.soak import _cpu_seconds, _tree_cpu_seconds

SPIN = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"


def test_a_living_childs_cpu_counts_in_its_parents_tree() -> None:
    parent = subprocess.Popen([
        sys.executable, "-c",
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SPIN + 'time.sleep(30)'!r}])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(30)\n",
    ], stdout=subprocess.PIPE)
    with contextlib.ExitStack() as stack:
        stack.callback(parent.wait)
        stack.callback(parent.kill)
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        stack.callback(os.kill, child, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _cpu_seconds(child) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _cpu_seconds(child) >= 0.4
        assert _tree_cpu_seconds(parent.pid) - _cpu_seconds(parent.pid) >= 0.4


def test_ended_children_count_once_collected_by_their_parent() -> None:
    # A process that starts a busy child and waits for it: the parent's own CPU is
    # near 0, its tree holds the child's.
    parent = subprocess.Popen([
        sys.executable, "-c",
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {SPIN!r}])\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n",
    ], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == b"ready"
        assert _tree_cpu_seconds(parent.pid) - _cpu_seconds(parent.pid) >= 0.4
    finally:
        parent.kill()
        parent.wait()

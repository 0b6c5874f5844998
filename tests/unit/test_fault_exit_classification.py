"""The fault suite's bookkeeping of worker exits (tests/faults/stack.py).

An exit counts as the suite's doing only if its status says so; anything else is an
exit on the worker's own, kept with its status and the last lines of its log, even
when the suite was stopping or killing the worker at that very moment (a worker that
dies of its own error just before the rewind's SIGTERM was once counted as stopped,
or as unexpected, depending on which side of the SIGTERM the supervisor saw it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service import failpoints
from tests.faults.stack import Slot, WorkerPool, classify_exit, log_tail


@pytest.mark.parametrize("point", sorted(failpoints.EXIT_CODES))
def test_a_crash_point_status_is_planned_whatever_the_suite_sent(point: str) -> None:
    code = failpoints.EXIT_CODES[point]
    for sent in ((), {signal.SIGKILL}, {signal.SIGTERM}):
        expected, reason = classify_exit(code, sent)
        assert expected, reason
        assert point in reason


KILL, TERM = signal.SIGKILL, signal.SIGTERM


@pytest.mark.parametrize(
    ("returncode", "sent"),
    [
        (-KILL, {KILL}),
        (0, {TERM}),
        (-TERM, {TERM}),  # before its signal handlers were in place
        # A kill and a stop that crossed (the rewind stopped the worker being killed).
        (-KILL, {KILL, TERM}),
        (0, {KILL, TERM}),
    ],
)
def test_the_end_the_suite_asked_for_is_expected(returncode: int, sent: set[int]) -> None:
    assert classify_exit(returncode, sent)[0]


@pytest.mark.parametrize(
    ("returncode", "sent", "says"),
    [
        (1, set(), "exit status 1"),
        # Stopped by the suite, but the stop failed: systemd would call it failed too.
        (1, {TERM}, "exit status 1 (the suite had sent SIGTERM)"),
        # It died of its own error just before the suite's kill landed.
        (1, {KILL}, "exit status 1 (the suite had sent SIGKILL)"),
        (1, {KILL, TERM}, "exit status 1 (the suite had sent SIGKILL and SIGTERM)"),
        (0, set(), "exit status 0"),
        (-signal.SIGSEGV, set(), "killed by SIGSEGV"),
        (-KILL, set(), "killed by SIGKILL"),  # the OOM killer, not the suite
    ],
)
def test_any_other_end_is_the_worker_s_own(returncode: int, sent: set[int], says: str) -> None:
    assert classify_exit(returncode, sent) == (False, says)


def _pool(tmp_path: Path) -> WorkerPool:
    settings: Any = None  # no worker is spawned through the pool here
    return WorkerPool(settings, 1, tmp_path)


def _run_as_incarnation(slot: Slot, log: Path, code: str) -> None:
    """A stand-in incarnation writing its log after an earlier one's, as spawn does."""
    with open(log, "ab") as out:
        out.write(b"an earlier incarnation's last line\n===== start =====\n")
        out.flush()
        slot.log_path, slot.log_offset = log, out.tell()
        slot.process = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)
    slot.process.wait()


def test_an_exit_of_its_own_during_a_stop_is_kept_with_its_status_and_log(
    tmp_path: Path,
) -> None:
    pool = _pool(tmp_path)
    [slot] = pool.slots
    _run_as_incarnation(
        slot,
        tmp_path / "worker-0.log",
        "import sys; print('Traceback (most recent call last):'); "
        "print('KafkaConnectionError: Unable to bootstrap'); sys.exit(1)",
    )
    # The suite then stops every worker (a rewind): this one had already gone.
    slot.held = True
    assert not pool.signal(slot, signal.SIGTERM), "nothing left to signal"
    pool._note_exit(slot)

    [exit_] = pool.unexpected_exits()
    assert (exit_.returncode, exit_.reason) == (1, "exit status 1")
    assert exit_.log_tail == (
        "Traceback (most recent call last):",
        "KafkaConnectionError: Unable to bootstrap",
    )
    assert "Unable to bootstrap" in exit_.describe()
    pool._note_exit(slot)
    assert len(pool.exits) == 1, "an incarnation's exit is noted once"


def test_a_reached_crash_point_is_not_carried_to_the_next_incarnation(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    [slot] = pool.slots
    slot.armed_with = "relay_after_send@3"
    _run_as_incarnation(
        slot,
        tmp_path / "worker-0.log",
        f"import os; os._exit({failpoints.EXIT_CODES['relay_after_send']})",
    )
    pool._note_exit(slot)
    assert pool.unexpected_exits() == []
    assert slot.armed_with is None
    assert pool.armed_crashes_left() == 0


def test_the_log_tail_is_the_incarnation_s_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "worker-0.log"
    log.write_text("old\n" + "".join(f"line {n}\n" for n in range(40)))
    offset = len("old\n")
    assert log_tail(log, offset, lines=3) == ("line 37", "line 38", "line 39")
    assert log_tail(tmp_path / "missing.log", 0) == ()

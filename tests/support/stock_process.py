"""Real `stock` processes for tests that send signals or cut things under them, and a
cuttable proxy that runs on a thread of its own (so a test can block on a process
while the proxy keeps passing traffic).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from service.settings import Settings
from tests.support.proxy import CuttableProxy

#: A line of the text log format: `<ISO time> <LEVEL> <logger>: <message>`.
LOG_LINE = re.compile(r"^\S+ (?P<level>[A-Z]+)\s+(?P<logger>\S+): (?P<message>.*)$")


def stock_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `stock` process run with `settings` (and nothing else
    of the test's own STOCK_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    for name, value in settings.model_dump().items():
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if raw is not None:
            env[f"STOCK_{name.upper()}"] = str(raw)
    env.update(extra)
    return env


class StockCommand:
    """`stock <args>` as a child process, its output (stdout and stderr) in a file."""

    def __init__(self, args: list[str], settings: Settings, log_path: Path, **env: str) -> None:
        self.args = args
        self.env = stock_env(settings, **env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StockCommand:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                # faulthandler: a process that outlives its stop is sent SIGABRT, which
                # writes where each thread was into the output.
                [sys.executable, "-X", "faulthandler", "-m", "service.entrypoints.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def __enter__(self) -> StockCommand:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_for(self, text: str, timeout: float = 30.0, *, after: int = 0) -> int:
        """Wait until a line from line `after` on contains `text`; its index."""
        deadline = time.monotonic() + timeout
        while True:
            for index, line in enumerate(self.lines()[after:], start=after):
                if text in line:
                    return index
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"stock {' '.join(self.args)} exited with {self.process.returncode} "
                    f"before saying {text!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no line with {text!r} in {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send `signum`; (exit status, seconds it took). Fails if it outlives `timeout`."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signum)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            raise AssertionError(
                f"stock {' '.join(self.args)} still running {timeout}s after "
                f"{signal.Signals(signum).name}:\n{self.output()}"
            ) from None
        return status, time.monotonic() - began


def warnings_and_errors(lines: list[str]) -> list[str]:
    """The lines at WARNING or above, and every line that is not a log line (a
    traceback, a stray print): what an operator would have to read."""
    found = []
    for line in lines:
        match = LOG_LINE.match(line)
        if match is None or match["level"] not in ("DEBUG", "INFO"):
            found.append(line)
    return found


class ThreadedProxy:
    """A `CuttableProxy` on an event loop of its own thread."""

    def __init__(self, proxy: CuttableProxy) -> None:
        self.proxy = proxy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        self._call(self.proxy.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def port(self) -> int:
        return self.proxy.port

    def cut(self) -> None:
        self._call(self.proxy.cut())

    def restore(self) -> None:
        self._call(self.proxy.restore())

    def _call(self, coroutine: Any) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

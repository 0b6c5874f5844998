"""`pip install ./schemas` in a clean virtualenv: pydantic and nothing of the worker.

What a producer or consumer service written in Python does: install the events
package alone, build every consumed event with `build_event` and read each back with
`parse_record`, in both CloudEvents modes, away from the checkout (so nothing of
`service/` can be imported by accident). The package is installed from a copy of
`schemas/` so the build leaves nothing in the shared checkout (pip builds in place);
the copy is what an sdist would hold, so a file outside `schemas/` the build needed
would fail here too. pip uses its normal cache: with it warm this takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

#: pydantic and what pydantic itself depends on.
ALLOWED = {
    "stock-schemas",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
}
#: What `python -m venv` puts there before we install anything.
TOOLING = {"pip", "setuptools", "wheel"}
#: The worker's own dependencies: a producer must not have to install them.
WORKER_ONLY = {
    "stock-worker",
    "fastapi",
    "sqlalchemy",
    "asyncpg",
    "aiokafka",
    "faststream",
    "alembic",
    "uvicorn",
    "pydantic-settings",
    "prometheus-client",
}

LIST_DISTRIBUTIONS = """
import importlib.metadata as m, json
print(json.dumps(sorted({d.metadata["Name"].lower().replace("_", "-") for d in m.distributions()})))
"""

ROUND_TRIP = """
import json, sys
from pathlib import Path
import stock_schemas
from stock_schemas import (
    CONSUMED_DATA_MODELS, InvalidEvent, OrderCancelled, OrderCheckout, OrderLine,
    PaymentFailed, PaymentSucceeded, build_event, parse_record,
)

assert Path(stock_schemas.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), (
    stock_schemas.__file__)
try:
    import service  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("the worker's package is importable")

events = {
    "order.checkout": OrderCheckout(order_id="o1", lines=[OrderLine(variant_id="v1", quantity=2)]),
    "payment.succeeded": PaymentSucceeded(order_id="o1", payment_id="p1", amount=12.5,
                                          currency="EUR"),
    "payment.failed": PaymentFailed(order_id="o1", reason="card_declined"),
    "order.cancelled": OrderCancelled(order_id="o1", reason="customer"),
}
assert set(events) == set(CONSUMED_DATA_MODELS)
read = []
for event_type, data in events.items():
    event = build_event(event_type, data, source="order-service", correlationid="o1")
    structured = (json.dumps(event).encode(),
                  [("content-type", b"application/cloudevents+json")])
    binary = (json.dumps(event["data"]).encode(),
              [("ce_" + k, str(v).encode()) for k, v in event.items()
               if k not in ("data", "datacontenttype")]
              + [("content-type", b"application/json")])
    for mode, (value, headers) in (("structured", structured), ("binary", binary)):
        parsed = parse_record(value, headers)
        assert parsed.type == event_type and parsed.id == event["id"], (mode, parsed)
        assert type(parsed.data) is type(data) and parsed.data == data, (mode, parsed.data)
        read.append(f"{event_type}/{mode}")
try:
    parse_record(b"not json", [])
except InvalidEvent as invalid:
    assert "not JSON" in invalid.reason
else:
    raise AssertionError("invalid record accepted")
print(json.dumps(read))
"""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_schemas_package_installs_alone_and_reads_every_consumed_event(
    tmp_path: Path,
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env |= {
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    shutil.copytree(
        SCHEMAS,
        tmp_path / "schemas",
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")

    _run([python, "-m", "pip", "install", "--quiet", "./schemas"], tmp_path, env)

    installed = set(json.loads(_run([python, "-c", LIST_DISTRIBUTIONS], tmp_path, env)))
    assert {"stock-schemas", "pydantic"} <= installed
    assert not installed & WORKER_ONLY, installed & WORKER_ONLY
    assert installed - TOOLING <= ALLOWED, f"unexpected: {sorted(installed - TOOLING - ALLOWED)}"

    read = json.loads(_run([python, "-c", ROUND_TRIP], tmp_path, env))
    assert len(read) == 8, read  # four consumed types, two modes each

    # The JSON Schema generator needs nothing more either.
    _run([python, "-m", "stock_schemas.jsonschema", "--out", str(tmp_path / "json")], tmp_path, env)
    assert (tmp_path / "json" / "order.checkout.schema.json").is_file()

"""The committed documents for other languages match the code they come from.

schemas/json/*.schema.json is generated from the pydantic models, schemas/asyncapi.json
by the worker's AsyncAPI builder. When a model or a topic changes, these fail and say
the command that brings the files up to date.
"""

import json
import os
from pathlib import Path

import pytest
from stock_schemas import CONSUMED_DATA_MODELS, DATA_MODELS, EventType, build_event
from stock_schemas.jsonschema import ENVELOPE_FILE, main, schema_file, write_json_schemas

from service.entrypoints.asyncapi import asyncapi_specification
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
JSON_DIR = ROOT / "schemas" / "json"
ASYNCAPI = ROOT / "schemas" / "asyncapi.json"
REGENERATE_JSON = "python -m stock_schemas.jsonschema --out schemas/json"
REGENERATE_ASYNCAPI = "stock docs asyncapi --output schemas/asyncapi.json"


def test_json_schemas_match_the_models(tmp_path: Path) -> None:
    write_json_schemas(tmp_path)
    generated = {path.name: path.read_text() for path in tmp_path.iterdir()}
    committed = {path.name: path.read_text() for path in JSON_DIR.glob("*.json")}
    stale = sorted(
        name
        for name in generated.keys() | committed.keys()
        if generated.get(name) != committed.get(name)
    )
    assert not stale, (
        f"schemas/json is out of date ({', '.join(stale)}): run `{REGENERATE_JSON}` "
        "from the checkout and commit the result"
    )


def test_the_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(JSON_DIR), "--check"]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "order.checkout.schema.json: missing" in capsys.readouterr().err


def test_every_event_type_has_a_schema() -> None:
    assert set(DATA_MODELS) == {str(event_type) for event_type in EventType}
    names = {path.name for path in JSON_DIR.glob("*.schema.json")}
    assert names == {ENVELOPE_FILE} | {schema_file(t) for t in DATA_MODELS}


def test_the_schemas_accept_and_refuse_what_the_models_do() -> None:
    jsonschema = pytest.importorskip("jsonschema")

    def validator(name: str):
        schema = json.loads((JSON_DIR / name).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        return jsonschema.Draft202012Validator(schema)

    envelope = validator(ENVELOPE_FILE)
    good = {
        "order.checkout": {
            "order_id": "o1",
            "lines": [{"variant_id": "v1", "quantity": 2}],
            "expires_at": "2026-01-01T00:15:00Z",
        },
        "payment.succeeded": {
            "order_id": "o1",
            "payment_id": "p1",
            "amount": 12.5,
            "currency": "EUR",
        },
        "payment.failed": {"order_id": "o1", "reason": "card_declined"},
        "order.cancelled": {"order_id": "o1"},
    }
    assert set(good) == set(CONSUMED_DATA_MODELS)
    for event_type, data in good.items():
        event = build_event(event_type, data, source="shop")
        assert not list(envelope.iter_errors(event))
        assert not list(validator(schema_file(event_type)).iter_errors(data))
        CONSUMED_DATA_MODELS[event_type].model_validate(data)
    checkout = validator(schema_file("order.checkout"))
    for bad in (
        {"order_id": "o1", "lines": []},
        {"order_id": "", "lines": [{"variant_id": "v1", "quantity": 1}]},
        {"order_id": "o1", "lines": [{"variant_id": "v1", "quantity": 0}]},
        {"order_id": "o1", "lines": [{"variant_id": "v1", "quantity": "2"}]},
        {"order_id": "a\x00b", "lines": [{"variant_id": "v1", "quantity": 1}]},
        {"lines": [{"variant_id": "v1", "quantity": 1}]},
    ):
        assert list(checkout.iter_errors(bad)), bad
    for bad_envelope in (
        {"id": "e", "source": "s", "type": "t"},
        {"specversion": "0.3", "id": "e", "source": "s", "type": "t"},
        {"specversion": "1.0", "id": "", "source": "s", "type": "t"},
    ):
        assert list(envelope.iter_errors(bad_envelope)), bad_envelope


def test_asyncapi_document_matches_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("STOCK_"):
            monkeypatch.delenv(name)
    generated = asyncapi_specification(Settings()).to_json() + "\n"
    assert generated == ASYNCAPI.read_text(), (
        f"schemas/asyncapi.json is out of date: run `{REGENERATE_ASYNCAPI}` from the "
        "checkout, with no STOCK_* variables set, and commit the result"
    )
    document = json.loads(generated)
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses >= {str(event_type) for event_type in EventType}


def test_both_distributions_carry_the_same_version() -> None:
    """The worker's wheel carries stock_schemas too; one code, one version number."""
    import tomllib

    worker = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    schemas = tomllib.loads((ROOT / "schemas" / "pyproject.toml").read_text())["project"]
    assert schemas["version"] == worker, "bump schemas/pyproject.toml with the worker"
    assert schemas["dependencies"] == [
        d for d in schemas["dependencies"] if d.startswith("pydantic")
    ]

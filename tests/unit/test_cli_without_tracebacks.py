"""The `stock` CLI refuses bad arguments in a line, with status 2 and no traceback
(issue 11, item 4), and names ids by the one rule every entrypoint shares.

These need neither the database nor the broker: every refusal here happens before
either is asked anything. tests/integration/test_cli_errors.py has the ones that do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError
from stock_schemas.events import Identifier, OrderCheckout, OrderLine, PaymentFailed

from service.entrypoints.cli import _identifier
from service.entrypoints.http.models import CountLine, ReservationLine, RestockLine

ROOT = Path(__file__).resolve().parents[2]
STOCK = Path(sys.executable).parent / "stock"
#: Nothing listens here: a command that reached for the database or broker would fail
#: differently (and slowly) instead of refusing its arguments.
NOWHERE = {
    "STOCK_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "STOCK_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
}


def stock(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCK_")}
    return subprocess.run(
        [str(STOCK), *args],
        env={**clean, **NOWHERE},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The refusal's error line, after checking the status and the absence of a traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


LONG = "x" * 300


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["show", "V", "--limit", "0"], ["--limit", "from 1 to 1000"]),
        (["show", "V", "--limit", "1001"], ["--limit", "from 1 to 1000"]),
        (["show", "V", "--limit", "ten"], ["--limit", "from 1 to 1000"]),
        (["adjust", "v1", "3", "--reason", ""], ["--reason", "blank"]),
        (["adjust", "v1", "3", "--reason", "   "], ["--reason", "blank"]),
        (["adjust", "v1", "3", "--reason", "y" * 501], ["--reason", "at most 500"]),
        (["restock", "v1", "3", "--reason", " "], ["--reason", "blank"]),
        (["restock", LONG, "1"], ["argument variant", "at most 200 characters"]),
        (["restock", " v1", "1"], ["argument variant", "white space"]),
        (["restock", "v1 ", "1"], ["argument variant", "white space"]),
        (["restock", "v\t1", "1"], ["argument variant", "control characters"]),
        (["restock", "", "1"], ["argument variant", "at least 1 character"]),
        (["restock", "v1", "1", "--product", " p1"], ["--product", "white space"]),
        (["adjust", " v1", "1", "--reason", "count"], ["argument variant", "white space"]),
        (["show", LONG], ["argument variant", "at most 200 characters"]),
    ],
    ids=lambda value: " ".join(value)[:40] if isinstance(value, list) else None,
)
def test_bad_arguments_are_one_line_and_status_2(args: list[str], words: list[str]) -> None:
    refused(stock(*args), *words)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("[1,2]", ["data must be a JSON object, not an array"]),
        ('"o1"', ["data must be a JSON object, not a string"]),
        ("42", ["data must be a JSON object, not a number"]),
        ("{bad", ["data is not JSON"]),
    ],
)
def test_publish_data_must_be_a_json_object(data: str, words: list[str]) -> None:
    result = stock("publish", "order.checkout", data)
    refused(result, "stock publish:", *words)
    assert "example: stock publish order.checkout '{" in result.stderr


def test_docs_openapi_yaml_is_yaml_of_the_same_document(tmp_path: Path) -> None:
    as_json = stock("docs", "openapi")
    as_yaml = stock("docs", "openapi", "--yaml")
    assert as_json.returncode == as_yaml.returncode == 0, as_yaml.stderr
    assert not as_yaml.stdout.lstrip().startswith("{"), "YAML, not JSON"
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    assert "/api/inventory/reserve:" in as_yaml.stdout
    target = tmp_path / "openapi.yaml"
    written = stock("docs", "openapi", "--yaml", "-o", str(target))
    assert written.returncode == 0, written.stderr
    assert yaml.safe_load(target.read_text()) == json.loads(as_json.stdout)


def test_docs_asyncapi_yaml_is_yaml() -> None:
    as_yaml = stock("docs", "asyncapi", "--yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout)["asyncapi"].startswith("3.")


# ---------------------------------------------------------------- the one id rule

GOOD_IDS = ["v1", "tshirt-classic-black-m", "T-Shirt Black M", "é", "日本", "x" * 200, "a.b/c:d"]
BAD_IDS = [
    "", " ", " v1", "v1 ", "\tv1", "v1\n", "a\tb", "a\x00b", "a\x7fb", "a\x85b", "\u00a0v1",
    "\ufeffv1", "x" * 201, LONG,
]


def _cli_takes(value: str) -> bool:
    try:
        _identifier(value)
    except Exception:
        return False
    return True


def _model_takes(model: type, **fields: object) -> bool:
    try:
        model.model_validate(fields)  # type: ignore[attr-defined]
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("value", GOOD_IDS + BAD_IDS, ids=repr)
def test_kafka_http_and_the_cli_take_the_same_ids(value: str) -> None:
    expected = value in GOOD_IDS
    takes = {
        "Identifier": _model_takes(_Holder, id=value),
        "cli": _cli_takes(value),
        "order.checkout order_id": _model_takes(
            OrderCheckout, order_id=value, lines=[{"variant_id": "v", "quantity": 1}]
        ),
        "order.checkout variant_id": _model_takes(OrderLine, variant_id=value, quantity=1),
        "payment.failed order_id": _model_takes(PaymentFailed, order_id=value),
        "http restock variantId": _model_takes(RestockLine, variantId=value, quantity=1),
        "http restock productId": _model_takes(
            RestockLine, variantId="v", quantity=1, productId=value
        ),
        "http reserve reservationId": _model_takes(
            ReservationLine, variantId="v", quantity=1, reservationId=value
        ),
        "http adjust variantId": _model_takes(CountLine, variantId=value, quantity=1, reason="c"),
    }
    assert takes == dict.fromkeys(takes, expected)


class _Holder:
    """`Identifier` on its own."""

    @staticmethod
    def model_validate(fields: dict[str, object]) -> object:
        return TypeAdapter(Identifier).validate_python(fields["id"])


def test_the_id_rule_reads_as_words_not_as_its_pattern() -> None:
    with pytest.raises(ValidationError) as refused_id:
        OrderLine(variant_id=" v1", quantity=1)
    message = refused_id.value.errors()[0]["msg"]
    assert message == (
        "an id must not start or end with white space, nor contain control characters"
    )

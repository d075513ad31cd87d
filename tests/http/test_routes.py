"""The route table: every route is documented, and every documented path is served by the
route that documents it (a path's parameters filled with sample values)."""

from __future__ import annotations

import re

from idstitch.http.routes import ROUTES, Table, document
from tests.http.conftest import TestClient

SAMPLES = {
    "space_id": "spa_test",
    "collection": "users",
    "ref": "user_id:u1",
    "write_key": "wk-web-0123456789abcdef",
    "file": "index.js",
}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], template)


def test_every_documented_path_is_served_by_the_route_that_documents_it() -> None:
    table = Table()
    for route in ROUTES:
        assert route.documented, f"route {route.name} is not in /openapi.json"
        for template, item in route.documented.items():
            assert table.find(concrete(template)) is route, template
            documented = {method.upper() for method in item}
            assert documented <= set(route.methods), (template, documented, route.methods)


def test_the_openapi_document_is_the_table(client: TestClient) -> None:
    served = client.get("/openapi.json").json()["paths"]
    assert served == document()["paths"]
    assert set(served) == {p for r in ROUTES for p in r.documented}


def test_a_method_a_route_does_not_take_is_405_with_its_methods(client: TestClient) -> None:
    for route in ROUTES:
        if route.token:
            continue  # a token comes first there (tests/http/test_profile_api.py)
        template = next(iter(route.documented))
        method = "DELETE"
        response = client.request(method, concrete(template))
        assert response.status_code == 405, (template, response.status_code)
        assert response.headers["allow"] == ", ".join(route.methods), template

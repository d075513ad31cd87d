"""analytics.js served from here: the classic snippet's script and every part it loads on
demand, only the vendored files, and the hooks the serving relies on still in them.
(tests/http/test_browser_pages.py loads them in a real browser.)"""

from __future__ import annotations

import re

import pytest

from idstitch.http import library
from idstitch.http.routes import document
from tests.http.conftest import WRITE_KEY, TestClient

SCRIPT = f"/analytics.js/v1/{WRITE_KEY}/analytics.min.js"
PLAIN = {"Accept-Encoding": "identity"}


def chunk_names(script: bytes) -> list[str]:
    """The parts in webpack's chunk map: `({id:"name",...}[t]||t)+".bundle."+{id:"hash"}`."""
    found = re.search(
        rb'\(\{([^}]*)\}\[\w+\]\|\|\w+\)\+"\.bundle\."\+\{([^}]*)\}\[\w+\]\+"\.js"', script
    )
    assert found is not None, "no chunk map in the entry script"
    names = dict(re.findall(rb'(\d+):"([^"]+)"', found.group(1)))
    hashes = re.findall(rb'(\d+):"([0-9a-f]+)"', found.group(2))
    return [f"{names.get(i, i).decode()}.bundle.{h.decode()}.js" for i, h in hashes]


def test_every_part_the_library_can_load_is_vendored_with_the_hooks_served_through() -> None:
    bundles = library.bundles()
    version = library.version()
    for entry in library.ENTRIES:
        script = bundles[entry]
        assert f'"{version}"'.encode() in script  # VERSION names what is vendored
        parts = chunk_names(script)
        assert {"auto-track", "queryString"} <= {p.split(".")[0] for p in parts}
        assert set(parts) <= set(bundles), set(parts) - set(bundles)
        # Where the parts come from is fixed when the script runs, from _cdn first.
        assert script.count(b'+"/analytics-next/bundles/"') == 1
        assert b"._cdn" in script
    assert bundles["standalone.js"].count(b'window.analyticsWriteKey="__WRITE_KEY__"') == 1


def test_the_classic_snippets_script_is_served_with_its_write_key(client: TestClient) -> None:
    response = client.get(SCRIPT, headers={"Origin": "https://shop.example", **PLAIN})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.headers["access-control-allow-origin"] == "*"
    assert "content-encoding" not in response.headers
    body = response.content
    standalone = library.bundles()["standalone.js"]
    before, _, after = standalone.partition(b'window.analyticsWriteKey="__WRITE_KEY__"')
    preamble, _, rest = body.partition(before)
    assert rest == f'window.analyticsWriteKey="{WRITE_KEY}"'.encode() + after  # else unchanged
    # One statement first: _cdn from the script's own URL, unless the page set one.
    assert preamble.startswith(b"/* idstitch:") and preamble.count(b"\n") == 2
    assert b'u.indexOf("/analytics.js/v1/")' in preamble and b"a._cdn||(" in preamble

    zipped = client.get(SCRIPT, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept-Encoding"
    assert zipped.content == body  # the client inflates it
    assert int(zipped.headers["content-length"]) < len(body) // 3

    head = client.head(SCRIPT, headers=PLAIN)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(body))


def test_an_unknown_write_key_gets_no_script_and_no_login_prompt(client: TestClient) -> None:
    response = client.get("/analytics.js/v1/not-a-key/analytics.min.js")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_error"
    assert "not one of the server's" in response.json()["message"]
    assert "www-authenticate" not in response.headers
    assert client.get("/analytics.js/v1//analytics.min.js").status_code == 404
    refused = client.post(SCRIPT)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


def test_every_vendored_part_is_served_as_is(client: TestClient) -> None:
    for name, content in library.bundles().items():
        response = client.get(library.BUNDLES_PREFIX + name, headers=PLAIN)
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        if name in library.ENTRIES:
            # The UMD build also gets the one statement, with the path it is served at.
            first, _, rest = response.content.partition(b"}();\n")
            assert rest == content and b'u.indexOf("/analytics-next/bundles/")' in first
            assert response.headers["cache-control"] == "public, max-age=300"
        else:
            assert response.content == content, name
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "nope.js",
        "index.js.map",
        "..%2FVERSION",
        "..%2F..%2Fapp.py",
        "%2Fetc%2Fpasswd",
        "..%2Fsnippet%2Fsnippet.min.js",
        "bundles%2Findex.js",
    ],
)
def test_nothing_but_the_vendored_parts_is_served(client: TestClient, name: str) -> None:
    response = client.get(library.BUNDLES_PREFIX + name)
    assert response.status_code == 404, name
    assert response.json()["code"] == "not_found"


def test_the_routes_are_documented() -> None:
    paths = document()["paths"]
    for path in ("/analytics.js/v1/{write_key}/analytics.min.js", "/analytics-next/bundles/{file}"):
        assert "get" in paths[path]

"""analytics.js in a real browser, loaded from a real `idstitch serve` by a page on another
origin, in the two ways a site installs it:

- `classic`: Segment's snippet with its CDN host changed to idstitch's (the snippet loads
  `/analytics.js/v1/<writeKey>/analytics.min.js`);
- `umd`: the library's UMD build from idstitch (`/analytics-next/bundles/index.js`) and
  `AnalyticsBrowser.load({writeKey, cdnURL})`, as a page without a bundler uses the npm build.

Each page calls page, identify, track and trackLink (a link then clicked), and a page is
opened with `?ajs_uid=&ajs_event=`; the events and the stitched profiles are read back
through the Profile API, and every request the pages made went to the page's own server or
to idstitch, never elsewhere.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from idstitch.http import library
from tests.http import chromium
from tests.http.conftest import READ, SPACE, WRITE_KEY
from tests.http.live import Server, free_port, running

if TYPE_CHECKING:
    from playwright.sync_api import Request

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SNIPPET = Path(library.__file__).parent / "static" / "analytics-next" / "snippet" / "snippet.min.js"
# The page's own script: says on the page when the library is ready, and for whom.
STATUS = """<script>
function idstitchInstance() {
  var a = window.analytics;
  return typeof a.then === "function" ? a.then(function (r) { return r[0]; }) : a;
}
function showStatus() {
  Promise.resolve(idstitchInstance()).then(function (a) {
    var user = a.user();
    document.getElementById("status").textContent = "analytics.js " + a.VERSION +
      " loaded; user " + (user.id() || "(anonymous)") + ", anonymous id " + user.anonymousId();
  });
}
</script>"""
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
{status}
{loader}
</head>
<body style="font: 18px sans-serif; margin: 2em">
<h1>{title}</h1>
<p>analytics.js, {setup}, served by idstitch at {idstitch}</p>
<p><a id="pricing" href="next.html">See pricing</a></p>
<p id="status">loading analytics.js...</p>
</body></html>
"""


def loader(setup: str, idstitch: str) -> str:
    if setup == "classic":
        # Segment's snippet, with only its CDN host changed (to plain http, here).
        snippet = SNIPPET.read_text().replace("https://IDSTITCH_HOST", idstitch)
        snippet = snippet.replace("YOUR_WRITE_KEY", WRITE_KEY)
        return f"<script>\n{snippet}analytics.ready(showStatus);\n</script>"
    return (
        f'<script src="{idstitch}/analytics-next/bundles/index.js"></script>\n'
        "<script>\n"
        "window.analytics = AnalyticsNext.AnalyticsBrowser.load(\n"
        f'  {{writeKey: "{WRITE_KEY}", cdnURL: "{idstitch}"}}\n'
        ");\n"
        "analytics.page();\n"
        "analytics.ready(showStatus);\n"
        "</script>"
    )


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def idstitch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("idstitch")) as server:
        yield server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, idstitch: Server) -> Iterator[str]:
    """A site on another origin (`localhost`, another port) with a page per setup."""
    root = tmp_path_factory.mktemp("site")
    for setup in ("classic", "umd"):
        folder = root / setup
        folder.mkdir()
        for name, title in (("index.html", f"Shop ({setup})"), ("next.html", "Pricing")):
            html = PAGE.format(
                title=title,
                setup=setup,
                idstitch=idstitch.url,
                status=STATUS,
                loader=loader(setup, idstitch.url),
            )
            (folder / name).write_text(html)
    (root / "favicon.ico").write_bytes(b"")  # what the browser asks every site for
    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def read(server: Server, ref: str, resource: str) -> dict[str, Any]:
    url = f"{server.url}/v1/spaces/{SPACE}/collections/users/profiles/{ref}/{resource}"
    response = httpx.get(url, params={"limit": 100}, headers=READ, timeout=10)
    assert response.status_code in (200, 404), response.text
    body: dict[str, Any] = response.json() if response.status_code == 200 else {}
    return body


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def events(server: Server, ref: str) -> list[dict[str, Any]]:
    return list(read(server, ref, "events").get("data", []))


def names(server: Server, ref: str) -> list[str]:
    return sorted(e.get("event", e["type"]) for e in events(server, ref))


def identifiers(server: Server, ref: str) -> set[tuple[str, str]]:
    return {(e["type"], e["id"]) for e in read(server, ref, "external_ids").get("data", [])}


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def aborted(request: Request) -> bool:
    """An event post cut off by leaving the page (trackLink navigates 300 ms after the
    click): the library keeps its queue in localStorage and sends it again from the next page;
    the events' arrival, once each, is checked below."""
    return (
        request.failure == "net::ERR_ABORTED"
        and request.method == "POST"
        and urlsplit(request.url).path.startswith("/v1/")
    )


@pytest.mark.parametrize("setup", ["classic", "umd"])
def test_analytics_js_loads_and_sends_everything_through_idstitch(
    setup: str, idstitch: Server, site: str, tmp_path: Path
) -> None:
    chromium.require()
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    bob, ann = f"bob-{setup}", f"ann-{setup}"
    requests: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        context = chromium.launch(playwright, tmp_path / "profile")
        context.on("request", lambda r: requests.append(r.url))
        context.on(
            "response",
            lambda r: (
                failed.append(f"{r.status} {r.url}")
                if r.url.startswith(idstitch.url) and r.status >= 400
                else None
            ),
        )
        context.on("requestfailed", lambda r: None if aborted(r) else failed.append(r.url))
        context.set_default_timeout(15_000)
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            # A visitor arrives from a campaign link: analytics.js identifies and tracks from
            # the query string (a part it loads on demand).
            page.goto(f"{site}/{setup}/index.html?ajs_uid={bob}&ajs_event=Clicked")
            page.wait_for_function("document.getElementById('status').textContent.includes('user')")
            first_anonymous = page.evaluate(
                "async () => (await idstitchInstance()).user().anonymousId()"
            )
            wait_for(f"{bob}'s Clicked", lambda: "Clicked" in names(idstitch, f"user_id:{bob}"))

            # Someone else on the same browser: reset, a new anonymous visit, then sign-in.
            page.evaluate("async () => { await window.analytics.reset(); }")
            page.goto(f"{site}/{setup}/index.html")
            page.wait_for_function("document.getElementById('status').textContent.includes('user')")
            anonymous = page.evaluate("async () => (await idstitchInstance()).user().anonymousId()")
            assert anonymous and anonymous != first_anonymous
            page.evaluate(
                """async ([user]) => {
                  await window.analytics.identify(user, {email: user + "@example.com"});
                  await window.analytics.track("Viewed Pricing", {plan: "pro"});
                  await window.analytics.trackLink(
                    document.getElementById("pricing"), "Clicked Link", {to: "pricing"});
                }""",
                [ann],
            )
            with page.expect_navigation():
                page.click("#pricing")
            page.wait_for_function(
                f"document.getElementById('status').textContent.includes('{ann}')"
            )
            status = page.inner_text("#status")
            assert status.startswith(f"analytics.js {library.version()} loaded; user {ann},")
            page.screenshot(path=str(tmp_path / f"{setup}.png"))
            wait_for(
                f"{ann}'s events",
                lambda: (
                    names(idstitch, f"user_id:{ann}")
                    == ["Clicked Link", "Viewed Pricing", "identify", "page", "page"]
                ),
            )
        except Exception as err:
            # A part or the settings asked of another host fail to load here, and the page
            # then waits in vain: name the cause rather than the timeout.
            elsewhere = [u for u in requests if origin(u) not in (site, idstitch.url)]
            if elsewhere:
                raise AssertionError(f"the page asked other hosts: {elsewhere}") from err
            raise
        finally:
            context.close()

    # Stitched: each visit's anonymous id joined to the user it became.
    assert {("user_id", bob), ("anonymous_id", first_anonymous)} <= identifiers(
        idstitch, f"user_id:{bob}"
    )
    assert ("anonymous_id", anonymous) not in identifiers(idstitch, f"user_id:{bob}")
    assert identifiers(idstitch, f"user_id:{ann}") == {
        ("user_id", ann),
        ("anonymous_id", anonymous),
        ("email", f"{ann}@example.com"),
    }
    first_page = min(
        (e for e in events(idstitch, f"user_id:{ann}") if e["type"] == "page"),
        key=lambda e: e["timestamp"],
    )
    assert first_page.get("userId") is None, (
        first_page
    )  # sent before sign-in, found through the anonymous id
    assert first_page["context"]["page"]["url"] == f"{site}/{setup}/index.html"

    # Nothing went anywhere but the page's server and idstitch, and idstitch served it all.
    origins = {origin(u) for u in requests}
    assert origins == {site, idstitch.url}, requests
    assert failed == [], failed
    assert errors == [], errors
    served = [u.removeprefix(idstitch.url) for u in requests if u.startswith(idstitch.url)]
    entry = f"/analytics.js/v1/{WRITE_KEY}/analytics.min.js" if setup == "classic" else None
    assert (entry or "/analytics-next/bundles/index.js") in served
    assert f"/v1/projects/{WRITE_KEY}/settings" in served
    for part in ("queryString", "auto-track"):
        assert any(u.startswith(f"/analytics-next/bundles/{part}.bundle.") for u in served)
    print(f"{setup}: {time.monotonic() - started:.1f} s, {len(requests)} requests")

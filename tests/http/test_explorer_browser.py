"""The explorer in a real browser, on a real `idstitch serve`: a person who signed in on two
browsers (one of them a profile of its own until then, so merged) and an anonymous id that a
second user_id was refused on. The page draws the profile with cytoscape.js under its
Content-Security-Policy, shows a message's details on hover, explains why two picked
identifiers are one profile, opens a merged-away profile, lists the refusals, and reaches
every edge's details with the keyboard alone.

With IDSTITCH_SCREENSHOTS=DIR set, the screenshots are also saved into DIR, to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.http import chromium
from tests.http.conftest import READ, TOKEN, WRITE
from tests.http.live import Server, running

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WAIT = 30_000  # ms: the machine may be loaded; every wait is for a condition, never a pause
TIME = "2024-03-01T10:00:0{}.000Z"
MESSAGES: list[dict[str, Any]] = [
    # A browser, anonymous, then signed in: a1 and u1 (and the email) are one profile.
    {"type": "page", "anonymousId": "a1", "messageId": "msg-page-a1"},
    {
        "type": "identify",
        "anonymousId": "a1",
        "userId": "u1",
        "traits": {"email": "jane@example.com"},
        "messageId": "msg-identify-u1",
    },
    # A second browser with a profile of its own, merged when u1 signs in there.
    {"type": "page", "anonymousId": "a2", "messageId": "msg-page-a2"},
    {
        "type": "track",
        "event": "Signed In",
        "anonymousId": "a2",
        "userId": "u1",
        "messageId": "msg-merge-a2",
    },
    # A third browser: u1 first, then u2, whom the default rules refuse to join to u1.
    {"type": "identify", "anonymousId": "a3", "userId": "u1", "messageId": "msg-identify-a3"},
    {"type": "identify", "anonymousId": "a3", "userId": "u2", "messageId": "msg-refused-u2"},
]

# Where a graph element is on the screen: a node by id, or the first element a selector finds.
WHERE = """([id, selector]) => {
  const found = id === null ? graph.$(selector)[0] : graph.getElementById(id);
  const p = found.isEdge() ? found.renderedMidpoint() : found.renderedPosition();
  const box = document.getElementById("graph").getBoundingClientRect();
  return [box.left + p.x, box.top + p.y];
}"""


@pytest.fixture(scope="module")
def idstitch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("idstitch")) as server:
        # One request per message, in order: each is resolved before the next is sent.
        for n, message in enumerate(MESSAGES):
            batch = {"batch": [{**message, "timestamp": TIME.format(n)}]}
            response = httpx.post(f"{server.url}/v1/batch", json=batch, headers=WRITE, timeout=30)
            assert response.status_code == 200, response.text
        yield server


@pytest.fixture(scope="module")
def drawn(idstitch: Server) -> dict[str, Any]:
    """What the page is given for user_id:u1, read the way the page reads it."""
    response = httpx.get(
        f"{idstitch.url}/explorer/graph", params={"ref": "user_id:u1"}, headers=READ, timeout=30
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert len(body["merges"]) == 1, body["merges"]
    assert any(e["kind"] == "merge" for e in body["edges"]), body["edges"]
    assert body["refusals"], "the second user_id on a3 was not refused"
    return body


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get("IDSTITCH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / name)


def where(page: Page, id: str | None = None, selector: str | None = None) -> tuple[float, float]:
    x, y = page.evaluate(WHERE, [id, selector])
    return float(x), float(y)


def wait_for_graph(page: Page, drawn: dict[str, Any]) -> None:
    """The profile drawn (its edges listed, its identifiers in the graph) and laid out."""
    page.locator("#edges tbody tr").nth(len(drawn["edges"]) - 1).wait_for()
    page.wait_for_function(
        "count => typeof graph === 'object' && graph !== null && "
        "graph.nodes(':childless').filter(n => n.data('identifier')).length === count",
        arg=len(drawn["identifiers"]),
    )


@contextmanager
def explorer(idstitch: Server, tmp_path: Path) -> Iterator[Page]:
    """/explorer open in Chromium; afterwards, nothing went wrong in the page."""
    chromium.require()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT)
    # The page runs under its Content-Security-Policy: a script it blocked, a style the
    # library found wrong or an error thrown would show here.
    problems: list[str] = []
    with sync_playwright() as playwright:
        context = chromium.launch(playwright, tmp_path / "profile")
        context.set_default_timeout(WAIT)
        try:
            page = context.new_page()
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{idstitch.url}/explorer")
            yield page
        except Exception as err:
            if problems:  # the cause, rather than the wait that timed out
                raise AssertionError(f"the page reported: {problems}") from err
            raise
        finally:
            context.close()
    assert problems == [], problems


def test_the_explorer_shows_why_identifiers_are_one_profile(
    idstitch: Server, drawn: dict[str, Any], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    own = drawn["profile"]["segment_id"]
    merged = drawn["merges"][0]["from_segment_id"]
    merge = next(e for e in drawn["edges"] if e["kind"] == "merge")
    with explorer(idstitch, tmp_path) as page:
        page.fill("#token", TOKEN)
        page.fill("#ref", "user_id:u1")
        page.click("button[type=submit]")
        wait_for_graph(page, drawn)
        expect(page.locator("#status")).to_contain_text(own)

        # Hovering the merge edge shows the message that merged the two profiles.
        page.mouse.move(5, 5)
        page.mouse.move(*where(page, selector="edge.merge"), steps=5)
        tip = page.locator("#tip")
        expect(tip).to_be_visible()
        for detail in (merge["message_id"], merge["message_type"], merge["source_id"]):
            expect(tip).to_contain_text(detail)
        expect(tip).to_contain_text(merge["timestamp"])

        # Two identifiers picked in the graph: the answer says they are together, by
        # which messages, and the path is marked in the graph.
        page.mouse.click(*where(page, "anonymous_id:a1"))
        expect(page.locator("#explain")).to_contain_text("Picked anonymous_id:a1")
        page.mouse.click(*where(page, "anonymous_id:a2"))
        explain = page.locator("#explain")
        expect(explain.locator(".verdict")).to_contain_text("Together")
        steps = explain.locator("ol.steps li")
        expect(steps.first).to_be_visible()
        expect(explain).to_contain_text("msg-merge-a2")
        assert steps.count() >= 2
        assert page.evaluate("graph.edges('.path').length") >= 2
        assert page.evaluate("graph.getElementById('anonymous_id:a2').hasClass('path')")

        # Every refusal is listed with its rule, and drawn as a dashed edge.
        refusals = page.locator("#refusals tbody tr")
        expect(refusals).to_have_count(len(drawn["refusals"]))
        for refusal in drawn["refusals"]:
            expect(page.locator("#refusals")).to_contain_text(refusal["rule"])
        assert page.evaluate("graph.edges('.refusal').length") >= 1
        page.mouse.move(5, 5)  # the tooltip away, for the picture
        expect(tip).to_be_hidden()
        screenshot(page, tmp_path, "explorer.png")

        # The merged-away profile's group, clicked inside its border (not on its
        # identifier): the page asks for it and shows the profile it was merged into.
        box = page.evaluate(
            "sid => graph.nodes(':parent').filter(n => n.data('segment_id') === sid)"
            ".renderedBoundingBox({includeLabels: false})",
            merged,
        )
        graph_box = page.locator("#graph").bounding_box()
        assert graph_box is not None
        page.mouse.click(
            graph_box["x"] + (box["x1"] + box["x2"]) / 2, graph_box["y"] + box["y2"] - 5
        )
        expect(page.locator("#status")).to_contain_text(f"{merged} was merged into {own}")
        assert page.evaluate("location.hash") == f"#ref={merged}"
        expect(page.locator("#ref")).to_have_value(merged)
        expect(page.locator("#aside-tables")).to_contain_text(own)
        wait_for_graph(page, drawn)
        screenshot(page, tmp_path, "explorer-merged.png")


def test_every_edge_is_reached_with_the_keyboard(
    idstitch: Server, drawn: dict[str, Any], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with explorer(idstitch, tmp_path) as page:
        keyboard = page.keyboard

        def tab_to(what: str, presses: int = 40) -> None:
            """Tab until the focused element matches the CSS selector `what`."""
            for _ in range(presses):
                keyboard.press("Tab")
                if page.evaluate("s => document.activeElement.matches(s)", what):
                    return
            raise AssertionError(f"{presses} presses of Tab did not reach {what}")

        tab_to("#ref")
        keyboard.type("user_id:u1")
        tab_to("#token")
        keyboard.type(TOKEN)
        keyboard.press("Enter")
        wait_for_graph(page, drawn)

        # Two identifiers, each focused and activated by the keyboard: explained.
        tab_to("#identifiers button[aria-pressed]")
        keyboard.press("Enter")
        tab_to("#identifiers button[aria-pressed]")
        keyboard.press("Enter")
        expect(page.locator("#identifiers button[aria-pressed=true]")).to_have_count(2)
        expect(page.locator("#explain .verdict")).to_contain_text("Together")

        # Every edge's row is reached in turn and shows its message in the panel beside
        # the graph (and marks it in the graph).
        tab_to("#edges tbody tr")
        for n, edge in enumerate(drawn["edges"]):
            if n:
                keyboard.press("Tab")
            row = page.locator("#edges tbody tr").nth(n)
            expect(row).to_be_focused()
            selected = page.locator("#selected")
            expect(selected).to_contain_text(edge["message_id"])
            expect(selected).to_contain_text(edge["message_type"])
            expect(selected).to_contain_text(edge["source_id"])
            expect(selected).to_contain_text(edge["timestamp"])
            marked = "() => graph.edges('.current').map(e => e.data('edge').message_id)"
            assert page.evaluate(marked) == [edge["message_id"]]
        # And a refusal's row, with its rule.
        tab_to("#refusals tbody tr")
        expect(page.locator("#selected")).to_contain_text(drawn["refusals"][0]["rule"])
        screenshot(page, tmp_path, "explorer-keyboard.png")

"""Every route the server answers, declared once: what it is called in metrics and logs, the
paths it answers and how `/openapi.json` documents them, its methods, and the handler that
serves it (`App` dispatches by `Route.handler`). The dispatch and the OpenAPI document are
both built from `ROUTES`; a test checks that each documented path is served by its route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from idstitch.http import browser, explorer, library, openapi, profile_api, repairs, tracking
from idstitch.http.paging import RESOURCES

Handler = Literal[
    "tracking",
    "browser_metrics",
    "browser_settings",
    "library",
    "explorer_graph",
    "explorer_explain",
    "explorer_page",
    "profile_api",
    "profile_repairs",
    "healthz",
    "metrics",
    "openapi",
    "docs",
    "root",
]


@dataclass(frozen=True)
class Route:
    name: str  # the label in /metrics and the logs
    methods: tuple[str, ...]
    handler: Handler
    # Documented path (OpenAPI template) -> its path item.
    documented: dict[str, openapi.Schema] = field(default_factory=dict)
    # The paths it answers: exactly these, or those `matches` accepts (templated paths).
    exact: tuple[str, ...] = ()
    matches: Callable[[str], bool] | None = None
    # Profile API family: the access token is checked before anything else is told.
    token: bool = False


def _library(route: str) -> Callable[[str], bool]:
    def matches(path: str) -> bool:
        found = library.asset(path)
        return found is not None and found.route == route

    return matches


def _profile_api(path: str) -> bool:
    return path.startswith(profile_api.PREFIX) or path == profile_api.PREFIX[:-1]


def _tracking() -> list[Route]:
    return [
        Route(
            tracking.ROUTE_NAMES[path],
            ("POST",),
            "tracking",
            {path: openapi.tracking_operation(path, kind)},
            exact=(path,),
        )
        for path, kind in tracking.ROUTES.items()
    ]


def _ops(path: str, handler: Handler, item: openapi.Schema) -> Route:
    """An operations route: GET and HEAD (load balancers probe with HEAD), named by handler."""
    return Route(handler, ("GET", "HEAD"), handler, {path: item}, exact=(path,))


ROUTES: tuple[Route, ...] = (
    *_tracking(),
    Route(
        "browser_metrics",
        ("POST",),
        "browser_metrics",
        {browser.METRICS_PATH: openapi.browser_metrics()},
        exact=(browser.METRICS_PATH,),
    ),
    Route(
        "browser_settings",
        ("GET",),
        "browser_settings",
        {"/v1/projects/{write_key}/settings": openapi.browser_settings()},
        matches=lambda path: browser.settings_key(path) is not None,
    ),
    Route(
        "browser_library",
        ("GET", "HEAD"),
        "library",
        {"/analytics.js/v1/{write_key}/analytics.min.js": openapi.browser_library()},
        matches=_library("browser_library"),
    ),
    Route(
        "browser_bundles",
        ("GET", "HEAD"),
        "library",
        {"/analytics-next/bundles/{file}": openapi.browser_bundles()},
        matches=_library("browser_bundles"),
    ),
    Route(
        "explorer_graph",
        ("GET",),
        "explorer_graph",
        {explorer.DATA_PATH: openapi.explorer_graph()},
        exact=(explorer.DATA_PATH,),
        token=True,
    ),
    Route(
        "explorer_explain",
        ("GET",),
        "explorer_explain",
        {explorer.EXPLAIN_PATH: openapi.explorer_explain()},
        exact=(explorer.EXPLAIN_PATH,),
        token=True,
    ),
    Route(
        "explorer",
        ("GET",),
        "explorer_page",
        {
            explorer.PAGE_PATH: openapi.explorer_page(),
            explorer.SCRIPT_PATH: openapi.explorer_script(),
            explorer.LIBRARY_PATH: openapi.explorer_library(),
        },
        exact=(explorer.PAGE_PATH, explorer.SCRIPT_PATH, explorer.LIBRARY_PATH),
    ),
    Route(
        "profile_repairs",  # named by the repair: profiles.delete_external_ids, ...
        ("POST",),
        "profile_repairs",
        {
            "/v1/spaces/{space_id}/collections/users/profiles/{ref}/external_ids/delete": (
                openapi.delete_external_ids()
            ),
            "/v1/spaces/{space_id}/collections/{collection}/profiles/{ref}/unmerge": (
                openapi.unmerge()
            ),
        },
        matches=repairs.matches,
        token=True,
    ),
    Route(
        "profiles",  # the handler names each request by its resource: profiles.traits, ...
        ("GET",),
        "profile_api",
        {
            "/v1/spaces/{space_id}/collections/{collection}/profiles/{ref}/"
            + resource: openapi.profile_operation(resource)
            for resource in RESOURCES
        },
        matches=_profile_api,
        token=True,
    ),
    _ops("/healthz", "healthz", openapi.healthz()),
    _ops("/metrics", "metrics", openapi.metrics()),
    _ops("/openapi.json", "openapi", openapi.openapi()),
    _ops("/docs", "docs", openapi.docs()),
    _ops("/", "root", openapi.root()),
)


class Table:
    """Path -> route: a dictionary for exact paths (the ingest routes), then the templated
    ones in declaration order."""

    def __init__(self, routes: tuple[Route, ...] = ROUTES):
        self.exact = {path: r for r in routes for path in r.exact}
        self.templated = [r for r in routes if r.matches is not None]

    def find(self, path: str) -> Route | None:
        route = self.exact.get(path)
        if route is not None:
            return route
        for candidate in self.templated:
            assert candidate.matches is not None
            if candidate.matches(path):
                return candidate
        return None


def document() -> openapi.Schema:
    """The OpenAPI document of every route."""
    return openapi.document({p: item for r in ROUTES for p, item in r.documented.items()})

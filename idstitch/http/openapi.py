"""The OpenAPI 3.1 description of both APIs, served at `/openapi.json` and rendered at `/docs`.

This module holds the schemas and one path item per route; `routes.ROUTES` says which path
each documents, and `routes.document()` assembles the document from that table.

Schemas say what the server accepts, so generated requests exercise real validation:
ids are strings or numbers, JSON null counts as absent, and the limits are the real ones.
"""

from __future__ import annotations

from typing import Any

from idstitch import __version__
from idstitch.core.messages import (
    MAX_BATCH_ITEMS,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_ID_LENGTH,
    MAX_REQUEST_BYTES,
)
from idstitch.http.paging import LIMITS, TRAIT_CLASSES
from idstitch.http.tracking import SHORT_ROUTES

Schema = dict[str, Any]

_ID: Schema = {"type": ["string", "number", "null"], "description": "A string or a number."}
_PRESENT_ID: Schema = {"type": ["string", "number"], "minLength": 1}
_OBJECT: Schema = {"type": ["object", "null"]}
_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
_NAME: Schema = {"description": "Stored as sent; a string is expected, nothing is required."}

_COMMON: Schema = {
    "userId": _ID,
    "anonymousId": _ID,
    "messageId": {
        **_ID,
        "maxLength": MAX_MESSAGE_ID_LENGTH,
        "description": "Deduplication key per source; assigned when absent.",
    },
    "timestamp": _TIME,
    "originalTimestamp": _TIME,
    "sentAt": _TIME,
    "context": _OBJECT,
    "integrations": _OBJECT,
}
_USER_OR_ANON = [
    {"required": ["userId"], "properties": {"userId": _PRESENT_ID}},
    {"required": ["anonymousId"], "properties": {"anonymousId": _PRESENT_ID}},
]

_MESSAGES: dict[str, Schema] = {
    "identify": {"properties": {"traits": _OBJECT}, "anyOf": _USER_OR_ANON},
    "track": {
        "properties": {
            "event": {"type": "string", "minLength": 1},
            "properties": _OBJECT,
        },
        "required": ["event"],
        "anyOf": _USER_OR_ANON,
    },
    "page": {
        "properties": {"name": _NAME, "category": _NAME, "properties": _OBJECT},
        "anyOf": _USER_OR_ANON,
    },
    "screen": {
        "properties": {"name": _NAME, "category": _NAME, "properties": _OBJECT},
        "anyOf": _USER_OR_ANON,
    },
    "group": {
        "properties": {"groupId": _PRESENT_ID, "traits": _OBJECT},
        "required": ["groupId"],
        "anyOf": _USER_OR_ANON,
    },
    "alias": {
        "properties": {"previousId": _PRESENT_ID, "userId": _PRESENT_ID},
        "required": ["userId", "previousId"],
    },
}


def _message(kind: str, typed: bool) -> Schema:
    spec = _MESSAGES[kind]
    properties = {**_COMMON, **spec["properties"]}
    required = list(spec.get("required", []))
    if typed:
        properties["type"] = {"const": kind}
        required.append("type")
    else:
        properties["type"] = {
            "type": ["string", "null"],
            "description": "Ignored: the route decides the type.",
        }
    properties["writeKey"] = {
        "type": ["string", "null"],
        "description": "The source's write key, if not sent by HTTP Basic.",
    }
    out: Schema = {
        "type": "object",
        "properties": properties,
        "required": required,
        "description": f"At most {MAX_MESSAGE_BYTES} bytes.",
    }
    if "anyOf" in spec:
        out["anyOf"] = spec["anyOf"]
    return out


_TRACKING_ERROR: Schema = {
    "type": "object",
    "required": ["success", "code", "message"],
    "properties": {
        "success": {"const": False},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "index": {"type": "integer", "description": "The batch position of the problem."},
    },
}
_PROFILE_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_CURSOR: Schema = {
    "type": "object",
    "required": ["url", "has_more", "next"],
    "properties": {
        "url": {"type": "string"},
        "has_more": {"type": "boolean"},
        "next": {"type": "string"},
        "limit": {"type": "integer"},
    },
}
_EXTERNAL_ID: Schema = {
    "type": "object",
    "required": ["id", "type", "collection", "source_id", "created_at", "encoding"],
    "properties": {
        k: {"type": "string"}
        for k in (
            "id",
            "type",
            "collection",
            "source_id",
            "created_at",
            "encoding",
            "first_message_id",
        )
    },
}
_REFUSAL: Schema = {
    "type": "object",
    "required": [
        "rule",
        "type",
        "value",
        "message_id",
        "source",
        "timestamp",
        "segment_id",
        "other_segment_id",
    ],
    "properties": {
        "rule": {"type": "string"},
        "collection": {"type": "string"},
        "type": {"type": "string"},
        "value": {"type": "string"},
        "detail": {"type": "string"},
        "message_id": {"type": "string"},
        "source": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "segment_id": {"type": "string"},
        "other_segment_id": {"type": ["string", "null"]},
    },
}
_STEP: Schema = {
    "type": "object",
    "required": ["from", "to", "kind", "message_id", "source", "timestamp"],
    "properties": {
        "from": {"type": "string"},
        "to": {"type": "string"},
        "kind": {"type": "string", "enum": ["attach", "merge", "alias"]},
        "message_id": {"type": "string"},
        "source": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "message_type": {"type": "string"},
    },
}
_EXPLANATION: Schema = {
    "type": "object",
    "required": ["together", "path", "refusals"],
    "properties": {
        "together": {"type": "boolean"},
        "segment_ids": {"type": "array", "items": {"type": "string"}},
        "path": {"type": "array", "items": _STEP},
        "refusals": {"type": "array", "items": _REFUSAL},
        "complete": {
            "type": "boolean",
            "description": "False when the profile had more messages or refusals than one "
            "answer reads (20,000 and 10,000).",
        },
    },
}
_PROFILE_BODIES: dict[str, Schema] = {
    "traits": {
        "type": "object",
        "required": ["traits", "cursor"],
        "properties": {"traits": {"type": "object"}, "cursor": _CURSOR},
    },
    "external_ids": {
        "type": "object",
        "required": ["data", "cursor"],
        "properties": {"data": {"type": "array", "items": _EXTERNAL_ID}, "cursor": _CURSOR},
    },
    "events": {
        "type": "object",
        "required": ["data", "cursor"],
        "properties": {"data": {"type": "array", "items": {"type": "object"}}, "cursor": _CURSOR},
    },
    "metadata": {
        "type": "object",
        "required": ["metadata"],
        "properties": {"metadata": {"type": "object", "required": ["segment_id"]}},
    },
    "links": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "array",
                "items": {"type": "object", "required": ["to_collection", "external_ids"]},
            },
            "cursor": _CURSOR,
        },
    },
    "violations": {
        "type": "object",
        "required": ["data", "cursor"],
        "properties": {"data": {"type": "array", "items": _REFUSAL}, "cursor": _CURSOR},
    },
    "explain": _EXPLANATION,
}
_PROFILE_SUMMARIES = {
    "traits": "A profile's traits (newest value per key).",
    "external_ids": "A profile's identifiers.",
    "events": "A profile's events, all history.",
    "metadata": "When the profile was created and last updated, and its canonical segment_id.",
    "links": "Linked accounts (for a user) or users (for an account).",
    "violations": "The refusals that involve this profile: its messages' refused identifiers "
    "and merges, and those that would have joined it (newest first).",
    "explain": "Whether this profile's reference and `with` are one profile: the shortest "
    "chain of messages that joined them, or the refusals that kept their profiles apart.",
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def tracking_operation(path: str, kind: str | None) -> Schema:
    if kind is None:
        variants = [_message(k, typed=True) for k in _MESSAGES]
        body: Schema = {
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH_ITEMS,
                    "items": {"oneOf": variants},
                },
                "context": _OBJECT,
                "integrations": _OBJECT,
                "sentAt": _TIME,
                "writeKey": {"type": ["string", "null"]},
            },
        }
        summary = "Send up to 2,500 typed messages in one request."
    else:
        body = _message(kind, typed=False)
        summary = f"Send one {kind} call."
    if path in SHORT_ROUTES:  # what analytics.js posts to
        summary += f" The short form of {SHORT_ROUTES[path]} that analytics.js uses."
    error = _json(_TRACKING_ERROR, "")
    return {
        "post": {
            "tags": ["Tracking API"],
            "operationId": path.strip("/").replace("/", "_"),
            "summary": summary,
            "description": (
                "Answers 200 once every message is resolved and fsync'd. Validation covers the "
                "whole request first: a 400 or 413 applies nothing. Bodies may be gzip "
                "(`Content-Encoding: gzip`); limits apply after decompression: "
                f"{MAX_MESSAGE_BYTES:,} bytes per message, {MAX_REQUEST_BYTES:,} bytes per "
                "request."
            ),
            "security": [{"writeKey": []}, {}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"success": {"const": True}},
                        "required": ["success"],
                    },
                    "Resolved and durably stored.",
                ),
                "400": {
                    **error,
                    "description": "Invalid JSON or message; names the first problem.",
                },
                "401": {**error, "description": "Missing or unknown write key."},
                "413": {**error, "description": "A size limit was exceeded."},
                "415": {**error, "description": "A Content-Encoding other than gzip."},
                "429": {**error, "description": "Overloaded; retry after `Retry-After` seconds."},
                "503": {**error, "description": "The store is unavailable; retry."},
            },
        }
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, schema: Schema, description: str = "", **extra: Any) -> Schema:
    param = {"name": name, "in": "path", "required": True, "schema": schema, **extra}
    return {**param, "description": description} if description else param


def profile_operation(resource: str) -> Schema:
    params: list[Schema] = [
        _path("space_id", {"type": "string"}),
        _path("collection", {"type": "string", "enum": ["users", "accounts"]}),
        _path(
            "ref",
            {"type": "string", "minLength": 1},
            "`type:value` (URL-encode the value) or a segment_id.",
            example="user_id:u123",
        ),
        _query("verbose", {"type": "boolean"}, "Wrap trait values with their source and time."),
    ]
    if resource in LIMITS:  # the paged resources
        default, maximum = LIMITS[resource]
        params += [
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
                "Items per page.",
            ),
            _query("next", {"type": "string"}, "`cursor.next` of the previous page."),
            _query(
                "include",
                {"type": "string"},
                "Comma-separated trait keys, identifier types or event names.",
            ),
        ]
    if resource == "explain":
        params.append(
            _query(
                "with",
                {"type": "string", "minLength": 1},
                "The other reference: `type:value` or a segment_id.",
            )
        )
    if resource == "traits":
        params.append(
            _query(
                "class",
                {"type": "string", "enum": list(TRAIT_CLASSES)},
                "Audiences or computed traits: none are made here, so the answer has no traits.",
            )
        )
    if resource == "events":
        params += [
            _query("start", {"type": "string", "format": "date-time"}, "Events at or after."),
            _query("end", {"type": "string", "format": "date-time"}, "Events before."),
            _query(
                "sort",
                {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
                "Order by event time.",
            ),
            _query("exclude", {"type": "string"}, "Comma-separated event names to leave out."),
        ]
    error = _json(_PROFILE_ERROR, "")
    return {
        "get": {
            "tags": ["Profile API"],
            "operationId": f"profile_{resource}",
            "summary": _PROFILE_SUMMARIES[resource],
            "security": [{"accessToken": []}],
            "parameters": params,
            "responses": {
                "200": _json(_PROFILE_BODIES[resource], "The resource."),
                "400": {**error, "description": "A parameter or reference is invalid."},
                "401": {**error, "description": "Missing or unknown access token."},
                "404": {**error, "description": "Unknown space, collection or profile."},
            },
        }
    }


def _text(media: str, description: str) -> Schema:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


_HEALTH: Schema = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "index_lag": {
            "type": "object",
            "description": "How far the derived index trails acknowledged messages.",
            "required": ["messages", "seconds"],
            "properties": {
                "messages": {"type": "integer", "minimum": 0},
                "seconds": {"type": "number", "minimum": 0},
            },
        },
    },
}


def browser_settings() -> Schema:
    """`/v1/projects/{write_key}/settings`."""
    return {
        "get": {
            "tags": ["Tracking API"],
            "operationId": "browser_settings",
            "summary": "Source settings for analytics.js, pointing it back at this server.",
            "description": (
                "What analytics.js loads from Segment's CDN before it sends anything: with "
                "`cdnURL` set to this server, the library sends its events here. Remote "
                "metrics are off (`metrics.sampleRate` 0)."
            ),
            "parameters": [_path("write_key", {"type": "string"}, "A source's write key.")],
            "responses": {
                "200": _json({"type": "object"}, "Segment CDN settings."),
                "401": {**_json(_TRACKING_ERROR, ""), "description": "Unknown write key."},
            },
        }
    }


def browser_library() -> Schema:
    """`/analytics.js/v1/{write_key}/analytics.min.js`."""
    script = _text("text/javascript", "The script (gzip when accepted).")
    return {
        "get": {
            "tags": ["Tracking API"],
            "operationId": "browser_library",
            "summary": "analytics.js as the classic snippet loads it, from this server.",
            "description": (
                "Segment's browser library (`@segment/analytics-next`, vendored), with the "
                "write key set in it; it loads its settings and parts from this server. Change "
                "only the snippet's host to use it. HEAD too."
            ),
            "parameters": [_path("write_key", {"type": "string"}, "A source's write key.")],
            "responses": {
                "200": script,
                "401": {**_json(_TRACKING_ERROR, ""), "description": "Unknown write key."},
                "404": {**_json(_TRACKING_ERROR, ""), "description": "A key holding `/`."},
            },
        }
    }


def browser_bundles() -> Schema:
    """`/analytics-next/bundles/{file}`."""
    script = _text("text/javascript", "The script (gzip when accepted).")
    return {
        "get": {
            "tags": ["Tracking API"],
            "operationId": "browser_bundles",
            "summary": "The parts analytics.js loads on demand, and its UMD build `index.js`.",
            "description": "Only the vendored files of the library's `dist/umd`. HEAD too.",
            "parameters": [_path("file", {"type": "string"}, "A file name, e.g. `index.js`.")],
            "responses": {
                "200": script,
                "404": {**_json(_TRACKING_ERROR, ""), "description": "No such file."},
            },
        }
    }


def browser_metrics() -> Schema:
    """`/v1/m`."""
    return {
        "post": {
            "tags": ["Tracking API"],
            "operationId": "browser_metrics",
            "summary": "analytics.js usage counters: accepted (up to 64 KiB) and dropped.",
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": _json({"type": "object"}, "Accepted."),
                "413": {**_json(_TRACKING_ERROR, ""), "description": "Over 64 KiB."},
            },
        }
    }


def healthz() -> Schema:
    """`/healthz`."""
    return {
        "get": {
            "tags": ["Operations"],
            "operationId": "healthz",
            "summary": "200 when the store is reachable.",
            "responses": {
                "200": _json(_HEALTH, "Healthy."),
                "503": _json(_HEALTH, "Store unreachable."),
            },
        }
    }


def _operation(operation_id: str, summary: str, responses: Schema) -> Schema:
    """A GET of the operations routes: no parameters, no authentication."""
    return {
        "get": {
            "tags": ["Operations"],
            "operationId": operation_id,
            "summary": summary,
            "responses": responses,
        }
    }


def metrics() -> Schema:
    """`/metrics`."""
    return _operation(
        "metrics",
        "Counters and latency histograms (Prometheus).",
        {"200": _text("text/plain", "Prometheus text.")},
    )


def openapi() -> Schema:
    """`/openapi.json`."""
    return _operation("openapi", "This document.", {"200": _json({"type": "object"}, "OpenAPI.")})


def docs() -> Schema:
    """`/docs`."""
    return _operation("docs", "This document as a web page.", {"200": _text("text/html", "HTML.")})


def explorer_page() -> Schema:
    """`/explorer`."""
    return _operation(
        "explorer",
        "A page that draws a profile's identity graph (it asks for a token).",
        {"200": _text("text/html", "HTML.")},
    )


def explorer_graph() -> Schema:
    """`/explorer/graph`."""
    error = _json(_PROFILE_ERROR, "")
    return {
        "get": {
            "tags": ["Operations"],
            "operationId": "explorer_graph",
            "summary": "What the explorer draws: a profile, its identifiers, merges, links and "
            "traits.",
            "security": [{"accessToken": []}],
            "parameters": [
                _query(
                    "ref",
                    {"type": "string", "maxLength": 4100},
                    "`type:value` or a segment_id; users first, then accounts.",
                )
            ],
            "responses": {
                "200": _json({"type": "object"}, "The graph."),
                "400": {**error, "description": "No reference, or not a valid one."},
                "401": {**error, "description": "Missing or unknown access token."},
                "404": {**error, "description": "No such profile."},
            },
        }
    }


def _repair(
    operation_id: str, summary: str, description: str, body: Schema, answer: Schema,
    params: list[Schema],
) -> Schema:  # fmt: skip
    error = _json(_PROFILE_ERROR, "")
    return {
        "post": {
            "tags": ["Profile API"],
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "security": [{"accessToken": []}],
            "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": _json(answer, "Done, durably."),
                "400": {
                    **error,
                    "description": "`bad_request` (the rules of the repair) or "
                    "`unsupported_eid_type` (a group_id).",
                },
                "401": {**error, "description": "Missing or unknown access token."},
                "404": {
                    **error,
                    "description": "`not_found` (no such profile) or `eid_not_found` (the "
                    "profile does not hold that identifier).",
                },
                "503": {**error, "description": "The store is unavailable; retry."},
            },
        }
    }


_IDENTIFIER: Schema = {
    "type": "object",
    "required": ["type", "id"],
    "properties": {"type": {"type": "string"}, "id": {"type": "string"}},
}


def delete_external_ids() -> Schema:
    """Segment's Delete Profile Identifier API."""
    return _repair(
        "profile_delete_external_ids",
        "Delete one identifier from a known user's profile (Segment's API).",
        "The profile is addressed by `user_id:`; one identifier per request; a profile keeps "
        "at least one user_id; a group_id cannot be deleted. Afterwards the identifier no "
        "longer finds the profile and a later message carrying it resolves afresh; traits, "
        "events and merge history stay.",
        {
            "type": "object",
            "required": ["delete_external_ids"],
            "properties": {
                "delete_external_ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": _IDENTIFIER,
                }
            },
        },
        {"type": "object", "required": ["segment_id", "deleted"]},
        [
            _path("space_id", {"type": "string"}),
            _path("ref", {"type": "string", "pattern": "^user_id:"}, "`user_id:{id}`."),
        ],
    )


def unmerge() -> Schema:
    return _repair(
        "profile_unmerge",
        "Split a profile by an identifier that is junk for it (a kiosk's cookie, a shared inbox).",
        "The profile's messages are resolved again under the current rules with the identifier "
        "blocked; the profile becomes the parts they form. The part holding its oldest message "
        "keeps its segment_id; each merged-away segment_id resolves to the part holding the "
        "message that created it. The identifier goes on the stored block list.",
        {"type": "object", "required": ["identifier"], "properties": {"identifier": _IDENTIFIER}},
        {"type": "object", "required": ["segment_id", "parts", "blocked"]},
        [
            _path("space_id", {"type": "string"}),
            _path("collection", {"type": "string", "enum": ["users", "accounts"]}),
            _path("ref", {"type": "string", "minLength": 1}, "`type:value` or a segment_id."),
        ],
    )


def explorer_explain() -> Schema:
    """`/explorer/explain`."""
    error = _json(_PROFILE_ERROR, "")
    return {
        "get": {
            "tags": ["Operations"],
            "operationId": "explorer_explain",
            "summary": "What the explorer shows for two picked identifiers (as the Profile "
            "API's explain).",
            "security": [{"accessToken": []}],
            "parameters": [
                _query("a", {"type": "string", "maxLength": 2100}, "`type:value` or segment_id."),
                _query("b", {"type": "string", "maxLength": 2100}, "`type:value` or segment_id."),
            ],
            "responses": {
                "200": _json(_EXPLANATION, "The explanation."),
                "400": {**error, "description": "A reference is missing or not valid."},
                "401": {**error, "description": "Missing or unknown access token."},
                "404": {**error, "description": "No such profile."},
            },
        }
    }


def explorer_script() -> Schema:
    """`/explorer.js`."""
    return _operation(
        "explorer_script",
        "The explorer page's script.",
        {"200": _text("text/javascript", "JavaScript.")},
    )


def explorer_library() -> Schema:
    """`/explorer/cytoscape.min.js`."""
    return _operation(
        "explorer_library",
        "The graph library the explorer draws with (cytoscape.js, MIT licence).",
        {"200": _text("text/javascript", "JavaScript.")},
    )


def root() -> Schema:
    """`/`."""
    return _operation("root", "Redirects to /docs.", {"307": {"description": "To /docs."}})


def document(paths: dict[str, Schema]) -> Schema:
    """The whole document, for `paths` (path template -> path item; see `routes`)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "idstitch",
            "version": __version__,
            "description": (
                "Self-hosted identity resolution. The Tracking API takes what Segment's client "
                "libraries send; the Profile API answers as Segment's does."
            ),
        },
        "tags": [
            {
                "name": "Tracking API",
                "description": "Write key as HTTP Basic user name "
                "(empty password), or `writeKey` in the body.",
            },
            {"name": "Profile API", "description": "Access token as HTTP Basic user name."},
            {"name": "Operations"},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "writeKey": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "A source's write key as user name, empty password.",
                },
                "accessToken": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "An access token as user name, empty password.",
                },
            }
        },
    }

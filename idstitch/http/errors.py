"""Errors at the HTTP edge: which status each error gets, and the two body shapes.

The Tracking API answers `{"success": false, "code", "message"}` (what Segment's client
libraries parse); the Profile API answers Segment's `{"error": {"code", "message"}}`.
Statuses are decided here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from idstitch.errors import (
    AuthenticationError,
    IdentifierNotFound,
    IdstitchError,
    InvalidMessage,
    InvalidReference,
    Overloaded,
    PayloadTooLarge,
    ProfileNotFound,
    RepairRefused,
    StorageError,
)


class UnsupportedEncoding(InvalidMessage):
    """A Content-Encoding other than gzip."""

    def __init__(self, message: str, code: str = "unsupported_encoding", index: int | None = None):
        super().__init__(message, code, index)


class NotFound(IdstitchError):
    """No such route, space or collection."""

    code = "not_found"


class ParameterError(IdstitchError):
    """A query parameter the Profile API cannot use."""

    code = "validation_error"


class MethodNotAllowed(IdstitchError):
    """A route asked with the wrong method; `allow` names the right one (the Allow header)."""

    code = "method_not_allowed"

    def __init__(self, route: str, method: str, allow: str):
        super().__init__(f"{route} takes {allow}, not {method}.")
        self.allow = allow


# Most specific first: PayloadTooLarge and UnsupportedEncoding are InvalidMessages.
_STATUS: tuple[tuple[type[IdstitchError], int], ...] = (
    (PayloadTooLarge, 413),
    (UnsupportedEncoding, 415),
    (InvalidMessage, 400),
    (InvalidReference, 400),
    (ParameterError, 400),
    (AuthenticationError, 401),
    (ProfileNotFound, 404),
    (NotFound, 404),
    (MethodNotAllowed, 405),
    (Overloaded, 429),
    (StorageError, 503),
)

RETRY_AFTER_SECONDS = 1

# The Profile API's codes are Segment's; anything else it raises maps onto one of them.
_PROFILE_CODES = {
    400: "validation_error",
    401: "authentication_error",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def status_of(err: IdstitchError) -> int:
    for kind, status in _STATUS:
        if isinstance(err, kind):
            return status
    return 500


def retry_headers(status: int) -> list[tuple[bytes, bytes]]:
    """`Retry-After` (and Segment's `X-RateLimit-Reset`) on answers a client should retry."""
    if status in (429, 503):
        seconds = str(RETRY_AFTER_SECONDS).encode()
        return [(b"retry-after", seconds), (b"x-ratelimit-reset", seconds)]
    return []


def tracking_body(err: IdstitchError) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "code": err.code, "message": str(err)}
    if isinstance(err, InvalidMessage) and err.index is not None:
        body["index"] = err.index
    return body


def profile_body(err: IdstitchError, status: int) -> dict[str, Any]:
    # A repair's errors carry the code Segment's Delete Profile Identifier API answers.
    if isinstance(err, (IdentifierNotFound, RepairRefused)):
        return {"error": {"code": err.code, "message": str(err)}}
    code = _PROFILE_CODES.get(status, "server_error")
    return {"error": {"code": code, "message": str(err)}}

"""Checks and helpers that every layer uses (config, stores, HTTP, CLI): a leaf module, which
imports nothing of idstitch but `errors`, so that no layer has to import another for them."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from idstitch.errors import ConfigError


def same_secret(expected: str, given: str) -> bool:
    """A constant-time comparison of two secrets, whatever characters `given` holds (on str,
    `compare_digest` refuses non-ASCII text with a TypeError)."""
    return secrets.compare_digest(
        expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass")
    )


def redact_url(url: str) -> str:
    """`url` with any password (in the user part or a `password=` parameter) shown as `***`,
    fit for logs and error messages; a URL without one comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.partition("://")[0] + "://***"
    netloc, query = parts.netloc, parts.query
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = user.split(":", 1)[0] + ":***@" + host
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "password" for k, _ in pairs):
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="=-,*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


MAX_SOURCE_ID_LENGTH = 200


def source_id_problem(source_id: object) -> str | None:
    """Why `source_id` cannot name a source (None when it can): every store keeps it as
    text and every log line shows it, so it is printable, not blank, and short."""
    if not isinstance(source_id, str):
        return f"is {type(source_id).__name__}, not a string"
    if not source_id.strip():
        return "is empty"
    if not source_id.isprintable():
        return "holds control characters"
    if len(source_id) > MAX_SOURCE_ID_LENGTH:
        return f"is {len(source_id):,} characters long; the limit is {MAX_SOURCE_ID_LENGTH}"
    return None


def sqlite_url_problem(url: str) -> str | None:
    """Why `url` names no SQLite store file (None when it does): `sqlite:////abs/path.db`
    (four slashes) or `sqlite:///relative/path.db` (three), and nothing else."""
    rest = url[len("sqlite:///") :]
    if not url.startswith("sqlite:///") or not rest:
        return "names no file"
    if "?" in rest or "#" in rest:
        return "has parameters; a SQLite URL takes no parameters, only a file path"
    if rest in (":memory:", "/:memory:") or rest.startswith("file:"):
        return "is no file path; the store must be a file, which keeps what it stores"
    return None


def sqlite_path(url: str) -> Path:
    """The file a SQLite URL names (raises ConfigError, see `sqlite_url_problem`)."""
    problem = sqlite_url_problem(url)
    if problem is not None:
        raise ConfigError(
            f"storage url {url!r} {problem}; write sqlite:////absolute/path.db or "
            "sqlite:///relative/path.db."
        )
    return Path(url[len("sqlite:///") :])

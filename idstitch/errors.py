"""The one exception tree of idstitch.

    IdstitchError
      +-- ConfigError          bad configuration: startup refuses it
      +-- InvalidMessage       a message that is not a valid Segment message (HTTP 400)
      |     +-- PayloadTooLarge   a size limit was exceeded (HTTP 413)
      +-- AuthenticationError  missing or unknown write key / access token (HTTP 401)
      +-- ProfileNotFound      no profile for a reference (HTTP 404)
      |     +-- IdentifierNotFound  the profile does not hold that identifier (HTTP 404)
      +-- InvalidReference     a profile reference that cannot be parsed (HTTP 400)
      |     +-- InvalidArgument   another argument of a profile read (limit, sort) (HTTP 400)
      |     +-- RepairRefused     a repair its rules refuse (delete, unmerge) (HTTP 400)
      +-- StorageError         the store failed or is unreachable (HTTP 503)
      |     +-- StoreNotFound     a store opened read-only does not exist yet
      +-- Overloaded           the ingest queue is full (HTTP 429)

Refusals by identity rules are not exceptions: they are values (violations) in a resolution.
"""

from __future__ import annotations


class IdstitchError(Exception):
    """Base class of every error idstitch raises on purpose."""

    code = "error"


class ConfigError(IdstitchError):
    code = "config_error"


class InvalidMessage(IdstitchError):
    """A message failed validation. `code` is a short machine name, `index` the batch position."""

    def __init__(self, message: str, code: str = "invalid_message", index: int | None = None):
        super().__init__(message)
        self.code = code
        self.index = index

    def at_index(self, index: int) -> InvalidMessage:
        err = type(self)(f"batch item {index}: {self}", self.code, index)
        return err


class PayloadTooLarge(InvalidMessage):
    def __init__(self, message: str, code: str = "payload_too_large", index: int | None = None):
        super().__init__(message, code, index)


class AuthenticationError(IdstitchError):
    code = "authentication_error"


class ProfileNotFound(IdstitchError):
    code = "not_found"


class InvalidReference(IdstitchError):
    code = "validation_error"


class InvalidArgument(InvalidReference):
    """A read argument out of range, e.g. `Engine.events(ref, limit=0)`. A subclass of
    InvalidReference so that the HTTP layer's mapping (400) covers it."""

    code = "validation_error"


class IdentifierNotFound(ProfileNotFound):
    """The profile exists but does not hold the identifier a repair names."""

    code = "eid_not_found"


class RepairRefused(InvalidReference):
    """A repair (deleting an identifier, an unmerge) that its rules refuse; `code` is the
    Profile API's (`bad_request`, `unsupported_eid_type`)."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


class StorageError(IdstitchError):
    code = "storage_error"


class StoreNotFound(StorageError):
    """A store opened for reads only does not exist yet (nothing was ever written to it)."""

    code = "store_not_found"


class Overloaded(IdstitchError):
    code = "overloaded"

"""idstitch: self-hosted identity resolution for Segment-shaped event streams."""

from __future__ import annotations

from idstitch.config import Settings
from idstitch.core.plan import Violation
from idstitch.core.rules import IdentityRules, Limit, SourceRules
from idstitch.engine import Engine, Resolution, open
from idstitch.errors import (
    ConfigError,
    IdstitchError,
    InvalidArgument,
    InvalidMessage,
    InvalidReference,
    Overloaded,
    ProfileNotFound,
    StorageError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Engine",
    "IdentityRules",
    "IdstitchError",
    "InvalidArgument",
    "InvalidMessage",
    "InvalidReference",
    "Limit",
    "Overloaded",
    "ProfileNotFound",
    "Resolution",
    "Settings",
    "SourceRules",
    "StorageError",
    "Violation",
    "open",
]

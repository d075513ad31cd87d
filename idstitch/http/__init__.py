"""HTTP: the Tracking API, the Profile API and operations routes (`idstitch serve`)."""

from __future__ import annotations

from idstitch.http.app import App, create_app

__all__ = ["App", "create_app"]

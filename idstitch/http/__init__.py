"""HTTP: the Tracking API, the Profile API and operations routes."""

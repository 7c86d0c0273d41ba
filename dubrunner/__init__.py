"""dubrunner: a batch dubbing job runner for the Chamelaion lip-sync API."""

from __future__ import annotations

__version__ = "0.1.0"

"""End-to-end tests reuse the stage tests' session-wide random weight files."""

from tests.services.conftest import weight_files

__all__ = ["weight_files"]

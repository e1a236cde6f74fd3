"""The version of roomd (one place; the package and pyproject read it)."""

__version__ = "0.1.0"

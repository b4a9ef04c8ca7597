"""Dumont Standby: a hot CPU standby for spot GPU workspaces."""

__version__ = "0.1.0"

__all__ = ["__version__"]

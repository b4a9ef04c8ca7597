"""Durable controller state (SQLite, embedded)."""

"""Which store a config opens, and where a PostgreSQL password comes from (never the config's text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dumont.store.postgres
from dumont.config import StoreConfig
from dumont.store import open_store
from dumont.store.sqlite import Store


def test_no_url_is_the_sqlite_file_in_the_state_dir_and_a_sqlite_url_names_another(tmp_path: Path) -> None:
    default = open_store(StoreConfig(), tmp_path / "state" / "dumont.db", environ={})
    named = open_store(StoreConfig(url=f"sqlite://{tmp_path}/elsewhere.db"), tmp_path / "unused.db", environ={})
    assert isinstance(default, Store) and default.path == tmp_path / "state" / "dumont.db"
    assert isinstance(named, Store) and named.path == tmp_path / "elsewhere.db"
    assert not (tmp_path / "unused.db").exists()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    class Recorded:
        def __init__(self, url: str, *, password: str | None = None, io_timeout: float = 0) -> None:
            calls.append({"url": url, "password": password})

    monkeypatch.setattr(dumont.store.postgres, "PostgresStore", Recorded)
    return calls


URL = "postgresql://dumont@db:5432/fleet"


def test_the_password_comes_from_the_environment_first(tmp_path: Path, opened: list[dict[str, Any]]) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    open_store(StoreConfig(url=URL, password_file=secret), tmp_path / "x.db",
               environ={"DUMONT_STORE_PASSWORD": "from-env"})
    open_store(StoreConfig(url=URL, password_file=secret), tmp_path / "x.db", environ={})
    open_store(StoreConfig(url=URL), tmp_path / "x.db", environ={})
    assert opened == [{"url": URL, "password": "from-env"}, {"url": URL, "password": "from-file"},
                      {"url": URL, "password": None}]

"""The real PostgreSQL server the tests of the PostgreSQL-backed log use (``tests.postgres``)."""

from __future__ import annotations

import psycopg
import pytest

from .postgres import PostgresServer


def test_fresh_databases_are_separate_and_dropped(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE steps (id integer PRIMARY KEY, name text)")
        conn.execute("INSERT INTO steps VALUES (1, 'train')")
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW max_connections").fetchone() == ("200",)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)

    with postgres_server.fresh_database() as other:
        assert other != pg_url
        name = other.rsplit("/", 1)[1]
        held = psycopg.connect(other, autocommit=True)  # still open when the database is dropped
        absent = held.execute("SELECT to_regclass('steps')").fetchone()
        assert absent == (None,)
    held.close()

    # Gone: connecting fails, and the server no longer lists it; the first one is untouched.
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(other, connect_timeout=10)
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        names = {row[0] for row in admin.execute("SELECT datname FROM pg_database")}
    assert name not in names
    assert pg_url.rsplit("/", 1)[1] in names
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT name FROM steps").fetchall() == [("train",)]

    # drop_database on its own, and a second drop of the same name is no error.
    url = postgres_server.create_database("dropped_here")
    psycopg.connect(url).close()
    postgres_server.drop_database("dropped_here")
    postgres_server.drop_database("dropped_here")
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(url, connect_timeout=10)

"""The ledger's database: which URLs it accepts (SQLite, PostgreSQL), the SQLite file
created private (0600) or opened read-only for reports, and the SQLAlchemy engine."""

from __future__ import annotations

import contextlib

import sqlalchemy as sa

from tokenomy.errors import TokenomyError

USAGE_TABLE = "tokenomy_usage"


class LedgerError(TokenomyError):
    """The usage database cannot be opened or is not a tokenomy ledger."""


def _engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                                  pool_size=8, max_overflow=32)

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record):
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=32, pool_pre_ping=True)


def _sqlite_path(url: str):
    """The file of a SQLite URL (None for PostgreSQL or in-memory SQLite); an unsupported
    or malformed URL is a LedgerError."""
    from pathlib import Path

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        parsed = None
    backend = parsed.get_backend_name() if parsed is not None else None
    if backend not in ("sqlite", "postgresql"):
        raise LedgerError(f"unsupported database URL {_safe(url)!r}: use sqlite:///PATH "
                          "(SQLite) or postgresql://USER:PASSWORD@HOST/DB")
    if backend != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def check_url(url: str) -> None:
    """A database URL the ledger can use, checked without connecting or creating anything:
    supported, and for SQLite a file that exists or a folder that can hold a new one."""
    import os

    path = _sqlite_path(url)
    if path is None or path.exists():
        return
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise LedgerError(f"cannot create the usage database {_safe(url)}: {folder} is not a "
                          "writable folder; choose another --db path")


def _create_sqlite(path, url: str) -> None:
    """The database file created 0600 (its folder 0700 when new): it holds key hashes."""
    from tokenomy.home import private_dir, private_file

    try:
        private_dir(path.parent)
        if not path.exists():
            private_file(path)
    except OSError as exc:
        why = ("a folder on its path is a file" if isinstance(exc, FileExistsError |
                                                              NotADirectoryError)
               else exc.strerror or exc.__class__.__name__)
        raise LedgerError(f"cannot create the usage database {_safe(url)}: {why}; choose "
                          "another --db path") from None


def _check_sqlite(path, url: str) -> None:
    """A read-only open: the file must exist and hold a tokenomy ledger; nothing written."""
    import sqlite3
    from urllib.parse import quote

    if not path.is_file():
        raise LedgerError(f"usage database {path} does not exist: nothing has been recorded "
                          "there (check --db or the config's database_url)")
    try:
        uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                 "name=?", (USAGE_TABLE,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a SQLite database ({exc}): check --db") from None
    if not found:
        raise LedgerError(f"{path} is not a tokenomy ledger (no {USAGE_TABLE} table): check "
                          "--db or the config's database_url")


def _safe(url: str) -> str:
    """The URL without its password."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]

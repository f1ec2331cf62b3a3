"""Build the SQLAlchemy engine for a ledger URL.

Backend quirks live here and nowhere else. For SQLite that means: WAL so ``openeyesctl`` can
read while the daemon writes, a busy timeout so short write contention waits instead of
failing, foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE``. Python's
sqlite3 module otherwise starts transactions lazily, and two connections that both read and
then try to write deadlock past the busy timeout (SQLITE_BUSY on the lock upgrade).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

#: Execution option that marks a connection whose transaction will write.
WRITE_OPTION = "openeyes_write"


def create_ledger_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s})
    _configure_sqlite(engine, busy_timeout_s)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so "begin" below decides the mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # In WAL mode NORMAL is durable against process crashes (kill -9); only an OS crash
        # can lose the last transactions, and the watcher's rescan re-finds their files.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        writes = connection.get_execution_options().get(WRITE_OPTION, False)
        # Straight to the driver: through exec_driver_sql this one statement cost as much
        # Python as the ledger operation it opens (a quarter of a no-op job's time).
        connection.connection.driver_connection.execute("BEGIN IMMEDIATE" if writes else "BEGIN")

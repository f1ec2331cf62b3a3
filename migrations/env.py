"""Alembic environment. The daemon and ``openeyesctl db upgrade`` run migrations through
``openeyesd.ledger.migrate``, which hands over a live connection in ``config.attributes``;
the plain ``alembic`` command works too, from the repository root, with -x url=..."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from openeyesd.ledger.engine import create_ledger_engine
from openeyesd.ledger.schema import metadata

config = context.config


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit(
            "pass the ledger URL: alembic -x url=sqlite:///state/ledger.sqlite3 upgrade head"
        )
    engine = create_ledger_engine(url)
    with engine.connect() as conn:
        run_with(conn)


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against a database")
run_online()

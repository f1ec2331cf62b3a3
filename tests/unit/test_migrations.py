from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from openeyesd.config import Config
from openeyesd.ledger import create_ledger_engine, migrate
from openeyesd.ledger.schema import metadata


def test_migrated_schema_matches_the_models(config: Config) -> None:
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_status_reports_pending_then_up_to_date(config: Config) -> None:
    engine = create_ledger_engine(config.ledger_url)
    before = migrate.status(engine)
    assert before.current is None and not before.up_to_date
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # idempotent
    assert migrate.status(engine).up_to_date

"""The job ledger: schema, engine set-up, migrations and the named operations."""

from openeyesd.ledger import migrate
from openeyesd.ledger.endings import Ending
from openeyesd.ledger.engine import create_ledger_engine
from openeyesd.ledger.ledger import (
    EnqueueItem,
    EnqueueResult,
    Job,
    LeaseLost,
    Ledger,
    LedgerStats,
    ParkedCounts,
    SessionFrame,
    StageRun,
    lease_owner_process,
    utcnow,
    worker_identity,
)
from openeyesd.ledger.schema import FINAL_STATES, JobState, StageStatus

__all__ = [
    "FINAL_STATES",
    "Ending",
    "EnqueueItem",
    "EnqueueResult",
    "Job",
    "JobState",
    "LeaseLost",
    "Ledger",
    "LedgerStats",
    "ParkedCounts",
    "SessionFrame",
    "StageRun",
    "StageStatus",
    "create_ledger_engine",
    "lease_owner_process",
    "migrate",
    "utcnow",
    "worker_identity",
]

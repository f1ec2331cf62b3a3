"""``openeyesctl``: look at and steer the openeyesd ledger.

Each command builds one plain report dict. ``--json`` prints it as one JSON document on
stdout (datetimes as ISO-8601 UTC); otherwise ``openeyesd.render`` draws it as tables. Errors
are reports too: with ``--json`` a failing command still prints exactly one document, with
an "error" key, so scripts never have to parse stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from openeyesd import doctor, files, render
from openeyesd import models as model_registry
from openeyesd.config import Config, find_config_path, load_config
from openeyesd.errors import ConfigError
from openeyesd.intake import IntakeResult, IntakeStatus, enqueue_tree
from openeyesd.ledger import JobState, Ledger, LedgerStats, create_ledger_engine, migrate
from openeyesd.ledger.ledger import WorkerRecord

PID_FILE_NAME = "openeyesd.pid"
#: A worker whose heartbeat is older than this many heartbeat intervals is shown as stale.
STALE_HEARTBEATS = 3
#: Line width for human output that is not going to a terminal.
PIPED_WIDTH = 200

EPILOG = """\
exit codes:
  0  ok
  1  the operation failed or found problems (doctor errors, job not found, nothing to retry,
     ledger unreachable or not migrated)
  2  usage or configuration error

--json prints exactly one JSON document on stdout, also on failure (it then has an "error" key).
"""


class CommandError(Exception):
    """A command could not do what was asked; ``main`` prints it and exits with ``code``."""

    def __init__(self, message: str, *, kind: str, fix: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.fix = fix
        self.code = code


@dataclass(frozen=True)
class Report:
    data: dict[str, Any]
    render: Callable[[Console, Mapping[str, Any]], None]
    code: int = 0


Handler = Callable[[argparse.Namespace, Config], Report]


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = load_config(find_config_path(args.config))
    except ConfigError as exc:
        if args.handler is cmd_doctor:
            return emit(doctor_config_failure(exc), args.json)
        return emit_error(CommandError(str(exc), kind="config", code=2), args.json)
    try:
        return emit(args.handler(args, config), args.json)
    except CommandError as exc:
        return emit_error(exc, args.json)
    except SQLAlchemyError as exc:
        error = CommandError(f"ledger error: {exc}", kind="ledger",
                             fix="run openeyesctl doctor to check the ledger")
        return emit_error(error, args.json)


def emit(report: Report, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.data, default=json_default, indent=2))
    else:
        report.render(output_console(), report.data)
    return report.code


def output_console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into grep, less or a log: rich would fold at 80 columns and split paths.
        console.width = PIPED_WIDTH
    return console


def emit_error(error: CommandError, as_json: bool) -> int:
    if as_json:
        document = {"error": {"kind": error.kind, "message": str(error), "fix": error.fix}}
        print(json.dumps(document, indent=2))
    else:
        # soft_wrap: never break a message (or a path in it) across lines; people grep them.
        console = Console(stderr=True, soft_wrap=True)
        console.print(f"openeyesctl: {error}", style="bold red", markup=False, highlight=False)
        if error.fix:
            console.print(f"fix: {error.fix}", markup=False, highlight=False)
    return error.code


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openeyesctl", description="Inspect and steer the openeyesd photo queue.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_options(parser, default_json=False, default_config=None)
    # Subcommands accept the same options after their name. SUPPRESS keeps an option not given
    # there from overwriting the value given before the name. A separate parser object is
    # needed: parents share action objects, so defaults set on one would leak into the other.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, default_json=argparse.SUPPRESS,
                        default_config=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_status_and_jobs(commands, common)
    _add_operator_actions(commands, common)
    _add_admin(commands, common)
    _add_models(commands, common)
    return parser


def _add_global_options(
    parser: argparse.ArgumentParser, *, default_json: Any, default_config: Any
) -> None:
    parser.add_argument("--json", action="store_true", default=default_json,
                        help="print one JSON document instead of tables")
    parser.add_argument("--config", metavar="PATH", default=default_config,
                        help="config file (default: $OPENEYES_CONFIG, ./config.toml, "
                        "/etc/openeyes/config.toml)")


def _subparser(
    commands: Any, name: str, common: argparse.ArgumentParser, help_text: str
) -> argparse.ArgumentParser:
    return commands.add_parser(name, parents=[common], help=help_text, description=help_text,
                               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_status_and_jobs(commands: Any, common: argparse.ArgumentParser) -> None:
    status = _subparser(commands, "status", common, "queue, workers, ledger and folder health")
    status.set_defaults(handler=cmd_status)
    jobs = _subparser(commands, "jobs", common, "list jobs, or show one with 'jobs show ID'")
    jobs.add_argument("--state", action="extend", nargs="+", metavar="STATE",
                      choices=[state.value for state in JobState],
                      help="only jobs in these states (repeatable)")
    jobs.add_argument("--limit", type=_positive_int, default=50, help="at most N jobs (50)")
    jobs.set_defaults(handler=cmd_jobs)
    jobs_commands = jobs.add_subparsers(dest="jobs_command", metavar="show")
    show = _subparser(jobs_commands, "show", common, "everything known about one job")
    show.add_argument("id", type=int, help="job id")
    show.set_defaults(handler=cmd_job_show)


def _add_operator_actions(commands: Any, common: argparse.ArgumentParser) -> None:
    retry = _subparser(commands, "retry", common,
                       "requeue failed or cancelled jobs with fresh attempts")
    retry.add_argument("ids", type=int, nargs="*", metavar="ID", help="job ids")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.set_defaults(handler=cmd_retry)
    cancel = _subparser(commands, "cancel", common,
                        "cancel a job that has not finished (a running one stops soon)")
    cancel.add_argument("id", type=int, help="job id")
    cancel.set_defaults(handler=cmd_cancel)
    enqueue = _subparser(commands, "enqueue", common, "queue a photo, or every photo in a folder")
    enqueue.add_argument("path", type=Path, help="file or folder")
    enqueue.add_argument("--force", action="store_true",
                         help="process again even if this photo was already processed")
    enqueue.set_defaults(handler=cmd_enqueue)
    reload = _subparser(commands, "reload", common,
                        "ask the running daemon to reload its configuration (SIGHUP)")
    reload.set_defaults(handler=cmd_reload)


def _add_admin(commands: Any, common: argparse.ArgumentParser) -> None:
    check = _subparser(commands, "doctor", common, "check the installation and say how to fix it")
    check.set_defaults(handler=cmd_doctor)
    db = _subparser(commands, "db", common, "ledger schema migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = _subparser(db_commands, "upgrade", common, "apply pending migrations")
    upgrade.set_defaults(handler=cmd_db_upgrade)
    state = _subparser(db_commands, "status", common, "current schema revision vs head")
    state.set_defaults(handler=cmd_db_status)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- ledger access -----------------------------------------------------------------------------


@contextmanager
def ledger_engine(config: Config, *, create: bool = False) -> Iterator[Engine]:
    """An engine for the configured ledger. Read commands pass ``create=False`` so that a
    typo in --config does not silently create an empty SQLite file somewhere."""
    database = doctor.sqlite_database_path(config.ledger_url)
    if not create and database is not None and not database.exists():
        raise CommandError(f"the ledger {database} does not exist yet", kind="ledger_missing",
                           fix="start openeyesd, or run: openeyesctl db upgrade")
    engine = create_ledger_engine(config.ledger_url, busy_timeout_s=config.ledger.busy_timeout_s)
    try:
        yield engine
    finally:
        engine.dispose()


def require_head(state: migrate.MigrationStatus) -> None:
    if not state.up_to_date:
        raise CommandError(
            f"the ledger schema is at revision {state.current or '(empty)'}, "
            f"this openeyesctl needs {state.head}",
            kind="ledger_outdated", fix="openeyesctl db upgrade (the daemon upgrades at start)")


@contextmanager
def open_ledger(config: Config) -> Iterator[Ledger]:
    with ledger_engine(config) as engine:
        require_head(migrate.status(engine))
        yield Ledger(engine, pipeline_version=config.pipeline.version)


def utcnow() -> datetime:
    return datetime.now(UTC)


def age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 3)


# --- status ------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, config: Config) -> Report:
    ledger, stats = ledger_health(config)
    data: dict[str, Any] = {"ledger": ledger}
    if stats is None:
        data["counts"] = None
    else:
        data |= status_numbers(stats, config)
    ctx = doctor.DoctorContext(config)
    try:
        checks = doctor.run_checks(ctx, doctor.FOLDER_CHECKS)
    finally:
        ctx.close()
    data["folders"] = [asdict(check) for check in checks]
    # A stopped daemon is a normal state to report, not a failure; an unusable ledger is.
    return Report(data, render.render_status, code=0 if ledger["ok"] else 1)


def ledger_health(config: Config) -> tuple[dict[str, Any], LedgerStats | None]:
    health: dict[str, Any] = {
        "url": doctor.display_url(config.ledger_url), "reachable": False, "current": None,
        "head": None, "up_to_date": False, "ok": False, "problem": None, "fix": "",
    }
    try:
        with ledger_engine(config) as engine:
            state = migrate.status(engine)
            health |= {"reachable": True, "current": state.current, "head": state.head,
                       "up_to_date": state.up_to_date}
            require_head(state)
            stats = Ledger(engine).stats()
    except CommandError as exc:
        health |= {"problem": str(exc), "fix": exc.fix}
        return health, None
    except SQLAlchemyError as exc:
        health |= {"problem": f"unreachable: {exc}",
                   "fix": "check ledger.url and that the database is up"}
        return health, None
    health["ok"] = True
    return health, stats


def status_numbers(stats: LedgerStats, config: Config) -> dict[str, Any]:
    now = stats.now
    stale_after_s = STALE_HEARTBEATS * config.worker.heartbeat_s
    workers = [worker_entry(worker, now, stale_after_s) for worker in stats.workers]
    running = [
        {"id": job.id, "relative_path": job.relative_path, "stage": job.stage,
         "started_at": job.started_at, "elapsed_s": age_s(now, job.started_at),
         "worker": job.lease_owner}
        for job in stats.running
    ]
    return {
        "now": now,
        "counts": {state.value: stats.counts.get(state, 0) for state in JobState},
        "queue_depth": stats.queue_depth,
        "finished_last_hour": stats.finished_last_hour,
        "finished_last_day": stats.finished_last_day,
        # Jobs finished in the last hour, per hour: the rate the queue is draining at now.
        "throughput_per_hour": float(stats.finished_last_hour),
        "oldest_queued_at": stats.oldest_queued_at,
        "oldest_queued_age_s": age_s(now, stats.oldest_queued_at),
        # GPU profile: queued jobs waiting for the model of their next stage, per stage.
        "parked": stats.parked,
        "running": running,
        "workers": workers,
        "stale_after_s": stale_after_s,
        "daemon_running": any(not worker["stale"] for worker in workers),
        "backends_in_use": backends_in_use(workers),
    }


def worker_entry(worker: WorkerRecord, now: datetime, stale_after_s: float) -> dict[str, Any]:
    heartbeat_age = (now - worker.heartbeat_at).total_seconds()
    paused = worker.state == "paused" or (
        worker.paused_until is not None and worker.paused_until > now
    )
    backends, backends_error = parse_backends(worker.backends)
    return asdict(worker) | {
        "heartbeat_age_s": round(heartbeat_age, 3),
        "stale": heartbeat_age > stale_after_s,
        "paused": paused,
        "backends": backends,
        "backends_error": backends_error,
    }


def parse_backends(text: str | None) -> tuple[Any, str | None]:
    """The worker's ``backends`` column: JSON written by the daemon, shown as-is if it is not."""
    if not text:
        return None, None
    try:
        return json.loads(text), None
    except ValueError as exc:
        return text, f"not valid JSON: {exc}"


def backends_in_use(workers: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Role -> distinct backend names across live workers ({"eyes": ["reference"], ...})."""
    in_use: dict[str, set[str]] = {}
    for worker in workers:
        if worker["stale"]:
            continue
        backends = worker["backends"]
        if isinstance(backends, dict):
            items = [(str(role), _backend_name(name)) for role, name in backends.items()]
        elif isinstance(backends, list):
            items = [("backends", _backend_name(name)) for name in backends]
        elif backends is not None:
            items = [("backends", str(backends))]
        else:
            items = []
        for role, name in items:
            in_use.setdefault(role, set()).add(name)
    return {role: sorted(names) for role, names in sorted(in_use.items())}


def _backend_name(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# --- jobs --------------------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace, config: Config) -> Report:
    states = [JobState(state) for state in dict.fromkeys(args.state or [])]
    with open_ledger(config) as ledger:
        jobs = ledger.list_jobs(states=states or None, limit=args.limit)
    now = utcnow()
    entries = [asdict(job) | {"updated_age_s": age_s(now, job.updated_at)} for job in jobs]
    data = {"states": [state.value for state in states], "limit": args.limit,
            "count": len(entries), "jobs": entries}
    return Report(data, render.render_jobs)


def cmd_job_show(args: argparse.Namespace, config: Config) -> Report:
    with open_ledger(config) as ledger:
        job = ledger.get_job(args.id)
        if job is None:
            raise CommandError(f"job {args.id} not found", kind="not_found",
                               fix="openeyesctl jobs lists the job ids")
        source_paths = ledger.source_paths(job.id)
        runs = ledger.stage_runs(job.id)
    sidecar = sidecar_path(job.output_path)
    faces, sidecar_error = read_sidecar_faces(sidecar)
    data = {
        "job": asdict(job),
        "source_paths": source_paths,
        "stage_runs": [asdict(run) for run in runs],
        "output_path": job.output_path,
        "sidecar_path": sidecar,
        "sidecar_exists": sidecar is not None and sidecar.exists(),
        "faces": faces,
        "sidecar_error": sidecar_error,
    }
    return Report(data, render.render_job)


def sidecar_path(output_path: str | None) -> Path | None:
    return None if output_path is None else files.sidecar_path(Path(output_path))


def read_sidecar_faces(path: Path | None) -> tuple[list[dict[str, Any]] | None, str | None]:
    """One flat dict of plain values per face in the sidecar; (None, reason) when unreadable."""
    if path is None or not path.exists():
        return None, None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    faces = document.get("faces") if isinstance(document, dict) else None
    if not isinstance(faces, list):
        return None, f"{path} has no 'faces' list"
    return [face_row(face) if isinstance(face, dict) else {"face": face} for face in faces], None


def face_row(face: Mapping[str, Any]) -> dict[str, Any]:
    """The few facts an operator reads per face; the sidecar keeps every measurement."""
    eyes = face.get("eyes") if isinstance(face.get("eyes"), Mapping) else {}
    donor = face.get("donor") if isinstance(face.get("donor"), Mapping) else None
    check = face.get("check") if isinstance(face.get("check"), Mapping) else None
    row: dict[str, Any] = {"index": face.get("index"), "outcome": face.get("outcome")}
    for side in ("left", "right"):
        eye = eyes.get(side)
        row[f"{side} eye"] = eye.get("state") if isinstance(eye, Mapping) else eye
    if donor is not None:
        row["donor"] = _donor_words(donor)
    second = face.get("second_donor")
    if isinstance(second, Mapping) and donor is not None:
        # One donor per eye: say which eye came from where.
        row["donor"] = f"{_donor_words(donor)} + {_donor_words(second)}"
    fallback = face.get("fallback")
    if isinstance(fallback, Mapping):
        # The check refused an eye from the first donor; say so, and what was used instead.
        first = fallback.get("first_check")
        reason = first.get("reason") if isinstance(first, Mapping) else first
        row["donor"] = " + ".join(str(d) for d in fallback.get("donors") or [])
        row["first try"] = f"refused: {reason}"
    if check is not None:
        row["check"] = check.get("reason")
    if face.get("preview"):
        row["preview"] = face["preview"]
    return row


def _donor_words(donor: Mapping[str, Any]) -> str:
    if not donor.get("key"):
        return f"none: {donor.get('reason')}"
    sides = donor.get("sides") or []
    eyes = f" ({'+'.join(sides)})" if len(sides) == 1 else ""
    return f"{donor.get('kind')} {donor.get('key')}{eyes}"


# --- operator actions --------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace, config: Config) -> Report:
    if args.failed == bool(args.ids):
        raise CommandError("give job ids or --failed (not both)", kind="usage", code=2,
                           fix="openeyesctl retry 12 15   or   openeyesctl retry --failed")
    with open_ledger(config) as ledger:
        retried = ledger.retry(None if args.failed else args.ids)
        refused = [
            {"id": job_id, "reason": why_not(ledger, job_id, "retried", "failed or cancelled")}
            for job_id in dict.fromkeys(args.ids) if job_id not in retried
        ]
    if retried:
        message = f"requeued {len(retried)} job(s): {', '.join(map(str, sorted(retried)))}"
    else:
        message = "nothing to retry" + ("" if refused else ": no failed jobs")
    data = {"retried": sorted(retried), "refused": refused, "message": message,
            "details": [item["reason"] for item in refused]}
    return Report(data, render.render_message, code=0 if retried and not refused else 1)


def why_not(ledger: Ledger, job_id: int, verb: str, allowed: str) -> str:
    job = ledger.get_job(job_id)
    if job is None:
        return f"job {job_id} not found"
    return f"job {job_id} is {job.state.value}; only {allowed} jobs can be {verb}"


def cmd_cancel(args: argparse.Namespace, config: Config) -> Report:
    with open_ledger(config) as ledger:
        before = ledger.get_job(args.id)
        if not ledger.cancel(args.id):
            reason = why_not(ledger, args.id, "cancelled", "unfinished")
            kind = "not_found" if before is None else "already_finished"
            raise CommandError(reason, kind=kind)
    message = f"cancelled job {args.id}"
    if before is not None and before.state is JobState.RUNNING:
        # The worker notices at its next lease heartbeat and abandons the job.
        message += " (it was running; its worker stops it at the next heartbeat)"
    return Report({"cancelled": args.id, "message": message}, render.render_message)


def cmd_enqueue(args: argparse.Namespace, config: Config) -> Report:
    path = Path(os.path.abspath(args.path))
    if not path.exists() and not path.is_symlink():
        raise CommandError(f"{path} does not exist", kind="not_found")
    watch_root, watched = watch_root_for(config, path)
    with open_ledger(config) as ledger:
        results = enqueue_tree(ledger, path, watch_root=watch_root,
                               pipeline_version=config.pipeline.version, force=args.force)
    summary = {status.value: 0 for status in IntakeStatus}
    for result in results:
        summary[result.status.value] += 1
    taken = summary["enqueued"] + summary["duplicate"] + summary["known"]
    message = (f"{path}: {summary['enqueued']} enqueued, {summary['duplicate']} duplicate, "
               f"{summary['known']} already recorded, {summary['ignored']} ignored, "
               f"{summary['retry_later']} not readable now")
    if summary["known"] and not args.force:
        message += " (--force processes already recorded photos again)"
    data = {"path": path, "watch_root": watch_root, "inside_watched_folder": watched,
            "force": args.force, "summary": summary, "message": message,
            "results": [intake_entry(result) for result in results]}
    # Busy or unreadable files, or nothing usable at all, are problems the operator must see.
    failed = summary["retry_later"] > 0 or taken == 0
    return Report(data, render.render_enqueue, code=1 if failed else 0)


def watch_root_for(config: Config, path: Path) -> tuple[Path, bool]:
    """The deepest watched folder holding ``path``, so the job keeps its relative path (and
    the output its sub-folder); ``path``'s own parent folder when it is outside them all."""
    roots = [Path(os.path.abspath(folder.path)) for folder in config.watch]
    holding = [root for root in roots if path.is_relative_to(root)]  # root itself too
    if holding:
        return max(holding, key=lambda root: len(root.parts)), True
    return path.parent, False


def intake_entry(result: IntakeResult) -> dict[str, Any]:
    return {"path": result.path, "status": result.status.value, "job_id": result.job_id,
            "reason": result.reason, "requeued": result.requeued}


def cmd_reload(args: argparse.Namespace, config: Config) -> Report:
    pid_file = config.state.dir / PID_FILE_NAME
    pid = daemon_pid(pid_file)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise stale_pid(pid_file, pid) from None
    except PermissionError:
        raise CommandError(f"not allowed to signal openeyesd (pid {pid})", kind="permission",
                           fix="run as the daemon's user, or with sudo") from None
    message = f"sent SIGHUP to openeyesd (pid {pid}); it reloads its configuration"
    return Report({"pid": pid, "signal": "SIGHUP", "message": message}, render.render_message)


def daemon_pid(pid_file: Path) -> int:
    """The pid the daemon wrote, checked to still be an openeyesd process."""
    try:
        text = pid_file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise CommandError(
            f"no pid file at {pid_file}: openeyesd is not running (or uses another state.dir)",
            kind="not_running",
            fix="systemctl start openeyesd, or pass the daemon's config with --config",
        ) from None
    if not text.isdigit() or int(text) < 1:
        raise CommandError(f"{pid_file} does not hold a process id (found {text[:40]!r})",
                           kind="bad_pid_file", fix=f"remove {pid_file} and restart openeyesd")
    pid = int(text)
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        # A pid left behind by a crash may since belong to an unrelated process: never signal it.
        if b"openeyesd" not in cmdline.read_bytes():
            raise stale_pid(pid_file, pid)
    except FileNotFoundError:
        raise stale_pid(pid_file, pid) from None
    except PermissionError:
        pass  # hardened /proc (hidepid): trust the pid file; os.kill still checks ownership
    return pid


def stale_pid(pid_file: Path, pid: int) -> CommandError:
    return CommandError(f"{pid_file} names pid {pid}, which is not a running openeyesd",
                        kind="not_running",
                        fix=f"the daemon is stopped: remove {pid_file} and start openeyesd")


# --- doctor and db -----------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace, config: Config) -> Report:
    ctx = doctor.DoctorContext(config)
    try:
        return doctor_report(doctor.run_checks(ctx))
    finally:
        ctx.close()


def doctor_report(checks: Sequence[doctor.Check]) -> Report:
    worst = doctor.worst(checks)
    data = {"ok": worst is not doctor.Status.ERROR, "status": worst,
            "checks": [asdict(check) for check in checks]}
    return Report(data, render.render_doctor, code=1 if worst is doctor.Status.ERROR else 0)


def doctor_config_failure(error: ConfigError) -> Report:
    """An invalid config is still a doctor finding, shown like the others, but exits 2."""
    check = doctor.Check("config", doctor.Status.ERROR, str(error),
                         "correct the key named above; the example config.toml documents "
                         "every key")
    report = doctor_report([check])
    return Report(report.data, report.render, code=2)


def cmd_db_upgrade(args: argparse.Namespace, config: Config) -> Report:
    with ledger_engine(config, create=True) as engine:
        before = migrate.status(engine).current
        migrate.upgrade(engine)
        after = migrate.status(engine)
    if before == after.current:
        message = f"ledger already at head ({after.head})"
    else:
        message = f"ledger upgraded from {before or '(empty)'} to {after.current}"
    data = {"url": doctor.display_url(config.ledger_url), "before": before,
            "current": after.current, "head": after.head, "message": message}
    return Report(data, render.render_message)


def cmd_db_status(args: argparse.Namespace, config: Config) -> Report:
    with ledger_engine(config) as engine:
        state = migrate.status(engine)
    if state.up_to_date:
        message = f"ledger at head ({state.head}), up to date"
    else:
        message = (f"ledger at {state.current or '(empty)'}, head is {state.head}: "
                   "run openeyesctl db upgrade")
    data = {"url": doctor.display_url(config.ledger_url), "current": state.current,
            "head": state.head, "up_to_date": state.up_to_date, "message": message}
    return Report(data, render.render_message, code=0 if state.up_to_date else 1)


# --- models (GPU profile weights) --------------------------------------------------------------


def _add_models(commands: Any, common: argparse.ArgumentParser) -> None:
    group = _subparser(commands, "models", common,
                       "GPU model weights: list, verify and fetch them into models.dir")
    sub = group.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    listing = _subparser(sub, "list", common,
                         "every known model: licence, size, VRAM, installed and verified")
    listing.set_defaults(handler=cmd_models_list)
    check = _subparser(sub, "verify", common,
                       "re-hash installed files (default: the models the config uses and any "
                       "with files present); exit 1 if one fails")
    check.add_argument("name", nargs="?", metavar="NAME", help="one model")
    check.set_defaults(handler=cmd_models_verify)
    get = _subparser(sub, "fetch", common,
                     "download a model's files (resuming partial downloads) and verify them")
    get.add_argument("name", metavar="NAME", help="model name from 'models list'")
    get.add_argument("--trust-on-first-use", action="store_true",
                     help="accept files with no pinned SHA-256 and record the hash of what "
                     "was downloaded in <models.dir>/.pins.json")
    get.set_defaults(handler=cmd_models_fetch)


def _find_model(name: str) -> model_registry.ModelSpec:
    try:
        return model_registry.find(name)
    except model_registry.ModelError as exc:
        raise CommandError(str(exc), kind=exc.kind, fix=exc.fix, code=2) from None


def model_entry(config: Config, spec: model_registry.ModelSpec, *,
                use_cache: bool = True) -> dict[str, Any]:
    problems = model_registry.verify(config, spec, use_cache=use_cache)
    size, exact = model_registry.total_size(spec)
    in_use = [key for key, name in model_registry.models_in_use(config) if name == spec.name]
    return {
        "name": spec.name, "role": spec.role, "licence": spec.licence,
        "commercial_use_allowed": spec.commercial_use_allowed,
        "size_bytes": size if exact else None, "download_gb": spec.download_gb,
        "vram_gb": spec.vram_gb, "files": len(spec.files),
        "installed_files": model_registry.installed_files(config, spec),
        "status": model_registry.status_of(config, spec, problems), "ok": not problems,
        "in_use": in_use, "directory": model_registry.model_dir(config, spec),
        "source": spec.source, "notes": spec.notes,
        "file_list": [asdict(file) for file in spec.files],
        "problems": [asdict(problem) for problem in problems],
    }


def cmd_models_list(args: argparse.Namespace, config: Config) -> Report:
    entries = [model_entry(config, spec) for spec in model_registry.REGISTRY]
    data = {"models_dir": config.models.dir, "profile": config.pipeline.profile,
            "allow_non_commercial": config.models.allow_non_commercial, "models": entries}
    return Report(data, render_models)


def cmd_models_verify(args: argparse.Namespace, config: Config) -> Report:
    if args.name:
        specs = [_find_model(args.name)]
    else:
        used = {name for _, name in model_registry.models_in_use(config)}
        specs = [spec for spec in model_registry.REGISTRY if spec.name in used
                 or model_registry.installed_files(config, spec) > 0]
    # The cache is for quick looks; an explicit verify reads every byte again.
    entries = [model_entry(config, spec, use_cache=False) for spec in specs]
    failed = [entry["name"] for entry in entries if not entry["ok"]]
    if not entries:
        message = "nothing to verify"
    elif failed:
        message = f"{len(failed)} of {len(entries)} model(s) failed: {', '.join(failed)}"
    else:
        message = f"verified {len(entries)} model(s): {', '.join(e['name'] for e in entries)}"
    details = [f"{p['message']} (fix: {p['fix']})" for e in entries for p in e["problems"]]
    data = {"models_dir": config.models.dir, "models": entries, "message": message,
            "details": details}
    return Report(data, render.render_message, code=1 if failed else 0)


def cmd_models_fetch(args: argparse.Namespace, config: Config) -> Report:
    spec = _find_model(args.name)
    reporter = FetchProgressReporter(spec, fancy=not args.json and Console().is_terminal)
    try:
        with reporter:
            result = model_registry.fetch(config, spec, progress=reporter,
                                          trust_on_first_use=args.trust_on_first_use)
    except model_registry.ModelError as exc:
        raise CommandError(str(exc), kind=exc.kind, fix=exc.fix) from None
    message = (f"{spec.name}: {len(result.downloaded)} file(s) downloaded, "
               f"{len(result.already_present)} already present, all verified, "
               f"in {result.directory}")
    details = []
    if result.pinned_on_first_use:
        pins = config.models.dir / model_registry.PINS_FILE
        details.append(
            f"trust on first use: recorded the SHA-256 of {len(result.pinned_on_first_use)} "
            f"file(s) with no published hash in {pins}; later copies are checked against "
            "it, but this download itself could not be checked")
    data = asdict(result) | {"message": message, "details": details,
                             "pins_file": config.models.dir / model_registry.PINS_FILE}
    return Report(data, render.render_message)


class FetchProgressReporter:
    """The progress callback of ``models.fetch``: rich bars on a terminal, otherwise one line
    per finished file on stderr (stdout stays one JSON document with --json)."""

    def __init__(self, spec: model_registry.ModelSpec, *, fancy: bool) -> None:
        self.spec = spec
        self.fancy = fancy
        self.console = Console(stderr=True, soft_wrap=True)
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}
        self.current: tuple[str, int] | None = None

    def __enter__(self) -> FetchProgressReporter:
        if self.fancy:
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=self.console)
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()
        else:
            self._line()

    def __call__(self, file: model_registry.ModelFile, done: int, total: int | None) -> None:
        if self.bars is not None:
            task = self.tasks.get(file.relative_path)
            if task is None:
                task = self.bars.add_task(file.relative_path, total=total)
                self.tasks[file.relative_path] = task
            self.bars.update(task, completed=done, total=total)
            return
        if self.current is not None and self.current[0] != file.relative_path:
            self._line()
        self.current = (file.relative_path, done)

    def _line(self) -> None:
        if self.current is not None:
            path, done = self.current
            self.console.print(f"{self.spec.name}/{path}: {done} bytes", markup=False,
                               highlight=False)
            self.current = None


def render_models(console: Console, report: Mapping[str, Any]) -> None:
    table = Table(title=f"Models in {report['models_dir']}", title_justify="left")
    for name in ("name", "role", "licence", "commercial", "size", "VRAM", "status", "in use"):
        table.add_column(name, overflow="fold")
    for entry in report["models"]:
        size = (f"{entry['size_bytes'] / 1e9:.2f} GB" if entry["size_bytes"] is not None
                else f"~{entry['download_gb']:.1f} GB")
        table.add_row(entry["name"], entry["role"], entry["licence"],
                      "yes" if entry["commercial_use_allowed"] else "NO",
                      size, f"~{entry['vram_gb']:g} GB",
                      f"{entry['status']} ({entry['installed_files']}/{entry['files']} files)",
                      ", ".join(entry["in_use"]) or "-")
    console.print(table)
    if not report["allow_non_commercial"]:
        console.print("Models marked NO are refused (models.allow_non_commercial = false).")

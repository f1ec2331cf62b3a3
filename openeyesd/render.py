"""Human output of ``openeyesctl``: rich tables drawn from the same dicts ``--json`` prints.

Every function takes a ``Console`` and the command's report dict, so what a person reads and
what a script parses can never disagree. Colours are rich's decision: on when stdout is a
terminal, off when piped or when NO_COLOR is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STATE_STYLES = {
    "queued": "cyan",
    "running": "bold blue",
    "waiting": "yellow",
    "done": "green",
    "skipped": "dim",
    "failed": "bold red",
    "cancelled": "magenta",
}
CHECK_STYLES = {"ok": "green", "warn": "yellow", "error": "bold red"}
CHECK_MARKS = {"ok": "ok", "warn": "WARN", "error": "ERROR"}


def format_age(seconds: float | None) -> str:
    """Compact durations for tables: 42s, 3m 12s, 2h 05m, 4d 03h."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def format_time(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


# --- status ------------------------------------------------------------------------------------


def render_status(console: Console, report: Mapping[str, Any]) -> None:
    _render_ledger_line(console, report["ledger"])
    if report.get("counts") is not None:
        _render_counts(console, report)
        _render_running(console, report["running"])
        _render_workers(console, report)
    render_checks(console, report["folders"], title="Folders and disk")


def _render_ledger_line(console: Console, ledger: Mapping[str, Any]) -> None:
    if ledger["ok"]:
        console.print(f"Ledger: {ledger['url']} (schema {ledger['current']}, up to date)",
                      soft_wrap=True)
    else:
        console.print(Text(f"Ledger: {ledger['url']}: {ledger['problem']}", style="bold red"),
                      soft_wrap=True)
        console.print(f"  fix: {ledger['fix']}", soft_wrap=True)


def _render_counts(console: Console, report: Mapping[str, Any]) -> None:
    table = Table(title="Jobs", title_justify="left")
    for state in report["counts"]:
        table.add_column(state, justify="right", style=STATE_STYLES.get(state))
    table.add_row(*(str(n) for n in report["counts"].values()))
    console.print(table)
    oldest = report["oldest_queued_age_s"]
    console.print(
        f"Finished: {report['finished_last_hour']} in the last hour, "
        f"{report['finished_last_day']} in the last day; "
        f"throughput {report['throughput_per_hour']:.0f} jobs/hour; "
        f"oldest queued: {format_age(oldest) if oldest is not None else 'none'}"
    )
    parked = report.get("parked")
    if parked:
        waiting = ", ".join(f"{stage} {n}" for stage, n in sorted(parked.items()))
        console.print(f"Parked until their stage's model is loaded (queued, by stage): {waiting}")


def _render_running(console: Console, running: Sequence[Mapping[str, Any]]) -> None:
    if not running:
        console.print("Running: none")
        return
    table = Table(title="Running", title_justify="left")
    for name in ("id", "path", "stage", "elapsed", "worker"):
        table.add_column(name, overflow="fold")
    for job in running:
        table.add_row(str(job["id"]), job["relative_path"], _cell(job["stage"]),
                      format_age(job["elapsed_s"]), _cell(job["worker"]))
    console.print(table)


def _render_workers(console: Console, report: Mapping[str, Any]) -> None:
    workers = report["workers"]
    if not workers:
        console.print(Text("Daemon: not running (no workers registered)", style="yellow"))
        return
    if not report["daemon_running"]:
        console.print(Text(f"Daemon: not running? every worker heartbeat is older than "
                           f"{format_age(report['stale_after_s'])}", style="yellow"))
    table = Table(title="Workers", title_justify="left")
    for name in ("worker", "state", "heartbeat", "job", "paused until", "reason"):
        table.add_column(name, overflow="fold")
    for worker in workers:
        beat = Text(format_age(worker["heartbeat_age_s"]) + " ago")
        if worker["stale"]:
            beat.append(" STALE", style="bold red")
        table.add_row(worker["id"], worker["state"], beat, _cell(worker["current_job_id"]),
                      format_time(worker["paused_until"]) if worker["paused"] else "-",
                      _cell(worker["pause_reason"]) if worker["paused"] else "-")
    console.print(table)
    in_use = report["backends_in_use"]
    listed = ", ".join(f"{role}: {', '.join(names)}" for role, names in in_use.items())
    console.print(f"Backends: {listed or 'none reported'}")


# --- jobs --------------------------------------------------------------------------------------


def render_jobs(console: Console, report: Mapping[str, Any]) -> None:
    if not report["jobs"]:
        console.print("No jobs.")
        return
    table = Table()
    for name in ("id", "state", "outcome", "tries", "stage", "path", "updated", "error"):
        table.add_column(name, overflow="fold")
    for job in report["jobs"]:
        table.add_row(str(job["id"]), _state(job["state"]), _cell(job["outcome"]),
                      str(job["attempts"]), _stage_cell(job), job["relative_path"],
                      format_age(job["updated_age_s"]) + " ago", _cell(job["error_kind"]))
    console.print(table)


def _stage_cell(job: Mapping[str, Any]) -> str:
    """The stage it is in, or for a job parked until its model is loaded, the one it waits for."""
    if job["state"] == "queued" and job.get("next_stage"):
        return f"parked before {job['next_stage']}"
    return _cell(job["current_stage"])


def render_job(console: Console, report: Mapping[str, Any]) -> None:
    job = report["job"]
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    for key, value in job.items():
        shown = _state(value) if key == "state" else _cell(format_time(value)
                                                          if isinstance(value, datetime)
                                                          else value)
        fields.add_row(key, shown)
    fields.add_row("sidecar", _cell(report["sidecar_path"]))
    console.print(fields)
    console.print("Seen at:")
    for path in report["source_paths"]:
        console.print(f"  {path}")
    _render_stage_runs(console, report["stage_runs"])
    _render_faces(console, report)


def _render_stage_runs(console: Console, runs: Sequence[Mapping[str, Any]]) -> None:
    if not runs:
        console.print("Stage runs: none yet")
        return
    table = Table(title="Stage runs", title_justify="left")
    for name in ("stage", "try", "status", "duration", "input", "artifact", "error"):
        table.add_column(name, overflow="fold")
    for run in runs:
        duration = run["duration_s"]
        error = " ".join(filter(None, (run["error_kind"], run["error_message"])))
        table.add_row(run["stage"], str(run["attempt"]), run["status"],
                      "-" if duration is None else f"{duration:.2f}s",
                      run["input_hash"][:12], _cell(run["artifact_path"]), _cell(error))
    console.print(table)


def _render_faces(console: Console, report: Mapping[str, Any]) -> None:
    if report.get("sidecar_error"):
        console.print(Text(f"Sidecar: {report['sidecar_error']}", style="yellow"))
    faces = report.get("faces")
    if faces is None:
        return
    if not faces:
        console.print("Faces: none recorded in the sidecar")
        return
    columns = list(dict.fromkeys(key for face in faces for key in face))
    table = Table(title="Faces (from the sidecar)", title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")
    for face in faces:
        table.add_row(*(_cell(face.get(name)) for name in columns))
    console.print(table)


# --- doctor and small commands --------------------------------------------------------------


def render_checks(console: Console, checks: Sequence[Mapping[str, Any]], *, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for name in ("check", "status", "detail", "fix"):
        table.add_column(name, overflow="fold")
    for check in checks:
        status = check["status"]
        table.add_row(check["name"], Text(CHECK_MARKS[status], style=CHECK_STYLES[status]),
                      check["detail"], check["fix"])
    console.print(table)


def render_doctor(console: Console, report: Mapping[str, Any]) -> None:
    render_checks(console, report["checks"], title="openeyes doctor")
    counts = {status: 0 for status in CHECK_MARKS}
    for check in report["checks"]:
        counts[check["status"]] += 1
    console.print(f"{counts['ok']} ok, {counts['warn']} warnings, {counts['error']} errors")


def render_message(console: Console, report: Mapping[str, Any]) -> None:
    """Commands whose report carries a ready sentence under "message" (retry, cancel, ...)."""
    console.print(report["message"], soft_wrap=True, markup=False)
    for line in report.get("details", []):
        console.print(f"  {line}", soft_wrap=True, markup=False)


def render_enqueue(console: Console, report: Mapping[str, Any]) -> None:
    results = report["results"]
    if results:
        table = Table()
        for name in ("path", "status", "job", "reason"):
            table.add_column(name, overflow="fold")
        for result in results:
            status = result["status"] + (" (requeued)" if result["requeued"] else "")
            table.add_row(str(result["path"]), status, _cell(result["job_id"]),
                          _cell(result["reason"]))
        console.print(table)
    if not report["inside_watched_folder"]:
        console.print(f"{report['path']} is outside every watched folder; "
                      f"paths are recorded relative to {report['watch_root']}")
    console.print(report["message"], soft_wrap=True, markup=False)

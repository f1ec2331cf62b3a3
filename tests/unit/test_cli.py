"""openeyesctl, called in-process against a temporary config and a migrated SQLite ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from openeyesd import doctor, files
from openeyesd.cli import main
from openeyesd.config import Config, load_config
from openeyesd.errors import CorruptImage
from openeyesd.files import SIDECAR_SUFFIX
from openeyesd.ledger import (
    Ending,
    JobState,
    Ledger,
    create_ledger_engine,
    migrate,
    utcnow,
)
from openeyesd.ledger.schema import workers

CONFIG = """\
[[watch]]
path = "incoming"

[output]
path = "out"

[state]
dir = "state"
min_free_mb = 0
"""


@dataclass
class Env:
    root: Path
    config_path: Path
    config: Config
    ledger: Ledger

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        code = main(["--config", str(self.config_path), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def run_json(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
        code, out, _ = self.run(capsys, *args, "--json")
        return code, json.loads(out)  # exactly one document, or this raises

    def enqueue(self, name: str, content: str | None = None, *, path: str | None = None) -> int:
        content = content or name
        result = self.ledger.enqueue(
            sha256=content.encode().hex().ljust(64, "0")[:64], size_bytes=100,
            source_path=str(self.root / "incoming" / (path or name)),
            watch_root=str(self.root / "incoming"), relative_path=path or name, mtime_ns=1,
            pipeline_version="1",
        )
        return result.job_id


def write_config(root: Path, text: str = CONFIG) -> Path:
    path = root / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    (tmp_path / "incoming").mkdir()
    (tmp_path / "out").mkdir()
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    yield Env(tmp_path, config_path, config, Ledger(engine))
    engine.dispose()


@pytest.fixture
def populated(env: Env) -> dict[str, int]:
    """One job in each of failed, running (stage detect), done and queued."""
    ids = {name: env.enqueue(f"{name}.jpg") for name in ("failed", "running", "done", "queued")}
    work_root = str(env.config.jobs_dir)
    first = env.ledger.claim("host:1", lease_s=60, work_root=work_root)
    assert first is not None and first.id == ids["failed"]
    env.ledger.fail(first.id, "host:1", CorruptImage("truncated JPEG"))
    running = env.ledger.claim("host:1", lease_s=60, work_root=work_root)
    assert running is not None and running.id == ids["running"]
    env.ledger.start_stage(running.id, "host:1", stage="detect", input_hash="0" * 64)
    done = env.ledger.claim("host:2", lease_s=60, work_root=work_root)
    assert done is not None and done.id == ids["done"]
    env.ledger.complete(done.id, "host:2", state=JobState.DONE, outcome="fixed",
                        output_path=str(env.root / "out" / "done.jpg"))
    return ids


def add_workers(env: Env) -> None:
    env.ledger.register_worker("host:1", hostname="host", pid=1,
                               backends=json.dumps({"eyes": "reference"}))
    env.ledger.worker_heartbeat("host:1", state="paused", current_job_id=None,
                                paused_until=utcnow() + timedelta(minutes=5),
                                pause_reason="backend_unavailable: model missing")
    env.ledger.register_worker("host:2", hostname="host", pid=2,
                               backends=json.dumps({"eyes": "generative"}))
    # host:2 stopped heartbeating long ago: more than 3 x worker.heartbeat_s (10 s).
    with env.ledger.engine.begin() as conn:
        conn.execute(update(workers).where(workers.c.id == "host:2")
                     .values(heartbeat_at=utcnow() - timedelta(seconds=31)))


# --- status ------------------------------------------------------------------------------------


def test_status_on_an_empty_ledger(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = env.run_json(capsys, "status")
    assert code == 0
    assert report["counts"] == {state.value: 0 for state in JobState}
    assert report["workers"] == [] and report["daemon_running"] is False
    assert report["ledger"]["ok"] is True and report["ledger"]["up_to_date"] is True
    assert report["oldest_queued_at"] is None and report["running"] == []
    assert datetime.fromisoformat(report["now"]).utcoffset() == timedelta(0)
    assert {check["name"] for check in report["folders"]} >= {"watch[0]", "output", "state"}

    code, out, _ = env.run(capsys, "status")
    assert code == 0
    assert "not running (no workers registered)" in out
    assert "queued" in out and "cancelled" in out


def test_status_on_a_populated_ledger(
    env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    add_workers(env)
    code, report = env.run_json(capsys, "status")
    assert code == 0
    assert report["counts"] == {"queued": 1, "running": 1, "waiting": 0, "done": 1,
                                "skipped": 0, "failed": 1, "cancelled": 0}
    assert report["finished_last_hour"] == 2 and report["finished_last_day"] == 2
    assert report["throughput_per_hour"] == 2.0
    assert report["oldest_queued_age_s"] >= 0
    [running] = report["running"]
    assert (running["id"], running["stage"], running["worker"]) == (
        populated["running"], "detect", "host:1")
    by_id = {worker["id"]: worker for worker in report["workers"]}
    assert by_id["host:1"]["stale"] is False and by_id["host:2"]["stale"] is True
    assert by_id["host:1"]["paused"] is True
    assert by_id["host:1"]["pause_reason"] == "backend_unavailable: model missing"
    assert report["daemon_running"] is True
    # Only live workers count as "in use".
    assert report["backends_in_use"] == {"eyes": ["reference"]}

    code, out, _ = env.run(capsys, "status")
    assert code == 0
    assert "running.jpg" in out and "detect" in out
    assert "STALE" in out and "model missing" in out
    assert "Backends: eyes: reference" in out


def test_status_reports_a_missing_ledger_without_creating_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "incoming").mkdir()
    config_path = write_config(tmp_path)
    code = main(["--config", str(config_path), "status", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["ledger"]["ok"] is False and report["counts"] is None
    assert "db upgrade" in report["ledger"]["fix"]
    assert not (tmp_path / "state" / "ledger.sqlite3").exists()


# --- jobs --------------------------------------------------------------------------------------


def test_jobs_lists_and_filters_by_state(
    env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = env.run_json(capsys, "jobs")
    assert code == 0 and report["count"] == 4

    code, report = env.run_json(capsys, "jobs", "--state", "failed")
    assert code == 0
    assert [job["id"] for job in report["jobs"]] == [populated["failed"]]
    assert report["jobs"][0]["error_kind"] == "corrupt_image"

    code, report = env.run_json(capsys, "jobs", "--state", "done", "--state", "queued")
    assert {job["id"] for job in report["jobs"]} == {populated["done"], populated["queued"]}

    code, report = env.run_json(capsys, "jobs", "--limit", "1")
    assert report["count"] == 1

    code, out, _ = env.run(capsys, "jobs", "--state", "failed")
    assert code == 0 and "failed.jpg" in out and "corrupt_image" in out
    assert "queued.jpg" not in out


def test_jobs_rejects_an_unknown_state(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = env.run(capsys, "jobs", "--state", "finished")
    assert code == 2 and "invalid choice" in err


def test_jobs_show_everything_about_one_job(
    env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = populated["done"]
    # The same content seen at a second path is recorded on the same job.
    assert env.enqueue("copy.jpg", "done.jpg", path="sub/copy.jpg") == job_id
    output = env.root / "out" / "done.jpg"
    sidecar = Path(str(output) + SIDECAR_SUFFIX)
    sidecar.write_text(json.dumps({"job_id": job_id, "faces": [
        {"index": 0, "outcome": "fixed", "eyes": {"left": "closed"}, "box": [1, 2, 3, 4]},
        {"index": 1, "outcome": "eyes_open"},
    ]}), encoding="utf-8")

    code, report = env.run_json(capsys, "jobs", "show", str(job_id))
    assert code == 0
    assert report["job"]["id"] == job_id and report["job"]["state"] == "done"
    assert report["source_paths"] == sorted([
        str(env.root / "incoming" / "done.jpg"), str(env.root / "incoming" / "sub/copy.jpg")])
    assert report["sidecar_path"] == str(sidecar) and report["sidecar_exists"] is True
    assert report["faces"][0] == {"index": 0, "outcome": "fixed", "left eye": "closed",
                                  "right eye": None}

    code, out, _ = env.run(capsys, "jobs", "show", str(job_id))
    assert code == 0 and "sub/copy.jpg" in out and "eyes_open" in out


def test_jobs_show_lists_stage_runs(
    env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = populated["running"]
    run_id = env.ledger.start_stage(job_id, "host:1", stage="detect", input_hash="ab" * 32)
    env.ledger.finish_stage(run_id, artifact_path="/tmp/detect.json", duration_s=1.5,
                            error=CorruptImage("bad bytes"))
    code, report = env.run_json(capsys, "jobs", "show", str(job_id))
    assert code == 0
    run = report["stage_runs"][-1]  # the fixture started "detect" once already
    assert (run["stage"], run["status"], run["error_kind"]) == ("detect", "failed",
                                                               "corrupt_image")
    assert report["faces"] is None and report["sidecar_path"] is None

    code, out, _ = env.run(capsys, "jobs", "show", str(job_id))
    assert "1.50s" in out and "abababababab" in out and "bad bytes" in out


def test_a_job_parked_for_its_model_shows_the_stage_it_waits_for(
    env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    job = env.ledger.claim("host:1", lease_s=60, work_root=str(env.config.jobs_dir))
    assert job is not None and job.id == populated["queued"]
    env.ledger.settle(job.id, "host:1", Ending.parked("generate"))

    code, report = env.run_json(capsys, "status")
    assert code == 0 and report["parked"] == {"generate": 1}
    code, out, _ = env.run(capsys, "status")
    assert "Parked until their stage's model is loaded (queued, by stage): generate 1" in out
    code, out, _ = env.run(capsys, "jobs", "--state", "queued")
    assert "parked before generate" in out
    code, report = env.run_json(capsys, "jobs", "show", str(job.id))
    assert report["job"]["next_stage"] == "generate" and report["job"]["parked_at"]
    code, out, _ = env.run(capsys, "jobs", "show", str(job.id))
    assert "next_stage" in out and "generate" in out


def test_jobs_show_unknown_id_exits_1(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = env.run(capsys, "jobs", "show", "999")
    assert code == 1 and "job 999 not found" in err and out == ""
    code, report = env.run_json(capsys, "jobs", "show", "999")
    assert code == 1 and report["error"]["kind"] == "not_found"


# --- retry and cancel --------------------------------------------------------------------------


def test_retry_failed_requeues_failed_jobs(
    env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = env.run_json(capsys, "retry", "--failed")
    assert code == 0 and report["retried"] == [populated["failed"]]
    job = env.ledger.get_job(populated["failed"])
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0

    code, out, _ = env.run(capsys, "retry", "--failed")
    assert code == 1 and "nothing to retry" in out


def test_retry_by_id_explains_refusals(
    env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = env.run_json(capsys, "retry", str(populated["failed"]),
                                str(populated["done"]), "999")
    assert code == 1
    assert report["retried"] == [populated["failed"]]
    reasons = {item["id"]: item["reason"] for item in report["refused"]}
    assert "is done" in reasons[populated["done"]] and "not found" in reasons[999]


@pytest.mark.parametrize("args", [["retry"], ["retry", "1", "--failed"]])
def test_retry_needs_ids_or_failed(
    env: Env, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = env.run(capsys, *args)
    assert code == 2 and "--failed" in err


def test_cancel(env: Env, populated: dict[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = env.run(capsys, "cancel", str(populated["running"]))
    assert code == 0 and "it was running" in out
    job = env.ledger.get_job(populated["running"])
    assert job is not None and job.state is JobState.CANCELLED

    code, _, err = env.run(capsys, "cancel", str(populated["done"]))
    assert code == 1 and "is done" in err
    code, report = env.run_json(capsys, "cancel", "999")
    assert code == 1 and report["error"]["kind"] == "not_found"


# --- enqueue -----------------------------------------------------------------------------------


def test_enqueue_a_file_inside_a_watched_folder(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = env.root / "incoming" / "shoot" / "IMG_1.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"not really a jpeg, but intake only hashes")
    code, report = env.run_json(capsys, "enqueue", str(photo))
    assert code == 0 and report["summary"]["enqueued"] == 1
    job = env.ledger.get_job(report["results"][0]["job_id"])
    assert job is not None and job.relative_path == "shoot/IMG_1.jpg"
    assert job.watch_root == str(env.root / "incoming")

    code, report = env.run_json(capsys, "enqueue", str(photo))
    assert code == 0 and report["summary"]["known"] == 1

    # The watched folder itself: paths stay relative to it, the known file is not re-hashed.
    (env.root / "incoming" / "IMG_2.jpg").write_bytes(b"second photo")
    code, report = env.run_json(capsys, "enqueue", str(env.root / "incoming"))
    assert code == 0 and report["inside_watched_folder"] is True
    assert report["summary"]["enqueued"] == 1 and report["summary"]["known"] == 1
    assert {job.relative_path for job in env.ledger.list_jobs()} == {
        "shoot/IMG_1.jpg", "IMG_2.jpg"}


def test_enqueue_a_folder_outside_watched_folders(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = env.root / "elsewhere" / "session"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"a")
    (folder / "b.png").write_bytes(b"b")
    (folder / "notes.txt").write_text("not a photo")
    code, report = env.run_json(capsys, "enqueue", str(folder))
    assert code == 0
    assert report["inside_watched_folder"] is False
    assert report["summary"]["enqueued"] == 2 and report["summary"]["ignored"] == 1
    paths = {job.relative_path for job in env.ledger.list_jobs()}
    assert paths == {"session/a.jpg", "session/b.png"}


def test_enqueue_with_nothing_usable_exits_1(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = env.run(capsys, "enqueue", str(env.root / "missing.jpg"))
    assert code == 1 and "does not exist" in err
    text = env.root / "notes.txt"
    text.write_text("hello")
    code, report = env.run_json(capsys, "enqueue", str(text))
    assert code == 1 and report["results"][0]["reason"] == "not_an_image"


# --- doctor ------------------------------------------------------------------------------------


def test_doctor_passes_on_a_good_config(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = env.run_json(capsys, "doctor")
    assert code == 0 and report["ok"] is True
    names = [check["name"] for check in report["checks"]]
    for expected in ("config", "watch[0]", "output", "state", "ledger", "litert",
                     "onnxruntime", "torch"):
        assert expected in names
    assert all(check["status"] != "error" for check in report["checks"])
    # The write test left nothing behind.
    assert list((env.root / "out").iterdir()) == []

    code, out, _ = env.run(capsys, "doctor")
    assert code == 0 and "0 errors" in out


def test_doctor_reports_a_missing_watched_folder(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    (env.root / "incoming").rmdir()
    code, report = env.run_json(capsys, "doctor")
    assert code == 1 and report["ok"] is False
    [check] = [check for check in report["checks"] if check["name"] == "watch[0]"]
    assert check["status"] == "error" and "does not exist" in check["detail"]
    assert "mkdir" in check["fix"]
    assert not (env.root / "incoming").exists()


def test_doctor_says_how_to_install_a_missing_litert(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from openeyesd import doctor

    present = doctor._module_present
    monkeypatch.setattr(doctor, "_module_present",
                        lambda name: name != "ai_edge_litert" and present(name))
    code, report = env.run_json(capsys, "doctor")
    [check] = [check for check in report["checks"] if check["name"] == "litert"]
    assert code == 1 and check["status"] == "error"
    assert "pip install 'ai-edge-litert" in check["fix"]


def test_doctor_never_writes_into_a_watched_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "incoming").mkdir()
    config_path = write_config(tmp_path, CONFIG.replace('dir = "state"',
                                                        'dir = "incoming/state"'))
    (tmp_path / "incoming" / "state").mkdir()
    code = main(["--config", str(config_path), "doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    [check] = [check for check in report["checks"] if check["name"] == "config"]
    assert code == 2 and check["status"] == "error" and "state.dir" in check["detail"]
    assert list((tmp_path / "incoming" / "state").iterdir()) == []


def test_doctor_runs_every_check_even_when_one_crashes(env: Env) -> None:
    def broken(ctx: doctor.DoctorContext) -> list[doctor.Check]:
        raise RuntimeError("boom")

    ctx = doctor.DoctorContext(env.config)
    try:
        checks = doctor.run_checks(ctx, [broken, doctor.check_ledger])
    finally:
        ctx.close()
    assert [(check.name, check.status) for check in checks] == [
        ("broken", doctor.Status.ERROR), ("ledger", doctor.Status.OK)]
    assert "boom" in checks[0].detail


def test_free_space_check_thresholds(env: Env) -> None:
    strict = env.config.model_copy(update={"state": env.config.state.model_copy(
        update={"min_free_mb": 10**12})})
    check = doctor.free_space_check(strict, "disk: state", env.root)
    assert check.status is doctor.Status.ERROR and "min_free_mb" in check.detail


# --- config errors -----------------------------------------------------------------------------


def test_invalid_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path, CONFIG + "\n[worker]\nconcurrency = 0\n")
    code = main(["--config", str(config_path), "status"])
    err = capsys.readouterr().err
    assert code == 2 and "worker.concurrency" in err

    code = main(["--config", str(config_path), "doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 2 and report["checks"][0]["name"] == "config"
    assert "worker.concurrency" in report["checks"][0]["detail"]


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", str(tmp_path / "nope.toml"), "--json", "jobs"])
    report = json.loads(capsys.readouterr().out)
    assert code == 2 and report["error"]["kind"] == "config"
    assert "not found" in report["error"]["message"]


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "usage or configuration error" in out
    assert main(["frobnicate"]) == 2


# --- db ----------------------------------------------------------------------------------------


def test_db_upgrade_then_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "incoming").mkdir()
    config = ["--config", str(write_config(tmp_path))]
    assert main([*config, "db", "status"]) == 1
    assert "does not exist yet" in capsys.readouterr().err

    assert main([*config, "db", "upgrade", "--json"]) == 0
    upgraded = json.loads(capsys.readouterr().out)
    assert upgraded["before"] is None and upgraded["current"] == upgraded["head"]

    assert main([*config, "--json", "db", "status"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["up_to_date"] is True and report["current"] == upgraded["head"]

    assert main([*config, "db", "upgrade"]) == 0
    assert "already at head" in capsys.readouterr().out


# --- reload ------------------------------------------------------------------------------------


def test_reload_without_pid_file_exits_1(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = env.run(capsys, "reload")
    assert code == 1
    assert "no pid file" in err and "not running" in err


def test_reload_signals_the_daemon(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # A stand-in daemon: its command line names openeyesd, and SIGHUP makes it exit with 7.
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGHUP, lambda *_: sys.exit(7))\n"
              "print('ready', flush=True)\n"
              "time.sleep(30)\n")
    fake = subprocess.Popen([sys.executable, "-c", script, "openeyesd"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline() == "ready\n"
        (env.config.state.dir / "openeyesd.pid").write_text(f"{fake.pid}\n")
        code, report = env.run_json(capsys, "reload")
        assert code == 0 and report["pid"] == fake.pid
        assert fake.wait(timeout=10) == 7
    finally:
        fake.kill()
        fake.wait()


def test_reload_refuses_a_pid_that_is_not_openeyesd(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        (env.config.state.dir / "openeyesd.pid").write_text(str(other.pid))
        code, _, err = env.run(capsys, "reload")
        assert code == 1 and "not a running openeyesd" in err
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def test_sidecar_path_convention() -> None:
    output = Path("/out/IMG_1.jpg")
    assert files.sidecar_path(output) == Path("/out/IMG_1.jpg" + SIDECAR_SUFFIX)


def test_json_flag_is_accepted_before_and_after_the_command(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    before = main(["--json", "--config", str(env.config_path), "jobs"])
    first = json.loads(capsys.readouterr().out)
    after = main(["jobs", "--config", str(env.config_path), "--json"])
    second = json.loads(capsys.readouterr().out)
    assert before == after == 0 and first == second

"""The CPU eye stages end to end: a burst with a blink comes out fixed from its own frames.

Real landmarks, identity, assessment, donor choice, transfer and the write stage, on
scikit-image's astronaut (public domain) with eyes painted shut in one frame.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openeyesd.config import Config
from openeyesd.eyes.model_info import check_models
from openeyesd.files import sidecar_path
from openeyesd.intake import enqueue_file, enqueue_tree
from openeyesd.ledger import FINAL_STATES, JobState, Ledger, create_ledger_engine, migrate
from openeyesd.pipeline import stages_for
from openeyesd.worker import Worker
from tests.eyes.synthetic import blink_frames, save_frame

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(check_models(verify_sha256=False)),
                       reason="CPU eye models are not installed (see requirements/models.txt)"),
]


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    return blink_frames()


def run_until_settled(
    config: Config, ledger: Ledger, timeout_s: float = 90, worker: Worker | None = None
) -> None:
    worker = worker or Worker(config=config, ledger=ledger, stages=lambda: stages_for(config))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.run_once():
            jobs = ledger.list_jobs()
            if jobs and all(job.state in FINAL_STATES for job in jobs):
                return
            time.sleep(0.05)
    pytest.fail(f"jobs did not settle: {[(j.relative_path, j.state) for j in ledger.list_jobs()]}")


@pytest.fixture
def eye_config(make_config: Callable[..., Config]) -> Config:
    return make_config(eyes={"session_quiet_s": 0.0})


def ledger_for(config: Config) -> Ledger:
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    return Ledger(engine, pipeline_version=config.pipeline.version)


@pytest.fixture
def eye_ledger(eye_config: Config) -> Ledger:
    return ledger_for(eye_config)


def drop(config: Config, ledger: Ledger, path: Path) -> None:
    enqueue_file(ledger, path, watch_root=config.watch[0].path,
                 pipeline_version=config.pipeline.version)


def outcome_of(config: Config, ledger: Ledger, relative: str) -> tuple[str, dict]:
    (job,) = [job for job in ledger.list_jobs() if job.relative_path == relative]
    assert job.state is JobState.DONE, (job.state, job.error_kind, job.error_message)
    output = config.output.path / relative
    return job.outcome or "", json.loads(sidecar_path(output).read_text())


def test_each_eye_comes_from_its_own_frame_when_no_frame_has_both_open(
    eye_config: Config, eye_ledger: Ledger, frames: dict[str, np.ndarray]
) -> None:
    incoming = eye_config.watch[0].path / "session1"
    shut = save_frame(incoming / "b_shut.jpg", frames["shut"], "2026:11:20 10:00:01")
    for name, key, taken in (("a_left.jpg", "left_shut", "00"), ("c_right.jpg", "right_shut",
                                                                    "02")):
        drop(eye_config, eye_ledger,
             save_frame(incoming / name, frames[key], f"2026:11:20 10:00:{taken}"))
    drop(eye_config, eye_ledger, shut)
    run_until_settled(eye_config, eye_ledger)

    outcome, sidecar = outcome_of(eye_config, eye_ledger, "session1/b_shut.jpg")
    (face,) = sidecar["faces"]
    assert outcome == "fixed" and face["check"]["ok"], face["check"]
    donors = {face["donor"]["key"]: face["donor"]["sides"],
              face["second_donor"]["key"]: face["second_donor"]["sides"]}
    assert sorted(donors.values()) == [["left"], ["right"]]
    assert set(face["check"]["opening_vs_donor"]) == {"left", "right"}
    assert_changed_only_around_the_eyes(eye_config, shut, frames["shut"])


def test_blink_in_a_burst_is_fixed_from_the_open_frame(
    eye_config: Config, eye_ledger: Ledger, frames: dict[str, np.ndarray]
) -> None:
    incoming = eye_config.watch[0].path / "session1"
    opened = save_frame(incoming / "a_open.jpg", frames["open"], "2026:11:20 10:00:00")
    shut = save_frame(incoming / "b_shut.jpg", frames["shut"], "2026:11:20 10:00:01")
    for path in (shut, opened):
        drop(eye_config, eye_ledger, path)
    run_until_settled(eye_config, eye_ledger)

    outcome, sidecar = outcome_of(eye_config, eye_ledger, "session1/b_shut.jpg")
    assert outcome == "fixed"
    (face,) = sidecar["faces"]
    assert face["outcome"] == "fixed" and face["check"]["ok"]
    assert {face["eyes"][side]["state"] for side in ("left", "right")} == {"closed"}
    assert face["donor"]["kind"] == "burst" and face["donor"]["measures"]["time_distance_s"] == 1
    with Image.open(face["preview"]) as shown:  # before | after, for operators
        assert shown.format == "JPEG" and shown.height == 384 and shown.width > 384
    assert_changed_only_around_the_eyes(eye_config, shut, frames["shut"])

    outcome, sidecar = outcome_of(eye_config, eye_ledger, "session1/a_open.jpg")
    assert outcome == "unchanged" and sidecar["faces"][0]["outcome"] == "open"
    written = eye_config.output.path / "session1" / "a_open.jpg"
    assert written.read_bytes() == opened.read_bytes()  # an open face is never altered


def test_an_eye_the_check_refuses_is_taken_from_the_fallback_donor(
    eye_config: Config, eye_ledger: Ledger, frames: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As in the eval's P03 set, where the nearest frame's "open" left eye was a wink: the check
    # refuses that eye once; the left eye then comes from the other open frame, the right eye
    # stays with the first donor, and the sidecar and `jobs show` say what happened.
    from openeyesd.cli import face_row
    from openeyesd.stages import fix

    real_check, calls = fix.verify_fixed_face, []

    def refuse_the_first_left_eye(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 1:
            return fix.Check(False, "the left eye does not read open after the fix",
                             {"eyes_after": {"left": "closed"}}, ("left",))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(fix, "verify_fixed_face", refuse_the_first_left_eye)
    incoming = eye_config.watch[0].path / "session1"
    for name, key, taken in (("a_open.jpg", "open", "00"), ("b_shut.jpg", "shut", "01"),
                             ("c_open.jpg", "open", "03")):
        drop(eye_config, eye_ledger,
             save_frame(incoming / name, frames[key], f"2026:11:20 10:00:{taken}"))
    run_until_settled(eye_config, eye_ledger)

    outcome, sidecar = outcome_of(eye_config, eye_ledger, "session1/b_shut.jpg")
    (face,) = sidecar["faces"]
    assert outcome == "fixed" and face["check"]["ok"], face["check"]
    jobs = {job.relative_path: job.id for job in eye_ledger.list_jobs()}
    first, other = f"job:{jobs['session1/a_open.jpg']}", f"job:{jobs['session1/c_open.jpg']}"
    assert face["donor"]["key"] == first
    assert face["fallback"]["refused_sides"] == ["left"]
    assert face["fallback"]["first_check"]["reason"].startswith("the left eye")
    assert face["fallback"]["donors"] == [f"burst {first} (right)", f"burst {other} (left)"]
    assert sorted(map(sorted, calls)) == [["left", "right"], ["left", "right"]]
    row = face_row(face)
    assert row["donor"] == f"burst {first} (right) + burst {other} (left)"
    assert row["first try"] == "refused: the left eye does not read open after the fix"


def assert_changed_only_around_the_eyes(config: Config, shut: Path, before: np.ndarray) -> None:
    with Image.open(shut) as original, Image.open(config.output.path / "session1" /
                                                  shut.name) as fixed:
        assert fixed.size == original.size
        assert fixed.quantization == original.quantization  # re-encoded with the same tables
        source = np.asarray(original.convert("RGB"), np.float64)
        result = np.asarray(fixed.convert("RGB"), np.float64)
    changed = np.abs(result - source).max(axis=2) > 40
    rows, cols = np.nonzero(changed)
    assert rows.size > 50  # the eyes really changed
    # Everything that changed visibly lies in the band of the eyes, not elsewhere in the face.
    assert rows.max() - rows.min() < before.shape[0] * 0.15
    outside = np.ones(changed.shape, bool)
    outside[rows.min() - 20:rows.max() + 20, cols.min() - 20:cols.max() + 20] = False
    mse = np.mean((result[outside] - source[outside]) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 40


def test_a_blink_without_any_other_frame_is_no_donor_and_left_as_it_was(
    eye_config: Config, eye_ledger: Ledger, frames: dict[str, np.ndarray]
) -> None:
    alone = save_frame(eye_config.watch[0].path / "alone" / "shut.jpg", frames["shut"],
                       "2026:11:20 11:00:00")
    drop(eye_config, eye_ledger, alone)
    run_until_settled(eye_config, eye_ledger)
    outcome, sidecar = outcome_of(eye_config, eye_ledger, "alone/shut.jpg")
    (face,) = sidecar["faces"]
    # Alone, only the single-photo rule applies: the more deeply painted eye reads closed.
    assert face["eyes"]["left"]["state"] == "closed"
    assert outcome == "no_donor" and face["outcome"] == "no_donor"
    assert face["donor"]["reason"] == "no_candidates"
    written = eye_config.output.path / "alone" / "shut.jpg"
    assert written.read_bytes() == alone.read_bytes()


def test_reference_portrait_is_a_donor_and_never_an_output(
    make_config: Callable[..., Config], frames: dict[str, np.ndarray], tmp_path: Path
) -> None:
    references = tmp_path / "refs"
    save_frame(references / "portrait.jpg", frames["open"], "2025:01:01 09:00:00")
    config = make_config(eyes={"session_quiet_s": 0.0, "references": [str(references)]})
    engine = create_ledger_engine(config.ledger_url)
    migrate.upgrade(engine)
    ledger = Ledger(engine, pipeline_version=config.pipeline.version)
    shut = save_frame(config.watch[0].path / "shut.jpg", frames["shut"], "2026:11:20 12:00:00")
    drop(config, ledger, shut)
    run_until_settled(config, ledger)
    outcome, sidecar = outcome_of(config, ledger, "shut.jpg")
    (face,) = sidecar["faces"]
    assert outcome == "fixed" and face["outcome"] == "fixed"
    assert face["donor"]["kind"] == "reference" and face["donor"]["key"].endswith("portrait.jpg")
    assert not list(config.output.path.rglob("portrait*"))
    assert [job.relative_path for job in ledger.list_jobs()] == ["shut.jpg"]


def test_a_fix_that_fails_its_check_ships_the_original_marked_needs_review(
    eye_config: Config, eye_ledger: Ledger, frames: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from openeyesd.stages import fix

    real_transfer = fix.transfer_face

    def visible_seam(*args: object, **kwargs: object) -> list:
        return [dataclasses.replace(r, seam=9.0) for r in real_transfer(*args, **kwargs)]

    monkeypatch.setattr(fix, "transfer_face", visible_seam)
    incoming = eye_config.watch[0].path / "session2"
    save_frame(incoming / "a_open.jpg", frames["open"], "2026:11:20 10:00:00")
    shut = save_frame(incoming / "b_shut.jpg", frames["shut"], "2026:11:20 10:00:01")
    for path in sorted(incoming.iterdir()):
        drop(eye_config, eye_ledger, path)
    run_until_settled(eye_config, eye_ledger)
    outcome, sidecar = outcome_of(eye_config, eye_ledger, "session2/b_shut.jpg")
    (face,) = sidecar["faces"]
    assert outcome == "needs_review" and face["outcome"] == "needs_review"
    assert "seam" in face["check"]["reason"] and not face["check"]["ok"]
    written = eye_config.output.path / "session2" / "b_shut.jpg"
    assert written.read_bytes() == shut.read_bytes()


def test_a_references_folder_beside_the_photos_serves_them_and_is_not_queued(
    eye_config: Config, eye_ledger: Ledger, frames: dict[str, np.ndarray]
) -> None:
    folder = eye_config.watch[0].path / "session3"
    save_frame(folder / "references" / "portrait.jpg", frames["open"], "2025:01:01 09:00:00")
    shut = save_frame(folder / "shut.jpg", frames["shut"], "2026:11:20 13:00:00")
    results = enqueue_tree(eye_ledger, eye_config.watch[0].path,
                           watch_root=eye_config.watch[0].path,
                           pipeline_version=eye_config.pipeline.version)
    assert {r.reason for r in results if r.path.name == "portrait.jpg"} == {"reference_portrait"}
    run_until_settled(eye_config, eye_ledger)
    outcome, sidecar = outcome_of(eye_config, eye_ledger, "session3/shut.jpg")
    assert outcome == "fixed" and sidecar["faces"][0]["donor"]["kind"] == "reference"
    assert shut.exists() and [j.relative_path for j in eye_ledger.list_jobs()] == [
        "session3/shut.jpg"]


def test_a_donor_deleted_between_plan_and_fix_makes_the_job_plan_again(
    make_config: Callable[..., Config], frames: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the donor must be decoded: its eye regions are no longer in memory (here: none
    are kept, as after a restart of the daemon)."""
    from openeyesd.stages import fix

    eye_config = make_config(eyes={"session_quiet_s": 0.0, "donor_regions_mb": 0})
    eye_ledger = ledger_for(eye_config)
    incoming = eye_config.watch[0].path / "session4"
    save_frame(incoming / "a_open.jpg", frames["open"], "2026:11:20 10:00:00")
    save_frame(incoming / "b_shut.jpg", frames["shut"], "2026:11:20 10:00:01")
    for path in sorted(incoming.iterdir()):
        drop(eye_config, eye_ledger, path)
    real_donor = fix.FixStage._donor
    calls: list[str] = []

    def donor_vanishes_once(self: fix.FixStage, ctx: object, item: dict) -> object:
        if not calls:
            calls.append(item["donor_image"])
            Path(item["donor_image"]).rename(Path(item["donor_image"] + ".away"))
            try:
                return real_donor(self, ctx, item)  # type: ignore[arg-type]
            finally:
                Path(item["donor_image"] + ".away").rename(Path(item["donor_image"]))
        return real_donor(self, ctx, item)  # type: ignore[arg-type]

    monkeypatch.setattr(fix.FixStage, "_donor", donor_vanishes_once)
    run_until_settled(eye_config, eye_ledger)
    outcome, _ = outcome_of(eye_config, eye_ledger, "session4/b_shut.jpg")
    (job,) = [j for j in eye_ledger.list_jobs() if j.relative_path == "session4/b_shut.jpg"]
    plans = [run for run in eye_ledger.stage_runs(job.id) if run.stage == "plan"]
    assert outcome == "fixed" and calls and job.attempts == 2
    assert [run.status for run in plans][-2:] == ["done", "done"]  # planned again


def test_eyes_lent_from_memory_are_the_pixels_the_decoded_donor_gives(
    tmp_path: Path, frames: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same burst fixed three ways: with the donor's eye regions kept in memory by its
    assess stage (the donor is never decoded again); without them (decoded there only); and
    with regions too tight for the warp (decoded whole after the first try)."""
    from openeyesd.config import parse_config
    from openeyesd.eyes import donor_regions
    from openeyesd.stages import fix
    from tests.conftest import config_dict

    decodes: list[str] = []
    real_decode = fix._decode_donor

    def counted(ctx: object, item: dict, boxes: list | None) -> object:
        decodes.append("regions" if boxes is not None else "whole")
        return real_decode(ctx, item, boxes)  # type: ignore[arg-type]

    monkeypatch.setattr(fix, "_decode_donor", counted)
    fixed: dict[str, np.ndarray] = {}
    ways = {"memory": (128.0, 1.0, []), "decoded": (0.0, 1.0, ["regions"]),
            "too_tight": (0.0, 0.0, ["regions", "whole"])}
    for way, (megabytes, margin, expected_decodes) in ways.items():
        monkeypatch.setattr(donor_regions, "REGION_MARGIN", margin)
        decodes.clear()
        root = tmp_path / way
        config = parse_config(config_dict(root, eyes={"session_quiet_s": 0.0,
                                                      "donor_regions_mb": megabytes}),
                              base_dir=root)
        ledger = ledger_for(config)
        incoming = config.watch[0].path / "session5"
        save_frame(incoming / "a_open.jpg", frames["open"], "2026:11:20 10:00:00")
        save_frame(incoming / "b_shut.jpg", frames["shut"], "2026:11:20 10:00:01")
        enqueue_tree(ledger, config.watch[0].path, watch_root=config.watch[0].path,
                     pipeline_version=config.pipeline.version)
        run_until_settled(config, ledger)
        assert decodes == expected_decodes, way
        outcome, _ = outcome_of(config, ledger, "session5/b_shut.jpg")
        assert outcome == "fixed"
        fixed[way] = np.asarray(Image.open(config.output.path / "session5/b_shut.jpg"))
    assert np.array_equal(fixed["memory"], fixed["decoded"])
    assert np.array_equal(fixed["memory"], fixed["too_tight"])

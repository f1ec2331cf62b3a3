"""plan: for each face with a closed eye, choose a donor: the same person with open eyes in
another frame of the burst, or in a reference portrait.

A burst is this photo's folder, chained by capture time (``eyes.session_gap_s``). While the
burst may still grow (a photo of the folder arrived less than ``eyes.session_quiet_s`` ago, or
one is queued but not read in yet) the job waits, parked in the ledger's ``waiting`` state: the
frame just after a blink is the best donor. Photos with no closed eye never wait.

Inside a burst each eye is judged again relative to the same person's widest opening in the
other frames (a person whose open eyes are narrow is not "closed" for it). Donors are chosen by
``openeyesd.eyes.donors.choose_donor``; every score is recorded for the sidecar. The artifact
also holds ``fallbacks``: per face and per set of eyes, the donors the fix stage tries when its
check refuses the eyes the first donors gave.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from openeyesd.config import Config
from openeyesd.errors import Deferred, OpenEyesError
from openeyesd.eyes.analysis import (
    AnalysisCache,
    EyeToolkit,
    FaceAnalysis,
    FrameAnalysis,
    analyse,
    judge,
)
from openeyesd.eyes.assess import FaceAssessment, burst_baselines
from openeyesd.eyes.donor_regions import EyeRegionStore, donor_regions
from openeyesd.eyes.donors import (
    DonorCandidate,
    DonorChoice,
    DonorTarget,
    NoDonor,
    align_frames,
    choose_donors,
    fallback_donors,
    match_faces,
)
from openeyesd.eyes.sessions import CaptureTime, FrameRef, group_sessions, session_of
from openeyesd.eyes.types import SIDES, EyeState, Side
from openeyesd.files import sha256_file
from openeyesd.imageio import load_rgb
from openeyesd.intake import REFERENCES_DIRNAME, is_image_name
from openeyesd.ledger import JobState, SessionFrame, utcnow
from openeyesd.stages.assess import face_summary, load_analysis
from openeyesd.stages.base import Artifact, StageContext

#: A typical open eye's lid gap is ~0.3 of its width; donors.py wants openness in 0..1.
TYPICAL_OPEN_OPENING = 0.30
UNSETTLED = (JobState.QUEUED, JobState.RUNNING, JobState.WAITING)

log = structlog.get_logger()


@dataclass(frozen=True)
class EyeView:
    """One eye as the donor chooser sees it."""

    state: EyeState
    openness: float


@dataclass(frozen=True)
class DonorFrame:
    key: str
    kind: str  # "burst" | "reference"
    analysis: FrameAnalysis
    image_path: Path
    time_distance_s: float | None


class PlanStage:
    name = "plan"
    # 2: a second donor for the eye the first cannot give. 3: fallback donors for eyes the
    # fix stage's check refuses.
    version = "3"

    def __init__(self, toolkit: EyeToolkit, regions: EyeRegionStore) -> None:
        self.toolkit = toolkit
        self.regions = regions

    def settings(self, config: Config) -> dict[str, Any]:
        eyes = config.eyes
        return {"gap": eyes.session_gap_s, "references": [str(p) for p in eyes.references]}

    def run(self, ctx: StageContext) -> Artifact:
        frame = load_analysis(ctx)
        if not any(face.face.width >= ctx.config.eyes.min_face_px for face in frame.faces):
            return {"plans": [], "faces": ctx.artifact("assess")["faces"], "burst": []}
        # Every photo with a judgeable face waits for its burst: most closed eyes (lashes,
        # make-up) only read closed against the same person's open frames.
        burst = burst_frames(ctx)
        donors = self._burst_donors(ctx, burst)
        frame, baselines = rejudge_in_burst(frame, donors)
        if frame.needs_fix():
            donors += self._reference_donors(ctx)
        plans, fallbacks, faces = [], [], []
        for index, face in enumerate(frame.faces):
            ctx.progress()
            summary = face_summary(index, face)
            if face.closed_sides():
                # Whatever opens these eyes later (donor or generation) is judged by this.
                summary["burst_baselines"] = baselines.get(index) or {}
                candidates = _candidates(frame, index, donors, baselines.get(index))
                target = _target(index, face)
                choices = choose_donors(target, candidates)
                if isinstance(choices, NoDonor):
                    summary["donor"] = choices.to_json()
                    summary["outcome"] = "no_donor"
                    faces.append(summary)
                    continue
                summary["donor"] = choices[0].to_json()
                if len(choices) > 1:
                    summary["second_donor"] = choices[1].to_json()
                plans += [_plan(index, c, donors, baselines.get(index)) for c in choices]
                fallbacks += [
                    {"face_index": index, "refused": list(refused),
                     "plans": [_plan(index, c, donors, baselines.get(index)) for c in others]}
                    for refused, others in fallback_donors(target, candidates, choices).items()]
            faces.append(summary)
        return {"plans": plans, "fallbacks": fallbacks, "faces": faces,
                "burst": [frame.id for frame in burst]}

    def _burst_donors(self, ctx: StageContext, burst: list[SessionFrame]) -> list[DonorFrame]:
        me = ctx.job.captured_at or utcnow()
        donors = []
        for member in burst:
            ctx.progress()
            path = _image_of(member)
            analysis = self._analysis_for(ctx, member.sha256, path)
            if analysis is None or path is None:
                continue
            gap = abs((member.captured_at - me).total_seconds()) if member.captured_at else None
            donors.append(DonorFrame(f"job:{member.id}", "burst", analysis, path, gap))
        return donors

    def _reference_donors(self, ctx: StageContext) -> list[DonorFrame]:
        donors = []
        for path in reference_images(ctx):
            ctx.progress()
            analysis = self._analysis_for(ctx, sha256_file(path), path)
            if analysis is not None:
                donors.append(DonorFrame(f"ref:{path}", "reference", analysis, path, None))
        return donors

    def _analysis_for(
        self, ctx: StageContext, sha256: str, path: Path | None
    ) -> FrameAnalysis | None:
        """From the cache, else analysed now (and cached). A frame that cannot be read is
        simply not a donor."""
        cache = AnalysisCache(ctx.config.analysis_dir)
        if (cached := cache.get(sha256)) is not None or path is None:
            return cached
        try:
            pixels = load_rgb(path, ctx.config.limits).pixels
            analysis = analyse(pixels, sha256, self.toolkit)
        except (OpenEyesError, OSError) as exc:
            log.info("plan.donor_unreadable", path=str(path), error=str(exc))
            return None
        cache.put(analysis)
        self.regions.put(sha256, donor_regions(pixels, analysis))
        return analysis


def burst_frames(ctx: StageContext) -> list[SessionFrame]:
    """The other frames of this photo's burst; raises Deferred while the burst may grow."""
    config = ctx.config.eyes
    frames = ctx.job_ledger().session_frames()
    others = [f for f in frames if f.id != ctx.job.id and f.state is not JobState.FAILED]
    unread = [f for f in others if f.captured_at is None and f.state in UNSETTLED]
    if unread:
        raise Deferred(f"waiting for {len(unread)} more photo(s) of this folder to be read in",
                       delay_s=max(min(config.session_quiet_s, 5.0), 1.0))
    refs = [FrameRef(str(f.id), "folder", CaptureTime(f.captured_at.timestamp(),
                                                      f.capture_source or "file"))
            for f in frames if f.captured_at is not None and f.state is not JobState.FAILED]
    session = session_of(group_sessions(refs, config.session_gap_s), str(ctx.job.id))
    members = {int(key) for key in session.keys} if session else set()
    burst = [f for f in others if f.id in members]
    newest = max([f.created_at for f in burst] + [ctx.job.created_at])
    quiet_for = (utcnow() - newest).total_seconds()
    if quiet_for < config.session_quiet_s:
        raise Deferred("the burst may still grow; waiting for the folder to be quiet",
                       delay_s=config.session_quiet_s - quiet_for + 0.5)
    return burst


def reference_images(ctx: StageContext) -> list[Path]:
    folders = [*ctx.config.eyes.references]
    source_folder = Path(ctx.job.source_path).parent
    folders.append(source_folder / REFERENCES_DIRNAME)
    images = []
    for folder in folders:
        if folder.is_dir():
            images.extend(sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p)))
    return images


def _image_of(member: SessionFrame) -> Path | None:
    """The member's private copy if it still has one, else its original if still there."""
    if member.work_dir:
        copies = sorted((Path(member.work_dir) / "ingest").glob("original*"))
        if copies:
            return copies[0]
    source = Path(member.source_path)
    return source if source.exists() else None


Baselines = dict[int, dict[Side, float | None]]


def rejudge_in_burst(
    frame: FrameAnalysis, donors: list[DonorFrame]
) -> tuple[FrameAnalysis, Baselines]:
    """Judge each eye again against the same person's widest opening in the other frames.
    Returns the re-judged frame and, per face, those widest openings: donors and the result
    of a fix are judged against the same baselines."""
    if not donors:
        return frame, {}
    target_faces = [f.face for f in frame.faces]
    history: dict[int, list[dict[Side, Any]]] = {i: [] for i in range(len(frame.faces))}
    for donor in donors:
        other = [f.face for f in donor.analysis.faces]
        for match in match_faces(target_faces, other, align_frames(target_faces, other)):
            history[match.target_index].append(
                donor.analysis.faces[match.other_index].assessment.measurements
            )
    faces, baselines = [], {}
    for index, face in enumerate(frame.faces):
        own = face.assessment.measurements
        if history[index]:
            baselines[index] = burst_baselines([own, *history[index]])
        faces.append(rejudged(face, baselines.get(index)))
    return dataclasses.replace(frame, faces=faces), baselines


def rejudged(face: FaceAnalysis, baselines: dict[Side, float | None] | None) -> FaceAnalysis:
    """``face`` with each eye classified against ``baselines`` (the person's widest openings)."""
    if not baselines:
        return face
    own = face.assessment.measurements
    verdicts = judge(own, face.blink, baselines)
    return dataclasses.replace(face, assessment=FaceAssessment(own, verdicts))


def _eye_views(face: FaceAnalysis) -> dict[Side, EyeView]:
    return {
        side: EyeView(face.state(side), min(max(
            face.assessment.measurements[side].opening / TYPICAL_OPEN_OPENING, 0.0), 1.0))
        for side in SIDES
    }


def _target(index: int, face: FaceAnalysis) -> DonorTarget:
    return DonorTarget(key="target", face_index=index, face=face.face, eyes=_eye_views(face),
                       sharpness=face.sharpness)


def _candidates(
    frame: FrameAnalysis, index: int, donors: list[DonorFrame],
    baselines: dict[Side, float | None] | None,
) -> list[DonorCandidate]:
    """Every face that may be this person elsewhere, its eyes judged against the person's
    burst baselines: a donor eye must be open by the same rule the target is closed by."""
    target_faces = [f.face for f in frame.faces]
    candidates = []
    for donor in donors:
        faces = donor.analysis.faces
        if donor.kind == "reference":
            pairs = [(i, None) for i in range(len(faces))]
        else:
            other = [f.face for f in faces]
            matches = match_faces(target_faces, other, align_frames(target_faces, other))
            pairs = [(m.other_index, m.position_distance) for m in matches
                     if m.target_index == index]
        for other_index, position in pairs:
            face = rejudged(faces[other_index], baselines)
            candidates.append(DonorCandidate(
                key=donor.key, face_index=other_index, face=face.face, eyes=_eye_views(face),
                kind=donor.kind, position_distance=position,  # type: ignore[arg-type]
                time_distance_s=donor.time_distance_s, sharpness=face.sharpness,
            ))
    return candidates


def _plan(
    index: int, choice: DonorChoice, donors: list[DonorFrame],
    baselines: dict[Side, float | None] | None,
) -> dict[str, Any]:
    donor = next(d for d in donors if d.key == choice.candidate.key)
    return {"face_index": index, "sides": list(choice.sides), "donor_key": donor.key,
            "baselines": baselines or {},
            "donor_kind": donor.kind, "donor_image": str(donor.image_path),
            "donor_sha256": donor.analysis.sha256, "donor_face_index": choice.candidate.face_index}

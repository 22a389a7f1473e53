"""Good parts in a profile's bank: `/v1/profiles/{name}/references`, and `/v1/references` for the default profile.

Images are encoded between forward batches; the coreset that keeps a full bank bounded runs beside the forward
passes; the bank and its images are committed, then swapped in whole, so a detection waits for at most the encoding,
never the reduction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from kanoclip.inference.backends import REFERENCES
from kanoclip.inference.detector import Detector
from kanoclip.model.references import ReferenceBank
from kanoclip.station.app.state import GUARDED, AppState, Served, detector_of
from kanoclip.station.app.uploads import decoded
from kanoclip.station.config import ServeConfig
from kanoclip.station.errors import Conflict
from kanoclip.station.store import sha256_of

router = APIRouter(dependencies=GUARDED)
T = TypeVar("T")
SAVE_TRIES = 5  # saves redone on a newer version of the profile before the conflict is the answer (409)


def bank_info(cfg: ServeConfig, detector: Detector) -> dict[str, Any]:
    """The bank as the API shows it: its good parts' sha256, patches per level and memory, and the server's limits."""
    bank = detector.describe()["references"]
    empty: dict[str, Any] = {
        "id": None,
        "images": 0,
        "patches_per_level": 0,
        "reduced_from": 0,
        "bytes": 0,
        "sha256": [],
    }
    return {**(bank or empty), "limits": {"images": cfg.max_reference_images, "bytes": cfg.max_reference_bytes}}


async def _extended(state: AppState, detector: Detector, parts: list[tuple[str, bytes]]) -> ReferenceBank:
    """The detector's bank plus these parts, within the server's limits (called under `bank_lock`)."""
    cfg = state.config
    held = detector.references.images if detector.references else 0
    if held + len(parts) > cfg.max_reference_images:
        raise HTTPException(
            413, f"the bank holds {held} of at most {cfg.max_reference_images} good parts; clear it first"
        )
    # sha256 of the files, as `kanoclip reference build` records them
    encoded = await state.batcher.exclusive(detector.encode_references, [data for _, data in parts])
    bank: ReferenceBank = await run_in_threadpool(detector.extended_bank, encoded)
    if bank.nbytes() > cfg.max_reference_bytes:
        raise HTTPException(413, f"the bank would hold {bank.nbytes():,} bytes, over {cfg.max_reference_bytes:,}")
    return bank


async def saved(state: AppState, name: str, save: Callable[[Detector], Awaitable[T]]) -> T:
    """`save(detector)` under the bank lock; when another instance changed the profile since this one read it (its
    commit is a `Conflict`), the profile is read again and the save redone on the newer version, up to
    `SAVE_TRIES` times: a save never overwrites another instance's, and the line does not see it fail."""
    for attempt in range(1, SAVE_TRIES + 1):
        detector = await detector_of(state, name)
        try:
            async with state.bank_lock:
                return await save(detector)
        except Conflict:
            if attempt == SAVE_TRIES:
                raise
            await state.batcher.exclusive(state.station.changed_profiles)  # the newer version, its bank and parts
    raise AssertionError("unreachable")


async def add_good_parts(state: AppState, name: str, parts: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Add good parts to a profile's bank (SPEC §9); later detections are scored against it. An image the bank
    already holds is not added again."""

    async def save(detector: Detector) -> dict[str, Any]:
        if not detector.supports(REFERENCES):
            raise HTTPException(409, "an exported engine's bank is baked in: export again with --reference")
        bank = await _extended(state, detector, parts)
        await run_in_threadpool(state.station.save_bank, name, bank, parts)
        await state.batcher.exclusive(detector.use_references, bank)
        return bank_info(state.config, detector)

    return await saved(state, name, save)


async def teach(
    state: AppState,
    result_id: int,
    verdict: str,
    note: str | None,
    row: dict[str, Any],
    defect_type: str | None = None,
) -> dict[str, Any] | None:
    """Record a verdict with the bank change it makes, in one commit: "good" adds the result's image to the bank of
    the profile it was recorded under, "defect" rebuilds that bank without it. The bank as it is then; None when
    the verdict teaches no bank (a profile deleted since, no image kept, an exported engine) or leaves it as it was
    (a defect the bank did not hold)."""
    station = state.station
    p = await run_in_threadpool(station.taught, row)
    detector = None if p is None or not row["image_sha256"] else await detector_of(state, p.name)
    if p is None or detector is None or not detector.supports(REFERENCES):
        await run_in_threadpool(station.feedback, result_id, verdict, note, None, defect_type)
        return None
    data = await run_in_threadpool(station.blob, row["image_sha256"])
    assert data is not None
    sha = sha256_of(data)

    async def save(detector: Detector) -> dict[str, Any] | None:
        # what the profile holds as stored, not as this instance's bank has it: another instance may have changed
        # it since this one polled (a change staged from a stale bank then meets its newer version, and is redone)
        held = await run_in_threadpool(station.good_parts, p.name)
        change = None
        if verdict == "good" and sha not in held:
            part = [(row["source"], data)]
            change = await run_in_threadpool(station.stage_bank, await _extended(state, detector, part), part)
        elif verdict == "defect" and sha in held:
            bank = await state.batcher.exclusive(station.bank_without, p.name, detector, sha)
            change = await run_in_threadpool(station.stage_bank, bank, (), [sha])
        await run_in_threadpool(station.feedback, result_id, verdict, note, change, defect_type)
        if change is not None:
            await state.batcher.exclusive(detector.use_references, change.bank)
        # The bank when a "good" verdict holds the part, or a "defect" took it out: the page rescores on a bank it
        # is sent, and a defect that changed nothing must not rescore (its rows would bury the verdict's).
        return bank_info(state.config, detector) if verdict == "good" or change is not None else None

    return await saved(state, p.name, save)


async def clear_good_parts(state: AppState, name: str) -> dict[str, Any]:
    async def save(detector: Detector) -> dict[str, Any]:
        if not detector.supports(REFERENCES):
            raise HTTPException(409, "an exported engine's bank is baked in: export again without --reference")
        await run_in_threadpool(state.station.save_bank, name, None)
        await state.batcher.exclusive(detector.clear_references)
        return bank_info(state.config, detector)

    return await saved(state, name, save)


@router.get("/v1/profiles/{name}/references")
async def profile_references(name: str, state: Served) -> dict[str, Any]:
    return bank_info(state.config, await detector_of(state, name))


@router.post("/v1/profiles/{name}/references")
async def profile_add_references(
    name: str, files: Annotated[list[UploadFile], File()], state: Served
) -> dict[str, Any]:
    state.station.profile(name)
    async with decoded(state, files) as uploads:
        return await add_good_parts(state, name, [(source, data) for source, data, _ in uploads])


@router.delete("/v1/profiles/{name}/references")
async def profile_clear_references(name: str, state: Served) -> dict[str, Any]:
    return await clear_good_parts(state, name)


# -- the default profile, as before profiles ---------------------------------------------------------------------------
@router.get("/v1/references")
async def list_references(state: Served) -> dict[str, Any]:
    """The default profile's few-shot bank: how many good parts, their sha256, patches per level and memory."""
    return bank_info(state.config, await detector_of(state, state.default))


@router.post("/v1/references")
async def add_references(files: Annotated[list[UploadFile], File()], state: Served) -> dict[str, Any]:
    """Add good parts to the default profile's bank (see POST /v1/profiles/{name}/references)."""
    async with decoded(state, files) as uploads:
        return await add_good_parts(state, state.default, [(source, data) for source, data, _ in uploads])


@router.delete("/v1/references")
async def clear_references(state: Served) -> dict[str, Any]:
    """Empty the default profile's bank: back to zero-shot."""
    return await clear_good_parts(state, state.default)

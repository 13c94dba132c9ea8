"""DICOMweb at /dicomweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI.

A listener only: it decodes the request, asks the archive (``dicom.archive``: access rules and
audit, as for the FHIR API) or the ingest (``DicomIngest.file``, as for C-STORE) and encodes the
answer with ``dicom.web``. Every call needs a bearer token; what a principal may not see does
not exist (404).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread

from dicom import render, web
from dicom.archive import Archive
from dicom.ingest import Origin
from dicom.mapping.ecg import is_ecg
from dicom.query import QueryError
from gateway.deps import ContextDep, PrincipalDep
from records.errors import Invalid, NotAcceptable, TooLarge, UnsupportedMediaType
from security.access import Action
from security.principal import Principal

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])
DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"
IMAGE_TYPES = {"image/jpeg": "jpeg", "image/png": "png"}


def get_archive(ctx: ContextDep) -> Archive:
    return Archive(ctx.records, ctx.dicom.store)


ArchiveDep = Annotated[Archive, Depends(get_archive)]


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status_code=status,
        media_type=DICOM_JSON,
    )


def _check_json_accepted(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if accept and not any(
        t in accept for t in (DICOM_JSON, "application/json", "*/*", "application/*")
    ):
        raise NotAcceptable(f"this resource is sent as {DICOM_JSON}")


# -- QIDO-RS -------------------------------------------------------------------------------------


def _qido(
    request: Request,
    ctx: ContextDep,
    archive: Archive,
    who: Principal,
    level: str,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    _check_json_accepted(request)
    try:
        q = web.qido_query(
            level,
            request.query_params.multi_items(),
            study=study,
            series=series,
            max_limit=ctx.settings.page_size_max,
        )
    except QueryError as exc:
        raise Invalid(str(exc)) from None
    base = _base(request)
    try:
        found = archive.search(who, q)
    except QueryError as exc:
        raise Invalid(str(exc)) from None
    return _json([web.match_json(m, q.level, base) for m in found])


def _qido_route(level: str, summary: str) -> Any:
    def search(
        request: Request,
        ctx: ContextDep,
        archive: ArchiveDep,
        who: PrincipalDep,
        study: str | None = None,
        series: str | None = None,
    ) -> Response:
        return _qido(request, ctx, archive, who, level, study, series)

    search.__doc__ = f"QIDO-RS: {summary}"
    return search


for _path, _level, _summary in [
    ("/studies", "STUDY", "search for studies"),
    ("/series", "SERIES", "search for series"),
    ("/instances", "IMAGE", "search for instances"),
    ("/studies/{study}/series", "SERIES", "series of a study"),
    ("/studies/{study}/instances", "IMAGE", "instances of a study"),
    ("/studies/{study}/series/{series}/instances", "IMAGE", "instances of a series"),
]:
    router.add_api_route(
        _path, _qido_route(_level, _summary), methods=["GET"], summary=f"QIDO-RS: {_summary}"
    )


# -- WADO-RS: instances and metadata -----------------------------------------------------------


def _instances(
    request: Request, archive: Archive, who: Principal, **named: str | None
) -> StreamingResponse:
    accepted = _accepted(request.headers.get("accept"), DICOM, offer=[DICOM])
    rows = archive.instances(who, "dicom-retrieve", **named)
    plans = [(row, _syntax_for(row.transfer_syntax, accepted)) for row in rows]
    archive.record(who, "dicom-retrieve", rows)
    boundary = web.new_boundary()

    def parts() -> Iterator[web.Part]:
        for row, syntax in plans:
            if syntax is None:  # as stored
                content = f"{DICOM}; transfer-syntax={row.transfer_syntax}"
                yield web.Part(content, partial(archive.chunks, row))
            else:
                content = f"{DICOM}; transfer-syntax={syntax}"
                yield web.Part(content, partial(_transcoded, archive, row, syntax))

    return StreamingResponse(
        web.multipart_body(parts(), boundary),
        media_type=web.multipart_type(DICOM, boundary),
    )


def _transcoded(archive: Archive, row: Any, syntax: str) -> Iterator[bytes]:
    yield web.transcoded(archive.dataset(row), syntax)


def _accepted(header: str | None, default: str, *, offer: list[str]) -> list[web.Accepted]:
    try:
        return web.accepted(header, default, offer=offer)
    except web.NotAcceptable as exc:
        raise NotAcceptable(str(exc)) from None


def _syntax_for(stored: str, accepted: list[web.Accepted]) -> str | None:
    """None: send as stored; else the transfer syntax to transcode to (only Explicit VR Little
    Endian, the default when the client names none; ``*`` takes what is stored)."""
    for form in accepted:
        if form.syntax in (web.ANY, stored):
            return None
        if form.syntax == web.EXPLICIT_LE and stored != web.EXPLICIT_BE:
            return web.EXPLICIT_LE
    wanted = ", ".join(sorted({f.syntax for f in accepted}))
    raise NotAcceptable(
        f"the instance is stored as {stored}; it can be sent as that or as {web.EXPLICIT_LE}, "
        f"not {wanted}"
    )


@router.get("/studies/{study}", summary="WADO-RS: a study's instances")
def retrieve_study(
    study: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> StreamingResponse:
    return _instances(request, archive, who, study=study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: a series' instances")
def retrieve_series(
    study: str, series: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> StreamingResponse:
    return _instances(request, archive, who, study=study, series=series)


@router.get("/studies/{study}/series/{series}/instances/{sop}", summary="WADO-RS: an instance")
def retrieve_instance(
    study: str, series: str, sop: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> StreamingResponse:
    return _instances(request, archive, who, study=study, series=series, sop=sop)


@router.get("/studies/{study}/metadata", summary="WADO-RS: a study's metadata")
def study_metadata(
    study: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> Response:
    _check_json_accepted(request)
    return _json(archive.metadata(who, study=study))


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: a series' metadata")
def series_metadata(
    study: str, series: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> Response:
    _check_json_accepted(request)
    return _json(archive.metadata(who, study=study, series=series))


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/metadata",
    summary="WADO-RS: an instance's metadata",
)
def instance_metadata(
    study: str, series: str, sop: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> Response:
    _check_json_accepted(request)
    return _json(archive.metadata(who, study=study, series=series, sop=sop))


# -- WADO-RS: frames and rendered images --------------------------------------------------------


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
    summary="WADO-RS: frames of an instance (native pixels, or as stored when accepted)",
)
def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    archive: ArchiveDep,
    who: PrincipalDep,
) -> Response:
    offer = ["application/octet-stream", *sorted(set(web.FRAME_TYPES.values()))]
    accepted = _accepted(request.headers.get("accept"), offer[0], offer=offer)
    row = archive.instances(who, "dicom-retrieve", study=study, series=series, sop=sop)[0]
    ds = archive.dataset(row)
    if "PixelData" not in ds:
        raise Invalid(f"instance {sop} has no pixel data (it is {ds.SOPClassUID.name})")
    try:
        numbers = web.frame_numbers(frames, web.frame_count(ds))
    except QueryError as exc:
        raise Invalid(str(exc)) from None
    stored_type = web.FRAME_TYPES.get(row.transfer_syntax)
    usable = [f.media_type for f in accepted if f.media_type in (offer[0], stored_type)]
    if not usable:
        raise NotAcceptable(
            f"the frames of {sop} can be sent as application/octet-stream"
            + (f" or {stored_type}" if stored_type else "")
        )
    media = usable[0]
    archive.record(who, "dicom-retrieve", [row])
    boundary = web.new_boundary()
    parts = []
    for n in numbers:
        content_type, data = web.frame_bytes(ds, n, media)
        parts.append(web.Part(content_type, partial(iter, [data])))
    body = b"".join(web.multipart_body(parts, boundary))
    part_type = parts[0].content_type.split(";")[0]
    return Response(body, media_type=web.multipart_type(part_type, boundary))


def _picture_type(request: Request) -> str:
    """From the Accept header, or the ``accept`` query parameter (PS3.18 8.3.3.1) that a link
    can carry."""
    wanted = request.query_params.get("accept") or request.headers.get("accept")
    accepted = _accepted(wanted, "image/jpeg", offer=list(IMAGE_TYPES))
    return accepted[0].media_type


def _rendered(
    media: str,
    archive: Archive,
    who: Principal,
    study: str,
    series: str,
    sop: str,
    frame: int,
    window: str | None,
    viewport: str | None,
    quality: int,
) -> Response:
    row = archive.instances(who, "dicom-render", study=study, series=series, sop=sop)[0]
    ds = archive.dataset(row)
    try:
        if is_ecg(ds):
            image = render.render_ecg(ds, fmt=IMAGE_TYPES[media])
        else:
            image = render.render_frame(
                ds,
                frame - 1,
                fmt=IMAGE_TYPES[media],
                window=_pair(window, "window"),
                size=_size(viewport),
                quality=quality,
            )
    except (ValueError, IndexError) as exc:
        raise Invalid(f"cannot render {sop}: {exc}") from None
    archive.record(who, "dicom-render", [row])
    return Response(image, media_type=media)


def _pair(value: str | None, name: str) -> tuple[float, float] | None:
    """``window=center,width[,function]`` -> (center, width)."""
    if not value:
        return None
    parts = value.split(",")
    try:
        return float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise Invalid(f"{name} must be 'center,width', not {value!r}") from None


def _size(viewport: str | None) -> tuple[int, int] | None:
    if not viewport:
        return None
    parts = viewport.split(",")
    try:
        size = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise Invalid(f"viewport must be 'width,height', not {viewport!r}") from None
    if min(size) <= 0 or max(size) > 8192:
        raise Invalid("viewport sides must be between 1 and 8192 pixels")
    return size


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/rendered",
    summary="WADO-RS: an instance as a picture (an ECG as a 12-lead tracing)",
)
def rendered_instance(
    study: str,
    series: str,
    sop: str,
    request: Request,
    archive: ArchiveDep,
    who: PrincipalDep,
    window: str | None = None,
    viewport: str | None = None,
    quality: Annotated[int, Query(ge=1, le=100)] = 90,
) -> Response:
    media = _picture_type(request)
    return _rendered(media, archive, who, study, series, sop, 1, window, viewport, quality)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
    summary="WADO-RS: one frame as a picture",
)
def rendered_frame(
    study: str,
    series: str,
    sop: str,
    frame: int,
    request: Request,
    archive: ArchiveDep,
    who: PrincipalDep,
    window: str | None = None,
    viewport: str | None = None,
    quality: Annotated[int, Query(ge=1, le=100)] = 90,
) -> Response:
    if frame < 1:
        raise Invalid("frames are numbered from 1")
    media = _picture_type(request)
    return _rendered(media, archive, who, study, series, sop, frame, window, viewport, quality)


# -- WADO-URI ----------------------------------------------------------------------------------


@router.get("/wado", summary="WADO-URI (PS3.18 9): one instance, as a file or a picture")
def wado_uri(
    request: Request,
    archive: ArchiveDep,
    who: PrincipalDep,
    requestType: str,  # noqa: N803 - the standard's parameter names
    studyUID: str,  # noqa: N803
    seriesUID: str,  # noqa: N803
    objectUID: str,  # noqa: N803
    contentType: str = "image/jpeg",  # noqa: N803
    frameNumber: Annotated[int, Query(ge=1)] = 1,  # noqa: N803
    windowCenter: float | None = None,  # noqa: N803
    windowWidth: float | None = None,  # noqa: N803
    rows: int | None = None,
    columns: int | None = None,
    imageQuality: Annotated[int, Query(ge=1, le=100)] = 90,  # noqa: N803
    transferSyntax: str | None = None,  # noqa: N803
) -> Response:
    if requestType != "WADO":
        raise Invalid("requestType must be WADO")
    media = contentType.split(",")[0].strip().lower()
    if media == DICOM:
        row = archive.instances(
            who, "dicom-retrieve", study=studyUID, series=seriesUID, sop=objectUID
        )[0]
        # PS3.18 9.1.2.5.2: Explicit VR Little Endian unless the client names another ('*': any)
        form = web.Accepted(DICOM, transferSyntax, False)
        syntax = _syntax_for(row.transfer_syntax, [form])
        archive.record(who, "dicom-retrieve", [row])
        if syntax is None:
            return StreamingResponse(archive.chunks(row), media_type=DICOM)
        return Response(web.transcoded(archive.dataset(row), syntax), media_type=DICOM)
    if media not in IMAGE_TYPES:
        raise NotAcceptable(
            f"contentType {media} is not offered: application/dicom, image/jpeg, image/png"
        )
    window = None
    if windowCenter is not None and windowWidth is not None:
        window = f"{windowCenter},{windowWidth}"
    viewport = f"{columns or rows},{rows or columns}" if (rows or columns) else None
    return _rendered(
        media,
        archive,
        who,
        studyUID,
        seriesUID,
        objectUID,
        frameNumber,
        window,
        viewport,
        imageQuality,
    )


# -- STOW-RS -----------------------------------------------------------------------------------


async def _stow(request: Request, ctx: ContextDep, who: Principal, study: str | None) -> Response:
    reach = ctx.records.scope(who, "ImagingStudy", Action.CREATE)  # refuses who may not store
    content_type = request.headers.get("content-type", "")
    try:
        reader = web.PartReader(content_type, ctx.dicom.store.scratch())
    except ValueError as exc:
        raise UnsupportedMediaType(
            f'{exc}; send multipart/related; type="application/dicom"'
        ) from None
    limit, received = ctx.settings.dicom_stow_max_bytes, 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise TooLarge(
                    f"the request body is larger than {limit} bytes "
                    "(YILIAN_DICOM_STOW_MAX_BYTES); send the study in several requests"
                )
            reader.write(chunk)
        parts = reader.finish()
    except Exception:
        reader.discard()
        raise
    if not parts:
        raise Invalid("the body holds no part; send one application/dicom part per instance")
    origin = Origin("stow", None, who.source, who.organization, user=who.username, reach=reach)
    try:
        stored, failed = await run_in_threadpool(_file_parts, ctx, parts, origin, study)
    finally:  # filed parts were moved into the store; nothing else stays in scratch
        for _, path in parts:
            path.unlink(missing_ok=True)
    body = web.stow_response(_base(request), stored, failed)
    status = 200 if not failed else (202 if stored else 409)
    return _json(body, status)


def _file_parts(
    ctx: ContextDep, parts: list[tuple[str, Any]], origin: Origin, study: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for media, path in parts:
        if media != DICOM:
            failed.append({"status": 0xC000, "reason": f"part of type {media} is not {DICOM}"})
            path.unlink(missing_ok=True)
            continue
        if study is not None and not _in_study(path, study):
            failed.append({"status": 0xA900, "reason": f"instance is not of study {study}"})
            path.unlink(missing_ok=True)
            continue
        outcome = ctx.dicom.file(path, origin)
        found = {
            "sop_uid": outcome.sop_uid,
            "sop_class": outcome.sop_class,
            "study_uid": outcome.study_uid,
            "series_uid": outcome.series_uid,
            "status": outcome.status,
            "reason": outcome.reason,
        }
        (stored if outcome.ok else failed).append(found)
    return stored, failed


def _in_study(path: Any, study: str) -> bool:
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
    except Exception:  # noqa: BLE001 - unreadable: the ingest says so
        return True
    return str(ds.get("StudyInstanceUID", "")) == study


@router.post("/studies", summary="STOW-RS: store instances (multipart/related application/dicom)")
async def store_instances(request: Request, ctx: ContextDep, who: PrincipalDep) -> Response:
    return await _stow(request, ctx, who, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_study_instances(
    study: str, request: Request, ctx: ContextDep, who: PrincipalDep
) -> Response:
    return await _stow(request, ctx, who, study)

"""DICOM index rows -> ImagingStudy, after the FHIR R4 ImagingStudy mapping to DICOM
(hl7.org/fhir/R4/imagingstudy-mappings.html#dicom): study, series and instance UIDs as
``urn:oid:`` identifiers and uids, modalities in the DCM coding system, counts computed from
what the index holds."""

from __future__ import annotations

from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
UID_SYSTEM = "urn:dicom:uid"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def study_identifier(study_uid: str) -> tuple[str, str]:
    return UID_SYSTEM, f"urn:oid:{study_uid}"


def fhir_datetime(date: str | None, time: str | None, tz: str) -> str | None:
    """DICOM DA + TM -> FHIR dateTime (the time zone of the sender's site when it has none)."""
    if not date or len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = (time or "").split(".")[0].replace(":", "")
    if len(digits) < 4 or not digits.isdigit():
        return day
    seconds = digits[4:6] or "00"
    return f"{day}T{digits[:2]}:{digits[2:4]}:{seconds}{tz}"


def imaging_study(rows: list[Any], *, subject: str, tz: str = "+08:00") -> dict[str, Any]:
    """The ImagingStudy of the study whose index rows (``dicom.index.study_rows``) are given."""
    first = rows[0]
    series: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = series.get(r.series_uid)
        if s is None:
            s = series[r.series_uid] = {"uid": r.series_uid, "instance": []}
            if r.series_number is not None:
                s["number"] = r.series_number
            if r.modality:
                s["modality"] = {"system": DCM, "code": r.modality}
            else:  # the element is required in R4; OT is DICOM's "other"
                s["modality"] = {"system": DCM, "code": "OT"}
            if r.series_description:
                s["description"] = r.series_description
            if r.body_part:
                s["bodySite"] = {"display": r.body_part}
        instance: dict[str, Any] = {
            "uid": r.sop_uid,
            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{r.sop_class}"},
        }
        if r.instance_number is not None:
            instance["number"] = r.instance_number
        s["instance"].append(instance)
    for s in series.values():
        s["numberOfInstances"] = len(s["instance"])
    system, value = study_identifier(first.study_uid)
    identifiers: list[dict[str, Any]] = [{"system": system, "value": value}]
    if first.accession:
        identifiers.append(
            {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "value": first.accession,
            }
        )
    body: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": subject},
        "numberOfSeries": len(series),
        "numberOfInstances": len(rows),
        "series": list(series.values()),
    }
    modalities = sorted({r.modality for r in rows if r.modality})
    if modalities:
        body["modality"] = [{"system": DCM, "code": m} for m in modalities]
    started = fhir_datetime(first.study_date, first.study_time, tz)
    if started:
        body["started"] = started
    if first.study_description:
        body["description"] = first.study_description
    referrer = " ".join((first.referring or "").replace("=", "^").split("^")).strip()
    if referrer:
        body["referrer"] = {"display": " ".join(referrer.split())}
    return body

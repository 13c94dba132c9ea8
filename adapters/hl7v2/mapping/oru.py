"""ORU^R01 -> DiagnosticReport with an Observation per OBX (v2-to-FHIR IG: ORU_R01,
OBR[DiagnosticReport], OBX[Observation]); ED values -> DocumentReference and presentedForm."""

from __future__ import annotations

import re
from typing import Any

from adapters.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    Hl7Error,
    Location,
)
from adapters.hl7v2.mapping import datatypes as dt
from adapters.hl7v2.mapping.attachment import ed as ed_attachment
from adapters.hl7v2.mapping.encounter import encounter_entry
from adapters.hl7v2.mapping.patient import patient_entry
from adapters.hl7v2.mapping.translation import (
    Context,
    Entry,
    Translation,
    check_event,
    new_key,
    ref,
)
from adapters.hl7v2.message import Message, Segment

OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"

OBX_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "registered",
    "I": "registered",
    "S": "preliminary",
    "X": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "U": "final",
    "A": "amended",
    "N": "unknown",
    "O": "registered",
}
OBR_STATUS = {
    "O": "registered",
    "I": "registered",
    "S": "partial",
    "A": "partial",
    "P": "preliminary",
    "C": "corrected",
    "R": "partial",
    "F": "final",
    "X": "cancelled",
    "Y": "unknown",
    "Z": "unknown",
}
SECTION_CATEGORY = {
    "LAB": "laboratory",
    "HM": "laboratory",
    "CH": "laboratory",
    "BLB": "laboratory",
    "MB": "laboratory",
    "SR": "laboratory",
    "URN": "laboratory",
    "EC": "procedure",
    "CUS": "procedure",
    "RAD": "imaging",
    "CT": "imaging",
    "US": "imaging",
    "NMR": "imaging",
    "VS": "vital-signs",
}
# unit strings lab analyzers and ECG carts send, with their UCUM codes
UCUM_UNITS = {
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "mg/dl": "mg/dL",
    "g/l": "g/L",
    "g/dl": "g/dL",
    "u/l": "U/L",
    "iu/l": "[IU]/L",
    "%": "%",
    "mmhg": "mm[Hg]",
    "/min": "/min",
    "bpm": "/min",
    "次/分": "/min",
    "ms": "ms",
    "s": "s",
    "mm/h": "mm/h",
    "10*9/l": "10*9/L",
    "10^9/l": "10*9/L",
    "10*12/l": "10*12/L",
    "10^12/l": "10*12/L",
    "kg": "kg",
    "cm": "cm",
    "cel": "Cel",
    "℃": "Cel",
    "mv": "mV",
    "uv": "uV",
    "µv": "uV",
    "hz": "Hz",
    "deg": "deg",
    "°": "deg",
    "fl": "fL",
    "pg": "pg",
    "mg/l": "mg/L",
    "ng/ml": "ng/mL",
    "pmol/l": "pmol/L",
    "mmol/mol": "mmol/mol",
}
SAMPLING_RATE_CODES = {"MDC_ATTR_SAMP_RATE", "8637-8", "SAMP_RATE", "SAMPLING_RATE"}
_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*[-~]\s*(-?\d+(?:\.\d+)?)\s*$")
_BOUND = re.compile(r"^\s*([<>]=?)\s*(-?\d+(?:\.\d+)?)\s*$")


def translate(message: Message, ctx: Context) -> Translation:
    check_event(message, ("R01", ""))
    translation = Translation(message)
    pid = message.first("PID")
    if pid is None:
        raise Hl7Error("ORU^R01 needs a PID segment", Location("PID"), REQUIRED_FIELD_MISSING)
    patient_key = patient_entry(pid, ctx, translation)
    encounter_key = _encounter(message, patient_key, ctx, translation)
    orc: Segment | None = None
    found_obr = False
    for seg in message.segments:
        if seg.name == "ORC":
            orc = seg
            message.mark(seg)
        elif seg.name == "OBR":
            found_obr = True
            message.mark(seg)
            members = _members(message, seg)
            _report(seg, orc, members, patient_key, encounter_key, ctx, translation)
            orc = None
    if not found_obr:
        raise Hl7Error(
            "ORU^R01 needs at least one OBR segment", Location("OBR"), REQUIRED_FIELD_MISSING
        )
    return translation


def _members(message: Message, obr: Segment) -> list[Segment]:
    out = []
    for seg in message.segments[obr.sequence :]:
        if seg.name in ("OBR", "ORC", "PID"):
            break
        if seg.name in ("OBX", "NTE"):
            out.append(seg)
            message.mark(seg)
    return out


def _encounter(message: Message, patient_key: str, ctx: Context, tr: Translation) -> str | None:
    pv1 = message.first("PV1")
    entry = encounter_entry(pv1, None, patient_key, ctx, only_if_new=True) if pv1 else None
    return tr.add(entry) if entry else None


def _order_ids(obr: Segment, orc: Segment | None, ctx: Context) -> list[dict[str, Any]]:
    ids = []
    for kind, n_obr, n_orc in (("PLAC", 2, 2), ("FILL", 3, 3)):
        value = obr.value(n_obr) or (orc.value(n_orc) if orc else "")
        if value:
            ids.append(
                {
                    "type": {"coding": [{"system": dt.V2_TABLE + "0203", "code": kind}]},
                    "system": f"urn:yilian:order:{ctx.sender_facility}:{kind.lower()}",
                    "value": value,
                }
            )
    return ids


def _report(
    obr: Segment,
    orc: Segment | None,
    members: list[Segment],
    patient_key: str,
    encounter_key: str | None,
    ctx: Context,
    tr: Translation,
) -> None:
    code = dt.cwe(obr.components(4))
    if not code:
        raise Hl7Error(
            "OBR-4 (universal service identifier) is required", obr.where(4), REQUIRED_FIELD_MISSING
        )
    identifiers = _order_ids(obr, orc, ctx)
    order_key = next((i["value"] for i in reversed(identifiers)), "")
    section = obr.value(24).upper()
    category = SECTION_CATEGORY.get(section)
    effective = dt.dtm(obr.value(7), obr.where(7), ctx.default_tz)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "code": code,
        "subject": ref(patient_key),
    }
    if identifiers:
        report["identifier"] = identifiers
    if section:
        report["category"] = [{"coding": [{"system": dt.V2_TABLE + "0074", "code": section}]}]
    if encounter_key:
        report["encounter"] = ref(encounter_key)
    if effective:
        report["effectiveDateTime"] = effective
    issued = dt.dtm(obr.value(22), obr.where(22), ctx.default_tz)
    if issued and "T" in issued:
        report["issued"] = issued
    if ctx.organization:
        report["performer"] = [{"reference": f"Organization/{ctx.organization}"}]
    interpreter = dt.xcn(obr.components(32))
    if interpreter:
        report["resultsInterpreter"] = [interpreter]

    results: list[dict[str, str]] = []
    statuses: list[str] = []
    conclusion: list[str] = []
    presented: list[dict[str, Any]] = []
    rate: float | None = None
    last_obs: dict[str, Any] | None = None
    for seg in members:
        if seg.name == "NTE":
            text = dt.text(seg, 3)
            if last_obs is not None:
                last_obs.setdefault("note", []).append({"text": text})
            elif text:
                conclusion.append(text)
            continue
        value_type = seg.value(2).upper()
        status = OBX_STATUS.get(seg.value(11).upper(), "final")
        statuses.append(seg.value(11).upper())
        if value_type == "ED":
            attachment = ed_attachment(seg)
            if attachment:
                presented.append(attachment)
                tr.add(_document(seg, attachment, patient_key, encounter_key, ctx))
            last_obs = None
            continue
        obs = _observation(
            seg, value_type, status, patient_key, encounter_key, effective, category, rate, ctx, tr
        )
        if _is_sampling_rate(seg):
            rate = _number(seg, seg.value(5))
        last_obs = obs.body
        if order_key:
            obs.match = [
                (
                    f"urn:yilian:obx:{ctx.sender_facility}",
                    f"{order_key}|{seg.value(3)}|{seg.value(4)}",
                )
            ]
            obs.body["identifier"] = [{"system": obs.match[0][0], "value": obs.match[0][1]}]
        results.append(ref(tr.add(obs)))
    report["status"] = OBR_STATUS.get(obr.value(25).upper()) or _derived_status(statuses)
    if results:
        report["result"] = results
    if conclusion:
        report["conclusion"] = "\n".join(conclusion)
    if presented:
        report["presentedForm"] = presented
    match = [(i["system"], i["value"]) for i in reversed(identifiers)]
    tr.add(Entry(new_key(), "DiagnosticReport", report, match=match))


def _derived_status(statuses: list[str]) -> str:
    if statuses and all(s == "F" for s in statuses):
        return "final"
    if "C" in statuses:
        return "corrected"
    if "P" in statuses or "S" in statuses:
        return "preliminary"
    return "unknown"


def _is_sampling_rate(obx: Segment) -> bool:
    comps = obx.components(3)
    return bool(comps) and (comps[0].upper() in SAMPLING_RATE_CODES)


def _observation(
    obx: Segment,
    value_type: str,
    status: str,
    patient_key: str,
    encounter_key: str | None,
    effective: str | None,
    category: str | None,
    rate: float | None,
    ctx: Context,
    tr: Translation,
) -> Entry:
    code = dt.cwe(obx.components(3))
    if not code:
        raise Hl7Error(
            "OBX-3 (observation identifier) is required", obx.where(3), REQUIRED_FIELD_MISSING
        )
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": status,
        "code": code,
        "subject": ref(patient_key),
    }
    if category:
        body["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": category}]}]
    if encounter_key:
        body["encounter"] = ref(encounter_key)
    when = dt.dtm(obx.value(14), obx.where(14), ctx.default_tz) or effective
    if when:
        body["effectiveDateTime"] = when
    if obx.reps(5):
        _value(obx, value_type, body, rate, tr)
    elif status not in ("cancelled", "entered-in-error"):
        body["dataAbsentReason"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "code": "unknown",
                }
            ]
        }
    interpretation = [
        {"coding": [{"system": INTERPRETATION, "code": rep[0][0]}]}
        for rep in obx.reps(8)
        if rep and rep[0][0]
    ]
    if interpretation:
        body["interpretation"] = interpretation
    observer = dt.xcn(obx.components(16))
    if observer:
        body["performer"] = [observer]
    method = dt.cwe(obx.components(17))
    if method:
        body["method"] = method
    device = obx.value(18)
    if device:
        body["device"] = {"display": device}
    return Entry(new_key(), "Observation", body)


def _number(obx: Segment, text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise Hl7Error(
            f"'{text}' is not a number (value type {obx.value(2)})", obx.where(5), DATA_TYPE_ERROR
        ) from None


def _quantity(obx: Segment, number: float) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": number}
    units = obx.components(6)
    if units and (units[0] or (len(units) > 1 and units[1])):
        unit = units[0] or units[1]
        quantity["unit"] = unit
        system = units[2].upper() if len(units) > 2 else ""
        ucum = unit if system in ("UCUM", "ISO+") else UCUM_UNITS.get(unit.lower())
        if ucum:
            quantity["system"] = UCUM
            quantity["code"] = ucum
    return quantity


def _value(
    obx: Segment, value_type: str, body: dict[str, Any], rate: float | None, tr: Translation
) -> None:
    reps = obx.reps(5)
    sub = obx.seps[4]
    # the first repetition that holds something (an empty one keeps its place, not its meaning)
    first = next((rep for rep in reps if any(c for comp in rep for c in comp)), reps[0])
    comps = [sub.join(c) for c in first]
    where = obx.where(5)
    if value_type == "NM":
        body["valueQuantity"] = _quantity(obx, _number(obx, comps[0]))
        _reference_range(obx, body)
    elif value_type in ("ST", "TX", "FT"):
        body["valueString"] = dt.text(obx, 5)
    elif value_type in ("CE", "CWE", "CNE", "CF"):
        concept = dt.cwe(comps)
        if concept:
            body["valueCodeableConcept"] = concept
    elif value_type in ("DT", "DTM", "TS"):
        body["valueDateTime"] = dt.dtm(comps[0], where)
    elif value_type == "TM":
        digits = comps[0].split("+")[0].split("-")[0]
        if not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d+)?)?)?", digits):
            raise Hl7Error(f"'{comps[0]}' is not an HL7 time (HHMMSS)", where, DATA_TYPE_ERROR)
        digits = (digits + "0000")[:6]
        body["valueTime"] = f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}"
    elif value_type == "SN":
        _structured_numeric(obx, comps, body)
    elif value_type == "NR":
        low, high = (comps + ["", ""])[:2]
        body["valueRange"] = {
            k: _quantity(obx, _number(obx, v)) for k, v in (("low", low), ("high", high)) if v
        }
    elif value_type == "NA":
        numbers = [_number(obx, c) for c in comps if c != ""]
        if rate:
            unit = (obx.components(6) or ["1"])[0] or "1"
            body["valueSampledData"] = {
                "origin": {"value": 0, "unit": unit},
                "period": round(1000.0 / rate, 6),
                "dimensions": 1,
                "data": " ".join(_plain(n) for n in numbers),
            }
        else:
            body["valueString"] = " ".join(_plain(n) for n in numbers)
            tr.warnings.append(
                f"{where}: numeric array without a sampling rate in its OBR group "
                "(send an OBX MDC_ATTR_SAMP_RATE in Hz first); kept as text"
            )
    else:
        body["valueString"] = "^".join(comps)
        tr.warnings.append(
            f"{where}: value type {value_type or '(empty)'} is not mapped; kept as text"
        )


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else repr(number)


def _structured_numeric(obx: Segment, comps: list[str], body: dict[str, Any]) -> None:
    comparator, num1, separator, num2 = (comps + ["", "", "", ""])[:4]
    if separator in ("-", "~") and num2:
        body["valueRange"] = {
            "low": _quantity(obx, _number(obx, num1)),
            "high": _quantity(obx, _number(obx, num2)),
        }
    elif separator in (":", "/") and num2:
        body["valueRatio"] = {
            "numerator": {"value": _number(obx, num1)},
            "denominator": {"value": _number(obx, num2)},
        }
    else:
        quantity = _quantity(obx, _number(obx, num1))
        if comparator in ("<", "<=", ">", ">="):
            quantity["comparator"] = comparator
        elif comparator and comparator != "=":
            raise Hl7Error(
                f"SN comparator '{comparator}' is not one of < <= > >= =",
                obx.where(5, 1),
                DATA_TYPE_ERROR,
            )
        body["valueQuantity"] = quantity


def _reference_range(obx: Segment, body: dict[str, Any]) -> None:
    text = obx.value(7)
    if not text:
        return
    unit = {k: v for k, v in _quantity(obx, 0).items() if k != "value"}
    match = _RANGE.match(text)
    bound = _BOUND.match(text)
    if match:
        low, high = float(match.group(1)), float(match.group(2))
        body["referenceRange"] = [{"low": {"value": low, **unit}, "high": {"value": high, **unit}}]
    elif bound:
        side = "low" if bound.group(1).startswith(">") else "high"
        body["referenceRange"] = [{side: {"value": float(bound.group(2)), **unit}, "text": text}]
    else:
        body["referenceRange"] = [{"text": text}]


def _document(
    obx: Segment,
    attachment: dict[str, Any],
    patient_key: str,
    encounter_key: str | None,
    ctx: Context,
) -> Entry:
    body: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": ref(patient_key),
        "content": [{"attachment": attachment}],
    }
    doc_type = dt.cwe(obx.components(3))
    if doc_type:
        body["type"] = doc_type
    if encounter_key:
        body["context"] = {"encounter": [ref(encounter_key)]}
    if ctx.organization:
        body["custodian"] = {"reference": f"Organization/{ctx.organization}"}
    return Entry(new_key(), "DocumentReference", body)

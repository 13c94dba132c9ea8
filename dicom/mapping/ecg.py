"""ECG waveform objects (PS3.3 A.34) -> FHIR R4: a waveform Observation, measurement Observations
and a DiagnosticReport.

The mapping follows the FHIR R4 ECG example (observation-example-sample-data: one component per
lead holding SampledData, category ``procedure``) and DICOM PS3.16: leads are coded with the MDC
codes of CID 3001 (SCP-ECG lead codes ``5.6.3-9-N`` become MDC ``2:N``, the numbering the two
share), measurements with LOINC plus the MDC term of CIDs 3227/3228/3229 and the concept the
device sent. SampledData carries the raw integers: value = origin + factor * data, with origin the
Channel Baseline and factor Channel Sensitivity x Channel Sensitivity Correction Factor.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from array import array
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

log = logging.getLogger(__name__)

# fmt: off
ECG_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.9.1.2",  # General ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.9.1.3",  # Ambulatory ECG Waveform Storage
    "1.2.840.10008.5.1.4.1.1.9.1.4",  # General 32-bit ECG Waveform Storage
})
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MDC = "urn:oid:2.16.840.1.113883.6.24"  # ISO/IEEE 11073-10101, DICOM's designator "MDC"
UID_SYSTEM = "urn:dicom:uid"
CODING_SYSTEMS = {"LN": LOINC, "UCUM": UCUM, "MDC": MDC, "SCT": "http://snomed.info/sct",
                  "DCM": "http://dicom.nema.org/resources/ontology/DCM"}
# LOINC 11524-6 "EKG study" names the whole resting ECG; the R4 ECG examples and most ECG
# DiagnosticReports use it, here for both the tracing and the report.
ECG_STUDY = {"system": LOINC, "code": "11524-6", "display": "EKG study"}
PROCEDURE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                         "code": "procedure", "display": "Procedure"}]}
# US Core's report category for cardiology, and HL7 v2 table 0074 "EC" (v2 "CG" is cytogenetics)
CARDIOLOGY = {"coding": [
    {"system": LOINC, "code": "LP29708-2", "display": "Cardiology"},
    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "EC",
     "display": "Electrocardiac (e.g., EKG, EEC, Holter)"},
]}
# key -> (LOINC code or None, display, MDC global measurement term of PS3.16 CIDs 3227-3229)
MEASUREMENTS: dict[str, tuple[str | None, str, str]] = {
    "hr": ("8867-4", "Heart rate", "2:16770"),  # MDC_ECG_HEART_RATE
    "rr": (None, "RR interval", "2:16168"),
    "pp": (None, "PP interval", "2:16140"),
    "pr": ("8625-6", "PR interval", "2:15872"),
    "qrs": ("8633-0", "QRS duration", "2:16156"),
    "qt": ("8634-8", "QT interval", "2:16160"),
    "qtc": ("8636-3", "QTc interval", "2:15876"),
    "p_axis": ("8626-4", "P wave axis", "2:16128"),
    "qrs_axis": ("8632-2", "QRS axis", "2:16132"),
    "t_axis": ("8638-9", "T wave axis", "2:16136"),
}
_BY_CODE = {
    **{("MDC", mdc): key for key, (_, _, mdc) in MEASUREMENTS.items()},
    **{("LN", loinc): key for key, (loinc, _, _) in MEASUREMENTS.items() if loinc},
    ("MDC", "2:16000"): "rr", ("MDC", "2:15880"): "qtc", ("MDC", "2:15892"): "qtc",  # 3689, 3227
    # SCP-ECG global measurement codes, as Mortara and other carts send them
    ("SCPECG", "5.10.2.1-3"): "rr", ("SCPECG", "5.10.2.1-5"): "pp", ("SCPECG", "5.13.5-7"): "pr",
    ("SCPECG", "5.13.5-9"): "qrs", ("SCPECG", "5.13.5-11"): "qt", ("SCPECG", "5.10.2.5-5"): "qtc",
    ("SCPECG", "5.10.3-11"): "p_axis", ("SCPECG", "5.10.3-13"): "qrs_axis",
    ("SCPECG", "5.10.3-15"): "t_axis",
}
_BY_MEANING = {
    **{display.lower(): key for key, (_, display, _) in MEASUREMENTS.items()},
    "ventricular rate": "hr", "vent rate": "hr", "qtc": "qtc", "p axis": "p_axis",
    "t axis": "t_axis",
}
_UCUM_RATE = {"bpm", "/min", "1/min", "{beats}/min", "{beat}/min", "{H.B.}/min"}
_MDC_LEADS = {c.value: c.meaning for c in codes.CID3001.concepts.values()}  # PS3.16 CID 3001
_SCPECG_LEAD = re.compile(r"^5\.6\.3-9-(\d+)$")
_SAMPLE_TYPES = {  # (WaveformBitsAllocated, WaveformSampleInterpretation) -> array typecode
    (8, "SB"): "b", (8, "UB"): "B", (16, "SS"): "h", (16, "US"): "H",
    (32, "SL"): "i", (32, "UL"): "I", (64, "SV"): "q", (64, "UV"): "Q",
}
# fmt: on
_DT = re.compile(r"^(\d{4})(\d\d)?(\d\d)?(\d\d)?(\d\d)?(\d\d)?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def is_ecg(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) in ECG_SOP_CLASSES


def ecg_resources(
    ds: Dataset,
    *,
    subject: str,
    new_id: Callable[[], str],
    imaging_study: str | None = None,
    performer: str | None = None,
    default_tz: str = "+08:00",
    warnings: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The waveform Observation, one Observation per measurement, then the DiagnosticReport.

    Raises ValueError (naming the attribute) when the tracing cannot be read. An annotation that
    cannot be read is left out, and named in ``warnings`` when a list is given."""
    components = _lead_components(ds)
    effective = effective_datetime(ds, default_tz=default_tz)
    common: dict[str, Any] = {"subject": {"reference": subject}}
    if effective:
        common["effectiveDateTime"] = effective
    if performer:
        common["performer"] = [{"reference": performer}]

    def observation(code: dict[str, Any], **fields: Any) -> dict[str, Any]:
        head = {"resourceType": "Observation", "id": new_id(), "status": "final"}
        return head | {"category": [PROCEDURE], "code": code} | common | fields

    waveform = observation({"coding": [ECG_STUDY], "text": "12-lead ECG"})
    if ds.get("SOPInstanceUID"):
        waveform["identifier"] = [{"system": UID_SYSTEM, "value": f"urn:oid:{ds.SOPInstanceUID}"}]
    if imaging_study:
        waveform["derivedFrom"] = [{"reference": imaging_study}]
    device = " ".join(str(ds.get(k) or "") for k in ("Manufacturer", "ManufacturerModelName"))
    if device.strip():
        waveform["device"] = {"display": device.strip()}
    waveform["component"] = components
    from_waveform = {"reference": f"Observation/{waveform['id']}"}

    measurements: list[dict[str, Any]] = []
    statements: list[str] = []
    findings: list[dict[str, Any]] = []
    rr: dict[str, Any] | None = None
    for number, item in enumerate(ds.get("WaveformAnnotationSequence") or [], 1):
        try:
            if item.get("UnformattedTextValue"):
                statements.append(str(item.UnformattedTextValue).strip())
            elif item.get("NumericValue") is not None and item.get("ConceptNameCodeSequence"):
                key, code = _measurement_code(item.ConceptNameCodeSequence[0])
                value = _quantity(item)
                obs = observation(code, valueQuantity=value, derivedFrom=[from_waveform])
                measurements.append(obs)
                rr = obs if key == "rr" and rr is None else rr
            elif item.get("ConceptCodeSequence") and "ReferencedSamplePositions" not in item:
                concept = item.ConceptCodeSequence[0]  # a coded statement, e.g. a finding
                statements.append(str(concept.get("CodeMeaning") or concept.get("CodeValue")))
                findings.append({"coding": [_coding(concept)]})
            # the rest are fiducial points (P onset, QRS offset ...) of single beats: not mapped
        except ValueError as exc:
            log.warning("ECG %s: annotation %d left out: %s", ds.get("SOPInstanceUID"), number, exc)
            if warnings is not None:
                warnings.append(f"WaveformAnnotationSequence item {number} not mapped: {exc}")
    has_rate = any(c.get("code") == "8867-4" for m in measurements for c in m["code"]["coding"])
    if not has_rate and rr is not None and (rate := _rate_from_rr(rr)) is not None:
        note = f"Computed as 60000 / RR interval ({rr['valueQuantity']['value']} ms); no rate sent."
        hr = observation(
            _measurement_coding("hr"),
            valueQuantity={"value": rate, "unit": "/min", "system": UCUM, "code": "/min"},
            derivedFrom=[from_waveform, {"reference": f"Observation/{rr['id']}"}],
            note=[{"text": note}],
        )
        measurements.append(hr)

    report: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": new_id(), "status": "final"}
    report |= {"category": [CARDIOLOGY], "code": {"coding": [ECG_STUDY]}} | common
    report["result"] = [{"reference": f"Observation/{o['id']}"} for o in [waveform, *measurements]]
    if imaging_study:
        report["imagingStudy"] = [{"reference": imaging_study}]
    if any(statements):
        report["conclusion"] = "; ".join(s for s in statements if s)
    if findings:
        report["conclusionCode"] = findings
    report["presentedForm"] = [tracing_attachment(ds)]
    return [copy.deepcopy(r) for r in (waveform, *measurements, report)]  # nothing shared


def tracing_attachment(ds: Dataset) -> dict[str, Any]:
    """The printed 12-lead tracing, as the gateway's DICOMweb renders it (a path on the
    gateway's host, so it holds whatever name the gateway is reached by)."""
    path = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered?accept=image/png"
    )
    return {"contentType": "image/png", "url": path, "title": "12-lead ECG tracing"}


def effective_datetime(ds: Dataset, *, default_tz: str = "+08:00") -> str | None:
    """Acquisition DateTime, else Content Date/Time, else Study Date/Time, as a FHIR dateTime.
    A time without a zone takes Timezone Offset From UTC, else ``default_tz``."""
    offset = str(ds.get("TimezoneOffsetFromUTC") or "")
    zone = f"{offset[:3]}:{offset[3:]}" if re.fullmatch(r"[+-]\d{4}", offset) else default_tz
    candidates = [(ds.get("AcquisitionDateTime"), "")]
    candidates += [(ds.get(f"{part}Date"), ds.get(f"{part}Time")) for part in ("Content", "Study")]
    for date, time in candidates:
        if date:  # a time alone says nothing about the day
            value = _fhir_datetime((str(date) + str(time or "")).strip().replace(":", ""), zone)
            if value:
                return value
    return None


def _fhir_datetime(text: str, zone: str) -> str | None:
    match = _DT.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, own_zone = match.groups()
    try:  # a real calendar date and clock time, or nothing
        date = datetime(int(year), int(month or 1), int(day or 1))
        date.replace(hour=int(hour or 0), minute=int(minute or 0), second=int(second or 0))
    except ValueError:
        return None
    if month is None or day is None:
        return year if month is None else f"{year}-{month}"
    if hour is None:
        return f"{year}-{month}-{day}"
    clock = f"{hour}:{minute or '00'}:{second or '00'}" + (f".{fraction}" if fraction else "")
    tz = f"{own_zone[:3]}:{own_zone[3:]}" if own_zone else zone
    return f"{year}-{month}-{day}T{clock}{tz}"


def _rhythm_group(ds: Dataset) -> Dataset:
    try:
        groups = ds.get("WaveformSequence")
    except Exception as exc:  # a damaged sequence fails while pydicom parses it
        raise ValueError(f"WaveformSequence (5400,0100) cannot be read: {exc}") from None
    if not groups:
        raise ValueError("the dataset has no WaveformSequence (5400,0100): no ECG tracing")
    for group in groups:
        if str(group.get("MultiplexGroupLabel") or "").strip().upper() == "RHYTHM":
            return group
    return groups[0]


def _lead_components(ds: Dataset) -> list[dict[str, Any]]:
    """One component per channel of the rhythm group, samples as the raw integers."""
    group = _rhythm_group(ds)
    needed = ["NumberOfWaveformChannels", "NumberOfWaveformSamples", "SamplingFrequency",
              "WaveformBitsAllocated", "WaveformSampleInterpretation", "ChannelDefinitionSequence",
              "WaveformData"]  # fmt: skip
    missing = [name for name in needed if group.get(name) in (None, "", b"")]
    if missing:
        raise ValueError(f"WaveformSequence item lacks {', '.join(missing)}")
    channels, samples = int(group.NumberOfWaveformChannels), int(group.NumberOfWaveformSamples)
    bits, kind = int(group.WaveformBitsAllocated), str(group.WaveformSampleInterpretation)
    typecode = _SAMPLE_TYPES.get((bits, kind))
    if typecode is None:
        unsupported = f"WaveformSampleInterpretation {kind} (WaveformBitsAllocated {bits})"
        raise ValueError(f"{unsupported} is not supported: only linear integers, not mu/A-law")
    definitions = group.ChannelDefinitionSequence
    if len(definitions) != channels:
        raise ValueError(f"ChannelDefinitionSequence has {len(definitions)} items for {channels}"
                         " channels (NumberOfWaveformChannels)")  # fmt: skip
    frequency = _decimal(group.SamplingFrequency, "SamplingFrequency")
    if frequency <= 0:
        raise ValueError(f"SamplingFrequency {frequency} is not a positive number")
    values = array(typecode)
    expected = channels * samples * values.itemsize
    raw = bytes(group.WaveformData)
    if len(raw) < expected:
        raise ValueError(f"WaveformData holds {len(raw)} bytes; {expected} were expected")
    values.frombytes(raw[:expected])  # interleaved: C1S1, C2S1, ..., CnS1, C1S2, ...
    little = getattr(ds, "original_encoding", (None, True))[1] is not False
    if little != (sys.byteorder == "little"):
        values.byteswap()
    period = _number(Decimal(1000) / frequency)  # ms between samples
    components = []
    for index, channel in enumerate(definitions):
        sampled: dict[str, Any] = {"origin": _origin(channel), "period": period}
        if channel.get("ChannelSensitivity") is not None:
            sensitivity = _decimal(channel.ChannelSensitivity, "ChannelSensitivity")
            correction = channel.get("ChannelSensitivityCorrectionFactor") or 1
            factor = sensitivity * _decimal(correction, "ChannelSensitivityCorrectionFactor")
            sampled["factor"] = _number(factor)
        sampled["dimensions"] = 1
        sampled["data"] = " ".join(map(str, values[index::channels]))
        components.append({"code": _lead_code(channel), "valueSampledData": sampled})
    return components


def _lead_code(channel: Dataset) -> dict[str, Any]:
    sources = channel.get("ChannelSourceSequence")
    label = str(channel.get("ChannelLabel") or "")
    if not sources:
        return {"text": label or "unidentified lead"}
    source = sources[0]
    scheme, value = str(source.get("CodingSchemeDesignator")), str(source.get("CodeValue"))
    meaning = str(source.get("CodeMeaning") or label or value)
    scp = _SCPECG_LEAD.match(value) if scheme == "SCPECG" else None
    mdc = value if scheme == "MDC" else f"2:{int(scp.group(1))}" if scp else None
    if mdc and (scheme == "MDC" or mdc in _MDC_LEADS):
        display = _MDC_LEADS.get(mdc, meaning)
        return {"coding": [{"system": MDC, "code": mdc, "display": display}], "text": meaning}
    return {"coding": [_coding(source)], "text": meaning}


def _origin(channel: Dataset) -> dict[str, Any]:
    baseline = _decimal(channel.get("ChannelBaseline") or 0, "ChannelBaseline")
    units = channel.get("ChannelSensitivityUnitsSequence")
    return {"value": _number(baseline)} | (_unit(units[0]) if units else {})


def _measurement_code(concept: Dataset) -> tuple[str | None, dict[str, Any]]:
    scheme, value = str(concept.get("CodingSchemeDesignator")), str(concept.get("CodeValue"))
    meaning = str(concept.get("CodeMeaning") or value)
    key = _BY_CODE.get((scheme, value)) or _BY_MEANING.get(meaning.strip().lower())
    code = _measurement_coding(key) if key else {"coding": []}
    original = _coding(concept)  # what the device sent, unless it is one of the codings above
    if original not in [{k: c[k] for k in original if k in c} for c in code["coding"]]:
        code["coding"].append(original)
    code["text"] = meaning
    return key, code


def _measurement_coding(key: str) -> dict[str, Any]:
    loinc, display, mdc = MEASUREMENTS[key]
    coding = [{"system": LOINC, "code": loinc, "display": display}] if loinc else []
    coding.append({"system": MDC, "code": mdc, "display": display})
    return {"coding": coding, "text": display}


def _quantity(item: Dataset) -> dict[str, Any]:
    number = item.NumericValue
    if isinstance(number, MultiValue):  # Numeric Value may hold several; the first is the value
        number = number[0]
    units = item.get("MeasurementUnitsCodeSequence")
    value = _number(_decimal(number, "NumericValue"))
    return {"value": value} | (_unit(units[0]) if units else {})


def _unit(unit: Dataset) -> dict[str, Any]:
    value = str(unit.get("CodeValue") or "")
    if str(unit.get("CodingSchemeDesignator")) != "UCUM":
        return {"unit": str(unit.get("CodeMeaning") or value)}
    value = "/min" if value in _UCUM_RATE else value
    return {"unit": value, "system": UCUM, "code": value}


def _rate_from_rr(rr: dict[str, Any]) -> int | float | None:
    quantity = rr["valueQuantity"]
    if quantity.get("code") != "ms" or quantity["value"] <= 0:
        return None
    return _number(round(Decimal(60000) / Decimal(str(quantity["value"])), 1))


def _coding(concept: Dataset) -> dict[str, Any]:
    coding: dict[str, Any] = {}
    system = CODING_SYSTEMS.get(str(concept.get("CodingSchemeDesignator")))
    if system:  # a scheme with no known URI (SCPECG) keeps code and display only
        coding["system"] = system
    coding["code"] = str(concept.get("CodeValue") or concept.get("LongCodeValue") or "")
    if concept.get("CodeMeaning"):
        coding["display"] = str(concept.CodeMeaning)
    return coding


def _decimal(value: Any, name: str) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:  # decimal.InvalidOperation
        number = Decimal("NaN")
    if not number.is_finite():
        raise ValueError(f"{name} {str(value)[:20]!r} is not a number")
    return number


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)

"""ECG waveform -> FHIR: checked against pydicom's real Mortara 12-lead sample, with expected
values read out of the file independently of the mapping."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dicom.mapping import ecg
from records import fhirtypes
from tests.fhir_schema import r4_errors

MDC = "urn:oid:2.16.840.1.113883.6.24"
LOINC = "http://loinc.org"
# the file's lead order (I, II, III, aVR, aVL, aVF, V1-V6) as MDC codes of PS3.16 CID 3001
EXPECTED_LEADS = ["2:1", "2:2", "2:61", "2:62", "2:63", "2:64", "2:3", "2:4", "2:5", "2:6", "2:7"]
EXPECTED_LEADS.append("2:8")
# the device's concept meaning -> LOINC code (None: no LOINC code, MDC and original only)
EXPECTED_LOINC = {
    "RR Interval": None,
    "PP Interval": None,
    "PR Interval": "8625-6",
    "QRS Duration": "8633-0",
    "QT Interval": "8634-8",
    "QTc Interval": "8636-3",
    "P Axis": "8626-4",
    "QRS Axis": "8632-2",
    "T Axis": "8638-9",
}


def sample() -> Dataset:
    path = get_testdata_file("waveform_ecg.dcm", download=False)
    assert path, "pydicom's test file waveform_ecg.dcm is missing"
    return dcmread(path)


def resources(ds: Dataset, **kwargs: Any) -> list[dict[str, Any]]:
    counter = itertools.count(1)
    return ecg.ecg_resources(
        ds, subject="Patient/p-1", new_id=lambda: f"id-{next(counter)}", **kwargs
    )


def rhythm_index(ds: Dataset) -> int:
    labels = [str(group.get("MultiplexGroupLabel", "")) for group in ds.WaveformSequence]
    return labels.index("RHYTHM")


def numeric_annotations(ds: Dataset) -> dict[str, tuple[float, str, str]]:
    """meaning -> (value, UCUM unit, device code value), read straight from the dataset."""
    found = {}
    for item in ds.WaveformAnnotationSequence:
        if "NumericValue" in item:
            concept = item.ConceptNameCodeSequence[0]
            unit = item.MeasurementUnitsCodeSequence[0].CodeValue
            found[concept.CodeMeaning] = (float(item.NumericValue), unit, concept.CodeValue)
    return found


def by_code(bodies: list[dict[str, Any]], system: str, code: str) -> list[dict[str, Any]]:
    return [
        b
        for b in bodies
        if b["resourceType"] == "Observation"
        and any(c.get("system") == system and c["code"] == code for c in b["code"]["coding"])
    ]


def test_is_ecg_by_sop_class() -> None:
    ds = sample()
    assert ecg.is_ecg(ds)
    assert "1.2.840.10008.5.1.4.1.1.9.1.2" in ecg.ECG_SOP_CLASSES
    assert "1.2.840.10008.5.1.4.1.1.9.1.3" in ecg.ECG_SOP_CLASSES
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert not ecg.is_ecg(ds)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.9.2.1"  # Hemodynamic Waveform Storage
    assert not ecg.is_ecg(ds)


def test_one_component_per_rhythm_lead_with_mdc_codes_in_file_order() -> None:
    ds = sample()
    waveform = resources(ds)[0]
    assert waveform["code"]["coding"][0] == {
        "system": LOINC,
        "code": "11524-6",
        "display": "EKG study",
    }
    components = waveform["component"]
    assert len(components) == 12
    assert [c["code"]["coding"][0]["code"] for c in components] == EXPECTED_LEADS
    assert {c["code"]["coding"][0]["system"] for c in components} == {MDC}
    group = ds.WaveformSequence[rhythm_index(ds)]
    for component, channel in zip(components, group.ChannelDefinitionSequence, strict=True):
        source = channel.ChannelSourceSequence[0]
        # the SCP-ECG lead number is the MDC term code
        assert component["code"]["coding"][0]["code"] == "2:" + source.CodeValue.split("-")[-1]
        assert component["code"]["text"] == source.CodeMeaning


def test_sampled_data_scaling_from_the_file() -> None:
    ds = sample()
    components = resources(ds)[0]["component"]
    group = ds.WaveformSequence[rhythm_index(ds)]
    assert float(group.SamplingFrequency) == 1000
    for component, channel in zip(components, group.ChannelDefinitionSequence, strict=True):
        sampled = component["valueSampledData"]
        assert sampled["period"] == 1.0
        assert sampled["dimensions"] == 1
        expected = float(channel.ChannelSensitivity) * float(
            channel.ChannelSensitivityCorrectionFactor
        )
        assert sampled["factor"] == pytest.approx(expected)
        assert sampled["origin"]["value"] == float(channel.get("ChannelBaseline", 0))
        unit = channel.ChannelSensitivityUnitsSequence[0].CodeValue
        assert sampled["origin"]["code"] == unit == "uV"
        assert sampled["origin"]["system"] == "http://unitsofmeasure.org"


def test_data_are_the_raw_integers_and_reproduce_pydicoms_scaled_values() -> None:
    ds = sample()
    components = resources(ds)[0]["component"]
    index = rhythm_index(ds)
    group = ds.WaveformSequence[index]
    channels, samples = group.NumberOfWaveformChannels, group.NumberOfWaveformSamples
    raw = np.frombuffer(group.WaveformData, dtype="<i2")[: channels * samples]
    raw = raw.reshape(samples, channels)
    scaled = ds.waveform_array(index)  # pydicom applies sensitivity, correction and baseline
    lead_one = [int(v) for v in components[0]["valueSampledData"]["data"].split(" ")]
    assert len(lead_one) == 10000
    assert lead_one == raw[:, 0].tolist()
    assert np.any(raw[:, 0] != 0)
    for channel, component in enumerate(components):
        sampled = component["valueSampledData"]
        data = np.array([int(v) for v in sampled["data"].split(" ")])
        np.testing.assert_array_equal(data, raw[:, channel])
        value = sampled["origin"]["value"] + sampled["factor"] * data
        np.testing.assert_allclose(value, scaled[:, channel], rtol=1e-9, atol=1e-9)


def test_correction_factor_baseline_and_rate_are_applied() -> None:
    ds = sample()  # the sample has correction 1 and baseline 0; give lead I other values
    index = rhythm_index(ds)
    group = ds.WaveformSequence[index]
    group.SamplingFrequency = 500
    channel = group.ChannelDefinitionSequence[0]
    channel.ChannelSensitivityCorrectionFactor = "0.98"
    channel.ChannelBaseline = "-12.5"
    sampled = resources(ds)[0]["component"][0]["valueSampledData"]
    assert sampled["period"] == 2
    assert sampled["factor"] == pytest.approx(1.25 * 0.98)
    assert sampled["origin"]["value"] == -12.5
    data = np.array([int(v) for v in sampled["data"].split(" ")])
    value = sampled["origin"]["value"] + sampled["factor"] * data
    np.testing.assert_allclose(value, ds.waveform_array(index)[:, 0], rtol=1e-9, atol=1e-9)


def test_measurements_carry_loinc_and_the_files_values() -> None:
    ds = sample()
    bodies = resources(ds)
    waveform = bodies[0]
    annotations = numeric_annotations(ds)
    assert set(annotations) == set(EXPECTED_LOINC)
    for meaning, (value, unit, device_code) in annotations.items():
        matching = [
            b for b in bodies[1:-1] if any(c["code"] == device_code for c in b["code"]["coding"])
        ]
        assert len(matching) == 1, meaning
        obs = matching[0]
        codings = obs["code"]["coding"]
        loinc = EXPECTED_LOINC[meaning]
        if loinc:
            assert codings[0] == {"system": LOINC, "code": loinc, "display": codings[0]["display"]}
        else:
            assert all(c.get("system") != LOINC for c in codings)
        assert codings[-1]["code"] == device_code  # the device's own concept is kept
        assert codings[-1]["display"] == meaning
        assert obs["valueQuantity"]["value"] == value
        assert obs["valueQuantity"]["code"] == unit
        assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert obs["derivedFrom"] == [{"reference": f"Observation/{waveform['id']}"}]
        assert obs["subject"] == waveform["subject"]
        assert obs["effectiveDateTime"] == waveform["effectiveDateTime"]
        assert obs["status"] == "final"


def test_heart_rate_is_computed_from_rr_when_the_device_sent_none() -> None:
    ds = sample()
    bodies = resources(ds)
    rr_ms, _, rr_code = numeric_annotations(ds)["RR Interval"]
    (rate,) = by_code(bodies, LOINC, "8867-4")
    assert rate["valueQuantity"] == {
        "value": round(60000 / rr_ms, 1),
        "unit": "/min",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    }
    (rr,) = [b for b in bodies if any(c["code"] == rr_code for c in b["code"]["coding"])]
    assert {"reference": f"Observation/{rr['id']}"} in rate["derivedFrom"]
    assert "60000" in rate["note"][0]["text"]


def test_heart_rate_sent_by_the_device_is_used_as_is() -> None:
    ds = sample()
    item = Dataset()
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "2:16770", "MDC"
    concept.CodeMeaning = "Heart rate"
    units = Dataset()
    units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "{beats}/min", "UCUM", "bpm"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.MeasurementUnitsCodeSequence = Sequence([units])
    item.NumericValue = "72"
    ds.WaveformAnnotationSequence.append(item)
    (rate,) = by_code(resources(ds), LOINC, "8867-4")
    assert rate["valueQuantity"]["value"] == 72
    assert rate["valueQuantity"]["code"] == "/min"
    assert "note" not in rate
    assert [c["code"] for c in rate["code"]["coding"]] == ["8867-4", "2:16770"]


def test_report_references_every_observation_and_the_study() -> None:
    ds = sample()
    bodies = resources(ds, imaging_study="ImagingStudy/st-1", performer="Organization/XINGFU-THC")
    report = bodies[-1]
    observations = bodies[:-1]
    assert report["resourceType"] == "DiagnosticReport"
    assert [o["resourceType"] for o in observations] == ["Observation"] * len(observations)
    assert len(observations) == 1 + len(numeric_annotations(ds)) + 1  # waveform, sent, rate
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in observations]
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/st-1"}]
    assert observations[0]["derivedFrom"] == [{"reference": "ImagingStudy/st-1"}]
    assert report["code"]["coding"][0]["code"] == "11524-6"
    codes = {(c["system"], c["code"]) for c in report["category"][0]["coding"]}
    assert ("http://terminology.hl7.org/CodeSystem/v2-0074", "EC") in codes
    assert report["status"] == "final" and "issued" not in report
    texts = [
        str(a.UnformattedTextValue)
        for a in ds.WaveformAnnotationSequence
        if "UnformattedTextValue" in a
    ]
    assert texts == ["RITMO SINUSALE", "ECG NORMALE"]
    assert all(text in report["conclusion"] for text in texts)
    for body in bodies:
        assert body["performer"] == [{"reference": "Organization/XINGFU-THC"}]
        assert body["subject"] == {"reference": "Patient/p-1"}
    assert len({b["id"] for b in bodies}) == len(bodies)
    bodies[0]["subject"]["reference"] = "Patient/other"  # the caller may edit one resource
    bodies[0]["code"]["coding"].append({"code": "x"})
    assert bodies[1]["subject"] == {"reference": "Patient/p-1"}
    assert resources(ds)[0]["code"]["coding"] == [ecg.ECG_STUDY]
    identifier = observations[0]["identifier"][0]
    assert identifier == {"system": "urn:dicom:uid", "value": f"urn:oid:{ds.SOPInstanceUID}"}


def test_every_resource_is_valid_r4() -> None:
    for kwargs in ({}, {"imaging_study": "ImagingStudy/st-1", "performer": "Organization/X"}):
        for body in resources(sample(), **kwargs):
            assert r4_errors(body) == [], body["id"]
            assert fhirtypes.validate(body["resourceType"], body) is body


def test_effective_time_sources_and_zones() -> None:
    ds = sample()
    assert resources(ds)[0]["effectiveDateTime"] == "2013-01-25T10:59:19+08:00"
    assert ecg.effective_datetime(ds, default_tz="+00:00") == "2013-01-25T10:59:19+00:00"
    ds.TimezoneOffsetFromUTC = "-0500"
    assert ecg.effective_datetime(ds) == "2013-01-25T10:59:19-05:00"
    ds.AcquisitionDateTime = "20130125105919.25+0100"  # its own zone wins
    assert ecg.effective_datetime(ds) == "2013-01-25T10:59:19.25+01:00"
    del ds.AcquisitionDateTime, ds.TimezoneOffsetFromUTC
    ds.ContentTime = "1101"
    assert ecg.effective_datetime(ds) == "2013-01-25T11:01:00+08:00"
    del ds.ContentDate
    ds.StudyTime = ""
    assert ecg.effective_datetime(ds) == "2013-01-25"
    del ds.StudyDate
    assert ecg.effective_datetime(ds) is None
    bodies = resources(ds)
    assert all("effectiveDateTime" not in b for b in bodies)
    assert all(r4_errors(b) == [] for b in bodies)


def test_rhythm_group_is_chosen_by_label_else_the_first() -> None:
    ds = sample()
    ds.WaveformSequence = Sequence(list(reversed(ds.WaveformSequence)))  # median beat first
    data = resources(ds)[0]["component"][0]["valueSampledData"]["data"]
    assert len(data.split(" ")) == 10000
    for group in ds.WaveformSequence:
        del group.MultiplexGroupLabel
    data = resources(ds)[0]["component"][0]["valueSampledData"]["data"]
    assert len(data.split(" ")) == 1200


def test_mdc_lead_codes_pass_through() -> None:
    ds = sample()
    source = ds.WaveformSequence[rhythm_index(ds)].ChannelDefinitionSequence[0]
    source = source.ChannelSourceSequence[0]
    source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = "2:1", "MDC", "Lead I"
    coding = resources(ds)[0]["component"][0]["code"]["coding"]
    assert coding == [{"system": MDC, "code": "2:1", "display": "Lead I"}]


def test_without_waveform_sequence_raises_value_error_naming_it() -> None:
    ds = sample()
    del ds.WaveformSequence
    with pytest.raises(ValueError, match="WaveformSequence"):
        resources(ds)
    ds.WaveformSequence = Sequence([])
    with pytest.raises(ValueError, match="WaveformSequence"):
        resources(ds)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda g: delattr(g, "WaveformData"), "WaveformData"),
        (lambda g: setattr(g, "WaveformData", g.WaveformData[:100]), "WaveformData"),
        (lambda g: delattr(g, "SamplingFrequency"), "SamplingFrequency"),
        (
            lambda g: setattr(g, "WaveformSampleInterpretation", "MB"),
            "WaveformSampleInterpretation",
        ),
        (lambda g: setattr(g, "NumberOfWaveformChannels", 13), "ChannelDefinitionSequence"),
    ],
)
def test_unreadable_waveform_raises_value_error_naming_the_attribute(
    change: Any, named: str
) -> None:
    ds = sample()
    change(ds.WaveformSequence[rhythm_index(ds)])
    with pytest.raises(ValueError, match=named):
        resources(ds)


def test_an_unreadable_annotation_is_left_out_and_named() -> None:
    ds = sample()
    for number, item in enumerate(ds.WaveformAnnotationSequence, 1):
        if "NumericValue" in item and item.ConceptNameCodeSequence[0].CodeMeaning == "QT Interval":
            tag = Tag("NumericValue")  # as read from a file: decoded only when accessed
            item[tag] = RawDataElement(tag, "DS", 3, b"n/a", 0, False, True)
            broken = number
    warnings: list[str] = []
    bodies = resources(ds, warnings=warnings)
    assert warnings == [
        f"WaveformAnnotationSequence item {broken} not mapped: NumericValue 'n/a' is not a number"
    ]
    assert by_code(bodies, LOINC, "8634-8") == []
    assert by_code(bodies, LOINC, "8636-3") != []

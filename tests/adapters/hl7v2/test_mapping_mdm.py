"""MDM^T02 (and T01, T04, T11) -> DocumentReference, through the whole ingest."""

from __future__ import annotations

import base64
from typing import Any

from adapters.hl7v2.ingest import Origin
from gateway.demo import resident_id
from records import inbound
from security.principal import SYSTEM
from tests.fhir_schema import assert_r4

MLLP = Origin("mllp", "127.0.0.1")
WANG_ID = resident_id("411325", "1952-03-14", "042")  # demo patient 王秀英
PID = f"PID|1||XF0042^^^XINGFU_THC^MR~{WANG_ID}^^^^NNCHN||王^秀英||19520314|F"
PV1 = "PV1|1|O|全科门诊^^^XINGFU_THC||||0012^李^卫民||||||||||||V20261120-07"
DOCS = "urn:yilian:document:XINGFU_THC"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def message(event: str, control_id: str, *lines: str, charset: str = "UNICODE UTF-8") -> bytes:
    msh = (
        f"MSH|^~\\&|EMR|XINGFU_THC|YILIAN|COUNTY_HOSP|20261120153000+0800||MDM^{event}^MDM_T02|"
        f"{control_id}|P|2.5.1||||||{charset}"
    )
    codec = "gb18030" if charset.startswith("GB") else "utf-8"
    return "\r".join([msh, *lines]).encode(codec) + b"\r"


def txa(number: str, completion: str, availability: str = "AV", kind: str = "CN^会诊记录^L") -> str:
    fields = [""] * 26
    fields[:5] = ["TXA", "1", kind, "TX", "20261120140000+0800"]  # TXA-4 activity
    fields[6] = "20261120150000+0800"  # TXA-6 origination
    fields[9] = "0012^李^卫民"  # TXA-9 originator
    fields[12] = number  # TXA-12 unique document number
    fields[17] = completion  # TXA-17
    fields[19] = availability  # TXA-19
    fields[25] = "远程会诊意见"  # TXA-25 title
    return "|".join(fields)


def documents(ctx, number: str) -> list[Any]:  # type: ignore[no-untyped-def]
    found = ctx.records.search(SYSTEM, "DocumentReference", [("identifier", f"{DOCS}|{number}")])
    for stored in found.matches:
        assert_r4(stored.json())
    return list(found.matches)


def decoded(document: dict[str, Any], index: int = 0) -> bytes:
    return base64.b64decode(document["content"][index]["attachment"]["data"])


def test_mdm_t02_with_a_base64_pdf(demo):
    encoded = base64.b64encode(PDF).decode()
    raw = message(
        "T02",
        "MDM-1",
        "EVN|T02|20261120152500+0800",
        PID,
        PV1,
        txa("DOC-2026-0001", "LA", kind="11488-4^会诊报告^LN"),
        f"OBX|1|ED|PDF^远程心电诊断报告^L||^application^PDF^Base64^{encoded}||||||F",
    )
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA" and reply.outcome == "accepted", reply.warnings
    (stored,) = documents(demo, "DOC-2026-0001")
    doc = stored.json()
    assert doc["status"] == "current" and doc["docStatus"] == "final"
    assert doc["masterIdentifier"] == {"system": DOCS, "value": "DOC-2026-0001"}
    assert doc["type"]["coding"][0] == {
        "code": "11488-4",
        "system": "http://loinc.org",
        "display": "会诊报告",
    }
    assert doc["subject"] == {"reference": "Patient/demo-wang-xiuying"}
    assert doc["date"] == "2026-11-20T15:00:00+08:00"  # TXA-6 origination
    assert doc["context"]["period"] == {"start": "2026-11-20T14:00:00+08:00"}  # TXA-4 activity
    assert doc["author"][0]["display"] == "李卫民"
    assert doc["description"] == "远程会诊意见"
    assert doc["custodian"] == {"reference": "Organization/XINGFU-THC"}
    (content,) = doc["content"]
    assert content["attachment"]["contentType"] == "application/pdf"
    assert content["attachment"]["title"] == "远程心电诊断报告"
    assert decoded(doc) == PDF
    encounter = doc["context"]["encounter"][0]["reference"]
    assert demo.records.read(SYSTEM, "Encounter", encounter.split("/")[1]).json()["subject"] == {
        "reference": "Patient/demo-wang-xiuying"
    }


def test_text_document_in_gb18030_then_cancelled(demo):
    lines = [
        "主诉：胸闷三天。",
        "心电图：窦性心律，ST段压低。",
        "意见：建议转诊市第一人民医院心内科。",
    ]
    raw = message(
        "T02",
        "MDM-GB-1",
        "EVN|T02|20261120152500+0800",
        PID,
        txa("DOC-2026-0002", "DO"),
        *(f"OBX|{i}|TX|REPORT^会诊意见^L||{line}||||||F" for i, line in enumerate(lines, 1)),
        charset="GB 18030-2000",
    )
    assert "窦性心律".encode("gb18030") in raw
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA" and reply.outcome == "accepted", reply.warnings
    (stored,) = documents(demo, "DOC-2026-0002")
    doc = stored.json()
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    assert attachment["title"] == "远程会诊意见"
    assert decoded(doc).decode("utf-8") == "\n".join(lines)
    assert doc["docStatus"] == "final"
    assert doc["type"]["text"] == "会诊记录"

    cancel = message(
        "T11", "MDM-GB-2", "EVN|T11|20261120160000+0800", PID, txa("DOC-2026-0002", "DO")
    )
    reply = demo.hl7.receive(cancel, MLLP)
    assert reply.code == "AA", reply.error
    (again,) = documents(demo, "DOC-2026-0002")
    assert again.res_id == stored.res_id and again.version == 2
    assert again.json()["status"] == "entered-in-error"
    assert decoded(again.json()).decode("utf-8") == "\n".join(lines)  # the content is kept


def test_notification_without_content_then_the_content(demo):
    announce = message("T01", "MDM-3", PID, txa("DOC-2026-0003", "IP"))
    reply = demo.hl7.receive(announce, MLLP)
    assert reply.code == "AA", reply.error
    (stored,) = documents(demo, "DOC-2026-0003")
    doc = stored.json()
    assert doc["docStatus"] == "preliminary"
    assert doc["content"] == [
        {"attachment": {"title": "远程会诊意见", "contentType": "text/plain"}}
    ]

    content = message(
        "T04", "MDM-4", PID, txa("DOC-2026-0003", "AU"), "OBX|1|FT|REPORT^正文||已审核\\.br\\签名"
    )
    reply = demo.hl7.receive(content, MLLP)
    assert reply.code == "AA", reply.error
    (again,) = documents(demo, "DOC-2026-0003")
    assert again.version == 2 and again.json()["docStatus"] == "final"
    assert decoded(again.json()).decode("utf-8") == "已审核\n签名"


def test_document_answering_an_order_names_the_service_request(demo):
    order = (
        "MSH|^~\\&|HIS|XINGFU_THC|YILIAN|COUNTY_HOSP|20261120090000+0800||ORM^O01|ORD-9|P|2.5.1\r"
        f"{PID}\rORC|NW|ORD-9001|||||||20261120090000+0800\rOBR|1|ORD-9001||CONSULT^远程会诊\r"
    ).encode()
    assert demo.hl7.receive(order, MLLP).code == "AA"
    raw = message(
        "T02",
        "MDM-5",
        PID,
        "ORC|RE|ORD-9001",
        "OBR|1|ORD-9001||CONSULT^远程会诊",
        txa("DOC-2026-0005", "LA"),
        "OBX|1|TX|REPORT^会诊意见||同意转诊||||||F",
    )
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA", reply.error
    requests = demo.records.search(SYSTEM, "ServiceRequest", [("identifier", "ORD-9001")])
    (request,) = requests.matches
    assert request.version == 1  # named by the document, not rewritten by it
    (doc,) = documents(demo, "DOC-2026-0005")
    assert doc.json()["context"]["related"] == [{"reference": f"ServiceRequest/{request.res_id}"}]


def test_mdm_without_document_number_or_content_is_refused(demo):
    no_number = message("T02", "MDM-6", PID, txa("", "DO"), "OBX|1|TX|R||文本")
    reply = demo.hl7.receive(no_number, MLLP)
    assert reply.code == "AE" and "TXA-12" in (reply.error or "")
    no_content = message("T02", "MDM-7", PID, txa("DOC-X", "DO"))
    reply = demo.hl7.receive(no_content, MLLP)
    assert reply.code == "AE" and "OBX" in (reply.error or "")


def test_unsupported_mdm_event_is_rejected_naming_msh_9(demo):
    raw = message("T09", "MDM-8", PID, txa("DOC-2026-0009", "DO"), "OBX|1|TX|R||文本")
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AR" and reply.outcome == inbound.REJECTED
    assert b"ERR||MSH^1^9^^2|201" in (reply.ack or b"")


def test_oru_ed_values_still_use_the_shared_attachment_helper(demo):
    """ORU's ED handling moved to mapping/attachment.py: same DocumentReference and
    presentedForm as before."""
    encoded = base64.b64encode(PDF).decode()
    raw = (
        "MSH|^~\\&|ECG|XINGFU_THC|YILIAN|COUNTY_HOSP|20261120101500+0800||ORU^R01|ECG-ED-1|P|2.5.1\r"
        f"{PID}\rOBR|1|ECG-1|ECG-F-1|11524-6^十二导联心电图^LN|||20261120100000+0800\r"
        f"OBX|1|ED|PDF^心电图报告^L||^application^PDF^Base64^{encoded}||||||F\r"
    ).encode()
    reply = demo.hl7.receive(raw, MLLP)
    assert reply.code == "AA", reply.error
    found = demo.records.search(SYSTEM, "DiagnosticReport", [("code", "11524-6")])
    (report,) = found.matches
    assert_r4(report.json())
    (form,) = report.json()["presentedForm"]
    assert form["contentType"] == "application/pdf" and form["title"] == "心电图报告"
    assert base64.b64decode(form["data"]) == PDF
    docs = demo.records.search(SYSTEM, "DocumentReference", [("patient", "demo-wang-xiuying")])
    assert [decoded(d.json()) for d in docs.matches] == [PDF]

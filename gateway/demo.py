"""`yilian demo`: a small consortium with a user of each role and a few residents' records.

The names are fixed (DESIGN.md): outside checks rely on them. Loading twice changes nothing:
what already exists is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dicom.ingest import AE_SYSTEM
from gateway.context import Context
from records import store, users
from records.audit_log import Event
from records.fhirtypes import ORG_CODE_SYSTEM, organization_id
from records.identity import MEDICAL_INSURANCE_SYSTEM, RESIDENT_ID_SYSTEM, check_character
from security.principal import SYSTEM, Role
from teleconsult import directory
from teleconsult.routing import KIND_SYSTEM

DEMO_PASSWORD = "yilian-demo-2026"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"

ORGANIZATIONS = [
    ("COUNTY_HOSP", "县人民医院", "County People's Hospital", "prov", None),
    ("XINGFU_THC", "幸福镇卫生院", "Xingfu Township Health Centre", "prov", "COUNTY_HOSP"),
    ("HEPING_THC", "和平镇卫生院", "Heping Township Health Centre", "prov", "COUNTY_HOSP"),
    ("DONGSHAN_THC", "东山乡卫生院", "Dongshan Township Health Centre", "prov", "COUNTY_HOSP"),
    ("CITY_FIRST", "市第一人民医院", "City First People's Hospital", "prov", None),
    ("CITY_CENTRAL", "市中心医院", "City Central Hospital", "prov", None),
    ("COUNTY_MI", "县医疗保障局", "County Medical Insurance Office", "pay", None),
]


# (id, calling AE title, clinic, name, kind): the devices that send DICOM (DESIGN.md)
DEVICES = [
    ("xingfu-ct", "XINGFU_CT", "XINGFU_THC", "幸福镇卫生院 CT", "CT"),
    ("xingfu-ecg", "XINGFU_ECG", "XINGFU_THC", "幸福镇卫生院 心电图机", "ECG"),
]


# (id, hospital, name, kind, specialty (SNOMED CT), duty: None = always, else (days, start, end))
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
SERVICES = [
    ("city-first-imaging", "CITY_FIRST", "影像诊断中心", "imaging", "394914008", None),
    ("city-first-ecg", "CITY_FIRST", "心电诊断中心", "ecg", "394579002", None),
    (
        "city-first-consult",
        "CITY_FIRST",
        "远程会诊中心",
        "consultation",
        "419772000",
        (WEEKDAYS, "08:00:00", "17:30:00"),
    ),
    (
        "city-central-imaging",
        "CITY_CENTRAL",
        "放射科",
        "imaging",
        "394914008",
        (WEEKDAYS, "08:00:00", "17:30:00"),
    ),
    (
        "city-central-ecg",
        "CITY_CENTRAL",
        "心电图室",
        "ecg",
        "394579002",
        (WEEKDAYS, "08:00:00", "17:30:00"),
    ),
]
SNOMED = "http://snomed.info/sct"
SPECIALTY_NAMES = {
    "394914008": "Radiology",
    "394579002": "Cardiology",
    "419772000": "Family practice",
}
# Where the tertiary hospitals' gateways are reached: off until an operator gives the real
# addresses (`yilian consortium endpoint CITY_FIRST --fhir URL --dicom URL`).
ENDPOINTS = [
    ("CITY_FIRST", "fhir", "https://city-first.yilian.example:8443/fhir"),
    ("CITY_FIRST", "dicom", "dicoms://CITY_FIRST@city-first.yilian.example:11112"),
    ("CITY_CENTRAL", "fhir", "https://city-central.yilian.example:8443/fhir"),
    ("CITY_CENTRAL", "dicom", "dicoms://CITY_CENTRAL@city-central.yilian.example:11112"),
]


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: Role
    organization: str
    patient_id: str | None = None
    practitioner_id: str | None = None
    display: str | None = None


USERS = [
    DemoUser("admin", Role.ADMIN, "COUNTY_HOSP", display="系统管理员"),
    DemoUser(
        "doctor.xingfu",
        Role.TOWNSHIP_DOCTOR,
        "XINGFU_THC",
        practitioner_id="doctor-xingfu",
        display="李卫民 医生",
    ),
    DemoUser(
        "specialist.city",
        Role.SPECIALIST,
        "CITY_FIRST",
        practitioner_id="specialist-city",
        display="张敏 主任医师",
    ),
    DemoUser("insurer.county", Role.INSURER, "COUNTY_MI", display="县医保局 结算员"),
    DemoUser(
        "resident.wang",
        Role.RESIDENT,
        "XINGFU_THC",
        patient_id="demo-wang-xiuying",
        display="王秀英",
    ),
    DemoUser(
        "resident.zhang",
        Role.RESIDENT,
        "HEPING_THC",
        patient_id="demo-zhang-guilan",
        display="张桂兰",
    ),
]

# (id, family, given, gender, birth date, clinic, area code, sequence, phone, address)
RESIDENTS = [
    (
        "demo-wang-xiuying",
        "王",
        "秀英",
        "female",
        "1952-03-14",
        "XINGFU_THC",
        "411325",
        "042",
        "13903770001",
        "幸福镇幸福村三组12号",
    ),
    (
        "demo-li-jianguo",
        "李",
        "建国",
        "male",
        "1948-11-02",
        "XINGFU_THC",
        "411325",
        "017",
        "13903770002",
        "幸福镇柳树湾村5号",
    ),
    (
        "demo-chen-xiaoming",
        "陈",
        "晓明",
        "male",
        "2015-09-30",
        "XINGFU_THC",
        "411325",
        "131",
        "13903770003",
        "幸福镇街道南街8号",
    ),
    (
        "demo-zhang-guilan",
        "张",
        "桂兰",
        "female",
        "1960-07-21",
        "HEPING_THC",
        "411326",
        "086",
        "13903770004",
        "和平镇东关村二组",
    ),
    (
        "demo-liu-qiang",
        "刘",
        "强",
        "male",
        "1975-05-09",
        "DONGSHAN_THC",
        "411327",
        "053",
        "13903770005",
        "东山乡石门村",
    ),
]


def org(code: str) -> str:
    """The FHIR id of a consortium member named by its code (FHIR ids allow no '_')."""
    return organization_id(code)


def resident_id(area: str, birth: str, sequence: str) -> str:
    first17 = area + birth.replace("-", "") + sequence
    return first17 + check_character(first17)


def _organization(oid: str, zh: str, en: str, kind: str, part_of: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Organization",
        "identifier": [{"system": ORG_CODE_SYSTEM, "value": oid}],
        "active": True,
        "type": [{"coding": [{"system": ORG_TYPE, "code": kind}]}],
        "name": zh,
        "alias": [en],
    }
    if part_of:
        body["partOf"] = {"reference": f"Organization/{org(part_of)}"}
    return body


def _practitioner(pid: str, family: str, given: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "active": True,
        "name": [{"text": family + given, "family": family, "given": [given]}],
    }


def _patient(row: tuple[str, ...]) -> dict[str, Any]:
    pid, family, given, gender, birth, clinic, area, seq, phone, address = row
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "official",
                "system": RESIDENT_ID_SYSTEM,
                "value": resident_id(area, birth, seq),
            },
            {"system": MEDICAL_INSURANCE_SYSTEM, "value": "MI" + area + seq + birth[:4]},
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": f"urn:yilian:mrn:{clinic}",
                "value": f"{clinic[:2]}{seq}{birth[2:4]}",
                "assigner": {"reference": f"Organization/{org(clinic)}"},
            },
        ],
        "active": True,
        "name": [{"use": "official", "text": family + given, "family": family, "given": [given]}],
        "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
        "gender": gender,
        "birthDate": birth,
        "address": [
            {
                "text": address,
                "line": [address],
                "district": "幸福县",
                "city": "示范市",
                "state": "示范省",
                "country": "CN",
            }
        ],
        "managingOrganization": {"reference": f"Organization/{org(clinic)}"},
    }


def _records(pid: str, clinic: str) -> list[tuple[str, str, dict[str, Any]]]:
    subject = {"reference": f"Patient/{pid}"}
    vital = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
            }
        ]
    }
    return [
        (
            f"{pid}-cov",
            "Coverage",
            {
                "resourceType": "Coverage",
                "status": "active",
                "beneficiary": subject,
                "payor": [{"reference": f"Organization/{org('COUNTY_MI')}"}],
                "type": {"text": "城乡居民基本医疗保险"},
            },
        ),
        (
            f"{pid}-enc1",
            "Encounter",
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": subject,
                "serviceProvider": {"reference": f"Organization/{org(clinic)}"},
                "period": {
                    "start": "2026-10-08T09:00:00+08:00",
                    "end": "2026-10-08T09:20:00+08:00",
                },
                "reasonCode": [{"text": "高血压随访"}],
            },
        ),
        (
            f"{pid}-bp1",
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "category": [vital],
                "code": {
                    "coding": [
                        {
                            "system": "http://loinc.org",
                            "code": "85354-9",
                            "display": "Blood pressure panel",
                        }
                    ],
                    "text": "血压",
                },
                "subject": subject,
                "encounter": {"reference": f"Encounter/{pid}-enc1"},
                "effectiveDateTime": "2026-10-08T09:05:00+08:00",
                "component": [
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                        "valueQuantity": {
                            "value": 148,
                            "unit": "mmHg",
                            "system": "http://unitsofmeasure.org",
                            "code": "mm[Hg]",
                        },
                    },
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                        "valueQuantity": {
                            "value": 92,
                            "unit": "mmHg",
                            "system": "http://unitsofmeasure.org",
                            "code": "mm[Hg]",
                        },
                    },
                ],
            },
        ),
        (
            f"{pid}-glu1",
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "laboratory",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [
                        {
                            "system": "http://loinc.org",
                            "code": "1558-6",
                            "display": "Fasting glucose",
                        }
                    ],
                    "text": "空腹血糖",
                },
                "subject": subject,
                "effectiveDateTime": "2026-10-08T08:30:00+08:00",
                "valueQuantity": {
                    "value": 6.4,
                    "unit": "mmol/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/L",
                },
                "note": [{"text": "建议复查，注意饮食控制"}],
            },
        ),
    ]


def _device(ae_title: str, clinic: str, name: str, kind: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "identifier": [{"system": AE_SYSTEM, "value": ae_title}],
        "status": "active",
        "deviceName": [{"name": name, "type": "user-friendly-name"}],
        "type": {"text": kind},
        "owner": {"reference": f"Organization/{org(clinic)}"},
    }


def _service(hospital: str, name: str, kind: str, specialty: str, duty: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "active": True,
        "providedBy": {"reference": f"Organization/{org(hospital)}"},
        "type": [{"coding": [{"system": KIND_SYSTEM, "code": kind}]}],
        "specialty": [
            {
                "coding": [
                    {"system": SNOMED, "code": specialty, "display": SPECIALTY_NAMES[specialty]}
                ]
            }
        ],
        "name": name,
    }
    if duty is None:
        body["availableTime"] = [{"allDay": True}]
    else:
        days, start, end = duty
        body["availableTime"] = [
            {"daysOfWeek": days, "availableStartTime": start, "availableEndTime": end}
        ]
    return body


def _put_if_absent(conn: Connection, rtype: str, rid: str, body: dict[str, Any]) -> bool:
    found = store.current(conn, rtype, rid)
    if found is not None and not found.deleted:
        return False
    store.write(conn, rtype, rid, body, "PUT")
    return True


def load(ctx: Context) -> list[DemoUser]:
    """Load the demo consortium; return the users (all share DEMO_PASSWORD)."""

    def work(conn: Connection) -> tuple[int, list[Event]]:
        created = 0
        for code, zh, en, kind, part_of in ORGANIZATIONS:
            body = _organization(code, zh, en, kind, part_of)
            created += _put_if_absent(conn, "Organization", org(code), body)
        for rid, ae_title, clinic, name, kind in DEVICES:
            created += _put_if_absent(conn, "Device", rid, _device(ae_title, clinic, name, kind))
        for rid, hospital, name, kind, specialty, duty in SERVICES:
            body = _service(hospital, name, kind, specialty, duty)
            created += _put_if_absent(conn, "HealthcareService", rid, body)
        for hospital, kind, address in ENDPOINTS:
            body = directory.endpoint_body(org(hospital), kind, address, active=False)
            created += _put_if_absent(
                conn, "Endpoint", directory.endpoint_id(org(hospital), kind), body
            )
        created += _put_if_absent(
            conn, "Practitioner", "doctor-xingfu", _practitioner("doctor-xingfu", "李", "卫民")
        )
        created += _put_if_absent(
            conn, "Practitioner", "specialist-city", _practitioner("specialist-city", "张", "敏")
        )
        for resident in RESIDENTS:
            created += _put_if_absent(conn, "Patient", resident[0], _patient(resident))
            for rid, rtype, record in _records(resident[0], resident[5]):
                created += _put_if_absent(conn, rtype, rid, record)
        for user in USERS:
            if users.get(conn, user.username) is None:
                users.add(
                    conn,
                    user.username,
                    DEMO_PASSWORD,
                    user.role,
                    user.organization,
                    patient_id=user.patient_id,
                    practitioner_id=user.practitioner_id,
                    display=user.display,
                )
        return created, [Event("demo-load", (f"created:{created}",))]

    ctx.records.run(SYSTEM, "demo-load", work)
    return USERS

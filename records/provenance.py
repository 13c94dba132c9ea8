"""The Provenance every ingest writes beside what it translated: who sent it (the sending
Organization, else a display of the sender), when it was recorded, and the source it came from."""

from __future__ import annotations

from typing import Any

from records import fhirdates

PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


def ingest_provenance(
    targets: list[str],
    *,
    organization: str | None,
    sender: str,
    source: dict[str, Any],
    occurred: str | None = None,
) -> dict[str, Any]:
    """``targets``: "Type/id" written; ``organization``: the sender's Organization id, or None
    (then ``sender`` is shown); ``source``: the ``entity.what`` Reference to the source."""
    body: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": ref} for ref in targets],
        "recorded": fhirdates.instant(fhirdates.now()),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE"}]},
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
                "who": (
                    {"reference": f"Organization/{organization}"}
                    if organization
                    else {"display": sender}
                ),
            }
        ],
        "entity": [{"role": "source", "what": source}],
    }
    if occurred:
        body["occurredDateTime"] = occurred
    return body

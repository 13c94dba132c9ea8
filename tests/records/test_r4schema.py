"""The R4 check's fast yes/no path agrees with its describing path on every mutation of real
resources: a resource is refused exactly when the description finds something."""

from __future__ import annotations

import copy
import random
from typing import Any

from records import r4schema

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6"}], "text": "心电图"},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-11-22T10:00:00+08:00",
    "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org"},
    "component": [
        {
            "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.24", "code": "131329"}]},
            "valueSampledData": {
                "origin": {"value": 0},
                "period": 2,
                "dimensions": 1,
                "data": "1 2 3",
            },
        }
    ],
}
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "41132519520314042X"}],
    "name": [{"text": "王秀英", "family": "王", "given": ["秀英"]}],
    "gender": "female",
    "birthDate": "1952-03-14",
    "address": [{"text": "幸福乡"}],
}
ODD_VALUES: list[Any] = [None, "", " x", 1.5, -3, True, [], {}, ["a"], {"x": 1}, "2026-13-40"]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*path, i))
    return found


def _mutate(body: dict[str, Any], rand: random.Random) -> dict[str, Any]:
    out = copy.deepcopy(body)
    for _ in range(rand.randint(1, 3)):
        path = rand.choice(_paths(out)[1:])
        parent: Any = out
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = rand.randrange(4)
        if action == 0 and isinstance(parent, dict):
            del parent[last]
        elif action == 1 and isinstance(parent, dict):
            parent[f"{last}Extra"] = rand.choice(ODD_VALUES)
        else:
            parent[last] = rand.choice(ODD_VALUES)
        if not _paths(out)[1:]:
            break
    return out


def _described(resource: dict[str, Any]) -> list[str]:
    out: list[str] = []
    r4schema._check(resource, resource["resourceType"], resource["resourceType"], out, 10)
    return out


def test_the_fast_check_refuses_exactly_what_the_description_finds():
    rand = random.Random(20261122)
    refused = 0
    for base in (OBSERVATION, PATIENT):
        assert r4schema.errors(base) == [] and _described(base) == []
        for _ in range(600):
            mutated = _mutate(base, rand)
            if not isinstance(mutated.get("resourceType"), str):
                continue
            if mutated["resourceType"] not in ("Observation", "Patient"):
                continue
            described = _described(mutated)
            assert r4schema.errors(mutated) == described, mutated
            refused += bool(described)
    assert refused > 300  # the mutations do break things

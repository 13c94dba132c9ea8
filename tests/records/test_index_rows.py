"""Search index rows (records.store.index_rows) skip the parameters whose elements a resource
does not have and read the others by their split paths; the rows must be those of every
parameter read the long way (searchparams.tokens, strings, values, references)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from adapters.hl7v2.ingest import Origin
from records import fhirdates, searchparams, store
from records.schema import resource
from tests.adapters.hl7v2.conftest import PUBLIC, SAMPLES


def _tokens(body: dict[str, Any], param: searchparams.Param) -> Iterator[tuple[Any, str]]:
    for value in searchparams.values(body, param):
        if isinstance(value, bool):
            yield (None, "true" if value else "false")
        elif isinstance(value, str):
            yield (None, value)
        elif isinstance(value, dict):
            if "coding" in value or ("text" in value and "value" not in value):
                for coding in value.get("coding", []):
                    if coding.get("code"):
                        yield (coding.get("system"), coding["code"])
            elif "value" in value:
                if value["value"] is not None:
                    yield (value.get("system"), str(value["value"]))
            elif "code" in value:
                yield (value.get("system"), value["code"])


def _references(body: dict[str, Any], param: searchparams.Param) -> Iterator[tuple[Any, str]]:
    for value in searchparams.values(body, param):
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            parsed = searchparams.parse_reference(value["reference"])
            if parsed:
                yield parsed


def _strings(body: dict[str, Any], param: searchparams.Param) -> Iterator[str]:
    for value in searchparams.values(body, param):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from searchparams._name_or_address_strings(value)


def _every_parameter(rtype: str, rid: str, body: dict[str, Any]) -> dict[str, list[Any]]:
    """The index rows as each parameter gives them, none skipped, read one value at a time."""
    rows: dict[str, list[Any]] = {t.name: [] for t in store.INDEX_TABLES}
    key = {"res_type": rtype, "res_id": rid}
    for param in searchparams.PARAMS.get(rtype, {}).values():
        if param.kind == "token":
            rows["search_token"] += [
                {**key, "param": param.name, "system": system, "code": code[:255]}
                for system, code in set(_tokens(body, param))
            ]
        elif param.kind == "string":
            rows["search_string"] += [
                {
                    **key,
                    "param": param.name,
                    "value": searchparams.normalise(text)[:255],
                    "raw": text[:255],
                }
                for text in set(_strings(body, param))
            ]
        elif param.kind == "date":
            for value in searchparams.values(body, param):
                span = fhirdates.value_range(value)
                if span:
                    rows["search_date"].append(
                        {**key, "param": param.name, "low": span[0], "high": span[1]}
                    )
        elif param.kind == "reference":
            rows["search_reference"] += [
                {**key, "param": param.name, "target_type": t, "target_id": i[:255]}
                for t, i in set(_references(body, param))
            ]
    return rows


def test_index_rows_are_those_of_every_parameter(demo) -> None:  # type: ignore[no-untyped-def]
    raws = [p.read_bytes() for p in sorted([*PUBLIC.glob("*.hl7"), *SAMPLES.glob("*.hl7")])]
    for raw in raws:
        demo.hl7.receive(raw, Origin("mllp", "127.0.0.1"))
    with demo.engine.connect() as conn:
        stored = list(
            conn.execute(select(resource.c.res_type, resource.c.res_id, resource.c.content))
        )
    assert len({rtype for rtype, _, _ in stored}) >= 8
    bodies = [(rtype, rid, json.loads(content)) for rtype, rid, content in stored if content]
    # and each body without one top-level element at a time, so every parameter is read
    # both with and without its elements
    bodies += [
        (rtype, rid, {k: v for k, v in body.items() if k != left_out})
        for rtype, rid, body in bodies
        for left_out in body
    ]
    for rtype, rid, body in bodies:
        got = {t.name: rows for t, rows in store.index_rows(rtype, rid, body).items()}
        assert got == _every_parameter(rtype, rid, body), (rtype, rid)
        for param, _, paths in searchparams.indexed(rtype):
            assert searchparams.values_at(body, paths) == list(searchparams.values(body, param))


def test_a_parameter_reads_nothing_from_a_resource_without_its_elements() -> None:
    filler = {"x": {"reference": "Patient/1", "coding": [{"code": "c"}]}, "y": ["2026-01-01"]}
    for rtype in searchparams.PARAMS:
        for param, heads, paths in searchparams.indexed(rtype):
            assert heads and all(path.split(".")[0] in heads for path in param.paths)
            assert paths == tuple(tuple(path.split(".")) for path in param.paths)
            assert list(searchparams.values({"resourceType": rtype, **filler}, param)) == []

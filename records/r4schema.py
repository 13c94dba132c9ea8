"""Validation against the official FHIR R4 JSON schema, fast enough for the ingest hot path.

The schema (fhir.schema.json, id http://hl7.org/fhir/json-schema/4.0, from the R4
specification, CC0) ships as ``data/fhir-r4.schema.json.gz``. Its definitions are regular:
objects with typed properties, required lists and no additional properties; primitives with a
JSON type and a pattern; enums; and one oneOf (ResourceList) that dispatches on resourceType.
This module interprets exactly those constructs with JSON Schema's semantics (a pattern applies
to strings only), compiling each definition once.

Why not a general validator: measured on this machine for one lab Observation, jsonschema's
Draft6Validator takes about 3 ms, fhir.resources' R4B model about 0.9 ms, fastjsonschema about
0.02 ms but 1 s and 13 MB per resource type to compile; this takes about 0.03 ms and compiles in
milliseconds. The tests check emitted resources with jsonschema itself, an independent
implementation.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).parent / "data" / "fhir-r4.schema.json.gz"
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "boolean": (bool,),
    "integer": (int,),
}


@cache
def definitions() -> dict[str, Any]:
    with gzip.open(SCHEMA_FILE, "rt", encoding="utf-8") as handle:
        schema = json.load(handle)
    defs: dict[str, Any] = schema["definitions"]
    _add_fhir_version_401(defs)
    return defs


def _add_fhir_version_401(node: Any) -> None:
    """This copy of the schema was generated from R4 4.0.0; the 4.0.1 technical correction added
    '4.0.1' to the FHIRVersion codes. Add that one code wherever the enumeration appears."""
    if isinstance(node, dict):
        enum = node.get("enum")
        if isinstance(enum, list) and "4.0.0" in enum and "3.5.0" in enum and "4.0.1" not in enum:
            enum.append("4.0.1")
        for value in node.values():
            _add_fhir_version_401(value)
    elif isinstance(node, list):
        for value in node:
            _add_fhir_version_401(value)


@dataclass
class _Property:
    array: bool
    ref: str | None = None
    enum: frozenset[str] | None = None
    const: Any = None
    json_type: tuple[type, ...] | None = None  # an inline primitive (type + pattern)
    pattern: re.Pattern[str] | None = None


@dataclass
class _Definition:
    name: str
    json_type: tuple[type, ...] | None = None
    pattern: re.Pattern[str] | None = None
    properties: dict[str, _Property] | None = None
    required: tuple[str, ...] = ()
    one_of: frozenset[str] | None = None  # resource types of ResourceList
    anything: bool = False
    problems: list[str] = field(default_factory=list)


@cache
def _compiled(name: str) -> _Definition:
    raw = definitions()[name]
    if "oneOf" in raw:
        return _Definition(
            name, one_of=frozenset(r["$ref"].rsplit("/", 1)[1] for r in raw["oneOf"])
        )
    if "properties" in raw:
        props = {}
        for pname, spec in raw["properties"].items():
            array = spec.get("type") == "array"
            inner = spec.get("items", {}) if array else spec
            props[pname] = _Property(
                array=array,
                ref=inner["$ref"].rsplit("/", 1)[1] if "$ref" in inner else None,
                enum=frozenset(inner["enum"]) if "enum" in inner else None,
                const=inner.get("const"),
                json_type=_JSON_TYPES[inner["type"]] if "type" in inner else None,
                pattern=re.compile(inner["pattern"]) if "pattern" in inner else None,
            )
        return _Definition(name, properties=props, required=tuple(raw.get("required", ())))
    if "type" in raw:
        pattern = re.compile(raw["pattern"]) if "pattern" in raw else None
        return _Definition(name, json_type=_JSON_TYPES[raw["type"]], pattern=pattern)
    return _Definition(name, anything=True)


def errors(resource: Any, limit: int = 10) -> list[str]:
    """FHIRPath-like location and problem of each violation, at most ``limit``."""
    out: list[str] = []
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return ["the resource must be a JSON object with a resourceType"]
    rtype = resource["resourceType"]
    if rtype not in definitions() or rtype not in _compiled("ResourceList").one_of:  # type: ignore[operator]
        return [f"'{rtype}' is not an R4 resource type"]
    if _valid(resource, _compiled(rtype)):  # the usual case: no paths built, no messages
        return out
    _check(resource, rtype, rtype, out, limit)
    return out


def _valid(value: Any, definition: _Definition) -> bool:
    """Whether ``_check`` would find nothing, decided without building a path or a message
    (it stops at the first violation; ``errors`` then runs ``_check`` to describe them)."""
    return _VALIDATORS[definition.name](value)


class _Validators(dict[str, Callable[[Any], bool]]):
    """Definition name -> a function saying whether a value conforms: ``_check``'s rules
    compiled into closures once per definition, the first time one is needed."""

    def __missing__(self, name: str) -> Callable[[Any], bool]:
        with _BUILDING:  # one thread builds; a definition's own refs are looked up when called
            made = self.get(name)
            if made is None:
                made = self[name] = _compile(self, _compiled(name))
            return made


def _indirect(
    validators: _Validators,
    name: str,
    props: dict[str, tuple[bool, Callable[[Any], bool]]],
    key: str,
) -> Callable[[Any], bool]:
    """A stand-in for a definition not built yet (or being built: recursive): it looks the
    validator up when first called and puts it in its own place in ``props``."""

    def first_call(value: Any) -> bool:
        built = validators[name]
        props[key] = (props[key][0], built)
        return built(value)

    return first_call


def _compile(validators: _Validators, d: _Definition) -> Callable[[Any], bool]:
    if d.anything:
        return lambda value: True
    if d.one_of is not None:
        one_of = d.one_of

        def resource(value: Any) -> bool:
            rtype = value.get("resourceType") if isinstance(value, dict) else None
            return rtype in one_of and validators[rtype](value)

        return resource
    if d.json_type is not None:
        return _primitive_validator(d.json_type, d.pattern)
    props: dict[str, tuple[bool, Callable[[Any], bool]]] = {}
    for key, spec in (d.properties or {}).items():
        props[key] = (spec.array, _property_validator(validators, spec, props, key))
    required = d.required

    def element(value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        for key in required:
            if key not in value:
                return False
        for key, item in value.items():
            spec = props.get(key)
            if spec is None:
                return False
            array, valid = spec
            if array:
                if not isinstance(item, list):
                    return False
                for one in item:
                    if not valid(one):
                        return False
            elif not valid(item):
                return False
        return True

    return element


def _property_validator(
    validators: _Validators,
    spec: _Property,
    props: dict[str, tuple[bool, Callable[[Any], bool]]],
    key: str,
) -> Callable[[Any], bool]:
    if spec.const is not None:
        const = spec.const
        return lambda value: isinstance(value, str) and value == const
    if spec.enum is not None:
        enum = spec.enum
        return lambda value: isinstance(value, str) and value in enum
    if spec.ref is not None:
        ref = spec.ref
        built = validators.get(ref)
        if built is not None:
            return built
        return _indirect(validators, ref, props, key)  # not built yet (or recursive)
    if spec.json_type is not None:
        return _primitive_validator(spec.json_type, spec.pattern)
    return lambda value: True


def _primitive_validator(
    json_type: tuple[type, ...], pattern: re.Pattern[str] | None
) -> Callable[[Any], bool]:
    if json_type == (bool,):
        return lambda value: isinstance(value, bool)
    if json_type == (str,):
        if pattern is None:
            return lambda value: isinstance(value, str)
        search = pattern.search
        return lambda value: isinstance(value, str) and search(value) is not None
    # numbers: a JSON boolean is not one (in Python it is an int)
    if pattern is None:
        return lambda value: isinstance(value, json_type) and not isinstance(value, bool)
    search = pattern.search
    return lambda value: (
        isinstance(value, json_type)
        and not isinstance(value, bool)
        and (not isinstance(value, str) or search(value) is not None)
    )


_VALIDATORS = _Validators()
_BUILDING = threading.Lock()


def _check(value: Any, name: str, path: str, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    definition = _compiled(name)
    if definition.anything:
        return
    if definition.one_of is not None:
        rtype = value.get("resourceType") if isinstance(value, dict) else None
        if rtype not in definition.one_of:
            out.append(f"{path}: not a resource (resourceType '{rtype}')")
        else:
            _check(value, rtype, f"{path}({rtype})", out, limit)
        return
    if definition.json_type is not None:
        _primitive(value, definition.json_type, definition.pattern, name, path, out)
        return
    if not isinstance(value, dict):
        out.append(f"{path}: expected an object ({name})")
        return
    props = definition.properties or {}
    for key in definition.required:
        if key not in value:
            out.append(f"{path}.{key}: required")
    for key, item in value.items():
        spec = props.get(key)
        where = f"{path}.{key}"
        if spec is None:
            out.append(f"{where}: unknown element")
            continue
        if spec.array:
            if not isinstance(item, list):
                out.append(f"{where}: expected an array")
                continue
            for index, element in enumerate(item):
                _property(element, spec, f"{where}[{index}]", out, limit)
        else:
            _property(item, spec, where, out, limit)
        if len(out) >= limit:
            return


def _property(value: Any, spec: _Property, path: str, out: list[str], limit: int) -> None:
    if spec.const is not None:
        if not isinstance(value, str) or value != spec.const:
            out.append(f"{path}: must be {spec.const}")
    elif spec.enum is not None:
        if not isinstance(value, str) or value not in spec.enum:
            shown = ", ".join(sorted(spec.enum))[:200]
            out.append(
                f"{path}: {json.dumps(value, ensure_ascii=False)[:40]} is not one of {shown}"
            )
    elif spec.ref is not None:
        _check(value, spec.ref, path, out, limit)
    elif spec.json_type is not None:
        _primitive(value, spec.json_type, spec.pattern, "value", path, out)


def _primitive(
    value: Any,
    json_type: tuple[type, ...],
    pattern: re.Pattern[str] | None,
    name: str,
    path: str,
    out: list[str],
) -> None:
    if not isinstance(value, json_type) or (json_type != (bool,) and isinstance(value, bool)):
        out.append(f"{path}: {_shown(value)} is not a {name}")
    elif pattern is not None and isinstance(value, str) and not pattern.search(value):
        out.append(f"{path}: {_shown(value)} is not a valid {name}")


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:60]

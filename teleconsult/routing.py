"""Routing rules: which tertiary hospital department reads a remote-diagnosis request.

Pure: no database. The caller passes the departments (``Service``, built from FHIR
HealthcareService resources with ``service_from_fhir``), a queue-length function and the time.

The rules file is TOML (commented example: ``deploy/routing.example.toml``)::

    timezone = "+08:00"            # duty hours are local time here: an offset or a zone name
    [deadlines]                    # defaults: stat 30m, asap 1h, urgent 2h, routine 24h
    stat = "30m"
    [[rule]]                       # tried in file order; the first that matches applies
    name = "ECG to cardiology"     # required, unique: it names the rule in every explanation
    kind = ["ecg"]                 # required: imaging, ecg, consultation
    priority = ["stat", "asap"]    # optional, default all: routine, urgent, asap, stat
    specialty = ["394579002"]      # optional: a request naming a specialty must name one of these
    from = ["XINGFU_THC"]          # optional: requesting organization codes
    to = ["CITY_FIRST", "CITY_CENTRAL"]  # required: organization codes in order, or ["*"]
    choose = "first-on-duty"       # or "shortest-queue"
    escalate_to = ["CITY_CENTRAL"] # optional: where a request goes when its deadline is missed

A matching rule offers the active departments of its ``to`` organizations that read the
request's kind (and specialty, when named), leaving out excluded organizations and the
requester's own. The first rule with a department on duty decides; when nobody is on duty under
any matching rule the request waits in the queue of the first off-duty candidate of the first
matching rule (a request is never lost). Every decision carries a one-paragraph explanation.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

logger = logging.getLogger(__name__)

KIND_SYSTEM = "urn:yilian:teleconsult-kind"
KINDS = ("imaging", "ecg", "consultation")
PRIORITIES = ("routine", "urgent", "asap", "stat")  # FHIR request-priority
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # FHIR days-of-week, Monday first
CHOICES = ("first-on-duty", "shortest-queue")
EVERY_ORGANIZATION = "*"
DEFAULT_TIMEZONE = "+08:00"
DEFAULT_DEADLINES: Mapping[str, timedelta] = MappingProxyType(
    {
        "stat": timedelta(minutes=30),
        "asap": timedelta(hours=1),
        "urgent": timedelta(hours=2),
        "routine": timedelta(hours=24),
    }
)
EXCLUDED = "is excluded (it declined this request or missed its deadline)"

# The rules used when no file is configured: every kind, any organization with a department
# that reads it (by organization code), the first on duty, the default deadlines.
DEFAULT_RULES_TOML = """
[[rule]]
name = "default: any hospital on duty"
kind = ["imaging", "ecg", "consultation"]
to = ["*"]
"""


class RulesError(ValueError):
    """A rules file that cannot be used; each problem names the file, the rule and the field."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class NoRoute(Exception):
    """No department can take the request; ``str(exc)`` says why, rule by rule."""

    def __init__(self, explanation: str) -> None:
        self.explanation = explanation
        super().__init__(explanation)


# --- departments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AvailableTime:
    """One ``HealthcareService.availableTime``: days, and hours local to the rules' timezone.

    An end at or before the start is an overnight shift that begins on the listed day.
    """

    days: frozenset[str]
    start: time | None = None
    end: time | None = None
    all_day: bool = False

    def covers(self, local: datetime) -> bool:
        day, previous = DAYS[local.weekday()], DAYS[local.weekday() - 1]
        now = local.time().replace(tzinfo=None)
        if self.all_day or (self.start is None and self.end is None):
            return day in self.days
        start = self.start or time.min
        if self.end is None:
            return day in self.days and now >= start
        if start < self.end:
            return day in self.days and start <= now < self.end
        return (day in self.days and now >= start) or (previous in self.days and now < self.end)

    def describe(self) -> str:
        days = _describe_days(self.days)
        if self.all_day or (self.start is None and self.end is None):
            return f"{days} all day"
        start, end = _clock(self.start or time.min), _clock(self.end) if self.end else "24:00"
        overnight = self.end is not None and self.end <= (self.start or time.min)
        return f"{days} {start}-{end}" + (" overnight" if overnight else "")


@dataclass(frozen=True)
class Service:
    """A department that reads remote requests (a FHIR HealthcareService)."""

    id: str
    organization: str
    organization_code: str
    name: str
    kinds: frozenset[str]
    specialties: frozenset[str] = frozenset()
    available: tuple[AvailableTime, ...] = ()  # empty: always on duty
    active: bool = True

    @property
    def label(self) -> str:
        return f"{self.name or self.id} ({self.organization_code})"

    def on_duty(self, at: datetime, tz: tzinfo | None = None) -> bool:
        """Whether ``at`` (timezone-aware) falls in the duty hours, read as local time in ``tz``
        (default: the timezone of ``at``)."""
        if at.utcoffset() is None:
            raise ValueError("on_duty needs a timezone-aware datetime")
        local = at.astimezone(tz) if tz is not None else at
        return not self.available or any(slot.covers(local) for slot in self.available)

    def hours(self) -> str:
        return ", ".join(slot.describe() for slot in self.available) or "always on duty"


def service_from_fhir(body: Mapping[str, Any], organization_code: str) -> Service:
    """A ``Service`` from a FHIR R4 HealthcareService JSON object; ``ValueError`` if malformed."""
    if body.get("resourceType") != "HealthcareService" or not body.get("id"):
        raise ValueError("not a HealthcareService with an id")
    where = f"HealthcareService/{body['id']}"
    reference = str((body.get("providedBy") or {}).get("reference", ""))
    if not re.fullmatch(r"(.*/)?Organization/[^/]+", reference):
        raise ValueError(f"{where}: providedBy.reference {reference!r} is not Organization/<id>")
    return Service(
        id=str(body["id"]),
        organization=reference.rsplit("/", 1)[1],
        organization_code=organization_code,
        name=str(body.get("name", "")),
        kinds=frozenset(_codes(body.get("type", []), KIND_SYSTEM)),
        specialties=frozenset(_codes(body.get("specialty", []), None)),
        available=tuple(
            _available_time(item, f"{where}: availableTime[{i}]")
            for i, item in enumerate(body.get("availableTime", []))
        ),
        active=body.get("active", True) is not False,
    )


def _codes(concepts: Iterable[Mapping[str, Any]], system: str | None) -> Iterable[str]:
    for concept in concepts:
        for coding in concept.get("coding", []):
            if coding.get("code") and (system is None or coding.get("system") == system):
                yield str(coding["code"])


def _available_time(item: Mapping[str, Any], where: str) -> AvailableTime:
    days = item.get("daysOfWeek") or list(DAYS)  # no days listed: every day
    unknown = sorted(set(days) - set(DAYS))
    if unknown:
        raise ValueError(f"{where}.daysOfWeek: {', '.join(map(str, unknown))} not in mon..sun")
    return AvailableTime(
        days=frozenset(days),
        start=_fhir_time(item.get("availableStartTime"), f"{where}.availableStartTime"),
        end=_fhir_time(item.get("availableEndTime"), f"{where}.availableEndTime"),
        all_day=bool(item.get("allDay", False)),
    )


def _fhir_time(value: Any, where: str) -> time | None:
    if value is None:
        return None
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a time like 08:00:00") from None


# --- requests and decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class RouteRequest:
    kind: str
    priority: str
    specialty: str | None = None
    from_organization: str | None = None  # organization code of the requester
    exclude: frozenset[str] = frozenset()  # organization codes that declined or missed the deadline

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority {self.priority!r} is not one of {', '.join(PRIORITIES)}")

    def describe(self) -> str:
        text = f"{self.priority} {self.kind} request"
        if self.specialty:
            text += f" for specialty {self.specialty}"
        return text + (f" from {self.from_organization}" if self.from_organization else "")


@dataclass(frozen=True)
class RouteDecision:
    service: Service
    rule: str
    deadline: datetime
    explanation: str
    on_duty: bool = True  # False: nobody was on duty; the request waits in this queue


def deadline_for(
    priority: str, deadlines: Mapping[str, timedelta] = DEFAULT_DEADLINES
) -> timedelta:
    """How long a request of this priority may wait for its report."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    return deadlines.get(priority, DEFAULT_DEADLINES[priority])


@dataclass(frozen=True)
class Rule:
    name: str
    kinds: frozenset[str]
    to: tuple[str, ...]
    priorities: frozenset[str] = frozenset(PRIORITIES)
    specialties: frozenset[str] = frozenset()  # empty: any
    from_organizations: frozenset[str] = frozenset()  # empty: any
    choose: str = "first-on-duty"
    escalate_to: tuple[str, ...] = ()

    def mismatch(self, request: RouteRequest) -> str | None:
        """Why the rule does not apply to the request, or None when it does."""
        if request.kind not in self.kinds:
            return f"is for {_listing(self.kinds, KINDS)} requests"
        if request.priority not in self.priorities:
            return f"is for priorities {_listing(self.priorities, PRIORITIES)}"
        if request.specialty and self.specialties and request.specialty not in self.specialties:
            return f"is for specialties {_listing(self.specialties)}"
        if self.from_organizations and request.from_organization not in self.from_organizations:
            return f"is for requests from {_listing(self.from_organizations)}"
        return None

    def matches(self, request: RouteRequest) -> bool:
        return self.mismatch(request) is None


# --- the rules file ---------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """``"30m"``, ``"2h"``, ``"1h30m"``, ``"45s"``, ``"1d"`` as a timedelta longer than zero."""
    match = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 2h, 1h30m, 45s or 1d")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if not duration:
        raise ValueError(f"{text!r} is zero; a deadline must be longer than that")
    return duration


def parse_timezone(text: str) -> tzinfo:
    """A UTC offset (``+08:00``) or an IANA zone name (``Asia/Shanghai``)."""
    offset = re.fullmatch(r"([+-])(\d{2}):(\d{2})", text)
    if offset and int(offset[2]) < 24 and int(offset[3]) < 60:
        delta = timedelta(hours=int(offset[2]), minutes=int(offset[3]))
        return timezone(-delta if offset[1] == "-" else delta)
    try:
        if offset is None and text:
            return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    raise ValueError(f"{text!r} is not a UTC offset like +08:00 or a zone name like Asia/Shanghai")


def _one_of(allowed: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


def _organizations(codes: list[str]) -> list[str]:
    if EVERY_ORGANIZATION in codes and len(codes) > 1:
        raise ValueError(f"'{EVERY_ORGANIZATION}' (every organization) must stand alone")
    twice = sorted({code for code in codes if codes.count(code) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed more than once")
    return codes


def _not_empty(what: str) -> Callable[[list[Any]], list[Any]]:
    def check(values: list[Any]) -> list[Any]:
        if not values:
            raise ValueError(f"must list at least one {what}")
        return values

    return check


def _timezone_name(text: str) -> str:
    parse_timezone(text)
    return text


def _duration(value: Any) -> timedelta:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration string like 30m, 2h, 1h30m, 45s or 1d")
    return parse_duration(value)


Code = Annotated[str, Field(min_length=1)]
Kind = Annotated[str, AfterValidator(_one_of(KINDS))]
Priority = Annotated[str, AfterValidator(_one_of(PRIORITIES))]
Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Code
    kind: Annotated[list[Kind], AfterValidator(_not_empty("kind"))]
    priority: Annotated[list[Priority], AfterValidator(_not_empty("priority"))] = list(PRIORITIES)
    specialty: list[Code] = []
    from_: list[Code] = Field(default=[], alias="from")
    to: Annotated[
        list[Code], AfterValidator(_not_empty("organization code")), AfterValidator(_organizations)
    ]
    choose: Annotated[str, AfterValidator(_one_of(CHOICES))] = "first-on-duty"
    escalate_to: Annotated[list[Code], AfterValidator(_organizations)] = []

    def rule(self) -> Rule:
        return Rule(
            name=self.name,
            kinds=frozenset(self.kind),
            to=tuple(self.to),
            priorities=frozenset(self.priority),
            specialties=frozenset(self.specialty),
            from_organizations=frozenset(self.from_),
            choose=self.choose,
            escalate_to=tuple(self.escalate_to),
        )


class _DeadlinesModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    stat: Duration = DEFAULT_DEADLINES["stat"]
    asap: Duration = DEFAULT_DEADLINES["asap"]
    urgent: Duration = DEFAULT_DEADLINES["urgent"]
    routine: Duration = DEFAULT_DEADLINES["routine"]


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    timezone: Annotated[str, AfterValidator(_timezone_name)] = DEFAULT_TIMEZONE
    deadlines: _DeadlinesModel = _DeadlinesModel()
    rule: Annotated[list[_RuleModel], AfterValidator(_not_empty("[[rule]] table"))]


_KNOWN_KEYS = {
    "": ", ".join(_FileModel.model_fields),
    "rule": "name, kind, priority, specialty, from, to, choose, escalate_to",
    "deadlines": ", ".join(_DeadlinesModel.model_fields),
}


_EXPECTED = {
    "list_type": "a list",
    "string_type": "a string",
    "model_type": "a table",
    "dict_type": "a table",
}


def _problem(error: ErrorDetails, raw: Mapping[str, Any], source: str) -> str:
    loc = error["loc"]
    parts = [source]
    if loc[:1] == ("rule",) and len(loc) > 1 and isinstance(loc[1], int):
        parts.append(_rule_label(raw, loc[1]))
        loc = loc[2:]
    named = ".".join(str(part) for part in loc if not isinstance(part, int))
    if named:
        parts.append(named)
    return ": ".join(parts) + ": " + _message(error)


def _rule_label(raw: Mapping[str, Any], index: int) -> str:
    rules = raw.get("rule")
    table = rules[index] if isinstance(rules, list) else None
    name = table.get("name") if isinstance(table, dict) else None
    return f"rule {index + 1}" + (f" ({name!r})" if isinstance(name, str) else "")


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "value_error" and "ctx" in error:
        return str(error["ctx"]["error"])
    if kind == "extra_forbidden":
        loc = error["loc"]
        return f"unknown key (known keys: {_KNOWN_KEYS[str(loc[0]) if len(loc) > 1 else '']})"
    if kind == "missing" and error["loc"] == ("rule",):
        return "at least one [[rule]] table is required"
    if kind == "missing":
        return "required"
    if kind == "string_too_short":
        return "should not be empty"
    expected = _EXPECTED.get(kind)
    if expected:
        return f"should be {expected}, not {error['input']!r}"
    return f"{error['msg']} ({error['input']!r})"


def _same_names(rules: Sequence[Rule], source: str) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for index, rule in enumerate(rules):
        if rule.name in first:
            problems.append(
                f"{source}: rule {index + 1} ({rule.name!r}): name: already the name of "
                f"rule {first[rule.name] + 1}"
            )
        first.setdefault(rule.name, index)
    return problems


# --- routing ----------------------------------------------------------------------------------


QueueLength = Callable[[Service], int]


@dataclass(frozen=True)
class _Step:
    """One try: a rule and the organizations it offers (its ``to`` or its ``escalate_to``)."""

    rule: Rule
    organizations: tuple[str, ...]
    label: str


@dataclass
class _Assessment:
    step: _Step
    on_duty: list[Service] = field(default_factory=list)
    off_duty: list[Service] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # why the others are not candidates


@dataclass(frozen=True)
class RoutingRules:
    rules: tuple[Rule, ...]
    timezone: tzinfo = timezone(timedelta(hours=8))
    timezone_name: str = DEFAULT_TIMEZONE
    deadlines: Mapping[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    source: str = "<string>"

    @classmethod
    def load(cls, path: str | Path) -> RoutingRules:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError([f"{path}: cannot read the rules file: {exc.strerror}"]) from exc
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> RoutingRules:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RulesError([f"{source}: not valid TOML: {exc}"]) from exc
        try:
            model = _FileModel.model_validate(raw)
        except ValidationError as exc:
            raise RulesError([_problem(error, raw, source) for error in exc.errors()]) from None
        rules = tuple(item.rule() for item in model.rule)
        problems = _same_names(rules, source)
        if problems:
            raise RulesError(problems)
        return cls(
            rules=rules,
            timezone=parse_timezone(model.timezone),
            timezone_name=model.timezone,
            deadlines={p: getattr(model.deadlines, p) for p in PRIORITIES},
            source=source,
        )

    @classmethod
    def default(cls) -> RoutingRules:
        """Every kind to any organization with a department for it, first on duty."""
        return cls.parse(DEFAULT_RULES_TOML, source="<built-in rules>")

    def deadline_for(self, priority: str) -> timedelta:
        return deadline_for(priority, self.deadlines)

    def route(
        self,
        request: RouteRequest,
        services: Sequence[Service],
        queue_length: QueueLength,
        now: datetime,
    ) -> RouteDecision:
        """The department for a new request (or one re-routed after a rejection)."""
        matching = self._matching(request, "")
        steps = [_Step(rule, rule.to, f"rule {rule.name!r}") for rule in matching]
        return self._decide(request, steps, services, queue_length, now, "")

    def escalate(
        self,
        request: RouteRequest,
        current: Service,
        services: Sequence[Service],
        queue_length: QueueLength,
        now: datetime,
    ) -> RouteDecision:
        """Another department for a request whose deadline ``current`` missed, never one of
        ``current``'s organization. Tried in order: the ``escalate_to`` organizations of the rule
        that sent it there (the first matching rule listing that organization), that rule's
        other organizations, then the other matching rules; the first on duty takes it."""
        prefix = f"deadline missed at {current.label} by {self._clock(now)}. "
        matching = self._matching(request, prefix)
        code = current.organization_code
        rule = next((r for r in matching if code in _resolve(r.to, services)), matching[0])
        steps = [_Step(rule, rule.to, f"rule {rule.name!r}")]
        if rule.escalate_to:
            label = f"the escalate_to list of rule {rule.name!r}"
            steps.insert(0, _Step(rule, rule.escalate_to, label))
        steps += [_Step(r, r.to, f"rule {r.name!r}") for r in matching if r is not rule]
        again = replace(request, exclude=request.exclude | {code})
        return self._decide(again, steps, services, queue_length, now, prefix)

    def _matching(self, request: RouteRequest, prefix: str) -> list[Rule]:
        matching = [rule for rule in self.rules if rule.matches(request)]
        if not matching:
            reasons = "; ".join(f"rule {r.name!r} {r.mismatch(request)}" for r in self.rules)
            raise NoRoute(f"{prefix}No routing rule matches this {request.describe()}: {reasons}.")
        return matching

    def _decide(
        self,
        request: RouteRequest,
        steps: Sequence[_Step],
        services: Sequence[Service],
        queue_length: QueueLength,
        now: datetime,
        prefix: str,
    ) -> RouteDecision:
        if now.utcoffset() is None:
            raise ValueError("routing needs a timezone-aware now")
        local = now.astimezone(self.timezone)
        assessments = [_assess(step, request, services, local) for step in steps]
        deadline = now + self.deadline_for(request.priority)
        tail = f" Answer due by {self._clock(deadline)}."
        for index, assessment in enumerate(assessments):
            if assessment.on_duty:
                service, why = _choose(assessment, queue_length)
                text = _tried(assessments[:index]) + why + tail
                return self._decision(service, assessment.step, deadline, prefix + text, True)
        for assessment in assessments:
            if assessment.off_duty:
                service = assessment.off_duty[0]
                text = _waiting(service, assessment, assessments, queue_length(service)) + tail
                return self._decision(service, assessment.step, deadline, prefix + text, False)
        reasons = " ".join(f"Under {a.step.label}: {_reasons(a.refusals)}." for a in assessments)
        raise NoRoute(f"{prefix}No department can take this {request.describe()}. {reasons}")

    def _decision(
        self, service: Service, step: _Step, deadline: datetime, text: str, on_duty: bool
    ) -> RouteDecision:
        logger.debug("routed to service %s under rule %r", service.id, step.rule.name)
        return RouteDecision(service, step.rule.name, deadline, text, on_duty)

    def _clock(self, moment: datetime) -> str:
        return f"{moment.astimezone(self.timezone):%Y-%m-%d %H:%M} ({self.timezone_name})"


def _resolve(codes: Sequence[str], services: Sequence[Service]) -> list[str]:
    if list(codes) == [EVERY_ORGANIZATION]:
        return sorted({service.organization_code for service in services})
    return list(codes)


def _assess(
    step: _Step, request: RouteRequest, services: Sequence[Service], local: datetime
) -> _Assessment:
    assessment = _Assessment(step)
    for code in _resolve(step.organizations, services):
        own = [service for service in services if service.organization_code == code]
        refusal = _refuse_organization(code, request, own)
        if refusal:
            assessment.refusals.append(refusal)
        for service in own if refusal is None else []:
            _sort(service, request, local, assessment)
    return assessment


def _refuse_organization(code: str, request: RouteRequest, own: Sequence[Service]) -> str | None:
    if code in request.exclude:
        return f"{code} {EXCLUDED}"
    if code == request.from_organization:
        return f"{code} is the requesting organization"
    if not own:
        return f"{code} has no department in the directory"
    return None


def _sort(service: Service, request: RouteRequest, local: datetime, into: _Assessment) -> None:
    if not service.active:
        into.refusals.append(f"{service.label} is inactive")
    elif request.kind not in service.kinds:
        into.refusals.append(f"{service.label} does not read {request.kind} requests")
    elif request.specialty and request.specialty not in service.specialties:
        into.refusals.append(f"{service.label} does not offer specialty {request.specialty}")
    elif service.on_duty(local):
        into.on_duty.append(service)
    else:
        into.off_duty.append(service)


def _choose(assessment: _Assessment, queue_length: QueueLength) -> tuple[Service, str]:
    """The chosen on-duty service and the explanation's sentences about the choice."""
    candidates = assessment.on_duty
    if assessment.step.rule.choose == "shortest-queue":
        queues = [queue_length(service) for service in candidates]
        best = queues.index(min(queues))  # the first of the shortest: ties go by order
        chosen, why = candidates[best], f"shortest queue ({queues[best]} waiting)"
        others = [
            _longer(service, queue, queues[best])
            for service, queue in zip(candidates, queues, strict=True)
            if service is not chosen
        ]
    else:
        chosen = candidates[0]
        why = f"first on duty in the rule's order ({queue_length(chosen)} waiting)"
        others = [f"{s.label} is also on duty but comes later in the order" for s in candidates[1:]]
    hours = f" (hours {chosen.hours()})" if chosen.available else ""
    text = f"Under {assessment.step.label}, this request goes to {chosen.label}: "
    text += f"on duty now{hours}, {why}."
    rejected = others + _off_duty(assessment.off_duty) + assessment.refusals
    return chosen, text + (f" Not chosen: {_reasons(rejected)}." if rejected else "")


def _longer(service: Service, queue: int, shortest: int) -> str:
    if queue > shortest:
        return f"{service.label} is on duty but has a longer queue ({queue} waiting)"
    return f"{service.label} has an equal queue ({queue} waiting) but comes later in the order"


def _tried(assessments: Sequence[_Assessment]) -> str:
    text = ""
    for assessment in assessments:
        state = "is on duty" if assessment.off_duty else "can take it"
        reasons = _off_duty(assessment.off_duty) + assessment.refusals
        text += f"Under {assessment.step.label} no department {state}: {_reasons(reasons)}. "
    return text


def _waiting(
    chosen: Service, where: _Assessment, assessments: Sequence[_Assessment], queue: int
) -> str:
    text = (
        f"No department is on duty under any matching rule, so this request waits in the queue "
        f"of {chosen.label} ({queue} waiting), the first candidate under {where.step.label}; "
        f"it is on duty {chosen.hours()}."
    )
    for assessment in assessments:
        others = _off_duty(s for s in assessment.off_duty if s is not chosen)
        if others or assessment.refusals:
            text += f" Under {assessment.step.label}: {_reasons(others + assessment.refusals)}."
    return text


def _off_duty(services: Iterable[Service]) -> list[str]:
    return [f"{service.label} is off duty (hours {service.hours()})" for service in services]


def _reasons(reasons: Sequence[str]) -> str:
    return "; ".join(reasons) or "no organization has a department in the directory"


def _listing(values: Iterable[str], order: Sequence[str] = ()) -> str:
    rank = {value: index for index, value in enumerate(order)}
    return ", ".join(sorted(values, key=lambda value: (rank.get(value, len(rank)), value)))


def _describe_days(days: frozenset[str]) -> str:
    if days >= set(DAYS):
        return "daily"
    runs: list[list[str]] = []
    for day in DAYS:
        if day in days and runs and runs[-1][-1] == DAYS[DAYS.index(day) - 1]:
            runs[-1].append(day)
        elif day in days:
            runs.append([day])
    return ",".join(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _clock(moment: time) -> str:
    return moment.strftime("%H:%M:%S" if moment.second else "%H:%M")

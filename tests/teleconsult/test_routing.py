"""Routing rules: loading and validating the TOML file, duty hours, choosing a department,
deadlines, escalation and the explanation a doctor reads on the Task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from teleconsult.routing import (
    DEFAULT_DEADLINES,
    KIND_SYSTEM,
    AvailableTime,
    NoRoute,
    RouteRequest,
    RoutingRules,
    RulesError,
    Service,
    deadline_for,
    parse_duration,
    service_from_fhir,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "routing.example.toml"
CST = timezone(timedelta(hours=8))
CARDIOLOGY, RADIOLOGY = "394579002", "394914008"
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]

# 2024-05-06 is a Monday.
MON_10 = datetime(2024, 5, 6, 10, 0, tzinfo=CST)
MON_22 = datetime(2024, 5, 6, 22, 0, tzinfo=CST)
SAT_10 = datetime(2024, 5, 11, 10, 0, tzinfo=CST)

DAY_SHIFT = [
    {"daysOfWeek": WEEKDAYS, "availableStartTime": "08:00:00", "availableEndTime": "17:00:00"}
]
NIGHT_SHIFT = [
    {"daysOfWeek": WEEKDAYS, "availableStartTime": "20:00:00", "availableEndTime": "08:00:00"}
]


def healthcare_service(
    id: str,
    org: str,
    kinds: Sequence[str] = ("ecg", "imaging", "consultation"),
    specialties: Sequence[str] = (),
    available: list[dict[str, Any]] | None = None,
    active: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "id": id,
        "active": active,
        "name": name or id,
        "providedBy": {"reference": f"Organization/{org.lower().replace('_', '-')}"},
        "type": [{"coding": [{"system": KIND_SYSTEM, "code": kind}]} for kind in kinds],
        "specialty": [
            {"coding": [{"system": "http://snomed.info/sct", "code": code}]} for code in specialties
        ],
    }
    if available is not None:
        body["availableTime"] = available
    return body


def service(id: str, org: str, **kwargs: Any) -> Service:
    return service_from_fhir(healthcare_service(id, org, **kwargs), org)


def queues(**lengths: int) -> Callable[[Service], int]:
    return lambda service: lengths.get(service.id, 0)


def rules(text: str) -> RoutingRules:
    return RoutingRules.parse(text, source="routing.toml")


def rule(name: str, to: str, *extra: str, kind: str = '["ecg"]') -> str:
    lines = [f'name = "{name}"', f"kind = {kind}", f"to = {to}", *extra]
    return "[[rule]]\n" + "\n".join(lines) + "\n"


# --- the rules file ---------------------------------------------------------------------------


def test_the_example_file_loads() -> None:
    loaded = RoutingRules.load(EXAMPLE)

    assert [r.name for r in loaded.rules] == [
        "Xingfu stat ECG",
        "ECG to cardiology",
        "Imaging to radiology",
        "Anything else",
    ]
    first = loaded.rules[0]
    assert first.from_organizations == {"XINGFU_THC"}
    assert first.priorities == {"stat", "asap"}
    assert first.to == ("CITY_FIRST", "CITY_CENTRAL")
    assert first.escalate_to == ("CITY_CENTRAL",)
    assert loaded.rules[1].choose == "shortest-queue"
    assert loaded.rules[3].to == ("*",)
    assert loaded.deadlines["stat"] == timedelta(minutes=30)
    assert loaded.deadlines["routine"] == timedelta(hours=24)
    assert MON_10.astimezone(loaded.timezone).utcoffset() == timedelta(hours=8)
    assert loaded.source == str(EXAMPLE)


def test_the_brief_example_error_is_exactly_this() -> None:
    text = rule("ECG to cardiology", '["CITY_FIRST"]') + rule(
        "ECG", '["CITY_FIRST"]', 'priority = ["urgentt"]'
    )
    with pytest.raises(RulesError) as caught:
        rules(text)
    assert str(caught.value) == (
        "routing.toml: rule 2 ('ECG'): priority: 'urgentt' is not one of "
        "routine, urgent, asap, stat"
    )


GOOD = rule("first", '["CITY_FIRST"]')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD + rule("ECG", '["CITY_FIRST"]', 'prioirty = ["stat"]'),
            "routing.toml: rule 2 ('ECG'): prioirty: unknown key (known keys: name, kind, "
            "priority, specialty, from, to, choose, escalate_to)",
        ),
        (
            GOOD + rule("ECG", "[]"),
            "routing.toml: rule 2 ('ECG'): to: must list at least one organization code",
        ),
        (
            GOOD + rule("ECG", '["CITY_FIRST"]', 'choose = "random"'),
            "routing.toml: rule 2 ('ECG'): choose: 'random' is not one of "
            "first-on-duty, shortest-queue",
        ),
        (
            GOOD + rule("ECG", '["CITY_FIRST"]', kind='["ekg"]'),
            "routing.toml: rule 2 ('ECG'): kind: 'ekg' is not one of imaging, ecg, consultation",
        ),
        (
            GOOD + rule("ECG", '["CITY_FIRST"]', kind='"ecg"'),
            "routing.toml: rule 2 ('ECG'): kind: should be a list, not 'ecg'",
        ),
        (
            GOOD + rule("ECG", '["*", "CITY_FIRST"]'),
            "routing.toml: rule 2 ('ECG'): to: '*' (every organization) must stand alone",
        ),
        (
            GOOD + rule("ECG", '["CITY_FIRST"]', 'escalate_to = ["CITY_X", "CITY_X"]'),
            "routing.toml: rule 2 ('ECG'): escalate_to: CITY_X listed more than once",
        ),
        (
            GOOD + '[[rule]]\nkind = ["ecg"]\nto = ["CITY_FIRST"]\n',
            "routing.toml: rule 2: name: required",
        ),
        (
            GOOD + rule("first", '["CITY_CENTRAL"]'),
            "routing.toml: rule 2 ('first'): name: already the name of rule 1",
        ),
        (
            '[deadlines]\nstat = "30 minutes"\n' + GOOD,
            "routing.toml: deadlines.stat: '30 minutes' is not a duration like "
            "30m, 2h, 1h30m, 45s or 1d",
        ),
        (
            "[deadlines]\nstat = 30\n" + GOOD,
            "routing.toml: deadlines.stat: 30 is not a duration string",
        ),
        (
            '[deadlines]\nsoon = "1h"\n' + GOOD,
            "routing.toml: deadlines.soon: unknown key (known keys: stat, asap, urgent, routine)",
        ),
        (
            'timezone = "Mars/Olympus_Mons"\n' + GOOD,
            "routing.toml: timezone: 'Mars/Olympus_Mons' is not a UTC offset like +08:00 "
            "or a zone name like Asia/Shanghai",
        ),
        ('timezone = "+25:00"\n' + GOOD, "routing.toml: timezone: '+25:00' is not a UTC offset"),
        ("retries = 3\n" + GOOD, "routing.toml: retries: unknown key"),
        ('timezone = "+08:00"\n', "routing.toml: rule: at least one [[rule]] table is required"),
        ("[[rule]\n", "routing.toml: not valid TOML"),
    ],
)
def test_validation_errors_name_the_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        rules(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_every_problem_is_reported_at_once() -> None:
    text = rule("A", "[]", 'choose = "random"') + rule("B", '["X"]', 'priority = ["soon"]')
    with pytest.raises(RulesError) as caught:
        rules(text)
    assert caught.value.problems == (
        "routing.toml: rule 1 ('A'): to: must list at least one organization code",
        "routing.toml: rule 1 ('A'): choose: 'random' is not one of first-on-duty, shortest-queue",
        "routing.toml: rule 2 ('B'): priority: 'soon' is not one of routine, urgent, asap, stat",
    )


def test_a_missing_file_is_a_rules_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "routing.toml"
    with pytest.raises(RulesError, match="routing.toml: cannot read the rules file"):
        RoutingRules.load(missing)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("1d", timedelta(days=1)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "m", "2h30", "1.5h", "30 m", "30m2h", "0s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# --- departments from FHIR --------------------------------------------------------------------


def test_service_from_fhir_reads_the_healthcare_service() -> None:
    body = healthcare_service(
        "hs-ecg",
        "CITY_FIRST",
        kinds=["ecg"],
        specialties=[CARDIOLOGY],
        available=DAY_SHIFT + [{"daysOfWeek": ["sat"], "allDay": True}],
        name="ECG reading room",
    )
    body["type"].append({"coding": [{"system": "http://snomed.info/sct", "code": "ecg-other"}]})

    parsed = service_from_fhir(body, "CITY_FIRST")

    assert parsed == Service(
        id="hs-ecg",
        organization="city-first",
        organization_code="CITY_FIRST",
        name="ECG reading room",
        kinds=frozenset({"ecg"}),  # only codes of urn:yilian:teleconsult-kind
        specialties=frozenset({CARDIOLOGY}),
        available=(
            AvailableTime(frozenset(WEEKDAYS), time(8), time(17), False),
            AvailableTime(frozenset({"sat"}), None, None, True),
        ),
        active=True,
    )
    assert service_from_fhir(healthcare_service("x", "C", active=False), "C").active is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"providedBy": {"reference": "Practitioner/7"}}, "providedBy.reference"),
        ({"providedBy": None}, "providedBy.reference"),
        ({"availableTime": [{"daysOfWeek": ["monday"]}]}, "availableTime[0].daysOfWeek"),
        (
            {"availableTime": [{"daysOfWeek": ["mon"], "availableStartTime": "25:00:00"}]},
            "availableTime[0].availableStartTime: '25:00:00' is not a time",
        ),
        ({"resourceType": "Organization"}, "not a HealthcareService"),
    ],
)
def test_service_from_fhir_refuses_malformed_resources(
    change: dict[str, Any], message: str
) -> None:
    body = healthcare_service("hs-1", "CITY_FIRST") | change
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        service_from_fhir(body, "CITY_FIRST")


# --- duty hours -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "on_duty"),
    [
        (MON_10, True),
        (datetime(2024, 5, 6, 8, 0, tzinfo=CST), True),  # start is inclusive
        (datetime(2024, 5, 6, 7, 59, tzinfo=CST), False),
        (datetime(2024, 5, 6, 17, 0, tzinfo=CST), False),  # end is exclusive
        (SAT_10, False),
        (datetime(2024, 5, 6, 2, 0, tzinfo=UTC), True),  # 10:00 in +08:00
    ],
)
def test_day_shift_on_weekdays(at: datetime, on_duty: bool) -> None:
    day = service("day", "CITY_FIRST", available=DAY_SHIFT)
    assert day.on_duty(at, CST) is on_duty


@pytest.mark.parametrize(
    ("at", "on_duty"),
    [
        (MON_22, True),
        (datetime(2024, 5, 7, 3, 0, tzinfo=CST), True),  # Tuesday night: Monday's shift
        (datetime(2024, 5, 6, 3, 0, tzinfo=CST), False),  # Monday small hours: no Sunday shift
        (datetime(2024, 5, 11, 3, 0, tzinfo=CST), True),  # Saturday small hours: Friday's shift
        (datetime(2024, 5, 11, 21, 0, tzinfo=CST), False),
        (datetime(2024, 5, 7, 8, 0, tzinfo=CST), False),
        (MON_10, False),
    ],
)
def test_overnight_shift_belongs_to_the_day_it_starts(at: datetime, on_duty: bool) -> None:
    night = service("night", "CITY_CENTRAL", available=NIGHT_SHIFT)
    assert night.on_duty(at) is on_duty


def test_all_day_and_no_hours() -> None:
    weekend = service("w", "C", available=[{"daysOfWeek": ["sat", "sun"], "allDay": True}])
    always = service("a", "C")
    assert weekend.on_duty(SAT_10) and not weekend.on_duty(MON_10)
    assert always.on_duty(SAT_10) and always.on_duty(MON_22)
    with pytest.raises(ValueError, match="timezone-aware"):
        always.on_duty(datetime(2024, 5, 6, 10, 0))


def test_duty_hours_are_read_in_the_rules_timezone() -> None:
    day = service("day", "CITY_FIRST", available=DAY_SHIFT)
    utc_rules = rules('timezone = "+00:00"\n' + rule("any", '["CITY_FIRST"]'))
    shanghai = rules('timezone = "Asia/Shanghai"\n' + rule("any", '["CITY_FIRST"]'))
    request = RouteRequest("ecg", "routine")

    # Monday 10:00 in China is 02:00 UTC: off duty for rules that read the hours as UTC.
    assert shanghai.route(request, [day], queues(), MON_10).on_duty is True
    assert utc_rules.route(request, [day], queues(), MON_10).on_duty is False


# --- matching ---------------------------------------------------------------------------------

MATCHING = rules(
    rule("stat ECG from Xingfu", '["CITY_CENTRAL"]', 'priority = ["stat"]', 'from = ["XINGFU_THC"]')
    + rule("cardiology ECG", '["CITY_FIRST"]', f'specialty = ["{CARDIOLOGY}"]')
    + rule("other ECG", '["CITY_THIRD"]')
    + rule("consultations", '["CITY_FIRST"]', kind='["consultation"]')
)
EVERYWHERE = [
    service("first", "CITY_FIRST", specialties=[CARDIOLOGY, RADIOLOGY]),
    service("central", "CITY_CENTRAL", specialties=[CARDIOLOGY]),
    service("third", "CITY_THIRD", specialties=[CARDIOLOGY, RADIOLOGY]),
]


@pytest.mark.parametrize(
    ("request_", "rule_name", "chosen"),
    [
        (
            RouteRequest("ecg", "stat", from_organization="XINGFU_THC"),
            "stat ECG from Xingfu",
            "central",
        ),
        (RouteRequest("ecg", "stat", from_organization="HEPING_THC"), "cardiology ECG", "first"),
        (RouteRequest("ecg", "stat"), "cardiology ECG", "first"),  # no sender: not for `from`
        (RouteRequest("ecg", "urgent", from_organization="XINGFU_THC"), "cardiology ECG", "first"),
        (RouteRequest("ecg", "urgent", specialty=CARDIOLOGY), "cardiology ECG", "first"),
        (RouteRequest("ecg", "urgent", specialty=RADIOLOGY), "other ECG", "third"),
        (RouteRequest("consultation", "routine"), "consultations", "first"),
    ],
)
def test_the_first_matching_rule_applies(
    request_: RouteRequest, rule_name: str, chosen: str
) -> None:
    decision = MATCHING.route(request_, EVERYWHERE, queues(), MON_10)
    assert (decision.rule, decision.service.id) == (rule_name, chosen)
    assert decision.on_duty is True


def test_no_matching_rule_says_what_each_rule_is_for() -> None:
    with pytest.raises(NoRoute) as caught:
        MATCHING.route(RouteRequest("imaging", "routine"), EVERYWHERE, queues(), MON_10)
    assert str(caught.value) == (
        "No routing rule matches this routine imaging request: "
        "rule 'stat ECG from Xingfu' is for ecg requests; "
        "rule 'cardiology ECG' is for ecg requests; rule 'other ECG' is for ecg requests; "
        "rule 'consultations' is for consultation requests."
    )
    assert caught.value.explanation == str(caught.value)


def test_rule_mismatch_reasons() -> None:
    stat_rule, cardiology = MATCHING.rules[0], MATCHING.rules[1]
    assert stat_rule.mismatch(RouteRequest("ecg", "routine")) == "is for priorities stat"
    assert stat_rule.mismatch(RouteRequest("ecg", "stat", from_organization="HEPING_THC")) == (
        "is for requests from XINGFU_THC"
    )
    assert cardiology.mismatch(RouteRequest("ecg", "stat", specialty=RADIOLOGY)) == (
        f"is for specialties {CARDIOLOGY}"
    )


def test_a_request_with_an_unknown_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="'soon' is not one of"):
        RouteRequest("ecg", "soon")


# --- choosing among candidates ----------------------------------------------------------------

BOTH_ON_DUTY = [
    service("central", "CITY_CENTRAL", kinds=["ecg"]),  # listed first, but second in `to`
    service("first", "CITY_FIRST", kinds=["ecg"]),
]


def test_first_on_duty_follows_the_order_of_to() -> None:
    first = rules(rule("ecg", '["CITY_FIRST", "CITY_CENTRAL"]'))
    decision = first.route(
        RouteRequest("ecg", "urgent"), BOTH_ON_DUTY, queues(first=9, central=0), MON_10
    )
    assert decision.service.id == "first"
    assert "first on duty in the rule's order (9 waiting)" in decision.explanation
    assert "central (CITY_CENTRAL) is also on duty but comes later in the order" in (
        decision.explanation
    )


def test_shortest_queue_picks_the_fewest_waiting() -> None:
    shortest = rules(rule("ecg", '["CITY_FIRST", "CITY_CENTRAL"]', 'choose = "shortest-queue"'))
    decision = shortest.route(
        RouteRequest("ecg", "urgent"), BOTH_ON_DUTY, queues(first=9, central=2), MON_10
    )
    assert decision.service.id == "central"
    assert "shortest queue (2 waiting)" in decision.explanation
    assert "first (CITY_FIRST) is on duty but has a longer queue (9 waiting)" in (
        decision.explanation
    )


def test_shortest_queue_ties_go_by_the_order_of_to() -> None:
    shortest = rules(rule("ecg", '["CITY_FIRST", "CITY_CENTRAL"]', 'choose = "shortest-queue"'))
    decision = shortest.route(
        RouteRequest("ecg", "urgent"), BOTH_ON_DUTY, queues(first=3, central=3), MON_10
    )
    assert decision.service.id == "first"
    assert "central (CITY_CENTRAL) has an equal queue (3 waiting) but comes later" in (
        decision.explanation
    )


def test_shortest_queue_only_counts_departments_on_duty() -> None:
    shortest = rules(rule("ecg", '["CITY_FIRST", "CITY_CENTRAL"]', 'choose = "shortest-queue"'))
    services = [
        service("first", "CITY_FIRST", kinds=["ecg"], available=DAY_SHIFT),
        service("central", "CITY_CENTRAL", kinds=["ecg"], available=NIGHT_SHIFT),
    ]
    decision = shortest.route(
        RouteRequest("ecg", "urgent"), services, queues(first=9, central=0), MON_10
    )
    assert decision.service.id == "first"


def test_departments_of_one_organization_keep_their_given_order() -> None:
    first = rules(rule("ecg", '["CITY_FIRST"]'))
    services = [
        service("ecg-b", "CITY_FIRST", kinds=["ecg"]),
        service("ecg-a", "CITY_FIRST", kinds=["ecg"]),
    ]
    assert first.route(RouteRequest("ecg", "stat"), services, queues(), MON_10).service.id == (
        "ecg-b"
    )


def test_a_rejected_request_is_rerouted_elsewhere() -> None:
    first = rules(rule("ecg", '["CITY_FIRST", "CITY_CENTRAL"]'))
    request = RouteRequest("ecg", "urgent", exclude=frozenset({"CITY_FIRST"}))
    decision = first.route(request, BOTH_ON_DUTY, queues(), MON_10)
    assert decision.service.id == "central"
    assert "CITY_FIRST is excluded (it declined this request or missed its deadline)" in (
        decision.explanation
    )


def test_the_requesting_organization_is_never_a_candidate() -> None:
    everyone = RoutingRules.default()
    services = [
        service("county", "COUNTY_HOSPITAL", kinds=["ecg"]),
        service("first", "CITY_FIRST", kinds=["ecg"], available=DAY_SHIFT),
    ]
    request = RouteRequest("ecg", "routine", from_organization="COUNTY_HOSPITAL")
    decision = everyone.route(request, services, queues(), MON_10)
    assert decision.service.id == "first"
    assert "COUNTY_HOSPITAL is the requesting organization" in decision.explanation


def test_default_rules_try_every_organization_by_code() -> None:
    everyone = RoutingRules.default()
    services = [
        service("third", "CITY_THIRD", kinds=["consultation"]),
        service("first", "CITY_FIRST", kinds=["ecg"]),
        service("central", "CITY_CENTRAL", kinds=["ecg"], available=NIGHT_SHIFT),
    ]
    ecg = everyone.route(RouteRequest("ecg", "routine"), services, queues(), MON_10)
    assert ecg.service.id == "first"  # CITY_CENTRAL comes first by code but is off duty
    assert ecg.rule == "default: any hospital on duty"
    consult = everyone.route(RouteRequest("consultation", "stat"), services, queues(), MON_10)
    assert consult.service.id == "third"
    assert everyone.deadlines == DEFAULT_DEADLINES
    both = [service("third", "CITY_THIRD", kinds=["ecg"]), service("first", "CITY_FIRST")]
    assert everyone.route(RouteRequest("ecg", "asap"), both, queues(), MON_10).service.id == (
        "first"
    )


# --- nobody on duty, nobody at all ------------------------------------------------------------

FALLBACK = rules(
    rule("cardiology", '["CITY_FIRST", "CITY_CENTRAL"]', f'specialty = ["{CARDIOLOGY}"]')
    + rule("any ECG", '["CITY_THIRD"]')
)
SHIFTS = [
    service("first", "CITY_FIRST", kinds=["ecg"], specialties=[CARDIOLOGY], available=DAY_SHIFT),
    service(
        "central", "CITY_CENTRAL", kinds=["ecg"], specialties=[CARDIOLOGY], available=NIGHT_SHIFT
    ),
    service(
        "third",
        "CITY_THIRD",
        kinds=["ecg"],
        available=[{"daysOfWeek": ["sat", "sun"], "allDay": True}],
    ),
]


def test_falls_through_to_the_next_rule_with_someone_on_duty() -> None:
    decision = FALLBACK.route(RouteRequest("ecg", "urgent"), SHIFTS, queues(), SAT_10)
    assert (decision.rule, decision.service.id, decision.on_duty) == ("any ECG", "third", True)
    assert decision.explanation.startswith(
        "Under rule 'cardiology' no department is on duty: "
        "first (CITY_FIRST) is off duty (hours mon-fri 08:00-17:00); "
        "central (CITY_CENTRAL) is off duty (hours mon-fri 20:00-08:00 overnight). "
        "Under rule 'any ECG', this request goes to third (CITY_THIRD): "
        "on duty now (hours sat-sun all day)"
    )


def test_nobody_on_duty_waits_in_the_first_candidates_queue() -> None:
    wednesday_18 = datetime(2024, 5, 8, 18, 0, tzinfo=CST)
    decision = FALLBACK.route(RouteRequest("ecg", "stat"), SHIFTS, queues(first=4), wednesday_18)
    assert (decision.rule, decision.service.id, decision.on_duty) == ("cardiology", "first", False)
    assert decision.explanation == (
        "No department is on duty under any matching rule, so this request waits in the queue of "
        "first (CITY_FIRST) (4 waiting), the first candidate under rule 'cardiology'; it is on "
        "duty mon-fri 08:00-17:00. Under rule 'cardiology': central (CITY_CENTRAL) is off duty "
        "(hours mon-fri 20:00-08:00 overnight). Under rule 'any ECG': third (CITY_THIRD) is off "
        "duty (hours sat-sun all day). Answer due by 2024-05-08 18:30 (+08:00)."
    )


def test_no_candidate_anywhere_raises_no_route_with_each_rules_reasons() -> None:
    services = [
        service("first-img", "CITY_FIRST", kinds=["imaging"]),
        service("central", "CITY_CENTRAL", kinds=["ecg"], active=False),
        service("third", "CITY_THIRD", kinds=["ecg"], specialties=[RADIOLOGY]),
    ]
    request = RouteRequest("ecg", "urgent", specialty=CARDIOLOGY, exclude=frozenset({"CITY_X"}))
    text = rule("cardiology", '["CITY_FIRST", "CITY_CENTRAL", "CITY_X"]') + rule(
        "any ECG", '["CITY_THIRD", "CITY_NEW"]'
    )
    with pytest.raises(NoRoute) as caught:
        rules(text).route(request, services, queues(), MON_10)
    assert str(caught.value) == (
        f"No department can take this urgent ecg request for specialty {CARDIOLOGY}. "
        "Under rule 'cardiology': first-img (CITY_FIRST) does not read ecg requests; "
        "central (CITY_CENTRAL) is inactive; "
        "CITY_X is excluded (it declined this request or missed its deadline). "
        "Under rule 'any ECG': third (CITY_THIRD) does not offer specialty "
        f"{CARDIOLOGY}; CITY_NEW has no department in the directory."
    )


def test_routing_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FALLBACK.route(RouteRequest("ecg", "stat"), SHIFTS, queues(), datetime(2024, 5, 6, 10))


# --- deadlines --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        ("stat", timedelta(minutes=30)),
        ("asap", timedelta(hours=1)),
        ("urgent", timedelta(hours=2)),
        ("routine", timedelta(hours=24)),
    ],
)
def test_default_deadlines(priority: str, expected: timedelta) -> None:
    assert DEFAULT_DEADLINES[priority] == expected
    assert deadline_for(priority) == expected
    decision = RoutingRules.default().route(
        RouteRequest("ecg", priority), [service("s", "CITY_FIRST")], queues(), MON_10
    )
    assert decision.deadline == MON_10 + expected


def test_custom_deadlines_override_only_what_they_name() -> None:
    custom = rules('[deadlines]\nstat = "15m"\nroutine = "1d12h"\n' + rule("any", '["CITY_FIRST"]'))
    assert custom.deadline_for("stat") == timedelta(minutes=15)
    assert custom.deadline_for("routine") == timedelta(days=1, hours=12)
    assert custom.deadline_for("urgent") == timedelta(hours=2)
    decision = custom.route(
        RouteRequest("ecg", "stat"), [service("s", "CITY_FIRST")], queues(), MON_10
    )
    assert decision.deadline == datetime(2024, 5, 6, 10, 15, tzinfo=CST)
    assert decision.explanation.endswith("Answer due by 2024-05-06 10:15 (+08:00).")
    with pytest.raises(ValueError):
        deadline_for("whenever")


# --- escalation -------------------------------------------------------------------------------

ESCALATING = rules(
    rule(
        "ecg",
        '["CITY_FIRST", "CITY_SECOND", "CITY_CENTRAL"]',
        'escalate_to = ["CITY_CENTRAL", "CITY_FIRST"]',
    )
    + rule("plain", '["CITY_FIRST", "CITY_SECOND"]', kind='["imaging"]')
)
THREE = [
    service("first", "CITY_FIRST"),
    service("second", "CITY_SECOND"),
    service("central", "CITY_CENTRAL"),
]


def test_escalate_goes_to_escalate_to_and_never_back() -> None:
    request = RouteRequest("ecg", "stat")
    decision = ESCALATING.escalate(request, THREE[0], THREE, queues(), MON_10)
    assert decision.service.id == "central"  # escalate_to first, although second is on duty
    assert decision.explanation.startswith(
        "deadline missed at first (CITY_FIRST) by 2024-05-06 10:00 (+08:00). "
        "Under the escalate_to list of rule 'ecg', this request goes to central (CITY_CENTRAL)"
    )
    assert "CITY_FIRST is excluded" in decision.explanation
    assert decision.deadline == MON_10 + timedelta(minutes=30)

    # escalate_to names the organization that missed it: the next one on its list
    missed_again = ESCALATING.escalate(request, THREE[2], THREE, queues(), MON_10)
    assert missed_again.service.id == "first"


def test_escalate_without_escalate_to_uses_the_rules_other_candidates() -> None:
    decision = ESCALATING.escalate(
        RouteRequest("imaging", "urgent"), THREE[0], THREE, queues(), MON_10
    )
    assert decision.service.id == "second"
    assert decision.explanation.startswith("deadline missed at first (CITY_FIRST)")


def test_escalate_with_nothing_else_raises_no_route() -> None:
    with pytest.raises(NoRoute) as caught:
        ESCALATING.escalate(
            RouteRequest("imaging", "urgent"), THREE[0], THREE[:1], queues(), MON_10
        )
    assert str(caught.value).startswith("deadline missed at first (CITY_FIRST)")
    assert "CITY_FIRST is excluded" in str(caught.value)
    assert "CITY_SECOND has no department in the directory" in str(caught.value)


# --- the explanation --------------------------------------------------------------------------


def test_the_explanation_names_the_choice_and_every_alternative() -> None:
    example = RoutingRules.load(EXAMPLE)
    services = [
        service(
            "hs-ecg",
            "CITY_FIRST",
            kinds=["ecg"],
            specialties=[CARDIOLOGY],
            available=DAY_SHIFT,
            name="ECG reading room",
        ),
        service("hs-ct", "CITY_FIRST", kinds=["imaging"], name="Radiology"),
        service(
            "hs-heart",
            "CITY_CENTRAL",
            kinds=["ecg"],
            specialties=[CARDIOLOGY],
            available=NIGHT_SHIFT,
            name="Heart centre",
        ),
    ]
    request = RouteRequest("ecg", "urgent", specialty=CARDIOLOGY, from_organization="XINGFU_THC")
    decision = example.route(request, services, queues(**{"hs-ecg": 3}), MON_10)

    assert decision.rule == "ECG to cardiology"
    assert decision.explanation == (
        "Under rule 'ECG to cardiology', this request goes to ECG reading room (CITY_FIRST): "
        "on duty now (hours mon-fri 08:00-17:00), shortest queue (3 waiting). Not chosen: "
        "Heart centre (CITY_CENTRAL) is off duty (hours mon-fri 20:00-08:00 overnight); "
        "Radiology (CITY_FIRST) does not read ecg requests. "
        "Answer due by 2024-05-06 12:00 (+08:00)."
    )
    again = example.route(request, services, queues(**{"hs-ecg": 3}), MON_10)
    assert again.explanation == decision.explanation
    assert "\n" not in decision.explanation

"""Organization policy rules: model, validation, conditions, the compiled index, Casbin.

A rule is ``(id, subject, capability pattern, effect, conditions)``:

* subject: ``agent:<uapk_id>``, ``team:<team>`` (the ``agent.team`` of the agent's deciding
  manifest) or ``*`` (every agent);
* capability: a pattern of the manifest grammar (``policies.capabilities``);
* effect: ``deny``, ``escalate`` or ``allow``;
* conditions (all optional, all must hold): ``amount_above``, ``amount_below``, ``currency``,
  ``jurisdiction_in``, ``hours_utc``, ``outside_hours_utc``, ``weekdays``.

Semantics (docs/policies.md): rules gate and narrow, manifests grant. For a request the
manifest already allows, with the rules whose subject and pattern match:

1. a ``deny`` rule whose conditions hold denies;
2. else an ``escalate`` rule whose conditions hold requires a human;
3. else, if ``allow`` rules match the capability, at least one must have its conditions hold
   ("only under these conditions"), otherwise the request is denied;
4. else the rules have no objection.

Conditions fail closed: an attribute the request does not carry (no amount, no currency, no
counterparty jurisdiction) makes a deny/escalate condition hold and an allow condition fail.
A verdict names those missing fields (``Verdict.missing``, ``Match.missing``) so that a denial
says why, not only which rule.

Conditions are data, parsed by strict grammars and evaluated by plain comparisons; no user
text is ever evaluated. No HTTP, no SQL here.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import FieldIssue, ValidationFailed
from core.ids import UAPK_ID, UAPK_ID_GRAMMAR
from core.text import text_issue
from policies.capabilities import is_valid_pattern

RULES_MODEL_PATH = Path(__file__).parent / "rules_model.conf"
EFFECTS = ("deny", "escalate", "allow")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONDITION_KEYS = (
    "amount_above", "amount_below", "currency", "jurisdiction_in", "hours_utc", "outside_hours_utc", "weekdays",
)
RULE_KEYS = ("id", "subject", "capability", "effect", "conditions", "description")
MAX_RULES = 1000

RULE_ID = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,62}\Z", re.ASCII)
# The separators of the Casbin line; control and invisible characters are core/text.py's.
TEAM = re.compile(r"\A[^,;|]{1,200}\Z")
CURRENCY = re.compile(r"\A[A-Z]{3}\Z", re.ASCII)
JURISDICTION = re.compile(r"\A[A-Z]{2}(?:-[A-Z0-9]{1,3})?\Z", re.ASCII)
HOURS = re.compile(r"\A(\d{2}):(\d{2})-(\d{2}):(\d{2})\Z", re.ASCII)
MAX_AMOUNT = 1e15
_DAY_NAMES = {name: i for i, name in enumerate(WEEKDAYS)} | {
    full: i for i, full in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}


# --- the request's attributes -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RuleContext:
    """What conditions look at. ``None`` = the request does not carry it."""

    amount: float | None = None
    currency: str | None = None
    jurisdiction: str | None = None
    minute: int = 0  # UTC minute of the day, 0..1439
    weekday: int = 0  # 0 = Monday

    @classmethod
    def at(cls, epoch: float, amount: Any = None, currency: Any = None, jurisdiction: Any = None) -> RuleContext:
        t = datetime.fromtimestamp(epoch, UTC)
        amt = float(amount) if isinstance(amount, (int, float)) and not isinstance(amount, bool) else None
        if amt is not None and not math.isfinite(amt):
            amt = None
        cur = currency.strip().upper() if isinstance(currency, str) and currency.strip() else None
        jur = jurisdiction.strip().upper() if isinstance(jurisdiction, str) and jurisdiction.strip() else None
        return cls(amt, cur, jur, t.hour * 60 + t.minute, t.weekday())

    @classmethod
    def of_request(cls, req: Any, epoch: float) -> RuleContext:
        """From a gateway request (``GatewayActionRequest``: action.amount/currency,
        counterparty.jurisdiction)."""
        cp = getattr(req, "counterparty", None)
        return cls.at(epoch, req.action.amount, req.action.currency, getattr(cp, "jurisdiction", None) if cp else None)


# --- conditions ---------------------------------------------------------------------------
def _fmt_minute(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


@dataclass(frozen=True, slots=True)
class Conditions:
    amount_above: float | None = None
    amount_below: float | None = None
    currency: tuple[str, ...] = ()
    jurisdiction_in: tuple[str, ...] = ()
    hours_utc: tuple[int, int] | None = None  # [start, end) minutes; wraps midnight if start > end
    outside_hours_utc: tuple[int, int] | None = None
    weekdays: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.to_dict())

    def missing(self, ctx: RuleContext) -> tuple[str, ...]:
        """The request fields these conditions read that ``ctx`` does not carry, named as in
        the gateway request; each such condition was decided fail-closed by ``holds``."""
        out: tuple[str, ...] = ()
        if (self.amount_above is not None or self.amount_below is not None) and ctx.amount is None:
            out += ("action.amount",)
        if self.currency and ctx.currency is None:
            out += ("action.currency",)
        if self.jurisdiction_in and ctx.jurisdiction is None:
            out += ("counterparty.jurisdiction",)
        return out

    def holds(self, ctx: RuleContext, missing: bool) -> bool:
        """All conditions hold for ``ctx``. ``missing`` is the value of a condition on an
        attribute the request does not carry (True for deny/escalate, False for allow)."""
        if self.amount_above is not None or self.amount_below is not None:
            if ctx.amount is None:
                if not missing:
                    return False
            else:
                if self.amount_above is not None and not ctx.amount > self.amount_above:
                    return False
                if self.amount_below is not None and not ctx.amount < self.amount_below:
                    return False
        if self.currency:
            if ctx.currency is None:
                if not missing:
                    return False
            elif ctx.currency not in self.currency:
                return False
        if self.jurisdiction_in:
            if ctx.jurisdiction is None:
                if not missing:
                    return False
            elif ctx.jurisdiction not in self.jurisdiction_in:
                return False
        if self.hours_utc is not None and not _in_window(self.hours_utc, ctx.minute):
            return False
        if self.outside_hours_utc is not None and _in_window(self.outside_hours_utc, ctx.minute):
            return False
        if self.weekdays and ctx.weekday not in self.weekdays:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.amount_above is not None:
            out["amount_above"] = _num(self.amount_above)
        if self.amount_below is not None:
            out["amount_below"] = _num(self.amount_below)
        if self.currency:
            out["currency"] = list(self.currency)
        if self.jurisdiction_in:
            out["jurisdiction_in"] = list(self.jurisdiction_in)
        if self.hours_utc is not None:
            out["hours_utc"] = f"{_fmt_minute(self.hours_utc[0])}-{_fmt_minute(self.hours_utc[1])}"
        if self.outside_hours_utc is not None:
            a, b = self.outside_hours_utc
            out["outside_hours_utc"] = f"{_fmt_minute(a)}-{_fmt_minute(b)}"
        if self.weekdays:
            out["weekdays"] = [WEEKDAYS[d] for d in self.weekdays]
        return out

    def to_string(self) -> str:
        """The Casbin/CSV form: ``key=value`` joined by ``;``, lists joined by ``|``."""
        parts = []
        for key, value in self.to_dict().items():
            text = "|".join(str(v) for v in value) if isinstance(value, list) else str(value)
            parts.append(f"{key}={text}")
        return ";".join(parts)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else x


def _in_window(window: tuple[int, int], minute: int) -> bool:
    start, end = window
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps midnight


def _parse_hhmm(h: str, m: str, allow_24: bool) -> int | None:
    hh, mm = int(h), int(m)
    if allow_24 and hh == 24 and mm == 0:
        return 1440
    if hh > 23 or mm > 59:
        return None
    return hh * 60 + mm


def parse_conditions(raw: Any, where: str = "conditions") -> tuple[Conditions, list[FieldIssue]]:
    """Validate a conditions object (YAML/JSON). Returns the conditions and the issues."""
    issues: list[FieldIssue] = []
    if raw is None:
        return Conditions(), issues
    if not isinstance(raw, Mapping):
        return Conditions(), [FieldIssue(where, "Must be an object.")]
    values: dict[str, Any] = {}
    for key in raw:
        if key not in CONDITION_KEYS:
            issues.append(FieldIssue(f"{where}.{key}", f"Unknown condition (one of: {', '.join(CONDITION_KEYS)})."))
    for key in ("amount_above", "amount_below"):
        if key in raw and raw[key] is not None:
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or v > MAX_AMOUNT:
                issues.append(FieldIssue(f"{where}.{key}", "Must be a number between 0 and 1e15."))
            else:
                values[key] = float(v)
    if "amount_above" in values and "amount_below" in values and values["amount_above"] >= values["amount_below"]:
        issues.append(FieldIssue(f"{where}.amount_below", "Must be greater than amount_above (no amount would match)."))
    for key, grammar, what in (("currency", CURRENCY, "an ISO 4217 code such as EUR"),
                               ("jurisdiction_in", JURISDICTION, "an ISO 3166 code such as DE or US-CA")):
        if key in raw and raw[key] is not None:
            items = raw[key]
            if isinstance(items, str):
                items = [items]
            if not isinstance(items, (list, tuple)) or not items or len(items) > 300:
                issues.append(FieldIssue(f"{where}.{key}", "Must be a non-empty list (at most 300)."))
                continue
            out: list[str] = []
            for i, item in enumerate(items):
                code = item.strip().upper() if isinstance(item, str) else None
                if code is None or not grammar.match(code):
                    issues.append(FieldIssue(f"{where}.{key}.{i}", f"Must be {what}."))
                elif code not in out:
                    out.append(code)
            values[key] = tuple(sorted(out))
    for key in ("hours_utc", "outside_hours_utc"):
        if key in raw and raw[key] is not None:
            v = raw[key]
            m = HOURS.match(v) if isinstance(v, str) else None
            start = _parse_hhmm(m.group(1), m.group(2), False) if m else None
            end = _parse_hhmm(m.group(3), m.group(4), True) if m else None
            if start is None or end is None:
                issues.append(FieldIssue(f"{where}.{key}", "Must be 'HH:MM-HH:MM' (UTC, start inclusive, end exclusive)."))
            elif start == end % 1440:
                issues.append(FieldIssue(f"{where}.{key}", "Start and end must differ."))
            else:
                values[key] = (start, end)
    if "weekdays" in raw and raw["weekdays"] is not None:
        items = raw["weekdays"]
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, (list, tuple)) or not items:
            issues.append(FieldIssue(f"{where}.weekdays", "Must be a non-empty list of mon..sun."))
        else:
            days: set[int] = set()
            for i, item in enumerate(items):
                day = _DAY_NAMES.get(item.strip().lower()) if isinstance(item, str) else None
                if day is None:
                    issues.append(FieldIssue(f"{where}.weekdays.{i}", "Must be one of mon, tue, wed, thu, fri, sat, sun."))
                else:
                    days.add(day)
            values["weekdays"] = tuple(sorted(days))
    if issues:
        return Conditions(), issues
    return Conditions(**values), issues


def parse_condition_string(text: str, where: str = "conditions") -> tuple[Conditions, list[FieldIssue]]:
    """The CSV/Casbin form ``key=value;key=a|b`` -> conditions (same validation)."""
    text = (text or "").strip()
    if not text or text == "-":
        return Conditions(), []
    raw: dict[str, Any] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            return Conditions(), [FieldIssue(where, f"'{part[:60]}' is not key=value.")]
        value = value.strip()
        if key in ("amount_above", "amount_below"):
            try:
                raw[key] = float(value)
            except ValueError:
                raw[key] = value
        elif key in ("currency", "jurisdiction_in", "weekdays"):
            raw[key] = [v for v in value.split("|")]
        else:
            raw[key] = value
    return parse_conditions(raw, where)


# --- rules --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    subject: str
    capability: str
    effect: str
    conditions: Conditions = field(default_factory=Conditions)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "subject": self.subject, "capability": self.capability,
                               "effect": self.effect}
        cond = self.conditions.to_dict()
        if cond:
            out["conditions"] = cond
        if self.description:
            out["description"] = self.description
        return out

    def line(self) -> tuple[str, str, str, str, str]:
        """The Casbin ``p`` line (without ``p``)."""
        return (self.subject, self.capability, self.effect, self.conditions.to_string(), self.id)

    def applies_to(self, uapk_id: str, team: str | None) -> bool:
        return self.subject == "*" or self.subject == f"agent:{uapk_id}" or (
            team is not None and self.subject == f"team:{team}")


def subject_issue(subject: Any) -> str | None:
    if not isinstance(subject, str):
        return "Must be a string: agent:<uapk_id>, team:<team> or *."
    if subject == "*":
        return None
    kind, sep, name = subject.partition(":")
    if not sep or kind not in ("agent", "team"):
        return "Unknown subject kind: use agent:<uapk_id>, team:<team> or *."
    if kind == "agent" and not UAPK_ID.match(name):
        return f"agent:<uapk_id> needs a uapk_id of {UAPK_ID_GRAMMAR}."
    # The team name is shown to people: the one text rule (core/text.py) as well as the
    # separators of the Casbin line.
    if kind == "team" and (not TEAM.match(name) or name != name.strip() or text_issue(name) is not None):
        return "team:<team> needs 1-200 characters without control characters, ',', ';' or '|'."
    return None


def parse_rule(raw: Any, where: str, auto_id: str | None = None) -> tuple[Rule | None, list[FieldIssue]]:
    """Validate one rule (an object). ``auto_id`` is used when it has no id."""
    if not isinstance(raw, Mapping):
        return None, [FieldIssue(where or "body", "Must be an object.")]
    pre = f"{where}." if where else ""
    issues: list[FieldIssue] = []
    for key in raw:
        if key not in RULE_KEYS:
            issues.append(FieldIssue(f"{pre}{key}", "Unknown field."))
    rule_id = raw.get("id", auto_id)
    if rule_id is None:
        issues.append(FieldIssue(f"{pre}id", "Required."))
    elif not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        issues.append(FieldIssue(f"{pre}id", "Must be 1-63 characters of [a-z0-9_.-], starting with a letter or digit."))
    subject = raw.get("subject")
    if subject is None:
        issues.append(FieldIssue(f"{pre}subject", "Required."))
    else:
        problem = subject_issue(subject)
        if problem:
            issues.append(FieldIssue(f"{pre}subject", problem))
    cap = raw.get("capability")
    if cap is None:
        issues.append(FieldIssue(f"{pre}capability", "Required."))
    elif not is_valid_pattern(cap):
        issues.append(FieldIssue(f"{pre}capability", "Must be a capability pattern 'resource:action' "
                                                      "(segments [a-z0-9_-]+ or a whole '*')."))
    effect = raw.get("effect")
    if effect not in EFFECTS:
        issues.append(FieldIssue(f"{pre}effect", "Must be one of allow, deny, escalate."))
    desc = raw.get("description", "")
    if desc is None:
        desc = ""
    if not isinstance(desc, str) or len(desc) > 500:
        issues.append(FieldIssue(f"{pre}description", "At most 500 characters, no control characters."))
    elif (problem := text_issue(desc)) is not None:  # shown to people: the one text rule (core/text.py)
        issues.append(FieldIssue(f"{pre}description", problem))
    cond_raw = raw.get("conditions")
    if isinstance(cond_raw, str):
        cond, cond_issues = parse_condition_string(cond_raw, f"{pre}conditions")
    else:
        cond, cond_issues = parse_conditions(cond_raw, f"{pre}conditions")
    issues.extend(cond_issues)
    if issues:
        return None, issues
    return Rule(rule_id, subject, cap, effect, cond, desc), issues  # type: ignore[arg-type]


def parse_rules(raw: Any, where: str = "rules") -> list[Rule]:
    """Validate a whole rule set; raises ``ValidationFailed`` with dotted fields."""
    if not isinstance(raw, (list, tuple)):
        raise ValidationFailed(details=[FieldIssue(where, "Must be a list of rules.")])
    if len(raw) > MAX_RULES:
        raise ValidationFailed(details=[FieldIssue(where, f"At most {MAX_RULES} rules.")])
    issues: list[FieldIssue] = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        rule, problems = parse_rule(item, f"{where}.{i}", auto_id=f"rule-{i + 1}")
        issues.extend(problems)
        if rule is not None:
            if rule.id in seen:
                issues.append(FieldIssue(f"{where}.{i}.id", f"Duplicate id (also {where}.{seen[rule.id]})."))
            seen[rule.id] = i
            rules.append(rule)
    if issues:
        raise ValidationFailed(details=issues)
    return rules


def rule_from_line(line: Sequence[str], where: str = "line", auto_id: str = "rule-1") -> Rule:
    """A Casbin ``p`` line (``sub, obj, effect, cond, id``) -> a validated rule."""
    vals = [str(v).strip() for v in line]
    if len(vals) < 3 or len(vals) > 5:
        raise ValidationFailed(details=[FieldIssue(where, "Expected p, subject, capability, effect[, conditions[, id]].")])
    while len(vals) < 5:
        vals.append("")
    raw: dict[str, Any] = {"subject": vals[0], "capability": vals[1], "effect": vals[2], "conditions": vals[3]}
    if vals[4]:
        raw["id"] = vals[4]
    rule, issues = parse_rule(raw, where, auto_id=auto_id)
    if rule is None:
        raise ValidationFailed(details=issues)
    return rule


# --- the compiled index ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    held: bool  # its conditions hold for this request
    missing: tuple[str, ...] = ()  # request fields its conditions read that the request lacks


@dataclass(frozen=True, slots=True)
class Verdict:
    """``effect``: "deny", "escalate", "narrowed" (allow rules match, none holds) or None."""

    effect: str | None
    rule: Rule | None = None
    matched: tuple[Match, ...] = ()
    # Request fields whose absence decided ``effect`` (fail closed): the deciding rule's, or
    # for "narrowed" those of every allow rule that failed.
    missing: tuple[str, ...] = ()

    @property
    def rule_ref(self) -> str | None:
        return f"policy:{self.rule.id}" if self.rule is not None else None


NO_OBJECTION = Verdict(None)


def _candidates(capability: str) -> tuple[str, str, str, str]:
    res, _, act = capability.partition(":")
    return (capability, f"{res}:*", f"*:{act}", "*:*")


@dataclass(frozen=True)
class RuleIndex:
    """Rules keyed by subject then pattern: a lookup is at most 3 subjects x 4 patterns probes."""

    version: int
    rules: tuple[Rule, ...]
    by_subject: Mapping[str, Mapping[str, tuple[Rule, ...]]]
    digest: str = ""

    @classmethod
    def build(cls, rules: Iterable[Rule], version: int = 0) -> RuleIndex:
        import hashlib
        import json

        ordered = tuple(sorted(rules, key=lambda r: r.id))
        by: dict[str, dict[str, list[Rule]]] = {}
        for r in ordered:
            by.setdefault(r.subject, {}).setdefault(r.capability, []).append(r)
        frozen = {s: {p: tuple(v) for p, v in d.items()} for s, d in by.items()}
        digest = hashlib.sha256(json.dumps([r.line() for r in ordered]).encode()).hexdigest()[:12] if ordered else ""
        return cls(version, ordered, frozen, digest)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def matching(self, uapk_id: str, team: str | None, capability: str) -> list[Rule]:
        subjects = [f"agent:{uapk_id}", "*"]
        if team is not None:
            subjects.append(f"team:{team}")
        out: list[Rule] = []
        for s in subjects:
            table = self.by_subject.get(s)
            if not table:
                continue
            for p in _candidates(capability):
                hit = table.get(p)
                if hit:
                    out.extend(hit)
        return out

    def evaluate(self, uapk_id: str, team: str | None, capability: str, ctx: RuleContext) -> Verdict:
        if not self.by_subject:
            return NO_OBJECTION
        found = self.matching(uapk_id, team, capability)
        if not found:
            return NO_OBJECTION
        found.sort(key=lambda r: (EFFECTS.index(r.effect), r.id))
        matched = tuple(Match(r, r.conditions.holds(ctx, missing=r.effect != "allow"), r.conditions.missing(ctx))
                        for r in found)
        for effect in ("deny", "escalate"):
            for m in matched:
                if m.rule.effect == effect and m.held:
                    return Verdict(effect, m.rule, matched, m.missing)
        allows = [m for m in matched if m.rule.effect == "allow"]
        if allows:
            held = [m for m in allows if m.held]
            if held:
                return Verdict(None, held[0].rule, matched)
            missing = tuple(dict.fromkeys(f for m in allows for f in m.missing))
            return Verdict("narrowed", allows[0].rule, matched, missing)
        return Verdict(None, None, matched)


EMPTY_INDEX = RuleIndex(0, (), {}, "")


# --- pycasbin: the oracle and explanations -----------------------------------------------
def cond_match(cond: str, effect: str, ctx: Any) -> bool:
    """Casbin function ``condMatch(p.cond, p.act, r.ctx)``."""
    conditions, issues = _cond_cache(cond)
    if issues:
        return effect != "allow"  # an unparseable condition fails closed
    return conditions.holds(ctx, missing=effect != "allow")


_COND_CACHE: dict[str, tuple[Conditions, list[FieldIssue]]] = {}


def _cond_cache(cond: str) -> tuple[Conditions, list[FieldIssue]]:
    hit = _COND_CACHE.get(cond)
    if hit is None:
        if len(_COND_CACHE) > 4096:
            _COND_CACHE.clear()
        hit = _COND_CACHE[cond] = parse_condition_string(cond)
    return hit


def casbin_lines(rules: Iterable[Rule]) -> list[list[str]]:
    return [list(r.line()) for r in rules]


def build_rules_enforcer(rules: Iterable[Rule], memberships: Mapping[str, str | None] = {}) -> Any:
    """A pycasbin enforcer over ``rules_model.conf``; ``memberships``: uapk_id -> team."""
    import casbin

    from policies.capabilities import casbin_match

    model = casbin.model.Model()
    model.load_model(str(RULES_MODEL_PATH))
    enforcer = casbin.Enforcer(model)
    enforcer.add_function("capMatch", casbin_match)
    enforcer.add_function("condMatch", cond_match)
    lines = casbin_lines(rules)
    if lines:
        enforcer.add_named_policies("p", lines)
    groups = [[f"agent:{u}", f"team:{t}"] for u, t in memberships.items() if t is not None]
    if groups:
        enforcer.add_named_grouping_policies("g", groups)
    return enforcer


def casbin_verdict(enforcer: Any, uapk_id: str, capability: str, ctx: RuleContext) -> tuple[str | None, dict[str, list[str]]]:
    """(effect as in ``RuleIndex.evaluate``, the line each matcher explained) per pycasbin."""
    from casbin.core_enforcer import EnforceContext

    sub = f"agent:{uapk_id}"
    explained: dict[str, list[str]] = {}
    results: dict[str, bool] = {}
    for name, mtype in (("deny", "m"), ("escalate", "m2"), ("allow_applies", "m3"), ("allow_holds", "m4")):
        ok, explain = enforcer.enforce_ex(EnforceContext("r", "p", "e", mtype), sub, capability, ctx)
        results[name] = bool(ok)
        if explain:
            explained[name] = list(explain)
    if results["deny"]:
        return "deny", explained
    if results["escalate"]:
        return "escalate", explained
    if results["allow_applies"] and not results["allow_holds"]:
        return "narrowed", explained
    return None, explained


# --- files: YAML and Casbin CSV -----------------------------------------------------------
def dump_yaml(rules: Iterable[Rule], header: str = "") -> str:
    import yaml

    body: str = yaml.safe_dump({"rules": [r.to_dict() for r in rules]}, sort_keys=False, allow_unicode=True)
    return (header + body) if header else body


def dump_csv(rules: Iterable[Rule]) -> str:
    """Casbin CSV for ``rules_model.conf``: ``p, subject, capability, effect, conditions, id``."""
    lines = ["# Bastion policy rules (policies/rules_model.conf): p, subject, capability, effect, conditions, id"]
    for r in rules:
        lines.append("p, " + ", ".join(r.line()))
    return "\n".join(lines) + "\n"


def parse_csv(text: str) -> list[Rule]:
    rules: list[Rule] = []
    issues: list[FieldIssue] = []
    for n, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        fields = next(csv.reader(io.StringIO(line), skipinitialspace=True))
        where = f"line.{n}"
        if not fields or fields[0].strip() != "p":
            issues.append(FieldIssue(where, "Only 'p' lines (p, subject, capability, effect, conditions, id)."))
            continue
        try:
            rules.append(rule_from_line(fields[1:], where, auto_id=f"line-{n}"))
        except ValidationFailed as exc:
            issues.extend(exc.details)
    if issues:
        raise ValidationFailed("The rule file is not valid.", issues)
    ids = [r.id for r in rules]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)  # linear: 100k-rule files
    if dup:
        raise ValidationFailed("The rule file is not valid.", [FieldIssue("rules", f"Duplicate ids: {', '.join(dup)}.")])
    return rules


def parse_rules_text(text: str, fmt: str | None = None) -> list[Rule]:
    """YAML (``rules: [...]`` or a bare list) or Casbin CSV; ``fmt`` None guesses."""
    if fmt is None:
        stripped = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        fmt = "csv" if stripped and all(ln.startswith("p,") for ln in stripped) else "yaml"
    if fmt == "csv":
        return parse_csv(text)
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationFailed("The rule file is not valid YAML.", [FieldIssue("file", str(exc)[:300])]) from None
    if isinstance(doc, Mapping):
        doc = doc.get("rules", [])
    return parse_rules(doc if doc is not None else [], "rules")


def load_rules_file(path: str | Path) -> list[Rule]:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    fmt = "csv" if p.suffix.lower() == ".csv" else ("yaml" if p.suffix.lower() in (".yaml", ".yml") else None)
    return parse_rules_text(text, fmt)

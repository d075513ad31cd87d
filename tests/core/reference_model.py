"""A small, deliberately plain reference model of SPEC sections 1 to 3.

It is the oracle of the property tests: written from the SPEC text alone, favouring obviousness
over speed (profiles are Python dicts, lookups are linear scans). It knows nothing of the engine.

Where the SPEC leaves a detail open, the model states the assumption it makes next to the code
(look for "Assumption").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# An identifier: (collection, type, value).
Ident = tuple[str, str, str]

DAY = 86_400.0
WINDOW_SECONDS: dict[str, float | None] = {
    "ever": None,
    "annually": 365 * DAY,
    "monthly": 30 * DAY,
    "weekly": 7 * DAY,
    "daily": DAY,
}

# SPEC 2, Priority: the default order.
DEFAULT_ORDER = [
    "user_id",
    "email",
    "android.id",
    "ios.id",
    "android.idfa",
    "ios.idfa",
    "android.push_token",
    "ios.push_token",
    "ga_client_id",
    "anonymous_id",
]
BUILT_IN = [*DEFAULT_ORDER, "group_id"]

# SPEC 2, Blocked values: the defaults.
DEFAULT_BLOCKED = [
    "-1", "null", "none", "nil", "nan", "undefined", "anonymous", "guest", "unknown",
    "[object object]", "true", "false",
]  # fmt: skip
DEFAULT_BLOCKED_REGEX = [r"^[0-]*$"]


# Rule names of the model. The test maps them to the engine's names.
BLOCKED = "blocked"
TOO_LONG = "too_long"
NO_CREATE = "create"
NO_ADD = "add"
NO_MERGE = "merge"
LIMIT = "limit"
MERGE_CAP = "merge_cap"
IDENTIFIER_CAP = "identifier_cap"


@dataclass
class Profile:
    number: int  # creation order: a lower number is an older profile
    collection: str
    ids: dict[Ident, float] = field(default_factory=dict)  # identifier -> first attach time
    merges: int = 0  # profiles merged into this one, counted through earlier merges
    merged_into: int | None = None


@dataclass
class Side:
    """What happened to one collection (users or accounts) of one message."""

    profile: int | None = None  # the profile the message resolved to; None: unresolved
    created: bool = False
    merged: list[int] = field(default_factory=list)
    added: list[Ident] = field(default_factory=list)
    # (identifier, rule); a refused merge is recorded as (("users", "profile", "<n>"), rule)
    dropped: list[tuple[Ident, str]] = field(default_factory=list)


@dataclass
class Outcome:
    duplicate: bool = False
    users: Side = field(default_factory=Side)
    accounts: Side = field(default_factory=Side)
    extraction_drops: list[tuple[Ident, str]] = field(default_factory=list)


@dataclass
class Rules:
    """The parts of an `identity` config table that resolution depends on."""

    priority: list[str]
    limits: dict[str, tuple[int, str]]
    blocked: list[str]
    blocked_regex: list[str]
    blocked_by_type: dict[str, tuple[list[str], list[str]]]
    sources: dict[str, dict[str, bool]]
    custom_types: list[str]
    max_merges: int
    max_identifiers: int
    preset: str
    generic_after: int

    @classmethod
    def from_config(cls, identity: dict[str, Any]) -> Rules:
        def split(entries: list[Any]) -> tuple[list[str], list[str]]:
            exact = [e for e in entries if isinstance(e, str)]
            regex = [e["regex"] for e in entries if isinstance(e, dict)]
            return exact, regex

        exact, regex = split(identity.get("blocked_values", []))
        by_type = {t: split(v) for t, v in identity.get("blocked_values_by_type", {}).items()}
        limits = {
            t: (spec["max"], spec.get("window", "ever"))
            for t, spec in identity.get("limits", {}).items()
        }
        priority = list(identity.get("priority", []))
        # SPEC 1: configured custom types are "types declared in the config".
        # Assumption: naming a type anywhere in the identity rules declares it.
        custom = []
        for t in [*priority, *limits, *by_type]:
            if t not in BUILT_IN and t not in custom:
                custom.append(t)
        return cls(
            priority=priority,
            limits=limits,
            blocked=[*DEFAULT_BLOCKED, *exact],
            blocked_regex=[*DEFAULT_BLOCKED_REGEX, *regex],
            blocked_by_type=by_type,
            sources=dict(identity.get("sources", {})),
            custom_types=custom,
            max_merges=identity.get("max_merges", 100),
            max_identifiers=identity.get("max_identifiers", 1000),
            preset=identity.get("preset", "idstitch"),  # the default preset
            generic_after=identity.get("generic_after", 2),
        )

    # SPEC 2, Priority.
    def rank(self, type_: str) -> tuple[int, int, str]:
        if type_ in self.priority:
            return (0, self.priority.index(type_), "")
        if type_ in DEFAULT_ORDER:
            return (1, DEFAULT_ORDER.index(type_), "")
        # Assumption: `group_id`, the account's own id, ranks first among the built-in types.
        if type_ == "group_id":
            return (1, -1, "")
        return (2, 0, type_)

    # SPEC 2, Limits: the defaults.
    def limit(self, type_: str) -> tuple[int, str]:
        if type_ in self.limits:
            return self.limits[type_]
        if type_ == "user_id":
            return (1, "ever")
        if type_ in ("email", "ios.id", "android.id", "ios.push_token", "android.push_token"):
            return (5, "annually")
        if type_ in ("anonymous_id", "ga_client_id", "ios.idfa", "android.idfa"):
            return (5, "weekly")
        return (5, "ever")

    def may(self, source: str, what: str) -> bool:
        return self.sources.get(source, {}).get(what, True)

    # The idstitch preset (docs/resolution.md): an alias between two user_ids from a trusted
    # source is not refused by the user_id limit. A source's `trust_alias` decides; unset,
    # the idstitch preset trusts messages of Segment's server-side libraries.
    def trusts_alias(self, source: str, library: Any) -> bool:
        setting = self.sources.get(source, {}).get("trust_alias")
        if setting is not None:
            return bool(setting)
        return self.preset == "idstitch" and library in ("analytics-node", "analytics-python")

    # SPEC 2, Blocked values.
    def is_blocked(self, type_: str, value: str) -> bool:
        exact = list(self.blocked)
        regex = list(self.blocked_regex)
        if type_ in self.blocked_by_type:
            exact += self.blocked_by_type[type_][0]
            regex += self.blocked_by_type[type_][1]
        if self.preset == "idstitch":  # docs/resolution.md, Presets: missing values as text
            exact += ["(null)", "<null>", "NSNull", "n/a", "#N/A", "(not set)", "not set"]
            exact += ["(none)", "(undefined)"]
        folded = value.strip().lower()
        candidates = [folded]
        # "... and the same values wrapped in quotes". Assumption: double or single quotes.
        for quote in ('"', "'"):
            if len(folded) >= 2 and folded.startswith(quote) and folded.endswith(quote):
                candidates.append(folded[1:-1])
        for entry in exact:
            if entry.strip().lower() in candidates:
                return True
        return any(re.search(pattern, value) for pattern in regex)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def to_value(type_: str, raw: Any) -> str | None:
    """SPEC 1: values are strings (numbers are stringified), trimmed; e-mails lower-cased."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, float) and raw.is_integer() and abs(raw) < 2**53:
        text = str(int(raw))  # JavaScript's String(): 7.0 is "7" (the tests draw no others)
    elif isinstance(raw, int | float):
        text = str(raw)
    elif isinstance(raw, str):
        text = raw.strip()
    else:
        return None
    if type_ == "email":
        text = text.lower()
    return text


def camel(snake: str) -> str:
    parts = snake.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


class Model:
    def __init__(self, identity: dict[str, Any], *, limits_on_create: bool = False):
        self.rules = Rules.from_config(identity)
        # SPEC 3 step 3 creates a profile "holding all identifiers"; with `limits_on_create`
        # the limits also apply to a new profile (the event's lowest-priority id is dropped).
        self.limits_on_create = limits_on_create
        self.profiles: list[Profile] = []
        self.owner: dict[Ident, int] = {}  # identifier -> number of the profile that holds it
        self.seen: set[tuple[str, str]] = set()
        # The idstitch preset: identifier -> the known users (user_id values) it was seen
        # with whose profile does not hold it. Past its type's allowance it links nothing.
        self.conflicts: dict[Ident, set[str]] = {}

    # ---- reading identifiers (SPEC 1) -----------------------------------------------------
    def extract(
        self, msg: dict[str, Any]
    ) -> tuple[list[Ident], list[Ident], list[Ident], list[tuple[Ident, str]]]:
        """(user ids, account ids, alias previousId candidates, extraction drops).

        Ids are listed in the order of the SPEC 1 table (rows top to bottom, the sources of
        one row left to right). Assumption: that is the "extraction order" that breaks priority
        ties (the later one counts as the lower priority).
        """
        kind = msg["type"]
        context = msg.get("context") or {}
        traits = msg.get("traits") or {}
        ctx_traits = context.get("traits") or {}
        device = context.get("device") or {}
        users: list[tuple[str, Any]] = []
        accounts: list[tuple[str, Any]] = []
        drops: list[tuple[Ident, str]] = []
        users.append(("user_id", msg.get("userId")))
        users.append(("anonymous_id", msg.get("anonymousId")))
        # "In a group call, traits (email included) describe the account and identify nobody".
        if kind != "group":
            users.append(("email", traits.get("email")))
        users.append(("email", ctx_traits.get("email")))
        device_type = device.get("type")
        if isinstance(device_type, str) and device_type.lower() in ("ios", "android"):
            os_name = device_type.lower()
            users.append((f"{os_name}.id", device.get("id")))
            if device.get("adTrackingEnabled") is True:
                users.append((f"{os_name}.idfa", device.get("advertisingId")))
            users.append((f"{os_name}.push_token", device.get("token")))
        ga = (context.get("integrations") or {}).get("Google Analytics") or {}
        users.append(("ga_client_id", ga.get("clientId")))
        for item in context.get("externalIds") or []:
            collection = item.get("collection")
            collection = "users" if collection is None else collection
            if not isinstance(collection, str) or not isinstance(item.get("type"), str):
                continue
            if collection.strip().lower() not in ("users", "accounts"):
                type_ = item["type"].strip().lower()
                drops.append((("users", type_, str(item.get("id"))[:100]), "invalid_collection"))
                continue
            pair = (item["type"].strip().lower(), item.get("id"))
            (accounts if collection.strip().lower() == "accounts" else users).append(pair)
        # Configured custom types (SPEC 1): `traits`, `properties` and `context.traits` of any
        # call, in that order; a group call's traits describe the account.
        properties = msg.get("properties") or {}
        for where, found in (
            (accounts if kind == "group" else users, traits),
            (users, properties),
            (users, ctx_traits),
        ):
            for type_ in self.rules.custom_types:
                for key in dict.fromkeys([type_, camel(type_)]):
                    where.append((type_, found.get(key)))
        if kind == "group":
            accounts.insert(0, ("group_id", msg.get("groupId")))
        previous: list[tuple[str, Any]] = []
        if kind == "alias":
            previous = [("user_id", msg.get("previousId")), ("anonymous_id", msg.get("previousId"))]
        return (
            self._clean("users", users, drops),
            self._clean("accounts", accounts, drops),
            self._clean("users", previous, drops),
            drops,
        )

    def _clean(
        self, collection: str, pairs: list[tuple[str, Any]], drops: list[tuple[Ident, str]]
    ) -> list[Ident]:
        out: list[Ident] = []
        for type_, raw in pairs:
            if raw is None:  # JSON null counts as absent
                continue
            value = to_value(type_, raw)
            if value is None:
                continue
            ident = (collection, type_, value)
            if ident in out or (ident, BLOCKED) in drops:
                continue
            if len(value) > 1000:
                if (ident, TOO_LONG) not in drops:
                    drops.append((ident, TOO_LONG))
                continue
            if self.rules.is_blocked(type_, value):
                drops.append((ident, BLOCKED))
                continue
            out.append(ident)
        return out

    # ---- the graph --------------------------------------------------------------------------
    def profile_of(self, ident: Ident) -> Profile | None:
        number = self.owner.get(ident)
        return None if number is None else self.profiles[number]

    def by_priority(self, ids: list[Ident]) -> list[Ident]:
        return sorted(ids, key=lambda i: self.rules.rank(i[1]))  # stable: ties keep order

    def count(
        self, ids: dict[Ident, float], type_: str, at: float, window_name: str | None = None
    ) -> int:
        """Values of `type_` that count at time `at`: first attached less than one window
        before or after it."""
        window = WINDOW_SECONDS[window_name or self.rules.limit(type_)[1]]
        return sum(
            1
            for (_, t, _), stamp in ids.items()
            if t == type_ and (window is None or abs(stamp - at) < window)
        )

    def over_limit(
        self,
        matched: list[Profile],
        new: list[Ident],
        at: float,
        waived: tuple[str, ...] = (),
        login: bool = False,
        anonymous: bool = False,
    ) -> str | None:
        """The first type (by priority) the message makes grow past its limit, or None.
        `login` (the idstitch preset, a user_id in the message): browser cookies are
        counted over the new ones and the matched profiles that hold no user_id only.
        `anonymous` (the idstitch preset, no user_id in the message): when no matched
        profile holds a user_id either, at most 3 cookies of a type, ever."""
        types = {t for (_, t, _) in new} | {t for p in matched for (_, t, _) in p.ids}
        for type_ in sorted(types - set(waived), key=self.rules.rank):
            counted = matched
            if login and type_ in ("anonymous_id", "ga_client_id"):
                counted = [p for p in matched if not any(t == "user_id" for _, t, _ in p.ids)]
            would: dict[Ident, float] = {}
            for p in counted:
                would.update(p.ids)
            for ident in new:
                would[ident] = at
            maximum, window = self.rules.limit(type_)
            known = any(t == "user_id" for p in matched for _, t, _ in p.ids)
            if anonymous and type_ in ("anonymous_id", "ga_client_id") and not known:
                maximum, window = min(maximum, 3), "ever"
            total = self.count(would, type_, at, window)
            before = max((self.count(p.ids, type_, at, window) for p in counted), default=0)
            if total > maximum and total > before:
                return type_
        return None

    # ---- the idstitch preset: values several known users share (docs/resolution.md) ----------
    DEVICES = ("android.id", "ios.id", "android.idfa", "ios.idfa")
    DEVICES += ("android.push_token", "ios.push_token")

    def allowance(self, ident: Ident) -> int | None:
        """How many other known users `ident` may be seen with before it stops linking."""
        if self.rules.preset != "idstitch" or ident[1] == "user_id":
            return None
        return 1 if ident[1] in self.DEVICES else self.rules.generic_after

    def shared(self, ident: Ident) -> bool:
        allowed = self.allowance(ident)
        return allowed is not None and len(self.conflicts.get(ident, ())) >= allowed

    def note_conflicts(self, live: list[Ident], side: Side, noted: set[Ident]) -> None:
        """The user_id limit refuses the message: every identifier whose profile holds a
        user_id and is not the profile of the message's user_id was seen with that user."""
        top = next((i for i in live if i[1] == "user_id"), None)
        if top is None:
            return
        mine = self.profile_of(top)
        for ident in live:
            if ident[1] == "user_id" or ident in noted:
                continue
            p = self.profile_of(ident)
            if p is None or p is mine or not any(t == "user_id" for _, t, _ in p.ids):
                continue
            noted.add(ident)
            side.dropped.append((ident, "conflict"))
            seen = self.conflicts.setdefault(ident, set())
            allowed = self.allowance(ident)
            if allowed is not None and top[2] not in seen and len(seen) + 1 == allowed:
                device = ident[1] in self.DEVICES
                side.dropped.append((ident, "shared_device" if device else "generic_identifier"))
            seen.add(top[2])

    # ---- resolution (SPEC 3) ----------------------------------------------------------------
    def resolve(
        self,
        ids: list[Ident],
        source: str,
        at: float,
        collection: str,
        waived: tuple[str, ...] = (),
    ) -> Side:
        side = Side()
        live = self.by_priority([i for i in ids if not self.shared(i)])
        noted: set[Ident] = set()
        while True:
            if not live:
                return side
            evidence = self.rules.preset == "idstitch" and collection == "users"
            login = evidence and any(t == "user_id" for _, t, _ in live)
            anonymous = evidence and not login
            matched: list[Profile] = []
            for ident in live:
                p = self.profile_of(ident)
                if p is not None and p not in matched:
                    matched.append(p)
            new = [i for i in live if self.profile_of(i) is None]
            if not matched:
                if not self.rules.may(source, "create"):
                    # Assumption: every identifier left is recorded as refused by the rule.
                    side.dropped += [(i, NO_CREATE) for i in live]
                    return side
                if (
                    self.limits_on_create
                    and self.over_limit([], live, at, waived, login, anonymous) is not None
                ):
                    side.dropped.append((live.pop(), LIMIT))
                    continue
                return self.create(live, at, collection, side)
            # Assumption: a source denied `merge` drops identifiers until one profile matches;
            # the limits then see every identifier, those a source may not add included (so
            # a second user_id on a shared browser still splits the event off), and only then
            # are the identifiers it may not add refused.
            if len(matched) > 1 and not self.rules.may(source, "merge"):
                side.dropped.append((live.pop(), NO_MERGE))
                continue
            over = self.over_limit(matched, new, at, waived, login, anonymous)
            if over is not None:
                if over == "user_id" and self.rules.preset == "idstitch":
                    self.note_conflicts(live, side, noted)
                side.dropped.append((live.pop(), LIMIT))
                continue
            if new and not self.rules.may(source, "add"):
                side.dropped += [(i, NO_ADD) for i in new]
                live = [i for i in live if i not in new]
                new = []
            return self.attach(matched, new, at, side)

    def create(self, live: list[Ident], at: float, collection: str, side: Side) -> Side:
        p = Profile(len(self.profiles), collection)
        self.profiles.append(p)
        cap = self.rules.max_identifiers
        # Assumption: past the identifier cap, the highest-priority identifiers are kept.
        for ident in live[:cap]:
            p.ids[ident] = at
            self.owner[ident] = p.number
            side.added.append(ident)
        side.dropped += [(i, IDENTIFIER_CAP) for i in live[cap:]]
        side.profile, side.created = p.number, True
        return side

    def attach(self, matched: list[Profile], new: list[Ident], at: float, side: Side) -> Side:
        oldest = min(matched, key=lambda p: p.number)
        others = [p for p in matched if p is not oldest]
        # SPEC 2, system caps: past the merge cap nothing further is added either.
        at_merge_cap = oldest.merges >= self.rules.max_merges
        if others:
            merges = oldest.merges + sum(p.merges + 1 for p in others)
            size = sum(len(p.ids) for p in matched)
            refusal = None
            if merges > self.rules.max_merges:
                refusal = MERGE_CAP
            elif size > self.rules.max_identifiers:
                refusal = IDENTIFIER_CAP
            if refusal is not None:
                # Assumption: a refused merge merges none of the profiles; the event goes to
                # the oldest one, which may still gain identifiers up to its own cap.
                side.dropped += [
                    ((oldest.collection, "profile", str(p.number)), refusal) for p in others
                ]
                others = []
        for p in others:
            for ident, stamp in p.ids.items():
                oldest.ids[ident] = stamp
                self.owner[ident] = oldest.number
            oldest.merges += p.merges + 1
            p.ids = {}
            p.merged_into = oldest.number
            side.merged.append(p.number)
        if at_merge_cap:
            side.dropped += [(i, MERGE_CAP) for i in new]
            new = []
        room = max(self.rules.max_identifiers - len(oldest.ids), 0)
        for ident in new[:room]:
            oldest.ids[ident] = at
            self.owner[ident] = oldest.number
            side.added.append(ident)
        side.dropped += [(i, IDENTIFIER_CAP) for i in new[room:]]
        side.profile = oldest.number
        return side

    def canonical(self, number: int) -> int:
        while self.profiles[number].merged_into is not None:
            number = self.profiles[number].merged_into  # type: ignore[assignment]
        return number

    def ingest(self, msg: dict[str, Any], source: str) -> Outcome:
        message_id = msg.get("messageId")
        if message_id is not None:
            key = (source, str(message_id).strip())
            if key in self.seen:
                return Outcome(duplicate=True)
            self.seen.add(key)
        at = parse_time(msg["timestamp"])
        users, accounts, previous, drops = self.extract(msg)
        waived: tuple[str, ...] = ()
        if previous:
            # Alias: previousId is a user_id or an anonymous_id, whichever exists
            # (anonymous_id if neither). Assumption: when both exist, the one of higher
            # priority (the user_id, unless a configured priority says otherwise).
            ranked = self.by_priority(previous)
            chosen = next((i for i in ranked if i in self.owner), None)
            if chosen is None:
                chosen = next((i for i in previous if i[1] == "anonymous_id"), None)
            if chosen is not None and self.shared(chosen):
                chosen = None  # shared: it links nothing (the idstitch preset)
            if chosen is not None and chosen not in users:
                users.append(chosen)  # extracted last: the lowest of equal priorities
                library = (msg.get("context") or {}).get("library", {}).get("name")
                if (
                    chosen[1] == "user_id"
                    and chosen in self.owner
                    and self.rules.trusts_alias(source, library)
                ):
                    waived = ("user_id",)
        outcome = Outcome(extraction_drops=drops)
        if users:
            outcome.users = self.resolve(users, source, at, "users", waived)
        if accounts:
            outcome.accounts = self.resolve(accounts, source, at, "accounts")
        return outcome

    # ---- reading the result ---------------------------------------------------------------------
    def partition(self) -> set[frozenset[Ident]]:
        return {frozenset(p.ids) for p in self.profiles if p.merged_into is None and p.ids}

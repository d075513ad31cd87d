"""Messy, realistic Segment traffic with its ground truth, for the quality benchmark.

Persons arrive over eight weeks. Most are ordinary: one to three browsers, some a phone
(the iOS or Android app), and about 40 % sign up with a user id and an e-mail and later log
in on their other devices. Around them, the cases that make identity resolution hard, each
at the rate of a module constant below:

1. heavy users who burn through 6 to 15 browsers in one week (work, home, incognito, cleared
   cookies), logging in on every one;
2. user ids that change: the backend sends `alias(previousId=old, userId=new)` and the
   person's messages use the new id from then on;
3. shared family phones (one device id, two persons who each log in with their own user id
   at times, anonymous use in between) and resold phones (after two or more quiet months a
   new person uses the same device id, anonymously first, then logged in as themselves);
4. placeholder values that no default block list knows: e-mails such as `test@test.com`
   typed by anonymous visitors and by a few account holders, kiosk and library computers
   whose one anonymousId many persons use (some log in there), and clients that send the
   user id `"(null)"` or the anonymousId `"n/a"` now and then;
5. offline batches from phones that arrive days late with their original timestamps, so
   arrival order is not event-time order;

plus a little ordinary noise: retries that repeat a `messageId`.

Messages are dicts as Segment's libraries send them, tagged with a source id (`web`, `ios`,
`android`, or `server` for the backend's calls), in arrival order. The ground truth is, for
every identifier `(type, value)` as idstitch names it, the set of persons who used it, and
the identifier pairs each message puts side by side (the evidence a resolver has). The same
`(persons, seed)` always gives the same stream, and the same bytes on disk:

    python -m benchmarks.messy --persons 3000 --seed 7 --out messy.jsonl.gz

writes `messy.jsonl.gz`, one message per line with two fields beside Segment's own,
`source` and `receivedAt` (the arrival time), and the truth beside it in
`messy.truth.json.gz`: `{"persons", "senders" (the person of each line), "owners" ([type,
value, [person, ...]] rows), "links" ([type, value, type, value] rows)}`.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import random
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

Ident = tuple[str, str]  # (type, value), as idstitch names an identifier
Link = tuple[Ident, Ident]  # two identifiers one message put side by side

DAY: Final = 86_400.0
START: Final = datetime(2025, 3, 3, tzinfo=UTC).timestamp()
ARRIVAL_SPAN: Final = 56 * DAY  # persons arrive over eight weeks

# ---- ordinary persons ---------------------------------------------------------------------
SIGNUP_RATE: Final = 0.40  # persons who sign up with a user id and an e-mail
BROWSER_WEIGHTS: Final = (60, 30, 10)  # how often a person has 1, 2 or 3 browsers
PHONE_RATE: Final = 0.35  # persons who also use the app on a phone
IOS_SHARE: Final = 0.55  # of phones; the rest run Android
CROSS_DEVICE_LOGIN_RATE: Final = 0.7  # of a signed-up person's devices not yet logged in
SERVER_IDENTIFY_RATE: Final = 0.5  # sign-ups the backend also sends an identify for
NEWSLETTER_RATE: Final = 0.05  # anonymous visitors who leave their own e-mail in a form
SESSION_GAP_DAYS: Final = 2.0  # mean time between two visits of one person

# ---- the hard cases -----------------------------------------------------------------------
# 1. Of signed-up persons: 6 to 15 browsers in one week, each followed by a login.
HEAVY_RATE: Final = 0.05
HEAVY_BROWSERS: Final = (6, 15)
# 2. Of signed-up persons: the backend moves the account to a new user id (an alias).
USER_ID_CHANGE_RATE: Final = 0.03
# 3. Of phones: shared by two persons of one family, who each log in at times.
FAMILY_PHONE_RATE: Final = 0.03
FAMILY_LOGIN_RATE: Final = 0.5  # of the family phone's visits; the others stay anonymous
# 3. Of phones: sold on; a new person uses the same device id after a quiet gap.
RESOLD_PHONE_RATE: Final = 0.02
RESALE_GAP_DAYS: Final = (60.0, 100.0)
# 4. Placeholder e-mails that no default block list holds.
PLACEHOLDER_EMAILS: Final = ("test@test.com", "noreply@gmail.com", "a@a.com")
PLACEHOLDER_ANONYMOUS_RATE: Final = 0.02  # anonymous visitors who type one into a form
PLACEHOLDER_USER_RATE: Final = 0.01  # signed-up persons whose account e-mail is one
# 4. Kiosk and library computers: one anonymousId each that is never reset.
KIOSKS: Final = 3
KIOSK_VISIT_RATE: Final = 0.04  # persons who browse on one once
KIOSK_LOGIN_RATE: Final = 0.5  # of signed-up kiosk visitors, who log in there
# 4. Clients that stringify a missing id: userId "(null)" (an Objective-C nil) on anonymous
# iOS messages, anonymousId "n/a" (a consent wrapper) on logged-in browser messages.
BUGGY_DEVICE_RATE: Final = 0.01  # of browsers and iOS apps
BUGGY_MESSAGE_RATE: Final = 0.5  # of such a client's messages that carry the bad value
NULL_USER_ID: Final = "(null)"
NA_ANONYMOUS_ID: Final = "n/a"
# 5. Of persons with a phone: one offline batch of 1 to 3 visits arrives days late.
LATE_RATE: Final = 0.05
LATE_DELAY_DAYS: Final = (1.0, 6.0)
# Noise: messages a library sends twice with the same messageId (a timeout, then a retry).
RETRY_RATE: Final = 0.002

SOURCES: Final = ("web", "ios", "android", "server")

FIRST_NAMES: Final = ("ada", "ben", "chloe", "dev", "eve", "femi", "gus", "hana", "ivo", "jun")
LAST_NAMES: Final = ("okafor", "smith", "novak", "tanaka", "garcia", "muller", "rossi", "khan")
DOMAINS: Final = ("gmail.com", "outlook.com", "example.org", "proton.me", "acme.io")
PAGES: Final = (
    ("/", "Example Outdoor Shop"),
    ("/collections/footwear", "Footwear"),
    ("/collections/camping", "Camping"),
    ("/products/trail-running-shoe", "Trail Running Shoe"),
    ("/cart", "Your cart"),
    ("/account/login", "Log in"),
)
SCREENS: Final = ("Home", "Search", "Product", "Cart", "Checkout", "Orders")
EVENTS: Final = ("Product Viewed", "Product Added", "Products Searched", "Order Completed")
EVENT_WEIGHTS: Final = (6, 3, 2, 1)
USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
)
IOS_MODELS: Final = ("iPhone15,2", "iPhone16,1", "iPhone14,5")
ANDROID_MODELS: Final = (("samsung", "SM-S918B"), ("Google", "Pixel 8"), ("Xiaomi", "23049PCD8G"))


@dataclass(frozen=True, slots=True)
class Stream:
    """Messages in arrival order and the truth about them."""

    messages: list[tuple[str, dict[str, Any]]]  # (source id, Segment message)
    received: list[float]  # arrival time of each message, Unix seconds
    senders: list[int]  # the person who sent each message
    owners: dict[Ident, set[int]]  # every identifier -> the persons who used it
    links: list[Link]  # per message, its first identifier with each other one
    persons: int
    counts: dict[str, int] = field(default_factory=dict)  # how often each case occurs

    def describe(self) -> str:
        shared = sum(1 for who in self.owners.values() if len(who) > 1)
        cases = "".join(f", {k.replace('_', ' ')} {v:,}" for k, v in self.counts.items())
        return (
            f"{self.persons:,} persons, {len(self.messages):,} messages, "
            f"{len(self.owners):,} identifiers ({shared:,} used by several persons){cases}"
        )


def identifiers_of(message: Mapping[str, Any]) -> list[Ident]:
    """The identifiers idstitch reads from `message` (userId, an alias's previousId as a user
    id, anonymousId, traits.email and context.traits.email, and an iOS or Android device id),
    normalised as it stores them, each once, in that order."""
    found: list[Ident] = []
    kind = message.get("type")
    context = message.get("context") or {}

    def add(type_: str, value: Any) -> None:
        if isinstance(value, str) and value.strip():
            text = value.strip().lower() if type_ == "email" else value.strip()
            if (type_, text) not in found:
                found.append((type_, text))

    add("user_id", message.get("userId"))
    if kind == "alias":
        add("user_id", message.get("previousId"))
    add("anonymous_id", message.get("anonymousId"))
    if kind != "group":
        add("email", (message.get("traits") or {}).get("email"))
    add("email", (context.get("traits") or {}).get("email"))
    device = context.get("device") or {}
    device_type = device.get("type")
    if isinstance(device_type, str) and device_type.strip().lower() in ("ios", "android"):
        add(device_type.strip().lower() + ".id", device.get("id"))
    return found


def truth_of(
    messages: Iterable[tuple[str, Mapping[str, Any]]], senders: Iterable[int]
) -> tuple[dict[Ident, set[int]], list[Link]]:
    """Owners and links from the messages and who sent each. A star (the first identifier with
    each other one) joins a message's identifiers as well as every pair would."""
    owners: dict[Ident, set[int]] = {}
    links: dict[Link, None] = {}
    for (_, message), sender in zip(messages, senders, strict=True):
        ids = identifiers_of(message)
        for ident in ids:
            owners.setdefault(ident, set()).add(sender)
        for other in ids[1:]:
            links[(ids[0], other)] = None
    return owners, list(links)


# ---- the generator ----------------------------------------------------------------------------
@dataclass(slots=True)
class _Person:
    pid: int
    user_id: str | None = None
    email: str | None = None
    new_user_id: str | None = None
    changed_at: float = float("inf")  # from then on the person's messages use new_user_id
    signed_up_at: float | None = None
    last_at: float = 0.0  # the newest event time of the person's messages so far

    def user_id_at(self, at: float) -> str | None:
        return self.new_user_id if at >= self.changed_at else self.user_id


@dataclass(slots=True)
class _Device:
    kind: str  # web, ios or android
    anonymous_id: str
    device_id: str | None = None
    model: int = 0
    buggy: bool = False
    user: _Person | None = None  # logged in as; libraries keep the userId once identified
    cached_email: str | None = None  # mobile libraries repeat identify traits in context.traits
    last_used: float = 0.0


@dataclass(slots=True)
class _Out:
    at: float  # event time
    arrival: float
    seq: int
    source: str
    sender: int
    message: dict[str, Any]


class _Generator:
    def __init__(self, persons: int, seed: int):
        self.rng = random.Random(seed)
        self.target = persons
        self.persons = 0
        self.out: list[_Out] = []
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "sign_ups",
                "phones",
                "heavy_users",
                "user_id_changes",
                "family_phones",
                "resold_phones",
                "placeholder_emails_typed",
                "kiosk_visits",
                "kiosk_logins",
                "buggy_clients",
                "late_batches",
                "retries",
            ),
            0,
        )
        self.kiosks = [_Device("web", self.uuid()) for _ in range(KIOSKS)]

    # ---- values ---------------------------------------------------------------------------
    def uuid(self, upper: bool = False) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:]}"
        return text.upper() if upper else text

    def browser(self) -> _Device:
        buggy = self.rng.random() < BUGGY_DEVICE_RATE
        self.counts["buggy_clients"] += buggy
        return _Device("web", self.uuid(), model=self.rng.randrange(len(USER_AGENTS)), buggy=buggy)

    def phone(self) -> _Device:
        rng = self.rng
        self.counts["phones"] += 1
        if rng.random() < IOS_SHARE:
            buggy = rng.random() < BUGGY_DEVICE_RATE
            self.counts["buggy_clients"] += buggy
            return _Device(
                "ios",
                self.uuid(upper=True),
                self.uuid(upper=True),
                rng.randrange(len(IOS_MODELS)),
                buggy,
            )
        return _Device(
            "android",
            self.uuid(),
            f"{rng.getrandbits(64):016x}",
            rng.randrange(len(ANDROID_MODELS)),
        )

    def new_person(self, signs_up: bool) -> _Person:
        rng = self.rng
        person = _Person(self.persons)
        self.persons += 1
        if signs_up:
            self.counts["sign_ups"] += 1
            person.user_id = f"usr_{rng.getrandbits(48):012x}"
            if rng.random() < PLACEHOLDER_USER_RATE:
                person.email = rng.choice(PLACEHOLDER_EMAILS)
                self.counts["placeholder_emails_typed"] += 1
            else:
                person.email = self.own_email(person)
        return person

    def own_email(self, person: _Person) -> str:
        rng = self.rng
        # The person id makes it unique: no two persons share a real e-mail.
        name = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}{person.pid}"
        return f"{name}@{rng.choice(DOMAINS)}"

    @staticmethod
    def iso(t: float) -> str:
        moment = datetime.fromtimestamp(t, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    # ---- messages -------------------------------------------------------------------------
    def emit(self, source: str, sender: _Person, at: float, message: dict[str, Any]) -> None:
        message["timestamp"] = self.iso(at)
        sender.last_at = max(sender.last_at, at)
        arrival = at + self.rng.uniform(0.05, 1.0)
        self.out.append(_Out(at, arrival, len(self.out), source, sender.pid, message))

    def context(self, device: _Device) -> dict[str, Any]:
        if device.kind == "web":
            path, title = self.rng.choice(PAGES)
            return {
                "library": {"name": "analytics.js", "version": "npm:next-1.84.3"},
                "page": {"path": path, "title": title, "url": "https://shop.example.com" + path},
                "userAgent": USER_AGENTS[device.model],
            }
        if device.kind == "ios":
            context: dict[str, Any] = {
                "library": {"name": "analytics-swift", "version": "1.7.2"},
                "app": {"name": "Example Shop", "version": "5.12.0", "build": "5120"},
                "device": {
                    "id": device.device_id,
                    "type": "ios",
                    "manufacturer": "Apple",
                    "model": IOS_MODELS[device.model],
                },
                "os": {"name": "iOS", "version": "17.5.1"},
            }
        else:
            maker, model = ANDROID_MODELS[device.model]
            context = {
                "library": {"name": "analytics-kotlin", "version": "1.18.0"},
                "app": {"name": "Example Shop", "version": "5.12.0", "build": "512000"},
                "device": {
                    "id": device.device_id,
                    "type": "android",
                    "manufacturer": maker,
                    "model": model,
                },
                "os": {"name": "Android", "version": "14"},
            }
        if device.cached_email is not None:
            context["traits"] = {"email": device.cached_email}
        return context

    def call(
        self, sender: _Person, device: _Device, at: float, kind: str, body: dict[str, Any]
    ) -> None:
        """One client-side call by `sender` on `device`, as whoever it is logged in as."""
        user = device.user
        user_id = user.user_id_at(at) if user is not None else None
        anonymous_id = device.anonymous_id
        if device.buggy and self.rng.random() < BUGGY_MESSAGE_RATE:
            if user_id is None and device.kind == "ios":
                user_id = NULL_USER_ID
            elif user_id is not None and device.kind == "web":
                anonymous_id = NA_ANONYMOUS_ID
        message: dict[str, Any] = {"type": kind, "messageId": self.uuid()}
        message["anonymousId"] = anonymous_id
        if user_id is not None:
            message["userId"] = user_id
        message |= body
        message["context"] = self.context(device)
        device.last_used = max(device.last_used, at)
        self.emit(device.kind, sender, at, message)

    def visit(self, sender: _Person, device: _Device, at: float) -> float:
        """A visit of 1 to 6 events; returns its end."""
        rng = self.rng
        n = 1 + min(int(rng.expovariate(1 / 1.8)), 5)
        for i in range(n):
            if i == 0 or rng.random() < 0.3:
                if device.kind == "web":
                    self.call(sender, device, at, "page", {"properties": {}})
                else:
                    self.call(sender, device, at, "screen", {"name": rng.choice(SCREENS)})
            else:
                name = rng.choices(EVENTS, EVENT_WEIGHTS)[0]
                props = {"product_id": f"prod_{rng.randrange(40):05d}"}
                self.call(sender, device, at, "track", {"event": name, "properties": props})
            at += rng.uniform(3, 90)
        return at

    def identify(
        self,
        sender: _Person,
        device: _Device,
        at: float,
        user: _Person | None,
        email: str | None,
        signup: bool = False,
    ) -> float:
        """A login (`user` set: the device is logged in from now on) or, without a user, a
        form that only leaves an e-mail."""
        if user is not None:
            device.user = user
        traits: dict[str, Any] = {}
        if email is not None:
            traits["email"] = email
            if device.kind != "web":
                device.cached_email = email
        if signup:
            traits["createdAt"] = self.iso(at)
        self.call(sender, device, at, "identify", {"traits": traits})
        return at + self.rng.uniform(2, 5)

    def server(self, person: _Person, at: float, message: dict[str, Any]) -> None:
        message = {"type": message.pop("type"), "messageId": self.uuid(), **message}
        message["context"] = {"library": {"name": "analytics-python", "version": "2.3.4"}}
        self.emit("server", person, at, message)

    # ---- persons --------------------------------------------------------------------------
    def build(self) -> None:
        while self.persons < self.target:
            self.visitor()
        self.retries()
        self.out.sort(key=lambda o: (o.arrival, o.seq))

    def visitor(self) -> None:
        rng = self.rng
        arrive = START + rng.random() * ARRIVAL_SPAN
        phone = self.phone() if rng.random() < PHONE_RATE else None
        if phone is not None and rng.random() < FAMILY_PHONE_RATE:
            self.family(arrive, phone)
            return
        self.person(arrive, rng.random() < SIGNUP_RATE, phone)
        if phone is not None and rng.random() < RESOLD_PHONE_RATE:
            self.counts["resold_phones"] += 1
            arrive = phone.last_used + rng.uniform(*RESALE_GAP_DAYS) * DAY
            # A factory reset and a new install: a new anonymousId, the same device id.
            again = _Device(phone.kind, self.uuid(phone.kind == "ios"), phone.device_id)
            again.model = phone.model
            self.person(arrive, True, again, phone_first=True)

    def person(
        self, arrive: float, signs_up: bool, phone: _Device | None, phone_first: bool = False
    ) -> _Person:
        rng = self.rng
        first_out = len(self.out)
        person = self.new_person(signs_up)
        browsers = rng.choices((1, 2, 3), BROWSER_WEIGHTS)[0] - (1 if phone_first else 0)
        devices = [self.browser() for _ in range(browsers)]
        if phone is not None:
            devices.append(phone)
        if phone_first:
            devices.insert(0, devices.pop())
        else:
            rng.shuffle(devices)
        visits = 1 + min(int(rng.expovariate(1 / (4.0 if signs_up else 1.0))), 19)
        # Every device at least once; the first visit on the first device.
        order = list(range(len(devices))) + [
            rng.randrange(len(devices)) for _ in range(max(0, visits - len(devices)))
        ]
        signup_at = -1
        if phone_first:
            # The new owner of a resold phone looks around before logging in on it.
            order[1:1] = [0]
            signup_at = 1
        elif signs_up:
            signup_at = rng.randrange(len(order))
        if signs_up and signup_at == len(order) - 1:
            order.append(order[-1])  # a visit after signing up, for the cases that need one
        times = [arrive]
        for _ in order[1:]:
            times.append(times[-1] + rng.expovariate(1 / (SESSION_GAP_DAYS * DAY)))
        change_at = -1
        if signs_up and rng.random() < USER_ID_CHANGE_RATE:
            change_at = rng.randrange(signup_at + 1, len(order))
        form_at, form_email = -1, None
        if not signs_up:
            draw = rng.random()
            if draw < PLACEHOLDER_ANONYMOUS_RATE:
                form_email = rng.choice(PLACEHOLDER_EMAILS)
                self.counts["placeholder_emails_typed"] += 1
            elif draw < PLACEHOLDER_ANONYMOUS_RATE + NEWSLETTER_RATE:
                form_email = self.own_email(person)
            if form_email is not None:
                form_at = rng.randrange(len(order))
        for s, d in enumerate(order):
            device, at = devices[d], times[s]
            if s == change_at:
                self.change_user_id(person, at - rng.uniform(60, 6 * 3600))
            if s == signup_at:
                at = self.visit(person, device, at)
                at = self.identify(person, device, at, person, person.email, signup=True)
                person.signed_up_at = at
                if rng.random() < SERVER_IDENTIFY_RATE:
                    self.server_identify(person, at + rng.uniform(0.5, 3))
            elif person.signed_up_at is not None and device.user is None:
                at = self.identify(person, device, at, person, self.login_email(person))
            at = self.visit(person, device, at)
            if s == form_at:
                at = self.identify(person, device, at, None, form_email)
        at = times[-1]
        if person.signed_up_at is not None:
            # Most people later log in on their other devices too: cross-device merges.
            for device in devices:
                if device.user is None and rng.random() < CROSS_DEVICE_LOGIN_RATE:
                    at += rng.expovariate(1 / (SESSION_GAP_DAYS * DAY))
                    at = self.identify(person, device, at, person, self.login_email(person))
                    self.visit(person, device, at)
            if rng.random() < HEAVY_RATE:
                self.heavy_week(person)
        if rng.random() < KIOSK_VISIT_RATE:
            self.kiosk_visit(person, arrive)
        if phone is not None and rng.random() < LATE_RATE:
            self.late_batch(first_out, phone.kind)
        return person

    def login_email(self, person: _Person) -> str | None:
        return person.email if self.rng.random() < 0.5 else None

    def server_identify(self, person: _Person, at: float) -> None:
        user_id = person.user_id_at(at)
        traits = {"email": person.email}
        self.server(person, at, {"type": "identify", "userId": user_id, "traits": traits})

    def change_user_id(self, person: _Person, at: float) -> None:
        """The account moves to a new user id; the backend says so once, with an alias."""
        assert person.user_id is not None and person.signed_up_at is not None
        at = max(at, person.last_at + 60)  # after every message with the old id
        self.counts["user_id_changes"] += 1
        person.new_user_id = f"usr_{self.rng.getrandbits(48):012x}"
        person.changed_at = at
        alias = {"type": "alias", "previousId": person.user_id, "userId": person.new_user_id}
        self.server(person, at, alias)
        self.server_identify(person, at + 1)

    def heavy_week(self, person: _Person) -> None:
        """Work and home, incognito windows, cleared cookies: a new browser each time, each
        followed by a login."""
        rng = self.rng
        assert person.signed_up_at is not None
        self.counts["heavy_users"] += 1
        week = person.signed_up_at + rng.uniform(1, 14) * DAY
        count = rng.randint(*HEAVY_BROWSERS)
        for at in sorted(week + rng.uniform(0, 7 * DAY) for _ in range(count)):
            device = self.browser()
            at = self.visit(person, device, at)
            at = self.identify(person, device, at, person, self.login_email(person))
            self.visit(person, device, at)

    def kiosk_visit(self, person: _Person, arrive: float) -> None:
        rng = self.rng
        kiosk = rng.choice(self.kiosks)
        kiosk.user = None  # the previous visitor logged out; the anonymousId stays
        self.counts["kiosk_visits"] += 1
        logs_in = person.signed_up_at is not None and rng.random() < KIOSK_LOGIN_RATE
        start = person.signed_up_at if logs_in and person.signed_up_at is not None else arrive
        at = self.visit(person, kiosk, start + rng.uniform(0.1, 30) * DAY)
        if logs_in:
            self.counts["kiosk_logins"] += 1
            at = self.identify(person, kiosk, at, person, None)
            self.visit(person, kiosk, at)
        kiosk.user = None

    def family(self, arrive: float, phone: _Device) -> None:
        """Two persons of one family share a phone: each logs in as themselves at times and
        logs out again (which resets the library: a new anonymousId, no cached traits);
        either of them uses it anonymously in between."""
        rng = self.rng
        self.counts["family_phones"] += 1
        members = [
            self.person(arrive, True, None),
            self.person(arrive + rng.uniform(0, 3) * DAY, True, None),
        ]
        signed = [m.signed_up_at for m in members if m.signed_up_at is not None]
        at = max(signed) + rng.uniform(0.5, 3) * DAY
        for _ in range(rng.randint(6, 14)):
            who = rng.choice(members)
            if rng.random() < FAMILY_LOGIN_RATE:
                at = self.identify(who, phone, at, who, self.login_email(who))
                at = self.visit(who, phone, at)
                phone.user, phone.cached_email = None, None
                phone.anonymous_id = self.uuid(phone.kind == "ios")
            else:
                at = self.visit(who, phone, at)
            at += rng.expovariate(1 / (SESSION_GAP_DAYS * DAY))

    def late_batch(self, first_out: int, source: str) -> None:
        """The phone was offline: 1 to 3 of its visits reach the server together, days late,
        with their original timestamps."""
        rng = self.rng
        mine = [o for o in self.out[first_out:] if o.source == source]
        visits: list[list[_Out]] = []
        for o in sorted(mine, key=lambda o: (o.at, o.seq)):
            if visits and o.at - visits[-1][-1].at < 1800:
                visits[-1].append(o)
            else:
                visits.append([o])
        start = rng.randrange(len(visits))
        batch = [o for v in visits[start : start + rng.randint(1, 3)] for o in v]
        flushed = batch[-1].at + rng.uniform(*LATE_DELAY_DAYS) * DAY
        for i, o in enumerate(batch):
            o.arrival = flushed + i * 0.001
        self.counts["late_batches"] += 1

    def retries(self) -> None:
        rng = self.rng
        for o in list(self.out):
            if rng.random() < RETRY_RATE:
                self.counts["retries"] += 1
                again = copy.deepcopy(o.message)
                arrival = o.arrival + rng.uniform(2, 120)
                self.out.append(_Out(o.at, arrival, len(self.out), o.source, o.sender, again))


def generate(persons: int = 3_000, seed: int = 7) -> Stream:
    """About `persons` persons' messages in arrival order, with the ground truth."""
    if persons < 1:
        raise ValueError(f"persons must be at least 1, not {persons}.")
    gen = _Generator(persons, seed)
    gen.build()
    messages = [(o.source, o.message) for o in gen.out]
    senders = [o.sender for o in gen.out]
    owners, links = truth_of(messages, senders)
    return Stream(
        messages,
        [o.arrival for o in gen.out],
        senders,
        owners,
        links,
        gen.persons,
        gen.counts,
    )


# ---- files ------------------------------------------------------------------------------------
def truth_path(path: Path) -> Path:
    """Where the truth of the stream at `path` goes: `x.jsonl.gz` -> `x.truth.json.gz`."""
    name = path.name
    gz = name.endswith(".gz")
    stem = name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    return path.with_name(stem + ".truth.json" + (".gz" if gz else ""))


def _write(path: Path, chunks: Iterable[bytes]) -> None:
    with path.open("wb") as fh:
        if path.suffix == ".gz":
            # No file name and no time in the header: the same stream, the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                gz.writelines(chunks)
        else:
            fh.writelines(chunks)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def write_stream(stream: Stream, path: Path) -> Path:
    """Write the messages to `path` (`.gz`: compressed) and the truth beside it; returns the
    truth's path."""
    encode = msgspec.json.Encoder().encode
    iso = _Generator.iso

    def lines() -> Iterable[bytes]:
        for (source, message), received in zip(stream.messages, stream.received, strict=True):
            yield encode({**message, "receivedAt": iso(received), "source": source}) + b"\n"

    _write(path, lines())
    truth = {
        "persons": stream.persons,
        "senders": stream.senders,
        "owners": [[t, v, sorted(who)] for (t, v), who in sorted(stream.owners.items())],
        "links": [[a[0], a[1], b[0], b[1]] for a, b in stream.links],
    }
    where = truth_path(path)
    _write(where, [encode(truth), b"\n"])
    return where


def read_stream(path: Path) -> Stream:
    """A stream written by `write_stream`, with its truth."""
    messages: list[tuple[str, dict[str, Any]]] = []
    received: list[float] = []
    for line in _read(path).splitlines():
        message = msgspec.json.decode(line)
        source = message.pop("source")
        moment = datetime.strptime(message.pop("receivedAt"), "%Y-%m-%dT%H:%M:%S.%f%z")
        messages.append((source, message))
        received.append(moment.timestamp())
    truth = msgspec.json.decode(_read(truth_path(path)))
    owners = {(t, v): set(who) for t, v, who in truth["owners"]}
    links = [((a, b), (c, d)) for a, b, c, d in truth["links"]]
    return Stream(messages, received, truth["senders"], owners, links, truth["persons"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.messy",
        description="Write messy Segment traffic as JSON lines, with its ground truth beside it.",
    )
    parser.add_argument("--persons", type=int, default=3_000, help="persons (default 3000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--out", type=Path, required=True, help="write JSON lines here (.gz: compressed)"
    )
    args = parser.parse_args(argv)
    stream = generate(args.persons, args.seed)
    truth = write_stream(stream, args.out)
    print(f"{args.out}, truth in {truth}: {stream.describe()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A deterministic synthetic Segment stream for the benchmarks.

Visitors browse from one to three devices (web `anonymousId`, iOS and Android with
`context.device`); 30 % sign up (`identify` with `userId` and `traits.email`) and later log
in on their other devices, which merges profiles across devices. Shared computers (kiosks,
family PCs) see several people log in on one `anonymousId`, which merge protection must
refuse. Some browsers send junk ids (`"null"`, `"undefined"`, `"[object Object]"`, ...),
signed-up users join accounts through `group` calls, a few send `alias`, and a few messages
are retried with the same `messageId`. Messages are interleaved by event time and encoded as
JSON (about 300 to 800 bytes each), exactly as a Segment library or export would send them.

The same `(events, seed)` always gives the same bytes.

    python -m benchmarks.workload --events 200000 --seed 7 --out stream.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

DeviceKind = Literal["web", "ios", "android"]

START: Final = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
SPAN: Final = 60 * 86_400.0  # visitors arrive over two months
EVENTS_PER_VISITOR: Final = 5.5  # measured mean of this generator; used to size the population
SIGNUP_RATE: Final = 0.30
JUNK_DEVICE_RATE: Final = 0.01
KIOSK_LOGIN_RATE: Final = 0.05  # of signed-up users, who also log in on a shared computer
ALIAS_RATE: Final = 0.03  # of sign-ups, who also send alias(previousId=anonymousId)
RETRY_RATE: Final = 0.001  # messages sent twice with the same messageId
JUNK_IDS: Final = (
    "null",
    "undefined",
    "[object Object]",
    "0000",
    "00000000-0000-0000-0000-000000000000",
)
ZERO_IDFA: Final = "00000000-0000-0000-0000-000000000000"

FIRST_NAMES: Final = (
    "Ada",
    "Ben",
    "Chloé",
    "Dev",
    "Eve",
    "Femi",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lena",
    "Mo",
    "Nia",
    "Oren",
    "Pia",
    "Quinn",
    "Rui",
    "Sara",
    "Tom",
)
LAST_NAMES: Final = (
    "Okafor",
    "Smith",
    "Novak",
    "Tanaka",
    "García",
    "Müller",
    "Rossi",
    "Khan",
    "Larsen",
    "Dubois",
    "Silva",
    "Kowalski",
    "Nguyen",
    "Cohen",
    "Ivanova",
)
DOMAINS: Final = ("gmail.com", "Outlook.com", "example.org", "proton.me", "acme.io", "yahoo.co.uk")
INDUSTRIES: Final = ("Retail", "Software", "Healthcare", "Logistics", "Education", "Finance")
PRODUCTS: Final = tuple(
    (f"prod_{i:05d}", f"SKU-{i * 7919 % 100000:05d}", name, category, price)
    for i, (name, category, price) in enumerate(
        (
            ("Trail Running Shoe", "Footwear", 129.0),
            ("Merino Base Layer", "Apparel", 79.5),
            ("Insulated Bottle 750 ml", "Accessories", 34.99),
            ("Ultralight Tent 2P", "Camping", 449.0),
            ("Headlamp 400 lm", "Accessories", 49.9),
            ("Rain Shell Jacket", "Apparel", 219.0),
            ("Climbing Chalk Bag", "Climbing", 24.0),
            ("Down Sleeping Bag", "Camping", 389.0),
        )
    )
)
PAGES: Final = (
    ("/", "Example Outdoor Shop"),
    ("/collections/footwear", "Footwear | Example Outdoor Shop"),
    ("/collections/camping", "Camping | Example Outdoor Shop"),
    ("/products/trail-running-shoe", "Trail Running Shoe | Example Outdoor Shop"),
    ("/cart", "Your cart | Example Outdoor Shop"),
    ("/account/login", "Log in | Example Outdoor Shop"),
    ("/blog/how-to-layer-for-winter", "How to layer for winter | Example Outdoor Shop"),
)
REFERRERS: Final = (
    "",
    "https://www.google.com/",
    "https://news.ycombinator.com/",
    "https://www.instagram.com/",
    "https://duckduckgo.com/",
)
USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
)
SCREENS: Final = ("Home", "Search", "Product", "Cart", "Checkout", "Orders", "Settings")
IOS_MODELS: Final = ("iPhone15,2", "iPhone16,1", "iPhone14,5", "iPad13,18")
ANDROID_MODELS: Final = (("samsung", "SM-S918B"), ("Google", "Pixel 8"), ("Xiaomi", "23049PCD8G"))


@dataclass(slots=True)
class Device:
    kind: DeviceKind
    anonymous_id: str
    device_id: str | None = None  # iOS IDFV / Android id
    advertising_id: str | None = None
    ad_tracking: bool = False
    push_token: str | None = None
    model: int = 0
    agent: int = 0
    junk: bool = False  # a broken SDK that sends a junk anonymousId
    kiosk: bool = False


@dataclass(slots=True)
class Person:
    devices: list[Device]
    user_id: str | None = None
    email: str | None = None
    name: str = ""
    account: int | None = None
    alias: bool = False


@dataclass(slots=True)
class Stats:
    """What the generated stream holds, for the benchmark's header."""

    events: int = 0
    bytes: int = 0
    visitors: int = 0
    devices: int = 0
    signups: int = 0
    cross_device_logins: int = 0
    kiosks: int = 0
    kiosk_logins: int = 0
    junk_devices: int = 0
    accounts: int = 0
    aliases: int = 0
    retries: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        types = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_type.items()))
        mean = self.bytes / self.events if self.events else 0
        return (
            f"{self.events:,} messages ({mean:.0f} B mean; {types}); {self.visitors:,} visitors "
            f"on {self.devices:,} devices, {self.signups:,} sign-ups, "
            f"{self.cross_device_logins:,} cross-device logins, {self.kiosk_logins:,} logins on "
            f"{self.kiosks:,} shared computers, {self.junk_devices:,} devices with junk ids, "
            f"{self.accounts:,} accounts, {self.aliases:,} alias calls, "
            f"{self.retries:,} retried messages"
        )


@dataclass(frozen=True, slots=True)
class Workload:
    messages: list[bytes]
    stats: Stats


# One scheduled message: (time, order, kind, person index or -1, device, extra)
Spec = tuple[float, int, str, int, Device, Any]


class _Generator:
    def __init__(self, events: int, seed: int):
        self.rng = random.Random(seed)
        self.target = events
        self.visitors_estimate = max(10, round(events / EVENTS_PER_VISITOR))
        self.people: list[Person] = []
        self.specs: list[Spec] = []
        self.order = 0
        self.stats = Stats()
        rng = self.rng
        self.kiosks = [
            Device("web", self.uuid(), kiosk=True, agent=rng.randrange(len(USER_AGENTS)))
            for _ in range(max(3, self.visitors_estimate // 200))
        ]
        self.stats.kiosks = len(self.kiosks)
        self.accounts = max(2, round(self.visitors_estimate * SIGNUP_RATE * 0.6 / 8))

    # ---- random values ---------------------------------------------------------------------
    def uuid(self, upper: bool = False) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:]}"
        return text.upper() if upper else text

    def device(self, kind: DeviceKind) -> Device:
        rng = self.rng
        if kind == "web":
            junk = rng.random() < JUNK_DEVICE_RATE
            if junk:
                self.stats.junk_devices += 1
            anon = rng.choice(JUNK_IDS) if junk else self.uuid()
            return Device("web", anon, junk=junk, agent=rng.randrange(len(USER_AGENTS)))
        tracking = rng.random() < 0.35
        if kind == "ios":
            # Since iOS 14 most users opt out: the IDFA is then all zeros (a junk id).
            return Device(
                "ios",
                self.uuid(),
                device_id=self.uuid(upper=True),
                advertising_id=self.uuid(upper=True) if tracking else ZERO_IDFA,
                ad_tracking=tracking or rng.random() < 0.05,
                push_token=f"{rng.getrandbits(256):064x}" if rng.random() < 0.2 else None,
                model=rng.randrange(len(IOS_MODELS)),
            )
        return Device(
            "android",
            self.uuid(),
            device_id=f"{rng.getrandbits(64):016x}",
            advertising_id=self.uuid() if tracking else None,
            ad_tracking=tracking,
            push_token=f"{rng.getrandbits(160):040x}" if rng.random() < 0.2 else None,
            model=rng.randrange(len(ANDROID_MODELS)),
        )

    # ---- the population and its timeline ---------------------------------------------------
    def add(self, at: float, kind: str, person: int, device: Device, extra: Any = None) -> None:
        self.order += 1
        self.specs.append((at, self.order, kind, person, device, extra))

    def session(self, at: float, person: int, device: Device, signed_in: bool) -> float:
        """A visit of 1 to 8 events; returns its end time."""
        rng = self.rng
        n = 1 + min(int(rng.expovariate(1 / 2.2)), 7)
        first = "page" if device.kind == "web" else "screen"
        if device.kind != "web" and rng.random() < 0.5:
            self.add(at, "track", person, device, ("Application Opened", signed_in))
            at += rng.uniform(1, 20)
            n -= 1
        for i in range(n):
            if i == 0 or rng.random() < 0.35:
                self.add(at, first, person, device, signed_in)
            else:
                name = rng.choices(
                    ("Product Viewed", "Product Added", "Products Searched", "Order Completed"),
                    (6, 3, 2, 1),
                )[0]
                self.add(at, "track", person, device, (name, signed_in))
            at += rng.uniform(2, 90)
        return at

    def visitor(self) -> None:
        rng = self.rng
        index = len(self.people)
        count = rng.choices((1, 2, 3), (70, 25, 5))[0]
        kinds: list[DeviceKind] = [
            rng.choices(("web", "ios", "android"), (60, 22, 18))[0] for _ in range(count)
        ]
        person = Person([self.device(k) for k in kinds])
        self.people.append(person)
        self.stats.visitors += 1
        self.stats.devices += count
        signs_up = rng.random() < SIGNUP_RATE
        sessions = 1 + min(int(rng.expovariate(1 / (2.5 if signs_up else 0.6))), 11)
        # Every device is used at least once; the first session is on the first device.
        order = list(range(count)) + [rng.randrange(count) for _ in range(max(0, sessions - count))]
        # People often browse anonymously, on more than one device, before they sign up.
        signup_at = rng.randrange(len(order)) if signs_up else -1
        at = START + rng.random() * SPAN
        logged_in: set[int] = set()
        for s, d in enumerate(order):
            device = person.devices[d]
            if s == signup_at:
                self.sign_up(index, person, device, at)
                logged_in.add(d)
                at += 5
            elif signup_at >= 0 and s > signup_at and d not in logged_in:
                # A login on another device: the cross-device merge.
                self.add(at, "identify", index, device, "login")
                self.stats.cross_device_logins += 1
                logged_in.add(d)
                at += 3
            elif signup_at < 0 and rng.random() < 0.02:
                device = rng.choice(self.kiosks)  # anonymous browsing on a shared computer
            at = self.session(at, index, device, d in logged_in and not device.kiosk)
            at += rng.expovariate(1 / (1.5 * 86_400))
        if signup_at >= 0:
            # Most people later log in on their other devices too: cross-device merges.
            for d, device in enumerate(person.devices):
                if d not in logged_in and rng.random() < 0.7:
                    at += rng.expovariate(1 / (2 * 86_400))
                    self.add(at, "identify", index, device, "login")
                    self.stats.cross_device_logins += 1
                    logged_in.add(d)
                    self.session(at + 3, index, device, True)
        if signs_up and rng.random() < KIOSK_LOGIN_RATE:
            kiosk = rng.choice(self.kiosks)
            at = START + rng.random() * SPAN
            self.add(at, "identify", index, kiosk, "login")
            self.stats.kiosk_logins += 1
            self.session(at + 2, index, kiosk, True)

    def sign_up(self, index: int, person: Person, device: Device, at: float) -> None:
        rng = self.rng
        stats = self.stats
        stats.signups += 1
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        person.user_id = f"usr_{rng.getrandbits(40):010x}"
        person.name = f"{first} {last}"
        local = f"{first}.{last}{stats.signups}"  # unique: no two people share an e-mail
        email = f"{local}@{rng.choice(DOMAINS)}"
        # Some sign-up forms leave the field empty or send a placeholder: junk e-mails.
        person.email = rng.choice(("", "undefined", "null")) if rng.random() < 0.01 else email
        if rng.random() < ALIAS_RATE:
            person.alias = True
            stats.aliases += 1
            self.add(at, "alias", index, device)
            at += 0.5
        self.add(at, "identify", index, device, "signup")
        if rng.random() < 0.6:
            person.account = rng.randrange(self.accounts)
            self.add(at + 1, "group", index, device)

    def build(self) -> list[Spec]:
        """The first `target` messages in event-time order."""
        while len(self.specs) < self.target:
            for _ in range(max(1, round((self.target - len(self.specs)) / EVENTS_PER_VISITOR))):
                self.visitor()
        self.stats.accounts = len({p.account for p in self.people if p.account is not None})
        self.specs.sort(key=_spec_key)
        return self.specs[: self.target]


def _spec_key(spec: Spec) -> tuple[float, int]:
    return spec[0], spec[1]


class _Renderer:
    """Specs to Segment messages (dicts), with context as each library sends it."""

    def __init__(self, people: list[Person], seed: int):
        self.people = people
        self.rng = random.Random(seed ^ 0x5E6)

    def iso(self, t: float) -> str:
        moment = datetime.fromtimestamp(t, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    def message_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def context(self, device: Device, email: str | None) -> dict[str, Any]:
        rng = self.rng
        ip = f"198.51.{device.agent * 37 % 256}.{len(device.anonymous_id) * 7 % 256}"
        context: dict[str, Any]
        if device.kind == "web":
            path, title = rng.choice(PAGES)
            context = {
                "library": {"name": "analytics.js", "version": "npm:next-1.74.0"},
                "ip": ip,
                "page": {"path": path, "referrer": rng.choice(REFERRERS), "title": title},
                "userAgent": USER_AGENTS[device.agent],
            }
        elif device.kind == "ios":
            context = {
                "library": {"name": "analytics-swift", "version": "1.6.1"},
                "app": {"name": "Example Shop", "version": "5.12.0", "build": "5120"},
                "device": {
                    "id": device.device_id,
                    "type": "ios",
                    "manufacturer": "Apple",
                    "model": IOS_MODELS[device.model],
                    "advertisingId": device.advertising_id,
                    "adTrackingEnabled": device.ad_tracking,
                },
                "os": {"name": "iOS", "version": "17.5.1"},
            }
        else:
            maker, model = ANDROID_MODELS[device.model]
            context = {
                "library": {"name": "analytics-kotlin", "version": "1.16.3"},
                "app": {"name": "Example Shop", "version": "5.12.0", "build": "512000"},
                "device": {
                    "id": device.device_id,
                    "type": "android",
                    "manufacturer": maker,
                    "model": model,
                },
                "os": {"name": "Android", "version": "14"},
            }
            if device.advertising_id is not None:
                context["device"]["advertisingId"] = device.advertising_id
                context["device"]["adTrackingEnabled"] = device.ad_tracking
        if device.push_token is not None:
            context["device"]["token"] = device.push_token
        if email:
            context["traits"] = {"email": email}
        return context

    def properties(self, name: str) -> dict[str, Any]:
        rng = self.rng
        pid, sku, title, category, price = rng.choice(PRODUCTS)
        if name == "Product Viewed":
            return {
                "product_id": pid,
                "sku": sku,
                "category": category,
                "name": title,
                "brand": "Example",
                "price": price,
                "currency": "USD",
            }
        if name == "Product Added":
            return {
                "cart_id": f"{rng.getrandbits(48):012x}",
                "product_id": pid,
                "sku": sku,
                "name": title,
                "price": price,
                "quantity": rng.randint(1, 3),
            }
        if name == "Order Completed":
            quantity = rng.randint(1, 2)
            return {
                "order_id": f"ord_{rng.getrandbits(40):010x}",
                "total": price * quantity,
                "currency": "USD",
                "products": [{"product_id": pid, "quantity": quantity}],
            }
        if name == "Products Searched":
            return {"query": rng.choice(("tent", "merino", "shoes size 44", "headlamp"))}
        return {"from_background": rng.random() < 0.7, "version": "5.12.0"}

    def render(self, spec: Spec) -> dict[str, Any]:
        at, _, kind, index, device, extra = spec
        rng = self.rng
        person = self.people[index] if index >= 0 else None
        anonymous_id: str | None = device.anonymous_id
        user_id = None
        email = None
        signed_in = (
            kind in ("identify", "group", "alias")
            or (isinstance(extra, tuple) and extra[1])
            or extra is True
        )
        if person is not None and signed_in:
            user_id = person.user_id
            if kind not in ("identify", "group") and rng.random() < 0.3:
                email = person.email
        if device.junk and user_id is not None and rng.random() < 0.5:
            anonymous_id = ""  # a broken SDK: an empty anonymousId beside a real userId
        msg: dict[str, Any] = {"type": kind, "messageId": self.message_id()}
        if anonymous_id is not None:
            msg["anonymousId"] = anonymous_id
        if user_id is not None:
            msg["userId"] = user_id
        msg["context"] = self.context(device, email)
        if kind == "track":
            name = extra[0]
            msg["event"] = name
            msg["properties"] = self.properties(name)
        elif kind == "page":
            page = msg["context"]["page"]
            msg["name"] = page["title"].split(" | ")[0]
            msg["properties"] = {"url": "https://shop.example.com" + page["path"]}
        elif kind == "screen":
            msg["name"] = rng.choice(SCREENS)
            msg["properties"] = {"previous": rng.choice(SCREENS)}
        elif kind == "identify":
            assert person is not None
            traits: dict[str, Any] = {"email": person.email}
            if extra == "signup":
                traits |= {
                    "name": person.name,
                    "plan": rng.choice(("free", "pro")),
                    "createdAt": self.iso(at),
                }
            else:
                traits["lastLoginAt"] = self.iso(at)
            msg["traits"] = traits
        elif kind == "group":
            assert person is not None and person.account is not None
            n = person.account
            msg["groupId"] = f"acct_{n:06d}"
            msg["traits"] = {
                "name": f"Company {n}",
                "industry": INDUSTRIES[n % len(INDUSTRIES)],
                "employees": 5 + n * 37 % 5000,
                "plan": ("team", "business")[n % 2],
                "website": f"https://company{n}.example",
            }
        elif kind == "alias":
            msg["previousId"] = device.anonymous_id
        msg["integrations"] = {}
        msg["timestamp"] = self.iso(at)
        msg["receivedAt"] = self.iso(at + rng.uniform(0.05, 1.5))
        return msg


def generate(events: int = 200_000, seed: int = 7) -> Workload:
    """`events` JSON-encoded Segment messages in event-time order, and what they hold."""
    if events < 1:
        raise ValueError(f"events must be at least 1, not {events}.")
    gen = _Generator(events, seed)
    specs = gen.build()
    renderer = _Renderer(gen.people, seed)
    encode = msgspec.json.Encoder().encode
    retry = random.Random(seed ^ 0x7E7).random
    messages: list[bytes] = []
    by_type: dict[str, int] = {}
    pending: list[bytes] = []
    for spec in specs:
        raw = encode(renderer.render(spec))
        if retry() < RETRY_RATE:
            pending.append(raw)  # the library retries after a timeout: same messageId
        messages.append(raw)
        if pending and len(messages) % 50 == 0:
            messages.extend(pending)
            pending.clear()
    messages.extend(pending)
    del messages[events:]
    stats = gen.stats
    for raw in messages:
        kind = raw[9 : raw.index(b'"', 9)].decode()
        by_type[kind] = by_type.get(kind, 0) + 1
    stats.events = len(messages)
    stats.retries = len(messages) - len(set(messages))
    stats.bytes = sum(map(len, messages))
    stats.by_type = by_type
    return Workload(messages, stats)


def iter_lines(messages: list[bytes]) -> Iterator[bytes]:
    for raw in messages:
        yield raw + b"\n"


def write_messages(path: str | Path, messages: list[bytes], gzip: bool = False) -> None:
    """Write already generated messages as JSON lines (gzip-compressed with `gzip=True`)."""
    out = Path(path)
    if gzip:
        with gzip_module.open(out, "wb", compresslevel=5) as fh:
            fh.writelines(iter_lines(messages))
    else:
        with out.open("wb") as fh:
            fh.writelines(iter_lines(messages))


def write_jsonl(path: str | Path, n: int = 200_000, seed: int = 7, gzip: bool = False) -> Stats:
    """Write the stream of `n` messages as JSON lines (gzip-compressed with `gzip=True`)."""
    workload = generate(n, seed)
    write_messages(path, workload.messages, gzip=gzip)
    return workload.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.workload",
        description="Write a deterministic synthetic Segment stream as JSON lines.",
    )
    parser.add_argument("--events", type=int, default=200_000, help="messages (default 200000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, help="write JSON lines here (.gz: compressed)")
    args = parser.parse_args(argv)
    if args.out is None:
        workload = generate(args.events, args.seed)
        sys.stdout.buffer.writelines(iter_lines(workload.messages))
        print(workload.stats.describe(), file=sys.stderr)
    else:
        stats = write_jsonl(args.out, args.events, args.seed, gzip=args.out.suffix == ".gz")
        print(f"{args.out}: {stats.describe()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""segment_ids: `use_` / `acc_` + a 27-character KSUID (SPEC 3 step 3, reference section 4).

The KSUID layout is Segment's (github.com/segmentio/ksuid): 4 bytes of big-endian seconds since
1,400,000,000, then 16 random bytes, as a base-62 number (`0-9A-Za-z`) padded to 27 characters.
The decoder below is written from that description, independently of `idstitch.core.ksuid`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import idstitch
from idstitch.core import ksuid
from idstitch.core.ksuid import is_ksuid, segment_id_for, timestamp_of

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KSUID_EPOCH = 1_400_000_000
TEXT = re.compile(r"[0-9A-Za-z]{27}")

# From the segmentio/ksuid README (`ksuid -f inspect` and template examples).
KNOWN = [
    ("0ujtsYcgvSTl8PAuAdqWYSMnLOv", 107608047, "B5A1CD34B5F99D1154FB6853345C9735"),
    ("0uk1Hbc9dQ9pxyTqJ93IUrfhdGq", 107611700, "9850EEEC191BF4FF26F99315CE43B0C8"),
    ("0uk1HdCJ6hUZKDgcxhpJwUl5ZEI", 107611700, "CC55072555316F45B8CA2D2979D3ED0A"),
    ("0uk1HcdvF0p8C20KtTfdRSB9XIm", 107611700, "BA1C205D6177F0992D15EE606AE32238"),
    ("0uk1Ha7hGJ1Q9Xbnkt0yZgNwg3g", 107611700, "67517BA309EA62AE7991B27BB6F2FCAC"),
]


def decode(text: str) -> tuple[int, bytes]:
    """(Unix seconds, 16-byte payload) of a KSUID's text form."""
    number = 0
    for char in text:
        number = number * 62 + ALPHABET.index(char)
    raw = number.to_bytes(20, "big")
    return int.from_bytes(raw[:4], "big") + KSUID_EPOCH, raw[4:]


def with_payload(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> None:
    """Make the module's random source return `payload`."""
    monkeypatch.setattr(ksuid, "_random", SimpleNamespace(take16=lambda: payload[:16]))


@pytest.mark.parametrize("collection,prefix", [("users", "use_"), ("accounts", "acc_")])
def test_segment_ids_are_a_prefix_and_27_base62_characters(collection: str, prefix: str) -> None:
    before = int(time.time())
    made = ksuid.segment_id(collection)
    after = int(time.time())
    assert made.startswith(prefix)
    tail = made[len(prefix) :]
    assert TEXT.fullmatch(tail), made
    assert before <= decode(tail)[0] <= after


def test_segment_ids_are_unique() -> None:
    made = {ksuid.segment_id("users") for _ in range(2000)}
    assert len(made) == 2000
    assert len({decode(m[4:])[1] for m in made}) == 2000  # the payloads differ, not only the text


def test_a_forked_child_does_not_reuse_its_parents_random_bytes() -> None:
    ksuid.ksuid()  # the parent now holds a chunk of random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id down the pipe, then leave at once
        os.write(write, ksuid.ksuid().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = ksuid.ksuid()  # the next id the parent's chunk gives
    assert len(child) == 27
    assert decode(child)[1] != decode(parent)[1]


@pytest.mark.parametrize("text,seconds,payload", KNOWN)
def test_known_ksuids_encode_and_decode(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: int, payload: str
) -> None:
    assert decode(text) == (seconds + KSUID_EPOCH, bytes.fromhex(payload))
    assert ksuid.timestamp_of(text) == seconds + KSUID_EPOCH
    with_payload(monkeypatch, bytes.fromhex(payload))
    assert ksuid.ksuid(now=seconds + KSUID_EPOCH + 0.75) == text


def test_smallest_and_largest_ksuids(monkeypatch: pytest.MonkeyPatch) -> None:
    with_payload(monkeypatch, bytes(16))
    assert ksuid.ksuid(now=KSUID_EPOCH) == "0" * 27
    with_payload(monkeypatch, b"\xff" * 16)
    assert ksuid.ksuid(now=KSUID_EPOCH + 2**32 - 1) == "aWgEPTl1tmebfsQzFP4bxwgy80V"
    assert ksuid.timestamp_of("aWgEPTl1tmebfsQzFP4bxwgy80V") == KSUID_EPOCH + 2**32 - 1


@pytest.mark.parametrize("bad", ["", "0" * 26, "0" * 28, "0" * 26 + "-", "0" * 26 + "é"])
def test_malformed_ksuids_are_refused(bad: str) -> None:
    assert not ksuid.is_ksuid(bad)


@pytest.mark.parametrize("bad", ["", "0" * 26, "0" * 28])
def test_a_ksuid_of_the_wrong_length_has_no_timestamp(bad: str) -> None:
    with pytest.raises(ValueError, match="27 characters"):
        ksuid.timestamp_of(bad)


@settings(max_examples=300)
@given(
    first=st.integers(KSUID_EPOCH, KSUID_EPOCH + 2**32 - 1),
    second=st.integers(KSUID_EPOCH, KSUID_EPOCH + 2**32 - 1),
    fraction=st.floats(0, 0.999),
)
def test_text_sorts_by_creation_second(first: int, second: int, fraction: float) -> None:
    a = ksuid.ksuid(now=first + fraction)
    b = ksuid.ksuid(now=second)
    assert TEXT.fullmatch(a) and TEXT.fullmatch(b)
    assert decode(a)[0] == first and decode(b)[0] == second
    if first < second:
        assert a < b
    elif first > second:
        assert a > b


def test_a_profile_is_named_after_the_message_that_creates_it() -> None:
    at = 1_736_900_000.5
    one = segment_id_for("users", "web", "m-1", at)
    assert one == segment_id_for("users", "web", "m-1", at)
    assert one.startswith("use_") and is_ksuid(one[4:])
    assert timestamp_of(one[4:]) == int(at)
    others = {
        segment_id_for("accounts", "web", "m-1", at)[4:],
        segment_id_for("users", "ios", "m-1", at)[4:],
        segment_id_for("users", "web", "m-2", at)[4:],
        one[4:],
    }
    assert len(others) == 4
    assert segment_id_for("accounts", "web", "m-1", at).startswith("acc_")
    # Later messages sort after earlier ones, whatever their ids.
    assert segment_id_for("users", "web", "zzz", at) < segment_id_for("users", "web", "a", at + 1)


def test_two_stores_fed_the_same_messages_name_their_profiles_alike(tmp_path: Path) -> None:
    messages = [
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m1"},
        {"type": "group", "userId": "u1", "groupId": "g1", "messageId": "m2"},
        {"type": "track", "event": "E", "anonymousId": "a2", "messageId": "m3"},
    ]
    named = []
    for n in (1, 2):
        with idstitch.open(f"sqlite:///{tmp_path / f's{n}.db'}", tune_gc=False) as engine:
            results = engine.ingest_batch(messages, source="web", received_at=1_736_900_000)
            named.append([(r.segment_id, r.account_segment_id) for r in results])
    assert named[0] == named[1]
    assert named[0][0][0] == segment_id_for("users", "web", "m1", 1_736_900_000)

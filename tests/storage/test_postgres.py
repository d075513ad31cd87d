"""The PostgreSQL store: installing, connecting, migrating, and racing other writers."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from idstitch.checks import redact_url
from idstitch.config import settings_from
from idstitch.core import messages
from idstitch.core.identifiers import Extracted, Extractor
from idstitch.core.ksuid import segment_id_for as segment_id
from idstitch.core.messages import Prepared, encode, prepare
from idstitch.core.plan import Plan
from idstitch.core.planner import apply_plan, keys_of, plan_message
from idstitch.engine import Engine
from idstitch.errors import ConfigError, StorageError
from idstitch.storage import open_store, pg_batch
from idstitch.storage.base import Transaction
from idstitch.storage.migrations import NAMES, POSTGRES, SQLITE
from idstitch.storage.pg_batch import Conflict
from idstitch.storage.postgres import PostgresStore
from tests.helpers import msg
from tests.storage import pgserver

RULES = settings_from({}).rules
EXTRACTOR = Extractor(RULES)
Item = tuple[Prepared, Extracted]


def items(*messages: dict[str, Any]) -> list[Item]:
    out = []
    for m in messages:
        prepared = prepare(encode(m), received_at=time.time())
        out.append((prepared, EXTRACTOR.extract(prepared.message, prepared.type)))
    return out


def keys(batch: list[Item]) -> list[str]:
    return [k for _, e in batch for k in keys_of(e)]


def resolver(batch: list[Item], record: list[list[Plan | None]]) -> Callable[[Transaction], None]:
    """What the engine does inside a batch, recording each attempt's plans (None: duplicate)."""

    def work(tx: Transaction) -> None:
        seen = tx.seen("web", [p.message_id for p, _ in batch])
        plans: list[Plan | None] = []
        for prepared, extracted in batch:
            if prepared.message_id in seen:
                plans.append(None)
                continue
            plan = plan_message(prepared, extracted, tx.graph, RULES, "web", segment_id)
            apply_plan(tx.graph, plan)
            plans.append(plan)
        record.append(plans)
        tx.apply([p for p in plans if p is not None])

    return work


def flush(tx: Transaction) -> None:
    """Wait for every statement the transaction has sent so far (it may use pipelines)."""
    conn = getattr(tx, "conn")  # noqa: B009 - the PostgreSQL transaction's connection
    with conn.pipeline() as pipeline:
        pipeline.sync()


def wait_until_blocked(app: str, timeout: float = 10.0) -> None:
    """Wait until a session named `app` waits for a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(pgserver.base_url(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                (app,),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError(f"no session of {app} ever waited for a lock")


@pytest.fixture
def named_url(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A store URL whose sessions carry a unique application_name, and that name."""
    app = f"idstitch-test-{uuid.uuid4().hex[:8]}"
    yield f"{postgres_url}&application_name={app}", app


# ---- installing and connecting ----------------------------------------------------------------
def test_without_the_extra_the_error_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "psycopg" or m.startswith("idstitch.storage.p")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError) as err:
        open_store("postgresql://bob:s3cret@db.example.com/idstitch")
    text = str(err.value)
    assert "pip install 'idstitch[postgres]'" in text and "psycopg" in text
    assert "s3cret" not in text


def test_an_unreachable_server_is_named_without_its_password() -> None:
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        PostgresStore("postgresql://bob:s3cret@127.0.0.1:1/idstitch", connect_timeout=2)
    text = str(err.value)
    assert "127.0.0.1:1" in text and "s3cret" not in text and "check that the server" in text
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://bob:s3cret@h:5432/db", "postgresql://bob:***@h:5432/db"),
        (
            "postgresql://bob@h/db?password=s3cret&sslmode=require",
            "postgresql://bob@h/db?password=***&sslmode=require",
        ),
        ("postgres://h/db", "postgres://h/db"),
    ],
)
def test_urls_are_masked_for_messages(url: str, masked: str) -> None:
    assert redact_url(url) == masked


def test_migrations_have_the_same_names_in_both_dialects() -> None:
    assert [n for n, _ in POSTGRES] == [n for n, _ in SQLITE] == NAMES


@pytest.mark.postgres
def test_a_search_path_without_a_schema_is_explained() -> None:
    url = pgserver.with_schema(pgserver.require(), f"missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StorageError, match="names no existing schema"):
        PostgresStore(url)


def test_ci_without_a_server_fails_and_elsewhere_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pgserver.ENV_URL, "postgresql://postgres@127.0.0.1:1/test")
    pgserver.unavailable.cache_clear()
    try:
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="CI=true"):
            pgserver.require()
        monkeypatch.delenv("CI")
        with pytest.raises(pytest.skip.Exception, match="no PostgreSQL server at"):
            pgserver.require()
    finally:
        monkeypatch.undo()
        pgserver.unavailable.cache_clear()


@pytest.mark.postgres
def test_a_store_keyed_on_whole_values_is_migrated_to_digests(postgres_url: str) -> None:
    # A store from before 0003 kept (collection, type, value) as its primary key (and had
    # none of the later migrations that use the digest: 0005's index, 0008's block list).
    engine = Engine(settings_from({"storage": {"url": postgres_url}}), tune_gc=False)
    first = engine.ingest(msg("identify", userId="u-old", anonymousId="a-old"))
    engine.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "DROP INDEX violations_conflicts; DROP INDEX identifiers_key; "
            "DROP TABLE blocked_identifiers; DROP TABLE operations; "
            "DROP FUNCTION identifier_digest(text); "
            "ALTER TABLE identifiers ADD PRIMARY KEY (collection, type, value); "
            "DELETE FROM schema_migrations WHERE name IN ('0003_identifier_digest', "
            "'0005_conflicts', '0008_repairs')"
        )
    engine = Engine(settings_from({"storage": {"url": postgres_url}}), tune_gc=False)
    try:
        applied = engine.store.migrations_applied  # type: ignore[attr-defined]
        assert applied == ["0003_identifier_digest", "0005_conflicts", "0008_repairs"]
        again = engine.ingest(msg("track", event="E", anonymousId="a-old"))
        assert (again.outcome, again.segment_id) == ("attached", first.segment_id)
        long = "\U0001f600" * 1000
        assert engine.ingest(msg("identify", userId=long)).violations == ()
        assert engine.ingest(msg("track", event="E", userId=long)).outcome == "attached"
    finally:
        engine.close()


@pytest.mark.postgres
def test_connections_the_server_dropped_are_replaced_before_a_request_uses_them(
    postgres_url: str,
) -> None:
    # After a server restart or pg_terminate_backend, the first write and each pooled read
    # connection failed one request with 503 before the pool noticed.
    engine = Engine(settings_from({"storage": {"url": postgres_url}}), tune_gc=False)
    store = engine.store
    assert isinstance(store, PostgresStore)
    try:
        engine.ingest(msg("identify", userId="u1", traits={"plan": "pro"}))
        pids = set()
        for pool in (store._writer, store._pool):
            with pool.connection() as conn:
                pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        for pid in pids:
            pgserver.admin_execute(f"SELECT pg_terminate_backend({int(pid)})")
        assert engine.ingest(msg("track", event="E", userId="u1")).outcome == "attached"
        assert engine.traits("user_id:u1") == {"plan": "pro"}
    finally:
        engine.close()


@pytest.mark.postgres
def test_reads_and_batches_use_indexes_on_tables_without_statistics(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With autovacuum off (or on a young table) the planner had no statistics and hashed
    # whole tables: 28-51 ms per event for a known profile at 100,000-300,000 profiles.
    engine = Engine(settings_from({"storage": {"url": postgres_url}}), tune_gc=False)
    store = engine.store
    assert isinstance(store, PostgresStore)
    tables = ("profiles", "identifiers", "traits", "merges", "links", "events")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")  # type: ignore[arg-type]
        conn.execute(
            "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at) "
            "SELECT n, 'use_' || n, 'users', n, 0 FROM generate_series(1000, 60999) n"
        )
        conn.execute(
            "INSERT INTO identifiers (collection, type, value, profile_id, source_id, "
            "first_message_id, created_at) SELECT 'users', 'anonymous_id', 'a' || n, n, 's', "
            "'m', 0 FROM generate_series(1000, 60999) n"
        )
        for sql in (
            "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
            "SELECT n, 'k', '1', 0, 0, 's' FROM generate_series(1000, 60999) n",
            "INSERT INTO links (user_id, account_id, source_id, created_at) "
            "SELECT n, n + 1, 's', 0 FROM generate_series(1000, 60998) n",
            "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp) "
            "SELECT n, n + 1, 'm', 's', 0 FROM generate_series(1000, 60998) n",
        ):
            conn.execute(sql)  # type: ignore[arg-type]
        assert conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'identifiers' "
            "AND schemaname = current_schema()"
        ).fetchone() == (0,)
    seen: list[tuple[str, Any]] = []
    real = store._all

    def recording(sql: str, args: Any = None, timeout: float | None = None) -> Any:
        seen.append((sql, args))
        return real(sql, args, timeout)

    monkeypatch.setattr(store, "_all", recording)
    try:
        engine.ingest(msg("identify", anonymousId="a5000", userId="u", traits={"x": 1}))
        engine.profile("anonymous_id:a5000")
        list(engine.events("anonymous_id:a5000"))
        seen.append((pg_batch._STAMPS.replace("%b", "%s"), ([5000, 5001],)))
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("SET jit = off")
            for sql, args in seen:
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, args))  # type: ignore[arg-type]
                for table in tables[1:]:
                    assert f"Seq Scan on {table}" not in plan, (sql, plan)
    finally:
        engine.close()


def _open_and_report(url: str, barrier: Any, out: Any) -> None:
    barrier.wait(timeout=30)
    store = PostgresStore(url)
    out.put(store.migrations_applied)
    store.close()


@pytest.mark.postgres
def test_workers_starting_together_apply_migrations_once(postgres_url: str) -> None:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_open_and_report, args=(postgres_url, barrier, out)) for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    applied = sorted((out.get(timeout=60) for _ in procs), key=len)
    for proc in procs:
        proc.join(timeout=30)
    assert applied == [[], [], NAMES]


# ---- several writers -----------------------------------------------------------------------
@pytest.mark.postgres
def test_two_engines_on_one_database_share_profiles_and_dedupe(postgres_url: str) -> None:
    with (
        Engine(settings_from({"storage": {"url": postgres_url}}), tune_gc=False) as one,
        Engine(settings_from({"storage": {"url": postgres_url}}), tune_gc=False) as two,
    ):
        a = one.ingest(msg("track", event="A", anonymousId="a1", messageId="m1"))
        b = two.ingest(msg("identify", userId="u1", anonymousId="a1"))
        assert b.segment_id == a.segment_id and b.outcome == "attached"
        again = two.ingest(msg("track", event="A", anonymousId="a1", messageId="m1"))
        assert again.outcome == "duplicate"
        row = one.store.find_by_identifier("users", "user_id", "u1")
        assert row is not None
        seqs = [e.seq for e in one.store.events(row.pid, sort="asc", limit=10)]
        assert len(seqs) == 2 and seqs[0] < seqs[1]


@pytest.mark.postgres
def test_a_batch_that_keeps_conflicting_runs_alone_then_fails_loudly(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, max_attempts=3)
    try:
        calls: list[bool] = []

        def flaky(tx: Transaction) -> None:
            calls.append(getattr(tx, "exclusive"))  # noqa: B009
            if len(calls) <= 2:
                raise Conflict("a merge raced this batch")

        store.run_batch(["uanonymous_id\x1fa"], flaky)
        assert calls == [False, False, False] and store.conflicts == 2
        calls.clear()

        def hopeless(tx: Transaction) -> None:
            calls.append(getattr(tx, "exclusive"))  # noqa: B009
            raise Conflict("a merge raced this batch")

        with pytest.raises(StorageError, match="after 4 attempts, the last one alone"):
            store.run_batch(["uanonymous_id\x1fa"], hopeless)
        assert calls == [False, False, False, True] and store.exclusive_runs == 1
        assert store.stats().events == 0
    finally:
        store.close()


def _in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@pytest.mark.postgres
def test_a_message_stored_meanwhile_by_another_worker_becomes_a_duplicate(
    named_url: tuple[str, str],
) -> None:
    url, app = named_url
    first, second = PostgresStore(url), PostgresStore(url)
    try:
        go = threading.Event()
        held = items(msg("track", event="A", anonymousId="first", messageId="same"))
        racing = items(msg("track", event="A", anonymousId="second", messageId="same"))

        flushed = threading.Event()

        def hold() -> None:
            with first.batch(keys(held)) as tx:
                resolver(held, [])(tx)
                flush(tx)
                flushed.set()
                go.wait(10)

        holder, holder_errors = _in_thread(hold)
        assert flushed.wait(10)
        record: list[list[Plan | None]] = []
        racer, racer_errors = _in_thread(
            lambda: second.run_batch(keys(racing), resolver(racing, record))
        )
        wait_until_blocked(app)  # the racer's insert waits on the holder's message
        go.set()
        holder.join(10)
        racer.join(10)
        assert holder_errors == racer_errors == []
        assert [len(r) for r in record] == [1, 1] and record[-1] == [None]
        assert second.conflicts == 1 and second.stats().events == 1
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_a_profile_merged_while_waiting_is_followed_to_its_canonical(
    named_url: tuple[str, str],
) -> None:
    url, app = named_url
    with Engine(settings_from({"storage": {"url": url}}), tune_gc=False) as engine:
        older = engine.ingest(
            msg("identify", anonymousId="x1", context={"traits": {"email": "e@example.com"}})
        )
        newer = engine.ingest(
            msg(
                "track",
                event="App",
                anonymousId="b",
                context={"device": {"type": "android", "id": "b2"}},
            )
        )
    merger, follower = PostgresStore(url), PostgresStore(url)
    try:
        go = threading.Event()
        merge = items(
            msg("track", event="M", anonymousId="b", context={"traits": {"email": "e@example.com"}})
        )
        follow = items(
            msg(
                "track",
                event="F",
                anonymousId="t1",
                context={"device": {"type": "android", "id": "b2"}},
            )
        )
        merged: list[list[Plan | None]] = []

        flushed = threading.Event()

        def hold() -> None:
            with merger.batch(keys(merge)) as tx:
                resolver(merge, merged)(tx)
                flush(tx)
                flushed.set()
                go.wait(10)

        holder, holder_errors = _in_thread(hold)
        assert flushed.wait(10)
        record: list[list[Plan | None]] = []
        racer, racer_errors = _in_thread(
            lambda: follower.run_batch(keys(follow), resolver(follow, record))
        )
        wait_until_blocked(app)  # it read b2's owner, then waits for that profile's lock
        go.set()
        holder.join(10)
        racer.join(10)
        assert holder_errors == racer_errors == []
        [[merge_plan]] = merged
        assert merge_plan is not None and merge_plan.users is not None
        assert [s for _, s in merge_plan.users.merged] == [newer.segment_id]
        [plan] = record[-1]
        assert plan is not None and plan.users is not None
        assert (plan.users.outcome, plan.users.segment_id) == ("attached", older.segment_id)
        found = follower.find_by_identifier("users", "anonymous_id", "t1")
        assert found is not None and found.segment_id == older.segment_id
    finally:
        merger.close()
        follower.close()


@pytest.mark.postgres
def test_stores_in_other_schemas_never_wait_for_each_other() -> None:
    with pgserver.fresh_schema() as url_one, pgserver.fresh_schema() as url_two:
        one, two = PostgresStore(url_one), PostgresStore(url_two)
        try:
            go = threading.Event()
            key = ["uanonymous_id\x1fshared"]

            def hold() -> None:
                with one.batch(key):
                    go.wait(10)

            holder, errors = _in_thread(hold)
            time.sleep(0.2)
            started = time.monotonic()
            two.run_batch(key, lambda tx: tx.apply([]))
            assert time.monotonic() - started < 5  # a wait would last the 10 s stall bound
            go.set()
            holder.join(10)
            assert errors == []
        finally:
            one.close()
            two.close()


@pytest.mark.postgres
def test_a_profile_lock_below_one_already_held_is_tried_never_waited_for(
    postgres_url: str,
) -> None:
    store = PostgresStore(postgres_url)
    try:
        namespace = store._locks.profiles
        with psycopg.connect(postgres_url) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s::int, 5)", (namespace,))
            with store.batch([]) as tx:
                lock = tx._lock_profiles  # type: ignore[attr-defined]
                lock({9})  # nothing held yet: waited for (and free)
                started = time.monotonic()
                with pytest.raises(Conflict):
                    lock({5})  # below 9 and held elsewhere: a wait here could deadlock
                assert time.monotonic() - started < 5  # a wait would last the 10 s stall bound
                lock({12})  # above everything held: waited for
            other.rollback()
        assert store.healthy()
    finally:
        store.close()


@pytest.mark.postgres
def test_batches_read_committed_whatever_the_server_default(postgres_url: str) -> None:
    url = postgres_url.replace(
        "options=-csearch_path",
        "options=-cdefault_transaction_isolation%3Dserializable%20-csearch_path",
    )
    store = PostgresStore(url)
    try:
        levels: list[str] = []

        def work(tx: Transaction) -> None:
            conn = getattr(tx, "conn")  # noqa: B009
            for setting in ("default_transaction_isolation", "transaction_isolation"):
                row = conn.execute(f"SHOW {setting}").fetchone()
                levels.append(row[0])
            tx.apply([])

        store.run_batch(["uanonymous_id\x1fa"], work)
        assert levels == ["serializable", "read committed"]
    finally:
        store.close()


def test_writes_that_fail_inside_the_pipeline_do_not_break_later_ones(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After errors among pipelined statements, psycopg can take a statement for prepared
    # that the server never kept, and every later batch on that connection failed with
    # `prepared statement "_pg3_9" does not exist`. The failing writes here: trait keys over
    # PostgreSQL's index entry size, let through the message check's own bound on purpose.
    monkeypatch.setattr(messages, "MAX_TRAIT_KEY_LENGTH", 10**6)
    engine = Engine(settings_from({"storage": {"url": postgres_url}}), tune_gc=False)
    long = "".join(chr(0x20000 + 7919 * k % 40000) for k in range(1000))  # 4,000 bytes
    try:
        for n, kind in enumerate("olooollllooooooo"):
            sent = msg("identify", userId=f"user-{n}", traits={long if kind == "l" else "k": 1})
            if kind == "l":
                with pytest.raises(StorageError, match="index row size"):
                    engine.ingest(sent)
            else:
                assert engine.ingest(sent).outcome == "created"
    finally:
        engine.close()


def test_a_stalled_writer_cannot_hold_its_locks_for_ever(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, stall_seconds=7)
    try:

        def settings(tx: Transaction) -> None:
            conn = getattr(tx, "conn")  # noqa: B009
            for name in (
                "idle_in_transaction_session_timeout",
                "statement_timeout",
                "lock_timeout",
            ):
                seen[name] = conn.execute(f"SHOW {name}").fetchone()[0]
            tx.apply([])

        seen: dict[str, str] = {}
        store.run_batch(["uanonymous_id\x1fa"], settings)
        assert seen == {
            "idle_in_transaction_session_timeout": "7s",
            "statement_timeout": "14s",
            "lock_timeout": "7s",
        }
    finally:
        store.close()


@pytest.mark.parametrize("after_seen", [False, True])
def test_a_writer_frozen_while_resolving_loses_its_transaction(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, after_seen: bool
) -> None:
    # What a stopped process looks like from the server: a transaction that holds locks and
    # goes quiet after `seen`, while the resolver works. PostgreSQL must end it.
    store = PostgresStore(postgres_url, stall_seconds=1)
    try:

        def frozen(tx: Transaction) -> None:
            if after_seen:
                tx.seen("web", ["m-frozen"])
            time.sleep(2.5)  # frozen with the locks of `open` (and `seen`) held
            tx.apply([])

        with pytest.raises(StorageError):
            store.run_batch(["uanonymous_id\x1ffrozen"], frozen)
        store.run_batch(["uanonymous_id\x1fafter"], lambda tx: tx.apply([]))  # a fresh one
    finally:
        store.close()


def _hold_like_a_frozen_writer(
    url: str, key: str, copying: bool
) -> tuple[psycopg.Connection[Any], list[Any]]:
    """A session that takes this store's locks as a writer does (the shared store lock, the
    key's lock) and then goes quiet: idle in its transaction, or inside a COPY waiting for data
    that never comes. No timeout of its own ends it. Returns the connection and the objects
    that must stay alive (a COPY object that is collected sends the server a COPY failure)."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    conn.execute("SET statement_timeout = 0")
    schema = conn.execute("SELECT current_schema()").fetchone()
    assert schema is not None
    locks = pg_batch.LockIds(schema[0])
    keep: list[Any] = []
    conn.execute("BEGIN")
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s::int, 0)", (locks.store,))
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s || %s, 0))", (locks.prefix, key))
    if copying:
        conn.execute("CREATE TEMP TABLE frozen (x int)")
        cursor = conn.cursor()
        copy = cursor.copy("COPY frozen FROM STDIN")
        copy.__enter__()  # the server now waits for COPY data
        keep += [cursor, copy]
    return conn, keep


@pytest.mark.parametrize("copying", [False, True], ids=["idle-in-transaction", "inside-copy"])
def test_a_writer_stalled_with_its_locks_is_ended_after_the_stall_bound(
    postgres_url: str, copying: bool
) -> None:
    """Another worker frozen mid-transaction (SIGSTOP, a GC pause, a lost host) must not stall
    this one for longer than `stall_seconds`; meanwhile this one's /healthz says it cannot write."""
    store = PostgresStore(postgres_url, stall_seconds=1)
    key = "uuser_id\x1fshared"
    frozen, _alive = _hold_like_a_frozen_writer(postgres_url, key, copying)
    frozen_pid = frozen.info.backend_pid
    try:
        health: list[bool] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                health.append(store.healthy())
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        store.run_batch([key], lambda tx: tx.apply([]))
        waited = time.monotonic() - started
        done.set()
        watcher.join(timeout=10)
        assert 0.9 <= waited < 8, waited
        assert store.fenced == 1
        assert False in health  # while it waited past half the stall bound
        assert store.healthy()  # and again once it wrote
        with psycopg.connect(postgres_url, autocommit=True) as other:
            ended = other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (frozen_pid,)
            ).fetchone()
        assert ended == (0,)  # its session was ended
    finally:
        with contextlib.suppress(Exception):
            frozen.close()
        store.close()


def test_a_healthy_writer_that_only_holds_a_lock_a_while_is_waited_for(postgres_url: str) -> None:
    """A session busy on the server (not waiting on its client) is never ended."""
    store = PostgresStore(postgres_url, stall_seconds=1)
    key = "uuser_id\x1fbusy"
    busy = psycopg.connect(postgres_url, autocommit=True)
    try:
        schema = busy.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        locks = pg_batch.LockIds(schema[0])

        def hold() -> None:
            with busy.transaction():
                busy.execute("SELECT pg_advisory_xact_lock_shared(%s::int, 0)", (locks.store,))
                busy.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s || %s, 0))",
                    (locks.prefix, key),
                )
                busy.execute("SELECT pg_sleep(2.5)")  # working, past the stall bound

        holder = threading.Thread(target=hold)
        holder.start()
        time.sleep(0.3)
        store.run_batch([key], lambda tx: tx.apply([]))
        holder.join(timeout=30)
        assert store.fenced == 0
        assert busy.execute("SELECT 1").fetchone() == (1,)
    finally:
        busy.close()
        store.close()

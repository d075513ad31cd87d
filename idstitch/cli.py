"""The command line: a thin layer over the library.

idstitch serve    the HTTP service (Tracking API in, Profile API out)
idstitch import   backfill Segment messages from JSON-lines files
idstitch profile  print profiles by any identifier or segment_id
idstitch migrate  apply the store's schema migrations
idstitch doctor   what the store holds, and the values that stopped linking profiles
idstitch export   the graph as Segment's Profiles Sync tables, for a warehouse
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from idstitch import __version__, checks, config
from idstitch.config import Settings
from idstitch.core.messages import format_time
from idstitch.errors import IdstitchError, InvalidReference, ProfileNotFound, StoreNotFound

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)

CONFIG_HELP = (
    "TOML config file. Default: ./idstitch-data/idstitch.toml if it exists, else the SQLite "
    "store ./idstitch-data/idstitch.db with the default identity rules."
)


def _fail(err: Exception, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def config_option(func: F) -> F:
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), default=None, help=CONFIG_HELP
    )(func)


def _settings(config_path: str | None) -> Settings:
    try:
        return config.load(config_path) if config_path else config.resolve(None)
    except IdstitchError as err:
        _fail(err)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idstitch")
def main() -> None:
    """idstitch stitches the identifiers in Segment messages (anonymous ids, user ids, e-mails,
    device ids, custom external ids) into one persistent profile per person.

    \b
    Quick start:
      idstitch serve                         # HTTP service on 127.0.0.1:8088
      idstitch import events.jsonl.gz        # backfill JSON-lines files or directories
      idstitch profile email:jane@example.com --json

    Without --config, data lives in ./idstitch-data/.
    """


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8088,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port to listen on.",
)
def serve(config_path: str | None, host: str, port: int) -> None:
    """Run the HTTP service: Segment's Tracking API (/v1/track, /v1/batch, ...) in and
    Segment's Profile API (/v1/spaces/...) out.

    Without --config and without ./idstitch-data/idstitch.toml, the first start writes that
    file with a random write key and access token and prints both once.
    """
    try:
        from idstitch.http.server import serve as run_server
    except ImportError as err:  # pragma: no cover - the HTTP layer ships with the package
        _fail(IdstitchError(f"the HTTP service cannot start: {err}"))
    try:
        run_server(config_path, host, port)
    except IdstitchError as err:
        _fail(err)
    except KeyboardInterrupt:
        # Ctrl-C: the server has drained its requests and closed the store by now. End by the
        # signal, as servers do (status 130 in a shell), not with click's "Aborted!".
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


@main.command("import")
@config_option
@click.option(
    "--source",
    default="import",
    show_default=True,
    help="Source id the messages are attributed to; its identity rules apply.",
)
@click.option(
    "--batch-size",
    default=5000,
    show_default=True,
    type=click.IntRange(1, 50000),
    help="Messages per durable commit.",
)
@click.option("--no-progress", is_flag=True, help="Do not draw a progress bar.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def import_(
    config_path: str | None, source: str, batch_size: int, no_progress: bool, paths: tuple[str, ...]
) -> None:
    """Backfill Segment messages from JSON-lines files (.gz too) or directories of them.

    Messages resolve exactly as live traffic does, in file order. An interrupted import
    resumes where it stopped when run again with the same paths and --source; messages
    already stored (same messageId and source) are skipped.

    Exit status 0 when every line was imported (or was already stored); 1 when some lines
    were invalid (they are skipped, the others imported) or a file is truncated or corrupt
    (the lines before the damage are imported, the other files too); 2 on bad configuration
    or a missing path; 130 when interrupted (what was imported stays; run it again to resume).
    """
    from idstitch.engine import Engine
    from idstitch.importer import find_files, import_paths

    problem = checks.source_id_problem(source)
    if problem is not None:
        _fail(IdstitchError(f"--source {source!r:.60} {problem}; pass a short printable id."))
    settings = _settings(config_path)
    try:
        files = find_files(list(paths))
        total = sum(f.stat().st_size for f in files)
        # Bulk: several batches per store transaction (each file's position in the same one).
        with Engine(settings, max_batch=4 * batch_size, tune_gc=True) as engine:
            if no_progress or not sys.stderr.isatty():
                summary = import_paths(engine, list(paths), source=source, batch_size=batch_size)
            else:
                bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=err_console,
                )
                with bar:
                    task = bar.add_task("importing", total=total)
                    done: dict[str, int] = {"base": 0, "last": 0}

                    def advance(position: int) -> None:
                        if position < done["last"]:  # a new file started
                            done["base"] += done["last"]
                        done["last"] = position
                        bar.update(task, completed=done["base"] + position)

                    def indexing(left: int) -> None:
                        bar.update(task, description=f"indexing ({left:,} messages left)")

                    summary = import_paths(
                        engine,
                        list(paths),
                        source=source,
                        batch_size=batch_size,
                        progress=advance,
                        indexing=indexing,
                    )
    except IdstitchError as err:
        _fail(err)
    except KeyboardInterrupt:
        # The engine has finished what it was given; each file's position is recorded.
        err_console.print(
            "interrupted: what was imported is stored; run the same command again to resume.",
            highlight=False,
        )
        sys.exit(130)
    table = Table(title="import summary", show_header=False)
    for label, value in (
        ("files", f"{summary.files:,}"),
        ("events", f"{summary.events:,}"),
        ("profiles created", f"{summary.created:,}"),
        ("merges", f"{summary.merges:,}"),
        ("violations", f"{summary.violations:,}"),
        ("duplicates skipped", f"{summary.duplicates:,}"),
        ("invalid lines", f"{summary.invalid:,}"),
        ("resumed past", f"{summary.skipped_bytes:,} bytes"),
        ("seconds", f"{summary.seconds:.2f}"),
        ("events/s", f"{summary.events_per_second:,.0f}"),
    ):
        table.add_row(label, value)
    Console().print(table)
    for line in summary.errors:
        err_console.print(f"[yellow]skipped[/] {escape(line)}", highlight=False, soft_wrap=True)
    if summary.invalid > len(summary.errors):
        more = summary.invalid - len(summary.errors)
        err_console.print(
            f"[yellow]skipped[/] {more:,} more invalid line{'' if more == 1 else 's'}"
            " (only the first ones are shown).",
            highlight=False,
        )
    problems = list(summary.damaged)
    if summary.invalid:
        were = "line was" if summary.invalid == 1 else "lines were"
        problems.append(f"{summary.invalid:,} {were} skipped as invalid (see above).")
    for problem in problems:
        err_console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    sys.exit(1 if problems else 0)


@main.command()
@config_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line and per REF (stable shape for scripts).",
)
@click.argument("refs", nargs=-1, required=True)
def profile(config_path: str | None, as_json: bool, refs: tuple[str, ...]) -> None:
    """Print profiles. REF is type:value (user_id:u1, email:jane@example.com,
    group_id:acme for an account) or a segment_id (use_... / acc_...).

    Exit status 0 when every REF was found, 1 when some were not.
    """
    from idstitch import profiles
    from idstitch.core.identifiers import parse_ref
    from idstitch.storage import Store, open_store

    settings = _settings(config_path)
    missing = 0
    store: Store | None = None
    try:
        store = open_store(settings.storage_url, read_only=True)
    except StoreNotFound as err:
        # Nothing was ever stored there: every REF is simply not found (said once, on stderr,
        # so that --json output stays one object per REF).
        err_console.print(f"note: {escape(str(err))}", highlight=False, soft_wrap=True)
    except IdstitchError as err:
        _fail(err)
    out = Console()
    try:
        for ref in refs:
            try:
                if store is None:
                    parse_ref(ref)  # a malformed REF is still an error
                    raise ProfileNotFound(ref)
                doc = profiles.document(store, ref)
                doc["refusals"] = _refusals(store, ref)
            except (ProfileNotFound, InvalidReference) as err:
                # A malformed REF finds nothing either: say why, and go on with the others.
                missing += 1
                if isinstance(err, InvalidReference):
                    err_console.print(f"note: {escape(str(err))}", highlight=False)
                if as_json:
                    click.echo(msgspec.json.encode({"ref": _as_text(ref), "error": "not_found"}))
                else:
                    err_console.print(f"not found: {ref}", highlight=False)
                continue
            if as_json:
                click.echo(msgspec.json.encode(doc))
            else:
                _print_profile(out, doc)
    except IdstitchError as err:
        _fail(err)
    finally:
        if store is not None:
            store.close()
    sys.exit(1 if missing else 0)


# Refusals `idstitch profile` shows per profile (newest first); the Profile API pages them all.
PROFILE_REFUSALS = 20


def _refusals(store: Any, ref: str) -> list[dict[str, Any]]:
    from idstitch import explain
    from idstitch.reads import ProfileReads

    reads = ProfileReads(store)
    row = reads.find(ref)
    return [explain.refusal(f, row) for f in explain.refusals(reads, row, PROFILE_REFUSALS)]


def _as_text(arg: str) -> str:
    """A command-line argument as JSON can carry it: bytes that are not UTF-8 come in as lone
    surrogates, shown as U+FFFD."""
    try:
        return arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return arg.encode("utf-8", "replace").decode()


def _print_profile(out: Console, doc: dict[str, Any]) -> None:
    meta = doc["metadata"]
    out.print(
        f"[bold]{doc['segment_id']}[/]  ({doc['collection']}, created {meta['created_at']},"
        f" {len(meta['merged_from'])} merged in)",
        highlight=False,
    )
    ids = Table("type", "id", "source", "created_at", title="external ids", title_justify="left")
    for e in doc["external_ids"]:
        ids.add_row(e["type"], e["id"], e["source_id"], e["created_at"])
    out.print(ids)
    if doc["traits"]:
        traits = Table("trait", "value", title="traits", title_justify="left")
        for key, value in doc["traits"].items():
            traits.add_row(key, msgspec.json.encode(value).decode())
        out.print(traits)
    for link in doc["links"]:
        names = ", ".join(f"{e['type']}:{e['id']}" for e in link["external_ids"])
        out.print(
            f"linked {link['to_collection']}: {link['segment_id']} ({names})", highlight=False
        )
    if doc["refusals"]:
        out.print(f"refusals, newest first (at most {PROFILE_REFUSALS}):")
        for r in doc["refusals"]:
            _print_refusal(out, r)
    out.print()


def _print_refusal(out: Console, r: dict[str, Any]) -> None:
    other = r["other_segment_id"]
    out.print(
        f"  {escape(r['type'])}:{escape(r['value'])}  {r['rule']}  "
        + (f"(would have joined {other}) " if other else "")
        + f"message {escape(r['message_id'])}, source {escape(r['source'])}, {r['timestamp']}",
        highlight=False,
        soft_wrap=True,
    )


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.argument("ref")
@click.argument("other")
def explain(config_path: str | None, as_json: bool, ref: str, other: str) -> None:
    """Why REF and OTHER are one profile (the shortest chain of messages that joined them),
    or why not (the refusals between their two profiles). Each is type:value or a
    segment_id. Reads only: safe beside a running service.

    Exit status 0 when both were found, 1 when one was not.
    """
    from idstitch import explain as explaining
    from idstitch.reads import ProfileReads
    from idstitch.storage import open_store

    settings = _settings(config_path)
    try:
        store = open_store(settings.storage_url, read_only=True)
    except StoreNotFound as err:
        err_console.print(f"not found: {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except IdstitchError as err:
        _fail(err)
    try:
        answer = explaining.explain(ProfileReads(store), ref, other)
    except (ProfileNotFound, InvalidReference) as err:
        err_console.print(f"not found: {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except IdstitchError as err:
        _fail(err)
    finally:
        store.close()
    if as_json:
        click.echo(msgspec.json.encode(answer))
        return
    _print_explanation(Console(), ref, other, answer)


def _print_explanation(out: Console, ref: str, other: str, answer: dict[str, Any]) -> None:
    a, b = escape(_as_text(ref)), escape(_as_text(other))
    if answer["together"]:
        out.print(
            f"{a} and {b} are one profile, {answer['segment_ids'][0]}",
            highlight=False,
            soft_wrap=True,
        )
        if answer["path"]:
            out.print(f"joined by {len(answer['path'])} message(s):")
        for n, step in enumerate(answer["path"], 1):
            out.print(
                f"  {n}. {escape(step['from'])} -> {escape(step['to'])}  {step['kind']}  "
                f"message {escape(step['message_id'])} ({step['message_type']}), source "
                f"{escape(step['source'])}, {step['timestamp']}",
                highlight=False,
                soft_wrap=True,
            )
    else:
        first, second = answer["segment_ids"]
        out.print(
            f"{a} ({first}) and {b} ({second}) are two profiles", highlight=False, soft_wrap=True
        )
        if answer["refusals"]:
            out.print("kept apart by:")
            for r in answer["refusals"]:
                _print_refusal(out, r)
        else:
            out.print("no message ever tried to join them")
    if not answer["complete"]:
        out.print(
            "note: the profile has more messages or refusals than one answer reads; "
            "this answer may be incomplete"
        )


@main.command()
@config_option
@click.option(
    "--identifier",
    "identifier",
    required=True,
    help="The junk identifier, type:value (e.g. anonymous_id:kiosk-7).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.argument("ref")
def unmerge(config_path: str | None, identifier: str, as_json: bool, ref: str) -> None:
    """Split the profile REF by an identifier that is junk for it (a kiosk's cookie, a shared
    inbox). Its messages are resolved again under the current rules with the identifier
    blocked, and it becomes the parts they form; the part holding its oldest message keeps
    its segment_id. The identifier goes on the stored block list, so no later message joins
    the parts again through it. REF is type:value or a segment_id.

    It writes to the store: with SQLite, stop `idstitch serve` first (or call
    POST .../profiles/{ref}/unmerge on the running service).
    """
    import getpass

    from idstitch.engine import Engine

    settings = _settings(config_path)
    try:
        with Engine(settings) as engine:
            answer = engine.unmerge(ref, identifier, actor=f"cli:{getpass.getuser()}")
    except (ProfileNotFound, InvalidReference) as err:
        _fail(err, 1)
    except IdstitchError as err:
        _fail(err)
    if as_json:
        click.echo(msgspec.json.encode(answer))
        return
    out = Console()
    parts = answer["parts"]
    blocked = answer["blocked"]
    out.print(
        f"{answer['segment_id']} split by {escape(blocked['type'])}:{escape(blocked['id'])} "
        f"into {len(parts)} part(s); the identifier is blocked from now on",
        highlight=False,
        soft_wrap=True,
    )
    for part in parts:
        names = ", ".join(f"{i['type']}:{i['id']}" for i in part["external_ids"])
        out.print(f"  {part['segment_id']}  {escape(names)}", highlight=False, soft_wrap=True)


@main.command()
@config_option
@click.option(
    "--dry-run",
    "dry_run",
    is_flag=True,
    help="Change nothing: report what resolving the history again under the config would do.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def rebuild(config_path: str | None, dry_run: bool, as_json: bool) -> None:
    """Resolve the stored message history again, in its original order, under the rules of
    --config (a changed copy of the store's config), and report what changes: profiles before
    and after, how many stay the same, split or merge, and the 20 largest changes.

    --dry-run reads the store (safe beside a running service) and changes nothing. Without
    it, the new graph is built beside the old one and swapped in at the end (a crash before
    leaves the old one), segment_ids keep resolving, and the config's rules become the
    store's. With SQLite, stop `idstitch serve` first; PostgreSQL workers may go on.
    """
    import getpass

    from idstitch import rebuild as rebuilding
    from idstitch.storage import open_store

    settings = _settings(config_path)
    try:
        if dry_run:
            store = open_store(settings.storage_url, read_only=True)
            try:
                answer = rebuilding.report(store, settings.rules)
            finally:
                store.close()
        elif as_json or not sys.stderr.isatty():
            answer = rebuilding.run(settings, actor=f"cli:{getpass.getuser()}", tune_gc=True)
        else:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            peek = open_store(settings.storage_url, read_only=True)
            try:
                stored = peek.stats().events
            finally:
                peek.close()
            with bar:
                task = bar.add_task("resolving the history again", total=stored)

                def copied(count: int) -> None:
                    bar.update(task, completed=count)

                answer = rebuilding.run(
                    settings, actor=f"cli:{getpass.getuser()}", tune_gc=True, progress=copied
                )
    except StoreNotFound as err:
        _fail(err, 1)
    except IdstitchError as err:
        _fail(err)
    if as_json:
        click.echo(msgspec.json.encode(answer))
        return
    out = Console()
    done = "dry run: nothing changed" if dry_run else "the new graph is in place"
    out.print(
        f"resolved {answer['messages']:,} messages again in {answer['seconds']:.1f} s ({done})",
        highlight=False,
    )
    out.print(
        f"profiles {answer['profiles_before']:,} -> {answer['profiles_after']:,}: "
        f"{answer['unchanged']:,} unchanged, {answer['split']:,} split, "
        f"{answer['merged']:,} merged, {answer['changed']:,} gained or lost identifiers",
        highlight=False,
        soft_wrap=True,
    )
    if not dry_run:
        out.print(
            f"{answer['kept_segment_ids']:,} old segment_id(s) now resolve to the profile "
            f"holding the message that made them; {answer['deletions_applied']:,} deletion(s) "
            "applied again",
            highlight=False,
            soft_wrap=True,
        )
    for change in answer["largest"]:
        before, after = ", ".join(change["before"]), ", ".join(change["after"]) or "-"
        moved = ", ".join(change["moved"])
        out.print(
            f"  {change['kind']}: {before} -> {after}  "
            f"{change['identifiers_moved']} identifier(s) moved: {escape(moved)}",
            highlight=False,
            soft_wrap=True,
        )


@main.command()
@config_option
def migrate(config_path: str | None) -> None:
    """Apply the store's schema migrations (also done automatically on start)."""
    from idstitch.storage import open_store

    settings = _settings(config_path)
    try:
        store = open_store(settings.storage_url)
    except IdstitchError as err:
        _fail(err)
    applied: list[str] = list(getattr(store, "migrations_applied", []))
    store.close()
    if applied:
        click.echo("applied: " + ", ".join(applied))
    else:
        click.echo("the schema is up to date")


# The idstitch preset's rules that stop a value from linking (docs/resolution.md, Presets).
STOPPED_RULES = ("shared_device", "generic_identifier")


@main.command()
@config_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per likely junk identifier and per line: type, value, count.",
)
@click.option(
    "--min-profiles",
    default=3,
    show_default=True,
    type=click.IntRange(2, 1_000_000),
    help="List identifiers kept from joining at least this many profiles.",
)
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="Values listed."
)
def doctor(config_path: str | None, as_json: bool, min_profiles: int, limit: int) -> None:
    """Likely junk identifiers: values that messages of many distinct profiles (many known
    users) carried while a rule refused them or kept them from joining (a kiosk's cookie, a
    placeholder e-mail, a shared tablet), with the blocked_values lines that would block
    them; and what the store holds and the rules in force. Reads only: safe beside a
    running service."""
    from idstitch.storage import open_store
    from idstitch.store_rules import rules_drift

    settings = _settings(config_path)
    rules = settings.rules
    report: dict[str, Any] = {
        "storage": checks.redact_url(settings.storage_url),
        "preset": rules.preset,
        "generic_after": rules.generic_after,
        "warnings": [
            f"[identity.sources.{sid}] matches no [[sources]] entry: over HTTP it never applies"
            for sid in settings.unmatched_source_rules()
        ],
        "stats": None,
        "junk": [],
        "blocked": [],
    }
    try:
        store = open_store(settings.storage_url, read_only=True)
    except StoreNotFound as err:
        report["warnings"].append(str(err))
    except IdstitchError as err:
        _fail(err)
    else:
        try:
            report["stats"] = msgspec.structs.asdict(store.stats())
            drift = rules_drift(store, rules)
            if drift is not None:
                report["warnings"].append(drift)
            report["blocked"] = [msgspec.structs.asdict(b) for b in store.blocked_identifiers()]
            report["junk"] = [
                {
                    "type": v.type,
                    "value": v.value,
                    "count": v.profiles,
                    "collection": v.collection,
                    "rules": v.rules,
                    "stopped_linking": any(r in STOPPED_RULES for r in v.rules),
                }
                for v in store.shared_values(2, 10_000)
                # Those the rules already stopped are listed however few profiles they met.
                if v.profiles >= min_profiles or any(r in STOPPED_RULES for r in v.rules)
            ][:limit]
        except IdstitchError as err:
            _fail(err)
        finally:
            store.close()
    if as_json:
        for warning in report["warnings"]:
            err_console.print(f"warning: {escape(warning)}", highlight=False, soft_wrap=True)
        for item in report["junk"]:
            click.echo(msgspec.json.encode(item))
        return
    _print_doctor(Console(), report, min_profiles)


def blocking_toml(junk: list[dict[str, Any]]) -> list[str]:
    """The config lines that would block `junk` (type -> values), ready to paste."""
    by_type: dict[str, list[str]] = {}
    for item in junk:
        by_type.setdefault(item["type"], []).append(item["value"])
    lines = ["[identity.blocked_values_by_type]"]
    for type_, values in sorted(by_type.items()):
        quoted = ", ".join(msgspec.json.encode(v).decode() for v in values)
        lines.append(f"{msgspec.json.encode(type_).decode()} = [{quoted}]")
    return lines


def _print_doctor(out: Console, report: dict[str, Any], min_profiles: int) -> None:
    out.print(f"store    {escape(report['storage'])}", highlight=False, soft_wrap=True)
    stats = report["stats"]
    if stats is not None:
        out.print("holds    " + ", ".join(f"{n:,} {name}" for name, n in stats.items()))
    out.print(
        f"rules    preset {report['preset']!r}"
        + (f", generic_after {report['generic_after']}" if report["preset"] == "idstitch" else ""),
        highlight=False,
    )
    junk = report["junk"]
    if junk:
        # Plain lines, not a table: identifiers are long, and a pipe is 80 columns wide.
        out.print(
            f"likely junk identifiers, kept from joining {min_profiles} or more profiles "
            f"({len(junk)}):"
        )
        for v in junk:
            out.print(
                f"  {escape(v['type'])}:{escape(v['value'])}  {v['count']} profiles  "
                + ", ".join(v["rules"])
                + ("  (stopped linking)" if v["stopped_linking"] else ""),
                highlight=False,
                soft_wrap=True,
            )
        out.print("to block them, add to the config (merge with a table you already have):")
        for line in blocking_toml(junk):
            out.print("  " + escape(line), highlight=False, soft_wrap=True)
    else:
        out.print(f"no identifier was kept from joining {min_profiles} or more profiles")
    if report["blocked"]:
        out.print(f"stored block list, from unmerges ({len(report['blocked'])}):")
        for b in report["blocked"]:
            out.print(
                f"  {escape(b['type'])}:{escape(b['value'])}  unmerged from {b['segment_id']} "
                f"by {escape(b['actor'] or '?')}, {format_time(b['created_at'])}",
                highlight=False,
                soft_wrap=True,
            )
    for warning in report["warnings"]:
        err_console.print(f"warning: {escape(warning)}", highlight=False, soft_wrap=True)


@main.command("export")
@config_option
@click.option(
    "--format",
    "fmt",
    default="parquet",
    show_default=True,
    metavar="parquet|csv|jsonl",
    help="File format. Parquet needs the export extra: pip install 'idstitch[export]'.",
)
@click.option(
    "--since",
    default="0",
    metavar="SEQ",
    help="Write only the changes of messages past SEQ to the append-only tables: the "
    "last_seq of an earlier export's manifest. The materialized tables are always whole.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as one JSON object.")
@click.argument("directory", metavar="DIR")
def export_(config_path: str | None, fmt: str, since: str, as_json: bool, directory: str) -> None:
    """Write the identity graph to DIR as Segment's Profiles Sync tables, for a warehouse:
    id_graph_updates, external_id_mapping_updates and profile_traits_updates (append-only:
    a row per change, at the seq of the message that made it) and profile_merges,
    user_identifiers and user_traits (the state now). DIR is created when missing; files
    of an earlier run there are replaced.

    DIR/_idstitch_export.json, the manifest, records the last seq the run covered: pass it
    as --since to the next run. Reads only: safe beside a running service.

    Exit status 0 when written, 1 when there is no store yet, 2 on bad input.
    """
    from idstitch import export as exporting
    from idstitch.storage import open_store

    try:
        after = exporting.parse_since(since)
        chosen = exporting.check_format(fmt)
        exporting.check_writer(chosen)
    except IdstitchError as err:
        _fail(err)
    settings = _settings(config_path)
    try:
        store = open_store(settings.storage_url, read_only=True)
    except StoreNotFound as err:
        _fail(err, 1)
    except IdstitchError as err:
        _fail(err)
    try:
        manifest = exporting.export(store, directory, chosen, after)
    except IdstitchError as err:
        _fail(err)
    finally:
        store.close()
    if as_json:
        click.echo(msgspec.json.encode(manifest))
        return
    _print_export(Console(), directory, manifest)


def _print_export(out: Console, directory: str, manifest: dict[str, Any]) -> None:
    from pathlib import Path

    from idstitch.export import MANIFEST

    last, since = manifest["last_seq"], manifest["since"]
    which = f"the changes past seq {since:,}" if since else "every change"
    out.print(
        f"exported {which} up to seq {last:,} and the state now, as {manifest['format']}, "
        f"in {manifest['seconds']:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
    # Plain lines, not a table: a pipe is 80 columns wide.
    for t in manifest["tables"].values():
        out.print(f"  {t['file']:<36} {t['kind']:<12} {t['rows']:>12,} rows", highlight=False)
    if manifest["repairs_waiting"]:
        out.print(
            f"{manifest['repairs_waiting']} repair(s) made after the last message stored: "
            "their REMOVED rows go out with the first run after a later message",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"manifest {escape(str(Path(directory) / MANIFEST))}; next time: --since {last}",
        highlight=False,
        soft_wrap=True,
    )

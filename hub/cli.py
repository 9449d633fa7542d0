"""The ``hub`` command. Every listing also as ``--json`` (on stdout; logs go to stderr)."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson

from hub.config import LoadedConfig, load_config
from hub.connectors import Incoming
from hub.errors import ConfigError, HubError, InvoiceInvalid
from hub.logging import configure_logging
from hub.plugins import HubPlugins, build_plugins

DEFAULT_CONFIG = "hub.yaml"


# ---------------------------------------------------------------------------------------------------
# Shared state and output
# ---------------------------------------------------------------------------------------------------
class State:
    def __init__(self, config_path: str, plugins: HubPlugins | None) -> None:
        self.config_path = config_path
        self._plugins = plugins
        self._loaded: LoadedConfig | None = None
        self._hub: Any = None

    @property
    def loaded(self) -> LoadedConfig:
        if self._loaded is None:
            self._loaded = load_config(self.config_path)
        return self._loaded

    @property
    def plugins(self) -> HubPlugins:
        if self._plugins is None:
            cfg = self.loaded.config.plugins
            self._plugins = build_plugins(blocked=cfg.disabled, allowed=cfg.allow)
        return self._plugins

    def hub(self) -> Any:
        if self._hub is None:
            from hub.engine import Hub

            self._hub = Hub(self.loaded, plugins=self.plugins)
        return self._hub

    def close(self) -> None:
        if self._hub is not None:
            self._hub.close()


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


def emit_json(value: Any) -> None:
    click.echo(
        orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    )


def actor_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get("HUB_ACTOR") or getpass.getuser()


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    default=lambda: os.environ.get("HUB_CONFIG", DEFAULT_CONFIG),
    show_default="hub.yaml or $HUB_CONFIG",
    help="The hub.yaml to use.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.pass_context
def cli(ctx: click.Context, config_path: str, log_level: str | None) -> None:
    """invoice-hub: every invoice to every system that should have it, exactly once in effect."""
    state: State = ctx.ensure_object(State) if ctx.obj is None else ctx.obj
    state.config_path = config_path
    level, fmt = log_level or "warning", "auto"
    try:
        logging_cfg = state.loaded.config.logging
        level, fmt = log_level or logging_cfg.level, logging_cfg.format
    except HubError:
        pass  # commands that need the config report the error themselves, with its location
    configure_logging(level, fmt)
    ctx.call_on_close(state.close)


# ---------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------
def _progress_printer(quiet: bool) -> Callable[[dict[str, Any]], None]:
    tty = sys.stderr.isatty()
    last = {"line": ""}

    def show(snap: dict[str, Any]) -> None:
        if quiet:
            return
        line = (
            f"[{snap['elapsed']:>7.1f}s] received {snap['received']} (duplicates {snap['duplicates']}, "
            f"dead at intake {snap['intake_dead_letters']}) · delivered {snap['delivered']} · skipped "
            f"{snap['skipped']} · retrying {snap['retried']} · dead {snap['dead']} · open {snap['open']}"
        )
        if line == last["line"]:
            return
        last["line"] = line
        if tty:
            click.echo("\r" + line, nl=False, err=True)
        else:
            click.echo(line, err=True)

    return show


def _serve_http_next_to_run(ctx: click.Context, _param: click.Parameter, port: int | None) -> None:
    """``hub run --http PORT``: the HTTP API, metrics and console next to the run loop, on the same hub;
    the server stops when the run stops."""
    if port is not None and not ctx.resilient_parsing:
        from hub.http import serve_in_thread

        serve_in_thread(ctx.ensure_object(State).hub(), port=port)


@cli.command()
@click.option("--until-idle", is_flag=True, help="Exit when every source is read and nothing is pending.")
@click.option(
    "--http",
    type=int,
    expose_value=False,
    callback=_serve_http_next_to_run,
    help="Also serve the HTTP API, metrics and console on this port.",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option(
    "--workers",
    "processes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Worker processes (a bus they share: filesystem:// on one machine, or RabbitMQ; see "
    "docs/scaling-out.md). 0: threads in this one.",
)
@json_option
@click.pass_obj
def run(state: State, until_idle: bool, quiet: bool, processes: int, as_json: bool) -> None:
    """Run sources, workers and the outbox relay. SIGINT/SIGTERM finish in-flight work and exit."""
    hub = state.hub()

    def on_signal(signum: int, _frame: Any) -> None:
        click.echo(f"\n{signal.Signals(signum).name}: finishing in-flight deliveries...", err=True)
        hub.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if processes:
        from hub.supervisor import Supervisor

        supervisor = Supervisor(state.config_path, processes, data_dir=hub.data_dir)
        summary = supervisor.run(hub, until_idle=until_idle, progress=_progress_printer(quiet or as_json))
    else:
        summary = hub.run(until_idle=until_idle, progress=_progress_printer(quiet or as_json))
    if sys.stderr.isatty() and not (quiet or as_json):
        click.echo("", err=True)
    from hub import ops

    letters = ops.dlq_list(hub.ledger, group_by="error")
    summary["dead_letter_groups"] = letters
    summary["status"] = ops.status(hub.ledger)
    if as_json:
        emit_json(summary)
        return
    st = summary["status"]
    new = summary["received"] - summary["duplicates"] - summary["amendments"]
    click.echo(
        f"done in {summary['elapsed']}s: {summary['received']} invoice(s) received — {new} new, "
        f"{summary['duplicates']} duplicate(s) skipped, {summary['amendments']} amendment(s) "
        f"(handled by each route's on_amendment policy); {summary['delivered']} delivered, "
        f"{summary['dead']} delivery dead letter(s), "
        f"{summary['intake_dead_letters']} document(s) or invoice(s) dead at intake."
    )
    click.echo(
        f"ledger: {st['invoices']['identities']} invoice(s) in {st['invoices']['versions']} version(s); "
        f"deliveries {', '.join(f'{k} {v}' for k, v in sorted(st['deliveries'].items())) or 'none'}; "
        f"open dead letters {st['dead_letters']['open']}."
    )
    for g in letters:
        click.echo(
            f"  dead letters: {g['destination']}, {g['error']}, {g['count']} letter(s) "
            f"(ids {', '.join(map(str, g['ids'][:10]))}{'...' if len(g['ids']) > 10 else ''})"
        )
    if letters:
        click.echo(
            "see `hub dlq list` and `hub dlq show ID`; fix with `hub dlq edit ID`, "
            "retry with `hub dlq replay`."
        )
    if summary["source_errors"]:
        for err in summary["source_errors"]:
            click.echo(f"  source error: {err}", err=True)


# ---------------------------------------------------------------------------------------------------
# check, status, plugins
# ---------------------------------------------------------------------------------------------------
@cli.command()
@json_option
@click.pass_obj
def check(state: State, as_json: bool) -> None:
    """Validate hub.yaml and ask every connector, the ledger and the bus for their health."""
    result: dict[str, Any] = {"config": str(state.config_path), "ok": True, "connectors": {}, "errors": []}
    try:
        hub = state.hub()
    except HubError as exc:
        result["ok"] = False
        result["errors"] = exc.context.get("errors") or [str(exc)]
        if as_json:
            emit_json(result)
        else:
            click.echo("hub.yaml has problems:", err=True)
            for e in result["errors"]:
                click.echo(f"  {e}", err=True)
        sys.exit(1)
    result["ledger"] = {"url": hub.ledger.safe_url, "schema_version": hub.ledger.schema_version()}
    try:
        hub.bus.declare(hub.destinations())
        result["bus"] = {"url": hub.bus.safe_url, "ok": True}
    except Exception as exc:
        result["bus"] = {"url": hub.bus.safe_url, "ok": False, "detail": str(exc)}
        result["ok"] = False
    for name, conn in hub.connectors.items():
        try:
            health = conn.health()
            entry = {
                "type": conn.type_name,
                "roles": sorted(conn.roles()),
                "ok": health.ok,
                "detail": health.detail,
            }
        except Exception as exc:
            entry = {
                "type": conn.type_name,
                "roles": sorted(conn.roles()),
                "ok": False,
                "detail": f"health check raised {type(exc).__name__}: {exc}",
            }
        result["connectors"][name] = entry
        result["ok"] &= entry["ok"]
    result["plugin_failures"] = [
        {"name": f.name, "error": f.error.splitlines()[0]} for f in hub.plugins.failures if f.error
    ]
    if as_json:
        emit_json(result)
    else:
        click.echo(f"config {state.config_path}: valid")
        click.echo(f"ledger {result['ledger']['url']}: schema version {result['ledger']['schema_version']}")
        click.echo(f"bus {result['bus']['url']}: {'ok' if result['bus']['ok'] else result['bus']['detail']}")
        for name, entry in result["connectors"].items():
            mark = "ok  " if entry["ok"] else "FAIL"
            click.echo(
                f"  {mark} {name} ({entry['type']}; {', '.join(entry['roles']) or 'no roles'}): "
                f"{entry['detail']}"
            )
        for f in result["plugin_failures"]:
            click.echo(f"  plugin {f['name']} not loaded: {f['error']}")
    if not result["ok"]:
        sys.exit(1)


@cli.command()
@json_option
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Deliveries by state and destination, and the dead-letter total."""
    from hub import ops
    from hub.ledger import Ledger

    ledger = Ledger(state.loaded.config.ledger)
    try:
        st = ops.status(ledger)
    finally:
        ledger.close()
    if as_json:
        emit_json(st)
        return
    click.echo(
        f"invoices: {st['invoices']['identities']} identities, {st['invoices']['versions']} versions; "
        f"documents: {st['documents']}"
    )
    click.echo(
        "deliveries: " + (", ".join(f"{k} {v}" for k, v in sorted(st["deliveries"].items())) or "none")
    )
    for dest, states in sorted(st["destinations"].items()):
        click.echo(f"  {dest}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    dl = st["dead_letters"]
    click.echo(f"dead letters: {dl['open']} open, {dl['replayed']} replayed, {dl['discarded']} discarded")


@cli.command()
@json_option
@click.pass_obj
def plugins(state: State, as_json: bool) -> None:
    """Plugins, versions, hooks and connector types — and plugins that failed to load, with why."""
    pl = state.plugins
    rows: list[dict[str, Any]] = [
        {
            "name": i.name,
            "distribution": i.distribution,
            "version": i.version,
            "hooks": i.hooks,
            "connector_types": i.connector_types,
            "parsers": i.parsers,
            "ok": True,
        }
        for i in pl.infos.values()
    ] + [
        {
            "name": f.name,
            "distribution": f.distribution,
            "version": f.version,
            "hooks": [],
            "connector_types": [],
            "parsers": [],
            "ok": False,
            "error": f.error,
        }
        for f in pl.failures
    ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "in-process"
        if r["ok"]:
            what = ", ".join(r["connector_types"] + [f"parser {p}" for p in r["parsers"]]) or ", ".join(
                r["hooks"]
            )
            click.echo(f"  {r['name']:<18} {dist:<24} {what}")
        else:
            click.echo(f"  {r['name']:<18} {dist:<24} FAILED: {r['error'].splitlines()[0]}")


# ---------------------------------------------------------------------------------------------------
# ingest, trace
# ---------------------------------------------------------------------------------------------------
@cli.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--source",
    default="manual",
    show_default=True,
    help="Source name the documents are recorded under (routes from that connector apply).",
)
@json_option
@click.pass_obj
def ingest(state: State, files: tuple[Path, ...], source: str, as_json: bool) -> None:
    """Push documents in by hand. Their deliveries are sent by `hub run`."""
    from hub.models import Document

    try:
        from invoice_hub_plugins.files import guess_media_type  # the files plugin knows extensions best
    except ImportError:

        def guess_media_type(name: str) -> str:
            return "application/octet-stream"

    hub = state.hub()
    items = [
        Incoming(
            documents=[
                Document(
                    content=p.read_bytes(),
                    media_type=guess_media_type(p.name),
                    filename=p.name,
                    source=source,
                    origin=str(p),
                )
            ],
            key=str(p),
        )
        for p in files
    ]
    outcomes = hub.ingest(items, source)
    rows = [
        {
            "file": str(p),
            "accepted": o.accepted,
            "duplicates": o.duplicates,
            "dead_letters": o.dead_letters,
            "identities": o.identities,
        }
        for p, o in zip(files, outcomes, strict=True)
    ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['file']}: {r['accepted']} invoice(s) ({', '.join(r['identities']) or '-'}), "
            f"{r['duplicates']} duplicate(s), {r['dead_letters']} dead letter(s)"
        )
    click.echo(f"{hub.open_deliveries()} deliveries open; `hub run --until-idle` sends them.")


@cli.command()
@click.argument("query")
@json_option
@click.pass_obj
def trace(state: State, query: str, as_json: bool) -> None:
    """The whole story of an invoice: QUERY is an invoice number, an identity or a content hash."""
    from hub import ops
    from hub.ledger import Ledger

    ledger = Ledger(state.loaded.config.ledger)
    try:
        story = ops.trace(ledger, query)
    finally:
        ledger.close()
    if as_json:
        emit_json(story)
        return
    click.echo(f"{query}: {', '.join(story['identities'])}")
    for entry in story["timeline"]:
        click.echo(
            f"  {_fmt_time(entry['at'])}  {entry['what']}"
            + (f" — {entry['detail']}" if entry["detail"] else "")
        )
    for d in story["deliveries"]:
        click.echo(
            f"  now: delivery {d['id']} → {d['destination']}: {d['state']}"
            + (f" (remote {d['remote_ref']})" if d["remote_ref"] else "")
            + (f" [{d['last_error']}]" if d["last_error"] and d["state"] != "delivered" else "")
        )


# ---------------------------------------------------------------------------------------------------
# dlq
# ---------------------------------------------------------------------------------------------------
@cli.group()
def dlq() -> None:
    """Inspect, fix, replay and discard dead letters."""


def _filters(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--destination", help="Only letters for this destination connector.")(f)
    f = click.option("--error", help="Error class (e.g. TransientError) or text in the message.")(f)
    f = click.option("--since", help="Created since: a date, a date-time or an age (30m, 6h, 2d).")(f)
    return f


@dlq.command("list")
@_filters
@click.option(
    "--state",
    "letter_state",
    default="open",
    show_default=True,
    type=click.Choice(["open", "replayed", "discarded", "all"]),
)
@click.option(
    "--group-by", type=click.Choice(["error", "destination"]), help="Show incidents instead of letters."
)
@json_option
@click.pass_obj
def dlq_list(
    state: State,
    destination: str | None,
    error: str | None,
    since: str | None,
    letter_state: str,
    group_by: str | None,
    as_json: bool,
) -> None:
    """List dead letters, or incidents with --group-by."""
    from hub import ops
    from hub.ledger import Ledger

    ledger = Ledger(state.loaded.config.ledger)
    try:
        rows = ops.dlq_list(
            ledger,
            destination=destination,
            error=error,
            since=ops.parse_since(since),
            state=letter_state,
            group_by=group_by,
        )
    finally:
        ledger.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no dead letters match")
        return
    if group_by:
        for g in rows:
            click.echo(
                f"{g['destination']}, {g['error']}, {g['count']} letter(s), "
                f"{g['first'].strftime('%H:%M')}–{g['last'].strftime('%H:%M')} ({_fmt_time(g['first'])[:10]})"
            )
        return
    for r in rows:
        where = r["destination"] or f"intake from {r['source']}"
        click.echo(
            f"{r['id']:>6}  {_fmt_time(r['created_at'])}  {where:<20} {r['identity'] or '-':<40} "
            f"{r['error_class']}: {r['message'][:160]}"
        )


@dlq.command("show")
@click.argument("letter_id", type=int)
@json_option
@click.pass_obj
def dlq_show(state: State, letter_id: int, as_json: bool) -> None:
    """Everything about one dead letter: the error, every attempt, what the destination answered."""
    from hub import ops
    from hub.ledger import Ledger

    ledger = Ledger(state.loaded.config.ledger)
    try:
        shown = ops.dlq_show(ledger, letter_id)
    finally:
        ledger.close()
    if as_json:
        emit_json(shown)
        return
    click.echo(f"dead letter {shown['id']} ({shown['stage']}, {shown['state']})")
    click.echo(f"  identity:    {shown['identity'] or '-'}")
    click.echo(f"  destination: {shown['destination'] or '-'}   source: {shown['source']}")
    click.echo(f"  error:       {shown['error_class']}: {shown['message']}")
    for key, value in (shown["detail"] or {}).items():
        if key == "problems":
            for p in value:
                click.echo(f"    problem: {p['path']}: {p['message']}")
        else:
            click.echo(f"  {key}: {value}")
    if shown["document"]:
        doc = shown["document"]
        click.echo(
            f"  document:    {doc['filename']} ({doc['media_type']}, {doc['size']} bytes, "
            f"sha256 {doc['sha256']})"
        )
    for a in shown["attempt_history"]:
        click.echo(
            f"  attempt {a['number']} {_fmt_time(a['finished_at'])}: {a['outcome']}"
            + (f" {a['error_class']}: {a['error_message']}" if a["error_class"] else "")
            + (f" HTTP {a['remote_status']}" if a["remote_status"] else "")
        )
    if shown["traceback"]:
        click.echo("  traceback (last lines):")
        for line in shown["traceback"].strip().splitlines()[-6:]:
            click.echo(f"    {line}")


@dlq.command("replay")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every open letter that matches the filters.")
@_filters
@click.option("--dry-run", is_flag=True, help="List what would be sent, send nothing.")
@click.option("--force", is_flag=True, help="Re-send even to a destination that acknowledged this content.")
@click.option("--reason", help="Why (recorded in the audit log; required with --force).")
@click.option("--actor", help="Who (default: $HUB_ACTOR or the login name).")
@json_option
@click.pass_obj
def dlq_replay(
    state: State,
    ids: tuple[int, ...],
    all_: bool,
    destination: str | None,
    error: str | None,
    since: str | None,
    dry_run: bool,
    force: bool,
    reason: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Replay dead letters by id, or --all with the same filters as `dlq list`."""
    from hub import ops

    if not ids and not all_:
        raise click.UsageError("give dead letter ids, or --all (with filters)")
    hub = state.hub()
    chosen = ops.select_letters(
        hub.ledger, ids, destination=destination, error=error, since=ops.parse_since(since), state="open"
    )
    results = ops.dlq_replay(
        hub, chosen, actor=actor_name(actor), force=force, reason=reason, dry_run=dry_run
    )
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    for r in results:
        click.echo(f"{r.letter_id}: {r.action} {r.detail}")
    if not dry_run and any(r.action == "replayed" for r in results):
        click.echo("replayed deliveries are sent by `hub run` (or now, if one is running).")


@dlq.command("discard")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.option("--actor", help="Who (default: $HUB_ACTOR or the login name).")
@json_option
@click.pass_obj
def dlq_discard(state: State, ids: tuple[int, ...], reason: str, actor: str | None, as_json: bool) -> None:
    """Give up on dead letters, on the record."""
    from hub import ops
    from hub.ledger import Ledger

    ledger = Ledger(state.loaded.config.ledger)
    try:
        results = ops.dlq_discard(ledger, ids, actor=actor_name(actor), reason=reason)
    finally:
        ledger.close()
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    for r in results:
        click.echo(f"{r.letter_id}: {r.action} {r.detail}")


@dlq.command("edit")
@click.argument("letter_id", type=int)
@click.option(
    "--file",
    "from_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Take the corrected invoice JSON from this file instead of opening $EDITOR.",
)
@click.option("--reason", help="Why (recorded in the audit log).")
@click.option("--actor", help="Who (default: $HUB_ACTOR or the login name).")
@json_option
@click.pass_obj
def dlq_edit(
    state: State, letter_id: int, from_file: Path | None, reason: str | None, actor: str | None, as_json: bool
) -> None:
    """Open the letter's invoice JSON in $EDITOR, validate the edit, record it and replay it."""
    from hub import ops

    hub = state.hub()
    template = ops.edit_template(hub.ledger, letter_id)
    text = orjson.dumps(template, option=orjson.OPT_INDENT_2).decode()
    while True:
        if from_file is not None:
            edited_text = from_file.read_text(encoding="utf-8")
        else:
            edited_text = _edit_in_editor(text)
            if edited_text.strip() == text.strip():
                click.echo("no change; nothing replayed", err=True)
                sys.exit(1)
        try:
            data = orjson.loads(edited_text)
        except orjson.JSONDecodeError as exc:
            problems = [f"not valid JSON: {exc}"]
        else:
            invoice, found = ops.check_edit(hub, data)
            problems = [str(p) for p in found if p.severity == "error"]
            if invoice is not None and not problems:
                break
        click.echo("the edited invoice has problems:", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        if from_file is not None or not sys.stdin.isatty():
            sys.exit(1)
        if not click.confirm("edit again?", default=True, err=True):
            sys.exit(1)
        text = edited_text
    try:
        result = ops.dlq_edit(hub, letter_id, data, actor=actor_name(actor), reason=reason)
    except InvoiceInvalid as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(
        f"{letter_id}: {result.action} {result.detail}; recorded in the audit log as {actor_name(actor)}"
    )


def _edit_in_editor(text: str) -> str:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as fh:
        fh.write(text)
        path = fh.name
    try:
        subprocess.run([*editor.split(), path], check=True)
        return Path(path).read_text(encoding="utf-8")
    finally:
        os.unlink(path)


# ---------------------------------------------------------------------------------------------------
# reconcile, serve (hub/reconcile.py, hub/http.py)
# ---------------------------------------------------------------------------------------------------
def _day(value: str | None) -> Any:
    if not value:
        return None
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--since", help="Only invoices issued on or after this day (YYYY-MM-DD).")
@click.option("--until", help="Only invoices issued on or before this day (YYYY-MM-DD).")
@click.option("--repair", is_flag=True, help="Queue deliveries for every repairable gap (idempotent).")
@click.option("--summary", "with_summary", is_flag=True, help="Counts and amounts per day for each side.")
@click.option("--actor", help="Who (for the audit log; default: $HUB_ACTOR or the login name).")
@json_option
@click.pass_obj
def reconcile(
    state: State,
    a: str,
    b: str,
    since: str | None,
    until: str | None,
    repair: bool,
    with_summary: bool,
    actor: str | None,
    as_json: bool,
) -> None:
    """Compare what connector A holds with what connector B holds, and say why each gap is there."""
    from hub.reconcile import reconcile as run_reconcile

    hub = state.hub()
    report = run_reconcile(
        hub,
        a,
        b,
        since=_day(since),
        until=_day(until),
        repair=repair,
        summary=with_summary,
        actor=actor_name(actor),
        deliver_now=True,
    )
    if as_json:
        emit_json(report.as_dict())
        return
    counts = report.counts
    click.echo(
        f"{a}: {counts.get(a, 0)} item(s), {b}: {counts.get(b, 0)} item(s), {counts.get('matched', 0)} "
        f"invoice(s) match; {len(report.gaps)} gap(s)"
    )
    labels = {"only_in_a": f"only in {a}", "only_in_b": f"only in {b}", "differs": "content differs"}
    for g in report.gaps:
        click.echo(f"  {labels[g.kind]}: {g.number or '-'} ({g.identity}): {g.ledger} — {g.reason}")
        if g.repair:
            click.echo(f"    repair: {g.repair}")
    for dup in report.duplicates:
        click.echo(
            f"  suspected duplicate: {', '.join(dup['numbers'])} — seller {dup['seller_tax_id']}, buyer "
            f"{dup['buyer_tax_id']}, {dup['issue_date']}, gross {dup['gross']} (not merged; please check)"
        )
    if report.summary is not None:
        click.echo(
            f"{'day':<12}{'currency':<10}{a + ' n':>10}{a + ' gross':>18}{b + ' n':>10}{b + ' gross':>18}"
        )
        for row in report.summary:
            mark = "" if row["balanced"] else "  <- does not add up"
            click.echo(
                f"{row['day']:<12}{row['currency']:<10}{row['a_count']:>10}{row['a_gross']:>18}"
                f"{row['b_count']:>10}{row['b_gross']:>18}{mark}"
            )
    if repair:
        click.echo(f"{report.repaired} repair(s) sent through the worker; run reconcile again to check.")
    elif any(g.repairable for g in report.gaps):
        click.echo("repairable gaps can be closed with --repair.")


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: http.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: http.port in hub.yaml, 8080).")
@click.pass_obj
def serve(state: State, host: str | None, port: int | None) -> None:
    """Serve the HTTP API, /metrics, health checks and the web console (no sources or workers)."""
    from hub.http import serve_forever

    serve_forever(state.hub(), host=host, port=port)


# ---------------------------------------------------------------------------------------------------
# new-plugin (the vendor kit's scaffold lives in hub/scaffold.py)
# ---------------------------------------------------------------------------------------------------
from hub.scaffold import new_plugin  # noqa: E402

cli.add_command(new_plugin)


# ---------------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--count", type=int, default=10_000, show_default=True, help="Invoices per measurement.")
@click.option(
    "--repeat",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Runs of each end-to-end figure with a target (and of the baseline); the median is reported.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="worker.threads of the end-to-end runs  [default: 2, one per core]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=None,
    help="worker.batch_size of the end-to-end runs  [default: hub.yaml's default]",
)
@json_option
def bench(count: int, repeat: int, threads: int | None, batch_size: int | None, as_json: bool) -> None:
    """Measure the embedded default on this machine beside a bare baseline (see hub/bench.py)."""
    from hub.bench import (
        TARGET_ARCHIVE_PER_S,
        TARGET_RECORDING_PER_S,
        TARGET_VALIDATE_US,
        cores,
        cpu_ceiling,
        run_bench,
    )

    results = run_bench(
        count,
        progress=lambda msg: click.echo(msg, err=True),
        repeat=repeat,
        threads=threads,
        batch_size=batch_size,
    )
    if as_json:
        emit_json(results)
        return
    st, base = results["steps"], results["baseline"]
    rec, rec2, arc = results["e2e_recording"], results["e2e_recording_double"], results["e2e_archive"]
    click.echo(f"per invoice ({st['count']} invoices):")
    click.echo(f"  model validation        {st['model_us']:>8} µs")
    click.echo(f"  rules                   {st['rules_us']:>8} µs")
    click.echo(f"  canonical form + hash   {st['canonical_hash_us']:>8} µs")

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    vch = st["validate_canonical_hash_us"]
    target_us = TARGET_VALIDATE_US
    click.echo(
        f"  = validate+canon+hash   {vch:>8} µs   (target ≤ {target_us} µs: {verdict(vch <= target_us)})"
    )
    click.echo(
        f"  ledger write            {st['ledger_write_us']:>8} µs   (transactions of {st['ledger_batch']})"
    )
    fl = results["ledger_floor"]
    click.echo(
        f"  ledger rows alone       {fl['total_us']:>8} µs   (raw sqlite3 into the hub's schema: intake "
        f"{fl['intake_us']}, claim {fl['claim_us']}, record {fl['record_us']}; one writer, so at most "
        f"{fl['ceiling_per_second']} invoices/s with nothing else under the write lock)"
    )
    click.echo(
        "end to end, embedded default (SQLite WAL + memory:// + intake helper process; hub.yaml's worker: "
        f"threads {results['worker']['threads']}, batch_size {results['worker']['batch_size']}):"
    )

    def helper(r: dict[str, Any]) -> str:
        return f" + helper {r['helper_peak_mb']} MB" if r.get("helper_peak_mb") else ""

    def cpu_line(r: dict[str, Any], other: str) -> str:
        return (
            f"    CPU an invoice      {r['cpu_us'] + r['other_cpu_us']:>8.1f} µs   (hub {r['cpu_us']} + "
            f"{other} {r['other_cpu_us']}; on {cores()} cores, at most {cpu_ceiling(r)} invoices/s)"
        )

    def runs(r: dict[str, Any]) -> str:
        if len(r.get("runs", [])) < 2:
            return ""
        return f"median of {len(r['runs'])} runs: {' / '.join(str(x) for x in r['runs'])}; "

    click.echo(
        f"  to the recording sink   {rec['per_second']:>8} invoices/s  ({runs(rec)}"
        f"{rec['count']} in {rec['seconds']} s, "
        f"peak {rec['peak_mb']} MB{helper(rec)}; target ≥ {TARGET_RECORDING_PER_S:,}/s: "
        f"{verdict(rec['per_second'] >= TARGET_RECORDING_PER_S)})"
    )
    click.echo(cpu_line(rec, "helper"))
    click.echo(
        f"  same, twice the count   {rec2['per_second']:>8} invoices/s  "
        f"({rec2['count']} in {rec2['seconds']} s, "
        f"peak {rec2['peak_mb']} MB{helper(rec2)})"
    )
    click.echo(
        f"  to archive.fs (fsync)   {arc['per_second']:>8} invoices/s  ({runs(arc)}"
        f"{arc['count']} in {arc['seconds']} s, "
        f"peak {arc['peak_mb']} MB{helper(arc)}; target ≥ {TARGET_ARCHIVE_PER_S:,}/s: "
        f"{verdict(arc['per_second'] >= TARGET_ARCHIVE_PER_S)})"
    )
    click.echo(cpu_line(arc, "helper"))
    af = results["archive_floor"]
    click.echo(
        f"  archive files alone     {af['total_us']:>8} µs   (os calls, no hub: a shard folder, two new "
        f"files linked into place, {af['sync_us']} of it sync; at most {af['ceiling_per_second']} "
        "invoices/s into a new archive on this disk)"
    )
    recp, arcp = results["e2e_recording_process"], results["e2e_archive_process"]
    n = results["worker_processes"]
    click.echo(
        f"same, with {n} worker processes (hub run --workers {n}; SQLite shared, filesystem:// bus, "
        "intake in the supervisor):"
    )
    for label, r in (("to the recording sink", recp), ("to archive.fs (fsync)", arcp)):
        click.echo(
            f"  {label:<23} {r['per_second']:>8} invoices/s  ({r['count']} in {r['seconds']} s, "
            f"peak {r['peak_mb']} MB + largest worker process {r['worker_peak_mb']} MB)"
        )
        click.echo(cpu_line(r, "worker processes"))
    click.echo(
        f"bare baseline (validate → orjson → SHA-256 → SQLite WAL ×100 → kombu memory://): "
        f"{base['per_second']} invoices/s ({runs(base)}peak {base['peak_mb']} MB)"
    )
    click.echo(f"hub / baseline: {results['ratio_to_baseline']}")


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Console script: load plugins (so they can add commands), then run the command."""
    config_path = os.environ.get("HUB_CONFIG", DEFAULT_CONFIG)
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            config_path = args[i + 1]
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
    state = State(config_path, None)
    try:
        plugins_cfg = state.loaded.config.plugins
        blocked, allowed = plugins_cfg.disabled, plugins_cfg.allow
    except HubError:
        blocked, allowed = [], None
    state._plugins = build_plugins(blocked=blocked, allowed=allowed)
    failed = state._plugins.register_commands(cli)
    state._plugins.failures.extend(failed)
    try:
        cli.main(args=args, obj=state, prog_name="hub", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"config error:\n{exc}", err=True)
        sys.exit(2)
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except SystemExit:
        raise

"""Intake in a helper process: parse, validate, hash *and record* a source's batches there.

Parsing, validating and hashing an invoice (``Intake.prepare``) and writing its rows (``Intake.write``)
is pure Python: in one process it holds the interpreter lock that the workers and the sinks wait for,
and on a machine with two or more cores it leaves one idle. ``hub run`` therefore hands its sources'
big batches (``worker.batch_size`` items, at least ``MIN_BATCH``) of plain documents (every item one
document: a file of a folder, a mail, a generated invoice) to one helper process, which records each
batch itself: it writes the ledger in a transaction of its own, under the same writer lock as the
hub's threads (an ``flock`` on ``<ledger>.writer-lock``, taken by processes in turn), and sends back
only the outcomes and the delivery ids to publish. The source's thread hands batch k+1 over while it
publishes batch k's deliveries and commits its items to the source; batches are recorded in the
order polled, and one is recorded only if the one handed over before it was (else its checkpoint
would move the source past items that were not recorded).

Should the helper die mid-batch, the source's thread prepares and records that batch itself, and
everything after it: what the helper had committed comes back as duplicates (the same content
hashes), nothing is lost or recorded twice, and deliveries the helper had committed but the hub never
published go out with the relay's stale-message republish.

The helper is forked when ``hub run`` starts, before its threads (so it inherits the parsers and rules
and is ready at once); in a process that already runs threads it is spawned instead (a fresh
interpreter, about a second to start). Only ``hub run`` with its workers in the same process has one:
with ``--workers N`` the cores are the worker processes'.

What the helper does not take, the source's thread prepares and records itself, exactly as without a
helper: batches with an item of several documents or of invoices as data (an ERP's rows, a
platform's), every batch while the helper is still starting, and everything once the helper has died.
A hub built with in-memory plugins (tests, ``HubHarness``) has no helper: the helper builds its
plugins from the entry points and the config file.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from hub.config import LoadedConfig, load_config
from hub.connectors import Incoming, IntakeOutcome
from hub.errors import HubError, LedgerError
from hub.intake import Intake, record_batch
from hub.ledger import Ledger
from hub.models import Document
from hub.plugins import build_plugins

log = structlog.get_logger()

#: Batches smaller than this are prepared in the source's thread (a helper costs a process start).
MIN_BATCH = 100

#: One document as it travels to the helper: content, media type, file name, source, origin.
_Doc = tuple[bytes, str, str | None, str, str | None]

#: One item a helper records: its documents, its key, its checkpoint.
_Item = tuple[list[_Doc], str, str | None]
#: What comes back from recording a batch: ("ok", (outcomes, delivery ids to publish by destination))
#: or ("error", (error class, message)) — errors travel as text, an exception may not unpickle.
_Recorded = tuple[str, Any]

_INTAKE: Intake | None = None
_LEDGER_URL: str | None = None
_LEDGER: Ledger | None = None
_BATCHES = 0
#: In the helper: whether each recent batch (by sequence number) was recorded.
_RECORDED: dict[int, bool] = {}


def _start(config_path: str, log_level: str, ledger_url: str) -> None:
    """The helper's initializer: the same config, plugins, parsers and rules as the hub."""
    global _INTAKE, _LEDGER_URL
    _die_with_the_hub()
    _LEDGER_URL = ledger_url
    from hub.engine import tune_gc
    from hub.logging import configure_logging

    configure_logging(log_level, "auto")
    config = load_config(Path(config_path)).config
    plugins = build_plugins(blocked=config.plugins.disabled, allowed=config.plugins.allow)
    _INTAKE = Intake(config, None, plugins.parsers, plugins.rules)  # type: ignore[arg-type]
    tune_gc()


def _die_with_the_hub() -> None:
    """Linux: the helper is killed when the hub's thread that started it ends (``PR_SET_PDEATHSIG``),
    ``kill -9`` of the hub included, rather than finish a batch for a hub that is gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)
        if os.getppid() == 1:  # the hub died before the line above
            os._exit(1)


def _forked(close_fds: list[int]) -> None:
    """The forked helper's initializer: die with the hub, and let go of the hub's lock files. A forked
    child holds copies of the hub's descriptors, and an ``flock`` lives until every copy is closed: a
    helper outliving a ``kill -9`` of its hub would keep the data directory's and the ledger's write
    lock taken from the next ``hub run``."""
    _die_with_the_hub()
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _ready() -> int:
    return os.getpid()


def _document(doc: _Doc) -> Document:
    content, media_type, filename, doc_source, origin = doc
    return Document(
        content=content, media_type=media_type, filename=filename, source=doc_source, origin=origin
    )


def _record(source: str, seq: int, after: int | None, items: list[_Item]) -> _Recorded:
    """Prepare and record a whole batch in the helper (see the module's docstring). ``after`` is the
    batch of the same pass handed in before this one: unless it was recorded, this one is not either
    (its checkpoint would move the source past the items of the one that failed)."""
    global _LEDGER
    assert _INTAKE is not None and _LEDGER_URL is not None, "the helper was not started"
    for old in [k for k in _RECORDED if k < seq - 64]:
        del _RECORDED[old]
    _RECORDED[seq] = False
    if after is not None and not _RECORDED.get(after, False):
        return ("error", ("HubError", f"not recorded: the batch before it ({after}) was not"))
    try:
        if _LEDGER is None:
            # A ledger of the helper's own (a forked helper's copy of the hub's one shares its
            # connections and has its writer lock closed): its own connections, its own writer lock.
            _LEDGER = Ledger(_LEDGER_URL, migrate=False)
            _INTAKE.ledger = _LEDGER
        prepared = _INTAKE.prepare_many(
            [
                Incoming(documents=[_document(d) for d in docs], key=key, checkpoint=checkpoint)
                for docs, key, checkpoint in items
            ],
            source,
        )
        written = record_batch(_LEDGER, _INTAKE, prepared)
    except Exception as exc:  # goes back to the source's thread, which logs it and reads the batch again
        return ("error", (type(exc).__name__, str(exc)))
    _RECORDED[seq] = True
    _collect_now_and_then()
    return ("ok", (written.outcomes, written.publish))


def _collect_now_and_then() -> None:
    global _BATCHES
    _BATCHES += 1
    if _BATCHES % 20 == 0:
        gc.collect()  # the collector is slowed down (tune_gc), as in `hub run`


def _plain(item: Incoming) -> bool:
    return len(item.documents) == 1 and not item.invoices and item.documents[0].parent_sha256 is None


class Preparer:
    """The helper process of one ``hub run`` (started by ``Hub.run`` before its threads)."""

    def __init__(self, loaded: LoadedConfig, intake: Intake) -> None:
        self.loaded = loaded
        self.intake = intake
        self._pool: ProcessPoolExecutor | None = None
        self._ready: Future[int] | None = None
        self.broken = False
        self._announced = False
        #: Descriptors of the hub's lock files, closed in a forked helper (see ``_forked``).
        self.close_in_child: list[int] = []
        #: Sequence numbers of the batches handed to the helper (``next`` is atomic: every source's
        #: thread hands batches over).
        self._seqs = itertools.count(1)

    def wanted(self, batch_size: int) -> bool:
        return (
            self.loaded.config.worker.intake_helper and batch_size >= MIN_BATCH and (os.cpu_count() or 1) >= 2
        )

    @property
    def started(self) -> bool:
        return self._pool is not None or self.broken

    def start(self) -> None:
        if self._pool is not None or self.broken:
            return
        global _INTAKE, _LEDGER_URL
        if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
            # Forked before the hub's threads start (no lock can be held by a thread the child lacks):
            # ready at once, with this intake's parsers and rules. The child opens a ledger of its own.
            _INTAKE = self.intake
            _LEDGER_URL = self.intake.ledger.url
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_forked,
                initargs=(list(self.close_in_child),),
            )
        else:
            # Threads are running (an application embedding the hub): a fresh interpreter, which
            # builds the same plugins from the entry points and the config file (about a second).
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(str(self.loaded.path), self.loaded.config.logging.level, self.intake.ledger.url),
            )
        self._ready = self._pool.submit(_ready)
        self._announced = False

    def _usable(self) -> bool:
        if self._pool is None or self._ready is None or not self._ready.done() or self.broken:
            return False
        if self._ready.exception() is not None:
            self._give_up(self._ready.exception())
            return False
        if not self._announced:
            self._announced = True
            log.info("intake_helper_ready", pid=self._ready.result())
        return True

    def submit_record(
        self, source: str, batch: list[Incoming], after: int | None
    ) -> tuple[Future[_Recorded], int] | None:
        """Hand ``batch`` to the helper to prepare *and record*, with its sequence number; None when it
        is not ready or an item of ``batch`` is not one plain document (then the caller does it all).
        ``after``: the sequence number of the batch of this pass still in flight, which the helper
        must have recorded before it records this one."""
        if not batch or not all(_plain(item) for item in batch) or not self._usable():
            return None
        items: list[_Item] = []
        for item in batch:
            d = item.documents[0]
            doc: _Doc = (d.content, d.media_type, d.filename, d.source, d.origin)
            items.append(([doc], item.key, item.checkpoint))
        seq = next(self._seqs)
        pool = self._pool
        assert pool is not None  # _usable
        try:
            return pool.submit(_record, source, seq, after, items), seq
        except RuntimeError as exc:  # a broken pool refuses new work
            self._give_up(exc)
            return None

    def recorded(self, future: Future[_Recorded]) -> tuple[list[IntakeOutcome], dict[str, list[int]]] | None:
        """What the helper recorded for a batch: its outcomes and the delivery ids to publish; None
        when the helper died (the caller records the batch itself); an error it met is raised here."""
        try:
            status, value = future.result()
        except Exception as exc:  # the helper died (BrokenProcessPool) or the result did not travel
            self._give_up(exc)
            return None
        if status == "ok":
            outcomes, publish = value
            return outcomes, publish
        error_class, message = value
        if error_class == "LedgerError":
            raise LedgerError(message)
        raise HubError(f"intake helper: {error_class}: {message}")

    def _give_up(self, exc: BaseException | None) -> None:
        if not self.broken:
            log.warning("intake_helper_stopped", error=f"{type(exc).__name__}: {exc}")
        self.broken = True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

"""``archive.fs``: the archive on a local folder (sink + inventory).

Content-addressed originals in sharded folders, one metadata record per invoice version, write-once,
crash-safe writes, optional AES-GCM encryption at rest and retention; see ``plugins/_archive.py`` for
the layout and the rules, which ``archive.s3`` shares.

A write is: temp file in the target folder (``O_EXCL``), write, ``fsync``, ``link`` to the final name,
unlink the temp name, ``fsync`` of the folder. ``link`` instead of ``rename``: it fails when the target
exists, so two writers racing for one key cannot overwrite each other (``rename`` would replace the
target silently) and write-once holds without a lock. New shard folders are fsync'd into their parents.
Files are made read-only (0444) as a guard against careless edits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

from invoice_hub_plugins._archive import (
    Archive,
    ArchiveSettings,
    ObjectMissing,
    WriteOnceViolation,
    register_commands,
)
from pydantic import Field

from hub import hookimpl
from hub.connectors import ConnectorContext, DeliveryRequest, Health, Inventory, InventoryItem, Receipt, Sink
from hub.errors import HubError, PermanentError, TransientError

#: A key: ``/``-separated segments, none empty or starting with ``.`` (temp files start with ``.``).
_KEY = re.compile(r"[A-Za-z0-9~_\-][A-Za-z0-9~_.\-]*(?:/[A-Za-z0-9~_\-][A-Za-z0-9~_.\-]*)*")
#: Temp names: this process's id, a random token (a pid is reused after a crash, and the crashed
#: process's temp files may still lie there) and a counter, instead of a ``uuid4`` (a syscall) each.
_TEMP_TOKEN = os.urandom(4).hex()
_TEMP_SEQ = itertools.count()


def _temp_name(folder: str, name: str) -> str:
    return f"{folder}/.{name}.{os.getpid():x}-{_TEMP_TOKEN}-{next(_TEMP_SEQ)}.tmp"


def _read(path: str | Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _os_error(exc: OSError, what: str, path: str | Path) -> Exception:
    """Disk full or I/O trouble may pass; permission and type problems will not."""
    message = f"{what} {path}: {exc.strerror or exc}"
    if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.ENOTDIR, errno.EISDIR):
        return PermanentError(message, code=errno.errorcode.get(exc.errno or 0, "oserror"), path=str(path))
    return TransientError(message, path=str(path))


def _load_syncfs() -> Callable[[int], int] | None:
    """``syncfs(2)`` (Linux): flush one file system. None elsewhere (the barrier fsyncs file by file)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderStore:
    """An ``ObjectStore`` on a folder. Keys map to relative paths; names starting with ``.`` are
    temp files and never keys. The paths of a write are strings, not ``pathlib`` objects: building
    and hashing ``Path`` objects was a fifth of archive.fs's time per invoice."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        #: Folders known to exist (at most the 65,536 shard folders plus one per month), as strings.
        self._dirs: set[str] = set()
        self._lock = threading.Lock()
        self._barrier_lock = threading.Lock()
        #: Files and folders written since the last barrier (with ``syncfs``: just the root, as a
        #: flag, since one call flushes them all).
        self._unsynced: set[str] = set()

    # -- paths -----------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return Path(self._fspath(key))

    def _fspath(self, key: str) -> str:
        if _KEY.fullmatch(key) is None:
            raise PermanentError(f"{key!r} is not a valid archive key", code="bad_key")
        return f"{self.location}/{key}"

    def _ensure_dir(self, folder: str, durable: bool) -> None:
        if folder in self._dirs:
            return
        missing = []
        probe = folder
        while probe and not os.path.isdir(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        for new in reversed(missing):
            try:
                os.mkdir(new)
            except FileExistsError:
                if not os.path.isdir(new):
                    raise _os_error(
                        FileExistsError(errno.ENOTDIR, "a file is in the way"), "cannot create folder", new
                    ) from None
            except OSError as exc:
                raise _os_error(exc, "cannot create folder", new) from exc
            parent = os.path.dirname(new) or "."
            if durable:
                _fsync_dir(parent)
            else:
                self._pending(parent)
        self._dirs.add(folder)

    def _pending(self, path: str) -> None:
        if _SYNCFS is not None:
            path = self.location
        with self._lock:
            self._unsynced.add(path)

    def barrier(self) -> None:
        """Make every non-durable write so far durable: one ``syncfs`` of the archive's file system
        (Linux), else an fsync of each file and folder written since the last barrier."""
        # One barrier at a time: a barrier that finds its writes already taken by another thread's
        # barrier must not return before that one has finished flushing them.
        with self._barrier_lock:
            with self._lock:
                pending, self._unsynced = self._unsynced, set()
            if pending:
                self._flush(pending)

    def _flush(self, pending: set[str]) -> None:
        if _SYNCFS is not None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _SYNCFS(fd) != 0:
                    err = ctypes.get_errno()
                    raise TransientError(
                        f"syncfs of {self.root} failed: {os.strerror(err)}", path=str(self.root)
                    )
            finally:
                os.close(fd)
            return
        for path in sorted(pending, key=lambda p: (os.path.isdir(p), p)):  # files first, then folders
            if not os.path.exists(path):
                continue  # a temp file already linked and removed, or discarded
            try:
                if os.path.isdir(path):
                    _fsync_dir(path)
                else:
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except OSError as exc:
                raise _os_error(exc, "cannot sync", path) from exc

    # -- the ObjectStore seam --------------------------------------------------------------------
    def put_once(
        self,
        key: str,
        data: bytes,
        *,
        same: Callable[[bytes], bool],
        retain_until: datetime | None,
        content_addressed: bool,
    ) -> bool:
        target = self._fspath(key)
        if os.path.exists(target):
            found = self._compare(key, target, same, content_addressed)
            if self._unsynced:
                self.barrier()  # it may be a batch's link not flushed yet: flush before relying on it
            return found
        folder, _, name = target.rpartition("/")
        self._ensure_dir(folder, durable=True)
        tmp = _temp_name(folder, name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return self._compare(key, target, same, content_addressed)
            finally:
                os.unlink(tmp)
            _fsync_dir(folder)
        except OSError as exc:
            raise _os_error(exc, "cannot write", target) from exc
        return True

    # -- batches: stage → barrier → commit → barrier -----------------------------------------------
    def stage(self, key: str, data: bytes, *, retain_until: datetime | None) -> tuple[str, str, str | None]:
        """Write ``data`` to a temp file beside its final name, without fsync (the barrier flushes)."""
        target = self._fspath(key)
        if os.path.exists(target):
            return key, target, None
        folder, _, name = target.rpartition("/")
        self._ensure_dir(folder, durable=False)
        tmp = _temp_name(folder, name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_error(exc, "cannot write", tmp) from exc
        self._pending(tmp)
        self._pending(folder)
        return key, target, tmp

    def commit(
        self, staged: tuple[str, str, str | None], *, same: Callable[[bytes], bool], content_addressed: bool
    ) -> bool:
        """Give staged (and flushed) bytes their key: ``link``, write-once as in ``put_once``."""
        key, target, tmp = staged
        if tmp is None:
            return self._compare(key, target, same, content_addressed)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return self._compare(key, target, same, content_addressed)
        except OSError as exc:
            raise _os_error(exc, "cannot write", target) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._pending(target.rpartition("/")[0])
        return True

    def discard(self, staged: tuple[str, str, str | None]) -> None:
        tmp = staged[2]
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _compare(
        self, key: str, target: str | Path, same: Callable[[bytes], bool], content_addressed: bool
    ) -> bool:
        try:
            existing = _read(target)
        except OSError as exc:
            raise _os_error(exc, "cannot read", target) from exc
        if same(existing):
            return False
        raise WriteOnceViolation(key, self.location, content_addressed=content_addressed)

    def get(self, key: str) -> bytes:
        target = self.path(key)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key, self.location) from None
        except OSError as exc:
            raise _os_error(exc, "cannot read", target) from exc

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._fspath(key))

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root.joinpath(*[p for p in prefix.split("/") if p])
        start = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        yield from self._walk(base, start)

    def _walk(self, folder: Path, key_prefix: str) -> Iterator[str]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(exc, "cannot list", folder) from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), f"{key_prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False):
                yield f"{key_prefix}{entry.name}"

    def children(self, prefix: str) -> Iterator[str]:
        base = self.root.joinpath(*[p for p in prefix.split("/") if p])
        try:
            names = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return
        yield from names

    def delete(self, key: str) -> None:
        target = self.path(key)
        try:
            target.unlink()
        except FileNotFoundError:
            raise ObjectMissing(key, self.location) from None
        except OSError as exc:
            raise _os_error(exc, "cannot delete", target) from exc
        _fsync_dir(target.parent)

    def retention_of(self, key: str) -> datetime | None:
        return None  # a folder has no lock of its own; the record's retain_until governs

    def locks(self) -> bool:
        return False

    def health(self) -> Health:
        probe = self.root / f".health-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            return Health(False, f"{self.root} is not writable: {exc.strerror or exc}")
        return Health(True, f"{self.root} is writable")

    def close(self) -> None:
        """Nothing held open between calls."""


class ArchiveFsSettings(ArchiveSettings):
    #: Root folder of the archive (created on first write).
    path: Path = Field(description="root folder of the archive")


class ArchiveFs(Sink, Inventory):
    """Archive every invoice version and its original documents in a folder, write-once."""

    type_name = "archive.fs"
    Settings = ArchiveFsSettings

    def __init__(self, settings: ArchiveFsSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self.settings: ArchiveFsSettings = settings
        self.store = FolderStore(Path(settings.path))
        self.archive = Archive(self.store, settings, name=context.name)

    def deliver(self, request: DeliveryRequest) -> Receipt:
        return self.archive.deliver(request, load_document=self.context.load_document)

    def deliver_batch(self, requests: list[DeliveryRequest]) -> list[Receipt | HubError]:
        """Deliver many at once with three flushes in all (see ``Archive.deliver_batch``): the way to
        thousands of invoices a second with every one durable before its receipt."""
        return self.archive.deliver_batch(requests, load_document=self.context.load_document)

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterable[InventoryItem]:
        return self.archive.inventory(since, until)

    def delete(self, ref: str, *, now: datetime | None = None) -> list[str]:
        """Delete an archived invoice version by its reference (the receipt's ``remote_ref``); refused
        with ``PermanentError`` ("retained until ...") before its retention ends."""
        return self.archive.delete(ref, now=now)

    def health(self) -> Health:
        return self.archive.health()

    def describe(self) -> dict[str, Any]:
        return {"type": self.type_name, "location": self.store.location}


@hookimpl
def hub_register_connector_types() -> list[type[Any]]:
    return [ArchiveFs]


@hookimpl
def hub_register_commands(cli: Any) -> None:
    """``hub archive verify | export | verify-export`` (for archive.fs and archive.s3 alike)."""
    register_commands(cli)

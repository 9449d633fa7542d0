"""``files``: a source that reads invoice documents dropped into a folder.

A file is handed in once it has not changed for ``min_age`` seconds (so a half-copied file is not
read), and only after its outcome is in the ledger is it moved to ``done/`` (at least one invoice
came out of it, duplicates included) or ``failed/`` (everything in it became a dead letter, which
keeps the raw bytes). A crash before the move means the file is read again; the ledger's content
hash makes that a counted duplicate, never a second invoice.

``after: keep`` leaves files where they are (a read-only folder, such as the repository's
``examples/inbox``); the names and hashes already read are then kept as the source checkpoint, in
the same ledger transaction as the invoices, so a rerun reads only what is new.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import orjson
import structlog
from pydantic import Field

from hub import ConnectorSettings, Document, Health, Incoming, IntakeOutcome, Source, hookimpl
from hub.errors import TransientError

log = structlog.get_logger()

_MEDIA_TYPES = {
    ".xml": "application/xml",
    ".json": "application/json",
    ".pdf": "application/pdf",
    ".ofd": "application/ofd",
    ".zip": "application/zip",
    ".eml": "message/rfc822",
}


def guess_media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class FilesSettings(ConnectorSettings):
    path: Path
    patterns: list[str] = Field(default_factory=lambda: ["*"])
    recursive: bool = False
    after: Literal["move", "keep"] = "move"
    done_dir: str = "done"
    failed_dir: str = "failed"
    min_age: float = Field(0.5, ge=0)
    poll_interval: float = Field(1.0, gt=0)


class FilesSource(Source):
    type_name = "files"
    Settings = FilesSettings
    settings: FilesSettings

    def __init__(self, settings: FilesSettings, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, context)
        self.poll_interval = settings.poll_interval

    def _candidates(self) -> list[Path]:
        root = self.settings.path
        skip = {self.settings.done_dir, self.settings.failed_dir}
        found: set[Path] = set()
        for pattern in self.settings.patterns:
            it = root.rglob(pattern) if self.settings.recursive else root.glob(pattern)
            for p in it:
                rel = p.relative_to(root)
                if rel.parts and rel.parts[0] in skip:
                    continue
                if p.name.startswith(".") or p.suffix in {".part", ".tmp", ".crdownload"} or not p.is_file():
                    continue
                found.add(p)
        return sorted(found)

    def poll(self, checkpoint: str | None) -> Iterator[Incoming]:
        root = self.settings.path
        if not root.is_dir():
            raise TransientError(f"folder {root} does not exist (yet)", connector=self.name)
        seen: dict[str, str] = (
            orjson.loads(checkpoint) if (checkpoint and self.settings.after == "keep") else {}
        )
        now = time.time()
        for path in self._candidates():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # moved away between listing and reading
            if now - stat.st_mtime < self.settings.min_age:
                continue
            rel = str(path.relative_to(root))
            if (
                self.settings.after == "keep"
                and rel in seen
                and seen[rel] == f"{stat.st_size}:{stat.st_mtime_ns}"
            ):
                continue
            content = path.read_bytes()
            doc = Document(
                content=content,
                media_type=guess_media_type(path.name),
                filename=path.name,
                source=self.name,
                origin=str(path),
            )
            checkpoint_out = None
            if self.settings.after == "keep":
                seen[rel] = f"{stat.st_size}:{stat.st_mtime_ns}"
                checkpoint_out = orjson.dumps(seen).decode()
            yield Incoming(documents=[doc], key=rel, checkpoint=checkpoint_out, handle=path)

    def commit(self, incoming: Incoming, outcome: IntakeOutcome) -> None:
        if self.settings.after == "keep":
            return
        path: Path = incoming.handle
        target_dir = self.settings.path / (self.settings.done_dir if outcome.ok else self.settings.failed_dir)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        if target.exists():
            target = target_dir / f"{path.stem}.{incoming.documents[0].sha256[:12]}{path.suffix}"
        try:
            shutil.move(str(path), str(target))
            fd = os.open(target_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            log.warning("file_vanished_before_move", path=str(path))

    def health(self) -> Health:
        root = self.settings.path
        if not root.is_dir():
            return Health(False, f"folder {root} does not exist")
        if self.settings.after == "move" and not os.access(root, os.W_OK):
            return Health(False, f"folder {root} is not writable (files are moved to done/ and failed/)")
        return Health(True, f"{len(self._candidates())} file(s) waiting in {root}")


@hookimpl
def hub_register_connector_types() -> list[type]:
    return [FilesSource]

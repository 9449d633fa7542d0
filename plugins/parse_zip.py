"""ZIP archives of invoices: every file inside becomes a child ``Document``, parsed in its own right.

The archive is checked as a whole before anything is handed back, with limits that defend against zip
bombs (each limit is a constructor argument of ``ZipParser``; the defaults are ``DEFAULT_LIMITS``):

* ``max_members`` — files in the archive, nested archives included;
* ``max_total_bytes`` — uncompressed bytes of the whole tree, nested archives included;
* ``max_member_bytes`` — uncompressed bytes of any one file;
* ``max_ratio`` — uncompressed ÷ compressed size of one file (checked for files above
  ``ratio_floor_bytes``: a 4 kB XML compressing 50:1 is normal, 20 MB compressing 1000:1 is a bomb);
* ``max_depth`` — archives inside archives (the archive itself is level 1).

Declared sizes in a ZIP can lie, so every member is read through a counting reader that stops at
the limit. A violated limit raises ``ParseError`` naming the limit, its value and the member.

Names: a member whose name is not flagged UTF-8 is decoded from its raw bytes, preferring the
Info-ZIP Unicode Path extra field when present, then UTF-8, then GBK when every character is a
common simplified character (GB2312), then Big5, then GB18030, then CP437 (the ZIP default). Windows
in China writes GBK names without the UTF-8 flag; Taiwan and Hong Kong tools write Big5. RFC 2047
encoded names (``=?UTF-8?B?...?=``) are decoded too. Each child keeps its base name as ``filename``;
``origin`` records the path inside the archive (``outer.zip!dir/inner.zip!invoice.xml``).
"""

from __future__ import annotations

import email.header
import io
import mimetypes
import posixpath
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from typing import ClassVar

import structlog

from hub import hookimpl
from hub.connectors import Parser, ParseResult
from hub.errors import ParseError
from hub.models import Document

log = structlog.get_logger()

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_UTF8_FLAG = 0x800
_UNICODE_PATH_EXTRA = 0x7075
_JUNK_PREFIXES = ("__MACOSX/",)
#: Files operating systems leave in folders people zip; never invoices, and not worth a dead letter.
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_CHUNK = 1 << 16
_MEDIA_TYPES = {
    ".xml": "application/xml",
    ".pdf": "application/pdf",
    ".ofd": "application/ofd",
    ".zip": "application/zip",
    ".json": "application/json",
    ".eml": "message/rfc822",
}


@dataclass(frozen=True)
class ZipLimits:
    max_members: int = 1000
    max_total_bytes: int = 200 * 1024 * 1024
    max_member_bytes: int = 50 * 1024 * 1024
    max_ratio: int = 100
    ratio_floor_bytes: int = 1024 * 1024
    max_depth: int = 3


DEFAULT_LIMITS = ZipLimits()


def is_zip(content: bytes) -> bool:
    return content[:4] in ZIP_MAGIC


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------
def _unicode_path_extra(info: zipfile.ZipInfo) -> str | None:
    extra = info.extra
    position = 0
    while position + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, position)
        body = extra[position + 4 : position + 4 + size]
        if header_id == _UNICODE_PATH_EXTRA and len(body) > 5 and body[0] == 1:
            try:
                return body[5:].decode("utf-8")
            except UnicodeDecodeError:
                return None
        position += 4 + size
    return None


def _strict(raw: bytes, encoding: str) -> str | None:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None


def _all_gb2312(name: str) -> bool:
    try:
        name.encode("gb2312")
        return True
    except UnicodeEncodeError:
        return False


def decode_member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its author wrote it (see the module docstring for the order of guesses)."""
    if info.flag_bits & _UTF8_FLAG:
        name = info.filename
    else:
        raw = info.filename.encode("cp437")  # zipfile decoded the raw bytes as cp437: undo it
        guess = _unicode_path_extra(info) or _strict(raw, "utf-8")
        if guess is None:
            gbk = _strict(raw, "gbk")
            guess = gbk if gbk is not None and _all_gb2312(gbk) else None
        name = guess or _strict(raw, "big5") or _strict(raw, "gb18030") or info.filename
    if "=?" in name and "?=" in name:
        try:
            parts = email.header.decode_header(name)
            name = "".join(
                part.decode(charset or "ascii", errors="replace") if isinstance(part, bytes) else part
                for part, charset in parts
            )
        except (LookupError, ValueError):
            pass  # not a valid encoded-word after all: keep the name as it is
    return name


# ---------------------------------------------------------------------------------------------------
# Reading with limits
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Budget:
    limits: ZipLimits
    members: int = 0
    total: int = 0


def _check(size: int, compressed: int, where: str, limits: ZipLimits, *, declared: bool) -> None:
    """Refuse a member whose (declared or actual) ``size`` breaks the per-file limits."""
    told = "declares" if declared else "expands to at least"
    if size > limits.max_member_bytes:
        raise ParseError(
            f"zip limit max_member_bytes exceeded: {where} {told} {size} bytes "
            f"(limit {limits.max_member_bytes})"
        )
    ratio = size // max(compressed, 1)
    if size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
        raise ParseError(
            f"zip limit max_ratio exceeded: {where} {told} {size} bytes from {compressed} compressed "
            f"(ratio {ratio}, limit {limits.max_ratio}); refused as a zip bomb"
        )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, budget: _Budget) -> bytes:
    limits = budget.limits
    if info.flag_bits & 0x1:
        raise ParseError(f"{where} is encrypted (password-protected); the hub cannot read it")
    _check(info.file_size, info.compress_size, where, limits, declared=True)
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                budget.total += len(chunk)
                _check(size, info.compress_size, where, limits, declared=False)  # declared sizes can lie
                if budget.total > limits.max_total_bytes:
                    raise ParseError(
                        f"zip limit max_total_bytes exceeded: the archive expands past "
                        f"{limits.max_total_bytes} bytes (at {where})"
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ParseError(f"{where} is damaged and cannot be decompressed ({exc})") from exc
    return b"".join(chunks)


def _members(content: bytes, label: str, depth: int, budget: _Budget) -> list[tuple[str, bytes]]:
    """Read (name, bytes) of every file, checking nested archives down to the depth limit."""
    limits = budget.limits
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ParseError(f"{label} is not a readable ZIP archive ({exc})") from exc
    found: list[tuple[str, bytes]] = []
    with archive:
        infos = archive.infolist()
        if budget.members + len(infos) > limits.max_members:
            raise ParseError(
                f"zip limit max_members exceeded: {label} holds {len(infos)} entries "
                f"(limit {limits.max_members} in the whole archive)"
            )
        declared = sum(info.file_size for info in infos)
        if budget.total + declared > limits.max_total_bytes:
            raise ParseError(
                f"zip limit max_total_bytes exceeded: {label} declares {declared} uncompressed bytes "
                f"(limit {limits.max_total_bytes})"
            )
        for info in infos:
            if info.is_dir():
                continue
            name = decode_member_name(info)
            base = posixpath.basename(name)
            if name.startswith(_JUNK_PREFIXES) or base.startswith("._") or base.lower() in _JUNK_NAMES:
                log.info("zip_member_skipped", archive=label, member=name, reason="operating system file")
                continue
            budget.members += 1
            where = f"{label}!{name}"
            data = _read_member(archive, info, where, budget)
            if is_zip(data) and not is_ofd_package(data):
                if depth + 1 > limits.max_depth:
                    raise ParseError(
                        f"zip limit max_depth exceeded: {where} is an archive nested {depth + 1} levels deep "
                        f"(limit {limits.max_depth})"
                    )
                _members(data, where, depth + 1, budget)  # checks the subtree; the child is parsed later
            found.append((name, data))
    return found


def is_ofd_package(content: bytes) -> bool:
    """An OFD is a ZIP container too, but a document, not an archive of documents: it has ``OFD.xml`` at
    its root. Only the central directory is read (nothing is decompressed)."""
    if not is_zip(content) or b"OFD.xml" not in content:
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return any(name.lstrip("/") == "OFD.xml" for name in archive.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        return False


class ZipParser(Parser):
    """A ZIP archive: hands back its files as child documents, within the limits."""

    name: ClassVar[str] = "zip"
    priority: ClassVar[int] = 40

    def __init__(self, limits: ZipLimits = DEFAULT_LIMITS, **overrides: int) -> None:
        self.limits = replace(limits, **overrides) if overrides else limits

    def claims(self, document: Document) -> bool:
        if is_zip(document.content):
            return True
        media = document.media_type.split(";")[0].strip().lower()
        return media in ("application/zip", "application/x-zip-compressed") or (
            document.filename or ""
        ).lower().endswith(".zip")

    def parse(self, document: Document) -> ParseResult:
        label = document.filename or f"zip {document.sha256[:12]}"
        if not is_zip(document.content):
            raise ParseError(
                f"{label} is called a ZIP archive but does not start like one", filename=document.filename
            )
        members = _members(document.content, label, 1, _Budget(self.limits))
        if not members:
            raise ParseError(f"{label} is an empty ZIP archive (no files in it)", filename=document.filename)
        prefix = document.origin or label
        children = []
        for name, data in members:
            base = posixpath.basename(name.replace("\\", "/")) or name
            extension = posixpath.splitext(base)[1].lower()
            media_type = (
                _MEDIA_TYPES.get(extension) or mimetypes.guess_type(base)[0] or "application/octet-stream"
            )
            children.append(
                Document(
                    content=data,
                    media_type=media_type,
                    filename=base,
                    source=document.source,
                    received_at=document.received_at,
                    origin=f"{prefix}!{name}",
                    parent_sha256=document.sha256,
                )
            )
        return ParseResult(children=children)


@hookimpl
def hub_register_parsers() -> list[Parser]:
    return [ZipParser()]

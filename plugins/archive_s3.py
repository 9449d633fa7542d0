"""``archive.s3``: the archive on S3-compatible object storage (AWS S3, MinIO, Ceph, Alibaba OSS in
S3 mode) through boto3 (sink + inventory).

The same archive as ``archive.fs`` (layout, write-once, records, encryption, retention: see
``plugins/_archive.py``) over an ``ObjectStore`` made of S3 calls:

* write-once: ``PutObject`` with ``If-None-Match: *`` (conditional write), so an existing key is never
  replaced; on ``412 Precondition Failed`` the stored object is read back and compared. Objects above
  ``multipart_threshold`` go through boto3's transfer manager (multipart), which cannot send
  ``If-None-Match``; for those the key is checked first (content-addressed keys, so a racing writer
  writes the same bytes anyway).
* integrity in transit: ``ChecksumAlgorithm="SHA256"``; the store verifies what it received.
* retention: with object lock on the bucket (``object_lock: auto`` detects it), every object is put
  with ``ObjectLockMode=COMPLIANCE`` and ``ObjectLockRetainUntilDate`` = now + ``retention_days``: the
  store itself refuses deletion before then, whatever credentials ask.
* errors: connection problems, time-outs, 5xx and throttling → ``TransientError``; access denied, no
  such bucket, bad credentials and other 4xx → ``PermanentError``. botocore's own retries are off
  (``max_attempts=1``): the hub's worker decides retries.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any, Literal

from invoice_hub_plugins._archive import (
    Archive,
    ArchiveSettings,
    ObjectMissing,
    RetentionActive,
    WriteOnceViolation,
    register_commands,
)
from pydantic import Field, SecretStr

from hub import hookimpl
from hub.connectors import ConnectorContext, DeliveryRequest, Health, Inventory, InventoryItem, Receipt, Sink
from hub.errors import HubError, PermanentError, TransientError

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class ArchiveS3Settings(ArchiveSettings):
    bucket: str = Field(min_length=3, max_length=63)
    #: Key prefix inside the bucket (``invoices-archive/``); ``/`` is added when missing.
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    #: ``auto``: use object lock when the bucket has it enabled; ``true``: require it; ``false``: never.
    object_lock: Literal["auto"] | bool = "auto"
    #: Path-style addressing (MinIO, Ceph, moto) or virtual-hosted; default: path when endpoint_url is set.
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    multipart_threshold: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    multipart_chunksize: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)


def translate(exc: Exception, what: str, location: str) -> HubError:
    """botocore's exceptions → the hub's, at the seam."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{location}: {what}: {code} {err.get('Message', '')}".rstrip()
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(message, remote_status=status or None, remote_body=code)
        return PermanentError(message, code=code or None, remote_status=status or None, remote_body=code)
    if isinstance(exc, EndpointConnectionError | ConnectionError | ReadTimeoutError):
        return TransientError(f"{location}: {what}: {exc}")
    if isinstance(exc, NoCredentialsError):
        return PermanentError(f"{location}: {what}: no credentials ({exc})", code="no_credentials")
    if isinstance(exc, BotoCoreError):
        return PermanentError(f"{location}: {what}: {exc}", code=type(exc).__name__)
    raise exc


class S3Store:
    """An ``ObjectStore`` on an S3 bucket (keys under ``prefix``)."""

    def __init__(self, settings: ArchiveS3Settings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = (
            settings.prefix if not settings.prefix or settings.prefix.endswith("/") else settings.prefix + "/"
        )
        self.location = f"s3://{self.bucket}/{self.prefix}"
        style = settings.addressing_style or ("path" if settings.endpoint_url else "auto")
        config = Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            s3={"addressing_style": style},
            signature_version="s3v4",
        )

        def secret(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        self._session = boto3.session.Session()
        self.client = self._session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=secret(settings.access_key_id),
            aws_secret_access_key=secret(settings.secret_access_key),
            aws_session_token=secret(settings.session_token),
            config=config,
        )
        self._lock_enabled: bool | None = None

    # -- helpers ---------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, key: str | None, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if key is not None and code in _MISSING_CODES:
                raise ObjectMissing(key, self.location) from exc
            raise translate(exc, f"{what} {key or ''}".strip(), self.location) from exc
        except BotoCoreError as exc:
            raise translate(exc, f"{what} {key or ''}".strip(), self.location) from exc

    def lock_enabled(self) -> bool:
        if self._lock_enabled is None:
            wanted = self.settings.object_lock
            if wanted is False:
                self._lock_enabled = False
            else:
                from botocore.exceptions import ClientError

                try:
                    conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                    enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
                except ClientError as exc:
                    code = str(exc.response.get("Error", {}).get("Code", ""))
                    if code != "ObjectLockConfigurationNotFoundError":
                        raise translate(exc, "reading the object lock configuration", self.location) from exc
                    enabled = False
                except Exception as exc:
                    raise translate(exc, "reading the object lock configuration", self.location) from exc
                if wanted is True and not enabled:
                    raise PermanentError(
                        f"{self.location}: object_lock is true but the bucket has no object lock enabled "
                        "(it can only be enabled when the bucket is created)",
                        code="object_lock_missing",
                    )
                self._lock_enabled = enabled
        return self._lock_enabled

    def locks(self) -> bool:
        return self.lock_enabled()

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
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"}
        if retain_until is not None and self.lock_enabled():
            extra["ObjectLockMode"] = "COMPLIANCE"
            extra["ObjectLockRetainUntilDate"] = retain_until.astimezone(UTC)
        if len(data) >= self.settings.multipart_threshold:
            if self.exists(key):
                return self._compare(key, same, content_addressed)
            from boto3.s3.transfer import TransferConfig

            transfer = TransferConfig(
                multipart_threshold=self.settings.multipart_threshold,
                multipart_chunksize=self.settings.multipart_chunksize,
                use_threads=False,
            )
            self._call(
                "multipart upload of",
                key,
                self.client.upload_fileobj,
                Fileobj=io.BytesIO(data),
                Bucket=self.bucket,
                Key=self._key(key),
                ExtraArgs=extra,
                Config=transfer,
            )
            return True
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*", **extra
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return self._compare(key, same, content_addressed)
            raise translate(exc, f"writing {key}", self.location) from exc
        except Exception as exc:
            raise translate(exc, f"writing {key}", self.location) from exc
        return True

    # -- batches: an acknowledged PUT is durable, so staging only holds the bytes until commit ---------
    def stage(
        self, key: str, data: bytes, *, retain_until: datetime | None
    ) -> tuple[str, bytes, datetime | None]:
        return key, data, retain_until

    def commit(
        self,
        staged: tuple[str, bytes, datetime | None],
        *,
        same: Callable[[bytes], bool],
        content_addressed: bool,
    ) -> bool:
        key, data, retain_until = staged
        return self.put_once(
            key, data, same=same, retain_until=retain_until, content_addressed=content_addressed
        )

    def discard(self, staged: tuple[str, bytes, datetime | None]) -> None:
        """Nothing was written."""

    def barrier(self) -> None:
        """Every acknowledged PUT is already durable."""

    def _compare(self, key: str, same: Callable[[bytes], bool], content_addressed: bool) -> bool:
        if same(self.get(key)):
            return False
        raise WriteOnceViolation(key, self.location, content_addressed=content_addressed)

    def get(self, key: str) -> bytes:
        response = self._call("reading", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]
        try:
            return bytes(self._call("reading", key, body.read))
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self._call("looking up", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        cut = len(self.prefix)
        iterator = iter(pages)
        while True:
            page = self._call("listing", None, lambda: next(iterator, None))
            if page is None:
                return
            for item in page.get("Contents", []):
                yield item["Key"][cut:]

    def children(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix if prefix.endswith("/") else prefix + "/")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/")
        iterator = iter(pages)
        names: list[str] = []
        while True:
            page = self._call("listing", None, lambda: next(iterator, None))
            if page is None:
                break
            names.extend(p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        yield from sorted(names)

    def delete(self, key: str) -> None:
        """Delete every version of ``key`` (in a versioned bucket a plain delete only hides it)."""
        full = self._key(key)
        listing = self._call(
            "listing versions of", key, self.client.list_object_versions, Bucket=self.bucket, Prefix=full
        )
        versions = [
            v for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []) if v["Key"] == full
        ]
        if not versions:
            raise ObjectMissing(key, self.location)
        from botocore.exceptions import ClientError

        for version in versions:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=version["VersionId"])
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code == "AccessDenied":
                    until = self.retention_of(key)
                    if until is not None:
                        raise RetentionActive(
                            f"{key} is retained until {until.isoformat()} by the bucket's object lock",
                            code="retention_active",
                            retain_until=until.isoformat(),
                        ) from exc
                raise translate(exc, f"deleting {key}", self.location) from exc

    def retention_of(self, key: str) -> datetime | None:
        """The object's lock (HeadObject carries it; GetObjectRetention is not in every store)."""
        if not self.lock_enabled():
            return None
        try:
            head = self._call(
                "looking up", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key)
            )
        except ObjectMissing:
            return None
        until = head.get("ObjectLockRetainUntilDate")
        return until.astimezone(UTC) if isinstance(until, datetime) else None

    def health(self) -> Health:
        try:
            self._call("checking the bucket", None, self.client.head_bucket, Bucket=self.bucket)
            lock = self.lock_enabled()
        except HubError as exc:
            return Health(False, str(exc))
        return Health(True, f"{self.location} reachable; object lock {'on' if lock else 'off'}")

    def close(self) -> None:
        self.client.close()


class ArchiveS3(Sink, Inventory):
    """Archive every invoice version and its originals in an S3-compatible bucket, write-once."""

    type_name = "archive.s3"
    Settings = ArchiveS3Settings

    def __init__(self, settings: ArchiveS3Settings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self.settings: ArchiveS3Settings = settings
        self.store = S3Store(settings)
        self.archive = Archive(self.store, settings, name=context.name)

    def deliver(self, request: DeliveryRequest) -> Receipt:
        return self.archive.deliver(request, load_document=self.context.load_document)

    def deliver_batch(self, requests: list[DeliveryRequest]) -> list[Receipt | HubError]:
        """Deliver many at once (see ``Archive.deliver_batch``)."""
        return self.archive.deliver_batch(requests, load_document=self.context.load_document)

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterable[InventoryItem]:
        return self.archive.inventory(since, until)

    def delete(self, ref: str, *, now: datetime | None = None) -> list[str]:
        """Delete an archived invoice version by its reference; refused with ``PermanentError``
        ("retained until ...") before its retention ends, by the archive and by the bucket's lock."""
        return self.archive.delete(ref, now=now)

    def health(self) -> Health:
        return self.archive.health()

    def close(self) -> None:
        self.store.close()


@hookimpl
def hub_register_connector_types() -> list[type[Any]]:
    return [ArchiveS3]


@hookimpl
def hub_register_commands(cli: Any) -> None:
    """``hub archive verify | export | verify-export`` (also when archive_fs is disabled)."""
    register_commands(cli)

"""The message bus (kombu, and py-amqp underneath it on RabbitMQ). All bus code lives here.

Messages carry delivery ids, never invoices: the ledger is the source of truth and the outbox, so a
lost message is republished by the relay and a duplicated one finds its delivery already claimed.
One durable queue per destination (``<prefix>.<destination>``) on a durable direct exchange; bodies
are JSON (``BusMessage``), persistent (``delivery_mode=2``), ``content_type="application/json"``.

On RabbitMQ (``amqp://``, ``pyamqp://``) publishing uses publisher confirms **in windows**: a call to
``publish_many`` sends every message of the call, then waits once for the broker to confirm them all
(kombu's ``confirm_publish`` waits for each message before sending the next, which measured ~1,400
msg/s here against ~5,000 without confirms). A message is only counted as published once confirmed;
a nack, a timeout or a lost connection raises ``TransientError`` and the caller leaves the
deliveries to the relay. The consumer reconnects with exponential backoff after a lost connection or
a consumer cancelled by the broker (queue deleted, node stopped); unacked messages go back to the
queue, and the ledger claim makes a redelivered message harmless.

kombu's ``memory://`` state is process-global, so a memory bus gets a unique prefix per instance.

``filesystem://`` (kombu's filesystem transport) is a bus for several processes on one machine with
no server: each message is a file in a folder (``filesystem:///path``, or ``<data_dir>/bus`` for a
bare ``filesystem://``), taken by one consumer. It is what ``hub run --workers N`` uses on the
embedded default (SQLite). A message taken by a process that then dies is gone (there is no broker
to give it back): the supervisor has the relay publish every pending delivery again when a worker
process dies and at start-up, and the ledger claim makes the copies harmless.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import amqp
import orjson
import structlog
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import ChannelError, KombuError
from kombu.messaging import Producer
from kombu.transport import filesystem as kombu_filesystem
from kombu.utils import json as kombu_json
from pydantic import BaseModel, ConfigDict

from hub.errors import HubError, TransientError

log = structlog.get_logger()

#: Seconds to wait for the broker to confirm a window of published messages.
CONFIRM_TIMEOUT = 30.0
#: Reconnect backoff of a consumer: first wait, cap.
RECONNECT_FIRST, RECONNECT_MAX = 0.2, 5.0

_BUS_ERRORS: tuple[type[BaseException], ...] = (KombuError, OSError, amqp.exceptions.AMQPError)
#: Publishing also gives up on a confirm that does not come in time.
_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (*_BUS_ERRORS, TimeoutError)


class _HandlerFailed(Exception):
    """The message handler raised something unexpected: drop the connection, the message goes back."""


_CONSUME_ERRORS: tuple[type[BaseException], ...] = (*_BUS_ERRORS, _HandlerFailed)


class _FilesChannel(kombu_filesystem.Channel):
    """kombu's filesystem channel, with messages that appear whole.

    kombu creates a message file under its final name and then writes it: a consumer in another process
    can take the file in between, read nothing and fail to decode it (seen under load; the consumer
    thread died). Here the message is written under a name no consumer picks up and then renamed into
    place, which is atomic on one filesystem."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = self.data_folder_out
        part = os.path.join(folder, f"part-{uuid.uuid4().hex}")
        try:
            with open(part, "wb") as f:
                f.write(kombu_json.dumps(payload).encode())
            os.replace(part, os.path.join(folder, name))
        except OSError as exc:
            raise ChannelError(f"cannot add message file {name!r} to {folder}: {exc}") from exc


class _FilesTransport(kombu_filesystem.Transport):
    Channel = _FilesChannel


class BusMessage(BaseModel):
    """What travels on the bus: a batch of delivery ids for one destination."""

    model_config = ConfigDict(extra="forbid")

    destination: str
    delivery_ids: list[int]
    trace_id: str | None = None


class _ConfirmingPublisher:
    """One py-amqp channel in confirm mode: publish a window of messages, then wait for all acks."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # amqp.Channel under kombu's pyamqp transport, whose confirm mode kombu's own Channel type lacks.
        self.channel: Any = cast(Any, conn.default_channel)
        self.channel.confirm_select()
        self.sent = 0
        self.acked = 0
        self.nacked: list[int] = []
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        # RabbitMQ confirms in order on one channel; ``multiple`` acks everything up to ``tag``.
        self.acked = max(self.acked, tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked.append(tag)
        self.acked = max(self.acked, tag)

    def publish_window(self, exchange: str, messages: list[tuple[str, bytes]]) -> None:
        start_nacks = len(self.nacked)
        for routing_key, body in messages:
            msg = amqp.Message(
                body, content_type="application/json", content_encoding="utf-8", delivery_mode=2
            )
            self.channel.basic_publish(msg, exchange=exchange, routing_key=routing_key)
            self.sent += 1
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        transport = self.conn.connection  # the amqp.Connection
        while self.acked < self.sent:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.sent - self.acked} message(s) not confirmed in {CONFIRM_TIMEOUT}s")
            try:
                transport.drain_events(timeout=min(left, 1.0))
            except TimeoutError:
                continue
        if len(self.nacked) > start_nacks:
            raise OSError(f"the broker refused (nacked) {len(self.nacked) - start_nacks} message(s)")

    def close(self) -> None:
        self.conn.release()


class Bus:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "invoice-hub",
        polling_interval: float = 0.005,
        message_size: int = 500,
        data_dir: str | Path | None = None,
    ) -> None:
        self.url = url
        self.is_memory = url.startswith("memory://")
        self.is_amqp = url.split("://", 1)[0] in ("amqp", "pyamqp", "amqps")
        self.is_files = url.startswith("filesystem://")
        self.prefix = f"{prefix}.{uuid.uuid4().hex[:8]}" if self.is_memory else prefix
        #: delivery ids per message: a message is one claim and one outcome transaction at the worker,
        #: each with a fixed cost (statements built and run, a commit) of ~10 ms here; 500 ids rather
        #: than 200 measured 8 % (threads) and 14 % (a worker process) more invoices/s end to end in 3
        #: alternating pairs each (docs/benchmarks.md, stop 13). A default intake batch (200 items)
        #: makes messages of 200 either way.
        self.message_size = message_size
        self.transport_options: dict[str, Any] = {}
        if self.is_memory:
            self.transport_options["polling_interval"] = polling_interval
        if self.is_files:
            self.folder = self._files_folder(url, data_dir)
            for sub in ("queue", "control"):
                (self.folder / sub).mkdir(parents=True, exist_ok=True)
            self.transport_options.update(
                data_folder_in=str(self.folder / "queue"),
                data_folder_out=str(self.folder / "queue"),
                control_folder=str(self.folder / "control"),
                polling_interval=0.05,
            )
        self.exchange = Exchange(self.prefix, type="direct", durable=True)
        self._local = threading.local()
        self._declared: set[str] = set()

    @staticmethod
    def _files_folder(url: str, data_dir: str | Path | None) -> Path:
        path = url[len("filesystem://") :]
        if path:
            return Path(path)
        if data_dir is None:
            raise HubError("bus filesystem:// needs a folder: filesystem:///path/to/folder")
        return Path(data_dir) / "bus"

    def connection(self) -> Connection:
        if self.is_files:
            return Connection(transport=_FilesTransport, transport_options=self.transport_options)
        return Connection(self.url, transport_options=self.transport_options)

    def queue(self, destination: str) -> Queue:
        return Queue(
            f"{self.prefix}.{destination}",
            exchange=self.exchange,
            routing_key=destination,
            durable=True,
        )

    def declare(self, destinations: Iterable[str]) -> None:
        """Declare the exchange and every destination's queue (a memory transport drops messages
        published to an exchange with no queue bound)."""
        try:
            with self.connection() as conn:
                for destination in destinations:
                    if self.is_files:
                        # kombu keeps the bindings it declared in process-wide state, but the binding
                        # must be written into this bus's folder: a second bus in the same process
                        # (another folder) would otherwise route its messages nowhere.
                        conn.transport.state.binding_delete(
                            self.queue(destination).name, self.exchange.name, destination
                        )
                    self.queue(destination)(conn.default_channel).declare()
                    self._declared.add(destination)
        except _BUS_ERRORS as exc:
            raise TransientError(f"cannot declare queues on the bus {self.safe_url}: {exc}") from exc

    # -----------------------------------------------------------------------------------------------
    # Publishing
    # -----------------------------------------------------------------------------------------------
    def _encode(self, destination: str, ids: list[int], trace_id: str | None) -> bytes:
        return orjson.dumps(
            BusMessage(destination=destination, delivery_ids=ids, trace_id=trace_id).model_dump()
        )

    def publish(self, destination: str, delivery_ids: list[int], trace_id: str | None = None) -> None:
        self.publish_many({destination: delivery_ids}, trace_id)

    def publish_many(
        self, batches: dict[str, list[int]], trace_id: str | None = None, chunk: int | None = None
    ) -> None:
        """Publish every batch (split into messages of ``chunk`` ids); returns once the broker has
        confirmed them all. ``TransientError`` when it could not: some may have gone out, which the
        ledger claim makes harmless when the relay publishes them again."""
        size = chunk or self.message_size
        messages = [
            (dest, self._encode(dest, ids[i : i + size], trace_id))
            for dest, ids in batches.items()
            for i in range(0, len(ids), size)
        ]
        if not messages:
            return
        try:
            undeclared = {dest for dest, _ in messages} - self._declared
            if undeclared:
                self.declare(sorted(undeclared))
            if self.is_amqp:
                publisher = self._publisher()
                publisher.publish_window(self.exchange.name, messages)
            else:
                producer = self._producer()
                for dest, body in messages:
                    producer.publish(
                        body,
                        routing_key=dest,
                        content_type="application/json",
                        content_encoding="utf-8",
                        delivery_mode=2,
                    )
        except _PUBLISH_ERRORS as exc:
            self._reset_producer()
            raise TransientError(f"cannot publish to the bus {self.safe_url}: {exc}") from exc

    def _publisher(self) -> _ConfirmingPublisher:
        publisher = getattr(self._local, "publisher", None)
        if publisher is None:
            conn = self.connection()
            conn.connect()
            publisher = _ConfirmingPublisher(conn)
            self._local.publisher = publisher
        return publisher

    def _producer(self) -> Producer:
        producer = getattr(self._local, "producer", None)
        if producer is None:
            conn = self.connection()
            producer = Producer(conn.default_channel, exchange=self.exchange)
            self._local.conn = conn
            self._local.producer = producer
        return producer

    def _reset_producer(self) -> None:
        publisher = getattr(self._local, "publisher", None)
        self._local.publisher = None
        if publisher is not None:
            try:
                publisher.close()
            except _BUS_ERRORS as exc:
                log.debug("bus_close_failed", error=str(exc))
        conn = getattr(self._local, "conn", None)
        self._local.producer = None
        if conn is not None:
            conn.release()
            self._local.conn = None

    @property
    def safe_url(self) -> str:
        if self.is_files:
            return f"filesystem://{self.folder}"
        return Connection(self.url).as_uri(include_password=False)

    # -----------------------------------------------------------------------------------------------
    # Consuming
    # -----------------------------------------------------------------------------------------------
    def consume(
        self,
        destinations: list[str],
        handle: Callable[[BusMessage], None],
        stop: threading.Event,
        *,
        prefetch: int = 2,
    ) -> None:
        """Consume until ``stop`` is set; ``handle`` runs before the ack, so a crash redelivers.

        A lost connection or a consumer cancelled by the broker reconnects with exponential backoff
        (0.2 s doubling to 5 s, back to the start after a message went through). The message in hand
        when the connection dropped was not acked: the broker delivers it again, and the ledger
        finds its deliveries already done.
        """

        def on_message(body: Any, message: Any) -> None:
            try:
                msg = BusMessage.model_validate(body if isinstance(body, dict) else orjson.loads(body))
            except ValueError as exc:
                log.error("bus_message_rejected", error=str(exc))
                message.reject()
                return
            try:
                handle(msg)
            except HubError:
                raise  # the ledger is down and the run is stopping: not acked, the broker keeps it
            except Exception as exc:
                # A bug, not a bus problem: keep the message (not acked) and start over on a new
                # connection, so this consumer thread lives on and the broker hands the message out again.
                log.exception("bus_handler_failed", error=f"{type(exc).__name__}: {exc}")
                raise _HandlerFailed(str(exc)) from exc
            message.ack()
            state["ok"] = True

        state = {"ok": False}
        delay = RECONNECT_FIRST
        while not stop.is_set():
            try:
                with self.connection() as conn:
                    conn.connect()
                    queues = [self.queue(d) for d in destinations]
                    with conn.Consumer(
                        queues, callbacks=[on_message], accept=["application/json"], prefetch_count=prefetch
                    ):
                        if state["ok"] or delay > RECONNECT_FIRST:
                            log.info("bus_consumer_connected", bus=self.safe_url)
                        while not stop.is_set():
                            try:
                                conn.drain_events(timeout=0.2)
                            except TimeoutError:
                                continue
                            except ValueError as exc:
                                # A message file that is not a kombu message (truncated, written by
                                # something else): it is off the queue already; the relay publishes
                                # whatever deliveries it carried again. This consumer goes on.
                                log.error("bus_message_unreadable", error=str(exc), bus=self.safe_url)
                                continue
                            if state["ok"]:
                                delay = RECONNECT_FIRST
            except _CONSUME_ERRORS as exc:
                log.warning(
                    "bus_connection_lost",
                    error=f"{type(exc).__name__}: {exc}",
                    bus=self.safe_url,
                    retry_in=delay,
                )
                state["ok"] = False
                stop.wait(delay)
                delay = min(RECONNECT_MAX, delay * 2)

    def close(self) -> None:
        self._reset_producer()

"""The RabbitMQ bus on its own: windowed publisher confirms and a consumer that survives being
cancelled by the broker. Real RabbitMQ, a virtual host of its own per test."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hub.bus import Bus, BusMessage
from tests.accounting import RABBIT_START, Vhost
from tests.conftest import port_open, server_missing

pytestmark = pytest.mark.integration


@pytest.fixture
def bus() -> Iterator[Bus]:
    if not port_open("127.0.0.1", 5672) or shutil.which("rabbitmqctl") is None:
        server_missing("RabbitMQ at 127.0.0.1:5672 (with rabbitmqctl on the PATH)", RABBIT_START)
    with Vhost() as vhost:
        bus = Bus(vhost.url, prefix="test", message_size=50)
        try:
            yield bus
        finally:
            bus.close()


def _consume(bus: Bus, got: list[BusMessage], stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=bus.consume, args=(["erp"], got.append, stop), daemon=True)
    thread.start()
    return thread


def _wait(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_publish_many_splits_into_messages_and_every_id_arrives_once(bus: Bus) -> None:
    bus.declare(["erp"])
    bus.publish_many({"erp": list(range(1, 1001))}, trace_id="t1")  # returns once all 20 are confirmed
    got: list[BusMessage] = []
    stop = threading.Event()
    thread = _consume(bus, got, stop)
    assert _wait(lambda: sum(len(m.delivery_ids) for m in got) >= 1000)
    stop.set()
    thread.join(timeout=10)
    assert len(got) == 20 and all(len(m.delivery_ids) == 50 and m.trace_id == "t1" for m in got)
    assert sorted(i for m in got for i in m.delivery_ids) == list(range(1, 1001))


def test_consumer_cancelled_by_the_broker_reconnects_and_declares_its_queue_again(bus: Bus) -> None:
    bus.declare(["erp"])
    got: list[BusMessage] = []
    stop = threading.Event()
    thread = _consume(bus, got, stop)
    bus.publish("erp", [1])
    assert _wait(lambda: len(got) == 1)
    with bus.connection() as conn:
        bus.queue("erp")(conn.default_channel).delete()  # RabbitMQ sends basic.cancel to the consumer
    # The consumer reconnects and declares the queue again; until then a publish is routed nowhere.
    assert _wait(lambda: bus.publish("erp", [2]) or any(2 in m.delivery_ids for m in got), timeout=20)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the consumer did not stop"
    assert got[0].delivery_ids == [1] and any(m.delivery_ids == [2] for m in got)

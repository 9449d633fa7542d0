"""The ``filesystem://`` bus (``hub run --workers N`` on the embedded default) under concurrent use:
messages appear whole to a consumer in another process, and an unreadable message file does not stop
the consumer."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

from hub.bus import Bus, BusMessage

PUBLISHER = """
import sys
from hub.bus import Bus
bus = Bus("filesystem://", data_dir=sys.argv[1])
bus.declare(["erp"])
for i in range(int(sys.argv[2])):
    bus.publish("erp", [i])
bus.close()
"""


def _consume(bus: Bus, want: int, stop: threading.Event) -> tuple[list[int], threading.Thread]:
    got: list[int] = []

    def handle(msg: BusMessage) -> None:
        got.extend(msg.delivery_ids)
        if len(got) >= want:
            stop.set()

    thread = threading.Thread(target=bus.consume, args=(["erp"], handle, stop), daemon=True)
    thread.start()
    return got, thread


def test_messages_published_by_another_process_arrive_whole(tmp_path: Path) -> None:
    """kombu's own filesystem transport writes a message file in place, where a consumer can take it
    before it holds anything (the consumer thread died on the empty JSON)."""
    count = 1500
    bus = Bus("filesystem://", data_dir=tmp_path)
    bus.declare(["erp"])
    stop = threading.Event()
    got, thread = _consume(bus, count, stop)
    publisher = subprocess.run(
        [sys.executable, "-c", PUBLISHER, str(tmp_path), str(count)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert publisher.returncode == 0, publisher.stderr
    stop.wait(60)
    stop.set()
    thread.join(10)
    assert sorted(got) == list(range(count))
    assert not list((tmp_path / "bus" / "queue").glob("part-*")), "a half-written message was left behind"


def test_an_unreadable_message_file_does_not_stop_the_consumer(tmp_path: Path) -> None:
    bus = Bus("filesystem://", data_dir=tmp_path)
    bus.declare(["erp"])
    queue = bus.queue("erp").name
    # Sorted before any real message: the consumer meets it first.
    (tmp_path / "bus" / "queue" / f"0_{uuid.uuid4()}.{queue}.msg").write_bytes(b'{"body": "trunc')
    bus.publish("erp", [7, 8])
    stop = threading.Event()
    got, thread = _consume(bus, 2, stop)
    assert stop.wait(20), "the consumer stopped at the unreadable file"
    thread.join(10)
    assert got == [7, 8]
    assert not list((tmp_path / "bus" / "queue").iterdir())

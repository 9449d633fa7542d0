"""``generator``: a source that makes ``count`` distinct, valid invoices — for load tests and ``hub bench``.

Point it at a route to find out what a destination (or the hub itself) sustains, with no inbox to
fill first::

    connectors:
      load: {type: generator, settings: {count: 100000}}
      erp:  {type: erp.rest, settings: {...}}
    routes:
      - {from: load, to: erp}

Invoice ``i`` is ``hub.factory``'s invoice ``i`` (a fully digitalised e-invoice with two lines, valid
tax ids and totals), as the hub's JSON form. Building an invoice costs about as much as validating it,
so ``pool`` invoices are built once and invoice ``i`` is pool invoice ``i % pool`` with its own number:
memory stays flat whatever the count. The checkpoint is the next ``i``: a restarted run goes on where
the last one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from hub import ConnectorSettings, Document, Incoming, Source, hookimpl
from hub.factory import invoice_json, invoice_number


class GeneratorSettings(ConnectorSettings):
    #: How many invoices in all (numbered 0 … count − 1).
    count: int = Field(1000, ge=0)
    #: Distinct invoices built up front; the others are copies with their own numbers.
    pool: int = Field(1000, ge=1, le=100_000)
    #: Year of the invoice numbers (a second run with another year makes other invoices).
    year: int = Field(2025, ge=2000, le=2099)


class GeneratorSource(Source):
    type_name = "generator"
    Settings = GeneratorSettings
    settings: GeneratorSettings
    poll_interval = 0.05

    def __init__(self, settings: GeneratorSettings, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, context)
        self._pool: list[tuple[bytes, bytes]] | None = None

    def _payload(self, i: int) -> bytes:
        s = self.settings
        if self._pool is None:
            size = min(s.pool, max(s.count, 1))
            self._pool = [
                (invoice_json(k, year=s.year), invoice_number(k, s.year).encode()) for k in range(size)
            ]
        content, number = self._pool[i % len(self._pool)]
        if i < len(self._pool):
            return content
        return content.replace(number, invoice_number(i, s.year).encode(), 1)

    def poll(self, checkpoint: str | None) -> Iterator[Incoming]:
        start = int(checkpoint or 0)
        for i in range(start, self.settings.count):
            doc = Document(
                content=self._payload(i),
                media_type="application/json",
                filename=f"generated-{i}.json",
                source=self.name,
            )
            yield Incoming(documents=[doc], key=str(i), checkpoint=str(i + 1))


@hookimpl
def hub_register_connector_types() -> list[type]:
    return [GeneratorSource]

"""Routes: which destinations an event from a source goes to (``routes:`` in hub.yaml)."""

from __future__ import annotations

from hub.config import HubConfig, Route, RouteFilters
from hub.models import Invoice


def matches(filters: RouteFilters, event_type: str, invoice: Invoice) -> bool:
    if filters.event_types is not None and event_type not in filters.event_types:
        return False
    if filters.kinds is not None and invoice.kind not in filters.kinds:
        return False
    if filters.statuses is not None and invoice.status not in filters.statuses:
        return False
    if filters.seller_tax_ids is not None and invoice.seller.tax_id not in filters.seller_tax_ids:
        return False
    if filters.buyer_tax_ids is not None and invoice.buyer.tax_id not in filters.buyer_tax_ids:
        return False
    if filters.currencies is not None and invoice.currency not in filters.currencies:
        return False
    if filters.min_gross is not None and invoice.totals.gross < filters.min_gross:
        return False
    return not (filters.max_gross is not None and invoice.totals.gross > filters.max_gross)


def destinations_for(
    config: HubConfig, source: str, event_type: str, invoice: Invoice
) -> list[tuple[Route, str]]:
    """(route, destination) pairs; a destination reached by two routes is delivered to once (first route)."""
    out: list[tuple[Route, str]] = []
    seen: set[str] = set()
    for route in config.routes:
        if source not in route.from_ or not matches(route.filters, event_type, invoice):
            continue
        for destination in route.to:
            if destination == source or destination in seen:
                continue
            if not config.connectors[destination].enabled:
                continue
            seen.add(destination)
            out.append((route, destination))
    return out


def route_named(config: HubConfig, name: str | None) -> Route | None:
    if name is None:
        return None
    return next((r for r in config.routes if r.name == name), None)

"""Acme Ledger for invoice-hub: the plugin module the ``invoice_hub`` entry point names.

The hub imports this module when it starts, checks ``HUB_API`` against its own API version (a
different major version is refused with a message), and calls the hooks below once.
"""

from __future__ import annotations

from hub import Connector, hookimpl

from invoice_hub_acme_ledger.connector import AcmeLedger, AcmeLedgerSettings

#: The hub API this plugin is built for (hub.HUB_API_VERSION when it was generated).
HUB_API = "1.0"

__all__ = ["HUB_API", "AcmeLedger", "AcmeLedgerSettings", "hub_register_connector_types"]


@hookimpl
def hub_register_connector_types() -> list[type[Connector]]:
    return [AcmeLedger]

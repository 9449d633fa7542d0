"""Hook specifications (contract): how plugins plug into the hub.

Hooks register things; per-invoice work goes to the objects they register, so one failing plugin is
one failed delivery, never a broken hook loop. Every hook is called by keyword through the facade in
``hub.plugins``. Specs only grow by adding arguments; implementations may accept fewer.

A plugin is a module (or object) registered through the entry point group ``invoice_hub``::

    [project.entry-points.invoice_hub]
    acme = "invoice_hub_acme.plugin"

and implements any of these with ``@hub.hookimpl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from hub.connectors import Connector, Parser
    from hub.validation import Rule

PROJECT = "invoice_hub"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------------
# Registration (called once per hub, when the plugin manager is built)
# ---------------------------------------------------------------------------------------------------
@hookspec
def hub_register_connector_types() -> list[type[Connector]]:
    """Return connector classes this plugin provides.

    Called once when the hub starts. Each class has a unique ``type_name`` (``archive.fs``) that
    ``hub.yaml`` names under ``connectors.<name>.type``, a ``Settings`` model, and the role base
    classes it implements (``Source``, ``Sink``, ``Inventory``). When two plugins register the same
    type name the one registered later (a vendor's, over the first-party default) wins and ``hub
    plugins`` shows the override.

    .. versionadded:: 0.1
    """


@hookspec
def hub_register_parsers() -> list[Parser]:
    """Return document parser instances.

    Called once when the hub starts. For every document the hub asks parsers in priority order
    (``Parser.priority``, highest first) whether they ``claims()`` it; the first that does reads it.

    .. versionadded:: 0.1
    """


@hookspec
def hub_register_rules() -> list[Rule]:
    """Return extra validation rules (objects with ``name`` and ``check(invoice)``).

    Called once when the hub starts. Each rule yields ``hub.errors.Problem`` objects with a field
    path and a severity (``error`` sends the invoice to the dead-letter queue, ``warning`` is kept
    with the version). A rule that raises is reported as a problem of its own.

    .. versionadded:: 0.1
    """


@hookspec
def hub_register_commands(cli: click.Group) -> None:
    """Add CLI subcommands to ``cli`` (a click group), e.g. ``@cli.command()``.

    Called once when the ``hub`` command starts, before arguments are parsed.

    .. versionadded:: 0.1
    """


@hookspec
def hub_register_observers() -> list[Any]:
    """Return observer objects that want to hear of delivery outcomes (metrics, audit feeds).

    An observer implements any of ``on_intake(source, outcome)``, ``on_delivery(delivery_id,
    destination, state, error)``; each call is isolated, so an observer that raises is logged and
    never stops the flow.

    .. versionadded:: 0.1
    """

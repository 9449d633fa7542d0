"""Plugin manager factory and the typed facade the core calls hooks through.

Load order: specs → blocked (disabled in hub.yaml) → entry points (first-party and vendors' alike,
group ``invoice_hub``) → ``check_pending()``. A plugin that fails to import, or whose registration
hook raises, is reported (name, distribution, error) and left out; the hub goes on without it.
Nothing here runs at import time and there is no module-level manager: ``build_plugins()`` is called
once per hub.
"""

from __future__ import annotations

import importlib.metadata
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from hub import hookspecs
from hub.connectors import HUB_API_VERSION, Connector, Parser
from hub.errors import PluginError
from hub.validation import Rule

ENTRY_POINT_GROUP = "invoice_hub"
FIRST_PARTY = "invoice-hub"


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    connector_types: list[str] = field(default_factory=list)
    parsers: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class HubPlugins:
    """What the loaded plugins registered, gathered once; the core reads these, never ``pm.hook``."""

    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]
    connector_types: dict[str, type[Connector]]
    parsers: list[Parser]
    rules: list[Rule]
    observers: list[Any]
    failures: list[PluginInfo]
    #: Plugin objects given in code (``extra``), not only entry points: another process (the intake
    #: helper, hub/preparer.py) could not build the same plugins.
    in_code: bool = False

    def connector_type(self, type_name: str) -> type[Connector]:
        try:
            return self.connector_types[type_name]
        except KeyError:
            known = ", ".join(sorted(self.connector_types)) or "none"
            raise PluginError(f"unknown connector type {type_name!r} (known: {known})") from None

    def register_commands(self, cli: Any) -> list[PluginInfo]:
        """Call ``hub_register_commands`` plugin by plugin so one broken plugin cannot hide the rest."""
        failed = []
        for name, plugin in self.pm.list_name_plugin():
            impl = getattr(plugin, "hub_register_commands", None)
            if impl is None:
                continue
            try:
                impl(cli=cli)
            except Exception as exc:
                info = self.infos.get(name) or PluginInfo(name, None, None)
                info.error = f"hub_register_commands raised {type(exc).__name__}: {exc}; " + _fix(info)
                failed.append(info)
        return failed


def _fix(info: PluginInfo) -> str:
    """What to do about a plugin that did not load (the end of the first line `hub plugins` shows)."""
    where = f"{info.distribution} {info.version}" if info.distribution else f"plugin {info.name!r}"
    return (
        f"to fix: upgrade or repair {where} (pip install --upgrade {info.distribution or info.name}) "
        f"or leave it out with `plugins: {{disabled: [{info.name}]}}` in hub.yaml"
    )


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _call(plugin: object, hook: str) -> list[Any]:
    impl = getattr(plugin, hook, None)
    if impl is None:
        return []
    result = impl()
    return list(result or [])


def build_plugins(
    *,
    blocked: Iterable[str] = (),
    allowed: Iterable[str] | None = None,
    extra: Iterable[tuple[str, object]] = (),
) -> HubPlugins:
    """Build the plugin manager for one hub.

    ``blocked`` names entry points not to load; ``allowed``, when given, is the allow-list (anything
    else is reported as not allowed); ``extra`` registers in-process plugins (tests, embedding).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = set(blocked)
    allow = set(allowed) if allowed is not None else None
    infos: dict[str, PluginInfo] = {}
    failures: list[PluginInfo] = []

    candidates: list[tuple[str, Any, PluginInfo]] = []
    # First-party plugins first, so a vendor's connector type of the same name overrides the default.
    entry_points = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda e: (_dist_of(e)[0] != FIRST_PARTY, e.name),
    )
    for ep in entry_points:
        dist_name, version = _dist_of(ep)
        info = PluginInfo(ep.name, dist_name, version)
        if ep.name in blocked:
            pm.set_blocked(ep.name)
            continue
        if allow is not None and ep.name not in allow:
            info.error = "not in plugins.allow of hub.yaml"
            failures.append(info)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            info.error = f"failed to import {ep.value}: {type(exc).__name__}: {exc}; " + _fix(info)
            failures.append(info)
            continue
        candidates.append((ep.name, plugin, info))
    extra = list(extra)
    for name, plugin in extra:
        candidates.append((name, plugin, PluginInfo(name, None, None)))

    connector_types: dict[str, type[Connector]] = {}
    parsers: list[Parser] = []
    rules: list[Rule] = []
    observers: list[Any] = []
    for name, plugin, info in candidates:
        try:
            api = getattr(plugin, "HUB_API", HUB_API_VERSION)
            if str(api).split(".")[0] != HUB_API_VERSION.split(".")[0]:
                raise PluginError(
                    f"built for hub API {api}, this hub speaks {HUB_API_VERSION}; "
                    f"install a version of the plugin made for hub API {HUB_API_VERSION.split('.')[0]}.x"
                )
            pm.register(plugin, name=name)
            types = _call(plugin, "hub_register_connector_types")
            for cls in types:
                if not (isinstance(cls, type) and issubclass(cls, Connector) and cls.type_name):
                    raise PluginError(f"hub_register_connector_types returned {cls!r}, not a Connector class")
                major = str(cls.hub_api).split(".")[0]
                if major != HUB_API_VERSION.split(".")[0]:
                    raise PluginError(
                        f"connector {cls.type_name!r} is built for hub API {cls.hub_api}, "
                        f"this hub speaks {HUB_API_VERSION}"
                    )
            plugin_parsers = _call(plugin, "hub_register_parsers")
            plugin_rules = _call(plugin, "hub_register_rules")
            plugin_observers = _call(plugin, "hub_register_observers")
        except Exception as exc:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            info.error = f"{type(exc).__name__}: {exc}; " + _fix(info)
            info.error += "\n" + "".join(traceback.format_exception(exc)[-3:])
            failures.append(info)
            continue
        for cls in types:
            connector_types[cls.type_name] = cls
        info.connector_types = sorted(cls.type_name for cls in types)
        info.parsers = [p.name or type(p).__name__ for p in plugin_parsers]
        info.hooks = sorted(impl.name for impl in _hookimpls(pm, plugin))
        parsers.extend(plugin_parsers)
        rules.extend(plugin_rules)
        observers.extend(plugin_observers)
        infos[name] = info
    pm.check_pending()
    parsers.sort(key=lambda p: -p.priority)
    return HubPlugins(pm, infos, connector_types, parsers, rules, observers, failures, in_code=bool(extra))


def _hookimpls(pm: pluggy.PluginManager, plugin: object) -> list[Any]:
    callers = pm.get_hookcallers(plugin) or []
    return [caller for caller in callers]

"""hub.yaml: one root pydantic model, unknown keys rejected, every error with its YAML path and line.

``${NAME}`` (or ``${NAME:-default}``) in any string is replaced from the environment when the file
is loaded; a missing variable is an error naming where it was used. Each connector's ``settings`` are
validated by that connector type's own ``Settings`` model (``validate_connectors``), so a typo in a
connector's settings is reported as ``hub.yaml: connectors.archive.settings.pth (line 12): ...``.
Relative paths (ledger file, data folder, connector folders) are relative to the working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.connectors import ConnectorSettings
from hub.errors import ConfigError
from hub.models import InvoiceKind, InvoiceStatus

if TYPE_CHECKING:
    from hub.plugins import HubPlugins


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetryPolicy(_Strict):
    """Exponential backoff with jitter: delay = min(max_delay, initial_delay * multiplier**(attempt-1)),
    plus up to ``jitter`` × delay at random. A ``Retry-After`` the destination gave is a floor: jitter
    may add to it, never shorten it."""

    max_attempts: int = Field(6, ge=1, le=1000)
    initial_delay: float = Field(1.0, ge=0)
    max_delay: float = Field(300.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)


class RouteFilters(_Strict):
    kinds: list[InvoiceKind] | None = None
    statuses: list[InvoiceStatus] | None = None
    seller_tax_ids: list[str] | None = None
    buyer_tax_ids: list[str] | None = None
    currencies: list[str] | None = None
    min_gross: Decimal | None = None
    max_gross: Decimal | None = None
    event_types: list[Literal["invoice.received", "invoice.status_changed"]] | None = None


class Route(_Strict):
    name: str | None = None
    from_: list[str] = Field(alias="from")
    to: list[str]
    filters: RouteFilters = Field(default_factory=RouteFilters)
    on_amendment: Literal["deliver", "dead_letter", "skip"] = "deliver"
    retry: RetryPolicy | None = None

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ConnectorConfig(_Strict):
    type: str
    enabled: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class PluginsConfig(_Strict):
    disabled: list[str] = Field(default_factory=list)
    allow: list[str] | None = None


class WorkerConfig(_Strict):
    threads: int = Field(4, ge=1, le=256)
    #: Items a source's batch holds at most: one intake transaction, one bus message per destination.
    batch_size: int = Field(500, ge=1, le=10_000)
    #: ... or fewer, once their documents weigh this many bytes together (a folder of files of a hundred
    #: invoices each, an IMAP box of scanned PDFs): what a batch costs in memory and in one transaction
    #: grows with its bytes, not with its count of items.
    batch_bytes: int = Field(4 * 1024 * 1024, ge=1)
    #: Seconds a claimed delivery stays claimed before another process may take it over.
    lease_seconds: float = Field(300.0, gt=0)
    #: Seconds between outbox relays (republishing pending and due retries).
    relay_interval: float = Field(1.0, gt=0)
    #: Parse, validate and hash big batches in a helper process beside the ledger writes (hub.preparer),
    #: on a machine with two or more cores and with ``batch_size`` of 100 or more.
    intake_helper: bool = True


class HubConfig(_Strict):
    ledger: str = "sqlite:///.hub/ledger.db"
    bus: str = "memory://"
    data_dir: Path = Path(".hub")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    connectors: dict[str, ConnectorConfig] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    reconcile: list[dict[str, Any]] = Field(default_factory=list)
    http: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _routes_name_connectors(self) -> HubConfig:
        for i, route in enumerate(self.routes):
            if route.name is None:
                route.name = f"route-{i + 1}"
            for key, names in (("from", route.from_), ("to", route.to)):
                for j, name in enumerate(names):
                    if name not in self.connectors:
                        known = ", ".join(sorted(self.connectors)) or "none"
                        raise ValueError(
                            f"routes.{i}.{key}.{j}: no connector named {name!r} (connectors: {known})"
                        )
        return self

    def retry_for(self, route: Route | None, destination: str) -> RetryPolicy:
        if route is not None and route.retry is not None:
            return route.retry
        conn = self.connectors.get(destination)
        if conn is not None and conn.retry is not None:
            return conn.retry
        return self.retry


# ---------------------------------------------------------------------------------------------------
# Loading with YAML paths and lines
# ---------------------------------------------------------------------------------------------------
@dataclass
class LoadedConfig:
    config: HubConfig
    path: Path
    lines: dict[tuple[str, ...], int]

    def where(self, *loc: Any) -> str:
        return _where(self.path, self.lines, tuple(str(p) for p in loc))


def _where(path: Path, lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> str:
    dotted = ".".join(loc) or "(top level)"
    probe = loc
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe)
    return f"{path}: {dotted}" + (f" (line {line})" if line else "")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _node_to_python(
    node: yaml.Node, loc: tuple[str, ...], lines: dict[tuple[str, ...], int], path: Path
) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            if key in out:
                raise ConfigError(f"key {key!r} appears twice", location=_where(path, lines, (*loc, key)))
            lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = _node_to_python(value_node, (*loc, key), lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(item, (*loc, str(i)), lines, path) for i, item in enumerate(node.value)]
    value = yaml.safe_load(yaml.serialize(node))
    if isinstance(value, str) and "${" in value:

        def env(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set", location=_where(path, lines, loc))

        value = _ENV.sub(env, value)
    return value


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate hub.yaml (the root model only; see ``validate_connectors`` for settings)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", location=str(path)) from exc
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} (line {mark.line + 1})" if mark else str(path)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", location=where) from exc
    lines: dict[tuple[str, ...], int] = {}
    data = {} if root is None else _node_to_python(root, (), lines, path)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", location=str(path))
    try:
        config = HubConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _config_error(exc, path, lines, ()) from None
    return LoadedConfig(config, path, lines)


def _config_error(
    exc: pydantic.ValidationError, path: Path, lines: dict[tuple[str, ...], int], prefix: tuple[str, ...]
) -> ConfigError:
    messages = []
    for err in exc.errors():
        loc = (*prefix, *(str(p) for p in err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if msg.startswith("Value error, routes."):
            # Our own cross-field check carries its own path.
            inner_loc, _, inner_msg = msg.removeprefix("Value error, ").partition(": ")
            loc, msg = tuple(inner_loc.split(".")), inner_msg
        messages.append(f"{_where(path, lines, loc)}: {msg}")
    error = ConfigError("\n".join(messages))
    error.context["errors"] = messages
    return error


def validate_connectors(loaded: LoadedConfig, plugins: HubPlugins) -> dict[str, ConnectorSettings]:
    """Validate each enabled connector's ``settings`` with its type's Settings model."""
    out: dict[str, ConnectorSettings] = {}
    problems: list[str] = []
    for name, conn in loaded.config.connectors.items():
        if not conn.enabled:
            continue
        cls = plugins.connector_types.get(conn.type)
        if cls is None:
            known = ", ".join(sorted(plugins.connector_types)) or "none"
            failed = [f.name for f in plugins.failures]
            hint = f"; plugins that failed to load: {', '.join(failed)} (see `hub plugins`)" if failed else ""
            problems.append(
                f"{loaded.where('connectors', name, 'type')}: unknown connector type {conn.type!r} "
                f"(known: {known}){hint}"
            )
            continue
        try:
            out[name] = cls.Settings.model_validate(conn.settings)
        except pydantic.ValidationError as exc:
            problems.append(
                str(_config_error(exc, loaded.path, loaded.lines, ("connectors", name, "settings")))
            )
    if problems:
        error = ConfigError("\n".join(problems))
        error.context["errors"] = problems
        raise error
    return out

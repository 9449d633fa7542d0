"""Start a sandbox: ``python -m contrib.sandbox nuonuo --port 8765 [--option key=value ...]``.

The name picks the module ``contrib.sandbox.<name>`` (nuonuo, baiwang, odoo, erpnext, ...), which must
expose ``create_app(**options)`` and ``DEFAULT_PORT``. ``--option`` passes keyword options to
``create_app`` (values are read as JSON when they parse, else kept as text); ``--faults`` takes a JSON
object of faults for the platform sandboxes (see README.md).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from typing import Any

import uvicorn

KNOWN = ("nuonuo", "baiwang", "odoo", "erpnext")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrib.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"sandbox module: {', '.join(KNOWN)} (or any contrib.sandbox.<name>)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: the module's DEFAULT_PORT")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--faults", default=None, metavar="JSON", help="e.g. '{\"error_rate\": 0.2}'")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    if not args.name.isidentifier():
        parser.error(f"not a sandbox name: {args.name!r}")
    try:
        module = importlib.import_module(f"contrib.sandbox.{args.name}")
    except ModuleNotFoundError as exc:
        parser.error(f"no sandbox named {args.name!r} ({exc})")
    if not hasattr(module, "create_app"):
        parser.error(f"contrib.sandbox.{args.name} has no create_app()")

    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"--option takes KEY=VALUE, got {item!r}")
        options[key] = _value(value)
    if args.faults is not None:
        faults = _value(args.faults)
        if not isinstance(faults, dict):
            parser.error("--faults takes a JSON object")
        options["faults"] = faults
    accepted = inspect.signature(module.create_app).parameters
    unknown = [
        k
        for k in options
        if k not in accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    ]
    if unknown:
        parser.error(
            f"{args.name} does not take option(s) {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )

    app = module.create_app(**options)
    port = args.port if args.port is not None else getattr(module, "DEFAULT_PORT", 8765)
    print(f"{args.name} sandbox on http://{args.host}:{port}  (stats: /_sandbox/stats)", file=sys.stderr)
    own_date = getattr(getattr(app, "state", None), "sends_date_header", False)
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        ws="none",
        lifespan="off",
        date_header=not own_date,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

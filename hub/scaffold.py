"""``hub new-plugin NAME``: write a ready vendor package ``invoice-hub-NAME/`` from the templates in
``hub/scaffold_templates/``.

The package has a ``pyproject.toml`` with the ``invoice_hub`` entry point and a dependency on
invoice-hub, a connector (sink + inventory + health, a Settings model with a SecretStr token) that
works against a stand-in backend in a local folder, tests wired to the conformance kit
(``hub.testing.ConnectorContract``) that pass as generated, and a README. ``pip install -e`` it and
``hub plugins`` lists it at once.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import click

from hub import __version__
from hub.connectors import HUB_API_VERSION

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

#: template file → path inside the generated package (``{module}`` is the import package)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "__init__.py.tmpl": "{module}/__init__.py",
    "connector.py.tmpl": "{module}/connector.py",
    "backend.py.tmpl": "{module}/backend.py",
    "test_conformance.py.tmpl": "tests/test_conformance.py",
}


def names(name: str) -> dict[str, str]:
    """Every spelling of ``name`` the templates use (``acme-ledger`` → ``AcmeLedger``, ...)."""
    if not _NAME.match(name):
        raise click.BadParameter(
            f"{name!r}: use lower-case letters and digits, words joined by '-' or '_' (e.g. acme-ledger)",
            param_hint="NAME",
        )
    words = re.split(r"[-_]", name)
    ident = "_".join(words)
    return {
        "name": name,
        "ident": ident,
        "module": f"invoice_hub_{ident}",
        "dist": f"invoice-hub-{'-'.join(words)}",
        "class_name": "".join(w.capitalize() for w in words),
        "title": " ".join(w.capitalize() for w in words),
        "type_name": ".".join(words),
        "env": ident.upper(),
        "hub_api": HUB_API_VERSION,
        "hub_version": __version__,
    }


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.search(r"\{\{[a-z_]+\}\}", text)
    if left:
        raise RuntimeError(f"template placeholder {left.group(0)} has no value")
    return text


def create_plugin(name: str, directory: Path) -> Path:
    """Write ``invoice-hub-NAME/`` under ``directory``; refuses to overwrite anything."""
    values = names(name)
    target = directory / values["dist"]
    if target.exists() and any(target.iterdir()):
        raise click.ClickException(f"{target} exists and is not empty; choose another --dir or remove it")
    templates = resources.files("hub.scaffold_templates")
    for template, relative in FILES.items():
        path = target / relative.format(module=values["module"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(templates.joinpath(template).read_text(encoding="utf-8"), values), "utf-8")
    return target


@click.command("new-plugin")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the invoice-hub-NAME folder.",
)
def new_plugin(name: str, directory: Path) -> None:
    """Create a connector plugin package invoice-hub-NAME (entry point, connector, kit tests, README)."""
    target = create_plugin(name, directory)
    values = names(name)
    click.echo(f"created {target} (connector type {values['type_name']!r}, entry point {name!r})")
    click.echo(f"next: pip install -e {target} && hub plugins && pytest {target}")

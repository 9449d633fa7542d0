"""Sandboxes of third-party APIs (e-invoice platforms, ERPs) that follow their documented protocols.

Each module exposes ``create_app(**options)`` (an ASGI app) and ``DEFAULT_PORT``; start one with
``python -m contrib.sandbox <name> --port <port>`` (see README.md).
"""

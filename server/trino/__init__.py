"""The Trino client REST protocol in front of the gateway (see routes.py)."""
from server.trino.routes import TrinoOptions, routes

__all__ = ["TrinoOptions", "routes"]

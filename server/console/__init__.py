"""The web console: a static single-page app served by the domain server at /console.

    from server.console import routes
    app = create_app(state, extra_routes=routes(state))

Every asset ships in server/console/static/ and is served by the server itself (no CDN) with
a strict Content-Security-Policy. The app talks to the /v1 JSON API with a bearer token; the
few calls /v1 has no endpoint for (password sign-in, sign-out, ledger history for owners) live under /console/api and are mounted only when a ServerState is given.
"""
from server.console.assets import ASSETS, Asset, load_assets
from server.console.routes import routes
from server.console.security import CONTENT_SECURITY_POLICY, security_headers

__all__ = ["ASSETS", "Asset", "CONTENT_SECURITY_POLICY", "load_assets", "routes",
           "security_headers"]

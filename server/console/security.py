"""Response headers for every console response.

The console never needs anything but its own origin: scripts and styles are files served
here (no inline code, no eval), charts are inline SVG built with DOM calls, and the only
network calls go to the same server's API. So the policy allows 'self' and nothing else; a
script injected into the page by a bug in our DOM code could neither run inline nor talk to
another host.
"""
from __future__ import annotations

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def security_headers(*, cache: bool) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }
    # Assets are revalidated (ETag) so an upgrade never mixes old and new files; API answers
    # carry tokens or private metadata and are never stored.
    headers["Cache-Control"] = "no-cache" if cache else "no-store"
    return headers

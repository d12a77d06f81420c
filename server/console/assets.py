"""The console's static files, read once at start-up, with their content types.

Only the files listed here are served: a request for anything else (another file in the
package, a path with '..') is a 404, so the route can never be turned into a file reader.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")

# name -> content type. Charset is explicit so browsers never sniff. Only extensions that
# pyproject's package-data ships (html, js, css) so a wheel install serves the same files.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "analyst.js": "text/javascript; charset=utf-8",
    "owner.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    content_type: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every listed asset; a missing one is a packaging error, reported at start-up."""
    missing = [name for name in ASSETS if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"console assets missing from {directory}: {', '.join(missing)}")
    return {name: Asset(name, (directory / name).read_bytes(), content_type)
            for name, content_type in ASSETS.items()}

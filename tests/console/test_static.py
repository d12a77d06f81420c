"""The console's static files: served from the package, right content types, strict CSP, no
external URL anywhere, no inline code the CSP would have to allow."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from server.console import ASSETS, CONTENT_SECURITY_POLICY, routes
from server.console.assets import STATIC_DIR

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client():
    with TestClient(Starlette(routes=routes())) as c:
        yield c


def csp_directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_every_asset_is_served_with_its_type_and_security_headers(client, name):
    response = client.get(f"/console/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == ASSETS[name]
    assert response.content == (STATIC_DIR / name).read_bytes()
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_index_redirects_and_serves_html(client):
    bare = client.get("/console", follow_redirects=False)
    assert bare.status_code == 308 and bare.headers["location"] == "/console/"
    index = client.get("/console/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert b'<script type="module" src="app.js">' in index.content


def test_csp_allows_only_this_origin():
    directives = csp_directives(CONTENT_SECURITY_POLICY)
    assert directives["default-src"] == ["'none'"]
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == ["'self'"], name
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    everything = " ".join(w for words in directives.values() for w in words)
    for forbidden in ("'unsafe-inline'", "'unsafe-eval'", "http:", "https:", "*"):
        assert forbidden not in everything.split()


def test_unknown_files_and_traversal_are_not_found(client):
    for path in ("/console/nope.js", "/console/../server/console/api.py",
                 "/console/%2e%2e/assets.py", "/console/static/app.js", "/console/api.py",
                 "/console/__init__.py"):
        assert client.get(path).status_code == 404, path


def test_etag_revalidation(client):
    first = client.get("/console/app.js")
    etag = first.headers["etag"]
    again = client.get("/console/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/console/app.js", headers={"If-None-Match": '"other"'}).status_code == 200
    head = client.head("/console/style.css")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len((STATIC_DIR / "style.css").read_bytes()))


def test_no_external_urls_in_any_asset():
    # The only absolute URL allowed is the SVG namespace, an identifier never fetched.
    allowed = {"http://www.w3.org/2000/svg"}
    for name in ASSETS:
        text = (STATIC_DIR / name).read_text()
        found = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'`)]*", text))
        assert found <= allowed, (name, found - allowed)
        assert "@import" not in text and "url(" not in text, name


def test_index_has_no_inline_script_style_or_handlers():
    html = (STATIC_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"<style\b", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert not re.search(r"\sstyle\s*=", html)


def test_scripts_never_use_html_injection_or_eval():
    for name in ASSETS:
        if not name.endswith(".js"):
            continue
        code = (STATIC_DIR / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function", "setAttribute(\"style\"", "localStorage"):
            assert sink not in code, (name, sink)


def test_module_imports_resolve_to_served_assets():
    for name in ASSETS:
        if name.endswith(".js"):
            for target in re.findall(r"from\s+\"\./([^\"]+)\"", (STATIC_DIR / name).read_text()):
                assert target in ASSETS, (name, target)
    html = (STATIC_DIR / "index.html").read_text()
    for target in re.findall(r"(?:src|href)=\"([^\"]+)\"", html):
        assert target == "data:," or target in ASSETS, target


def test_every_asset_ships_in_the_wheel():
    """pyproject's package-data must match each asset, or `pip install .` (the Docker image)
    would serve a console with files missing."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["*"]
    for name in ASSETS:
        assert any(Path(name).match(p) for p in patterns), name
    assert sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file()) == sorted(ASSETS)

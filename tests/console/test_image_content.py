"""What the Docker build installs: the build context after .dockerignore, built into a wheel
the way the Dockerfile does (`pip wheel .`), must carry every console asset and serve them."""
from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from server.console import ASSETS
from tests.console.deployfiles import REPO


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], bare):
                return True
    return False


def build_context(target: Path) -> list[str]:
    patterns = dockerignore_patterns()
    copied = []
    for path in sorted(REPO.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if path.is_dir() or ignored(relative, patterns):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
        copied.append(relative)
    return copied


def test_dockerignore_matching():
    patterns = dockerignore_patterns()
    assert ignored(".git/config", patterns)
    assert ignored("server/console/__pycache__/x.pyc", patterns)
    assert ignored("tests/console/test_static.py", patterns)
    assert ignored("sqlgate.egg-info/PKG-INFO", patterns)
    assert not ignored("server/console/static/app.js", patterns)
    assert not ignored("pyproject.toml", patterns)


def test_the_image_wheel_ships_and_serves_the_console(tmp_path):
    context = tmp_path / "context"
    copied = build_context(context)
    assert "pyproject.toml" in copied and not any(p.startswith("tests/") for p in copied)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(wheels), str(context)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("sqlgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for asset in ASSETS:
            assert f"server/console/static/{asset}" in names, asset
        archive.extractall(tmp_path / "installed")

    # The installed copy (not this checkout) serves every asset.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from server.console.assets import load_assets, STATIC_DIR; "
            "assert str(STATIC_DIR).startswith(sys.argv[1]), STATIC_DIR; "
            "print(len(load_assets()))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "installed")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(ASSETS))

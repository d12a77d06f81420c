"""Drive bench/smartnoise_runner.py (SmartNoise SQL in its own virtualenv) from the
benchmark, one query and one run at a time, so its runs interleave with the others."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).resolve().parent.parent / "smartnoise_runner.py"


class SmartNoiseSession:
    """A runner subprocess with data loaded. `info` says whether it is available."""

    def __init__(self, python: Path, job: dict[str, Any]):
        self.info: dict[str, Any]
        self._proc = None
        if not Path(python).exists():
            self.info = {"available": False,
                         "reason": f"{python} missing: run bench/smartnoise_setup.sh first"}
            return
        self._proc = subprocess.Popen([str(python), str(RUNNER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.info = self._ask(job)
        if not self.info.get("available"):
            self.close()

    @property
    def available(self) -> bool:
        return bool(self.info.get("available"))

    def prepare(self, query: dict[str, Any]) -> dict[str, Any]:
        return self._ask({"op": "prepare", "query": query})

    def run(self) -> dict[str, Any]:
        return self._ask({"op": "run"})

    def close(self) -> None:
        if self._proc is None:
            return
        self._signal(signal.SIGCONT)
        try:
            self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            self._signal(signal.SIGCONT)
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
            # Stopped between requests: its engine's idle worker threads would otherwise
            # compete for the cores while sqlgate and raw DuckDB are being timed.
            self._signal(signal.SIGSTOP)
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            error = self._proc.stderr.read()[-500:] if self._proc.poll() is not None else ""
            return {"available": False, "status": "error",
                    "reason": f"the SmartNoise runner stopped: {error.strip()}"}
        return json.loads(line)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

"""`sqlgate router` takes `--allow-insecure-passwords` / SQLGATE_ALLOW_INSECURE_PASSWORDS and
warns at startup when reachable without TLS, exactly like `sqlgate serve` (serve itself is
replaced: nothing binds, no domain is contacted)."""
from __future__ import annotations

import pytest

from server.router.bootstrap import federation_files


@pytest.fixture
def router_yaml(tmp_path):
    files = federation_files({"a": "http://127.0.0.1:9", "b": "http://127.0.0.1:10"},
                             noise_domain="a", datasets=["clinic"], max_domains_per_unit=1)
    return str(files.write(tmp_path / "conf")["router"])


@pytest.fixture
def fake_serve(monkeypatch):
    from server import serve as serve_module
    seen: dict = {}

    def fake(state, host, port, pg_port, **options):
        seen.update(config=state.config, host=host, tls=bool(options.get("ssl_certfile")))

    monkeypatch.setattr(serve_module, "serve", fake)
    monkeypatch.delenv("SQLGATE_ALLOW_INSECURE_PASSWORDS", raising=False)
    return seen


def test_router_flag_and_environment(monkeypatch):
    from sqlgate.cli import _parser
    monkeypatch.delenv("SQLGATE_ALLOW_INSECURE_PASSWORDS", raising=False)
    base = ["router", "--config", "r.yaml"]
    assert _parser().parse_args(base).allow_insecure_passwords is False
    assert _parser().parse_args([*base, "--allow-insecure-passwords"]).allow_insecure_passwords
    monkeypatch.setenv("SQLGATE_ALLOW_INSECURE_PASSWORDS", "1")
    assert _parser().parse_args(base).allow_insecure_passwords is True
    monkeypatch.setenv("SQLGATE_ALLOW_INSECURE_PASSWORDS", "maybe")
    with pytest.raises(SystemExit):
        _parser().parse_args(base)


def test_router_warns_without_tls_and_refuses_passwords_by_default(tmp_path, router_yaml,
                                                                   fake_serve, capsys):
    from server.router.cli import main
    home = str(tmp_path / "router-home")
    assert main(["router", "--config", router_yaml, "--router-home", home,
                 "--host", "0.0.0.0", "--no-pg"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "without TLS" in err and "refused" in err
    assert fake_serve["host"] == "0.0.0.0"
    assert fake_serve["config"].allow_insecure_passwords is False


def test_router_flag_reaches_the_state_and_the_warning(tmp_path, router_yaml, fake_serve,
                                                       capsys):
    from server.router.cli import main
    home = str(tmp_path / "router-home")
    assert main(["router", "--config", router_yaml, "--router-home", home,
                 "--host", "192.0.2.1", "--no-pg", "--allow-insecure-passwords"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "ALLOWED" in err
    assert fake_serve["config"].allow_insecure_passwords is True


def test_router_on_loopback_does_not_warn(tmp_path, router_yaml, fake_serve, capsys):
    from server.router.cli import main
    assert main(["router", "--config", router_yaml, "--router-home", str(tmp_path / "h"),
                 "--host", "127.0.0.1", "--no-pg"]) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert fake_serve["config"].allow_insecure_passwords is False

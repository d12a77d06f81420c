import pytest

from tests.console.server import running_console


@pytest.fixture(scope="module")
def console_server(tmp_path_factory):
    with running_console(tmp_path_factory.mktemp("console-domain")) as server:
        yield server

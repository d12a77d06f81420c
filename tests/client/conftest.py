import pytest

from tests.client.live import start_server


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("client-home"))
    yield server
    server.stop()

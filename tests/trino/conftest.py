import pytest

from server.trino import TrinoOptions
from tests.client.live import start_server


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    # Small pages so paging over nextUri is exercised by ordinary queries, and POST never
    # waits, so every DP statement is polled over nextUri.
    server = start_server(tmp_path_factory.mktemp("trino-home"),
                          trino_options=TrinoOptions(page_rows=2, wait_s=0.2,
                                                       post_wait_s=0))
    yield server
    server.stop()

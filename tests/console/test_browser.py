"""The console in headless Chromium against a real server: an analyst explains and runs a
query (table + bar chart with error bars), files an exact request; the owner dry-runs it on
mock data and approves; the analyst fetches the exact result once; owner views (budgets
chart, audit log) work. Marked `clients`: skipped locally without chromium, fails in CI."""
from __future__ import annotations

import re

import httpx
import pytest

from tests.console.browser import PageWatch, chromium
from tests.console.server import (ANALYST, ANALYST_PASSWORD, DATASET, OWNER, OWNER_PASSWORD,
                                  REGIONS)

pytestmark = pytest.mark.clients

QUERY = "SELECT region, COUNT(*) AS patients, AVG(age) AS mean_age FROM patients GROUP BY region"
EXACT = "SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY region"
TIMEOUT_MS = 30_000


def expect(locator):
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def sign_in(page, server, name, password):
    page.goto(server.console)
    page.fill("#signin-name", name)
    page.fill("#signin-password", password)
    page.click("#signin-submit")
    page.wait_for_selector("#nav .tab", timeout=TIMEOUT_MS)
    assert page.text_content("#whoami").startswith(name)


def test_analyst_query_request_owner_approval_and_single_fetch(console_server, browser):
    server = console_server
    analyst_ctx = browser.new_context()
    owner_ctx = browser.new_context()
    try:
        page = analyst_ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        watch = PageWatch(page, server.url)
        sign_in(page, server, ANALYST, ANALYST_PASSWORD)
        assert page.is_hidden("#nav-approvals")          # analysts get no owner views

        # Explain first: cost and per-column CI, and nothing spent.
        page.click("#nav-query")
        page.fill("#sql", QUERY)
        page.fill("#epsilon", "1")
        assert page.is_disabled("#run")                  # no spending before an explain
        page.click("#explain")
        page.wait_for_selector("#explain-out table.explain-columns")
        explain = page.text_content("#explain-out")
        assert "epsilon 1" in explain and "laplace" in explain
        assert server.state.gateway.budget(ANALYST, DATASET).queries == 0

        # Editing after the explain asks for a new one; explaining again re-enables Run.
        page.wait_for_selector("#run:enabled")
        page.fill("#epsilon", "2")
        assert page.is_disabled("#run")
        page.fill("#epsilon", "1")
        assert page.is_enabled("#run")

        # Run: the noisy table and a bar chart with one error bar per bar.
        page.click("#run")
        page.wait_for_selector("#result-out table.result-table")
        rows = page.locator("#result-out table.result-table tbody tr")
        assert rows.count() == len(REGIONS)
        assert sorted(rows.locator("td:first-child").all_text_contents()) == sorted(REGIONS)
        chart = page.locator("#result-chart svg.bar-chart")
        assert chart.count() == 1
        assert chart.locator("rect.bar").count() == len(REGIONS)
        bars = chart.locator("g.error-bar")
        assert bars.count() == len(REGIONS)
        assert bars.first.locator("line").count() == 3    # whisker and two caps
        assert float(bars.first.get_attribute("data-ci95")) > 0
        status = server.state.gateway.budget(ANALYST, DATASET)
        assert status.queries == 1 and status.spent_epsilon == pytest.approx(1.0)
        # The other noisy column can be charted too.
        page.select_option("#chart-column", "mean_age")
        assert "mean_age" in page.text_content("#result-chart svg .chart-title")

        # Budgets view reflects the spend.
        page.click("#nav-my-budgets")
        page.wait_for_selector("table.budgets-table")
        assert DATASET in page.text_content("table.budgets-table")

        # File an exact request.
        page.click("#nav-requests")
        page.wait_for_selector("#request-form")
        page.select_option("#req-dataset", DATASET)
        page.select_option("#req-kind", "exact")
        page.fill("#req-sql", EXACT)
        page.fill("#req-purpose", "capacity planning per region")
        page.click("#req-submit")
        page.wait_for_selector("table.requests-table >> text=pending")
        request_id = page.text_content("table.requests-table tbody tr td:first-child")
        assert server.state.requests.get(request_id).status == "pending"

        # The owner reviews it: query text, dry run on mock data, approve with a reason.
        owner = owner_ctx.new_page()
        owner.set_default_timeout(TIMEOUT_MS)
        owner_watch = PageWatch(owner, server.url)
        sign_in(owner, server, OWNER, OWNER_PASSWORD)
        owner.click("#nav-approvals")
        card = owner.locator(f"article.request[data-request='{request_id}']")
        card.wait_for()
        assert EXACT in card.locator("pre.sql").text_content()
        assert "capacity planning per region" in card.text_content()
        card.locator(".mock-run-btn").click()
        card.locator("table.mock-result").wait_for()
        assert card.locator("table.mock-result tbody tr").count() >= 1
        assert server.state.requests.get(request_id).status == "pending"   # dry run released nothing
        card.locator(".approve").click()                   # no reason yet: refused in the page
        assert "Give a reason" in card.locator(".error").text_content()
        card.locator(".reason").fill("aggregate only, fine")
        card.locator(".approve").click()
        owner.wait_for_selector("#approval-history table.history-table >> text=aggregate only, fine")
        assert owner.locator("#approval-queue article.request").count() == 0
        assert server.state.requests.get(request_id).status == "done"

        # The analyst fetches the exact answer, once.
        page.click("#nav-my-budgets")
        page.click("#nav-requests")
        page.click(f"button.fetch[data-request='{request_id}']")
        page.wait_for_selector("#request-result table.exact-result")
        fetched = {r.locator("td").nth(0).text_content(): r.locator("td").nth(1).text_content()
                   for r in page.locator("#request-result table.exact-result tbody tr").all()}
        truth = server.frame.groupby("region").size()
        assert {k: int(v.replace(",", "")) for k, v in fetched.items()} == truth.to_dict()
        assert server.state.requests.get(request_id).status == "fetched"
        # The list refreshes without the fetch button: the result is gone for good.
        page.wait_for_selector(f"button.fetch[data-request='{request_id}']", state="detached")
        again = httpx.get(f"{server.url}/v1/requests/{request_id}/result", headers={
            "Authorization": "Bearer " + page.evaluate("sessionStorage.getItem('sqlgate.console.token')")})
        assert again.status_code == 410

        # Owner views: budgets with the spend chart, and the audit log with a verified chain.
        owner.click("#nav-budgets")
        owner.wait_for_selector("table.owner-budgets")
        assert ANALYST in owner.text_content("table.owner-budgets")
        owner.wait_for_selector(f"#spend-chart svg.line-chart path.series[data-series='{ANALYST}']")
        owner.click("#nav-audit")
        owner.wait_for_selector("table.audit-table tbody tr")
        loads = int(owner.get_attribute("#audit-out", "data-loads"))
        owner.fill("#audit-actor", ANALYST)
        owner.select_option("#audit-decision", "ok")
        owner.click("#audit-apply")
        owner.wait_for_selector(f"#audit-out[data-loads='{loads + 1}']")
        assert "query" in owner.locator("table.audit-table tbody").text_content()
        actors = owner.locator("table.audit-table tbody tr td:nth-child(3)").all_text_contents()
        assert actors and set(actors) == {ANALYST}
        # Paging: two records a page, the next page continues after the last one.
        owner.fill("#audit-actor", "")
        owner.select_option("#audit-decision", "")
        owner.fill("#audit-limit", "2")
        owner.click("#audit-apply")
        owner.wait_for_selector(f"#audit-out[data-loads='{loads + 2}']")
        seqs = lambda: [int(t.replace(",", "")) for t in  # noqa: E731
                        owner.locator("table.audit-table tbody td:first-child").all_text_contents()]
        first = seqs()
        assert len(first) == 2
        owner.click("#audit-next")
        owner.wait_for_selector(f"#audit-out[data-loads='{loads + 3}']")
        second = seqs()
        assert len(second) == 2 and min(second) > max(first)
        owner.click("#audit-verify")
        owner.wait_for_selector("#audit-verify-out.ok")
        assert "Chain verified" in owner.text_content("#audit-verify-out")

        watch.assert_clean()
        owner_watch.assert_clean()
    finally:
        analyst_ctx.close()
        owner_ctx.close()


def test_sign_in_errors_sign_out_and_datasets(console_server, browser):
    server = console_server
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        watch = PageWatch(page, server.url)
        page.goto(server.console)
        page.fill("#signin-name", ANALYST)
        page.fill("#signin-password", "not-the-password")
        page.click("#signin-submit")
        page.wait_for_selector("#signin-error:has-text('wrong')")
        assert page.is_visible("#signin")

        sign_in(page, server, ANALYST, ANALYST_PASSWORD)
        token = page.evaluate("sessionStorage.getItem('sqlgate.console.token')")
        assert token and page.evaluate("window.localStorage.length") == 0

        # Datasets: schema from metadata and a mock preview (generated, not real rows).
        page.click("#nav-datasets")
        page.wait_for_selector("table.schema-table")
        schema = page.text_content("table.schema-table")
        assert "age" in schema and "[0, 100]" in schema and "privacy unit" in schema
        page.click("section.table-meta[data-table='patients'] button.mock")
        page.wait_for_selector("table.mock-table tbody tr")
        assert page.locator("table.mock-table tbody tr").count() == 10

        # A refused query shows the API's error, never a stack or data value.
        page.click("#nav-query")
        page.fill("#sql", "SELECT pid FROM patients")
        page.click("#explain")
        page.wait_for_selector("#query-error:not([hidden])")
        assert "refused_by_policy" in page.text_content("#query-error")
        assert page.is_disabled("#run")

        # Sign out revokes the token on the server.
        page.click("#signout")
        page.wait_for_selector("#signin:not([hidden])")
        assert page.evaluate("sessionStorage.getItem('sqlgate.console.token')") is None
        me = httpx.get(server.url + "/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 401

        # A pasted API token signs in too.
        fresh = server.state.users.issue_token(ANALYST, label="test")
        page.click("#signin summary")
        page.fill("#signin-token", fresh)
        page.click("#signin-submit")
        page.wait_for_selector("#nav .tab")
        watch.assert_clean()
    finally:
        context.close()


VISITS_YAML = """\
dataset: visits
description: Clinic visits uploaded from the console
budget: {epsilon: 4.0, delta: 1.0e-6}
query: {epsilon: 0.5, delta: 1.0e-7, mechanism: laplace}
tables:
  visits:
    privacy_unit: pid
    max_groups_per_unit: 2
    max_rows_per_group: 3
    columns:
      pid: int
      ward: {type: string, public_keys: [a, b]}
      cost: {type: float, lower: 0, upper: 500, nullable: false}
"""


def test_owner_uploads_a_dataset_with_progress_and_grants_access(console_server, browser,
                                                                 tmp_path):
    server = console_server
    meta = tmp_path / "visits.yaml"
    meta.write_text(VISITS_YAML)
    data = tmp_path / "visits.csv"
    data.write_text("pid,ward,cost\n" + "".join(f"{i % 50},{'ab'[i % 2]},{i % 400}.5\n"
                                                 for i in range(400)))
    bad = tmp_path / "bad.csv"
    bad.write_text("pid,ward\n1,a\n")                 # the cost column is missing
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        watch = PageWatch(page, server.url)
        sign_in(page, server, OWNER, OWNER_PASSWORD)
        page.click("#nav-upload")

        # A file that does not match the metadata is refused and nothing is loaded.
        page.set_input_files("#upload-meta-file", str(meta))
        expect(page.locator("#upload-meta")).to_have_value(re.compile("dataset: visits"))
        page.click("#upload-start")
        page.set_input_files("input.table-file[data-table='visits']", str(bad))
        page.click("#upload-send")
        page.wait_for_selector("#upload-error:not([hidden])")
        assert "visits" not in {m.name for m in server.state.gateway.datasets()}

        # The real file: progress reaches the file size, the dataset loads all at once.
        page.click("#upload-start")                   # a new session (the failed one is gone)
        page.set_input_files("input.table-file[data-table='visits']", str(data))
        page.click("#upload-send")
        page.wait_for_selector("#upload-loaded")
        bar = page.locator("progress.table-progress[data-table='visits']")
        assert bar.evaluate("(el) => [el.value, el.max]") == [data.stat().st_size] * 2
        assert "visits" in {m.name for m in server.state.gateway.datasets()}
        assert server.state.users.can(server.state.users.user(OWNER), "visits", "own")

        # Grant the analyst query access from the budgets view, then revoke it.
        page.click("#nav-budgets")
        page.select_option("#budget-dataset", "visits")
        page.wait_for_selector("table.owner-budgets")
        page.fill("#grant-analyst", ANALYST)
        page.click("#grant-submit")
        page.wait_for_selector(f"table.owner-budgets button.revoke[data-analyst='{ANALYST}']")
        analyst = server.state.users.user(ANALYST)
        assert server.state.users.can(analyst, "visits", "query")
        page.click(f"table.owner-budgets button.revoke[data-analyst='{ANALYST}']")
        page.wait_for_selector(f"table.owner-budgets button.revoke[data-analyst='{ANALYST}']",
                               state="detached")
        assert not server.state.users.can(analyst, "visits", "query")
        watch.assert_clean()
    finally:
        context.close()

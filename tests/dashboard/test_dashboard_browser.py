"""The dashboard in a real headless browser (Debian's chromium through chromedriver), against the API emulator,
the real operator and a real Prometheus: what a user sees and does. Screenshots of each view are written to
out/test-artifacts/dashboard/ (and to docs/img/ with KANARI_WRITE_DOCS_IMG=1, for the README).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.dashboard.conftest import ARTIFACTS, Stack
from tests.dashboard.dashboard_testlib import wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(240)]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
V1 = "s3://models/fraud/v1/model.tar.gz"
V2 = "s3://models/fraud/v2/model.tar.gz"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: scripts/bootstrap.sh installs Debian's chromium and chromium-driver")
    profile = tempfile.mkdtemp(prefix="kanari-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height) + 40, 700), 3000))
    path = ARTIFACTS / f"dashboard-{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    if os.environ.get("KANARI_WRITE_DOCS_IMG") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_IMG / path.name)
    return path


def wait(driver: WebDriver, timeout: float = 10.0) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, timeout, poll_frequency=0.05)


A11Y = """
var problems = [];
document.querySelectorAll("input, select, textarea").forEach(function (e) {
  if (!(e.id && document.querySelector('label[for="' + e.id + '"]')) && !e.getAttribute("aria-label"))
    problems.push("unlabelled " + e.tagName + "#" + e.id);
});
document.querySelectorAll("button, a").forEach(function (e) {
  if (!e.textContent.trim() && !e.getAttribute("aria-label")) problems.push("empty " + e.tagName);
});
document.querySelectorAll("main table:not([role=presentation])").forEach(function (t) {
  if (!t.querySelector("caption") || !t.querySelector("thead th")) problems.push("table without caption or headers");
});
document.querySelectorAll("figure.chart div[role=img]").forEach(function (e) {
  if (!e.getAttribute("aria-label")) problems.push("chart without a text alternative");
});
if (document.querySelectorAll("h1").length !== 1) problems.push("not one h1");
if (!document.documentElement.lang) problems.push("no lang");
return problems;
"""


def open_view(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait(driver).until(lambda d: d.find_element(By.ID, "view").get_attribute("aria-busy") is None)
    assert console_errors(driver) == []
    # What a screen-reader or keyboard user needs: labelled controls, named links and buttons, tables with
    # captions and headers, a text alternative for each chart.
    assert driver.execute_script(A11Y) == []


def row_weight(driver: WebDriver, key: str) -> str:
    # Read in one script call: the row is replaced as updates arrive, an element handle would go stale.
    return str(driver.execute_script(
        "var e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
        f'tr[data-key="{key}"] .weight-text'))


def row_hidden(driver: WebDriver, key: str) -> bool | None:
    return driver.execute_script(  # type: ignore[no-any-return]
        "var e = document.querySelector(arguments[0]); return e ? e.hidden : null;", f'tr[data-key="{key}"]')


def text(driver: WebDriver, css: str) -> str:
    """What a reader sees in the first element `css` finds ('' if none), read in one go (see row_weight)."""
    return str(driver.execute_script(
        "var e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css))


def click(driver: WebDriver, css: str) -> None:
    """Click what `css` finds now: the view is redrawn as the rollout changes, a found element can go stale."""
    for _ in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except (StaleElementReferenceException, NoSuchElementException):
            time.sleep(0.1)
    raise AssertionError(f"could not click {css}")


def deploy(stack: Stack, name: str, rollout: dict[str, Any]) -> dict[str, Any]:
    """A ModelDeployment serving V1 through the operator; then V2 asked for."""
    kube = stack.kube
    kube.create_md("ml-prod", name, {"model": {"storageUri": V1, "format": "sklearn", "version": "v1"},
                                     "serving": {"accelerator": "cpu"}, "rollout": rollout})
    stack.kserve.names.add(name)
    wait_for(lambda: kube.md("ml-prod", name).get("status", {}).get("phase") == "Succeeded", f"{name} v1 deployed", 30)
    kube.patch("ml-prod", name, {"spec": {"model": {"storageUri": V2, "version": "v2"}}})
    return kube.md("ml-prod", name)


def test_list_shows_a_weight_change_within_3_seconds(stack: Stack, browser: WebDriver) -> None:
    kube = stack.kube
    md = kube.create_md("ml-staging", "ranker", {"model": {"storageUri": V1, "format": "sklearn"},
                                                 "serving": {"accelerator": "cpu"},
                                                 "rollout": {"steps": [{"setWeight": 10}, {"setWeight": 50}]}})
    status = {"phase": "Progressing", "currentStep": 0, "canaryWeight": 10,
              "stableModel": {"revision": "a1", "version": "v1"}, "canaryModel": {"revision": "b2", "version": "v2"}}
    kube.patch("ml-staging", "ranker", {"status": status}, status=True)
    open_view(browser, stack.admin.url + "/")
    key = "ml-staging/ranker"
    wait(browser).until(lambda d: row_weight(d, key) == "90 / 10")
    latencies = []
    for weight in (30, 50, 75):
        start = time.monotonic()
        kube.patch("ml-staging", "ranker", {"status": {"canaryWeight": weight}}, status=True)
        wait(browser, 3.0).until(lambda d, w=weight: row_weight(d, key) == f"{100 - w} / {w}")
        latencies.append(time.monotonic() - start)
    assert browser.current_url.rstrip("/") == stack.admin.url  # updated in place, no reload
    print(f"list update latency after a status change: max {max(latencies):.2f}s of {latencies}")
    assert max(latencies) < 3.0

    # Filtering: the search box hides rows that do not match, the phase filter too.
    search = browser.find_element(By.ID, "filter")
    search.send_keys("nomatch-xyz")
    wait(browser).until(lambda d: row_hidden(d, key) is True)
    search.clear()
    search.send_keys("ranker")
    wait(browser).until(lambda d: row_hidden(d, key) is False)
    search.clear()
    assert console_errors(browser) == []
    _ = md


def test_promote_from_the_page_moves_the_rollout_and_is_refused_without_rbac(stack: Stack, browser: WebDriver) -> None:
    kube = stack.kube
    deploy(stack, "fraud-a", {"strategy": "Canary",
                              "steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]})
    wait_for(lambda: kube.md("ml-prod", "fraud-a")["status"].get("phase") == "Paused", "fraud-a paused at 20%", 30)

    # The read-only user: the button is there (their RBAC is the API server's to judge), the patch is refused.
    open_view(browser, stack.viewer.url + "/md/ml-prod/fraud-a")
    click(browser, 'button[data-action="promote"]')
    click(browser, "#confirm-ok")
    wait(browser).until(lambda d: "Refused" in text(d, "#action-result.error"))
    refusal = text(browser, "#action-result")
    assert "403" in refusal and "forbidden" in refusal.lower()
    # Chrome logs the refused request itself; that one line, and nothing else (no script error).
    errors = console_errors(browser)
    assert len(errors) == 1 and "/api/md/ml-prod/fraud-a/action" in errors[0] and "403" in errors[0], errors
    time.sleep(1.5)
    md = kube.md("ml-prod", "fraud-a")
    assert "kanari.dev/action" not in (md["metadata"].get("annotations") or {})
    assert (md["status"]["currentStep"], md["status"]["canaryWeight"]) == (1, 20)

    # Cancelling the confirmation does nothing.
    open_view(browser, stack.admin.url + "/md/ml-prod/fraud-a")
    click(browser, 'button[data-action="promote"]')
    click(browser, "#confirm-cancel")
    time.sleep(0.5)
    assert "kanari.dev/action" not in (kube.md("ml-prod", "fraud-a")["metadata"].get("annotations") or {})

    # The admin promotes: the operator moves to the next step and the page follows without a reload.
    assert "pause" in text(browser, 'ol.steps li[aria-current="step"]')
    click(browser, 'button[data-action="promote"]')
    click(browser, "#confirm-ok")
    wait(browser).until(lambda d: "requested" in text(d, "#action-result.ok"))
    md = wait_for(lambda: (m := kube.md("ml-prod", "fraud-a"))["status"].get("canaryWeight") == 60 and m,
                  "the operator to act on the promote", 20)
    assert md["status"]["rollout"]["lastAction"].startswith("promote/")
    wait(browser, 5).until(lambda d: "60%" in text(d, ".summary"))
    # The step diagram follows: steps 1-3 done, the second pause (step 4) current.
    wait(browser, 5).until(lambda d: text(d, 'ol.steps li[aria-current="step"] .n') == "4")
    assert console_errors(browser) == []


def test_scorecard_shows_the_failing_metric_after_a_rollback(stack: Stack, browser: WebDriver) -> None:
    kube = stack.kube
    # The canary's success rate, as the analysis query reads it from Prometheus: good at first.
    for rev, value in (("fraud-b-predictor-00001", 0.995), ("fraud-b-predictor-00002", 0.991)):
        stack.gauges["success"].labels("ml-prod", rev).set(value)
    query = 'max(kanari_test_success_rate{namespace="{{namespace}}", revision="{{canaryRevision}}"})'
    deploy(stack, "fraud-b", {
        "strategy": "Canary", "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50},
                                        {"pause": {"duration": "4s"}}, {"analysis": {}}, {"setWeight": 100}],
        "analysis": {"interval": "1s", "count": 1, "metrics": [
            {"name": "success-rate", "query": query, "minSampleCount": 0, "thresholdRange": {"min": 0.95}}]},
    })
    wait_for(lambda: kube.md("ml-prod", "fraud-b")["status"].get("canaryWeight") == 50, "the first analysis to pass", 40)
    # Then it drops; the pause before the second analysis lets Prometheus scrape it (every second).
    stack.gauges["success"].labels("ml-prod", "fraud-b-predictor-00002").set(0.62)
    md = wait_for(lambda: (m := kube.md("ml-prod", "fraud-b"))["status"].get("phase") == "RolledBack" and m,
                  "the analysis to roll fraud-b back", 40)
    open_view(browser, stack.admin.url + "/md/ml-prod/fraud-b")
    row = text(browser, "#latest-run tbody tr")
    assert "success-rate" in row and "Failed" in row and "0.62" in row, row
    assert ">= 0.95" in row
    banner = text(browser, ".banner.error")
    assert "success-rate" in banner and "0.62" in banner
    # The chart itself says why: the failed measurement is drawn and captioned.
    assert "0.62" in text(browser, "figure.chart p.failure")
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart canvas")
    # The run before it passed: its scorecard says so.
    assert "Successful" in text(browser, 'table.scorecard[data-phase="Successful"] tbody tr')
    click(browser, "#latest-run tbody tr summary")
    wait(browser).until(lambda d: "kanari_test_success_rate" in text(d, "#latest-run tbody tr details code"))
    events = text(browser, "table.events")
    assert "RolledBack" in events
    assert console_errors(browser) == []
    screenshot(browser, "rollout")
    _ = md


def test_drift_page_shows_the_worst_feature_and_not_an_idle_revision(stack: Stack, browser: WebDriver) -> None:
    drift = stack.gauges["drift"]
    for feature, value in (("mean area", 0.91), ("mean radius", 0.42), ("mean texture", 0.05)):
        drift.labels("ml-prod", "fraud-b", "default", "v1", feature, "psi").set(value)
    # A revision that no longer serves keeps its last gauge for a while: it must not count as current.
    drift.labels("ml-prod", "fraud-b", "default", "v0-retired", "worst texture", "psi").set(7.5)
    kube = stack.kube
    kube.patch("ml-prod", "fraud-b", {"spec": {"monitoring": {"drift": {"method": "psi", "warn": 0.3, "critical": 0.6}}}})
    wait_for(lambda: "monitoring" in kube.md("ml-prod", "fraud-b")["spec"], "monitoring in the spec")

    def worst() -> str:
        open_view(browser, stack.admin.url + "/md/ml-prod/fraud-b/drift")
        rows = browser.find_elements(By.CSS_SELECTOR, "table.worst tbody tr")
        return rows[0].text if rows else ""

    first = wait_for(lambda: "mean area" in (w := worst()) and w, "the worst feature in the drift view", 20, 1.0)
    assert "0.91" in first and "critical" in first
    assert "worst texture" not in browser.find_element(By.CSS_SELECTOR, "table.worst").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart canvas")) >= 3
    assert console_errors(browser) == []
    screenshot(browser, "drift")

    open_view(browser, stack.admin.url + "/")
    screenshot(browser, "list")


def test_the_lists_drift_column_agrees_with_the_drift_view(stack: Stack, browser: WebDriver) -> None:
    # Runs after the drift-page test, which set fraud-b's gauges and thresholds (critical at 0.6, worst 0.91).
    # Regression: a drift change reached the list only with the next status change of the ModelDeployment.
    open_view(browser, stack.admin.url + "/")
    wait(browser, 15).until(lambda d: "critical" in text(d, 'tr[data-key="ml-prod/fraud-b"]'))


def test_lineage_page_links_each_stage(stack: Stack, browser: WebDriver) -> None:
    kube = stack.kube
    lineage = {"datasetUri": "s3://kanari-data/transactions.csv", "gitSha": "3f2c1ab",
               "pipelineRun": "run-20261130-0412", "modelPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud/7",
               "trainingJob": "arn:aws:sagemaker:us-east-1:123456789012:training-job/kanari-fraud-7"}
    md = kube.create_md("ml-staging", "lineage-demo", {"model": {"storageUri": V1, "format": "sklearn"},
                                                       "serving": {"accelerator": "cpu"}})
    kube.patch("ml-staging", "lineage-demo", {"status": {
        "phase": "Succeeded", "lineage": lineage, "stableModel": {"revision": "c3", "version": "fraud/7"},
        "conditions": [{"type": "ModelApproved", "status": "True", "reason": "Approved", "message": "",
                        "lastTransitionTime": "2026-11-30T04:00:00Z"}]}}, status=True)
    open_view(browser, stack.admin.url + "/md/ml-staging/lineage-demo/lineage")
    stages = browser.find_elements(By.CSS_SELECTOR, "ol.lineage li")
    assert [s.find_element(By.CLASS_NAME, "stage").text.lower() for s in stages] == [
        "data", "code", "pipeline run", "training job", "model package", "approval", "deployment revision"]
    chain = text(browser, "ol.lineage")
    for value in ("transactions.csv", "3f2c1ab", "run-20261130-0412", "kanari-fraud-7", "model-package/fraud/7",
                  "True: Approved", "fraud/7 (revision c3)"):
        assert value in chain
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "ol.lineage a")]
    assert any("training-job" not in h and "#/jobs/kanari-fraud-7" in h for h in links)
    assert any("model-registry/fraud/versions/7" in h for h in links)
    assert console_errors(browser) == []
    screenshot(browser, "lineage")
    _ = md


def test_the_static_export_shows_the_same_views_offline(stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    """`kanari dashboard --export` (what the demo's report is): pages that open from disk, no server."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "KANARI_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "kanari.cli.main", "dashboard", "--export", str(tmp_path / "export"),
         "--kubeconfig", str(stack.server.admin_kubeconfig), "--prometheus-url", stack.prometheus],
        env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    base = (tmp_path / "export").as_uri()
    open_view(browser, f"{base}/index.html")
    assert "fraud-b" in text(browser, "#md-table") and "ranker" in text(browser, "#md-table")
    open_view(browser, f"{base}/md/ml-prod/fraud-b/index.html")
    row = text(browser, "#latest-run tbody tr")
    assert "success-rate" in row and "Failed" in row and "0.62" in row
    assert not browser.find_elements(By.CSS_SELECTOR, "button[data-action]")  # an export acts on nothing
    click(browser, 'nav a[href$="drift.html"]')
    wait(browser).until(lambda d: d.find_element(By.ID, "view").get_attribute("aria-busy") is None)
    assert text(browser, "table.worst tbody tr").startswith("mean area")
    assert console_errors(browser) == []


def test_in_cluster_sign_in_page(stack: Stack, browser: WebDriver) -> None:
    """The in-cluster mode's sign-in: a pasted token, checked by TokenReview; a wrong one is refused."""
    import asyncio
    import threading

    from aiohttp import web
    from kanari.dashboard.server import Dashboard, Settings
    from kubernetes import client

    from devstack.stack import free_port
    from tests.dashboard.dashboard_testlib import REVIEWER_TOKEN, VIEWER_TOKEN

    conf = client.Configuration(host=stack.server.url)
    conf.api_key = {"authorization": f"Bearer {REVIEWER_TOKEN}"}
    port = free_port()
    dash = Dashboard(Settings(port=port, in_cluster=True), None, reviewer=client.ApiClient(conf))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(dash.app(), shutdown_timeout=1.0)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{port}/md/ml-prod/fraud-a")
        wait(browser).until(lambda d: d.current_url.endswith("/login"))
        browser.find_element(By.ID, "token").send_keys("not-a-token")
        click(browser, "#login button")
        wait(browser).until(lambda d: "not accepted" in text(d, "#login-result"))
        assert [e for e in console_errors(browser) if "/login" not in e] == []  # the refused POST is logged
        browser.find_element(By.ID, "token").clear()
        browser.find_element(By.ID, "token").send_keys(VIEWER_TOKEN)
        ns = browser.find_element(By.ID, "namespace")
        ns.clear()
        ns.send_keys("ml-prod")
        click(browser, "#login button")
        wait(browser).until(lambda d: "as viewer" in text(d, "#md-table caption"))
        assert "fraud-a" in text(browser, "#md-table") and "ranker" not in text(browser, "#md-table")
        assert console_errors(browser) == []
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

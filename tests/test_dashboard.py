"""Trackio's dashboard, in headless Chromium, shows what MLflow autologging wrote.

Two runs are logged under `sdk.autolog()` into a fresh Trackio directory,
``trackio.show`` serves that directory from a subprocess, and a real browser
loads the metrics page and the runs page. The metrics page's screenshot is
the one the docs show (``docs/images/dashboard.png``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

import sdk
from sdk import _config

PROJECT = "dashboard-demo"
LEARNING_RATES = (0.1, 0.03)
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs/images/dashboard.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)
SERVER = (
    "import sys, trackio; trackio.show(project=sys.argv[1], "
    "server_port=int(sys.argv[2]), open_browser=False, block_thread=True)"
)
WAIT_SECONDS = 60


@dataclass(frozen=True)
class Dashboard:
    url: str
    browser: webdriver.Chrome
    run_names: list[str]


def _log_runs(directory: Path) -> list[str]:
    """Log one run per learning rate under sdk.autolog(); return the run names."""
    sdk.init(dir=directory)
    sdk.autolog(project=PROJECT)
    try:
        names = []
        for learning_rate in LEARNING_RATES:
            with mlflow.start_run(run_name=f"lr-{learning_rate}") as run:
                mlflow.log_params({"lr": learning_rate, "batch_size": 32})
                for step in range(20):
                    loss = math.exp(-3 * learning_rate * step)
                    mlflow.log_metrics(
                        {"train_loss": loss, "val_accuracy": 1 - loss / 2}, step=step
                    )
            names.append(run.info.run_name)
    finally:
        sdk.autolog(disable=True)
        _config.reset()
    return names


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert server.poll() is None, f"trackio show exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"{url}/version", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"trackio show did not answer at {url}:\n{log.read_text()}")


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def _browser(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """A dashboard subprocess over freshly logged runs, and a browser to view it."""
    root = tmp_path_factory.mktemp("dashboard")
    directory = root / "trackio"
    run_names = _log_runs(directory)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, PROJECT, str(port)],
            env={**os.environ, "TRACKIO_DIR": str(directory)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    browser = None
    try:
        _wait_until_serving(url, server, log)
        browser = _browser(root / "chromium-profile")
        yield Dashboard(url, browser, run_names)
    finally:
        if browser is not None:
            browser.quit()
        _stop(server)


def _wait(browser: webdriver.Chrome) -> WebDriverWait:
    return WebDriverWait(browser, WAIT_SECONDS)


def _wait_for_text(browser: webdriver.Chrome, locator: tuple[str, str], text: str):
    _wait(browser).until(
        expected_conditions.text_to_be_present_in_element(locator, text)
    )


class TestDashboard:
    def test_metrics_page_shows_project_runs_and_charts(self, dashboard, tmp_path):
        """The metrics page names the project and both runs and draws each metric."""
        browser = dashboard.browser
        browser.get(f"{dashboard.url}/?project={PROJECT}")

        body = (By.TAG_NAME, "body")
        _wait_for_text(browser, body, PROJECT)
        for key in ("train_loss", "val_accuracy"):
            chart = (By.CSS_SELECTOR, f".plot-container[data-metric='{key}']")
            canvas = _wait(browser).until(
                expected_conditions.visibility_of_element_located(
                    (By.CSS_SELECTOR, f"{chart[1]} canvas")
                )
            )
            assert canvas.size["width"] > 100
            assert canvas.size["height"] > 100
            for name in dashboard.run_names:
                _wait_for_text(browser, chart, name)

        browser.save_screenshot(str(tmp_path / "metrics.png"))
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(DOCS_SCREENSHOT))

    def test_runs_page_lists_runs_and_opens_their_params(self, dashboard, tmp_path):
        """The runs page lists both runs; a run's page shows its params as config."""
        browser = dashboard.browser
        browser.get(f"{dashboard.url}/runs?project={PROJECT}")

        table = (By.CSS_SELECTOR, "table.runs-table")
        for name in dashboard.run_names:
            _wait_for_text(browser, table, name)
        cells = browser.find_elements(By.CSS_SELECTOR, "td.run-name-cell")
        assert sorted(cell.text for cell in cells) == sorted(dashboard.run_names)

        first = dashboard.run_names[0]
        browser.find_element(
            By.XPATH, f"//td[contains(@class, 'run-name-cell')]//button[.='{first}']"
        ).click()
        config_block = _wait(browser).until(
            expected_conditions.visibility_of_element_located(
                (By.CSS_SELECTOR, "pre.config-block")
            )
        )
        browser.save_screenshot(str(tmp_path / "run.png"))
        config = json.loads(config_block.text)
        assert config["lr"] == str(LEARNING_RATES[0])
        assert config["batch_size"] == "32"
        assert "_Group" not in config
        _wait_for_text(browser, (By.CSS_SELECTOR, ".detail-card h2"), first)

"""The documentation builds without a warning, and what it shows actually runs.

Python blocks on the pages listed in `RUNNABLE_PAGES` are complete programs:
each runs on its own in a fresh directory. Blocks that only include a file
from ``examples/`` are left to ``tests/test_examples.py``, which runs them.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

import sdk

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE_PAGES = [
    "index.md",
    "quickstart.md",
    "frameworks.md",
    "autolog.md",
    "mapping.md",
    "deployment.md",
    "limitations.md",
    "comparison.md",
]
_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>\w+)\n(?P<body>.*?)^(?P=indent)```$",
    re.DOTALL | re.MULTILINE,
)
_INCLUDE = re.compile(r'^--8<-- "[^"]+"$')


def _blocks(page: str, language: str) -> list[str]:
    text = (DOCS / page).read_text()
    return [
        textwrap.dedent(match["body"])
        for match in _FENCE.finditer(text)
        if match["lang"] == language
    ]


def _python_snippets() -> list[Any]:
    snippets = []
    for page in RUNNABLE_PAGES:
        for number, code in enumerate(_blocks(page, "python"), start=1):
            if not _INCLUDE.match(code.strip()):
                snippets.append(pytest.param(code, id=f"{page}-{number}"))
    return snippets


class TestBuild:
    def test_mkdocs_strict_build_succeeds(self, tmp_path):
        """`mkdocs build --strict` exits 0, so no page has a warning."""
        site = tmp_path / "site"
        completed = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr[-4000:]

        api = (site / "api" / "index.html").read_text()
        for name in sdk.__all__:
            if name != "__version__":
                assert f'id="sdk.{name}"' in api, name
        assert ".. versionadded::" not in api
        assert (site / "images" / "dashboard.png").stat().st_size > 10_000
        assert 'src="images/dashboard.png"' in (site / "index.html").read_text()
        quickstart = (site / "quickstart" / "index.html").read_text()
        # The included example is highlighted: one span a token.
        shown = html.unescape(re.sub(r"<[^>]+>", "", quickstart))
        assert "sdk.autolog(project=PROJECT)" in shown


class TestSnippets:
    @pytest.mark.parametrize("code", _python_snippets())
    def test_python_block_runs(self, code, trackio_dir, tmp_path):
        """A Python block from the docs runs to completion as its own program."""
        script = tmp_path / "snippet.py"
        script.write_text(code)
        completed = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={**os.environ, "TRACKIO_DIR": str(trackio_dir)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr[-4000:]

    def test_snippets_are_found_on_pages_that_exist(self):
        """Every listed page exists, and the block parser finds their snippets."""
        assert [page for page in RUNNABLE_PAGES if not (DOCS / page).exists()] == []
        assert len(_python_snippets()) >= 8


class TestTorchtuneConfig:
    def test_metric_logger_block_has_only_mlflow_logger_arguments(self):
        """The torchtune block uses MLFlowLogger on trackio:// and has no log_dir."""
        [config] = [
            yaml.safe_load(block)
            for block in _blocks("frameworks.md", "yaml")
            if "metric_logger" in block
        ]
        logger = config["metric_logger"]
        assert logger["_component_"] == (
            "torchtune.training.metric_logging.MLFlowLogger"
        )
        assert logger["tracking_uri"] == "trackio://"
        # torchtune's MLFlowLogger.__init__ takes exactly these; any other key
        # is the TypeError the page warns about.
        accepted = {"experiment_name", "tracking_uri", "run_id", "run_name"}
        assert set(logger) - {"_component_"} <= accepted


def _manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DOCS / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def _mounts(container: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m["name"], m["mountPath"]) for m in container["volumeMounts"]}


class TestKubernetesManifests:
    def test_training_and_dashboard_share_one_trackio_directory(self):
        """Both containers mount one claim and point TRACKIO_DIR inside it."""
        manifests = _manifests()
        pod = manifests["Job"]["spec"]["template"]["spec"]
        [train] = pod["containers"]
        [dashboard] = pod["initContainers"]
        assert dashboard["restartPolicy"] == "Always"
        assert dashboard["command"][:2] == ["trackio", "show"]
        assert _env(train)["MLFLOW_TRACKING_URI"] == "trackio://"
        assert _env(train)["TRACKIO_DIR"] == _env(dashboard)["TRACKIO_DIR"]
        assert _mounts(train) == _mounts(dashboard)
        [(volume, mount_path)] = _mounts(train)
        assert _env(train)["TRACKIO_DIR"].startswith(mount_path + "/")
        [claim] = [v for v in pod["volumes"] if v["name"] == volume]
        claim_name = claim["persistentVolumeClaim"]["claimName"]
        assert manifests["PersistentVolumeClaim"]["metadata"]["name"] == claim_name

    def test_service_reaches_the_dashboard_in_both_pods(self):
        """The Service selects the Job's and the Deployment's Pods on their port."""
        manifests = _manifests()
        service = manifests["Service"]["spec"]
        for kind in ("Job", "Deployment"):
            template = manifests[kind]["spec"]["template"]
            labels = template["metadata"]["labels"]
            assert service["selector"].items() <= labels.items(), kind
            spec = template["spec"]
            containers = spec.get("initContainers", []) + spec["containers"]
            ports = {
                port["name"]: port["containerPort"]
                for container in containers
                for port in container.get("ports", [])
            }
            [service_port] = service["ports"]
            assert service_port["targetPort"] in ports, kind
            port = ports[service_port["targetPort"]]
            dashboards = [c for c in containers if c["name"] == "dashboard"]
            assert _env(dashboards[0])["GRADIO_SERVER_PORT"] == str(port), kind

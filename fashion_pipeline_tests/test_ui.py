"""The Dagster UI for real: `dagster dev` on loopback with the shipped instance config, a
materialization launched through the GraphQL API the UI itself uses, the asset graph's lineage
as the UI serves it, and a headless-Chromium look at the lineage page.

Needs the Debian package `chromium` for the browser half (skipped, saying so, without it)."""

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest
from PIL import Image

from fashion_pipeline.definitions import defs
from fashion_pipeline.jobs import INGEST_GROUPS
from fashion_pipeline.paths import PROJECT_ROOT

pytestmark = [pytest.mark.ui, pytest.mark.timeout(300)]

SHIPPED_DAGSTER_YAML = PROJECT_ROOT / "fashion_pipeline" / "deploy" / "dagster.yaml"
CHROMIUM = os.environ.get("CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
LOCATION = "fashion_pipeline.definitions"  # workspace.yaml's python_module entry


class DagsterDev:
    """`dagster dev` in its own session; stop() ends every process of that session."""

    def __init__(self, root: Path):
        self.home, self.var, self.log_path = root / "dagster_home", root / "var", root / "dagster_dev.log"
        self.home.mkdir(parents=True)
        shutil.copy(SHIPPED_DAGSTER_YAML, self.home / "dagster.yaml")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("FASHION_DATA_ROOT", "FASHION_EXECUTOR")}
        env.update(DAGSTER_HOME=str(self.home), FASHION_VAR_DIR=str(self.var), FASHION_PROFILE="local",
                   FASHION_AUTOMATION="off", PYTHONPATH=str(PROJECT_ROOT))
        dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
        self.log = open(self.log_path, "w")
        # dagster dev ties SIGTERM to SIGINT's handler: restore default dispositions so both work.
        self.proc = subprocess.Popen(
            ["env", "--default-signal=INT,TERM", dagster, "dev", "-w", "workspace.yaml",
             "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=PROJECT_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sid = self.proc.pid

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def gql(self, query: str, variables: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.url}/graphql", headers={"content-type": "application/json"},
                                     data=json.dumps({"query": query, "variables": variables or {}}).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_loaded(self, timeout_s: float = 150) -> None:
        deadline = time.monotonic() + timeout_s
        query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus " \
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dagster dev exited early:\n{self.log_tail()}"
            try:
                entries = self.gql(query)["workspaceOrError"]["locationEntries"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                entries = []
            for e in entries:
                if e["name"] == LOCATION and e["loadStatus"] == "LOADED":
                    error = e["locationOrLoadError"]
                    assert error["__typename"] == "RepositoryLocation", f"code location failed: {error}"
                    return
            time.sleep(1)
        raise AssertionError(f"the code location did not load in {timeout_s} s:\n{self.log_tail()}")

    def _session_pids(self) -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields 3 and 6 of /proc/<pid>/stat: state and session id; a zombie is already dead
            if int(fields[3]) == self.sid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> list[str]:
        """SIGINT (dagster dev shuts its services down), then SIGKILL whatever is left."""
        try:
            os.killpg(self.sid, signal.SIGINT)
            self.proc.wait(timeout=40)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.sid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 20  # children finish their own shutdown after the parent
        while self._session_pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = []
        for pid in self._session_pids():
            try:
                leftovers.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ')[:200]!r}")
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
        self.log.close()
        return leftovers


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    server = DagsterDev(tmp_path_factory.mktemp("ui"))
    try:
        server.wait_loaded()
        yield server
    finally:
        leftovers = server.stop()
        assert not leftovers, f"processes outlived dagster dev's shutdown: {leftovers}"


ASSET_NODES = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"


def test_the_ui_serves_every_asset_with_its_upstream_lineage(dagster_dev):
    nodes = dagster_dev.gql(ASSET_NODES)["assetNodes"]
    served = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    graph = defs.resolve_asset_graph()
    expected = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
                for k in graph.get_all_asset_keys()}
    assert served == expected
    assert served["clean_products"] == {"merged_products"}


def _launch(dagster_dev, keys: list[list[str]]) -> str:
    mutation = """
    mutation Launch($params: ExecutionParams!) {
      launchRun(executionParams: $params) {
        __typename
        ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message }
        ... on InvalidSubsetError { message }
        ... on RunConfigValidationInvalid { errors { message } }
      }
    }"""
    params = {
        # The "Materialize" button's target: the implicit asset job, narrowed to a selection.
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__",
                     "jobName": "__ASSET_JOB", "assetSelection": [{"path": k} for k in keys],
                     "assetCheckSelection": []},
        "mode": "default",
        # One process for the whole run: the same steps, without a process start per step.
        "runConfigData": {"execution": {"config": {"in_process": {}}}},
        "executionMetadata": {"tags": [{"key": "fashion/trigger", "value": "ui-test"}]},
    }
    result = dagster_dev.gql(mutation, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def _wait_for_run(dagster_dev, run_id: str, timeout_s: float = 200) -> str:
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = dagster_dev.gql(query, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    raise AssertionError(f"run {run_id} still {status} after {timeout_s} s:\n{dagster_dev.log_tail()}")


def test_a_run_launched_through_the_ui_api_materializes_the_sample(dagster_dev):
    nodes = dagster_dev.gql(ASSET_NODES)["assetNodes"]
    keys = [n["assetKey"]["path"] for n in nodes if n["groupName"] in INGEST_GROUPS]
    assert {k[-1] for k in keys} >= {"kaggle_products_raw", "hm_articles_raw", "clean_products"}
    run_id = _launch(dagster_dev, keys)
    status = _wait_for_run(dagster_dev, run_id)
    if status != "SUCCESS":
        events = dagster_dev.gql(
            "query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events { __typename "
            "... on MessageEvent { message } } } } }", {"id": run_id})
        pytest.fail(f"run {status}: {json.dumps(events)[-3000:]}")
    latest = dagster_dev.gql("{ assetNodes { assetKey { path } assetMaterializations(limit: 1) { runId } } }")
    materialized_by = {tuple(n["assetKey"]["path"]): [m["runId"] for m in n["assetMaterializations"]]
                       for n in latest["assetNodes"]}
    assert all(materialized_by[tuple(k)] == [run_id] for k in keys), materialized_by
    with duckdb.connect(str(dagster_dev.var / "warehouse.duckdb"), read_only=True) as con:
        n = con.execute("select count(*) from clean_products").fetchone()[0]
        price_from = con.execute("select upstream_asset, upstream_column from _lineage "
                                 "where asset = 'clean_products' and column_name = 'price_usd'").fetchall()
        merged_from = {r[0] for r in con.execute("select upstream_asset from _lineage "
                                                 "where asset = 'merged_products' and column_name is null").fetchall()}
    assert n > 1000  # 800 Kaggle + 450 H&M sample products, less the counted drops
    # The code location's IO manager recorded where tables and columns came from.
    assert ("merged_products", "price_usd") in price_from
    assert merged_from == {"kaggle_products_raw", "hm_articles_raw", "hm_article_prices"}


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _shown(name: str, text: str) -> bool:
    """The graph shortens long names in the middle ("kaggle_produc…_raw")."""
    if name in text:
        return True
    return any(name.startswith(a) and name.endswith(b) and len(a) >= 4
               for a, b in re.findall(r"([\w]+)…([\w]*)", text))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
def test_the_lineage_page_renders_the_asset_graph(dagster_dev, tmp_path):
    nodes = dagster_dev.gql(ASSET_NODES)["assetNodes"]
    groups = sorted({n["groupName"] for n in nodes})
    # Groups start collapsed; the page's own `expanded` query parameter opens them all.
    expanded = ",".join(f"global@global:{g}" for g in groups)
    url = f"{dagster_dev.url}/asset-groups?{urllib.parse.urlencode({'expanded': expanded})}"

    def chromium(*args: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        profile.mkdir()
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1600,1000", "--hide-scrollbars", "--virtual-time-budget=20000", *args, url],
            capture_output=True, text=True, timeout=120)

    dom = chromium("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = _visible_text(dom.stdout)
    assert "Global asset lineage" in text
    missing = [n["assetKey"]["path"][-1] for n in nodes if not _shown(n["assetKey"]["path"][-1], text)]
    assert missing == [], f"asset nodes not drawn: {missing}\n{text[:1500]}"
    assert all(g in text for g in groups)

    shot = tmp_path / "lineage.png"
    result = chromium(f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1000, 1600)
    # A blank or error page is one flat colour; the graph has nodes, edges and text.
    assert pixels.std() > 10
    assert np.mean(np.abs(pixels - np.median(pixels)) > 30) > 0.02
    # The graph canvas right of the sidebars: asset nodes drawn there, not just the chrome.
    canvas = pixels[150:900, 560:1550]
    assert canvas.std() > 5
    keep = os.environ.get("FASHION_UI_SCREENSHOT")
    if keep:  # e.g. FASHION_UI_SCREENSHOT=var/lineage.png to look at it
        shutil.copy(shot, keep)

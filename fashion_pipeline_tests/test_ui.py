"""The Dagster UI for real: the README's main command (`dg launch --assets '*'` with DAGSTER_HOME
under var/ and the shipped instance config) on a temporary var folder, then `dg dev` on loopback
on that same instance: every asset shows the command's materialization, clean_products shows its
metadata, a materialization launched through the GraphQL API the UI itself uses succeeds, and
headless Chromium renders the asset graph as materialized and clean_products' page with its metadata.

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
from fashion_pipeline.paths import PROJECT_ROOT

pytestmark = [pytest.mark.ui, pytest.mark.slow, pytest.mark.timeout(1800)]
INGEST_ASSETS = ["kaggle_products_raw", "hm_articles_raw", "hm_article_prices", "merged_products", "clean_products"]
README = PROJECT_ROOT / "README.md"
MAIN_COMMAND_PREFIX = "python3 -m venv .venv && .venv/bin/pip install -e . && "


def readme_main_command() -> str:
    """The README's main command, less the venv creation and install (this venv is the one under test)."""
    lines = [ln for ln in README.read_text().splitlines() if ln.startswith(MAIN_COMMAND_PREFIX)]
    assert len(lines) == 1, "the README's main command line was not found"
    return lines[0][len(MAIN_COMMAND_PREFIX):]


def run_main_command(root: Path) -> subprocess.CompletedProcess:
    """Run the README's main command in ``root``, a stand-in for the repository root whose var/ is
    private: the project's files are linked in, .venv is the venv running the tests."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("fashion_pipeline", "data", "workspace.yaml", "pyproject.toml"):
        (root / name).symlink_to(PROJECT_ROOT / name)
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASHION_DATA_ROOT", "FASHION_EXECUTOR", "DAGSTER_HOME", "FASHION_PROFILE")}
    env.update(FASHION_VAR_DIR=str(root / "var"), FASHION_AUTOMATION="off", PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(["bash", "-c", f"set -euo pipefail; {readme_main_command()}"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1500)

SHIPPED_DAGSTER_YAML = PROJECT_ROOT / "fashion_pipeline" / "deploy" / "dagster.yaml"
CHROMIUM = os.environ.get("CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
LOCATION = "fashion_pipeline.definitions"  # workspace.yaml's python_module entry


class DagsterDev:
    """`dg dev` in its own session on the instance the main command wrote (root/var/dagster_home);
    stop() ends every process of that session."""

    def __init__(self, root: Path):
        self.home, self.var, self.log_path = root / "var" / "dagster_home", root / "var", root / "dagster_dev.log"
        assert (self.home / "dagster.yaml").read_text() == SHIPPED_DAGSTER_YAML.read_text()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("FASHION_DATA_ROOT", "FASHION_EXECUTOR")}
        env.update(DAGSTER_HOME=str(self.home), FASHION_VAR_DIR=str(self.var), FASHION_PROFILE="local",
                   FASHION_AUTOMATION="off", PYTHONPATH=str(PROJECT_ROOT))
        dg_cli = os.path.join(os.path.dirname(sys.executable), "dg")
        self.log = open(self.log_path, "w")
        # dg dev ties SIGTERM to SIGINT's handler: restore default dispositions so both work.
        self.proc = subprocess.Popen(
            ["env", "--default-signal=INT,TERM", dg_cli, "dev", "-w", "workspace.yaml",
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
def main_command(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ui") / "repo"
    proc = run_main_command(root)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "SupersessionWarning" not in proc.stderr
    return root


@pytest.fixture(scope="module")
def dagster_dev(main_command):
    server = DagsterDev(main_command)
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


ASSET_RUNS = "{ assetNodes { assetKey { path } assetMaterializations(limit: 1) { runId metadataEntries { label } } } }"


def test_the_main_command_is_recorded_in_the_instance_the_ui_reads(dagster_dev):
    nodes = dagster_dev.gql(ASSET_RUNS)["assetNodes"]
    latest = {n["assetKey"]["path"][-1]: n["assetMaterializations"] for n in nodes}
    never = sorted(k for k, m in latest.items() if not m)
    assert never == [], f"shown as never materialized after the main command: {never}"
    runs = dagster_dev.gql("{ runsOrError { ... on Runs { results { runId status } } } }")["runsOrError"]["results"]
    assert [r["status"] for r in runs] == ["SUCCESS"]  # the main command's one run, kept by the instance
    assert {m[0]["runId"] for m in latest.values()} == {runs[0]["runId"]}
    labels = {e["label"] for e in latest["clean_products"][0]["metadataEntries"]}
    assert {"rows_with_price", "rows_with_image", "dagster/row_count"} <= labels, labels


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
        # No execution config: the code location's default executor (in process, FASHION_EXECUTOR unset).
        "runConfigData": {},
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
    keys = [[name] for name in INGEST_ASSETS]
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

    def chromium(*args: str, page: str = url) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        profile.mkdir()
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1600,1000", "--hide-scrollbars", "--virtual-time-budget=20000", *args, page],
            capture_output=True, text=True, timeout=120)

    dom = chromium("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = _visible_text(dom.stdout)
    assert "Global asset lineage" in text
    missing = [n["assetKey"]["path"][-1] for n in nodes if not _shown(n["assetKey"]["path"][-1], text)]
    assert missing == [], f"asset nodes not drawn: {missing}\n{text[:1500]}"
    assert all(g in text for g in groups)
    # The whole graph is drawn zoomed out (names only); the asset catalog lists each asset's status:
    # after the main command every one says when it was materialized, none "Never materialized".
    catalog = chromium("--dump-dom", page=f"{dagster_dev.url}/assets")
    assert catalog.returncode == 0, catalog.stderr[-2000:]
    catalog_text = _visible_text(catalog.stdout)
    assert "Never materialized" not in catalog_text, catalog_text[:3000]
    assert catalog_text.count("Materialized •") == len(nodes), catalog_text[:3000]

    # clean_products' page: its latest materialization's metadata.
    page = chromium("--dump-dom", page=f"{dagster_dev.url}/assets/clean_products")
    assert page.returncode == 0, page.stderr[-2000:]
    asset_text = _visible_text(page.stdout)
    assert "clean_products" in asset_text
    shown = [label for label in ("rows_with_price", "rows_with_image", "rows_by_source_and_category")
             if label in asset_text]
    assert shown, f"clean_products' metadata not shown:\n{asset_text[:3000]}"

    shot = tmp_path / "lineage.png"
    result = chromium(f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1000, 1600)
    # A blank or error page is one flat colour; the graph has nodes, edges and text.
    assert pixels.std() > 10
    assert np.mean(np.abs(pixels - np.median(pixels)) > 30) > 0.01  # 16 nodes zoomed out: ~2% of pixels
    # The graph canvas right of the sidebars: asset nodes drawn there, not just the chrome.
    canvas = pixels[150:900, 560:1550]
    assert canvas.std() > 5
    keep = os.environ.get("FASHION_UI_SCREENSHOT")
    if keep:  # e.g. FASHION_UI_SCREENSHOT=var/lineage.png to look at it
        shutil.copy(shot, keep)

"""Benchmark the whole pipeline on growing subsets of the full development data.

    .venv/bin/python benchmarks/pipeline.py --data "$FASHION_DATA_ROOT" --sizes 1000,5000,20000,all

For each size it builds a subset in the datasets' own layouts (CSV rows chosen by a stable
hash; the per-product JSON and image folders are symlinked, not copied), runs the README's main
command on it (`dg launch --assets '*'`, a separate process on a persistent instance with the
shipped dagster.yaml, FASHION_EXECUTOR as given: the code location's default `in_process`), and
records per stage: wall time, rows/s and peak memory of the command's process tree, sampled
every 0.25 s while the stage runs (PSS summed over the tree: a page shared by processes — a forked
image-loader worker maps its parent's pages — counts once; the sum of their RSS, which counts it once
per process, is reported beside it), and the command's own wall time and start-up. It then adds 1% new products and
re-runs, then re-runs twice more with nothing changed, to measure what caches, retraining only
the published model choices, and reusing the output of stages whose inputs are unchanged save
(the runs share one Dagster instance, as runs of a deployment do). Model quality tables found in the
warehouse are compared with the reference baselines. The report (Markdown + PNG plots) goes
to ``--out`` (default benchmarks/out/<timestamp>/report.md); a run whose sizes include ``all``
(with the re-runs) is copied to benchmarks/results/pipeline.md (``--executor multiprocess``:
pipeline_multiprocess.md).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAGGLE = "fashion-product-images"
HM = "h-and-m-personalized-fashion-recommendations"

# Reference results (the environment notes and the original study).
BASELINES = {
    "classification (TF-IDF + LinearSVC, Kaggle full listings)": "gender acc 0.996; usage macro-F1 0.698; subCategory acc 0.993",
    "classification (original study, CLIP fusion F1)": "gender 0.86, category 0.83, usage 0.50",
    "price (text ridge)": "Kaggle log R² 0.924 / RMSLE 0.246; H&M log R² 0.672 / RMSLE 0.337",
    "price (original study R²)": "MLP 0.8904, LightGBM 0.8364, linear 0.7456; MLP 190 s on GPU vs LightGBM 2,133 s",
}
QUALITY_TABLES = ["extraction_quality", "clustering_metrics", "classifier_leaderboard", "regressor_metrics"]


def _rank(key: str) -> str:
    return hashlib.sha1(f"bench:{key}".encode()).hexdigest()


def _read_rows(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """(header line, [(id, raw line)]) keeping each raw line byte for byte."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out = []
    for line in lines[1:]:
        first = next(csv.reader([line]), [""])
        if first and first[0].strip():
            out.append((first[0].strip(), line))
    return lines[0], out


def build_subset(src: Path, dst: Path, n_total: int | None, drop_fraction: float = 0.0) -> dict:
    """A subset of ``n_total`` products (both sources in proportion), minus the last
    ``drop_fraction`` of them by rank (to add them back later as the 'new' products)."""
    if dst.exists():
        shutil.rmtree(dst)
    k_header, k_rows = _read_rows(src / KAGGLE / "styles.csv")
    h_header, h_rows = _read_rows(src / HM / "articles.csv")
    total = len(k_rows) + len(h_rows)
    n_total = total if n_total is None else min(n_total, total)
    n_k = round(n_total * len(k_rows) / total)
    n_h = n_total - n_k
    chosen = {}
    for name, header, rows, n in ((KAGGLE, k_header, k_rows, n_k), (HM, h_header, h_rows, n_h)):
        ranked = sorted(rows, key=lambda r: _rank(r[0]))[:n]
        keep = ranked[: len(ranked) - int(round(len(ranked) * drop_fraction))]
        (dst / name).mkdir(parents=True)
        fname = "styles.csv" if name == KAGGLE else "articles.csv"
        (dst / name / fname).write_text(header + "".join(line for _, line in keep), encoding="utf-8")
        for item in ("styles", "images", "transactions_train.csv"):
            if (src / name / item).exists():
                os.symlink((src / name / item).resolve(), dst / name / item)
        chosen[name] = len(keep)
    return chosen


def tree_memory_mb(root: int) -> tuple[float, float]:
    """(PSS, RSS) of process ``root`` and all its descendants (a run's step processes under the
    multiprocess executor; the embedding stage's image-loader worker), each summed over the tree, in MB;
    (0, 0) once the tree is gone. A forked child maps its parent's pages: summed RSS counts them in both,
    summed PSS (each page divided among the processes mapping it) once — the memory the tree holds.
    Where the kernel has no smaps_rollup, PSS is taken to be RSS."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while the table was read
        children.setdefault(ppid, []).append(int(entry.name))
    pss_kb, rss_kb, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = _memory_fields(pid)
        except OSError:
            continue
        rss_kb += fields.get("Rss", 0)
        pss_kb += fields.get("Pss", fields.get("Rss", 0))
        todo.extend(children.get(pid, []))
    return pss_kb / 1024, rss_kb / 1024


def _memory_fields(pid: int) -> dict[str, int]:
    """{'Rss': kB, 'Pss': kB} of one process (only 'Rss', from its status, without smaps_rollup)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return {k: int(line.split()[1]) for line in fh for k in ("Rss", "Pss") if line.startswith(k + ":")}
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise
    with open(f"/proc/{pid}/status") as fh:
        return {"Rss": next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)}


class MemorySampler(threading.Thread):
    """Samples `tree_memory_mb(pid)` every ``period`` seconds until stopped (smaps_rollup walks each
    process's page tables: a few ms for a 4 GB process, so not at 10 Hz)."""

    def __init__(self, pid: int, period: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples, self._stop_evt = pid, period, [], threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.samples.append((time.time(), *tree_memory_mb(self.pid)))
            time.sleep(self.period)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()

    def peak(self, start: float, end: float, which: int = 0) -> float:
        """Largest sample (``which`` 0: PSS, 1: RSS) while [start, end] ran; a step shorter than the
        period gets the last sample before its end."""
        values = [m[which] for t, *m in self.samples if start <= t <= end]
        if not values:
            values = [m[which] for t, *m in self.samples if t <= end][-1:]
        return max(values) if values else float("nan")


def main_command() -> list[str]:
    """The README's main command (`dg launch --assets '*'`) with this interpreter's venv."""
    dg_cli = Path(sys.executable).parent / "dg"
    if not dg_cli.exists():
        raise SystemExit(f"{dg_cli} not found: run the benchmark with the project's venv python (dagster-dg-cli installs `dg`)")
    return [str(dg_cli), "launch", "--assets", "*", "-m", "fashion_pipeline.definitions"]


def materialize_all(data_root: Path, var_dir: Path, home: Path, executor: str, log_path: Path) -> tuple[list[dict], float, float]:
    """Run the README's main command once, as a user does: a `dg launch` process on the persistent
    instance ``home`` (the shipped dagster.yaml), FASHION_EXECUTOR=``executor``. Returns per-step
    timings (from the instance's event log), peak PSS and RSS of the command's process tree while each step
    ran, whether the step reused its last output (metadata reused_from_run); the command's wall
    time; and its start-up (process start, imports, loading the definitions: until RUN_START)."""
    import dagster as dg

    from fashion_pipeline.reuse import REUSED_FROM_KEY

    env = {**os.environ, "FASHION_DATA_ROOT": str(data_root), "FASHION_VAR_DIR": str(var_dir),
           "DAGSTER_HOME": str(home), "FASHION_EXECUTOR": executor, "FASHION_AUTOMATION": "off",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(main_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait()
        finally:
            wall = time.time() - t0
            sampler.stop()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        records = instance.get_run_records(limit=1)
        if not records or records[0].create_timestamp.timestamp() < t0 - 1:
            raise SystemExit(f"the main command left no new run (exit code {rc}); its output: {log_path}")
        run = records[0].dagster_run
        starts, rows, reused, run_start = {}, [], set(), None
        for entry in instance.all_logs(run.run_id):
            ev = entry.dagster_event
            if ev is None:
                continue
            if ev.event_type == dg.DagsterEventType.RUN_START:
                run_start = entry.timestamp
            if not ev.step_key:
                continue
            if ev.event_type_value == "ASSET_MATERIALIZATION" and \
                    REUSED_FROM_KEY in ev.step_materialization_data.materialization.metadata:
                reused.add(ev.step_key)
            elif ev.event_type_value == "STEP_START":
                starts[ev.step_key] = entry.timestamp
            elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                start = starts.get(ev.step_key, entry.timestamp)
                rows.append({"stage": ev.step_key, "status": "ok" if ev.event_type_value == "STEP_SUCCESS" else "FAILED",
                             "wall_s": entry.timestamp - start, "peak_pss_mb": sampler.peak(start, entry.timestamp),
                             "peak_rss_mb": sampler.peak(start, entry.timestamp, which=1),
                             "reused": ev.step_key in reused})
        if rc != 0 or run.status != dg.DagsterRunStatus.SUCCESS:
            failed = [r["stage"] for r in rows if r["status"] != "ok"]
            print(f"  run {run.run_id} {run.status.value} (exit code {rc}) at {failed}; output: {log_path}", flush=True)
    finally:
        instance.dispose()
    return rows, wall, (run_start - t0) if run_start else float("nan")


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for pkg in ("dagster", "duckdb", "pandas", "torch", "scikit-learn", "lightgbm", "xgboost-cpu", "open_clip_torch", "transformers"):
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    from fashion_pipeline.core.encoders.base import cpu_has_native_bf16

    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "native_bf16": cpu_has_native_bf16(),
            "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_at_start": os.getloadavg(), "versions": versions}


def run_size(src: Path, out: Path, size: int | None, incremental: bool, executor: str) -> dict:
    label = "all" if size is None else str(size)
    data = out / "data" / label
    var = out / "var" / label
    counts = build_subset(src, data, size, drop_fraction=0.01 if incremental else 0.0)
    print(f"[{label}] {counts} products -> materializing", flush=True)
    # One persistent instance for this size's runs, as the README sets it up: they see each other.
    home = var / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "fashion_pipeline" / "deploy" / "dagster.yaml", home / "dagster.yaml")

    def launch(name: str) -> dict:
        stages, wall, startup = materialize_all(data, var, home, executor, var / f"{name}.log")
        return {"wall_s": wall, "startup_s": startup, "stages": stages}

    first = launch("full")
    import duckdb

    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        n_clean = con.execute("select count(*) from clean_products").fetchall()[0][0]
    res = {"size": label, "input_products": sum(counts.values()), "clean_rows": n_clean, **first}
    if incremental:
        build_subset(src, data, size, drop_fraction=0.0)
        print(f"[{label}] +1% new products -> re-run", flush=True)
        res["incremental"] = {**launch("incremental"), "price_gate": price_gate_table(var)}
        print(f"[{label}] nothing changed -> re-run", flush=True)
        res["unchanged"] = launch("unchanged")
        # regressor_metrics' listing evaluation reads the classifiers published *before* it ran, so the
        # run after a retrain evaluates once more; this one shows the steady state.
        print(f"[{label}] nothing changed again -> re-run", flush=True)
        res["unchanged_again"] = launch("unchanged_again")
    res["warehouse"] = str(var / "warehouse.duckdb")
    return res


def price_gate_table(var: Path) -> str:
    """The +1% retrain's price candidate against the model published before it (regressor_metrics'
    'all' rows per gated form): RMSLE of each, the paired standard error of their difference, and the
    tolerance the gate applied (read from `price_gate`'s own comparison)."""
    import duckdb

    from fashion_pipeline.core.listing_eval import GATE_FORMS
    from fashion_pipeline.core.pricing.gate import price_gate

    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        m = con.execute('select * from "regressor_metrics"').df()
    allowed = {c["reference"]: c for c in price_gate(m, GATE_FORMS).comparisons}
    pub = m[(m["model"] == "published") & (m["source"] == "all")].set_index("form")
    rows = ["| form | candidate RMSLE | published RMSLE | change | paired SE | listings paired | tolerance |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for form in GATE_FORMS:
        c = allowed.get(f"published [{form}, all]")
        if c is None:
            rows.append(f"| {form} | – | – | – | – | – | – |")
            continue
        se, n = (pub.loc[form, k] if k in pub.columns else float("nan") for k in ("rmsle_diff_se", "n_paired"))
        ref = c["reference_value"]
        rows.append(f"| {form} | {c['candidate']:.4f} | {ref:.4f} | {c['candidate'] / ref - 1:+.2%} | {se:.4f} | "
                    f"{n:.0f} | {c['allowed'] / ref - 1:.2%} |")
    return "\n".join(rows)


def quality_tables(warehouse: str) -> dict[str, str]:
    import duckdb

    out = {}
    with duckdb.connect(warehouse, read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        for name in QUALITY_TABLES:
            if name in tables:
                out[name] = con.execute(f'select * from "{name}"').df().to_markdown(index=False, floatfmt=".4g")
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    stages = sorted({s["stage"] for r in results for s in r["stages"]})
    xs = [r["clean_rows"] for r in results]
    for stage in stages:
        ys = [next((s["wall_s"] for s in r["stages"] if s["stage"] == stage), float("nan")) for r in results]
        ax[0].plot(xs, ys, marker="o", label=stage)
        ms = [next((s["peak_pss_mb"] for s in r["stages"] if s["stage"] == stage), float("nan")) for r in results]
        ax[1].plot(xs, ms, marker="o", label=stage)
    for a, title in ((ax[0], "wall time per stage (s)"), (ax[1], "peak memory during stage (MB, PSS)")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("products")
        a.set_title(title)
        a.grid(True, which="both", alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def portable_command(argv: list[str]) -> str:
    """The command line as a reader can reuse it: this machine's data and output folders are
    replaced by placeholders (a report must not name paths outside the repository)."""
    shown, hide = ["python", "benchmarks/pipeline.py"], {"--data": '"$FASHION_DATA_ROOT"', "--out": "<out dir>"}
    args = list(argv[1:])
    for i, a in enumerate(args):
        flag = a.split("=", 1)[0]
        if flag in hide and "=" in a:
            shown.append(f"{flag}={hide[flag]}")
        elif i > 0 and args[i - 1] in hide:
            shown.append(hide[args[i - 1]])
        else:
            shown.append(a)
    return " ".join(shown)


def write_report(results: list[dict], info: dict, out: Path) -> Path:
    plot(results, out / "stages.png")
    lines = ["# Pipeline benchmark", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, "
             f"{'native' if info.get('native_bf16') else 'no native'} bf16 (AVX512-BF16 / AMX: the encoders and "
             f"the price MLP run in {'bf16' if info.get('native_bf16') else 'fp32'}); Python {info['python']}; "
             f"load average at start {tuple(round(x, 1) for x in info['load_avg_at_start'])} (shared machine).",
             "", "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), "",
             "Command: `" + portable_command(sys.argv) + "`", "",
             "Each run is the README's main command (`dg launch --assets '*' -m fashion_pipeline.definitions`) in its "
             f"own process on a persistent instance (the shipped dagster.yaml), FASHION_EXECUTOR={info['executor']}; "
             "wall times are the command's, start-up included (process start, imports, loading the definitions); "
             "peak memory is the command's process tree's: PSS summed over its processes (a page they share, "
             "e.g. with the forked image-loader worker of product_embeddings, counts once), and beside it their "
             "RSS summed (which counts a shared page once per process).", "",
             "The first run on a fresh var dir has nothing published, so the model assets *select* (every family "
             "in the default config lists trained — the classifiers' classical ones and image_cnn; multimodal_cnn "
             "and clip_fusion compete in model_selection_job —, chosen on validation); the re-runs use the default `mode: retrain` (the weekly schedule's): "
             "only the published choice per classifier task/regime and price form is retrained, and a stage whose "
             "input fingerprint matches its last materialization re-emits that output (marked *reused*).", "",
             "## Whole pipeline", "",
             "| products | clean rows | wall (s) | rows/s | peak memory, PSS (MB) | peak RSS sum (MB) | +1% re-run (s) "
             "| re-run / full "
             "| nothing-changed re-run (s) | re-run / full | nothing changed again (s) | re-run / full |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        peak = max((s["peak_pss_mb"] for s in r["stages"]), default=float("nan"))
        peak_rss = max((s["peak_rss_mb"] for s in r["stages"]), default=float("nan"))
        cells = []
        for key in ("incremental", "unchanged", "unchanged_again"):
            w = r.get(key, {}).get("wall_s")
            cells.append(f"{w:.1f} | {w / r['wall_s']:.1%} |" if w else "– | – |")
        lines.append(f"| {r['size']} | {r['clean_rows']} | {r['wall_s']:.1f} | {r['clean_rows'] / r['wall_s']:.0f} | {peak:.0f} | {peak_rss:.0f} | "
                     + " ".join(cells))
    lines += ["", "Of which the command's start-up (until the run's first event): "
              + "; ".join(f"{r['size']}: " + " / ".join(f"{x['startup_s']:.1f}" for x in
                                                        (r, *(r[k] for k in ("incremental", "unchanged", "unchanged_again") if k in r)))
                          + " s" for r in results) + " (full / +1% / nothing changed / again)."]
    lines += ["", "## Per stage", "", "![stages](stages.png)", "",
              "| products | stage | status | wall (s) | rows/s | peak PSS (MB) | peak RSS sum (MB) | +1% re-run (s) "
              "| nothing-changed re-run (s) "
              "| again (s) |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        inc = {s["stage"]: f"{s['wall_s']:.2f}" + (" reused" if s.get("reused") else "")
               for s in r.get("incremental", {}).get("stages", [])}
        same, again = ({s["stage"]: f"{s['wall_s']:.2f}" + (" reused" if s.get("reused") else "")
                        for s in r.get(key, {}).get("stages", [])} for key in ("unchanged", "unchanged_again"))
        for s in r["stages"]:
            rate = r["clean_rows"] / s["wall_s"] if s["wall_s"] > 0 else float("nan")
            lines.append(f"| {r['size']} | {s['stage']} | {s['status']} | {s['wall_s']:.2f} | {rate:.0f} | {s['peak_pss_mb']:.0f} | {s['peak_rss_mb']:.0f} | "
                         + (f"{inc[s['stage']]} |" if s["stage"] in inc else "– |")
                         + (f" {same[s['stage']]} |" if s["stage"] in same else " – |")
                         + (f" {again[s['stage']]} |" if s["stage"] in again else " – |"))
    for r in results:
        if r.get("incremental", {}).get("price_gate"):
            lines += ["", f"## The +1% retrain's price gate ({r['size']} products)", "",
                      "Candidate vs the model published before it, on the same test listings ('all' rows of "
                      "regressor_metrics). The gate allows the larger of 1% and two paired standard errors.", "",
                      r["incremental"]["price_gate"]]
    lines += ["", "## Model quality on the largest size (test split)", ""]
    quality = quality_tables(results[-1]["warehouse"])
    if not quality:
        lines.append("_no model tables in the warehouse_")
    for name, table in quality.items():
        lines += [f"### {name}", "", table, ""]
    lines += ["## Reference results", "", "| reference | figures |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in BASELINES.items()]
    lines += ["", "The published figures were measured on a random row split. The same recipe on this pipeline's "
              "grouped split (what the tables above use) is in [reference.md](reference.md) "
              "(`benchmarks/reference.py`)."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"machine": info, "results": results}, indent=2, default=str))
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=os.environ.get("FASHION_DATA_ROOT"), required="FASHION_DATA_ROOT" not in os.environ,
                    help="full data folder (both datasets; default: $FASHION_DATA_ROOT)")
    ap.add_argument("--sizes", default="1000,5000,20000,all", help="comma-separated product counts; 'all' = everything")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-incremental", action="store_true", help="skip the +1%% re-run and the nothing-changed re-runs")
    ap.add_argument("--executor", choices=("in_process", "multiprocess"), default="in_process",
                    help="FASHION_EXECUTOR of the measured command (default: the code location's default, in_process)")
    args = ap.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "out" / time.strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info["executor"] = args.executor
    results = []
    sizes = [t.strip() for t in args.sizes.split(",")]
    for token in sizes:
        size = None if token == "all" else int(token)
        results.append(run_size(args.data, out, size, incremental=not args.no_incremental, executor=args.executor))
        write_report(results, info, out)  # a partial report survives an interrupted run
    report = write_report(results, info, out)
    if "all" in sizes and not args.no_incremental:
        # Only a run that measures what the report answers (the full data, with the re-runs) replaces it.
        # The default executor's report is pipeline.md; another executor's sits beside it (pipeline_multiprocess.md).
        name = "pipeline" if args.executor == "in_process" else f"pipeline_{args.executor}"
        results_dir = ROOT / "benchmarks" / "results"
        results_dir.mkdir(exist_ok=True)
        (results_dir / f"{name}.md").write_text(report.read_text().replace("](stages.png)", f"]({name}_stages.png)"))
        shutil.copyfile(out / "stages.png", results_dir / f"{name}_stages.png")
        print(f"report: {report} (copied to {results_dir / f'{name}.md'})")
    else:
        print(f"report: {report} (benchmarks/results/pipeline.md is replaced only by a run with 'all' and the re-runs)")
    shutil.rmtree(out / "data", ignore_errors=True)


if __name__ == "__main__":
    main()

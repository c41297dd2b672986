"""Copy a small, stratified, real subset of the full datasets into the project's data/.

    python -m fashion_pipeline.devtools.make_sample --source "$FASHION_DATA_ROOT" --dest data

Deterministic: products are ranked by a stable hash of their id, and the first few of each
source category are kept, so every category appears and the same command gives the same
sample. Files are copied byte for byte in the datasets' own layouts.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
from collections import defaultdict
from pathlib import Path

KAGGLE = "fashion-product-images"
HM = "h-and-m-personalized-fashion-recommendations"


def _rank(key: str) -> str:
    return hashlib.sha1(f"sample:{key}".encode()).hexdigest()


def _stratified(rows: list[dict], stratum, per_stratum: int, total: int, key) -> list[dict]:
    by = defaultdict(list)
    for r in rows:
        by[stratum(r)].append(r)
    chosen: list[dict] = []
    for group in by.values():
        group.sort(key=lambda r: _rank(key(r)))
        chosen.extend(group[:per_stratum])
    if len(chosen) > total:
        chosen.sort(key=lambda r: _rank(key(r)))
        chosen = chosen[:total]
    return chosen


def make_kaggle(src: Path, dst: Path, total: int, per_stratum: int) -> int:
    with open(src / "styles.csv", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, r[:9] + [",".join(r[9:])])) for r in reader if len(r) >= 10]
    rows = [r for r in rows if (src / "styles" / f"{r['id']}.json").is_file()]
    chosen = _stratified(rows, lambda r: (r["subCategory"], r["articleType"]), per_stratum, total, lambda r: r["id"])
    (dst / "styles").mkdir(parents=True, exist_ok=True)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    with open(dst / "styles.csv", "w", newline="", encoding="utf-8") as fh:
        # Written as Kaggle wrote it: unquoted, so titles with commas keep their real damage.
        for r in [dict(zip(header, header))] + sorted(chosen, key=lambda r: int(r["id"])):
            fh.write(",".join(r[c] for c in header) + "\n")
    for r in chosen:
        shutil.copyfile(src / "styles" / f"{r['id']}.json", dst / "styles" / f"{r['id']}.json")
        img = src / "images" / f"{r['id']}.jpg"
        if img.is_file():
            shutil.copyfile(img, dst / "images" / img.name)
    return len(chosen)


def make_hm(src: Path, dst: Path, total: int, per_stratum: int, unknown_tx: int) -> int:
    with open(src / "articles.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        articles = list(reader)
    with open(src / "transactions_train.csv", newline="", encoding="utf-8") as fh:
        treader = csv.DictReader(fh)
        theader = treader.fieldnames
        tx = list(treader)
    with_tx = {t["article_id"] for t in tx}
    known = {a["article_id"] for a in articles}
    # Prefer articles that have transactions (so they carry a price), keep some without.
    priced = [a for a in articles if a["article_id"] in with_tx]
    unpriced = [a for a in articles if a["article_id"] not in with_tx]
    strat = lambda a: (a["product_group_name"], a["product_type_name"])  # noqa: E731
    chosen = _stratified(priced, strat, per_stratum, int(total * 0.75), lambda a: a["article_id"])
    chosen += _stratified(unpriced, strat, max(1, per_stratum // 3), total - len(chosen), lambda a: a["article_id"])
    ids = {a["article_id"] for a in chosen}
    (dst / "images").mkdir(parents=True, exist_ok=True)
    with open(dst / "articles.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(sorted(chosen, key=lambda a: a["article_id"]))
    unknown = sorted((t for t in tx if t["article_id"] not in known), key=lambda t: _rank(t["customer_id"] + t["t_dat"]))
    keep = [t for t in tx if t["article_id"] in ids] + unknown[:unknown_tx]
    keep.sort(key=lambda t: (t["t_dat"], t["customer_id"], t["article_id"]))
    with open(dst / "transactions_train.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=theader)
        w.writeheader()
        w.writerows(keep)
    for aid in ids:
        img = src / "images" / aid[:3] / f"{aid}.jpg"
        if img.is_file():
            (dst / "images" / aid[:3]).mkdir(exist_ok=True)
            shutil.copyfile(img, dst / "images" / aid[:3] / img.name)
    return len(chosen)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="folder with both full datasets")
    ap.add_argument("--dest", type=Path, required=True, help="where to write the sample (replaced)")
    ap.add_argument("--kaggle", type=int, default=800)
    ap.add_argument("--hm", type=int, default=450)
    args = ap.parse_args(argv)
    for name in (KAGGLE, HM):
        if (args.dest / name).exists():
            shutil.rmtree(args.dest / name)
    nk = make_kaggle(args.source / KAGGLE, args.dest / KAGGLE, args.kaggle, per_stratum=9)
    nh = make_hm(args.source / HM, args.dest / HM, args.hm, per_stratum=12, unknown_tx=300)
    print(f"sample written to {args.dest}: {nk} Kaggle products, {nh} H&M articles")


if __name__ == "__main__":
    main()

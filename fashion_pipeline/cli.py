"""Command line: `fashion-pipeline score --input <dir or file> --output <file.parquet|.csv>`, and
`fashion-pipeline models list | show | publish | prune` to inspect the model store, roll back and free disk."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

from fashion_pipeline.paths import default_var_path, resolve

EXIT_CODES = """exit codes:
  0  scores written (an input with no usable listing gives an empty output file and a
     warning); rows that could not be read are skipped and counted as not_scored/<reason>
     in the printed summary
  1  unexpected error: one line on stderr (-v shows the traceback)
  2  unusable input (missing path, unsupported file type, invalid JSON or a wrong top-level
     shape, a folder in neither dataset layout, an --output that is not .parquet / .csv),
     no published price model, or an encoder other than the one the published models were
     trained on
"""

EXIT_OK, EXIT_ERROR, EXIT_UNUSABLE = 0, 1, 2
OUTPUT_SUFFIXES = (".parquet", ".csv")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _score(args, summary_out=None) -> int:
    from pathlib import Path

    from fashion_pipeline.core import scoring
    from fashion_pipeline.core.model_store import ModelStore
    from fashion_pipeline.core.reports import DropReport

    if Path(args.output).suffix.lower() not in OUTPUT_SUFFIXES:
        print(f"error: --output {args.output}: must end in .parquet or .csv", file=sys.stderr)
        return EXIT_UNUSABLE
    store = ModelStore(resolve(args.model_store))
    try:
        model, info = scoring.load_published_price_model(store)
    except scoring.NoPublishedModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    report = DropReport()
    try:
        listings = scoring.read_listings(args.input, report=report)
    except (scoring.ListingsReadError, OSError) as e:
        print(f"error: cannot read listings from {args.input}: {_one_line(e)}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not len(listings):
        print(f"warning: no listings found in {args.input}"
              + (f" ({report.total} problem(s) counted under not_scored/ in the summary)" if report.total else "")
              + "; writing an empty output", file=sys.stderr)
    from fashion_pipeline.core.encoders.record import EncoderMismatchError

    try:
        serving = scoring.load_serving(store, model, info, classify=not args.no_classifiers,
                                       embed=not args.no_embeddings and len(listings) > 0,
                                       extract=not args.no_extraction, comparables_k=args.comparables,
                                       encoder_backend=args.encoder_backend)
    except EncoderMismatchError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_UNUSABLE
    for warning in serving.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    scores, counts = scoring.score_listings(listings, model, info, embedder=serving.embedder,
                                            extractor=serving.extractor, classifiers=serving.classifiers,
                                            comparables_index=serving.index, comparables_k=args.comparables)
    counts["comparables"]["index"] = serving.notes["comparables"]
    counts["attribute_extraction"] = serving.notes["attributes"]
    out = scoring.write_scores(scores, args.output)
    counts.update({f"not_scored/{k}": v for k, v in report.as_dict().items()})
    print(json.dumps({"output": str(out), "price_model_version": info.get("version"), **counts}, indent=2),
          file=summary_out or sys.stdout)
    return EXIT_OK


def _models(args) -> int:
    from fashion_pipeline.core.model_store import ModelCorruptError, ModelNotFoundError, ModelStore

    store = ModelStore(resolve(args.model_store))
    names = [args.name] if getattr(args, "name", None) else store.names()
    try:
        unknown = [n for n in names if not store.versions(n)]
    except ValueError as e:  # an invalid name (a path, a dot name)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    if unknown:
        print(f"error: no model {unknown[0]!r} in {store.root} (models there: {', '.join(store.names()) or 'none'})",
              file=sys.stderr)
        return EXIT_UNUSABLE
    if args.models_command == "list":
        rows = [{"name": n, **row} for n in names for row in store.listing(n)]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'name':<36} {'version':<23} {'created (UTC)':<21} {'MB':>8}  published")
            for r in rows:
                print(f"{r['name']:<36} {r['version']:<23} {r['created_at'] or '?':<21} {r['bytes'] / 1e6:>8.1f}  "
                      f"{'PUBLISHED' if r['published'] else ''}{'  damaged: ' + r['problem'] if r['problem'] else ''}")
        return EXIT_OK
    if args.models_command == "show":
        version = args.version or store.published_version(args.name) or store.versions(args.name)[-1]
        try:
            info = store.info(args.name, version)
        except (ModelNotFoundError, ModelCorruptError) as e:
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return EXIT_UNUSABLE
        print(json.dumps({**info, "published": version == store.published_version(args.name)}, indent=2, default=str))
        return EXIT_OK
    if args.models_command == "publish":
        before = store.published_version(args.name)
        try:
            store.publish(args.name, args.version)
        except (ModelNotFoundError, ModelCorruptError) as e:
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return EXIT_UNUSABLE
        print(json.dumps({"name": args.name, "published": args.version, "was": before}, indent=2))
        return EXIT_OK
    removed = {n: store.prune(n, args.keep) for n in names}
    freed = {n: v for n, v in removed.items() if v}
    print(json.dumps({"keep": args.keep, "removed": freed}, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fashion-pipeline", description="Fashion Price Informant command line.",
                                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="Suggest prices (with intervals) and flags for new listings.",
                        description="Suggest prices (with intervals) and flags for new listings.",
                        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("--input", required=True,
                    help="A folder in the Kaggle (styles.csv) or H&M (articles.csv) layout, or a .json / .jsonl / "
                         ".csv file of listings with title, description and image_path.")
    sc.add_argument("--output", required=True, help="Where to write the scores: a .parquet or .csv file.")
    sc.add_argument("--model-store", default=default_var_path("models"),
                    help="Model store folder (default: the pipeline's, <var dir>/models).")
    sc.add_argument("--encoder-backend", default=None,
                    help="Embedding backend (offline | open_clip); default: the encoder the published models record "
                         "(backend, weights, preprocessing). A different encoder is refused (exit 2).")
    sc.add_argument("--no-embeddings", action="store_true",
                    help="Skip image/text embeddings (faster; the model then prices from text and metadata).")
    sc.add_argument("--no-extraction", action="store_true", help="Skip attribute extraction.")
    sc.add_argument("--no-classifiers", action="store_true",
                    help="Do not predict category / gender / usage; use the listings' own values only.")
    sc.add_argument("--comparables", type=int, default=5, metavar="K",
                    help="Add the K most similar catalogue products (id, title, price, similarity) and their median "
                         "price per listing, from the comparables index built with the published price model "
                         "(default 5; 0 disables).")
    sc.add_argument("-v", "--verbose", action="store_true",
                    help="Log progress; on an unexpected error, show the full traceback.")
    models = sub.add_parser("models", help="List the model store's versions, publish one by hand, remove old ones.",
                            description="Inspect the model store. Versions are folders <store>/<name>/<version>; "
                                        "scoring serves each name's PUBLISHED one.")
    verbs = models.add_subparsers(dest="models_command", required=True)
    ls = verbs.add_parser("list", help="Every version (name, version, created, size, published).")
    ls.add_argument("name", nargs="?", help="One model name (default: all).")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table.")
    show = verbs.add_parser("show", help="One version's info.json: metrics, feature spec, checksums.")
    show.add_argument("name")
    show.add_argument("version", nargs="?", help="Default: the published version, else the newest.")
    pub = verbs.add_parser("publish", help="Publish a saved version (e.g. roll back to the previous one). The gate "
                                           "does not judge a version published by hand.")
    pub.add_argument("name")
    pub.add_argument("version")
    prune = verbs.add_parser("prune", help="Remove every version but the published one and the --keep newest.")
    prune.add_argument("name", nargs="?", help="One model name (default: all).")
    prune.add_argument("--keep", type=int, required=True, help="How many of the newest versions to keep (>= 1).")
    for p in (ls, show, pub, prune):
        p.add_argument("--model-store", default=default_var_path("models"),
                       help="Model store folder (default: the pipeline's, <var dir>/models).")
        p.add_argument("-v", "--verbose", action="store_true", help="On an unexpected error, show the full traceback.")
    args = ap.parse_args(argv)
    if args.command == "models" and args.models_command == "prune" and args.keep < 1:
        ap.error("--keep must be at least 1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        if args.command == "score":
            # stdout carries the JSON summary only: libraries that print while loading weights
            # (efficientnet_pytorch: "Loaded pretrained weights ...") are sent to stderr.
            summary_out = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return _score(args, summary_out)
        if args.command == "models":
            return _models(args)
    except Exception as e:  # anything unforeseen: one line, not a traceback (-v shows it)
        if args.verbose:
            raise
        print(f"error: {type(e).__name__}: {_one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())

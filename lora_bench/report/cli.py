"""`lora-bench report`: render a report from stored run folders (merged) or from an imported table,
without training anything. `lora_bench.cli` hooks it in with `add_report_parser` and `run_report`."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from ..storage import RunStore


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="render the HTML report of run folders, or of an imported results table",
        description="Render index.html and results.csv from stored records (several run folders are merged) or, "
                    "with --import-csv, from someone else's results table (the origin study's columns map by "
                    "default: dataset, model, method, modules, rank, time, gpu, loss, f1, accuracy, pst_dataset).")
    parser.add_argument("runs", nargs="*", default=["latest"],
                        help="run folders, or folders holding run folders (default: the latest under reports/)")
    parser.add_argument("--out", type=Path, help="output folder (default: the run folder itself for one run; "
                                                 "reports/report-<time> for several; <csv>-report for an import)")
    parser.add_argument("--import-csv", type=Path, metavar="FILE", help="render a results table instead of records")
    parser.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                        help="with --import-csv: map a column to a field (e.g. f1=weighted_f1, time=train_seconds, "
                             "gpu=peak_memory_gib); an empty field ignores the column")
    return parser


def run_report(args: argparse.Namespace) -> int:
    # imported here so that `lora-bench --help` and the other commands do not load pandas, scipy and statsmodels
    from .load import parse_mapping
    from .render import render_imported, render_report

    try:
        if args.import_csv:
            if args.runs != ["latest"]:
                raise ValueError("give run folders or --import-csv, not both")
            out = args.out or args.import_csv.with_name(args.import_csv.stem + "-report")
            index = render_imported(args.import_csv, parse_mapping(args.map), out)
        else:
            if args.map:
                raise ValueError("--map applies only with --import-csv")
            dirs = [RunStore.open(Path("reports"), "latest").dir if name == "latest" else Path(name)
                    for name in args.runs]
            out = args.out or (dirs[0] if len(dirs) == 1 and (dirs[0] / "records").is_dir()
                               else Path("reports") / dt.datetime.now().strftime("report-%Y%m%d-%H%M%S"))
            index = render_report(dirs, out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lora-bench report: {exc}", file=sys.stderr)
        return 2
    print(index)
    return 0

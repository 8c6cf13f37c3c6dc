"""`lora-bench`: commands that read stored runs without training anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import estimate_check
from .datacard_cli import add_data_parser, run_data
from .report.cli import add_report_parser, run_report
from .storage import RunStore


def records_table(run_dirs: list[str]):
    """One row per record of the given run folders, or folders of runs (`latest`: the latest under reports/)."""
    import pandas as pd

    from .report.load import expand_run_dirs, ran_on

    rows = []
    dirs = [RunStore.open(Path("reports"), "latest").dir if name == "latest" else Path(name) for name in run_dirs]
    for run_dir in expand_run_dirs(dirs):
        store = RunStore(run_dir.parent, run_dir.name)
        shard = store.read_run_info().get("shard")
        for r in store.records():
            spec = r["run_info"]["spec"]
            host = r["meta_info"].get("host") or {}
            row = {"run": store.run_id, "test_id": r["test_id"], "status": r["status"], **{
                k: spec[k] for k in ("model", "method", "bits", "rank", "n", "seed", "lr", "batch_size", "epochs")},
                "ran_on": ran_on(host.get("hostname"), shard, host.get("worker"), host.get("cuda_visible_devices"))}
            if r["status"] == "ok":
                info = r["train_info"]
                row.update(accuracy=info["metrics"]["accuracy"], macro_f1=info["metrics"]["macro_f1"],
                           val_accuracy=info["metrics"]["val_accuracy"],
                           peak_gib=info["resources"]["peak_memory_gib"],
                           train_s=info["resources"]["train_seconds"], p95_ms=info["latency"]["p95_ms"],
                           over_budget=r["budgets"]["over_budget"])
            else:
                row["reason"] = r["reason"]
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="a table of the records of one or more run folders")
    summary.add_argument("runs", nargs="*", default=["latest"],
                         help="run folders, or folders holding run folders (default: the latest under reports/)")
    summary.add_argument("--csv", type=Path, help="also write the table as CSV")
    add_report_parser(sub)
    add_data_parser(sub)
    estimate_check.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "report":
        return run_report(args)
    if args.command == "data":
        return run_data(args)
    if args.command == "estimate-check":
        return estimate_check.run(args)
    try:
        table = records_table(args.runs)
    except FileNotFoundError as exc:
        print(f"lora-bench: {exc}", file=sys.stderr)
        return 2
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

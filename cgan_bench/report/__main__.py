"""`python -m cgan_bench.report SWEEP_DIR [--out DIR] [--overwrite]`: (re)build a sweep's report from its run
directories, by default into the sweep's own `SWEEP_DIR/report/` (linked from `SWEEP_DIR/report.md`)."""
import argparse
import sys
from pathlib import Path

from .build import OWN_FOLDER, ReportExists, write_report
from .collect import _read_yaml, find_run_dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cgan_bench.report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (or any folder of run directories)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: SWEEP_DIR/report); one holding another sweep's report is "
                             "refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the report of another sweep found in --out")
    parser.add_argument("--title", default=None,
                        help="report title (default: the sweep's sweep_name from multirun.yaml, else its folder's name)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory; pass the sweep folder (e.g. multirun/2026-...)",
              file=sys.stderr)
        return 2
    if (args.sweep_dir / ".hydra" / "config.yaml").is_file():  # its report would land inside the run's folder
        print(f"error: {args.sweep_dir} is one run's directory, not a sweep; pass the folder that holds the runs "
              f"({args.sweep_dir.resolve().parent}); nothing written", file=sys.stderr)
        return 2
    if not find_run_dirs(args.sweep_dir):  # a report of no runs ("Runs: 0 completed of 0 found") helps nobody
        print(f"error: {args.sweep_dir} holds no run directories (no folder in it has .hydra/config.yaml); pass a "
              "sweep directory such as multirun/2026-... or a folder of run directories; nothing written",
              file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir / OWN_FOLDER
    try:
        title = args.title or _read_yaml(args.sweep_dir / "multirun.yaml").get("sweep_name")
        report = write_report(args.sweep_dir, out, title, overwrite=args.overwrite)
    except ReportExists as err:
        print(f"error: {err}; nothing written", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

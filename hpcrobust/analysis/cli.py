"""`hpcrobust analyze FILE... --out DIR` and `hpcrobust export FILE... --out DIR`: the subcommands, for
hpcrobust/cli.py to wire in.

`add_parser(subparsers)` / `add_export_parser(subparsers)` add them and `run(args)` / `run_export(args)`
execute them. `main(argv)` mirrors hpcrobust/cli.py's error handling (user error: one line on stderr,
exit 2) for a standalone `analyze`.
"""

from __future__ import annotations

import argparse
import sys

from hpcrobust.errors import UserError

DESCRIPTION = ("Turn hpcrobust result files into every figure of the study: PNGs, the CSV data behind each,"
               " tables, and report.md linking them all. Several files (one per job, seed or size) are merged"
               " into one analysis.")


def _percent(text: str) -> float:
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 < v < 100:
        raise argparse.ArgumentTypeError(f"target ASR must lie strictly between 0 and 100%: {text!r}")
    return v / 100


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 10:
        raise argparse.ArgumentTypeError(f"at least 10 bootstrap resamples are needed, got {v}")
    return v


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("files", nargs="+", metavar="FILE", help="hpcrobust result files (HDF5), merged into one analysis")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for PNGs, CSVs and report.md (created)")
    p.add_argument("--targets", nargs="+", type=_percent, default=[0.01, 0.02, 0.05], metavar="PCT",
                   help="target ASRs in percent for the offense/defense view (default: 1 2 5)")
    p.add_argument("--bootstrap", type=_count, default=1000, metavar="N",
                   help="bootstrap resamples over seeds for slope CIs (default: 1000)")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `analyze` to an argparse subparsers object (parser_class is inherited from it)."""
    p = subparsers.add_parser("analyze", help="figures, CSVs and report.md from result files",
                              description=DESCRIPTION)
    return configure(p)


EXPORT_DESCRIPTION = ("Write the tidy tables behind the analysis (runs, rounds, attacks, per-iteration ASR, transfer,"
                      " sweeps) as Parquet or CSV files that pandas, polars or R read directly. Several files are"
                      " merged with the same rules as `analyze`.")


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add `export` to an argparse subparsers object."""
    p = subparsers.add_parser("export", help="tidy tables (Parquet or CSV) from result files",
                              description=EXPORT_DESCRIPTION)
    p.add_argument("files", nargs="+", metavar="FILE", help="hpcrobust result files (HDF5), merged as by analyze")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the tables (created)")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="file format (default: parquet)")
    return p


def run_export(args: argparse.Namespace) -> int:
    from hpcrobust.analysis.tidy import export

    done = export(args.files, args.out, args.format)
    rows = ", ".join(f"{fname} ({n} rows)" for fname, n in done.files.values())
    print(f"wrote {rows} to {done.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from hpcrobust.analysis.report import analyze

    rep = analyze(args.files, args.out, tuple(args.targets), args.bootstrap)
    print(f"wrote {len(rep.figures)} figures, {len(rep.files)} files and {rep.out / 'report.md'}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (as hpcrobust/cli.py)
        raise UserError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    """Standalone `hpcrobust analyze`, with hpcrobust/cli.py's exit codes."""
    try:
        top = _Parser(prog="hpcrobust")
        sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
        add_parser(sub)
        args = top.parse_args(["analyze", *(sys.argv[1:] if argv is None else argv)])
        return run(args)
    except UserError as exc:
        print(f"hpcrobust: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

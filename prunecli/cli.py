"""``prune``: the console entry point.

``prune run [overrides]`` hands the command line to the Hydra app (so ``-m``, ``--cfg job``,
``--help`` and shell completion behave as Hydra users expect), after :mod:`prunecli.overrides`
has checked the overrides, so a typo gets one line naming the valid choice instead of a Hydra
traceback. SIGTERM / SIGINT end it with 128 + the signal number, after a sweep's job processes.
``prune report PATH...`` stacks run results; ``prune --version``.
"""

from __future__ import annotations

import argparse
import os
import sys

from prunecli import __version__
from prunecli.errors import PruneError
from prunecli.interrupts import Interrupted, raise_on_signals, stop_children

USAGE = """usage: prune run [HYDRA OPTIONS] [key=value ...]   prune one model (-m: sweep)
       prune report PATH... [--columns C,...] [--where K=V] [--pivot rows=R,cols=C,values=V]
                    [--format csv|md|latex] [--plot]  one table (and plots) over many runs
       prune --version"""


def run_command(args: list[str]) -> int:
    from prunecli import overrides

    overrides.check(args)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    from prunecli import app

    sys.argv = [sys.argv[0], *args]
    with raise_on_signals():
        app.run()
    if app.SWEEP_FAILURES:
        from prunecli import console

        console.error(f"{len(app.SWEEP_FAILURES)} job(s) of the sweep failed (listed above)")
        return 1
    return 0


def report_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prune report", description="Stack the results of many runs into one table.")
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them (searched recursively)")
    parser.add_argument("--columns", help="comma-separated columns to show (default: the key ones)")
    parser.add_argument("--output", help="folder for the report files, latency.csv and plots/ (default: the first path)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose column KEY equals VALUE (as written in results.csv, or as a number); repeat to AND")
    parser.add_argument("--pivot", metavar="rows=C,cols=C,values=C",
                        help="pivot the completed runs, e.g. rows=method,cols=sparsity_target,values=ppl "
                             "(index=/columns= also work; join several columns with +); several runs in a cell are averaged")
    parser.add_argument("--format", choices=["csv", "md", "latex"], default="md",
                        help="report.md (default), report.tex or only report.csv, and the same for pivot.*; report.csv is always written")
    parser.add_argument("--plot", action="store_true",
                        help="also write plots/ppl_vs_sparsity.png and, if runs have latency.csv, plots/latency_by_backend.png, "
                             "each with its data as CSV (needs matplotlib)")
    options = parser.parse_args(args)
    from prunecli import report

    columns = options.columns.split(",") if options.columns else None
    report.main(options.paths, columns, options.output, where=options.where, pivot=options.pivot, fmt=options.format, plot=options.plot)
    return 0


COMMANDS = {"run": run_command, "report": report_command}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"prune {__version__}")
        sys.exit(0)
    if argv[0] not in COMMANDS:
        print(f"prune: error: unknown command {argv[0]!r} (choose from: {', '.join(COMMANDS)})\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    try:
        code = COMMANDS[argv[0]](argv[1:])
    except PruneError as err:
        from prunecli import console

        console.error(str(err))
        code = 2
    except Interrupted as stop:  # a run records itself; a sweep's launcher stops the job processes it started
        from prunecli import console

        stopped = stop_children()
        if stopped:
            console.error(f"sweep interrupted by {stop.signal_name}: stopped its {stopped} job process(es); "
                          "the same command finishes it (finished jobs are skipped)")
        elif not stop.recorded:
            console.error(f"interrupted by {stop.signal_name}")
        code = stop.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # a bug or an unforeseen environment problem: one line, traceback on request
        if os.environ.get("PRUNE_DEBUG"):
            raise
        from prunecli import console

        console.error(f"{type(err).__name__}: {err} (set PRUNE_DEBUG=1 for the traceback)")
        code = 1
    sys.exit(code)

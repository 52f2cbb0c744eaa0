"""``prune``: the console entry point.

``prune run [overrides]`` hands the command line to the Hydra app (so ``-m``, ``--cfg job``,
``--help`` and shell completion behave as Hydra users expect), after checking that every
config-group choice exists, so a typo gets one line listing the valid names instead of a
Hydra traceback. ``prune report PATH...`` stacks run results; ``prune --version``.
"""

from __future__ import annotations

import argparse
import os
import sys

from prunecli import __version__
from prunecli.errors import PruneError

USAGE = """usage: prune run [HYDRA OPTIONS] [key=value ...]   prune one model (-m: sweep)
       prune report PATH... [--columns C,...] [--where K=V] [--pivot rows=R,cols=C,values=V]
                    [--format csv|md|latex] [--plot]  one table (and plots) over many runs
       prune --version"""

# Hydra flags that consume the next argument.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def hydra_overrides(args: list[str]) -> list[str]:
    """The ``key=value`` overrides among Hydra's command-line arguments."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
    return overrides


def check_group_choices(overrides: list[str]) -> None:
    """Every choice of a config group (also in sweeps like ``method=a,b``) must exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from prunecli.config import config_groups

    groups = config_groups()
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise PruneError(str(err).strip().splitlines()[0]) from None
    for override in parsed:
        group = override.key_or_group
        if group == "hydra/launcher":
            check_launcher(override.get_value_element_as_str())
        if group not in groups or override.is_delete():
            continue
        choices = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for choice in choices:
            if choice not in groups[group]:
                raise PruneError(f"unknown {group} {choice!r} (choose from: {', '.join(groups[group])})")


# launcher config -> (module it needs, pip extra)
LAUNCHER_EXTRAS = {"slurm": "hydra_plugins.hydra_submitit_launcher", "local_parallel": "hydra_plugins.hydra_submitit_launcher"}


def check_launcher(name: str) -> None:
    import importlib.util

    module = LAUNCHER_EXTRAS.get(name)
    if module and importlib.util.find_spec(module) is None:
        raise PruneError(f"hydra/launcher={name} needs hydra-submitit-launcher, which is not installed: pip install 'prunecli[slurm]'")


def run_command(args: list[str]) -> int:
    check_group_choices(hydra_overrides(args))
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    from prunecli import app

    sys.argv = [sys.argv[0], *args]
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
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # a bug or an unforeseen environment problem: one line, traceback on request
        if os.environ.get("PRUNE_DEBUG"):
            raise
        from prunecli import console

        console.error(f"{type(err).__name__}: {err} (set PRUNE_DEBUG=1 for the traceback)")
        code = 1
    sys.exit(code)

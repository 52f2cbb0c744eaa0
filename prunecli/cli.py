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
       prune report PATH... [--columns C,...]       one table over many runs
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
        if group not in groups or override.is_delete():
            continue
        choices = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for choice in choices:
            if choice not in groups[group]:
                raise PruneError(f"unknown {group} {choice!r} (choose from: {', '.join(groups[group])})")


def run_command(args: list[str]) -> int:
    check_group_choices(hydra_overrides(args))
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    from prunecli import app

    sys.argv = [sys.argv[0], *args]
    app.run()
    if app.FAILED:
        from prunecli import console

        console.error(f"{len(app.FAILED)} job(s) failed: " + "; ".join(f"{' '.join(r['overrides']) or '(defaults)'}: {r['error']}" for r in app.FAILED))
        return 1
    return 0


def report_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prune report", description="Stack the results of many runs into one table.")
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them (searched recursively)")
    parser.add_argument("--columns", help="comma-separated columns to show (default: the key ones)")
    parser.add_argument("--output", help="folder for report.csv / report.md (default: the first path)")
    options = parser.parse_args(args)
    from prunecli import report

    report.main(options.paths, options.columns.split(",") if options.columns else None, options.output)
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
    sys.exit(code)

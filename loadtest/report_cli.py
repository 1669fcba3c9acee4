"""The command-line shape the service benchmarks share (autoscale, faults, soak): parse, run, write the JSON.

Exit codes: 2 with one line for bad arguments or a turnout error (a bad config, missing artifacts), 1 with one
line when the run itself could not be carried out (the service or a fake upstream did not start), 0 otherwise.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class RunError(Exception):
    """The benchmark could not be carried out (not the arguments' fault): exit code 1 with this line."""


def run_report(module: str, parse_args: Callable[[list[str] | None], Any], run: Callable[[Any, str], dict],
               argv: list[str] | None, default: Callable[[Any], Any] | None = None) -> tuple[int, Any, dict | None]:
    """(exit code, parsed arguments, report): `run(args, command)` makes the report, written to `args.out`."""
    from index.errors import TurnoutError

    try:
        args = parse_args(argv)
    except TurnoutError as exc:  # the parsers raise ConfigError for a bad combination of arguments
        sys.stderr.write(f"error: {exc}\n")
        return 2, None, None
    command = f"python -m loadtest.{module} " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        report = run(args, command.strip())
    except TurnoutError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2, args, None
    except RunError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1, args, None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=default) + "\n")
    return 0, args, report


def main_printing_summary(module: str, parse_args: Callable[[list[str] | None], Any], run: Callable[[Any, str], dict],
                          argv: list[str] | None) -> int:
    """`run_report`, then the report's summary as one JSON line on stdout (exit 0), or run_report's exit code."""
    code, _, report = run_report(module, parse_args, run, argv)
    if report is None:
        return code
    sys.stdout.write(json.dumps(report["summary"]) + "\n")
    return 0

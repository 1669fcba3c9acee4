"""One exception hierarchy for turnout (in `index/`, the bottom layer, so that every package can raise it).

The CLI maps every `TurnoutError` to one line on stderr and exit code 2; the HTTP layer maps each to its
`http_status` and answers `{"error": {"message", "type", "code"}}`. `code` is the stable, documented name a client
and the `reason` label of `turnout_errors_total` see (snake case, never a Python class name, so renaming a class
breaks no client and no alert rule). Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


class TurnoutError(Exception):
    """Base class: a problem the user can fix (bad name, missing file, broken artifact)."""

    http_status: int = 400
    code: str = "invalid_request"


class ConfigError(TurnoutError):
    """Unknown router/benchmark name, invalid option value."""

    code = "invalid_option"


class DataNotFoundError(TurnoutError):
    """A data file or directory that a step needs is missing."""

    http_status = 503
    code = "data_not_found"


class ArtifactError(TurnoutError):
    """An artifact is missing, empty, corrupted or was built with a different embedder/data."""

    http_status = 503
    code = "artifact_unavailable"


class InputError(TurnoutError):
    """A request's content is unusable (empty prompt list, non-string content)."""

    http_status = 422
    code = "invalid_input"


class ScoringError(TurnoutError):
    """A router produced a p_strong that is not a finite number (a broken artifact or a bug, not the request)."""

    http_status = 503
    code = "scoring_failed"


def first_line(exc: BaseException) -> str:
    """An exception's message as one line for a log or an error body (its class name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""Errors a user can meet. Each one says what was wrong, where, and what is allowed.

The CLI turns `InputError` into one line on stderr and exit code 2; the REST API turns it into an HTTP 4xx with a
JSON body. Anything else escaping to the user is a bug.
"""

from __future__ import annotations

import json


class FleetwiseError(Exception):
    """Base of all errors fleetwise raises on purpose."""


class InputError(FleetwiseError):
    """Bad input from a user: a file, a CLI option or an API body.

    `where` names the place (a file and line, a YAML path, a CLI option or a JSON field), `value` the offending
    value and `allowed` what would have been accepted. `str(err)` is the one-line message shown to users.
    """

    def __init__(
        self, where: str, value: object, allowed: str, *, source: str | None = None, problem: str | None = None
    ) -> None:
        self.where = where
        self.value = value
        self.allowed = allowed
        self.source = source
        self.problem = problem if problem is not None else f"{_short_repr(value)} is not allowed"
        super().__init__(self.message)

    @property
    def message(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return f"{prefix}{self.where}: {self.problem}; {self.allowed}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for API error bodies."""
        return {
            "error": "invalid_input",
            "where": self.where,
            "value": _jsonable(self.value),
            "allowed": self.allowed,
            "source": self.source,
            "message": self.message,
        }


class ConflictError(InputError):
    """The request is well-formed but the state it acts on forbids it (HTTP 409): the fleet changed since the plan
    was made, a plan is not in a status that allows the move, another request changed it first."""


class NotFoundError(FleetwiseError):
    """A named thing (fleet, plan, model, worker) does not exist."""

    def __init__(self, kind: str, name: object, known: list[str] | None = None) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        hint = ""
        if known is not None:
            shown = ", ".join(sorted(known)[:12]) + (" …" if len(known) > 12 else "")
            hint = f"; known: {shown}" if known else "; none exist"
        super().__init__(f"unknown {kind} {name!r}{hint}")


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def strict_json(content: object) -> bytes:
    """`content` (an error body) as strict JSON whatever the value it echoes holds: a request's JSON may carry NaN,
    Infinity or a lone surrogate (`\\ud800`) that Python's parser reads but JSON cannot write back; they come out as
    the strings "NaN", "Infinity", "-Infinity" and an escape, never as a failure to answer."""
    # json writes NaN and ±Infinity as bare words; read back with parse_constant=str they are strings.
    loose = json.dumps(content, ensure_ascii=True)
    return json.dumps(json.loads(loose, parse_constant=str), ensure_ascii=True, separators=(",", ":")).encode()


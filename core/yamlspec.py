"""Load YAML into pydantic models with errors that name the file, line, YAML path, value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from core.errors import InputError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]


def load_yaml_model(model: type[M], path: str | Path) -> M:
    """Parse `path` as YAML and validate it as `model`; the first problem becomes an `InputError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError("file", str(path), f"a readable YAML file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise InputError("file", str(path), "a YAML text file in UTF-8", source=str(path),
                         problem=f"byte {exc.start} is not UTF-8 text") from None
    return validate_yaml_text(model, text, source=str(path))


MAX_YAML_DEPTH = 32  # a fleet spec nests about 6 deep
MAX_YAML_NODES = 1_000_000  # values with aliases expanded; about what a 1 MB document holds without aliases


def check_yaml_shape(text: str, *, source: str = "<yaml>") -> None:
    """Refuse, from the document's events (read lazily and without recursion, so a refusal costs only the text up
    to the fault): an alias inside its own anchor's value, aliases that expand the document past MAX_YAML_NODES
    values (aliases of aliases: a few hundred bytes can stand for billions) and nesting deeper than MAX_YAML_DEPTH
    (PyYAML recurses per level). Syntax errors are left to the parser that follows, which names their line."""
    total = 0  # values so far, aliases expanded
    sizes: dict[str, int] = {}  # anchor → values its node expands to
    opened: list[tuple[str | None, int]] = []  # collections open: their anchor, `total` before them
    try:
        for event in yaml.parse(text):
            line = f"line {event.start_mark.line + 1}"
            if isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in opened):
                    raise InputError(line, f"*{event.anchor}", "an alias outside the value of its anchor",
                                     source=source, problem=f"alias *{event.anchor} is inside &{event.anchor}")
                total += sizes.get(event.anchor, 0)  # an undefined one: the parser names it
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.CollectionStartEvent):
                opened.append((event.anchor, total))
                total += 1
                if len(opened) > MAX_YAML_DEPTH:
                    raise InputError(line, len(opened), f"at most {MAX_YAML_DEPTH} levels of nesting (a fleet spec "
                                     "needs about 6)", source=source, problem=f"nesting {len(opened)} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, before = opened.pop()
                if anchor:
                    sizes[anchor] = total - before
            if total > MAX_YAML_NODES:
                raise InputError(line, total, f"at most {MAX_YAML_NODES} values with aliases expanded",
                                 source=source, problem=f"with its aliases expanded the document has {total} values "
                                 "by this line")
    except yaml.YAMLError:
        return


def validate_yaml_text(model: type[M], text: str, *, source: str = "<yaml>") -> M:
    check_yaml_shape(text, source=source)
    try:
        data = yaml.safe_load(text)
        lines = _line_index(yaml.compose(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "document"
        raise InputError(where, None, "valid YAML", source=source, problem=str(getattr(exc, "problem", exc))) from None
    if not isinstance(data, dict):
        raise InputError("document", data, f"a YAML mapping with the fields of {model.__name__}", source=source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_from_validation(exc, lines=lines, source=source, root=model) from None


def error_from_validation(
    exc: ValidationError,
    *,
    lines: dict[Loc, int] | None = None,
    source: str | None = None,
    root: type[BaseModel] | None = None,
) -> InputError:
    """Turn the first pydantic error into an InputError with a readable path and 'allowed' text."""
    errors = exc.errors(include_url=False)
    # A misspelt field also shows up as a missing one: report the misspelling, the root cause.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc: Loc = tuple(err["loc"])
    where, value, allowed, problem = _describe(err, loc)
    if err["type"] == "extra_forbidden" and root is not None:
        fields = _fields_at(root, loc[:-1])
        if fields:
            allowed = f"allowed fields here: {', '.join(fields)}"
    if lines is not None and source is not None:
        line = _nearest_line(lines, _path_loc(where, loc))
        if line is not None:
            source = f"{source}:{line}"
    return InputError(where, value, allowed, source=source, problem=problem)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "document"


def _describe(err: dict[str, Any], loc: Loc) -> tuple[str, Any, str, str | None]:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "cross_field":
        return ctx["where"], None, ctx["allowed"], f"{ctx['value']} is not allowed"
    where = format_loc(loc)
    if kind == "missing":
        return where, None, "this field is required", "missing"
    if kind == "extra_forbidden":
        return where, value, "unknown field (check the spelling; see the fleet spec reference)", f"field {loc[-1]!r} is not known"
    allowed = _ALLOWED.get(kind)
    if allowed is not None:
        return where, value, allowed.format(**ctx), None
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return where, value, msg, None


_ALLOWED = {
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "literal_error": "must be {expected}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_pattern_mismatch": "must match the pattern {pattern}",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} characters",
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "takes at most {max_length} item(s)",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _fields_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model found by following `loc` from `root` (through lists, tuples and optionals)."""
    current: Any = root
    for part in loc:
        if isinstance(part, str):
            model = _model_in(current)
            field = model.model_fields.get(part) if model is not None else None
            if field is None:
                return []
            current = field.annotation
        else:  # an index into a list or tuple: step into the item type
            current = next((a for a in get_args(current) if a is not Ellipsis), None)
    model = _model_in(current)
    return list(model.model_fields) if model is not None else []


def _model_in(tp: Any) -> type[BaseModel] | None:
    """The pydantic model inside a type annotation (X, X | None, tuple[X, ...], list[X]), if any."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _path_loc(where: str, loc: Loc) -> Loc:
    """The location to look up a line for: the cross-field path when there is one, else the pydantic loc."""
    if loc:
        return loc
    parts: list[str | int] = []
    for piece in where.replace("]", "").split("."):
        name, *idx = piece.split("[")
        parts.append(name)
        parts.extend(int(i) for i in idx if i.isdigit())
    return tuple(parts)


def _nearest_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def _line_index(node: yaml.Node | None, prefix: Loc = ()) -> dict[Loc, int]:
    """Map every YAML path (as a pydantic loc) to its 1-based line number."""
    out: dict[Loc, int] = {}
    if node is None:
        return out
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, child in node.value:
            loc = prefix + (str(key.value),)
            out.update(_line_index(child, loc))
            out[loc] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            out.update(_line_index(child, prefix + (i,)))
    return out

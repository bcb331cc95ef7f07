"""Files the CLI writes: checked before any work starts, so a bad path fails in one line instead of after a long
run, and never one of the command's own inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from core.errors import InputError


def check_output(option: str, path: Path | None, *, suffix: str | None = None,
                 inputs: Iterable[Path | str | None] = ()) -> None:
    """`path` (given with `option`) must end in `suffix` (when given), sit in an existing folder, not be a folder,
    and not be any of `inputs` (writing it would destroy what the command reads)."""
    if path is None:
        return
    if suffix is not None and path.suffix.lower() != suffix:
        raise InputError(option, str(path), f"a file name ending in {suffix}")
    if path.is_dir():
        raise InputError(option, str(path), "a file path", problem=f"{path} is a folder")
    if not path.parent.is_dir():
        raise InputError(option, str(path), f"a path in an existing folder ({path.parent} does not exist)")
    for source in inputs:
        if source is not None and path.exists() and Path(source).exists() and path.samefile(source):
            raise InputError(option, str(path), "a file other than the command's inputs (writing would destroy it)",
                             problem=f"{path} is also read by this command")

"""Reading the tail of a serial console log without reading all of it.

A VM's ``console.log`` is appended across boots and never rotated, so a request for its
last 50 lines must not cost a read of megabytes: the file is read backwards in blocks
until enough line ends are found.
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 64 * 1024


def tail_lines(path: Path, lines: int | None) -> str:
    """The last ``lines`` lines of ``path`` (all of it with None; "" when it is missing).

    Bytes that are not UTF-8 (a guest may print anything) are replaced, never an error.
    """
    if lines is not None and lines <= 0:
        return ""
    try:
        with path.open("rb") as f:
            if lines is None:
                return f.read().decode(errors="replace")
            end = f.seek(0, os.SEEK_END)
            data = b""
            pos = end
            # One line more than asked: the first one found may be cut.
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(BLOCK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return ""
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept).decode(errors="replace")

"""User-facing errors: one line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class GeoJepaError(Exception):
    """An error caused by the user's input or settings, reported as one line without a traceback.

    Args:
        message: What is wrong, in one line.
        path: The file or folder the problem is about, if any; it leads the message.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        text = message if self.path is None else f"{self.path}: {message}"
        super().__init__(" ".join(text.split()))

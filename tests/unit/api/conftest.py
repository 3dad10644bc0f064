"""Makes the API-server emulation in crdcheck.py importable as ``tokenyard_crdcheck``.

Tests run with ``--import-mode=importlib``, so sibling modules are not importable by
name; this conftest loads the helper once, before the test modules here are collected.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "tokenyard_crdcheck"

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("crdcheck.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)

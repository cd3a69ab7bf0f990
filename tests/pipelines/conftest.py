"""Fixtures for pipeline tests: the session's local Ray is ``ray_local`` in tests/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # shared helpers such as img2dataset_layouts

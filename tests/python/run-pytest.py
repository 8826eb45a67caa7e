#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""meson's entry to the Python client tests: runs pytest on this directory with the
interpreter meson found (Debian's /usr/bin/python3). A missing pytest, pytest-asyncio or
trio is a skip (exit 77) on a developer's machine, and a failure under CI=true, so that
CI never passes without having run them. Arguments are passed to pytest."""

import importlib.util
import os
import sys

missing = [m for m in ("pytest", "pytest_asyncio", "trio") if importlib.util.find_spec(m) is None]
if missing:
    print(f"{sys.executable} lacks {', '.join(missing)}: install python3-pytest, python3-pytest-asyncio "
          "and python3-trio (scripts/setup.sh does)", file=sys.stderr)
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

import pytest  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
sys.exit(pytest.main(["-c", os.path.join(here, "pytest.ini"), "--rootdir", here, here, *sys.argv[1:]]))

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The type hints of client/python/agen hold: mypy --strict over the package. A missing
mypy (Debian's package `mypy`) is a skip (exit 77), and a failure under CI=true.

usage: run-mypy.py PACKAGE_DIR CACHE_DIR"""

import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("mypy") is None:
    print(f"{sys.executable} lacks mypy: install mypy (scripts/setup.sh does)", file=sys.stderr)
    sys.exit(1 if os.environ.get("CI") == "true" else 77)
pkg, cache = sys.argv[1], sys.argv[2]
sys.exit(subprocess.call([sys.executable, "-m", "mypy", "--strict", "--cache-dir", cache, "agen"], cwd=pkg))

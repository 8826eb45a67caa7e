# SPDX-License-Identifier: MIT
"""`meson install` puts the package where the interpreter meson found (Debian's python3)
imports it without PYTHONPATH: a staged install (DESTDIR) into a temporary directory,
then the directory is checked against that python's own sys.path (-E: no PYTHONPATH)
and the staged copy is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import AGEN_PYTHON_DIR


def test_staged_install(tmp_path):
    build = os.environ.get("AGEN_BUILD_ROOT")
    target = os.environ.get("AGEN_PYTHON_INSTALL_DIR")
    meson = shutil.which("meson")
    if not build or not target or not meson:
        pytest.fail("run through `meson test --suite python` (AGEN_BUILD_ROOT, AGEN_PYTHON_INSTALL_DIR, meson)")
    subprocess.run([meson, "install", "-C", build, "--no-rebuild", "--quiet", "--destdir", str(tmp_path)],
                   check=True, stdout=subprocess.DEVNULL)
    staged = str(tmp_path) + os.path.normpath(target)
    want = sorted(f for f in os.listdir(os.path.join(AGEN_PYTHON_DIR, "agen")) if f.endswith((".py", ".typed")))
    assert sorted(os.listdir(os.path.join(staged, "agen"))) == want
    path = subprocess.run([sys.executable, "-E", "-s", "-c", "import sys; print('\\n'.join(sys.path))"],
                          check=True, capture_output=True, text=True).stdout.split("\n")
    assert os.path.normpath(target) in [os.path.normpath(p) for p in path if p], \
        f"{target} is not on {sys.executable}'s sys.path: {path}"
    out = subprocess.run([sys.executable, "-E", "-s", "-c",
                          f"import sys; sys.path.insert(0, {staged!r}); import agen; print(agen.__file__)"],
                         check=True, capture_output=True, text=True, cwd=str(tmp_path)).stdout
    assert out.startswith(staged)

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Prints where to install a pure-Python package under PREFIX so that this interpreter,
run without PYTHONPATH, imports it: the package directory under PREFIX on its default
sys.path, or "meson" when meson's own choice (MESON_DIR) is on sys.path; Debian's
python3 looks in /usr/local/lib/python3.X/dist-packages for /usr/local, while meson 1.0
picks /usr/local/lib/python3/dist-packages, which that python never reads. With no
suitable directory on sys.path (an unusual prefix), MESON_DIR is printed and the exit
status is 2, so meson can warn that PYTHONPATH will be needed.

usage: site-dir.py PREFIX MESON_DIR   (run with -E -s)"""

import os
import re
import sys

prefix = os.path.normpath(sys.argv[1])
meson_dir = os.path.normpath(sys.argv[2])
site = re.compile(r"lib(64)?/python[^/]*/(dist|site)-packages")

path = [os.path.normpath(p) for p in sys.path if p]
if meson_dir in path:
    print("meson")
    sys.exit(0)
for p in path:
    if p.startswith(prefix.rstrip("/") + "/") and site.fullmatch(p[len(prefix.rstrip("/")) + 1:]):
        print(p)
        sys.exit(0)
print(meson_dir)
sys.exit(2)

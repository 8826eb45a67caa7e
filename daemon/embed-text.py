#!/usr/bin/env python3
# Turns a text file into a C source defining `const char NAME[]` with its contents, so the
# interface description the daemon serves is the one in docs/, byte for byte.
import sys

src, out, name = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, 'rb').read()
with open(out, 'w') as f:
    f.write('/* Generated from %s. Do not edit. */\n' % src.split('/')[-1])
    f.write('const char %s[] =\n' % name)
    for line in (data[:-1] if data.endswith(b'\n') else data).split(b'\n'):
        esc = ''.join(chr(b) if 32 <= b < 127 and b not in (34, 92, 63) else '\\%03o' % b for b in line)
        f.write('        "%s\\n"\n' % esc)
    f.write('        ;\n')

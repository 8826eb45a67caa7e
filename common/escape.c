/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "escape.h"
#include "macro.h"

/* Escapes one byte into out (at most 4 bytes + NUL); returns the length. */
static size_t escape_one(unsigned char c, char out[5]) {
        static const char hex[] = "0123456789abcdef";
        switch (c) {
        case '\n':
                memcpy(out, "\\n", 3);
                return 2;
        case '\t':
                memcpy(out, "\\t", 3);
                return 2;
        case '\\':
                memcpy(out, "\\\\", 3);
                return 2;
        case '"':
                memcpy(out, "\\\"", 3);
                return 2;
        default:
                if (c < 0x20 || c == 0x7f) {
                        out[0] = '\\';
                        out[1] = 'x';
                        out[2] = hex[c >> 4];
                        out[3] = hex[c & 15];
                        out[4] = 0;
                        return 4;
                }
                out[0] = (char) c;
                out[1] = 0;
                return 1;
        }
}

static size_t escaped_len(const char *s) {
        size_t n = 0;
        char e[5];
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                n += escape_one(*p, e);
        return n;
}

const char *cescape_buf(const char *s, char *buf, size_t size) {
        assert(buf);
        assert(size >= 4);
        if (!s)
                s = "(null)";
        /* If it all fits, all of it; else as many whole escapes as leave room for "...". */
        size_t limit = escaped_len(s) < size ? size - 1 : size - 4;
        size_t at = 0;
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                char e[5];
                size_t n = escape_one(*p, e);
                if (at + n > limit) {
                        memcpy(buf + at, "...", 4);
                        return buf;
                }
                memcpy(buf + at, e, n);
                at += n;
        }
        buf[at] = 0;
        return buf;
}

char *cescape(const char *s) {
        if (!s)
                s = "(null)";
        size_t n = escaped_len(s) + 1;
        char *buf = malloc(MAX(n, (size_t) 4));
        if (!buf)
                return NULL;
        return (char *) cescape_buf(s, buf, MAX(n, (size_t) 4));
}

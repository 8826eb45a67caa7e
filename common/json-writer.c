/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json-writer.h"

void *(*jw_realloc)(void *p, size_t n) = realloc;

void jw_init(JsonWriter *w) {
        w->buf = w->inline_buf;
        w->size = sizeof(w->inline_buf);
        w->len = 0;
        w->error = 0;
        w->depth = 0;
        w->has_member = 0;
}

void jw_reset(JsonWriter *w) {
        w->len = 0;
        w->error = 0;
        w->depth = 0;
        w->has_member = 0;
}

void jw_done(JsonWriter *w) {
        if (w->buf != w->inline_buf)
                free(w->buf);
        jw_init(w);
}

static void fail(JsonWriter *w, int error) {
        if (w->error == 0)
                w->error = error;
}

/* Room for n more bytes; false (and the error set) if there is none. */
static bool reserve(JsonWriter *w, size_t n) {
        if (_likely_(w->size - w->len >= n))
                return !w->error;
        if (w->error)
                return false;
        if (n > SIZE_MAX / 4 - w->len) {
                fail(w, -ENOMEM);
                return false;
        }
        size_t sz = w->size * 2;
        while (sz - w->len < n)
                sz *= 2;
        char *b = jw_realloc(w->buf == w->inline_buf ? NULL : w->buf, sz);
        if (!b) {
                fail(w, -ENOMEM);
                return false;
        }
        if (w->buf == w->inline_buf)
                memcpy(b, w->inline_buf, w->len);
        w->buf = b;
        w->size = sz;
        return true;
}

static inline void put(JsonWriter *w, const char *p, size_t n) {
        memcpy(w->buf + w->len, p, n);
        w->len += n;
}

void jw_append(JsonWriter *w, const char *p, size_t n) {
        if (reserve(w, n))
                put(w, p, n);
}

/* The separator and key before a value; false if the writer has failed. */
static bool member(JsonWriter *w, const char *key) {
        if (w->error)
                return false;
        size_t kl = key ? strlen(key) : 0;
        if (!reserve(w, kl + 4))
                return false;
        uint64_t bit = w->depth > 0 ? UINT64_C(1) << (w->depth - 1) : 0;
        if (bit) {
                if (w->has_member & bit)
                        w->buf[w->len++] = ',';
                w->has_member |= bit;
        }
        if (key) {
                w->buf[w->len++] = '"';
                put(w, key, kl);
                w->buf[w->len++] = '"';
                w->buf[w->len++] = ':';
        }
        return true;
}

static void container_open(JsonWriter *w, const char *key, char c) {
        if (!member(w, key))
                return;
        if (w->depth >= JW_MAX_DEPTH) {
                fail(w, -E2BIG);
                return;
        }
        if (!reserve(w, 1))
                return;
        w->buf[w->len++] = c;
        w->depth++;
        w->has_member &= ~(UINT64_C(1) << (w->depth - 1));
}

static void container_close(JsonWriter *w, char c) {
        if (w->error)
                return;
        if (w->depth == 0) {
                fail(w, -EINVAL);
                return;
        }
        if (!reserve(w, 1))
                return;
        w->buf[w->len++] = c;
        w->depth--;
}

void jw_object_begin(JsonWriter *w, const char *key) {
        container_open(w, key, '{');
}

void jw_object_end(JsonWriter *w) {
        container_close(w, '}');
}

void jw_array_begin(JsonWriter *w, const char *key) {
        container_open(w, key, '[');
}

void jw_array_end(JsonWriter *w) {
        container_close(w, ']');
}

/* The length of the valid UTF-8 sequence at p (at most n bytes), 0 if it is not one. */
static size_t utf8_len(const unsigned char *p, size_t n) {
        unsigned c = p[0];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                len = 2, cp = c & 0x1f, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
                len = 3, cp = c & 0x0f, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
                len = 4, cp = c & 0x07, min = 0x10000;
        else
                return 0;
        if (len > n)
                return 0;
        for (size_t k = 1; k < len; k++) {
                if ((p[k] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (p[k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

void jw_escape(JsonWriter *w, const char *s, size_t n) {
        static const char hex[] = "0123456789abcdef";
        const unsigned char *p = (const unsigned char *) s;
        /* The common case, a string without anything to escape, is one copy. Worst case a
         * byte becomes six ("\u00XX", or "\ufffd" for a stray byte). */
        if (!reserve(w, n + 2))
                return;
        w->buf[w->len++] = '"';
        size_t i = 0;
        while (i < n) {
                size_t run = i;
                while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
                        run++;
                if (run > i) {
                        if (!reserve(w, run - i + 1))
                                return;
                        put(w, s + i, run - i);
                        i = run;
                        continue;
                }
                if (!reserve(w, 7))
                        return;
                unsigned char c = p[i];
                if (c >= 0x80) {
                        size_t l = utf8_len(p + i, n - i);
                        if (l == 0) {
                                put(w, "\\ufffd", 6);
                                i++;
                        } else {
                                put(w, s + i, l);
                                i += l;
                        }
                        continue;
                }
                w->buf[w->len++] = '\\';
                switch (c) {
                case '"': w->buf[w->len++] = '"'; break;
                case '\\': w->buf[w->len++] = '\\'; break;
                case '\b': w->buf[w->len++] = 'b'; break;
                case '\f': w->buf[w->len++] = 'f'; break;
                case '\n': w->buf[w->len++] = 'n'; break;
                case '\r': w->buf[w->len++] = 'r'; break;
                case '\t': w->buf[w->len++] = 't'; break;
                default:
                        put(w, "u00", 3);
                        w->buf[w->len++] = hex[c >> 4];
                        w->buf[w->len++] = hex[c & 15];
                }
                i++;
        }
        if (reserve(w, 1))
                w->buf[w->len++] = '"';
}

void jw_string_len(JsonWriter *w, const char *key, const char *s, size_t n) {
        if (!s) {
                fail(w, -EINVAL);
                return;
        }
        if (member(w, key))
                jw_escape(w, s, n);
}

void jw_string(JsonWriter *w, const char *key, const char *s) {
        jw_string_len(w, key, s, s ? strlen(s) : 0);
}

void jw_int(JsonWriter *w, const char *key, int64_t i) {
        if (!member(w, key) || !reserve(w, 20))
                return;
        char tmp[20];
        size_t n = 0;
        uint64_t u = i < 0 ? -(uint64_t) i : (uint64_t) i;
        do {
                tmp[n++] = (char) ('0' + u % 10);
                u /= 10;
        } while (u);
        if (i < 0)
                w->buf[w->len++] = '-';
        while (n > 0)
                w->buf[w->len++] = tmp[--n];
}

void jw_bool(JsonWriter *w, const char *key, bool b) {
        if (member(w, key))
                jw_append(w, b ? "true" : "false", b ? 4 : 5);
}

void jw_null(JsonWriter *w, const char *key) {
        if (member(w, key))
                jw_append(w, "null", 4);
}

void jw_double(JsonWriter *w, const char *key, double d) {
        if (!isfinite(d) || fabs(d) >= 1e15) {
                fail(w, -EINVAL);
                return;
        }
        char buf[64];
        int n = snprintf(buf, sizeof(buf), "%.6f", d);
        if (n <= 0 || (size_t) n >= sizeof(buf)) {
                fail(w, -EINVAL);
                return;
        }
        char *e = buf + n;
        while (e > buf && e[-1] == '0')
                e--;
        if (e > buf && e[-1] == '.')
                *e++ = '0';
        if (member(w, key))
                jw_append(w, buf, (size_t) (e - buf));
}

void jw_raw(JsonWriter *w, const char *key, const char *json, size_t n) {
        if (!json || n == 0) {
                fail(w, -EINVAL);
                return;
        }
        if (member(w, key))
                jw_append(w, json, n);
}

int jw_finish(JsonWriter *w) {
        if (w->error == 0 && w->depth != 0)
                w->error = -EINVAL;
        return w->error;
}

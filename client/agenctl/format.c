/* SPDX-License-Identifier: MIT */
/* See format.h. */

#include <ctype.h>
#include <errno.h>
#include <langinfo.h>
#include <limits.h>
#include <math.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>
#include <wctype.h>

#include "format.h"
#include "macro.h"

static int cached_colors = -1, cached_colors_stderr = -1;

static bool colors_for_fd(int fd) {
        const char *e = getenv("NO_COLOR");
        if (e && *e)
                return false;
        e = getenv("TERM");
        if (e && strcmp(e, "dumb") == 0)
                return false;
        return isatty(fd) > 0;
}

bool colors_enabled(void) {
        if (cached_colors < 0)
                cached_colors = colors_for_fd(STDOUT_FILENO);
        return cached_colors;
}

bool colors_enabled_stderr(void) {
        if (cached_colors_stderr < 0)
                cached_colors_stderr = colors_for_fd(STDERR_FILENO);
        return cached_colors_stderr;
}

void colors_reset_cache(void) {
        cached_colors = cached_colors_stderr = -1;
}

const char *ansi(const char *seq) {
        return colors_enabled() ? seq : "";
}

unsigned columns(void) {
        const char *e = getenv("COLUMNS");
        if (e && *e) {
                char *end;
                errno = 0;
                unsigned long v = strtoul(e, &end, 10);
                if (errno == 0 && *end == 0 && v > 0 && v <= 100000)
                        return (unsigned) v;
        }
        struct winsize ws = {};
        if (isatty(STDOUT_FILENO) > 0 && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) >= 0 && ws.ws_col > 0)
                return ws.ws_col;
        return 0;
}

static bool is_utf8(void) {
        const char *cs = nl_langinfo(CODESET);
        return cs && (strcasecmp(cs, "UTF-8") == 0 || strcasecmp(cs, "utf8") == 0);
}

const char *ellipsis(void) {
        return is_utf8() ? "…" : "...";
}

char *escape_display(const char *s) {
        if (!s)
                return NULL;
        size_t n = strlen(s);
        /* Worst case: every byte becomes \xNN. */
        char *out = malloc(n * 4 + 1), *o = out;
        if (!out)
                return NULL;
        mbstate_t st = {};
        const char *p = s, *end = s + n;
        while (p < end) {
                unsigned char c = (unsigned char) *p;
                if (c < 0x80) {
                        if (c == '\n') {
                                *o++ = '\\';
                                *o++ = 'n';
                        } else if (c == '\t') {
                                *o++ = '\\';
                                *o++ = 't';
                        } else if (c < 0x20 || c == 0x7f)
                                o += sprintf(o, "\\x%02x", c);
                        else
                                *o++ = (char) c;
                        p++;
                        continue;
                }
                wchar_t wc;
                size_t k = mbrtowc(&wc, p, (size_t) (end - p), &st);
                if (k == (size_t) -1 || k == (size_t) -2 || k == 0 || !iswprint((wint_t) wc)) {
                        /* Invalid or unprintable here (C1 controls, bidi overrides are
                         * printable; the terminal's business): one byte, escaped. */
                        o += sprintf(o, "\\x%02x", c);
                        p++;
                        st = (mbstate_t) {};
                        continue;
                }
                memcpy(o, p, k);
                o += k;
                p += k;
        }
        *o = 0;
        return out;
}

/* Width of the character at p (k bytes); sets *ret_len. Invalid bytes count 1. */
static size_t char_width(const char *p, size_t left, size_t *ret_len) {
        unsigned char c = (unsigned char) *p;
        if (c < 0x80) {
                *ret_len = 1;
                return 1;
        }
        mbstate_t st = {};
        wchar_t wc;
        size_t k = mbrtowc(&wc, p, left, &st);
        if (k == (size_t) -1 || k == (size_t) -2 || k == 0) {
                *ret_len = 1;
                return 1;
        }
        *ret_len = k;
        int w = wcwidth(wc);
        return w < 0 ? 1 : (size_t) w;
}

size_t display_width(const char *s) {
        size_t w = 0, n = strlen(s);
        for (size_t i = 0; i < n;) {
                size_t k;
                w += char_width(s + i, n - i, &k);
                i += k;
        }
        return w;
}

char *ellipsize(const char *s, size_t width) {
        size_t n = strlen(s);
        if (display_width(s) <= width)
                return strdup(s);
        const char *e = ellipsis();
        size_t ew = display_width(e);
        if (width <= ew) {
                /* No room for text and the mark: as many dots as fit. */
                char *r = malloc(width + 1);
                if (!r)
                        return NULL;
                memset(r, '.', width);
                r[width] = 0;
                return r;
        }
        size_t keep = width - ew, w = 0, i = 0;
        while (i < n) {
                size_t k, cw = char_width(s + i, n - i, &k);
                if (w + cw > keep)
                        break;
                w += cw;
                i += k;
        }
        /* "a long…", not "a long …". */
        while (i > 0 && s[i - 1] == ' ')
                i--;
        char *r = malloc(i + strlen(e) + 1);
        if (!r)
                return NULL;
        memcpy(r, s, i);
        strcpy(r + i, e);
        return r;
}

const char *format_timespan(char *buf, size_t size, usec_t t) {
        static const struct {
                const char *suffix;
                usec_t usec;
        } table[] = {
                { "d", 24ULL * 3600 * USEC_PER_SEC },
                { "h", 3600ULL * USEC_PER_SEC },
                { "min", 60ULL * USEC_PER_SEC },
                { "s", USEC_PER_SEC },
                { "ms", USEC_PER_MSEC },
        };

        if (t == USEC_INFINITY) {
                snprintf(buf, size, "infinity");
                return buf;
        }
        if (t < USEC_PER_MSEC) {
                snprintf(buf, size, t == 0 ? "0" : "%lluus", (unsigned long long) t);
                return buf;
        }
        size_t used = 0;
        unsigned parts = 0;
        buf[0] = 0;
        for (size_t i = 0; i < ELEMENTSOF(table) && parts < 2; i++) {
                if (t < table[i].usec)
                        continue;
                /* Milliseconds only under a second: "1min 3s", not "1min 3s 20ms". */
                if (i == ELEMENTSOF(table) - 1 && parts > 0)
                        break;
                usec_t k = t / table[i].usec;
                t %= table[i].usec;
                int m = snprintf(buf + used, size - used, "%s%llu%s", parts ? " " : "", (unsigned long long) k,
                                 table[i].suffix);
                if (m < 0 || (size_t) m >= size - used)
                        break;
                used += (size_t) m;
                parts++;
                if (i == 3)
                        break; /* seconds: done */
        }
        return buf;
}

const char *format_timestamp(char *buf, size_t size, usec_t realtime, bool ms) {
        time_t sec = (time_t) (realtime / USEC_PER_SEC);
        struct tm tm;
        if (!localtime_r(&sec, &tm) || strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm) == 0) {
                snprintf(buf, size, "@%llu", (unsigned long long) realtime);
                return buf;
        }
        if (ms) {
                size_t l = strlen(buf);
                snprintf(buf + l, size - l, ".%03llu", (unsigned long long) (realtime % USEC_PER_SEC / 1000));
        }
        return buf;
}

const char *format_bytes(char *buf, size_t size, uint64_t bytes) {
        static const char suffix[] = "KMGTPE";
        if (bytes < 1024) {
                snprintf(buf, size, "%lluB", (unsigned long long) bytes);
                return buf;
        }
        double v = (double) bytes;
        size_t i = 0;
        for (v /= 1024; v >= 1024 && i + 1 < strlen(suffix); i++)
                v /= 1024;
        snprintf(buf, size, "%.1f%c", v, suffix[i]);
        return buf;
}

typedef struct UidName {
        uid_t uid;
        char *name;
} UidName;

static UidName *uid_cache;
static size_t n_uid_cache;

static void uid_cache_free(void) {
        for (size_t i = 0; i < n_uid_cache; i++)
                free(uid_cache[i].name);
        free(uid_cache);
        uid_cache = NULL;
        n_uid_cache = 0;
}

const char *uid_to_name(uid_t uid) {
        for (size_t i = 0; i < n_uid_cache; i++)
                if (uid_cache[i].uid == uid)
                        return uid_cache[i].name;

        char *name = NULL;
        struct passwd *pw = getpwuid(uid);
        if (pw && pw->pw_name && *pw->pw_name)
                name = escape_display(pw->pw_name);
        else if (asprintf(&name, "%lu", (unsigned long) uid) < 0)
                name = NULL;
        if (!name)
                return "?";
        UidName *t = realloc(uid_cache, (n_uid_cache + 1) * sizeof(*t));
        if (!t) {
                free(name);
                return "?";
        }
        if (!uid_cache)
                atexit(uid_cache_free);
        uid_cache = t;
        uid_cache[n_uid_cache] = (UidName) { .uid = uid, .name = name };
        return uid_cache[n_uid_cache++].name;
}

int parse_unsigned(const char *s, unsigned max, unsigned *ret) {
        if (!s || !isdigit((unsigned char) *s))
                return -EINVAL;
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || *end)
                return -EINVAL;
        if (v < 1 || v > max)
                return -ERANGE;
        *ret = (unsigned) v;
        return 0;
}

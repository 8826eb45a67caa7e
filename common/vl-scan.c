/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"
#include "macro.h"
#include "vl-scan.h"

/* Every function below returns true when it read its part in the scanner's form and false
 * when it met anything else: the message is then left to json-c, never refused here. */

typedef struct Scan {
        const char *p, *end;
        char *out;              /* next free byte of the scanner's buffer */
        unsigned depth;         /* objects and arrays open, the call's own object included */
} Scan;

static bool is_ws(char c) {
        /* json-c's whitespace (is_ws_char), and that of the check for trailing bytes. */
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(Scan *s) {
        while (s->p < s->end && is_ws(*s->p))
                s->p++;
}

static bool at(const Scan *s, char c) {
        return s->p < s->end && *s->p == c;
}

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* A string at s->p (its opening quote), decoded into the buffer and NUL-terminated. The
 * decoded text and its NUL never take more bytes than the quoted source, so the buffer
 * (one byte more than the message) cannot overflow. */
static bool scan_string(Scan *s, const char **ret, size_t *ret_len) {
        const char *p = s->p + 1;
        char *o = s->out, *start = s->out;

        for (;;) {
                const char *q = p;
                while (q < s->end && *q != '"' && *q != '\\' && (unsigned char) *q >= 0x20)
                        q++;
                memcpy(o, p, (size_t) (q - p));
                o += q - p;
                p = q;
                if (p == s->end)
                        return false;
                if (*p == '"') {
                        p++;
                        break;
                }
                /* A raw control character: json-c takes it; leave that to json-c. */
                if (*p != '\\' || ++p == s->end)
                        return false;
                switch (*p++) {
                case '"':
                case '\\':
                case '/':
                        *o++ = p[-1];
                        break;
                case 'b':
                        *o++ = '\b';
                        break;
                case 'f':
                        *o++ = '\f';
                        break;
                case 'n':
                        *o++ = '\n';
                        break;
                case 'r':
                        *o++ = '\r';
                        break;
                case 't':
                        *o++ = '\t';
                        break;
                case 'u': {
                        if (s->end - p < 4)
                                return false;
                        unsigned cp = 0;
                        for (int k = 0; k < 4; k++) {
                                int h = hex_value(p[k]);
                                if (h < 0)
                                        return false;
                                cp = cp << 4 | (unsigned) h;
                        }
                        p += 4;
                        /* \u0000 (json-c keeps it in values and cuts keys at it) and
                         * surrogates (json-c pairs them or puts U+FFFD): json-c's. */
                        if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
                                return false;
                        /* The bytes json-c writes for it. */
                        if (cp < 0x80)
                                *o++ = (char) cp;
                        else if (cp < 0x800) {
                                *o++ = (char) (0xc0 | (cp >> 6));
                                *o++ = (char) (0x80 | (cp & 0x3f));
                        } else {
                                *o++ = (char) (0xe0 | (cp >> 12));
                                *o++ = (char) (0x80 | ((cp >> 6) & 0x3f));
                                *o++ = (char) (0x80 | (cp & 0x3f));
                        }
                        break;
                }
                default:
                        return false;
                }
        }
        *o++ = 0;
        *ret = start;
        *ret_len = (size_t) (o - 1 - start);
        s->out = o;
        s->p = p;
        return true;
}

/* A number in the RFC 8259 grammar, converted as json-c converts it: with '.' or an
 * exponent a double (strtod), else an integer that saturates (strtoll for negative ones,
 * strtoull else, above INT64_MAX json-c's uint64 whose int64 value is INT64_MAX). The
 * daemon does not call setlocale(), so strtod reads '.' as json-c's "C" locale does. */
static bool scan_number(Scan *s, VlParam *x) {
        const char *b = s->p, *p = s->p;
        bool dbl = false;

        if (p < s->end && *p == '-')
                p++;
        if (p < s->end && *p == '0')
                p++;
        else if (p < s->end && *p >= '1' && *p <= '9')
                while (p < s->end && is_digit(*p))
                        p++;
        else
                return false;
        if (p < s->end && *p == '.') {
                dbl = true;
                if (++p == s->end || !is_digit(*p))
                        return false;
                while (p < s->end && is_digit(*p))
                        p++;
        }
        if (p < s->end && (*p == 'e' || *p == 'E')) {
                dbl = true;
                if (++p < s->end && (*p == '+' || *p == '-'))
                        p++;
                if (p == s->end || !is_digit(*p))
                        return false;
                while (p < s->end && is_digit(*p))
                        p++;
        }
        size_t n = (size_t) (p - b);
        char t[64];
        if (n >= sizeof(t))
                return false;
        s->p = p;
        if (!x)
                return true;
        memcpy(t, b, n);
        t[n] = 0;
        if (dbl) {
                char *e;
                x->kind = VL_PARAM_DOUBLE;
                x->d = strtod(t, &e);
                return e == t + n;
        }
        x->kind = VL_PARAM_INT;
        if (t[0] == '-') {
                long long v = strtoll(t, NULL, 10);
                x->i = v;
                x->d = (double) v;
        } else {
                unsigned long long u = strtoull(t, NULL, 10);
                x->i = u <= INT64_MAX ? (int64_t) u : INT64_MAX;
                x->d = u <= INT64_MAX ? (double) x->i : (double) u;
        }
        return true;
}

static bool scan_literal(Scan *s, VlParam *x) {
        size_t left = (size_t) (s->end - s->p);
        VlParam v = {};
        if (left >= 4 && memcmp(s->p, "true", 4) == 0)
                v = (VlParam) { .kind = VL_PARAM_BOOL, .b = true }, s->p += 4;
        else if (left >= 5 && memcmp(s->p, "false", 5) == 0)
                v = (VlParam) { .kind = VL_PARAM_BOOL, .b = false }, s->p += 5;
        else if (left >= 4 && memcmp(s->p, "null", 4) == 0)
                v = (VlParam) { .kind = VL_PARAM_NULL }, s->p += 4;
        else
                return false;
        if (x) {
                x->kind = v.kind;
                x->b = v.b;
        }
        return true;
}

static bool scan_value(Scan *s, VlParam *x);

/* An object or array at s->p, read and checked but not kept. */
static bool scan_nested(Scan *s) {
        char close = *s->p == '{' ? '}' : ']';
        if (++s->depth > VL_SCAN_DEPTH_MAX)
                return false;
        s->p++;
        skip_ws(s);
        if (!at(s, close))
                for (;;) {
                        if (close == '}') {
                                const char *k;
                                size_t kn;
                                if (!at(s, '"') || !scan_string(s, &k, &kn))
                                        return false;
                                skip_ws(s);
                                if (!at(s, ':'))
                                        return false;
                                s->p++;
                                skip_ws(s);
                        }
                        if (!scan_value(s, NULL))
                                return false;
                        skip_ws(s);
                        if (at(s, close))
                                break;
                        if (!at(s, ','))
                                return false;
                        s->p++;
                        skip_ws(s);
                }
        s->p++;
        s->depth--;
        return true;
}

/* Any value; kept in x when x is not NULL (objects and arrays only as VL_PARAM_OTHER). */
static bool scan_value(Scan *s, VlParam *x) {
        if (s->p == s->end)
                return false;
        switch (*s->p) {
        case '"': {
                const char *v;
                size_t n;
                if (!scan_string(s, &v, &n))
                        return false;
                if (x) {
                        x->kind = VL_PARAM_STRING;
                        x->s = v;
                        x->len = n;
                }
                return true;
        }
        case '{':
        case '[':
                if (x)
                        x->kind = VL_PARAM_OTHER;
                return scan_nested(s);
        case 't':
        case 'f':
        case 'n':
                return scan_literal(s, x);
        default:
                if (*s->p == '-' || is_digit(*s->p))
                        return scan_number(s, x);
                return false;
        }
}

/* A key and its colon, the whitespace after it skipped. */
static bool scan_key(Scan *s, const char **ret) {
        size_t n;
        if (!at(s, '"') || !scan_string(s, ret, &n))
                return false;
        skip_ws(s);
        if (!at(s, ':'))
                return false;
        s->p++;
        skip_ws(s);
        return true;
}

/* After a member: true and *ret_end set at '}', true at ',' (skipped, with the
 * whitespace after it), false otherwise. */
static bool scan_member_end(Scan *s, bool *ret_end) {
        skip_ws(s);
        if (at(s, '}')) {
                s->p++;
                *ret_end = true;
                return true;
        }
        if (!at(s, ','))
                return false;
        s->p++;
        skip_ws(s);
        *ret_end = false;
        return true;
}

/* The parameters object, each member into the list. A repeated key (json-c keeps its
 * last value at the first one's place) is left to json-c, and so is a list too long to
 * search for repeats cheaply. */
static bool scan_params(Scan *s, VlParams *params) {
        s->p++;
        s->depth++;
        skip_ws(s);
        if (at(s, '}')) {
                s->p++;
                s->depth--;
                return true;
        }
        for (bool end = false; !end;) {
                const char *key;
                if (!scan_key(s, &key))
                        return false;
                if (params->n >= VL_SCAN_PARAMS_MAX || vl_params_get(params, key))
                        return false;
                VlParam *x = vl_params_add(params, key);        /* room reserved: no OOM */
                assert(x);
                if (!scan_value(s, x) || !scan_member_end(s, &end))
                        return false;
        }
        s->depth--;
        return true;
}

/* "more", "oneway", "upgrade": a boolean, or null for false; anything else is json-c's
 * (it refuses it). */
static bool scan_flag(Scan *s, bool *ret) {
        VlParam v = {};
        if (!at(s, 't') && !at(s, 'f') && !at(s, 'n'))
                return false;
        if (!scan_literal(s, &v))
                return false;
        *ret = v.kind == VL_PARAM_BOOL && v.b;
        return true;
}

static int reserve(VlScanner *sc, size_t len) {
        if (sc->params.size > 8 * VL_SCAN_PARAMS_MAX)
                /* The list of a message json-c read with thousands of members: not kept. */
                vl_params_done(&sc->params);
        if (sc->params.size < VL_SCAN_PARAMS_MAX) {
                VlParam *a = realloc(sc->params.items, VL_SCAN_PARAMS_MAX * sizeof(VlParam));
                if (!a)
                        return -ENOMEM;
                sc->params.items = a;
                sc->params.size = VL_SCAN_PARAMS_MAX;
        }
        if (sc->size < len + 1) {
                size_t sz = MAX(sc->size, (size_t) 1024);
                while (sz < len + 1)
                        sz *= 2;
                char *b = realloc(sc->buf, sz);
                if (!b)
                        return -ENOMEM;
                sc->buf = b;
                sc->size = sz;
        } else if (sc->size > 64 * 1024 && len + 1 <= 4096) {
                /* After a large message: give the memory back. */
                char *b = realloc(sc->buf, 4096);
                if (b) {
                        sc->buf = b;
                        sc->size = 4096;
                }
        }
        return 0;
}

int vl_scan_call(VlScanner *sc, const char *msg, size_t len, VlScannedCall *ret) {
        enum { M_METHOD, M_PARAMETERS, M_MORE, M_ONEWAY, M_UPGRADE, _M_MAX };
        static const char *const members[_M_MAX] = { "method", "parameters", "more", "oneway", "upgrade" };
        bool seen[_M_MAX] = {}, flag[_M_MAX] = {};
        const char *method = NULL;

        assert(sc);
        assert(msg || len == 0);
        assert(ret);

        /* The same UTF-8 check json_parse_buffer() makes first: what it refuses, json-c's
         * path refuses. */
        if (len > INT_MAX || !json_utf8_valid(msg, len))
                return 0;
        int r = reserve(sc, len);
        if (r < 0)
                return r;
        vl_params_reset(&sc->params);

        Scan s = { .p = msg, .end = msg + len, .out = sc->buf, .depth = 1 };
        skip_ws(&s);
        if (!at(&s, '{'))
                return 0;
        s.p++;
        skip_ws(&s);
        if (at(&s, '}'))
                return 0;       /* no method: json-c's error */
        for (bool end = false; !end;) {
                const char *key;
                if (!scan_key(&s, &key))
                        return 0;
                size_t m = 0;
                while (m < _M_MAX && strcmp(members[m], key) != 0)
                        m++;
                if (m < _M_MAX) {
                        if (seen[m])
                                return 0;       /* repeated: json-c's last-wins */
                        seen[m] = true;
                }
                bool ok;
                size_t n;
                switch (m) {
                case M_METHOD:
                        ok = at(&s, '"') && scan_string(&s, &method, &n);
                        break;
                case M_PARAMETERS:
                        if (at(&s, '{'))
                                ok = scan_params(&s, &sc->params);
                        else {
                                /* null: no parameters; anything else is json-c's error */
                                VlParam v = {};
                                ok = at(&s, 'n') && scan_literal(&s, &v) && v.kind == VL_PARAM_NULL;
                        }
                        break;
                case M_MORE:
                case M_ONEWAY:
                case M_UPGRADE:
                        ok = scan_flag(&s, &flag[m]);
                        break;
                default:
                        ok = scan_value(&s, NULL);
                        break;
                }
                if (!ok || !scan_member_end(&s, &end))
                        return 0;
        }
        skip_ws(&s);
        if (s.p != s.end)
                return 0;

        /* The checks of vl_call_parse_with(); what fails them is its -EPROTO. The method
         * holds no NUL (\u0000 is left to json-c). */
        const char *dot = method ? strrchr(method, '.') : NULL;
        if (!dot || dot == method || dot[1] == 0)
                return 0;
        if ((flag[M_MORE] && flag[M_ONEWAY]) || flag[M_UPGRADE])
                return 0;

        *ret = (VlScannedCall) {
                .method = method,
                .parameters = &sc->params,
                .more = flag[M_MORE],
                .oneway = flag[M_ONEWAY],
        };
        return 1;
}

int vl_scan_call_from_json(VlScanner *sc, const VlCall *call, VlScannedCall *ret) {
        assert(sc);
        assert(call);
        assert(ret);
        int r = vl_params_from_json(&sc->params, call->parameters);
        if (r < 0)
                return r == -EINVAL ? -EPROTO : r;
        *ret = (VlScannedCall) {
                .method = call->method,
                .parameters = &sc->params,
                .more = call->more,
                .oneway = call->oneway,
        };
        return 0;
}

void vl_scanner_done(VlScanner *sc) {
        if (!sc)
                return;
        vl_params_done(&sc->params);
        free(sc->buf);
        *sc = (VlScanner) {};
}

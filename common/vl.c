/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "json-util.h"
#include "vl.h"

#define VL_READ_CHUNK ((size_t) 64 * 1024)
/* The smallest buffer a reader allocates: a peer that sends one byte costs this much, not
 * a whole read chunk. */
#define VL_BUF_MIN ((size_t) 512)

/* ---- reader ---- */

void vl_reader_init(VlReader *r, size_t max_message) {
        assert(r);
        *r = (VlReader) {
                .max_message = max_message > 0 ? max_message : VL_MESSAGE_SIZE_DEFAULT,
        };
}

void vl_reader_done(VlReader *r) {
        if (!r)
                return;
        free(r->buf);
        r->buf = NULL;
        r->size = r->start = r->end = r->scanned = 0;
}

int vl_reader_get_space(VlReader *r, size_t min, void **ret_p, size_t *ret_n) {
        assert(r);
        assert(ret_p);
        assert(ret_n);

        if (min == 0)
                min = VL_READ_CHUNK;

        /* Move the unreturned tail to the front only when something was consumed. The tail
         * is at most the message in progress plus whole messages the caller has not taken
         * yet, and after the move it sits at offset 0 until consumed, so every byte is
         * moved at most once: reading stays linear however the stream is cut. */
        if (r->start > 0 && r->size - r->end < min) {
                size_t n = r->end - r->start;
                if (n > 0)
                        memmove(r->buf, r->buf + r->start, n);
                r->end = n;
                r->start = 0;
        }
        if (r->size - r->end < min) {
                size_t want = r->end + min;
                size_t sz = MAX(r->size, VL_BUF_MIN);
                while (sz < want) {
                        if (sz > SIZE_MAX / 2)
                                return -ENOMEM;
                        sz *= 2;
                }
                char *b = realloc(r->buf, sz);
                if (!b)
                        return -ENOMEM;
                r->buf = b;
                r->size = sz;
        }
        *ret_p = r->buf + r->end;
        *ret_n = r->size - r->end;
        return 0;
}

void vl_reader_advance(VlReader *r, size_t n) {
        assert(r);
        assert(n <= r->size - r->end);
        r->end += n;
}

ssize_t vl_reader_read(VlReader *r, int fd) {
        /* Bytes arrive into a scratch chunk and only what came is kept, so the buffer
         * grows with the data held, not with the size of a read: a peer that sends one
         * byte and stalls costs VL_BUF_MIN, not VL_READ_CHUNK. */
        static _Thread_local char scratch[VL_READ_CHUNK];

        /* Never read far past what one message may be: a peer streaming an oversized
         * message is stopped after about max_message bytes, not after the whole thing.
         * The message in progress is what follows the last NUL held (whole messages the
         * caller has not taken yet do not count: a busy caller must not be slowed to
         * one-byte reads). memrchr stops at that NUL, so this is cheap. */
        size_t held = r->end - r->start;
        const char *last = held > 0 ? memrchr(r->buf + r->start, 0, held) : NULL;
        size_t partial = last ? (size_t) (r->buf + r->end - last - 1) : held;
        size_t limit = partial < r->max_message ? r->max_message + 1 - partial : (size_t) 1;
        size_t space = r->size - r->end;

        /* Into the buffer when it has room for a chunk (as much as fits: a large message
         * then takes few reads, and the scan above stays cheap), else into the scratch. */
        bool direct = space >= MIN(limit, VL_READ_CHUNK);
        size_t n = direct ? MIN(space, limit) : MIN(limit, VL_READ_CHUNK);
        for (;;) {
                ssize_t l = read(fd, direct ? r->buf + r->end : scratch, n);
                if (l < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
                }
                if (!direct && l > 0) {
                        void *p;
                        size_t room;
                        int k = vl_reader_get_space(r, (size_t) l, &p, &room);
                        if (k < 0)
                                return k;
                        memcpy(p, scratch, (size_t) l);
                }
                vl_reader_advance(r, (size_t) l);
                r->drained = (size_t) l < n;
                return l;
        }
}

int vl_reader_next(VlReader *r, char **ret_msg, size_t *ret_len) {
        assert(r);
        assert(ret_msg);
        assert(ret_len);

        if (r->overflow)
                return -EMSGSIZE;

        size_t from = r->start + r->scanned;
        char *nul = from < r->end ? memchr(r->buf + from, 0, r->end - from) : NULL;
        if (!nul) {
                r->scanned = r->end - r->start;
                /* Without a NUL, everything held belongs to one message. */
                if (r->scanned > r->max_message) {
                        r->overflow = true;
                        return -EMSGSIZE;
                }
                return 0;
        }

        size_t len = (size_t) (nul - (r->buf + r->start));
        if (len > r->max_message) {
                r->overflow = true;
                return -EMSGSIZE;
        }
        *ret_msg = r->buf + r->start;
        *ret_len = len;
        r->start += len + 1;
        r->scanned = 0;
        if (r->start == r->end)
                r->start = r->end = 0;   /* cheap reset; the message stays valid in place */
        return 1;
}

size_t vl_reader_pending(const VlReader *r) {
        assert(r);
        return r->end - r->start;
}

bool vl_reader_has_message(const VlReader *r) {
        assert(r);
        return r->end > r->start && memchr(r->buf + r->start, 0, r->end - r->start);
}

size_t vl_reader_partial(const VlReader *r) {
        assert(r);
        size_t held = r->end - r->start;
        const char *last = held > 0 ? memrchr(r->buf + r->start, 0, held) : NULL;
        return last ? (size_t) (r->buf + r->end - last - 1) : held;
}

void vl_reader_shrink(VlReader *r) {
        assert(r);
        if (r->end > r->start || r->size <= VL_READ_CHUNK / 16)
                return;
        free(r->buf);
        r->buf = NULL;
        r->size = r->start = r->end = r->scanned = 0;
}

/* ---- writer ---- */

void vl_writer_init(VlWriter *w) {
        assert(w);
        *w = (VlWriter) {};
}

void vl_writer_done(VlWriter *w) {
        if (!w)
                return;
        free(w->buf);
        *w = (VlWriter) {};
}

static int writer_reserve(VlWriter *w, size_t n) {
        if (w->size - w->end >= n)
                return 0;
        /* Compact when the written head is at least half the buffer: amortized O(1). */
        if (w->start > 0 && w->start >= w->end - w->start) {
                size_t left = w->end - w->start;
                memmove(w->buf, w->buf + w->start, left);
                w->sealed -= w->start;
                w->end = left;
                w->start = 0;
                if (w->size - w->end >= n)
                        return 0;
        }
        if (n > SIZE_MAX / 2 - w->end)
                return -ENOMEM;
        size_t sz = MAX(w->size, (size_t) 4096);
        while (sz - w->end < n)
                sz *= 2;
        char *b = realloc(w->buf, sz);
        if (!b)
                return -ENOMEM;
        w->buf = b;
        w->size = sz;
        return 0;
}

int vl_writer_append_raw(VlWriter *w, const void *p, size_t n) {
        assert(w);
        assert(p || n == 0);
        if (n == SIZE_MAX)
                return -ENOMEM;
        int r = writer_reserve(w, n + 1);
        if (r < 0)
                return r;
        if (n > 0)
                memcpy(w->buf + w->end, p, n);
        w->buf[w->end + n] = 0;
        w->end += n + 1;
        return 0;
}

int vl_writer_append_json(VlWriter *w, json_object *o) {
        size_t n;
        assert(w);
        const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                          &n);
        if (!s)
                return -ENOMEM;
        return vl_writer_append_raw(w, s, n);
}

static int writer_flush_to(VlWriter *w, int fd, size_t until) {
        while (w->start < until) {
                ssize_t l = send(fd, w->buf + w->start, until - w->start, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (l < 0 && errno == ENOTSOCK)
                        l = write(fd, w->buf + w->start, until - w->start);
                if (l < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
                }
                w->start += (size_t) l;
                w->mid_message = w->buf[w->start - 1] != 0;
        }
        if (w->start == w->end)
                w->start = w->end = w->sealed = 0;
        return 0;
}

int vl_writer_flush(VlWriter *w, int fd) {
        assert(w);
        int r = writer_flush_to(w, fd, w->end);
        if (w->sealed < w->start)
                w->sealed = w->start;
        return r;
}

int vl_writer_flush_some(VlWriter *w, int fd, size_t n) {
        assert(w);
        int r = writer_flush_to(w, fd, w->start + MIN(n, w->end - w->start));
        if (w->sealed < w->start)
                w->sealed = w->start;
        return r;
}

void vl_writer_seal(VlWriter *w) {
        assert(w);
        w->sealed = w->end;
}

int vl_writer_flush_sealed(VlWriter *w, int fd) {
        assert(w);
        if (w->sealed <= w->start)
                return 0;
        return writer_flush_to(w, fd, w->sealed);
}

void vl_writer_discard(VlWriter *w) {
        assert(w);
        size_t keep = w->start;
        if (w->mid_message) {
                const char *nul = memchr(w->buf + w->start, 0, w->end - w->start);
                keep = nul ? (size_t) (nul - w->buf) + 1 : w->end;
        }
        w->end = keep;
        w->sealed = MIN(w->sealed, keep);
        if (w->start == w->end)
                w->start = w->end = w->sealed = 0;
        /* Give the memory back: what is kept is at most one message. */
        size_t left = w->end - w->start;
        if (w->size > 2 * MAX(left, (size_t) 4096)) {
                memmove(w->buf, w->buf + w->start, left);
                w->sealed -= MIN(w->sealed, w->start);
                w->start = 0;
                w->end = left;
                char *b = realloc(w->buf, MAX(left, (size_t) 4096));
                if (b) {
                        w->buf = b;
                        w->size = MAX(left, (size_t) 4096);
                }
        }
}

void vl_writer_shrink(VlWriter *w) {
        assert(w);
        if (w->end > w->start || w->size <= VL_READ_CHUNK)
                return;
        free(w->buf);
        *w = (VlWriter) {};
}

size_t vl_writer_pending(const VlWriter *w) {
        assert(w);
        return w->end - w->start;
}

size_t vl_writer_pending_sealed(const VlWriter *w) {
        assert(w);
        return w->sealed > w->start ? w->sealed - w->start : 0;
}

/* ---- messages ---- */

static int message_parse(json_tokener *tok, const char *msg, size_t len, json_object **ret) {
        json_object *o = NULL;
        int r = tok ? json_parse_buffer_with(tok, msg, len, &o) : json_parse_buffer(msg, len, &o);
        if (r < 0)
                return r;
        if (!json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return -EBADMSG;
        }
        *ret = o;
        return 0;
}

int vl_message_parse(const char *msg, size_t len, json_object **ret) {
        return message_parse(NULL, msg, len, ret);
}

/* An optional member that must be a boolean when present (null counts as absent). */
static int get_flag(json_object *m, const char *key, bool *ret) {
        json_object *v;
        if (!json_object_object_get_ex(m, key, &v) || !v) {
                *ret = false;
                return 0;
        }
        if (!json_object_is_type(v, json_type_boolean))
                return -EPROTO;
        *ret = json_object_get_boolean(v);
        return 0;
}

/* "parameters": absent or null becomes a fresh empty object owned by the message. */
static int get_parameters(json_object *m, json_object **ret) {
        json_object *p;
        if (json_object_object_get_ex(m, "parameters", &p) && p) {
                if (!json_object_is_type(p, json_type_object))
                        return -EPROTO;
                *ret = p;
                return 0;
        }
        p = json_object_new_object();
        if (!p)
                return -ENOMEM;
        if (json_object_object_add(m, "parameters", p) < 0) {
                json_object_put(p);
                return -ENOMEM;
        }
        *ret = p;
        return 0;
}

int vl_call_parse(const char *msg, size_t len, VlCall *ret) {
        return vl_call_parse_with(NULL, msg, len, ret);
}

int vl_call_parse_with(json_tokener *tok, const char *msg, size_t len, VlCall *ret) {
        _cleanup_(json_object_putp) json_object *m = NULL;
        json_object *v, *params;
        bool more, oneway, upgrade;
        int r;

        assert(ret);
        r = message_parse(tok, msg, len, &m);
        if (r < 0)
                return r;

        if (!json_object_object_get_ex(m, "method", &v) || !json_object_is_type(v, json_type_string))
                return -EPROTO;
        const char *method = json_object_get_string(v);
        size_t mlen = (size_t) json_object_get_string_len(v);
        const char *dot = strrchr(method, '.');
        if (strlen(method) != mlen || !dot || dot == method || dot[1] == 0)
                return -EPROTO;

        if (get_flag(m, "more", &more) < 0 || get_flag(m, "oneway", &oneway) < 0 ||
            get_flag(m, "upgrade", &upgrade) < 0)
                return -EPROTO;
        if ((more && oneway) || upgrade)
                return -EPROTO;
        r = get_parameters(m, &params);
        if (r < 0)
                return r;

        *ret = (VlCall) {
                .message = TAKE_PTR(m),
                .method = method,
                .parameters = params,
                .more = more,
                .oneway = oneway,
        };
        return 0;
}

void vl_call_done(VlCall *c) {
        if (!c)
                return;
        json_object_put(c->message);
        *c = (VlCall) {};
}

int vl_reply_parse(const char *msg, size_t len, VlReply *ret) {
        _cleanup_(json_object_putp) json_object *m = NULL;
        json_object *v, *params;
        const char *error = NULL;
        bool continues;
        int r;

        assert(ret);
        r = vl_message_parse(msg, len, &m);
        if (r < 0)
                return r;
        if (json_object_object_get_ex(m, "error", &v) && v) {
                if (!json_object_is_type(v, json_type_string))
                        return -EPROTO;
                error = json_object_get_string(v);
                if (strlen(error) != (size_t) json_object_get_string_len(v) || !*error)
                        return -EPROTO;
        }
        if (get_flag(m, "continues", &continues) < 0)
                return -EPROTO;
        r = get_parameters(m, &params);
        if (r < 0)
                return r;

        *ret = (VlReply) {
                .message = TAKE_PTR(m),
                .error = error,
                .parameters = params,
                .continues = continues,
        };
        return 0;
}

void vl_reply_done(VlReply *r) {
        if (!r)
                return;
        json_object_put(r->message);
        *r = (VlReply) {};
}

/* Adds key: value to o, consuming value also on failure. */
static int add_consume(json_object *o, const char *key, json_object *value) {
        if (!value)
                return -ENOMEM;
        if (json_object_object_add(o, key, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

json_object *vl_call_new(const char *method, json_object *parameters, unsigned flags) {
        json_object *o = json_object_new_object();
        if (!o || add_consume(o, "method", json_object_new_string(method)) < 0)
                goto fail;
        if (parameters && add_consume(o, "parameters", TAKE_PTR(parameters)) < 0)
                goto fail;
        if ((flags & VL_CALL_MORE) && add_consume(o, "more", json_object_new_boolean(1)) < 0)
                goto fail;
        if ((flags & VL_CALL_ONEWAY) && add_consume(o, "oneway", json_object_new_boolean(1)) < 0)
                goto fail;
        return o;
fail:
        json_object_put(parameters);
        json_object_put(o);
        return NULL;
}

json_object *vl_reply_new(json_object *parameters, bool continues) {
        json_object *o = json_object_new_object();
        if (!o)
                goto fail;
        if (!parameters)
                parameters = json_object_new_object();
        if (add_consume(o, "parameters", TAKE_PTR(parameters)) < 0)
                goto fail;
        if (continues && add_consume(o, "continues", json_object_new_boolean(1)) < 0)
                goto fail;
        return o;
fail:
        json_object_put(parameters);
        json_object_put(o);
        return NULL;
}

json_object *vl_error_new(const char *error, json_object *parameters) {
        json_object *o = json_object_new_object();
        if (!o || add_consume(o, "error", json_object_new_string(error)) < 0)
                goto fail;
        if (!parameters)
                parameters = json_object_new_object();
        if (add_consume(o, "parameters", TAKE_PTR(parameters)) < 0)
                goto fail;
        return o;
fail:
        json_object_put(parameters);
        json_object_put(o);
        return NULL;
}

json_object *vl_error_newf(const char *error, const char *key, const char *value, const char *reason_fmt, ...) {
        _cleanup_free_ char *reason = NULL;
        va_list ap;

        va_start(ap, reason_fmt);
        int n = vasprintf(&reason, reason_fmt, ap);
        va_end(ap);
        if (n < 0) {
                reason = NULL;
                return NULL;
        }
        json_object *p = json_object_new_object();
        if (!p)
                return NULL;
        if (add_consume(p, "reason", json_object_new_string_len(reason, n)) < 0 ||
            (key && add_consume(p, key, json_object_new_string(strempty(value))) < 0)) {
                json_object_put(p);
                return NULL;
        }
        return vl_error_new(error, p);
}

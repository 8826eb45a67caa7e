/* SPDX-License-Identifier: MIT */
#pragma once

/* A small streaming JSON writer: the daemon writes its replies and events with it, member
 * by member, into one buffer, instead of building a json-c tree of heap objects per message
 * and serializing that (docs/performance.md, "Round 2: allocation-light hot path").
 *
 * The buffer starts inline in the writer (a writer on the stack costs no allocation for
 * the usual reply) and moves to the heap only when a message outgrows it. Errors are
 * sticky: the first failure (-ENOMEM when the buffer cannot grow, -EINVAL for a NULL
 * string or a number JSON cannot carry, -E2BIG when nesting is too deep) is kept in
 * w->error, every later call does nothing, and jw_finish() returns it. A message that
 * failed is never sent as it is: the caller sends an error instead, so no member is ever
 * silently missing or null.
 *
 * Strings are escaped per RFC 8259 (", \, control characters; '/' is left alone) and are
 * always valid UTF-8 on output: a byte that does not start a valid UTF-8 sequence (a
 * process name from /proc may hold any bytes) is written as U+FFFD.
 *
 *         JsonWriter w;
 *         jw_init(&w);
 *         jw_object_begin(&w, NULL);
 *         jw_string(&w, "state", "granted");
 *         jw_int(&w, "token", 7);
 *         jw_object_end(&w);
 *         r = jw_finish(&w);        // 0: w.buf/w.len hold {"state":"granted","token":7}
 *         ...
 *         jw_done(&w);
 *
 * Keys are written as given (they are the program's own literals, never escaped). A key
 * must be NULL exactly for array elements and the top-level value. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

#define JW_INLINE_SIZE 1024
#define JW_MAX_DEPTH 64

typedef struct JsonWriter {
        char *buf;              /* ro: the text so far (not NUL-terminated) */
        size_t len;             /* ro */
        size_t size;            /* private: bytes of buf */
        int error;              /* ro: the first failure, 0 if none */
        unsigned depth;         /* private: open containers */
        uint64_t has_member;    /* private: bit d set once the container at depth d has a member */
        char inline_buf[JW_INLINE_SIZE]; /* private */
} JsonWriter;

/* How the writer grows its buffer (realloc by default; tests inject failures here). */
extern void *(*jw_realloc)(void *p, size_t n);

void jw_init(JsonWriter *w);
/* Empties the writer for the next message; keeps a heap buffer it grew to. */
void jw_reset(JsonWriter *w);
void jw_done(JsonWriter *w);

void jw_object_begin(JsonWriter *w, const char *key);
void jw_object_end(JsonWriter *w);
void jw_array_begin(JsonWriter *w, const char *key);
void jw_array_end(JsonWriter *w);

/* s NULL is -EINVAL (a missing string is the caller's to decide, never a null by accident). */
void jw_string(JsonWriter *w, const char *key, const char *s);
void jw_string_len(JsonWriter *w, const char *key, const char *s, size_t n);
void jw_int(JsonWriter *w, const char *key, int64_t i);
void jw_bool(JsonWriter *w, const char *key, bool b);
/* Seconds and the like: at most 6 decimals, trailing zeros cut ("0.5", "30.0"). Not
 * finite is -EINVAL. */
void jw_double(JsonWriter *w, const char *key, double d);
/* An explicit null, where the interface says so (Watch's first reply: event: null). */
void jw_null(JsonWriter *w, const char *key);
/* A value that is already JSON text (one value, from a trusted serializer). */
void jw_raw(JsonWriter *w, const char *key, const char *json, size_t n);
/* Appends bytes as they are (the envelope around parameters written by the caller). */
void jw_append(JsonWriter *w, const char *p, size_t n);

/* 0 if the text is whole and well nested, else the first error (w->error). */
int jw_finish(JsonWriter *w);

/* Writes s as a JSON string with quotes into w (used by the above; exposed for tests). */
void jw_escape(JsonWriter *w, const char *s, size_t n);

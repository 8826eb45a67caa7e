/* SPDX-License-Identifier: MIT */
#pragma once

/* Varlink framing, shared by agend and libagenclient.
 *
 * On the wire a varlink message is one JSON object followed by a NUL byte. This module
 * knows nothing about the daemon or the client: it cuts a byte stream into messages
 * (VlReader), queues messages for writing (VlWriter), and picks apart or builds the JSON
 * objects of calls, replies and errors. Every call returns a negative errno on failure
 * (-ENOMEM on allocation failure, never an abort) and leaves its ret_* arguments untouched
 * then. Nothing here logs.
 *
 * Reading, in the caller's loop:
 *
 *         r = vl_reader_read(&reader, fd);          // or vl_reader_get_space()+_advance()
 *         ...                                       // r: bytes read, 0 EOF, -EAGAIN, <0
 *         while ((r = vl_reader_next(&reader, &msg, &len)) > 0)
 *                 handle(msg, len);                 // msg valid until the next read
 *         if (r == -EMSGSIZE) ...                   // message over the limit: disconnect
 */

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "macro.h"

/* The default size limit of one message (JSON text without its NUL). */
#define VL_MESSAGE_SIZE_DEFAULT ((size_t) 1024 * 1024)

/* ---- reader ---- */

typedef struct VlReader {
        char *buf;              /* private */
        size_t size;            /* private: allocated bytes */
        size_t start;           /* private: first byte not yet returned as a message */
        size_t end;             /* private: bytes received */
        size_t scanned;         /* private: bytes from start known to hold no NUL */
        size_t max_message;     /* ro: size limit of one message, NUL excluded */
        bool overflow;          /* ro: a message exceeded the limit; the stream is unusable */
        bool drained;           /* ro: the last read got less than it asked for (a stream
                                 * socket had no more then: another read would be EAGAIN) */
} VlReader;

/* Initializes an empty reader; allocates nothing yet. max_message 0 = the default. */
void vl_reader_init(VlReader *r, size_t max_message);
/* Frees the buffer; the reader may be initialized again. */
void vl_reader_done(VlReader *r);

/* Makes room for at least min bytes (0 = a sensible read size) after the data held and
 * returns where the caller may write them. Compacts first (moving the incomplete tail to
 * the front, so each byte moves at most once), grows only if that is not enough.
 * Invalidates message pointers returned by vl_reader_next(). */
int vl_reader_get_space(VlReader *r, size_t min, void **ret_p, size_t *ret_n);
/* Tells the reader that n bytes were written at the space returned before. */
void vl_reader_advance(VlReader *r, size_t n);

/* One read(2) into the reader: bytes read (> 0), 0 at end of file, -EAGAIN when nothing is
 * there, another negative errno on error. EINTR is retried. */
ssize_t vl_reader_read(VlReader *r, int fd);

/* Returns 1 and the next whole message (NUL-terminated in place, len without the NUL;
 * valid until the next get_space/read/done), 0 if more bytes are needed, -EMSGSIZE once
 * the message in progress is longer than the limit — as soon as enough bytes have arrived
 * to know, not only when its NUL comes. After -EMSGSIZE it keeps returning -EMSGSIZE. */
int vl_reader_next(VlReader *r, char **ret_msg, size_t *ret_len);

/* Bytes held that were not returned as messages yet (a partial message and any whole
 * messages the caller did not take yet). */
size_t vl_reader_pending(const VlReader *r);
/* Whether a whole message is held (one vl_reader_next() would return 1). */
bool vl_reader_has_message(const VlReader *r);
/* Bytes of the message in progress: those after the last NUL held. */
size_t vl_reader_partial(const VlReader *r);
/* Frees the buffer if nothing is held and it is larger than a small one, so a connection
 * that is quiet between calls does not keep the buffer of its largest message. */
void vl_reader_shrink(VlReader *r);

/* ---- writer ---- */

typedef struct VlWriter {
        char *buf;              /* private */
        size_t size;            /* private: allocated bytes */
        size_t start;           /* private: first byte not yet written to the fd */
        size_t end;             /* private: bytes queued */
        size_t sealed;          /* private: bytes up to here may be flushed by _flush_sealed */
        bool mid_message;       /* private: the last byte written was not a NUL */
} VlWriter;

void vl_writer_init(VlWriter *w);
void vl_writer_done(VlWriter *w);
/* Queues the bytes and a terminating NUL. p must not contain a NUL. */
int vl_writer_append_raw(VlWriter *w, const void *p, size_t n);
/* Queues the JSON text of o (plain, no spaces) and a NUL. o is not consumed. */
int vl_writer_append_json(VlWriter *w, json_object *o);
/* Writes queued bytes with send(MSG_NOSIGNAL) (write(2) if fd is not a socket) until all
 * are out (0) or the fd would block (-EAGAIN, the rest stays queued); other errors are
 * returned as they are (-EPIPE, -ECONNRESET, ...). */
int vl_writer_flush(VlWriter *w, int fd);
/* Writes at most the first n queued bytes, like vl_writer_flush() (agend's pipelined
 * commit: the bytes of replies whose commit is not yet durable stay queued). */
int vl_writer_flush_some(VlWriter *w, int fd, size_t n);
/* Marks everything queued so far as ready; vl_writer_flush_sealed() writes only those
 * bytes. The daemon seals after its group commit, so that no reply reporting an
 * uncommitted change can leave early through a write watcher. */
void vl_writer_seal(VlWriter *w);
int vl_writer_flush_sealed(VlWriter *w, int fd);
/* Drops the queued messages not written yet, except the rest of one already partly
 * written (the stream stays well framed), e.g. to queue an error instead of them. */
void vl_writer_discard(VlWriter *w);
/* Frees a large buffer once everything is written. */
void vl_writer_shrink(VlWriter *w);
/* Queued bytes not written yet; and those of them that are sealed. */
size_t vl_writer_pending(const VlWriter *w);
size_t vl_writer_pending_sealed(const VlWriter *w);

/* ---- messages ---- */

/* Parses one message text (exactly len bytes, strict JSON, one object, nothing after it).
 * -EBADMSG if it is not valid JSON or not an object. On success *ret owns a reference. */
int vl_message_parse(const char *msg, size_t len, json_object **ret);

typedef enum VlCallFlags {
        VL_CALL_MORE = 1 << 0,
        VL_CALL_ONEWAY = 1 << 1,
} VlCallFlags;

typedef struct VlCall {
        json_object *message;   /* owned reference to the whole message */
        const char *method;     /* borrowed from message: "interface.Method" */
        json_object *parameters; /* borrowed; an empty object when absent or null */
        bool more;
        bool oneway;
} VlCall;

/* Parses a call: -EBADMSG if not JSON or not an object; -EPROTO if it is not a call
 * (method missing, not a string, containing NUL or without a '.', "parameters" not an
 * object, more/oneway not booleans, both set, or "upgrade": true — which agend refuses).
 * On success ret owns a reference; release it with vl_call_done(). */
int vl_call_parse(const char *msg, size_t len, VlCall *ret);
/* The same with a parser state the caller keeps and reuses (json_parser_new()). */
int vl_call_parse_with(json_tokener *tok, const char *msg, size_t len, VlCall *ret);
void vl_call_done(VlCall *c);

typedef struct VlReply {
        json_object *message;   /* owned reference to the whole message */
        const char *error;      /* borrowed; NULL unless an error reply */
        json_object *parameters; /* borrowed; an empty object when absent or null */
        bool continues;
} VlReply;

/* Parses a reply: -EBADMSG if not JSON or not an object; -EPROTO if "error" is not a
 * string, "parameters" not an object, or "continues" not a boolean. */
int vl_reply_parse(const char *msg, size_t len, VlReply *ret);
void vl_reply_done(VlReply *r);

/* Builds {"method": method, "parameters": parameters, "more"/"oneway": true}. parameters
 * (may be NULL) is consumed, also on failure. Returns NULL on OOM. */
json_object *vl_call_new(const char *method, json_object *parameters, unsigned flags);
/* Builds {"parameters": parameters, "continues": true if continues}. parameters (may be
 * NULL = {}) is consumed, also on failure. Returns NULL on OOM. */
json_object *vl_reply_new(json_object *parameters, bool continues);
/* Builds {"error": error, "parameters": parameters}. parameters (may be NULL = {}) is
 * consumed, also on failure. Returns NULL on OOM. */
json_object *vl_error_new(const char *error, json_object *parameters);
/* Builds an error reply whose parameters are {"reason": <formatted>} plus, if key is not
 * NULL, {key: value} (e.g. "parameter", "resource"). */
json_object *vl_error_newf(const char *error, const char *key, const char *value, const char *reason_fmt, ...)
        _printf_(4, 5);

/* json_object_putp() for _cleanup_(json_object_putp), and json_add(). */
#include "json-build.h"

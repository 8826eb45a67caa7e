/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "build-config.h"
#include "config.h"
#include "escape.h"
#include "log.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-journal.h>
#endif

static int max_level = LOG_INFO;
static bool to_journal = false;

/* JOURNAL_STREAM names the device and inode of the stream journald connected to our
 * stderr; if stderr is still that stream, structured entries are worth sending. */
void log_setup(void) {
#if HAVE_LIBSYSTEMD
        const char *js = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long long dev, ino;
        if (js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
            (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino)
                to_journal = true;
#endif
}

void log_set_max_level(int level) {
        max_level = level;
}

int log_parse_level(const char *s) {
        static const char *const names[] = { "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug" };
        for (int i = 0; i < (int) ELEMENTSOF(names); i++)
                if (strcmp(s, names[i]) == 0)
                        return i;
        return -EINVAL;
}

int log_full_errno(int level, int error, const char *fmt, ...) {
        int saved = errno;
        if (level > max_level)
                return error < 0 ? error : -abs(error);
        char buf[1024];
        va_list ap;
        va_start(ap, fmt);
        errno = abs(error);     /* so %m names the error */
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
#if HAVE_LIBSYSTEMD
        if (to_journal) {
                if (error != 0)
                        sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level, "ERRNO=%d", abs(error), NULL);
                else
                        sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level, NULL);
                errno = saved;
                return -abs(error);
        }
#endif
        fprintf(stderr, "agend: %s\n", buf);
        errno = saved;
        return -abs(error);
}

static const char *message_id(EventType t) {
        switch (t) {
        case EVENT_GRANTED:
                return LOG_MESSAGE_ID_GRANTED;
        case EVENT_EXPIRED:
                return LOG_MESSAGE_ID_EXPIRED;
        case EVENT_REVOKED:
                return LOG_MESSAGE_ID_REVOKED;
        case EVENT_RECLAIMED:
                return LOG_MESSAGE_ID_RECLAIMED;
        default:
                return NULL;
        }
}

/* Appends "KEY=value" to f (dropped if full: the fixed fields come first). */
static void field_add(LogFields *f, const char *fmt, ...) _printf_(2, 3);
static void field_add(LogFields *f, const char *fmt, ...) {
        if (f->n >= ELEMENTSOF(f->field))
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(f->field[f->n], sizeof(f->field[f->n]), fmt, ap);
        va_end(ap);
        f->n++;
}

static int event_level(EventType t) {
        /* queued and renewed are the bulk under load and carry no decision: debug only. */
        return t == EVENT_QUEUED || t == EVENT_RENEWED || t == EVENT_GRANTED || t == EVENT_RELEASED ? LOG_DEBUG
                                                                                                    : LOG_INFO;
}

int log_lease_event_fields(const Event *e, LogFields *ret) {
        int level = event_level(e->type);
        const char *type = event_type_to_string(e->type);
        /* Names and reasons come from clients: escaped, so they cannot forge log lines. */
        char res[300], why[300], by[400] = "", unit[300];
        if (e->revoked_by)
                snprintf(by, sizeof(by), " by uid %u, pid %d%s%s", e->revoked_by->uid, e->revoked_by->pid,
                         e->revoked_by->unit ? ", unit " : "",
                         e->revoked_by->unit ? cescape_buf(e->revoked_by->unit, unit, sizeof(unit)) : "");
        *ret = (LogFields) { .level = level };
        snprintf(ret->message, sizeof(ret->message),
                 "lease %s on \"%s\" %s%s%s%s%s (token %" PRIu64 ", uid %u, pid %d)", strna(e->lease),
                 cescape_buf(e->resource, res, sizeof(res)), type, by, e->reason ? ": \"" : "",
                 e->reason ? cescape_buf(e->reason, why, sizeof(why)) : "", e->reason ? "\"" : "", e->token,
                 e->owner ? e->owner->uid : 0, e->owner ? e->owner->pid : 0);

        LogFields *f = ret;
        field_add(f, "MESSAGE=%s", ret->message);
        field_add(f, "PRIORITY=%d", level);
        field_add(f, "AGEND_EVENT=%s", type);
        field_add(f, "AGEND_LEASE_ID=%s", strna(e->lease));
        field_add(f, "AGEND_RESOURCE=%s", e->resource);
        field_add(f, "AGEND_TOKEN=%" PRIu64, e->token);
        field_add(f, "AGEND_PEER_UID=%u", e->owner ? e->owner->uid : 0);
        field_add(f, "AGEND_PEER_PID=%d", e->owner ? e->owner->pid : 0);
        const char *mid = message_id(e->type);
        if (mid)
                field_add(f, "MESSAGE_ID=%s", mid);
        /* The journal keeps the value as it is (binary-safe); only the MESSAGE is escaped. */
        if (e->reason)
                field_add(f, "REASON=%s", e->reason);
        if (e->revoked_by) {
                field_add(f, "AGEND_REVOKED_BY_UID=%u", e->revoked_by->uid);
                field_add(f, "AGEND_REVOKED_BY_PID=%d", e->revoked_by->pid);
                if (e->revoked_by->unit)
                        field_add(f, "AGEND_REVOKED_BY_UNIT=%s", e->revoked_by->unit);
        }
        return level;
}

void log_lease_event(const Event *e) {
        if (event_level(e->type) > max_level)
                return;
        LogFields f;
        (void) log_lease_event_fields(e, &f);
#if HAVE_LIBSYSTEMD
        if (to_journal) {
                struct iovec iov[ELEMENTSOF(f.field)];
                for (size_t i = 0; i < f.n; i++)
                        iov[i] = (struct iovec) { .iov_base = f.field[i], .iov_len = strlen(f.field[i]) };
                sd_journal_sendv(iov, (int) f.n);
                return;
        }
#endif
        fprintf(stderr, "agend: %s\n", f.message);
}

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

void log_lease_event(const Event *e) {
        /* queued and renewed are the bulk under load and carry no decision: debug only. */
        int level = (e->type == EVENT_QUEUED || e->type == EVENT_RENEWED || e->type == EVENT_GRANTED ||
                     e->type == EVENT_RELEASED)
                            ? LOG_DEBUG
                            : LOG_INFO;
        if (level > max_level)
                return;
        const char *type = event_type_to_string(e->type);
        /* Names and reasons come from clients: escaped, so they cannot forge log lines. */
        char msg[768], res[300], why[300];
        snprintf(msg, sizeof(msg), "lease %s on \"%s\" %s%s%s%s (token %" PRIu64 ", uid %u, pid %d)",
                 strna(e->lease), cescape_buf(e->resource, res, sizeof(res)), type, e->reason ? ": \"" : "",
                 e->reason ? cescape_buf(e->reason, why, sizeof(why)) : "",
                 e->reason ? "\"" : "", e->token, e->owner ? e->owner->uid : 0, e->owner ? e->owner->pid : 0);
#if HAVE_LIBSYSTEMD
        if (to_journal) {
                const char *mid = message_id(e->type);
                char f_id[64], f_res[300], f_tok[64], f_uid[48], f_pid[48], f_mid[64], f_prio[16];
                snprintf(f_id, sizeof(f_id), "AGEND_LEASE_ID=%s", strna(e->lease));
                snprintf(f_res, sizeof(f_res), "AGEND_RESOURCE=%s", e->resource);
                snprintf(f_tok, sizeof(f_tok), "AGEND_TOKEN=%" PRIu64, e->token);
                snprintf(f_uid, sizeof(f_uid), "AGEND_PEER_UID=%u", e->owner ? e->owner->uid : 0);
                snprintf(f_pid, sizeof(f_pid), "AGEND_PEER_PID=%d", e->owner ? e->owner->pid : 0);
                snprintf(f_prio, sizeof(f_prio), "PRIORITY=%d", level);
                snprintf(f_mid, sizeof(f_mid), "MESSAGE_ID=%s", mid ? mid : "");
                struct iovec iov[] = {
                        { .iov_base = msg, .iov_len = 0 },
                        { .iov_base = f_id, .iov_len = strlen(f_id) },
                        { .iov_base = f_res, .iov_len = strlen(f_res) },
                        { .iov_base = f_tok, .iov_len = strlen(f_tok) },
                        { .iov_base = f_uid, .iov_len = strlen(f_uid) },
                        { .iov_base = f_pid, .iov_len = strlen(f_pid) },
                        { .iov_base = f_prio, .iov_len = strlen(f_prio) },
                        { .iov_base = f_mid, .iov_len = strlen(f_mid) },
                };
                char m[800];
                snprintf(m, sizeof(m), "MESSAGE=%s", msg);
                iov[0].iov_base = m;
                iov[0].iov_len = strlen(m);
                sd_journal_sendv(iov, mid ? 8 : 7);
                return;
        }
#endif
        (void) message_id;
        fprintf(stderr, "agend: %s\n", msg);
}

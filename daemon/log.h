/* SPDX-License-Identifier: MIT */
#pragma once

/* The daemon's log. Under journald (stderr is the journal stream, or we run as a unit)
 * entries go through sd_journal_send with structured fields; otherwise one plain line per
 * entry on stderr. The daemon logs and returns in one step: `return log_error_errno(...)`. */

#include <stdint.h>
#include <syslog.h>

#include "engine.h"
#include "macro.h"

void log_setup(void);
void log_set_max_level(int level);
int log_parse_level(const char *s);

/* MESSAGE_IDs of the journal catalog: grant, expiry, revoke, reclaim. */
/* Made by `systemd-id128 new`; systemd/agend.catalog explains each (tests/test-catalog.sh
 * checks the two agree). Never reuse one for a different message. */
#define LOG_MESSAGE_ID_GRANTED "44b763e9c6094522a75ce1eb0ca6caaa"
#define LOG_MESSAGE_ID_EXPIRED "2c8bfa4d6c724a9bbf99a9033a499d26"
#define LOG_MESSAGE_ID_REVOKED "f3a2122229dc4db18648f38e50f14c62"
#define LOG_MESSAGE_ID_RECLAIMED "cb93d7f22e2d4b4bb45571c298634761"

int log_full_errno(int level, int error, const char *fmt, ...) _printf_(3, 4);

#define log_debug(...) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, (e), __VA_ARGS__)

/* One line per lease event, with AGEND_EVENT=, AGEND_LEASE_ID=, AGEND_RESOURCE=,
 * AGEND_TOKEN=, AGEND_PEER_UID=, AGEND_PEER_PID=; for grant/expire/revoke/reclaim
 * MESSAGE_ID=; REASON= when the event has a reason; for a revoke, who revoked:
 * AGEND_REVOKED_BY_UID=, AGEND_REVOKED_BY_PID=, AGEND_REVOKED_BY_UNIT= (if in a unit). */
void log_lease_event(const Event *e);

/* The entry log_lease_event() writes, built without writing it (for tests). */
typedef struct LogFields {
        int level;
        char message[1024];     /* the MESSAGE, escaped */
        char field[16][1100];   /* "KEY=value", MESSAGE= first */
        size_t n;
} LogFields;
/* Fills *ret; returns the entry's priority (LOG_DEBUG or LOG_INFO). */
int log_lease_event_fields(const Event *e, LogFields *ret);

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
#define LOG_MESSAGE_ID_GRANTED "5c6d1e3f0a2b4c8d9e7f1a2b3c4d5e6f"
#define LOG_MESSAGE_ID_EXPIRED "6d7e2f4a1b3c4d9e8f0a2b3c4d5e6f70"
#define LOG_MESSAGE_ID_REVOKED "7e8f3a5b2c4d4e0f9a1b3c4d5e6f7081"
#define LOG_MESSAGE_ID_RECLAIMED "8f9a4b6c3d5e4f1a0b2c4d5e6f708192"

int log_full_errno(int level, int error, const char *fmt, ...) _printf_(3, 4);

#define log_debug(...) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, (e), __VA_ARGS__)

/* One line per lease event, with AGEND_LEASE_ID=, AGEND_RESOURCE=, AGEND_TOKEN=,
 * AGEND_PEER_UID=, AGEND_PEER_PID= and, for grant/expire/revoke/reclaim, MESSAGE_ID=. */
void log_lease_event(const Event *e);

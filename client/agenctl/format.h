/* SPDX-License-Identifier: MIT */
#pragma once

/* Terminal-facing helpers of agenctl: width of the terminal, colour, display width and
 * ellipsizing of strings, escaping of what users typed (descriptions, command names),
 * human durations and timestamps, user names, duration parsing. Pure functions where
 * possible, so tests/test-agenctl-format.c can check them without a terminal. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "usec.h"

/* ANSI sequences; used only when colors_enabled(). */
#define ANSI_NORMAL "\033[0m"
#define ANSI_BOLD "\033[1m"
#define ANSI_UNDERLINE "\033[4m"
#define ANSI_RED "\033[31m"
#define ANSI_GREEN "\033[32m"
#define ANSI_YELLOW "\033[33m"
#define ANSI_GREY "\033[90m"

/* Colour on standard output: only on a terminal, never with $NO_COLOR set (to anything
 * non-empty, https://no-color.org) nor with TERM=dumb. Computed once. */
bool colors_enabled(void);
/* The same test for standard error (queue position, warnings). */
bool colors_enabled_stderr(void);
/* For tests: forget the cached answers. */
void colors_reset_cache(void);
/* seq if colors are enabled, else "". */
const char *ansi(const char *seq);

/* The width tables are fitted to: $COLUMNS if it is a positive number, else the width of
 * the terminal on standard output, else 0 = unlimited (output into a pipe or file is never
 * cut, as systemd's tools do). */
unsigned columns(void);

/* Whether the ellipsis is "…" (UTF-8 locale) or "...". */
const char *ellipsis(void);

/* Copies s into a new string safe to show on a terminal: control characters and bytes that
 * are not valid in the locale become \xNN (\n, \t as \n, \t), so a description cannot move
 * the cursor or change colours. NULL for NULL or OOM. */
char *escape_display(const char *s);
/* Display width of s in terminal cells (wide characters count 2); s should be escaped. */
size_t display_width(const char *s);
/* A new string of at most width cells: s itself if it fits, else cut with the ellipsis at
 * the end. width 0 gives "". NULL on OOM. */
char *ellipsize(const char *s, size_t width);

/* "350ms", "12s", "5min 3s", "2h 10min", "3d 4h"; "0" for 0. Rounded down to the
 * two largest units. buf must hold FORMAT_TIMESPAN_MAX. */
#define FORMAT_TIMESPAN_MAX 64
const char *format_timespan(char *buf, size_t size, usec_t t);
/* Local time "2026-11-25 10:00:00" (and ".123" with ms). FORMAT_TIMESTAMP_MAX. */
#define FORMAT_TIMESTAMP_MAX 64
const char *format_timestamp(char *buf, size_t size, usec_t realtime, bool ms);
/* "1.2M", "512B", "3.0G". FORMAT_BYTES_MAX. */
#define FORMAT_BYTES_MAX 16
const char *format_bytes(char *buf, size_t size, uint64_t bytes);

/* "alice", or the number when the uid has no name. Cached; the string stays valid until
 * exit. */
const char *uid_to_name(uid_t uid);

/* Durations: parse_duration() of base/duration.h, the grammar agend.conf uses too. */
#include "duration.h"
/* A positive integer in 1..max. */
int parse_unsigned(const char *s, unsigned max, unsigned *ret);

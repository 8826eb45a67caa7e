/* SPDX-License-Identifier: MIT */
#pragma once

/* Quoting of strings that came from a client (resource names, descriptions, reasons)
 * before they go into a log line or a terminal: a newline in a Revoke reason must not
 * forge a second log line, nor an escape sequence repaint the operator's terminal.
 * Like systemd's cescape(): \n \t \\ \" and \xNN for other control bytes and DEL; bytes
 * >= 0x80 (UTF-8) pass unchanged. */

#include <stddef.h>

/* Writes the escaped form of s into buf (always NUL-terminated, size >= 4) and returns buf.
 * Output that does not fit is cut at a character boundary of the escaped text and ends in
 * "..." so a truncation is visible. s NULL is written as "(null)". */
const char *cescape_buf(const char *s, char *buf, size_t size);

/* The escaped form of s, malloc'ed; NULL on OOM. */
char *cescape(const char *s);

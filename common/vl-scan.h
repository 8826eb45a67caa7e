/* SPDX-License-Identifier: MIT */
#pragma once

/* Reading varlink calls without a json-c tree: one pass over the message bytes into the
 * parameter list (vl-params.h), with a state that is kept and reused, so a call costs no
 * allocation once the state has grown to the size of the largest message.
 *
 * The scanner reads the common, plain form of a call: strict JSON (RFC 8259) with
 * numbers in the RFC grammar, string escapes other than \u0000 and lone surrogates, no
 * raw control characters in strings, no repeated key among the call's members or among
 * its parameters, at most VL_SCAN_PARAMS_MAX parameters, nesting at most
 * VL_SCAN_DEPTH_MAX deep, and a call that vl_call_parse() accepts. Anything else it does
 * not judge: it answers 0 and the caller parses the message with vl_call_parse_with()
 * (json-c), which gives the answer it always gave, errors included. So every message is
 * either read by the scanner into the list json-c's tree would give (same members, same
 * order, same values), or read by json-c; tests/fuzz/fuzz-scan.c checks the first half of
 * that against json-c on arbitrary bytes. */

#include <stdbool.h>
#include <stddef.h>

#include "vl-params.h"
#include "vl.h"

#define VL_SCAN_PARAMS_MAX 32
#define VL_SCAN_DEPTH_MAX 16

typedef struct VlScanner {
        VlParams params;        /* private: the parameters of the last call */
        char *buf;              /* private: decoded strings of the last call */
        size_t size;            /* private */
} VlScanner;

typedef struct VlScannedCall {
        const char *method;             /* borrowed from the scanner (or the VlCall) */
        const VlParams *parameters;     /* borrowed; empty when absent or null */
        bool more;
        bool oneway;
} VlScannedCall;

void vl_scanner_done(VlScanner *s);

/* 1: the message is a call in the scanner's form, *ret set (valid until the next use of
 * the scanner); 0: not judged, parse it with vl_call_parse_with(); -ENOMEM. */
int vl_scan_call(VlScanner *s, const char *msg, size_t len, VlScannedCall *ret);

/* The same result from a call json-c parsed: the parameters are listed in the scanner's
 * list, borrowing from call (which must outlive *ret). -ENOMEM. */
int vl_scan_call_from_json(VlScanner *s, const VlCall *call, VlScannedCall *ret);

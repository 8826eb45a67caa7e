/* SPDX-License-Identifier: MIT */
#pragma once

/* Varlink error names <-> negative errno, from one table (ERRMAP_TABLE in errmap.c).
 *
 * Several names may share an errno (InterfaceNotFound and MethodNotFound are both
 * -EOPNOTSUPP to a caller); the first row with an errno is its canonical name, the one
 * errmap_to_name() returns. Every name maps to exactly one errno. */

/* The varlink error name for a negative errno (canonical row), or NULL if none. */
const char *errmap_to_name(int error);
/* The negative errno for a varlink error name; -EPROTO for NULL or an unknown name. */
int errmap_from_name(const char *name);

/* Iteration, for tests and documentation: the i-th row, or NULL past the end. */
const char *errmap_row(unsigned i, int *ret_error);

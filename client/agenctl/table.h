/* SPDX-License-Identifier: MIT */
#pragma once

/* A text table fitted to a width: columns separated by one space, a header line, cells
 * escaped for the terminal. When the natural width exceeds the target, the columns marked
 * shrinkable give up width in their shrink order (lowest first), each down to its minimum,
 * and the cut cells end in an ellipsis; the other columns keep their full width. The last
 * column is not padded, so no line ends in blanks. */

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct Table Table;

/* headers: n column titles. Returns NULL on OOM. */
Table *table_new(size_t n, const char *const *headers);
Table *table_free(Table *t);
static inline void table_freep(Table **t) {
        if (*t)
                table_free(*t);
}

/* Cells are right-aligned in this column (numbers). */
void table_set_align_right(Table *t, size_t column);
/* This column may be shrunk to min_width (at least the header's width is not kept: a cut
 * header ends in the ellipsis too); lower order shrinks first. */
void table_set_shrink(Table *t, size_t column, unsigned order, size_t min_width);

/* Appends a cell to the current row (rows fill left to right; a full row starts the next).
 * text NULL shows "-". The text is escaped (control characters shown as \xNN). color: an
 * ANSI sequence for the cell, used only when colors are enabled, or NULL. */
int table_add_cell(Table *t, const char *text, const char *color);
int table_add_cellf(Table *t, const char *color, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

size_t table_rows(const Table *t);

/* Prints the table to f, fitted to width (0 = unlimited). header: print the header line. */
int table_print(Table *t, FILE *f, size_t width, bool header);

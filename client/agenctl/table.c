/* SPDX-License-Identifier: MIT */
/* See table.h. */

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "macro.h"
#include "table.h"

/* The narrowest a shrinkable column gets: two characters and the ellipsis. */
#define TABLE_FLOOR 3

typedef struct Cell {
        char *text;          /* escaped */
        const char *color;   /* static, or NULL */
        size_t width;        /* display width of text */
} Cell;

typedef struct Column {
        char *header;
        size_t header_width;
        bool right;
        bool shrink;
        unsigned order;
        size_t min_width;
        size_t width;        /* natural, then fitted */
} Column;

struct Table {
        size_t n_columns;
        Column *columns;
        Cell *cells;         /* row-major */
        size_t n_cells, size_cells;
};

Table *table_new(size_t n, const char *const *headers) {
        assert(n > 0);
        Table *t = calloc(1, sizeof(*t));
        if (!t)
                return NULL;
        t->n_columns = n;
        t->columns = calloc(n, sizeof(Column));
        if (!t->columns)
                return table_free(t);
        for (size_t i = 0; i < n; i++) {
                t->columns[i].header = escape_display(headers[i]);
                if (!t->columns[i].header)
                        return table_free(t);
                t->columns[i].header_width = display_width(t->columns[i].header);
        }
        return t;
}

Table *table_free(Table *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; t->columns && i < t->n_columns; i++)
                free(t->columns[i].header);
        free(t->columns);
        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i].text);
        free(t->cells);
        free(t);
        return NULL;
}

void table_set_align_right(Table *t, size_t column) {
        assert(column < t->n_columns);
        t->columns[column].right = true;
}

void table_set_shrink(Table *t, size_t column, unsigned order, size_t min_width) {
        assert(column < t->n_columns);
        t->columns[column].shrink = true;
        t->columns[column].order = order;
        t->columns[column].min_width = MAX(min_width, (size_t) 1);
}

int table_add_cell(Table *t, const char *text, const char *color) {
        if (t->n_cells == t->size_cells) {
                size_t size = t->size_cells ? t->size_cells * 2 : t->n_columns * 8;
                Cell *c = realloc(t->cells, size * sizeof(Cell));
                if (!c)
                        return -ENOMEM;
                t->cells = c;
                t->size_cells = size;
        }
        char *e = escape_display(text ?: "-");
        if (!e)
                return -ENOMEM;
        t->cells[t->n_cells++] = (Cell) { .text = e, .color = color, .width = display_width(e) };
        return 0;
}

int table_add_cellf(Table *t, const char *color, const char *fmt, ...) {
        va_list ap;
        char *s;
        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        r = table_add_cell(t, s, color);
        free(s);
        return r;
}

size_t table_rows(const Table *t) {
        return t->n_cells / t->n_columns;
}

/* Natural widths, then take the excess out of the shrinkable columns in their order. */
static void table_fit(Table *t, size_t width) {
        size_t total = t->n_columns - 1; /* separators */
        for (size_t c = 0; c < t->n_columns; c++) {
                Column *col = &t->columns[c];
                col->width = col->header_width;
                for (size_t i = c; i < t->n_cells; i += t->n_columns)
                        col->width = MAX(col->width, t->cells[i].width);
                total += col->width;
        }
        if (width == 0 || total <= width)
                return;

        /* First down to each column's minimum, then, on a very narrow terminal, down to
         * TABLE_FLOOR cells each, always in shrink order. */
        size_t excess = total - width;
        for (int pass = 0; pass < 2 && excess > 0; pass++)
                for (;;) {
                        /* The next column to shrink: the lowest order that can still give. */
                        Column *pick = NULL;
                        size_t floor_of_pick = 0;
                        for (size_t c = 0; c < t->n_columns; c++) {
                                Column *col = &t->columns[c];
                                size_t fl = pass == 0 ? col->min_width : MIN(col->min_width, (size_t) TABLE_FLOOR);
                                if (col->shrink && col->width > fl && (!pick || col->order < pick->order)) {
                                        pick = col;
                                        floor_of_pick = fl;
                                }
                        }
                        if (!pick)
                                break; /* nothing left to give: the lines stay too long */
                        size_t give = MIN(excess, pick->width - floor_of_pick);
                        pick->width -= give;
                        excess -= give;
                        if (excess == 0)
                                break;
                }
}

static void print_cell(FILE *f, const char *text, size_t text_width, const char *color, size_t width, bool right,
                       bool last) {
        _cleanup_free_ char *cut = NULL;
        if (text_width > width) {
                cut = ellipsize(text, width);
                if (cut) {
                        text = cut;
                        text_width = display_width(cut);
                }
        }
        size_t pad = width > text_width ? width - text_width : 0;
        if (right)
                fprintf(f, "%*s", (int) pad, "");
        if (color && colors_enabled())
                fprintf(f, "%s%s%s", color, text, ANSI_NORMAL);
        else
                fputs(text, f);
        if (!right && !last)
                fprintf(f, "%*s", (int) pad, "");
}

int table_print(Table *t, FILE *f, size_t width, bool header) {
        table_fit(t, width);

        if (header) {
                const char *hc = colors_enabled() ? ANSI_BOLD : NULL;
                for (size_t c = 0; c < t->n_columns; c++) {
                        Column *col = &t->columns[c];
                        if (c > 0)
                                fputc(' ', f);
                        print_cell(f, col->header, col->header_width, hc, col->width, col->right,
                                   c + 1 == t->n_columns);
                }
                fputc('\n', f);
        }
        for (size_t i = 0; i < t->n_cells; i++) {
                size_t c = i % t->n_columns;
                Column *col = &t->columns[c];
                if (c > 0)
                        fputc(' ', f);
                print_cell(f, t->cells[i].text, t->cells[i].width, t->cells[i].color, col->width, col->right,
                           c + 1 == t->n_columns);
                if (c + 1 == t->n_columns)
                        fputc('\n', f);
        }
        if (t->n_cells % t->n_columns != 0)
                fputc('\n', f);
        return ferror(f) ? -EIO : 0;
}

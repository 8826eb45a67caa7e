/* SPDX-License-Identifier: MIT */
/* The header-only base: the intrusive list (an item on two lists at once, removal at the
 * head, the tail and the middle, removal while iterating) and string tables (both ways,
 * gaps, out of range). The duration grammar has tests/test-duration.c. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "list.h"
#include "macro.h"
#include "string-table.h"

typedef struct Item Item;
struct Item {
        int v;
        LIST_FIELDS(Item, a);
        LIST_FIELDS(Item, b);
};

/* The values of list a (or b) from the head, as digits: "321". */
static const char *values(Item *head, bool b, char *buf) {
        char *p = buf;
        if (b)
                LIST_FOREACH(b, i, head)
                        *p++ = (char) ('0' + i->v);
        else
                LIST_FOREACH(a, i, head)
                        *p++ = (char) ('0' + i->v);
        *p = 0;
        return buf;
}

static void test_list(void **state) {
        Item it[5] = {};
        Item *a = NULL, *b = NULL, *b_tail = NULL;
        char buf[16];

        for (int i = 0; i < 5; i++) {
                it[i].v = i;
                LIST_PREPEND(a, a, &it[i]);
                LIST_APPEND_TAIL(b, b, b_tail, &it[i]);
        }
        assert_string_equal(values(a, false, buf), "43210");
        assert_string_equal(values(b, true, buf), "01234");

        /* Head, middle, tail; the other list is untouched. */
        LIST_REMOVE(a, a, &it[4]);
        LIST_REMOVE(a, a, &it[2]);
        LIST_REMOVE(a, a, &it[0]);
        assert_string_equal(values(a, false, buf), "31");
        assert_string_equal(values(b, true, buf), "01234");
        assert_null(it[2].a_next);
        assert_null(it[2].a_prev);
        /* Removing an item that is not linked changes nothing. */
        LIST_REMOVE(a, a, &it[2]);
        assert_string_equal(values(a, false, buf), "31");

        /* The tail pointer follows removal of the last and of the only items. */
        LIST_REMOVE_TAIL(b, b, b_tail, &it[4]);
        assert_ptr_equal(b_tail, &it[3]);
        LIST_REMOVE_TAIL(b, b, b_tail, &it[0]);
        assert_ptr_equal(b, &it[1]);
        LIST_APPEND_TAIL(b, b, b_tail, &it[0]);
        assert_string_equal(values(b, true, buf), "1230");

        /* Removing each while iterating. */
        LIST_FOREACH_SAFE(b, i, n, b)
                LIST_REMOVE_TAIL(b, b, b_tail, i);
        assert_null(b);
        assert_null(b_tail);
}

typedef enum Colour {
        COLOUR_RED,
        COLOUR_GREEN,
        COLOUR_GAP,
        COLOUR_BLUE,
        _COLOUR_MAX,
        _COLOUR_INVALID = -EINVAL,
} Colour;

static const char *const colour_table[_COLOUR_MAX] = {
        [COLOUR_RED] = "red",
        [COLOUR_GREEN] = "green",
        [COLOUR_BLUE] = "blue",
};

DEFINE_STRING_TABLE_LOOKUP_TO_STRING(colour, Colour, static)
DEFINE_STRING_TABLE_LOOKUP_FROM_STRING(colour, Colour, static)

static void test_string_table(void **state) {
        assert_string_equal(colour_to_string(COLOUR_RED), "red");
        assert_string_equal(colour_to_string(COLOUR_BLUE), "blue");
        assert_null(colour_to_string(COLOUR_GAP));
        assert_null(colour_to_string(_COLOUR_MAX));
        assert_null(colour_to_string(_COLOUR_INVALID));
        assert_int_equal(colour_from_string("green"), COLOUR_GREEN);
        assert_int_equal(colour_from_string("blue"), COLOUR_BLUE);
        assert_int_equal(colour_from_string("Blue"), _COLOUR_INVALID);
        assert_int_equal(colour_from_string(""), _COLOUR_INVALID);
        assert_int_equal(colour_from_string(NULL), _COLOUR_INVALID);
        assert_true(streq_ptr(NULL, NULL));
        assert_false(streq_ptr("a", NULL));
        assert_true(streq("a", "a"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_list),
                cmocka_unit_test(test_string_table),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* For tests that end by checking that nothing of theirs is left open. Include after
 * <cmocka.h>. */

#include <dirent.h>

/* The number of open file descriptors of this process (the directory handle itself is
 * counted the same way every time, so differences are exact). */
static inline unsigned count_fds(void) {
        unsigned n = 0;
        DIR *d = opendir("/proc/self/fd");
        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));)
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n;
}

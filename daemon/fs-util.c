/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fs-util.h"
#include "macro.h"

int mkdir_p(const char *path, mode_t mode, bool parents_only) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        for (char *s = p + 1;; s++) {
                if (*s != '/' && *s != 0)
                        continue;
                char saved = *s;
                if (!saved && parents_only)
                        break;
                *s = 0;
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = saved;
                if (!saved)
                        break;
        }
        return 0;
}

int64_t fs_free_bytes(const char *path) {
        struct statvfs sv;
        if (statvfs(path, &sv) < 0)
                return -errno;
        return (int64_t) sv.f_bavail * (int64_t) sv.f_frsize;
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* Small helpers every module uses: cleanup attributes, ownership transfer, argument
 * checks, ref/unref boilerplate. Modeled on systemd's macro.h and alloc-util.h. */

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <unistd.h>

#define _public_ __attribute__((__visibility__("default")))
#define _unused_ __attribute__((__unused__))
#define _cleanup_(f) __attribute__((__cleanup__(f)))
#define _likely_(x) (__builtin_expect(!!(x), 1))
#define _unlikely_(x) (__builtin_expect(!!(x), 0))
#define _printf_(a, b) __attribute__((__format__(printf, a, b)))
#define _noreturn_ __attribute__((__noreturn__))
#define _warn_unused_result_ __attribute__((__warn_unused_result__))
#ifndef _fallthrough_
#define _fallthrough_ __attribute__((__fallthrough__))
#endif

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

#ifndef container_of
#define container_of(ptr, type, member)                                                 \
        ((type *) ((char *) (1 ? (ptr) : &((type *) 0)->member) - offsetof(type, member)))
#endif

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Takes ownership out of a variable that has a cleanup attribute. */
#define TAKE_PTR(p)                                                                     \
        ({                                                                              \
                __typeof__(p) _tp_ = (p);                                               \
                (p) = NULL;                                                             \
                _tp_;                                                                   \
        })
#define TAKE_FD(fd)                                                                     \
        ({                                                                              \
                int _tfd_ = (fd);                                                       \
                (fd) = -EBADF;                                                          \
                _tfd_;                                                                  \
        })

/* Public entry points check their arguments and return an error instead of crashing
 * the caller's program; internal code uses assert(). */
#define assert_return(expr, r)                                                          \
        do {                                                                            \
                if (_unlikely_(!(expr)))                                                \
                        return (r);                                                     \
        } while (0)

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}
static inline void closep(int *fd) {
        safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

/* Defines foop(&x) for _cleanup_(foop) from a NULL-safe foo(x). */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                                         \
        static inline void func##p(type *p) {                                           \
                if (*p)                                                                 \
                        func(*p);                                                       \
        }

/* foo_ref()/foo_unref() for a struct with an `unsigned n_ref` field and a
 * foo_free() that frees it; foo_unref(NULL) is a no-op and returns NULL. */
#define DEFINE_TRIVIAL_REF_UNREF_FUNC(type, name, free_func, scope)                    \
        scope type *name##_ref(type *p) {                                               \
                if (!p)                                                                 \
                        return NULL;                                                    \
                assert(p->n_ref > 0);                                                   \
                p->n_ref++;                                                             \
                return p;                                                               \
        }                                                                               \
        scope type *name##_unref(type *p) {                                             \
                if (!p)                                                                 \
                        return NULL;                                                    \
                assert(p->n_ref > 0);                                                   \
                if (--p->n_ref == 0)                                                    \
                        free_func(p);                                                   \
                return NULL;                                                            \
        }

static inline const char *strempty(const char *s) {
        return s ? s : "";
}
static inline const char *strna(const char *s) {
        return s ? s : "n/a";
}

static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>

#include "errmap.h"
#include "macro.h"

/* One table, read both ways, by the daemon (error replies) and by libagenclient (errors
 * it reports). Order matters: the first row of an errno names it. */
#define ERRMAP_TABLE(X)                                                 \
        X("io.agend.Lease.NoSuchLease", ENOENT)                         \
        X("io.agend.Lease.NoSuchResource", ENXIO)                       \
        X("io.agend.Lease.Timeout", ETIMEDOUT)                          \
        X("io.agend.Lease.PermissionDenied", EPERM)                     \
        X("io.agend.Lease.LimitExceeded", EUSERS)                       \
        X("io.agend.Lease.ProtocolError", EPROTO)                       \
        X("io.agend.Lease.StorageError", ENOSPC)                        \
        X("org.varlink.service.MethodNotFound", EOPNOTSUPP)             \
        X("org.varlink.service.InterfaceNotFound", EOPNOTSUPP)          \
        X("org.varlink.service.MethodNotImplemented", EOPNOTSUPP)       \
        X("org.varlink.service.InvalidParameter", EINVAL)               \
        X("org.varlink.service.PermissionDenied", EPERM)                \
        X("org.varlink.service.ExpectedMore", EBADMSG)

typedef struct ErrmapRow {
        const char *name;
        int error;
} ErrmapRow;

#define ERRMAP_ROW(n, e) { n, -(e) },
static const ErrmapRow errmap[] = { ERRMAP_TABLE(ERRMAP_ROW) };
#undef ERRMAP_ROW

const char *errmap_to_name(int error) {
        for (size_t i = 0; i < ELEMENTSOF(errmap); i++)
                if (errmap[i].error == error)
                        return errmap[i].name;
        return NULL;
}

int errmap_from_name(const char *name) {
        if (!name)
                return -EPROTO;
        for (size_t i = 0; i < ELEMENTSOF(errmap); i++)
                if (strcmp(errmap[i].name, name) == 0)
                        return errmap[i].error;
        return -EPROTO;
}

const char *errmap_row(unsigned i, int *ret_error) {
        if (i >= ELEMENTSOF(errmap))
                return NULL;
        if (ret_error)
                *ret_error = errmap[i].error;
        return errmap[i].name;
}

/* SPDX-License-Identifier: MIT */
/* A lease held for the length of a C scope, as Python's
 *
 *     async with contextlib.aclosing(client.lease("gpu")) as lease:
 *         async for event in lease: ...
 *
 * AGEN_CLEANUP_ACLOSE closes the generator whichever way the scope is left (return, goto,
 * an error path), so no path forgets the release. The loop's finalizer warning is on: it
 * would name a generator that was dropped without a close (here: none).
 *
 *   scoped-close [RESOURCE]
 *
 * Talks to the agend at $AGEND_SOCKET (or the default address). */

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agen/agen.h>

static void warn_unclosed(struct ev_loop *loop, agen_gen *gen, void *userdata) {
        fprintf(stderr, "warning: a generator was dropped without agen_gen_aclose()\n");
}

/* Waits for the lease (10 s at most), works with it, returns. Every return closes it. */
static int hold_and_work(agen_client *client, const char *resource) {
        AGEN_CLEANUP_ACLOSE agen_gen *lease = agen_lease(client, resource, NULL);
        const agen_lease_event *ev = NULL;
        int r;

        if (!lease)
                return -errno;
        while ((r = agen_gen_next_sync_timeout(lease, 10.0, (const void **) &ev)) == 0 &&
               ev->type == AGEN_LEASE_QUEUED)
                printf("waiting, position %u\n", ev->position);
        if (r < 0)
                return r; /* -ETIMEDOUT: the wait was cancelled, the queue left */
        if (r == AGEN_STOP || ev->type != AGEN_LEASE_GRANTED)
                return -ENOLCK;

        const char *id = NULL;
        uint64_t token = 0;
        (void) agen_lease_get_current(lease, &id, &token);
        printf("granted %s, fencing token %llu\n", id, (unsigned long long) token);
        /* ... the work, passing token to what the lease protects ... */
        return 0; /* leaving the scope starts the release */
}

int main(int argc, char *argv[]) {
        const char *resource = argc > 1 ? argv[1] : "example";
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        agen_client *client = NULL;

        int r = agen_client_new(loop, NULL, &client);
        if (r < 0) {
                fprintf(stderr, "cannot reach agend: %s\n", strerror(-r));
                return 1;
        }
        (void) agen_loop_set_finalizer_warning(loop, warn_unclosed, NULL);

        r = hold_and_work(client, resource);
        if (r < 0)
                fprintf(stderr, "lease: %s\n", strerror(-r));
        /* The close runs on the loop: run it until the release is done. */
        ev_run(loop, 0);

        char params[256], *reply = NULL;
        snprintf(params, sizeof(params), "{\"resource\": \"%s\"}", resource);
        if (agen_call_sync(agen_client_get_address(client), "io.agend.Lease.List", params, 0, 5.0, &reply, NULL) >= 0)
                printf("after the scope: %s\n", reply);
        free(reply);

        int left = agen_loop_shutdown(loop, 5.0);
        agen_client_unref(client);
        ev_loop_destroy(loop);
        return r < 0 || left > 0;
}

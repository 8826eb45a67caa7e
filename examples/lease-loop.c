/* SPDX-License-Identifier: MIT */
/* Holds a lease in a loop, breaks out early, and shows the release on each path:
 *
 *   lease-loop aclose   [RESOURCE]   close the generator and await the release
 *   lease-loop unref    [RESOURCE]   just drop it: the finalizer releases it
 *   lease-loop shutdown [RESOURCE]   stop the loop: agen_loop_shutdown() releases it
 *
 * Talks to the agend at $AGEND_SOCKET (or the default address). After the release it asks
 * the daemon for the resource's leases, which shows none are left. */

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agen/agen.h>

typedef enum Path { PATH_ACLOSE, PATH_UNREF, PATH_SHUTDOWN } Path;

typedef struct Ctx {
        struct ev_loop *loop;
        agen_client *client;
        agen_gen *lease;
        const char *resource;
        Path path;
        ev_timer work;
        unsigned events;
} Ctx;

static void show_leases(Ctx *c, const char *when) {
        char params[256], *reply = NULL, *error = NULL;
        snprintf(params, sizeof(params), "{\"resource\": \"%s\"}", c->resource);
        int r = agen_call_sync(agen_client_get_address(c->client), "io.agend.Lease.List", params, 0, 5.0,
                               &reply, &error);
        if (r < 0)
                printf("%s: List failed: %s %s\n", when, error ? error : "", strerror(-r));
        else
                printf("%s: leases of %s: %s\n", when, c->resource, reply);
        free(reply);
        free(error);
}

static void on_closed(agen_gen *gen, int status, void *userdata) {
        Ctx *c = userdata;
        printf("aclose: done (%s)\n", status < 0 ? strerror(-status) : "released");
        show_leases(c, "after aclose");
}

/* The body of the loop ran; now `break`. */
static void on_work_done(struct ev_loop *loop, ev_timer *w, int revents) {
        Ctx *c = w->data;

        switch (c->path) {
        case PATH_ACLOSE:
                /* The scoped way: close and await the release round trip. */
                agen_gen_aclose(c->lease, on_closed, c);
                c->lease = agen_gen_unref(c->lease);
                break;
        case PATH_UNREF:
                /* Forget it: the last unref schedules its close on this loop. */
                printf("unref: dropping the generator without closing it\n");
                c->lease = agen_gen_unref(c->lease);
                break;
        case PATH_SHUTDOWN:
                /* Leave the loop with the lease still held; main() shuts the loop down. */
                printf("shutdown: leaving the loop with the lease held\n");
                ev_break(loop, EVBREAK_ALL);
                break;
        }
}

static void on_event(agen_gen *gen, int status, const void *value, void *userdata) {
        Ctx *c = userdata;

        if (status == AGEN_STOP) {
                printf("the lease ended\n");
                return;
        }
        if (status < 0) {
                fprintf(stderr, "lease: %s\n", strerror(-status));
                return;
        }
        const agen_lease_event *ev = value;
        c->events++;
        printf("event %u: %s", c->events, agen_lease_event_type_to_string(ev->type));
        if (ev->type == AGEN_LEASE_QUEUED)
                printf(" position=%u", ev->position);
        if (ev->id)
                printf(" id=%s token=%llu", ev->id, (unsigned long long) ev->token);
        if (ev->reason)
                printf(" reason=%s", ev->reason);
        printf("\n");

        if (ev->type == AGEN_LEASE_GRANTED || ev->type == AGEN_LEASE_RECLAIMED) {
                show_leases(c, "while held");
                /* Work with the lease for a moment, then break out of the loop early. */
                ev_timer_start(c->loop, &c->work);
                return;
        }
        if (ev->type == AGEN_LEASE_QUEUED || ev->type == AGEN_LEASE_RENEWED)
                agen_gen_anext(gen, on_event, c);
}

int main(int argc, char *argv[]) {
        Ctx c = { .resource = argc > 2 ? argv[2] : "example" };
        const char *path = argc > 1 ? argv[1] : "aclose";

        if (strcmp(path, "aclose") == 0)
                c.path = PATH_ACLOSE;
        else if (strcmp(path, "unref") == 0)
                c.path = PATH_UNREF;
        else if (strcmp(path, "shutdown") == 0)
                c.path = PATH_SHUTDOWN;
        else {
                fprintf(stderr, "usage: %s aclose|unref|shutdown [RESOURCE]\n", argv[0]);
                return 2;
        }

        c.loop = ev_loop_new(EVFLAG_AUTO);
        int r = agen_client_new(c.loop, NULL, &c.client);
        if (r < 0) {
                fprintf(stderr, "cannot reach agend: %s\n", strerror(-r));
                return 1;
        }
        agen_lease_opts opts = { .description = "examples/lease-loop", .ttl = 30 };
        c.lease = agen_lease(c.client, c.resource, &opts);
        if (!c.lease) {
                perror("agen_lease");
                return 1;
        }
        ev_timer_init(&c.work, on_work_done, 0.2, 0.);
        c.work.data = &c;

        agen_gen_anext(c.lease, on_event, &c);
        /* Returns when nothing is left to do: after the release (aclose, unref), or at the
         * ev_break (shutdown). */
        ev_run(c.loop, 0);

        /* Always the last step of a loop's life: closes what is still live. */
        int left = agen_loop_shutdown(c.loop, 5.0);
        if (c.path == PATH_UNREF)
                show_leases(&c, "after the finalizer");
        if (c.path == PATH_SHUTDOWN) {
                printf("agen_loop_shutdown: %d generator(s) not closed in time\n", left);
                show_leases(&c, "after agen_loop_shutdown");
        }
        agen_gen_unref(c.lease);
        agen_client_unref(c.client);
        ev_loop_destroy(c.loop);
        return left == 0 ? 0 : 1;
}

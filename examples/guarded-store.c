/* SPDX-License-Identifier: MIT */
/* A guarded service: an append-only store that accepts a write only from a current holder
 * of a lease, checked by its fencing token (Chubby's CheckSequencer).
 *
 *   guarded-store RESOURCE FILE
 *
 * Reads requests on stdin, one per line, "TOKEN TEXT": the writer's fencing token (what
 * `agenctl run` puts in $AGEN_LEASE_TOKEN) and the line to append. For each it asks agend
 * (agen_check_sync()) whether TOKEN is still a current holder's of RESOURCE: if so it
 * appends TEXT to FILE and answers "ok TOKEN"; if not it answers "refused TOKEN: stale"
 * and FILE stays as it was. It also remembers the highest token it accepted and refuses
 * anything lower, so a writer that was paused past its lease's end, woke up, and sends a
 * write stamped with its old token is refused even if that write reaches the store late.
 *
 * Why both: the check answers "is this writer the holder now?"; the highest-token rule
 * keeps a write already checked but delayed in transit from landing after a newer
 * holder's. Talks to the agend at $AGEND_SOCKET (or the default address). */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agen/agen.h>

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: %s RESOURCE FILE\n", argv[0]);
                return 64;
        }
        const char *resource = argv[1], *path = argv[2];
        uint64_t highest = 0;
        char *line = NULL;
        size_t size = 0;
        ssize_t n;

        setvbuf(stdout, NULL, _IOLBF, 0);
        while ((n = getline(&line, &size, stdin)) > 0) {
                if (line[n - 1] == '\n')
                        line[--n] = 0;
                char *text = NULL;
                errno = 0;
                uint64_t token = strtoull(line, &text, 10);
                if (errno != 0 || text == line || (*text != ' ' && *text != 0)) {
                        printf("refused: expected \"TOKEN TEXT\"\n");
                        continue;
                }
                if (*text == ' ')
                        text++;

                if (token < highest) {
                        printf("refused %" PRIu64 ": stale (a newer holder, token %" PRIu64 ", wrote already)\n",
                               token, highest);
                        continue;
                }
                int r = agen_check_sync(NULL, resource, token, 5.0);
                if (r < 0) {
                        /* Cannot tell: refuse, never guess in the writer's favour. */
                        printf("refused %" PRIu64 ": cannot check the token: %s\n", token, strerror(-r));
                        continue;
                }
                if (r == 0) {
                        printf("refused %" PRIu64 ": stale (not a current holder of %s)\n", token, resource);
                        continue;
                }

                FILE *f = fopen(path, "ae");
                bool written = f && fprintf(f, "%s\n", text) >= 0;
                if (f && fclose(f) != 0)
                        written = false;
                if (!written) {
                        printf("failed %" PRIu64 ": %s: %s\n", token, path, strerror(errno));
                        continue;
                }
                highest = token;
                printf("ok %" PRIu64 "\n", token);
        }
        free(line);
        return 0;
}

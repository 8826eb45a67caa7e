/* SPDX-License-Identifier: MIT */
/* A pager for long output, as systemd's tools have one (src/shared/pager.c): only when
 * standard output is a terminal and --no-pager is not given; the command is
 * $AGENCTL_PAGER, else $PAGER, else less; "" or "cat" means none. less gets
 * LESS=FRSXMK unless $LESS is set: quit if one screen (F), colours (R), chop long lines
 * (S), no termcap init (X), long prompt (M), and Ctrl-C quits (K). Width and colour are
 * decided before stdout becomes the pipe, so tables stay fitted to the terminal. */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agenctl.h"
#include "format.h"

static pid_t pager_pid;

static const char *pager_command(void) {
        const char *p = getenv("AGENCTL_PAGER");
        if (!p)
                p = getenv("PAGER");
        if (!p)
                return "less";
        p += strspn(p, " \t");
        if (!*p || strcmp(p, "cat") == 0)
                return NULL;
        return p;
}

void pager_open(void) {
        if (pager_pid > 0 || !arg_pager || isatty(STDOUT_FILENO) <= 0)
                return;
        const char *cmd = pager_command();
        if (!cmd)
                return;

        /* Fixed now, while stdout is still the terminal. */
        unsigned cols = columns();
        (void) colors_enabled();
        if (cols > 0) {
                char c[16];
                snprintf(c, sizeof(c), "%u", cols);
                setenv("COLUMNS", c, 1);
        }

        int fd[2];
        if (pipe2(fd, O_CLOEXEC) < 0)
                return;
        fflush(stdout);
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                close(fd[0]);
                close(fd[1]);
                return;
        }
        if (pid == 0) {
                (void) dup2(fd[0], STDIN_FILENO);
                /* The pager outlives nothing: when agenctl dies, so does it. */
                (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                        _exit(EXIT_FAILURE);
                setenv("LESS", getenv("LESS") ?: "FRSXMK", 1);
                signal(SIGPIPE, SIG_DFL);
                execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
                /* No shell: the usual pagers, then plain copying. */
                execlp("less", "less", (char *) NULL);
                execlp("more", "more", (char *) NULL);
                char buf[4096];
                ssize_t n;
                while ((n = read(STDIN_FILENO, buf, sizeof(buf))) > 0)
                        if (write(STDOUT_FILENO, buf, (size_t) n) != n)
                                break;
                _exit(EXIT_SUCCESS);
        }
        if (dup2(fd[1], STDOUT_FILENO) < 0) {
                close(fd[0]);
                close(fd[1]);
                kill(pid, SIGTERM);
                (void) waitpid(pid, NULL, 0);
                return;
        }
        close(fd[0]);
        close(fd[1]);
        pager_pid = pid;
        /* Quitting the pager early closes the pipe: that must end agenctl quietly. */
        signal(SIGPIPE, SIG_DFL);
        /* Ctrl-C is the pager's (less -K quits on it); agenctl ends when the pipe closes. */
        signal(SIGINT, SIG_IGN);
        atexit(pager_close);
}

void pager_close(void) {
        if (pager_pid <= 0)
                return;
        fflush(stdout);
        /* EOF for the pager: stdout and stderr may both be the pipe's other copies. */
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null >= 0) {
                (void) dup2(null, STDOUT_FILENO);
                close(null);
        } else
                close(STDOUT_FILENO);
        while (waitpid(pager_pid, NULL, 0) < 0 && errno == EINTR)
                ;
        pager_pid = 0;
}

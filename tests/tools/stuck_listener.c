/*
 * stuck_listener PATH - a unix listener whose queue is full and that never
 * accepts: a client's connect to it waits, as a dial to a host that does
 * not answer (tool_tests.sh dial_signal). Prints unix://PATH, then runs
 * until SIGTERM (exit 0, the socket file removed).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *path;

static void on_term(int sig)
{
    (void)sig;
    unlink(path);
    _exit(0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: stuck_listener PATH\n");
        return 2;
    }
    path = argv[1];
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "stuck_listener: path too long\n");
        return 2;
    }
    strcpy(sa.sun_path, path);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 0) != 0) {
        fprintf(stderr, "stuck_listener: %s: %s\n", path, strerror(errno));
        return 1;
    }
    signal(SIGTERM, on_term);
    /* fill the queue (backlog 0 takes one): the next connect waits */
    for (int i = 0; i < 16; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            return 1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fd);
            if (errno == EAGAIN)
                break;
            fprintf(stderr, "stuck_listener: connect: %s\n", strerror(errno));
            return 1;
        }
        /* (kept open: it holds its place in the queue) */
    }
    printf("unix://%s\n", path);
    fflush(stdout);
    for (;;)
        pause();
}

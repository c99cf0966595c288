/*
 * testutil.h - shared helpers for the test programs: a per-test deadline that
 * turns a hang into a failure with a message, fd counting for leak checks, and
 * a monotonic clock. Header-only so each test stays one file.
 */
#ifndef LC_TESTUTIL_H
#define LC_TESTUTIL_H

#include <dirent.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <stdio.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *lc_test_current = "?";

static void lc_test_deadline_hit(int sig)
{
    (void)sig;
    /* only async-signal-safe calls here */
    static const char a[] = "\nDEADLINE EXCEEDED in test: ";
    ssize_t w = write(2, a, sizeof a - 1);
    w = write(2, lc_test_current, strlen(lc_test_current));
    w = write(2, "\n", 1);
    (void)w;
    _exit(3);
}

/* Arms a deadline for the running test: if it is still running after `seconds`,
 * the process prints the test's name and exits with status 3. Call again (or
 * with 0) to re-arm / disarm. */
static inline void lc_test_deadline(const char *name, unsigned seconds)
{
    lc_test_current = name;
    signal(SIGALRM, lc_test_deadline_hit);
    alarm(seconds);
}

/* Arms a deadline named after the calling test function. */
#define LC_TEST_DEADLINE(seconds) lc_test_deadline(__func__, (seconds))

/* Number of open file descriptors of this process (from /proc/self/fd). */
static inline int lc_test_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own fd */
}

static inline int64_t lc_test_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Prints every open fd and what it is, for a leak report. */
static inline void lc_test_list_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], target[256];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        struct sockaddr_storage a, b;
        socklen_t al = sizeof a, bl = sizeof b;
        int fd = atoi(e->d_name);
        if (strncmp(target, "socket:", 7) == 0 && getsockname(fd, (struct sockaddr *)&a, &al) == 0) {
            int peer = getpeername(fd, (struct sockaddr *)&b, &bl) == 0;
            int port = a.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&a)->sin_port) : -1;
            int pport = peer && b.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&b)->sin_port) : -1;
            fprintf(stderr, "  fd %s -> %s family %d port %d peer port %d\n", e->d_name, target, a.ss_family,
                    port, pport);
        } else {
            fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
        }
    }
    closedir(d);
}

/* cmocka setup/teardown pair that arms a 30 s deadline and checks that the test
 * left no fd open. Use with cmocka_unit_test_setup_teardown(). */
static int lc_test_fds_before;
static inline int lc_test_setup(void **state)
{
    (void)state;
    lc_test_deadline("(cmocka test)", 30);
    lc_test_fds_before = lc_test_count_fds();
    return 0;
}
static inline int lc_test_teardown(void **state)
{
    (void)state;
    alarm(0);
    int after = lc_test_count_fds();
    if (after != lc_test_fds_before) {
        fprintf(stderr, "fd leak: %d open before the test, %d after\n", lc_test_fds_before, after);
        lc_test_list_fds();
        return -1;
    }
    return 0;
}

#endif

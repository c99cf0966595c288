/*
 * testutil.h - shared helpers for the test programs: a per-test deadline that
 * turns a hang into a failure with a message, fd counting for leak checks, and
 * a monotonic clock. Header-only so each test stays one file.
 */
#ifndef LC_TESTUTIL_H
#define LC_TESTUTIL_H

#include <dirent.h>
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
        return -1;
    }
    return 0;
}

#endif

/*
 * testutil.h - shared helpers for the test programs: a per-test deadline that
 * turns a hang into a failure with a message, fd counting for leak checks, a
 * monotonic clock, and a wait until another thread is blocked in its call
 * (asleep in the kernel, from /proc), for tests that act on blocked threads
 * without sleeping first. Header-only so each test stays one file.
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
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>

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

/* ---- is a thread blocked? ------------------------------------------------------ */

/* The calling thread's kernel id: a thread that is about to block publishes it
 * (in an atomic_int) for lc_test_wait_asleep. */
static inline int lc_test_gettid(void)
{
    return (int)syscall(SYS_gettid);
}

/* Reads /proc/self/task/TID/FILE into buf (NUL-terminated). Length, or -1. */
static inline int lc_test_read_task(int tid, const char *file, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/%s", tid, file);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (int)n;
}

/* One look at thread tid of this process: true when the kernel has it asleep
 * ('S' in /proc/self/task/TID/stat) inside a system call that waits: a futex
 * wait other than a lock's (glibc sleeps on a contended mutex with FUTEX_WAIT
 * and the value 2), the poll, select and epoll waits, a read, recv or accept,
 * or a nap (nanosleep: lc_session_close polls with naps while it waits). Not
 * a thread that runs, or waits for a lock on its way to its call. sc gets the
 * /proc/self/task/TID/syscall line (the call with its arguments, stack and
 * instruction pointers), so that the caller can tell one wait from the next. */
static inline bool lc_test_thread_waits(int tid, char *sc, size_t len)
{
    char st[512];
    sc[0] = '\0';
    if (lc_test_read_task(tid, "stat", st, sizeof st) <= 0)
        return false;
    const char *p = strrchr(st, ')'); /* "tid (comm) S ..." */
    if (p == NULL || p[1] != ' ' || p[2] != 'S')
        return false;
    if (lc_test_read_task(tid, "syscall", sc, len) <= 0)
        return false;
    long nr = -1;
    unsigned long a1 = 0, op = 0, val = 0;
    if (sscanf(sc, "%ld %lx %lx %lx", &nr, &a1, &op, &val) < 1)
        return false;
    if (nr == SYS_futex) {
        unsigned cmd = (unsigned)op & FUTEX_CMD_MASK;
        return !(cmd == FUTEX_WAIT && val == 2) && cmd != FUTEX_LOCK_PI;
    }
    return nr == SYS_ppoll || nr == SYS_pselect6 || nr == SYS_epoll_pwait || nr == SYS_read ||
           nr == SYS_recvfrom || nr == SYS_recvmsg || nr == SYS_accept4 || nr == SYS_nanosleep ||
           nr == SYS_clock_nanosleep
#ifdef SYS_poll
           || nr == SYS_poll
#endif
#ifdef SYS_select
           || nr == SYS_select
#endif
#ifdef SYS_epoll_wait
           || nr == SYS_epoll_wait
#endif
#ifdef SYS_epoll_pwait2
           || nr == SYS_epoll_pwait2
#endif
#ifdef SYS_accept
           || nr == SYS_accept
#endif
        ;
}

/* Waits until the thread whose id *tid publishes (0 until it does) is blocked:
 * lc_test_thread_waits on three looks in a row, 5 ms apart, all in the same
 * wait (the same syscall line). True once it is; false when timeout_ms
 * passes first (the caller fails, naming what should have blocked). The
 * thread publishes its id before its blocking call, so a thread seen asleep
 * in a wait is in that call (or in what it waits on). */
static inline bool lc_test_wait_asleep(const _Atomic int *tid, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    char last[256] = "", sc[256];
    int seen = 0;
    while (lc_test_now_us() < end) {
        int t = *tid;
        if (t != 0 && lc_test_thread_waits(t, sc, sizeof sc)) {
            seen = strcmp(sc, last) == 0 ? seen + 1 : 1;
            memcpy(last, sc, sizeof last);
            if (seen == 3)
                return true;
        } else {
            seen = 0;
        }
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
    return false;
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

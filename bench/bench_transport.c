/*
 * bench_transport.c - what the socket transports' syscalls cost (src/transport
 * sock.c, unix.c), one thread writing a 22-byte frame (a {"Value": i} message
 * with its DATA header) into a loopback socket and reading it back:
 *   - send(2) + recv(2): what a session uses for a lone buffer (the baseline);
 *   - sendmsg(2) + readv/recvmsg(2) with one iovec: what it used before;
 *   - send(2) + recvmsg(2) with room for 64 fds: a unix session's read, which
 *     must be able to take passed fds (PROTOCOL.md 7);
 *   - recvmsg(2) with that room, and recv(2), on an empty socket (EAGAIN): one
 *     spin of a receiving thread that reads the carrier itself;
 *   - readiness checks that leave passed fds in place (ioctl SIOCINQ, poll
 *     with timeout 0, recv of 1 byte with MSG_PEEK), on an empty socket: a
 *     spin on one of them, then recvmsg once data is there, was the idea;
 *     each costs a syscall (~270-340 ns here against recvmsg's ~440-470),
 *     and the extra call once data has come costs more than the finer spin
 *     saves, so a unix session spins with recvmsg itself.
 * Usage: bench_transport [iterations]   (default 1000000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FRAME 22
#define MAX_FDS 64

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

typedef union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
} fd_control;

static char g_buf[65536]; /* a session's read buffer is 64 KiB */

static void do_send(int fd, int use_sendmsg)
{
    ssize_t n;
    if (use_sendmsg) {
        struct iovec iov = { g_buf, FRAME };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    } else {
        n = send(fd, g_buf, FRAME, MSG_NOSIGNAL);
    }
    if (n != FRAME) {
        perror("send");
        exit(1);
    }
}

/* 0 recv, 1 readv, 2 recvmsg with room for fds; on an empty socket only:
 * 3 ioctl(SIOCINQ), 4 poll with timeout 0, 5 recv of 1 byte with MSG_PEEK
 * (readiness checks that leave passed fds where they are) */
static ssize_t do_recv(int fd, int how)
{
    if (how == 0)
        return recv(fd, g_buf, sizeof g_buf, 0);
    if (how == 3) {
        int n = 0;
        return ioctl(fd, SIOCINQ, &n) == 0 && n > 0 ? n : -1;
    }
    if (how == 4) {
        struct pollfd pf = { fd, POLLIN, 0 };
        return poll(&pf, 1, 0) > 0 ? 1 : -1;
    }
    if (how == 5)
        return recv(fd, g_buf, 1, MSG_PEEK);
    struct iovec iov = { g_buf, sizeof g_buf };
    if (how == 1)
        return readv(fd, &iov, 1);
    fd_control ctl;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    return recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
}

static double pair_ns(int sv[2], int use_sendmsg, int how, long iters)
{
    double t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        do_send(sv[0], use_sendmsg);
        if (do_recv(sv[1], how) != FRAME) {
            perror("recv");
            exit(1);
        }
    }
    return (now_ns() - t0) / (double)iters;
}

static double empty_ns(int fd, int how, long iters)
{
    double t0 = now_ns();
    for (long i = 0; i < iters; i++)
        if (do_recv(fd, how) >= 0) {
            fprintf(stderr, "bench_transport: the socket was not empty\n");
            exit(1);
        }
    return (now_ns() - t0) / (double)iters;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1000000;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    pair_ns(sv, 0, 0, iters / 10); /* warm up */
    printf("loopback unix socket, one thread, %d-byte frames, %ld each (ns per write + read)\n", FRAME, iters);
    double base = pair_ns(sv, 0, 0, iters);
    printf("  send + recv (baseline)                %7.0f\n", base);
    double old = pair_ns(sv, 1, 1, iters);
    printf("  sendmsg + readv, one iovec            %7.0f   %.2fx\n", old, old / base);
    double fds = pair_ns(sv, 0, 2, iters);
    printf("  send + recvmsg with room for 64 fds   %7.0f   %.2fx\n", fds, fds / base);
    printf("one read of an empty socket (EAGAIN), ns\n");
    double e_recv = empty_ns(sv[1], 0, iters);
    double e_msg = empty_ns(sv[1], 2, iters);
    printf("  recv                                  %7.0f\n", e_recv);
    printf("  recvmsg with room for 64 fds          %7.0f   %.2fx\n", e_msg, e_msg / e_recv);
    printf("readiness checks that leave passed fds in place, on an empty socket, ns\n");
    double e_inq = empty_ns(sv[1], 3, iters);
    printf("  ioctl(SIOCINQ)                        %7.0f   %.2fx\n", e_inq, e_inq / e_recv);
    double e_poll = empty_ns(sv[1], 4, iters);
    printf("  poll, timeout 0                       %7.0f   %.2fx\n", e_poll, e_poll / e_recv);
    double e_peek = empty_ns(sv[1], 5, iters);
    printf("  recv 1 byte, MSG_PEEK                 %7.0f   %.2fx\n", e_peek, e_peek / e_recv);
    close(sv[0]);
    close(sv[1]);
    return 0;
}

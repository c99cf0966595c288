/*
 * sock.c - what the socket transports (unix, tcp) share: connect and accept
 * with a deadline, nonblocking readv/writev without SIGPIPE, close.
 */
#include "transport.h"
#include "common/deadline.h"
#include "engine/engine.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t deadline_of(int64_t timeout_ms)
{
    return lc__deadline_ns(lc__now_ns(), timeout_ms);
}

/* Waits for events on fd until deadline_ns (-1 forever). 1 ready, 0 timed
 * out, or -errno. */
static int poll_until(int fd, short events, int64_t deadline_ns)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        struct timespec ts, *tsp = NULL;
        if (deadline_ns >= 0) {
            int64_t left = deadline_ns - lc__now_ns();
            if (left < 0)
                left = 0;
            ts.tv_sec = (time_t)(left / 1000000000);
            ts.tv_nsec = (long)(left % 1000000000);
            tsp = &ts;
        }
        int n = ppoll(&p, 1, tsp, NULL);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

int lc__sock_connect(int fd, const struct sockaddr *sa, socklen_t len, int64_t timeout_ms)
{
    int64_t deadline = deadline_of(timeout_ms);
    int rc;
    do
        rc = connect(fd, sa, len);
    while (rc != 0 && errno == EINTR);
    if (rc == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -errno;
    rc = poll_until(fd, POLLOUT, deadline);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return LC_ETIMEDOUT;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        return -errno;
    return -soerr;
}

int lc__sock_accept(lc_tlistener *l, int64_t timeout_ms, int *out_fd)
{
    int64_t deadline = deadline_of(timeout_ms);
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            *out_fd = fd;
            return 0;
        }
        switch (errno) {
        case EINTR:
        case ECONNABORTED: /* the peer gave up while queued */
        case EPROTO:
            continue;
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
            break;
        default:
            return -errno;
        }
        /* nothing queued (or another accepting thread took it): wait */
        if (deadline >= 0 && lc__now_ns() >= deadline)
            return LC_ETIMEDOUT;
        int rc = poll_until(l->fd, POLLIN, deadline);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return LC_ETIMEDOUT;
    }
}

int lc__conn_wrap(const lc_transport_ops *ops, int fd, lc_conn **out)
{
    lc_conn *c = malloc(sizeof *c);
    if (c == NULL) {
        close(fd);
        return LC_ENOMEM;
    }
    c->ops = ops;
    c->fd = fd;
    *out = c;
    return 0;
}

/* One buffer (the session's reads, every write of a lone frame) goes through
 * recv(2)/send(2): readv and sendmsg copy an iovec array (and sendmsg a
 * msghdr) in from user space first. bench_transport, 22-byte frames on a
 * loopback unix socket: 1.73 us per send + recv, 1.99 us per sendmsg +
 * readv (1.15x). (A unix session reads with recvmsg only once its peer
 * asked to pass fds: docs/PROTOCOL.md 7.) */
ssize_t lc__sock_readv(lc_conn *c, const struct iovec *iov, int iovcnt)
{
    for (;;) {
        ssize_t n = iovcnt == 1 ? recv(c->fd, iov[0].iov_base, iov[0].iov_len, 0) : readv(c->fd, iov, iovcnt);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

ssize_t lc__sock_writev(lc_conn *c, const struct iovec *iov, int iovcnt)
{
    struct msghdr mh = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    for (;;) {
        ssize_t n = iovcnt == 1 ? send(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
                                : sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

int lc__sock_shutdown_write(lc_conn *c)
{
    return shutdown(c->fd, SHUT_WR) == 0 ? 0 : -errno;
}

void lc__sock_close(lc_conn *c)
{
    close(c->fd);
    free(c);
}

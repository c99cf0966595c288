/*
 * transport.h - carriers (src/transport): URLs, dial/listen/accept, and
 * nonblocking byte I/O (plus fd passing on unix sockets) behind a small vtable
 * per URL scheme. The session layer above sees a connection as "an fd for the
 * engine + readv/writev". Never installed.
 *
 * Errors are negative: LC_E* codes, or -errno where it says it all
 * (-ECONNREFUSED, -EADDRINUSE, -EAGAIN, -EPIPE, ...). Calls that parse a URL
 * also fill an lc_error (when given) with a sentence naming what is wrong.
 * All fds are SOCK_CLOEXEC; connection fds are O_NONBLOCK.
 */
#ifndef LC_TRANSPORT_H
#define LC_TRANSPORT_H

#include "libchan.h"

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Most fds sendfds accepts, and the control space recvfds offers, per call. */
#define LC_TRANSPORT_MAX_FDS 64

/* Unix socket paths: sun_path holds 108 bytes including the NUL. */
#define LC_UNIX_PATH_MAX 107

typedef struct lc_conn lc_conn;
typedef struct lc_tlistener lc_tlistener;
typedef struct lc_transport_ops lc_transport_ops;

/*
 * A parsed URL. Forms accepted:
 *   unix:///abs/path     an absolute path (the part after "unix://")
 *   unix://rel/path      a path relative to the working directory, as in nng's ipc://
 *   unix://@name         a Linux abstract-namespace socket (no file)
 *   tcp://host:port      host: IPv4 literal, [IPv6 literal], or a name resolved
 *                        with getaddrinfo; port 0..65535 (0: any, for listen).
 *                        An empty host (tcp://:port) is the wildcard address
 *                        for listen and the local host for dial.
 *   tls://, ws://, wss://, h2://, inproc://   known but not built: LC_ENOTSUP
 * Nothing may follow the port of a tcp URL (no path, query or user-info).
 */
typedef struct lc_url {
    const lc_transport_ops *ops;
    char scheme[16];
    char host[256];                 /* tcp: brackets stripped */
    uint16_t port;                  /* tcp */
    char path[LC_UNIX_PATH_MAX + 1]; /* unix: the path, or "@name" */
} lc_url;

/* Parses url into *out. LC_EINVAL (malformed: err->text says why, e.g.
 * "tcp://host: missing port") or LC_ENOTSUP (a scheme not built yet). */
int lc__url_parse(const char *url, lc_url *out, lc_error *err);

/* The vtable one transport implements. readv/writev/sendfds/recvfds return a
 * byte count or a negative code; never block (they return -EAGAIN). Entries a
 * transport lacks are NULL (the lc__conn_* wrappers then return LC_ENOTSUP). */
struct lc_transport_ops {
    const char *scheme;
    int (*dial)(const lc_url *u, int64_t timeout_ms, lc_conn **out);
    int (*listen)(const lc_url *u, lc_tlistener **out);
    int (*accept)(lc_tlistener *l, int64_t timeout_ms, lc_conn **out);
    ssize_t (*readv)(lc_conn *c, const struct iovec *iov, int iovcnt);
    ssize_t (*writev)(lc_conn *c, const struct iovec *iov, int iovcnt);
    ssize_t (*sendfds)(lc_conn *c, const struct iovec *iov, int iovcnt, const int *fds,
                       size_t nfds);
    ssize_t (*recvfds)(lc_conn *c, const struct iovec *iov, int iovcnt, int *fds,
                       size_t *nfds);
    int (*shutdown_write)(lc_conn *c);
    void (*close)(lc_conn *c);
    int (*listener_url)(lc_tlistener *l, char *buf, size_t len);
    void (*listener_close)(lc_tlistener *l);
};

/* What every connection and listener starts with; transports extend them. */
struct lc_conn {
    const lc_transport_ops *ops;
    int fd;
};

struct lc_tlistener {
    const lc_transport_ops *ops;
    int fd;
};

/* ---- dial, listen, accept -------------------------------------------------- */

/*
 * Connects to url within timeout_ms (-1 forever, 0 try once). Returns 0 and a
 * new connection (the caller closes it with lc__conn_close), or LC_EINVAL /
 * LC_ENOTSUP (URL), LC_ETIMEDOUT, -ECONNREFUSED, -ENOENT (no unix socket at
 * that path), -EHOSTUNREACH, ... Name resolution (getaddrinfo) is not bounded
 * by the timeout; numeric hosts never resolve.
 */
int lc__dial(const char *url, int64_t timeout_ms, lc_conn **out, lc_error *err);

/*
 * Listens on url. unix: a stale socket file (nothing accepts on it) is
 * replaced; a live one, or a path that is not a socket, is -EADDRINUSE. The
 * socket file is removed by lc__listener_close (if it is still ours). tcp:
 * SO_REUSEADDR; port 0 picks a free port (read it back with lc__listener_url).
 */
int lc__listen(const char *url, lc_tlistener **out, lc_error *err);

/*
 * Whether a unix socket of this network namespace listens on the socket file
 * at path, asked of the kernel's socket diagnostics without connecting (how
 * lc__listen tells a live file from a stale one): 1 yes, 0 no, -1 cannot tell
 * (no such file, or no sock_diag here; lc__listen then probes by connecting).
 */
int lc__unix_listening(const char *path);

/*
 * Accepts one connection within timeout_ms. Several threads may accept on one
 * listener. Returns 0, LC_ETIMEDOUT, or -errno (-EMFILE, ...).
 */
int lc__accept(lc_tlistener *l, int64_t timeout_ms, lc_conn **out);

/* The URL a listener is bound to, with the real port for tcp port 0, e.g.
 * "tcp://127.0.0.1:41234" or "unix:///tmp/x.sock". LC_ERANGE if len is short. */
int lc__listener_url(lc_tlistener *l, char *buf, size_t len);

/* The listening fd (readable when a connection is waiting), for an engine watch. */
int lc__listener_fd(const lc_tlistener *l);

/* Closes the listener (and removes its unix socket file). NULL is a no-op.
 * Must not race with lc__accept on it. */
void lc__listener_close(lc_tlistener *l);

/* ---- connection I/O ------------------------------------------------------- */

/* The connection's nonblocking fd, for an engine watch. Owned by the connection. */
int lc__conn_fd(const lc_conn *c);

/* The transport's scheme ("unix", "tcp"). */
const char *lc__conn_scheme(const lc_conn *c);

/* Reads into iov: bytes read, 0 at end of stream, -EAGAIN, or -errno. On a
 * unix connection, fds the peer sent along are discarded (never installed). */
ssize_t lc__conn_readv(lc_conn *c, const struct iovec *iov, int iovcnt);

/* Writes from iov: bytes written (maybe fewer than asked), -EAGAIN, -EPIPE
 * (peer gone; never SIGPIPE), or -errno. */
ssize_t lc__conn_writev(lc_conn *c, const struct iovec *iov, int iovcnt);

/*
 * unix only (else LC_ENOTSUP): writes iov (at least one byte: LC_EINVAL for
 * none) with nfds (1..LC_TRANSPORT_MAX_FDS) duplicates of fds attached
 * (SCM_RIGHTS). The caller keeps its fds. A positive return means the fds went
 * with the first byte, even when fewer bytes than asked were written (write
 * the rest with lc__conn_writev); -EAGAIN or an error means none were sent.
 * On the receiving side fds come out of recvfds no later than the bytes they
 * were sent with: treat them as an ordered queue per connection.
 */
ssize_t lc__conn_sendfds(lc_conn *c, const struct iovec *iov, int iovcnt, const int *fds,
                         size_t nfds);

/*
 * unix only (else LC_ENOTSUP): like readv, and also receives the fds sent
 * along: *nfds is the capacity of fds on entry (at most LC_TRANSPORT_MAX_FDS
 * is used), the number received on return (close-on-exec, owned by the
 * caller). If the peer sent more than fit (MSG_CTRUNC), every fd that arrived
 * is closed and -EMSGSIZE returned; if the kernel could not install them all
 * (our own RLIMIT_NOFILE: truncated with room left), the same with -EMFILE.
 * Either way bytes were consumed with them, so the connection's stream is no
 * longer usable.
 */
ssize_t lc__conn_recvfds(lc_conn *c, const struct iovec *iov, int iovcnt, int *fds,
                         size_t *nfds);

/* Half-close: the peer reads end-of-stream; reading goes on. 0 or -errno. */
int lc__conn_shutdown_write(lc_conn *c);

/* Closes the connection and frees it. NULL is a no-op. */
void lc__conn_close(lc_conn *c);

/* ---- for the transports in src/transport ----------------------------------- */

extern const lc_transport_ops lc__unix_ops;
extern const lc_transport_ops lc__tcp_ops;

/* Shared socket helpers (sock.c). */
int lc__sock_connect(int fd, const struct sockaddr *sa, socklen_t len, int64_t timeout_ms);
int lc__sock_accept(lc_tlistener *l, int64_t timeout_ms, int *out_fd);
int lc__conn_wrap(const lc_transport_ops *ops, int fd, lc_conn **out);
ssize_t lc__sock_readv(lc_conn *c, const struct iovec *iov, int iovcnt);
ssize_t lc__sock_writev(lc_conn *c, const struct iovec *iov, int iovcnt);
int lc__sock_shutdown_write(lc_conn *c);
void lc__sock_close(lc_conn *c);
/* Fills err (if any) and returns code. */
int lc__url_error(lc_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif

/*
 * tcp.c - the tcp:// transport: IPv4, IPv6 and host names (getaddrinfo,
 * within the dial's deadline), nonblocking connect with a deadline across
 * every resolved address,
 * TCP_NODELAY on every connection (the session coalesces its own writes).
 */
#include "transport.h"
#include "common/deadline.h"
#include "engine/engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int gai_code(int rc)
{
    switch (rc) {
    case EAI_AGAIN:  return -EAGAIN;
    case EAI_MEMORY: return LC_ENOMEM;
    case EAI_SYSTEM: return errno ? -errno : -EIO;
    case EAI_FAMILY:
    case EAI_SERVICE:
    case EAI_BADFLAGS: return LC_EINVAL;
    default:         return LC_ENOHOST; /* no such name, no address for it */
    }
}

/*
 * A name lookup that may outlast the dial's deadline runs on a helper thread
 * of its own: getaddrinfo has no timeout, and a resolver that does not
 * answer held lc_dial for as long as resolv.conf says (5 s per try and
 * server by default), whatever timeout the caller gave. The caller waits
 * until its deadline; a lookup it gave up on finishes on its thread.
 *
 * Lookups in flight are shared: a dial of a name (and port) that is being
 * looked up waits for that lookup rather than starting another, so a
 * program that retries a name whose resolver does not answer keeps one
 * thread, not one per try. At most LOOKUPS_MAX names are looked up at once;
 * past that a dial fails at once with -EAGAIN. Everything here is under
 * lookups_mu; a lookup is freed by whoever drops its last reference (its
 * thread, or the last dial that used its addresses).
 */
#define LOOKUPS_MAX 64

typedef struct lookup {
    pthread_cond_t cv;
    int refs;            /* the thread's, and one per dial holding it */
    bool done;
    int rc, err;          /* getaddrinfo's answer, and errno for EAI_SYSTEM */
    struct addrinfo *res; /* shared, read-only, by the dials holding it */
    struct addrinfo hints;
    char host[sizeof ((lc_url *)0)->host];
    char port[8];
    struct lookup *next; /* in lookups while not done */
} lookup;

static pthread_mutex_t lookups_mu = PTHREAD_MUTEX_INITIALIZER;
static lookup *lookups;
static int lookups_n;

/*
 * fork(): the child has none of the lookup threads, so a lookup listed in
 * flight never ends there: a child's dial of that name joined it and timed
 * out every time, and it counted toward LOOKUPS_MAX for good (found by a
 * review helper; libchan.h promises a forked child may use the library
 * afresh). The child forgets them (their memory is the parent's threads'
 * to free: left, as a few bytes), and lookups_mu is held across the fork so
 * that the child never inherits it locked.
 */
static void lookups_prepare(void)
{
    pthread_mutex_lock(&lookups_mu);
}

static void lookups_parent(void)
{
    pthread_mutex_unlock(&lookups_mu);
}

static void lookups_child(void)
{
    lookups = NULL;
    lookups_n = 0;
    pthread_mutex_unlock(&lookups_mu);
}

static pthread_once_t lookups_once = PTHREAD_ONCE_INIT;

static void lookups_init(void)
{
    pthread_atfork(lookups_prepare, lookups_parent, lookups_child);
}

/* Drops a reference; frees at the last. lookups_mu held. */
static void lookup_unref_locked(lookup *lk)
{
    if (--lk->refs > 0)
        return;
    if (lk->res != NULL)
        freeaddrinfo(lk->res);
    pthread_cond_destroy(&lk->cv);
    free(lk);
}

static void lookup_unlink_locked(lookup *lk)
{
    for (lookup **pp = &lookups; *pp != NULL; pp = &(*pp)->next)
        if (*pp == lk) {
            *pp = lk->next;
            lookups_n--;
            return;
        }
}

static void *lookup_main(void *arg)
{
    lookup *lk = arg;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(lk->host, lk->port, &lk->hints, &res);
    int err = errno;
    pthread_mutex_lock(&lookups_mu);
    lk->rc = rc;
    lk->err = err;
    lk->res = rc == 0 ? res : NULL;
    lk->done = true;
    lookup_unlink_locked(lk);
    pthread_cond_broadcast(&lk->cv);
    lookup_unref_locked(lk);
    pthread_mutex_unlock(&lookups_mu);
    return NULL;
}

static bool same_lookup(const lookup *lk, const char *host, const char *port, const struct addrinfo *hints)
{
    return strcmp(lk->host, host) == 0 && strcmp(lk->port, port) == 0 && lk->hints.ai_family == hints->ai_family &&
           lk->hints.ai_socktype == hints->ai_socktype && lk->hints.ai_flags == hints->ai_flags;
}

/* A new lookup of host:port on its thread, listed, with the caller's
 * reference; NULL with *rc set on failure. lookups_mu held. */
static lookup *lookup_start_locked(const char *host, const char *port, const struct addrinfo *hints, int *rc)
{
    if (lookups_n >= LOOKUPS_MAX) {
        *rc = -EAGAIN;
        return NULL;
    }
    lookup *lk = calloc(1, sizeof *lk);
    if (lk == NULL) {
        *rc = LC_ENOMEM;
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&lk->cv, &ca);
    pthread_condattr_destroy(&ca);
    lk->hints = *hints;
    snprintf(lk->host, sizeof lk->host, "%s", host);
    snprintf(lk->port, sizeof lk->port, "%s", port);
    lk->refs = 2; /* the thread's and ours */
    pthread_attr_t ta;
    pthread_attr_init(&ta);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    /* the helper takes no signals, as the engine thread: they belong to
     * the application */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int err = pthread_create(&t, &ta, lookup_main, lk);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&ta);
    if (err != 0) {
        pthread_cond_destroy(&lk->cv);
        free(lk);
        *rc = -err;
        return NULL;
    }
    lk->next = lookups;
    lookups = lk;
    lookups_n++;
    return lk;
}

/* getaddrinfo(host, ...) finished by deadline_ns (monotonic), LC_ETIMEDOUT
 * if not. On success *res belongs to *owner: release it with
 * resolved_free. */
static int lookup_until(const char *host, const char *port, const struct addrinfo *hints, int64_t deadline_ns,
                        struct addrinfo **res, lookup **owner)
{
    pthread_once(&lookups_once, lookups_init);
    pthread_mutex_lock(&lookups_mu);
    lookup *lk = lookups;
    while (lk != NULL && !same_lookup(lk, host, port, hints))
        lk = lk->next;
    int rc = 0;
    if (lk != NULL)
        lk->refs++;
    else
        lk = lookup_start_locked(host, port, hints, &rc);
    if (lk == NULL) {
        pthread_mutex_unlock(&lookups_mu);
        return rc;
    }
    struct timespec dl = { (time_t)(deadline_ns / 1000000000), (long)(deadline_ns % 1000000000) };
    while (!lk->done && pthread_cond_timedwait(&lk->cv, &lookups_mu, &dl) != ETIMEDOUT)
        ;
    if (!lk->done || lk->rc != 0) {
        errno = lk->err; /* (the lookup thread's, for EAI_SYSTEM) */
        rc = lk->done ? gai_code(lk->rc) : LC_ETIMEDOUT;
        lookup_unref_locked(lk);
        pthread_mutex_unlock(&lookups_mu);
        return rc;
    }
    pthread_mutex_unlock(&lookups_mu);
    *res = lk->res;
    *owner = lk; /* our reference keeps res */
    return 0;
}

/* Frees what resolve gave. */
static void resolved_free(struct addrinfo *res, lookup *owner)
{
    if (owner == NULL) {
        freeaddrinfo(res);
        return;
    }
    pthread_mutex_lock(&lookups_mu);
    lookup_unref_locked(owner);
    pthread_mutex_unlock(&lookups_mu);
}

/* deadline_ns: when a dial must give up (monotonic), -1 for never (listen).
 * *owner: NULL, or the shared lookup *res belongs to (resolved_free). */
static int resolve(const lc_url *u, bool passive, int64_t deadline_ns, struct addrinfo **res, lookup **owner)
{
    *owner = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)u->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST | (passive ? AI_PASSIVE : 0);
    /* empty host: the wildcard (passive) or the loopback address (dial);
     * an address in numbers needs no resolver: no thread for it */
    const char *host = u->host[0] ? u->host : NULL;
    int rc = getaddrinfo(host, port, &hints, res);
    if (rc != EAI_NONAME || host == NULL)
        return rc == 0 ? 0 : gai_code(rc);
    hints.ai_flags &= ~AI_NUMERICHOST;
    if (deadline_ns < 0) {
        rc = getaddrinfo(host, port, &hints, res);
        return rc == 0 ? 0 : gai_code(rc);
    }
    return lookup_until(host, port, &hints, deadline_ns, res, owner);
}

static void set_nodelay(int fd)
{
    int one = 1;
    /* failure only costs latency */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/*
 * A dial of a local port in the ephemeral range that nobody listens on can
 * be given that very port as its own (TCP simultaneous open): the socket is
 * connected to itself, a "session" with no peer that also keeps the server
 * from binding its port (a client retrying until its server is up got one
 * after ~11000 tries, found by a review helper). Go's net package checks
 * the same way (selfConnect).
 */
static bool connected_to_itself(int fd)
{
    struct sockaddr_storage a, b;
    socklen_t al = sizeof a, bl = sizeof b;
    if (getsockname(fd, (struct sockaddr *)&a, &al) != 0 || getpeername(fd, (struct sockaddr *)&b, &bl) != 0)
        return false;
    return al == bl && memcmp(&a, &b, al) == 0;
}

static int tcp_dial(const lc_url *u, int64_t timeout_ms, lc_conn **out)
{
    int64_t deadline = lc__deadline_ns(lc__now_ns(), timeout_ms);
    struct addrinfo *res;
    lookup *owner;
    int rc = resolve(u, false, deadline, &res, &owner);
    if (rc != 0)
        return rc;
    rc = -EHOSTUNREACH;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int64_t left = -1;
        if (deadline >= 0) {
            left = (deadline - lc__now_ns()) / 1000000;
            if (left < 0)
                left = 0;
        }
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        rc = lc__sock_connect(fd, ai->ai_addr, ai->ai_addrlen, left);
        if (rc == 0 && connected_to_itself(fd))
            rc = -ECONNREFUSED;
        if (rc == 0) {
            resolved_free(res, owner);
            set_nodelay(fd);
            return lc__conn_wrap(&lc__tcp_ops, fd, out);
        }
        close(fd);
        if (rc == LC_ETIMEDOUT)
            break;
    }
    resolved_free(res, owner);
    return rc;
}

/*
 * The wildcard (tcp://:port) listens on both families: getaddrinfo gives
 * 0.0.0.0 before :: here, and the first address that binds was taken, so
 * IPv6 clients were refused. An IPv6 socket with IPV6_V6ONLY off takes
 * IPv4 too; where IPv6 is off (no such family, or no address), the IPv4
 * entry that follows is taken as before. Named hosts keep the resolver's
 * order.
 */
static int tcp_listen(const lc_url *u, lc_tlistener **out)
{
    struct addrinfo *res;
    lookup *owner;
    int rc = resolve(u, true, -1, &res, &owner);
    if (rc != 0)
        return rc;
    rc = -EADDRNOTAVAIL;
    bool wildcard = u->host[0] == '\0';
    /* pass 0: the IPv6 wildcard; pass 1: the other entries (all of a name) */
    for (int pass = wildcard ? 0 : 1; pass < 2; pass++) {
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (wildcard && (pass == 0) != (ai->ai_family == AF_INET6))
            continue;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        int one = 1, zero = 0;
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6 && wildcard && /* dual stack, or the next entry */
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0) {
            rc = -errno;
            close(fd);
            continue;
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
            rc = -errno;
            close(fd);
            continue;
        }
        resolved_free(res, owner);
        lc_tlistener *l = malloc(sizeof *l);
        if (l == NULL) {
            close(fd);
            return LC_ENOMEM;
        }
        l->ops = &lc__tcp_ops;
        l->fd = fd;
        *out = l;
        return 0;
    }
    }
    resolved_free(res, owner);
    return rc;
}

static int tcp_accept(lc_tlistener *l, int64_t timeout_ms, lc_conn **out)
{
    int fd;
    int rc = lc__sock_accept(l, timeout_ms, &fd);
    if (rc != 0)
        return rc;
    set_nodelay(fd);
    return lc__conn_wrap(&lc__tcp_ops, fd, out);
}

static int tcp_listener_url(lc_tlistener *l, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) != 0)
        return -errno;
    char host[INET6_ADDRSTRLEN];
    unsigned port;
    int n;
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        port = ntohs(s6->sin6_port);
        /* A link-local address names a host only with its interface:
         * without the zone the URL could not be dialed (connect: EINVAL).
         * The name as getaddrinfo takes it after '%', or the index when
         * the interface has gone. */
        char zone[IF_NAMESIZE + 1] = "";
        if (s6->sin6_scope_id != 0) {
            char ifname[IF_NAMESIZE];
            if (if_indextoname(s6->sin6_scope_id, ifname) != NULL)
                snprintf(zone, sizeof zone, "%%%s", ifname);
            else
                snprintf(zone, sizeof zone, "%%%u", (unsigned)s6->sin6_scope_id);
        }
        n = snprintf(buf, len, "tcp://[%s%s]:%u", host, zone, port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        port = ntohs(s4->sin_port);
        n = snprintf(buf, len, "tcp://%s:%u", host, port);
    }
    return n < 0 || (size_t)n >= len ? LC_ERANGE : 0;
}

static void tcp_listener_close(lc_tlistener *l)
{
    close(l->fd);
    free(l);
}

const lc_transport_ops lc__tcp_ops = {
    .scheme = "tcp",
    .dial = tcp_dial,
    .listen = tcp_listen,
    .accept = tcp_accept,
    .readv = lc__sock_readv,
    .writev = lc__sock_writev,
    .sendfds = NULL,
    .recvfds = NULL,
    .shutdown_write = lc__sock_shutdown_write,
    .close = lc__sock_close,
    .listener_url = tcp_listener_url,
    .listener_close = tcp_listener_close,
};

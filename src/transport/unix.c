/*
 * unix.c - the unix:// transport: unix stream sockets (paths and the Linux
 * abstract namespace), with fd passing (SCM_RIGHTS) for the session's
 * byte streams (PROTOCOL.md section 5, "ours: fd passing").
 */
#include "transport.h"
#include "common/deadline.h"
#include "engine/engine.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <pthread.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/file.h>
#include <sys/sysmacros.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct unix_listener {
    lc_tlistener base;
    char path[LC_UNIX_PATH_MAX + 1]; /* as in the URL ("@name" for abstract) */
    char *file;                      /* the socket file, absolute when it could be
                                        made so (NULL: abstract) */
    bool has_file;
    dev_t dev;                       /* the socket file we created, to remove */
    ino_t ino;                       /* only that one at close */
} unix_listener;

static socklen_t make_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (path[0] == '@') {
        /* abstract: a leading NUL, then the name; the length delimits it */
        memcpy(sa->sun_path + 1, path + 1, n - 1);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    }
    memcpy(sa->sun_path, path, n + 1);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return -errno;
    return 0;
}

static int set_sndtimeo(int fd, int64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 ? 0 : -errno;
}

/*
 * A unix connect never reports EINPROGRESS: it completes at once, or, when the
 * listener's backlog is full, fails with EAGAIN (nonblocking) or sleeps up to
 * SO_SNDTIMEO (blocking). So a bounded dial is a blocking connect with
 * SO_SNDTIMEO set to the timeout; the socket is made nonblocking afterwards.
 */
static int unix_dial(const lc_url *u, int64_t timeout_ms, lc_conn **out)
{
    struct sockaddr_un sa;
    socklen_t len = make_addr(u->path, &sa);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (timeout_ms == 0 ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -errno;
    int rc = 0;
    int64_t deadline = lc__deadline_ns(lc__now_ns(), timeout_ms);
    if (timeout_ms > 0 && (rc = set_sndtimeo(fd, timeout_ms)) != 0)
        goto fail;
    while (connect(fd, (struct sockaddr *)&sa, len) != 0) {
        if (errno == EINTR) {
            if (timeout_ms <= 0)
                continue;
            /* a signal: go on with what is left of the timeout (restarting
             * it in full never ended under a periodic signal) */
            int64_t left_ms = (deadline - lc__now_ns()) / 1000000;
            if (left_ms <= 0) {
                rc = LC_ETIMEDOUT;
                goto fail;
            }
            if ((rc = set_sndtimeo(fd, left_ms)) != 0)
                goto fail;
            continue;
        }
        rc = (errno == EAGAIN || errno == EINPROGRESS) ? LC_ETIMEDOUT : -errno;
        goto fail;
    }
    if ((timeout_ms > 0 && (rc = set_sndtimeo(fd, 0)) != 0) || (rc = set_nonblock(fd)) != 0)
        goto fail;
    return lc__conn_wrap(&lc__unix_ops, fd, out);
fail:
    close(fd);
    return rc;
}

/*
 * Does a socket of this network namespace listen on the file st describes?
 * Asked of the kernel's socket diagnostics (NETLINK_SOCK_DIAG: the listening
 * unix sockets, each with the device and inode of the file it is bound to),
 * which, unlike a probing connect, leaves nothing in the listener's backlog:
 * the probe's connection was accepted by the live listener as a client that
 * left at once (280 times in 2000 failed lc_listen calls). 1 yes, 0 not here,
 * -1 cannot tell (no sock_diag in this kernel or sandbox).
 */
static int listening_here(const struct stat *st)
{
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0)
        return -1;
    struct {
        struct nlmsghdr nh;
        struct unix_diag_req rq;
    } req = {
        .nh = { .nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1 },
        .rq = { .sdiag_family = AF_UNIX, .udiag_states = 1u << 10 /* TCP_LISTEN */,
                .udiag_show = UDIAG_SHOW_VFS },
    };
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    int found = -1;
    if (sendto(nl, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) != sizeof req)
        goto out;
    /* the kernel's dev_t (major << 20 | minor), as sock_diag reports it */
    uint32_t kdev = (uint32_t)(major(st->st_dev) << 20 | (minor(st->st_dev) & 0xfffff));
    union {
        char buf[16384];
        struct nlmsghdr align;
    } u;
    for (;;) {
        ssize_t n = recv(nl, u.buf, sizeof u.buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        size_t left = (size_t)n;
        for (struct nlmsghdr *h = &u.align; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                if (found != 1)
                    found = 0;
                goto out;
            }
            if (h->nlmsg_type == NLMSG_ERROR)
                goto out;
            if (found == 1 || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct unix_diag_msg)))
                continue; /* (read on to the end of the dump) */
            struct unix_diag_msg *m = NLMSG_DATA(h);
            size_t alen = h->nlmsg_len - NLMSG_LENGTH(sizeof *m);
            for (struct rtattr *a = (struct rtattr *)(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
                if (a->rta_type != UNIX_DIAG_VFS || RTA_PAYLOAD(a) < sizeof(struct unix_diag_vfs))
                    continue;
                struct unix_diag_vfs v;
                memcpy(&v, RTA_DATA(a), sizeof v);
                if (v.udiag_vfs_ino == (uint32_t)st->st_ino && v.udiag_vfs_dev == kdev)
                    found = 1;
            }
        }
    }
out:
    close(nl);
    return found;
}

int lc__unix_listening(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode))
        return -1;
    return listening_here(&st);
}

/* Is something accepting at this path? -EADDRINUSE if so, -ENOTSOCK if the
 * path is some other file (a regular file, a directory: never removed), 0
 * once a stale socket file has been removed. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, socklen_t len)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode))
        return -ENOTSOCK; /* never remove a file that is not a socket; and it is
                             not "in use": say what is in the way */
    if (listening_here(&st) == 1)
        return -EADDRINUSE;
    /* Not listening in this network namespace, or no way to tell: connect,
     * which also reaches a listener of another namespace sharing the file. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0)
        return -errno;
    int rc = connect(probe, (const struct sockaddr *)sa, len);
    int err = rc == 0 ? 0 : errno;
    close(probe);
    if (err == ENOENT)
        return 0; /* gone meanwhile: bind again */
    if (err != ECONNREFUSED)
        return -EADDRINUSE; /* connected, or backlog full (EAGAIN): it is alive */
    if (unlink(path) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

/*
 * Concurrent lc_listen calls on one path (threads, or processes using this
 * library) take turns from bind to listen, under an flock on the socket's
 * directory. Without it, B's stale-socket probe could find A bound but not
 * yet listening (ECONNREFUSED, as for a stale file), unlink A's file and
 * bind its own: both returned 0, A listened where no dial could reach, and
 * closing A removed B's live file (a review helper: 12-19 rounds in 4000
 * with 4 threads).
 *
 * An flock belongs to the open file description, which a child made by
 * fork() shares: a fork while another thread held the lock left it held
 * for as long as the child lived without exec (O_CLOEXEC only helps at
 * exec), and every lc_listen and lc_listener_close in that directory, in
 * any process, waited its ~2 s and went on unlocked (a review helper: 20
 * forks of a worker while a thread listened and closed in a loop). So the
 * locked region is also held under dir_guard, which fork() takes first
 * (pthread_atfork): a fork waits for the region to end, and no child is
 * born holding the lock. A region holds it for reading, fork for writing:
 * regions in different directories go on side by side. It is held from the
 * directory's open to its close, and given back between tries while
 * another process holds the flock: held through that wait (~2 s at most),
 * it made every listen and close in other directories, and fork(), wait as
 * long (a review helper: 4.2 s for a listen in a free directory, 8.6 s for
 * a fork beside two threads listening in a locked one). Writers first, so
 * that threads taking turns cannot starve a fork.
 */
static pthread_rwlock_t dir_guard;
static pthread_once_t dir_once = PTHREAD_ONCE_INIT;

static void dir_guard_write(void)
{
    pthread_rwlock_wrlock(&dir_guard);
}

static void dir_guard_unlock(void)
{
    pthread_rwlock_unlock(&dir_guard);
}

static void dir_guard_make(void)
{
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&dir_guard, &a);
    pthread_rwlockattr_destroy(&a);
}

/* In the child the guard is made anew: glibc unlocks a write-locked rwlock
 * only for the thread id that locked it, and the child's one thread has
 * another: unlocked, it stayed locked there, and the child's first unix
 * listen or close, or fork, hung for ever (a review helper). No other
 * thread exists in the child to hold it. */
static void dir_guard_child(void)
{
    memset(&dir_guard, 0, sizeof dir_guard);
    dir_guard_make();
}

static void dir_guard_init(void)
{
    dir_guard_make();
    pthread_atfork(dir_guard_write, dir_guard_unlock, dir_guard_child);
}

/* Enters the region for path's directory: returns the locked directory's
 * fd, with dir_guard held for reading until unlock_dir, or -1 when it
 * cannot be opened or locked within ~2 s (then it goes on unlocked, as
 * before, without the guard). */
static int lock_dir_of(const char *path)
{
    pthread_once(&dir_once, dir_guard_init);
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        strcpy(dir, ".");
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= sizeof dir)
            return -1;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    for (int i = 0; i < 2000; i++) {
        /* opened anew under the guard each try: a child forked while the
         * fd was open, even unlocked, would share what the flock locks */
        pthread_rwlock_rdlock(&dir_guard);
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            pthread_rwlock_unlock(&dir_guard);
            return -1;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        int e = errno;
        close(fd);
        pthread_rwlock_unlock(&dir_guard);
        if (e != EWOULDBLOCK && e != EINTR)
            break;
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }
    return -1;
}

/* Leaves the region lock_dir_of entered (fd: what it returned). */
static void unlock_dir(int fd)
{
    if (fd < 0)
        return; /* (not entered: no guard held) */
    close(fd); /* (unlocks) */
    pthread_rwlock_unlock(&dir_guard);
}

/*
 * The socket file's path, absolute: lc_listener_close removes the file, and
 * a relative path looked up again then is relative to the working directory
 * of that moment: after a chdir the file stayed behind (and one of the same
 * name in the new directory could have been removed, had it been ours by
 * device and inode). Made at listen time, before the bind. NULL when out of
 * memory; the path as given when the working directory has no name
 * (getcwd fails: removed, or too deep).
 */
static char *file_path(const char *path)
{
    if (path[0] != '/') {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) != NULL) {
            size_t c = strlen(cwd), n = strlen(path);
            char *abs = malloc(c + 1 + n + 1);
            if (abs != NULL) {
                memcpy(abs, cwd, c);
                abs[c] = '/';
                memcpy(abs + c + 1, path, n + 1);
            }
            return abs;
        }
    }
    return strdup(path);
}

static int unix_listen(const lc_url *u, lc_tlistener **out)
{
    struct sockaddr_un sa;
    socklen_t len = make_addr(u->path, &sa);
    bool abstract = u->path[0] == '@';
    unix_listener *l = calloc(1, sizeof *l);
    if (l == NULL)
        return LC_ENOMEM;
    if (!abstract && (l->file = file_path(u->path)) == NULL) {
        free(l);
        return LC_ENOMEM;
    }
    int rc = 0;
    int dirlock = abstract ? -1 : lock_dir_of(u->path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    for (int attempt = 0;; attempt++) {
        if (bind(fd, (struct sockaddr *)&sa, len) == 0)
            break;
        rc = -errno;
        if (rc != -EADDRINUSE || abstract || attempt == 2)
            goto fail;
        if ((rc = clear_stale(u->path, &sa, len)) != 0)
            goto fail;
    }
    if (!abstract) {
        struct stat st;
        if (stat(u->path, &st) == 0) {
            l->has_file = true;
            l->dev = st.st_dev;
            l->ino = st.st_ino;
        }
    }
    if (listen(fd, SOMAXCONN) != 0) {
        rc = -errno;
        goto fail;
    }
    if (!abstract)
        unlock_dir(dirlock);
    l->base.ops = &lc__unix_ops;
    l->base.fd = fd;
    memcpy(l->path, u->path, sizeof l->path);
    *out = &l->base;
    return 0;
fail:
    if (fd >= 0) {
        close(fd);
        if (l->has_file)
            unlink(u->path);
    }
    if (!abstract)
        unlock_dir(dirlock);
    free(l->file);
    free(l);
    return rc;
}

static int unix_accept(lc_tlistener *l, int64_t timeout_ms, lc_conn **out)
{
    int fd;
    int rc = lc__sock_accept(l, timeout_ms, &fd);
    if (rc != 0)
        return rc;
    return lc__conn_wrap(&lc__unix_ops, fd, out);
}

static int unix_listener_url(lc_tlistener *base, char *buf, size_t len)
{
    unix_listener *l = (unix_listener *)base;
    int n = snprintf(buf, len, "unix://%s", l->path);
    return n < 0 || (size_t)n >= len ? LC_ERANGE : 0;
}

static void unix_listener_close(lc_tlistener *base)
{
    unix_listener *l = (unix_listener *)base;
    /* Remove the socket file only if it is still the one we bound (another
     * listener may have replaced it since), and before closing the socket,
     * under the directory's lock as lc_listen takes it: once closed, a
     * lc_listen on the path finds the file stale, replaces it, and on ext4
     * its new file may get the inode number just freed, so our check
     * removed a live listener's file (found by a review helper: 11 live
     * listeners lost their file in 124600 listens by three threads). */
    if (l->has_file) {
        int dirlock = lock_dir_of(l->file);
        struct stat st;
        if (lstat(l->file, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
            unlink(l->file);
        unlock_dir(dirlock);
    }
    close(l->base.fd);
    free(l->file);
    free(l);
}

/* ---- fd passing ----------------------------------------------------------- */

typedef union {
    char buf[CMSG_SPACE(sizeof(int) * LC_TRANSPORT_MAX_FDS)];
    struct cmsghdr align;
} fd_control;

static ssize_t unix_sendfds(lc_conn *c, const struct iovec *iov, int iovcnt, const int *fds,
                            size_t nfds)
{
    if (fds == NULL || nfds == 0 || nfds > LC_TRANSPORT_MAX_FDS || iovcnt <= 0)
        return LC_EINVAL;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (total == 0)
        return LC_EINVAL; /* a stream socket sends no fds without a byte */
    fd_control ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr mh = {
        .msg_iov = (struct iovec *)iov,
        .msg_iovlen = (size_t)iovcnt,
        .msg_control = ctl.buf,
        .msg_controllen = CMSG_SPACE(sizeof(int) * nfds),
    };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    for (;;) {
        ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static ssize_t unix_recvfds(lc_conn *c, const struct iovec *iov, int iovcnt, int *fds,
                            size_t *nfds)
{
    if (nfds == NULL || (fds == NULL && *nfds > 0))
        return LC_EINVAL;
    size_t cap = *nfds < LC_TRANSPORT_MAX_FDS ? *nfds : LC_TRANSPORT_MAX_FDS;
    *nfds = 0;
    fd_control ctl;
    struct msghdr mh = {
        .msg_iov = (struct iovec *)iov,
        .msg_iovlen = (size_t)iovcnt,
        .msg_control = cap > 0 ? ctl.buf : NULL,
        .msg_controllen = cap > 0 ? CMSG_SPACE(sizeof(int) * cap) : 0,
    };
    ssize_t n;
    for (;;) {
        n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC);
        if (n >= 0)
            break;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
    size_t got = 0;
    bool overflow = (mh.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *cm = cap > 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm != NULL;
         cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(cm);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof fd);
            if (got < cap) {
                fds[got++] = fd;
            } else {
                close(fd);
                overflow = true;
            }
        }
    }
    if (overflow && cap > 0) {
        for (size_t i = 0; i < got; i++)
            close(fds[i]);
        /* Truncated with room left: the kernel could not install them all
         * (our own RLIMIT_NOFILE), not a peer sending too many. */
        return got < cap ? -EMFILE : -EMSGSIZE;
    }
    *nfds = got;
    return n;
}

static void unix_close(lc_conn *c)
{
    lc__sock_close(c);
}

const lc_transport_ops lc__unix_ops = {
    .scheme = "unix",
    .dial = unix_dial,
    .listen = unix_listen,
    .accept = unix_accept,
    .readv = lc__sock_readv,
    .writev = lc__sock_writev,
    .sendfds = unix_sendfds,
    .recvfds = unix_recvfds,
    .shutdown_write = lc__sock_shutdown_write,
    .close = unix_close,
    .listener_url = unix_listener_url,
    .listener_close = unix_listener_close,
};

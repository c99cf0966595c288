/*
 * test_transport.c - carriers (src/transport) over real sockets: URL parsing
 * and its error texts, unix and tcp dial/accept (port 0 read back), timeouts,
 * refused dials, fd passing (SCM_RIGHTS) including truncation and unwanted
 * fds, 100 concurrent connections, unix socket files (removed at close, stale
 * ones replaced, live ones and other files left alone). The teardown checks
 * that every test closes every fd it opened.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include "libchan.h"
#include "transport/transport.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------- */

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lc-transport.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    assert_int_equal(rmdir(tmpdir), 0); /* fails if a socket file was left */
}

static void sock_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Waits until fd is ready for events (bounded by the test deadline). */
static void wait_fd(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    while (poll(&p, 1, -1) < 0 && errno == EINTR)
        ;
}

/* Writes all of buf on a nonblocking connection. 0 or a negative code. */
static int write_all(lc_conn *c, const void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        struct iovec iov = {(char *)buf + done, n - done};
        ssize_t k = lc__conn_writev(c, &iov, 1);
        if (k == -EAGAIN) {
            wait_fd(lc__conn_fd(c), POLLOUT);
            continue;
        }
        if (k < 0)
            return (int)k;
        done += (size_t)k;
    }
    return 0;
}

/* Reads exactly n bytes. 0, LC_EOF at a premature end, or a negative code. */
static int read_all(lc_conn *c, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        struct iovec iov = {(char *)buf + done, n - done};
        ssize_t k = lc__conn_readv(c, &iov, 1);
        if (k == -EAGAIN) {
            wait_fd(lc__conn_fd(c), POLLIN);
            continue;
        }
        if (k < 0)
            return (int)k;
        if (k == 0)
            return LC_EOF;
        done += (size_t)k;
    }
    return 0;
}

/* dial + accept over url; the pair is connected both ways. */
static void connect_pair(const char *listen_url, lc_tlistener **l, lc_conn **client, lc_conn **server)
{
    lc_error err = {0};
    int rc = lc__listen(listen_url, l, &err);
    if (rc != 0)
        fail_msg("listen %s: %s", listen_url, err.text);
    char url[256];
    assert_int_equal(lc__listener_url(*l, url, sizeof url), 0);
    rc = lc__dial(url, 5000, client, &err);
    if (rc != 0)
        fail_msg("dial %s: %s", url, err.text);
    assert_int_equal(lc__accept(*l, 5000, server), 0);
}

static void check_fd_flags(int fd)
{
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

static void exchange(lc_conn *a, lc_conn *b)
{
    char buf[16];
    struct iovec iov[2] = {{"hel", 3}, {"lo", 2}};
    assert_int_equal(lc__conn_writev(a, iov, 2), 5);
    assert_int_equal(read_all(b, buf, 5), 0);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(write_all(b, "back", 4), 0);
    assert_int_equal(read_all(a, buf, 4), 0);
    assert_memory_equal(buf, "back", 4);
    /* nothing more: EAGAIN, never a block */
    struct iovec r = {buf, sizeof buf};
    assert_int_equal(lc__conn_readv(a, &r, 1), -EAGAIN);
}

/* ---- URLs ----------------------------------------------------------------- */

static void test_url_parse_accepts_every_form(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_url u;
    lc_error err;
    assert_int_equal(lc__url_parse("unix:///tmp/a.sock", &u, &err), 0);
    assert_string_equal(u.scheme, "unix");
    assert_string_equal(u.path, "/tmp/a.sock");
    assert_ptr_equal(u.ops, &lc__unix_ops);
    assert_int_equal(lc__url_parse("unix://rel/b.sock", &u, &err), 0);
    assert_string_equal(u.path, "rel/b.sock");
    assert_int_equal(lc__url_parse("unix://@abstract", &u, &err), 0);
    assert_string_equal(u.path, "@abstract");
    assert_int_equal(lc__url_parse("tcp://127.0.0.1:8080", &u, &err), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 8080);
    assert_ptr_equal(u.ops, &lc__tcp_ops);
    assert_int_equal(lc__url_parse("tcp://[::1]:0", &u, &err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 0);
    assert_int_equal(lc__url_parse("tcp://[fe80::1%25eth0]:65535", &u, &err), 0);
    assert_int_equal(u.port, 65535);
    assert_int_equal(lc__url_parse("tcp://example.com:443", &u, &err), 0);
    assert_string_equal(u.host, "example.com");
    assert_int_equal(lc__url_parse("tcp://:9000", &u, &err), 0);
    assert_string_equal(u.host, "");
    assert_int_equal(u.port, 9000);
    assert_int_equal(lc__url_parse("TCP://h:1", &u, &err), 0);
    assert_string_equal(u.scheme, "tcp");
}

static void test_url_parse_errors_say_why(void **state)
{
    LC_TEST_DEADLINE(10);
    char longpath[200];
    memset(longpath, 'a', sizeof longpath);
    memcpy(longpath, "unix:///", 8);
    longpath[sizeof longpath - 1] = '\0';
    static const struct {
        const char *url;
        int code;
        const char *text;
    } cases[] = {
        {"tcp://host", LC_EINVAL, "tcp://host: missing port"},
        {"tcp://host:", LC_EINVAL, "missing port"},
        {"tcp://[::1]", LC_EINVAL, "missing port"},
        {"tcp://host:65536", LC_EINVAL, "bad port"},
        {"tcp://host:123456", LC_EINVAL, "bad port"},
        {"tcp://host:8a", LC_EINVAL, "bad port"},
        {"tcp://host:-1", LC_EINVAL, "bad port"},
        {"tcp://::1:80", LC_EINVAL, "brackets"},
        {"tcp://[::1:80", LC_EINVAL, "missing ']'"},
        {"tcp://[]:80", LC_EINVAL, "empty IPv6"},
        {"tcp://[::1]x:80", LC_EINVAL, "after ']'"},
        {"tcp://h:80/path", LC_EINVAL, "unexpected '/'"},
        {"tcp://u@h:80", LC_EINVAL, "unexpected '@'"},
        {"tcp://h:80?x=1", LC_EINVAL, "unexpected '?'"},
        {"unix://", LC_EINVAL, "missing path"},
        {"unix://@", LC_EINVAL, "abstract"},
        {"foo://x", LC_EINVAL, "unknown scheme 'foo'"},
        {"://x", LC_EINVAL, "bad scheme"},
        {"no-scheme", LC_EINVAL, "not a URL"},
        {"tls://h:1", LC_ENOTSUP, "not built yet"},
        {"ws://h:1/p", LC_ENOTSUP, "not built yet"},
        {"wss://h:1/p", LC_ENOTSUP, "not built yet"},
        {"h2://h:1/p", LC_ENOTSUP, "not built yet"},
        {"inproc://name", LC_ENOTSUP, "not built yet"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lc_url u;
        lc_error err = {0};
        int rc = lc__url_parse(cases[i].url, &u, &err);
        if (rc != cases[i].code || err.code != rc || strstr(err.text, cases[i].text) == NULL)
            fail_msg("%s: got %d \"%s\", want %d \"...%s...\"", cases[i].url, rc, err.text,
                     cases[i].code, cases[i].text);
    }
    lc_url u;
    lc_error err = {0};
    assert_int_equal(lc__url_parse(longpath, &u, &err), LC_EINVAL);
    assert_non_null(strstr(err.text, "too long"));
    assert_int_equal(lc__url_parse(NULL, &u, NULL), LC_EINVAL); /* err optional */
    /* the entry points report the same way */
    lc_conn *c;
    lc_tlistener *l;
    assert_int_equal(lc__dial("tcp://host", 100, &c, &err), LC_EINVAL);
    assert_string_equal(err.text, "tcp://host: missing port");
    assert_int_equal(lc__listen("tls://h:1", &l, &err), LC_ENOTSUP);
}

/*
 * A host name that does not resolve is said to be one (LC_ENOHOST, the
 * name in the text); it was -EHOSTUNREACH, "No route to host". .invalid
 * never resolves (RFC 6761); a machine whose resolver cannot be reached
 * at all may only say "try again" (-EAGAIN), also naming the host.
 */
static void test_unresolvable_host_is_named(void **state)
{
    (void)state;
    const char *urls[] = { "tcp://no-such-host.invalid:1", "tcp://no-such-host.invalid:0" };
    for (int i = 0; i < 2; i++) {
        lc_conn *c = NULL;
        lc_tlistener *l = NULL;
        lc_error err = { 0 };
        int rc = i == 0 ? lc__dial(urls[i], 1000, &c, &err) : lc__listen(urls[i], &l, &err);
        if (rc != LC_ENOHOST && rc != -EAGAIN)
            fail_msg("%s: got %d \"%s\", want LC_ENOHOST", urls[i], rc, err.text);
        assert_int_equal(err.code, rc);
        assert_non_null(strstr(err.text, "host name no-such-host.invalid"));
        assert_null(c);
        assert_null(l);
    }
    assert_string_equal(lc_strerror(LC_ENOHOST), "host name not found");
}

/*
 * The resolver as this program sees it: the name slow-resolver.test is
 * looked up until the test lets it go (a resolver that does not answer);
 * everything else goes to the system's getaddrinfo. (The library is linked
 * into this program: its calls come here.)
 */
static pthread_mutex_t slow_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cv = PTHREAD_COND_INITIALIZER;
static bool slow_released;
static atomic_int slow_entered, slow_left;

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    if (node != NULL && strcmp(node, "slow-resolver.test") == 0 &&
        (hints == NULL || !(hints->ai_flags & AI_NUMERICHOST))) {
        atomic_fetch_add(&slow_entered, 1);
        pthread_mutex_lock(&slow_mu);
        while (!slow_released)
            pthread_cond_wait(&slow_cv, &slow_mu);
        pthread_mutex_unlock(&slow_mu);
        atomic_fetch_add(&slow_left, 1);
        return EAI_NONAME;
    }
    static _Atomic(getaddrinfo_fn) real;
    getaddrinfo_fn f = atomic_load(&real);
    if (f == NULL) {
        f = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
        atomic_store(&real, f);
    }
    return f(node, service, hints, res);
}

/* Lets the lookups stuck in slow-resolver.test go, and waits until they
 * have all left the resolver. */
static void slow_release_all(void)
{
    pthread_mutex_lock(&slow_mu);
    slow_released = true;
    pthread_cond_broadcast(&slow_cv);
    pthread_mutex_unlock(&slow_mu);
    int64_t end = lc_test_now_us() + 5000000;
    while (atomic_load(&slow_left) < atomic_load(&slow_entered) && lc_test_now_us() < end)
        usleep(1000);
    assert_int_equal(atomic_load(&slow_left), atomic_load(&slow_entered));
}

/*
 * A dial's timeout covers the name lookup: getaddrinfo has none, and a
 * resolver that does not answer held lc_dial as long as resolv.conf said,
 * whatever timeout it was given. The dial gives up at its deadline while the
 * lookup is still stuck; the lookup ends on its own thread later.
 */
static void test_dial_timeout_covers_the_name_lookup(void **state)
{
    (void)state;
    lc_conn *c = NULL;
    lc_error err = { 0 };
    int rc = lc__dial("tcp://slow-resolver.test:80", 300, &c, &err);
    assert_int_equal(rc, LC_ETIMEDOUT);
    assert_null(c);
    assert_non_null(strstr(err.text, "tcp://slow-resolver.test:80: dial: "));
    /* it returned while the resolver still had the name */
    assert_int_equal(atomic_load(&slow_entered), 1);
    assert_int_equal(atomic_load(&slow_left), 0);
    slow_release_all();
    assert_int_equal(atomic_load(&slow_left), 1);
    /* numbers need no resolver, and a name still resolves within a deadline */
    lc_tlistener *l;
    assert_int_equal(lc__listen("tcp://127.0.0.1:0", &l, NULL), 0);
    char url[128], named[160];
    assert_int_equal(lc__listener_url(l, url, sizeof url), 0);
    snprintf(named, sizeof named, "tcp://localhost:%s", strrchr(url, ':') + 1);
    assert_int_equal(lc__dial(named, 2000, &c, &err), 0);
    lc__conn_close(c);
    lc__listener_close(l);
}

/*
 * fork() while a name is being looked up: the child has none of the
 * parent's threads, the lookup's included, and its dial of that name must
 * look it up itself. It joined the lookup listed in flight, which never
 * ends in the child, and timed out every time (found by a review helper).
 * Here the child's resolver answers at once (no such name): LC_ENOHOST, not
 * LC_ETIMEDOUT.
 */
static void test_child_looks_up_a_name_the_parent_was_looking_up(void **state)
{
    (void)state;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    printf("SKIP: fork() of a multithreaded process under a sanitizer (see test_session_proc.c)\n");
    skip();
#endif
    LC_TEST_DEADLINE(30);
    pthread_mutex_lock(&slow_mu);
    slow_released = false;
    pthread_mutex_unlock(&slow_mu);
    int entered0 = atomic_load(&slow_entered);
    lc_conn *c = NULL;
    lc_error err = { 0 };
    assert_int_equal(lc__dial("tcp://slow-resolver.test:81", 50, &c, &err), LC_ETIMEDOUT);
    int64_t end = lc_test_now_us() + 5000000;
    while (atomic_load(&slow_entered) == entered0 && lc_test_now_us() < end)
        usleep(1000);
    assert_int_equal(atomic_load(&slow_entered), entered0 + 1); /* stuck in the resolver */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        alarm(10);
        slow_released = true; /* this process's resolver answers */
        int rc = lc__dial("tcp://slow-resolver.test:81", 3000, &c, &err);
        if (rc != LC_ENOHOST)
            fprintf(stderr, "child: dial of the name the parent was looking up: %s (%s)\n", lc_strerror(rc),
                    err.text);
        _exit(rc == LC_ENOHOST ? 0 : 1);
    }
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    slow_release_all();
}

/*
 * Dials of a name whose resolver does not answer share the lookup in
 * flight: retrying keeps one helper thread, not one per try. Distinct names
 * (here: ports) are looked up at most 64 at once; the next fails at once
 * with -EAGAIN instead of starting yet another thread. Once the resolver
 * answers, everything goes on as before.
 */
static void test_stuck_lookups_are_shared_and_bounded(void **state)
{
    (void)state;
    LC_TEST_DEADLINE(30);
    pthread_mutex_lock(&slow_mu);
    slow_released = false; /* (the test before let its lookup go, and it left) */
    pthread_mutex_unlock(&slow_mu);
    int entered0 = atomic_load(&slow_entered);
    lc_conn *c = NULL;
    lc_error err = { 0 };
    for (int i = 0; i < 5; i++)
        assert_int_equal(lc__dial("tcp://slow-resolver.test:80", 50, &c, &err), LC_ETIMEDOUT);
    assert_int_equal(atomic_load(&slow_entered), entered0 + 1);
    /* 63 more names: 64 lookups stuck, each with its helper thread */
    char url[64];
    for (int port = 1; port < 64; port++) {
        snprintf(url, sizeof url, "tcp://slow-resolver.test:%d", 1000 + port);
        assert_int_equal(lc__dial(url, 0, &c, &err), LC_ETIMEDOUT);
    }
    int64_t end = lc_test_now_us() + 5000000;
    while (atomic_load(&slow_entered) < entered0 + 64 && lc_test_now_us() < end)
        usleep(1000);
    assert_int_equal(atomic_load(&slow_entered), entered0 + 64);
    /* the 65th name is refused without waiting for its 10 s */
    int64_t t0 = lc_test_now_us();
    int rc = lc__dial("tcp://slow-resolver.test:2000", 10000, &c, &err);
    assert_int_equal(rc, -EAGAIN);
    assert_true(lc_test_now_us() - t0 < 5000000);
    assert_null(c);
    assert_non_null(strstr(err.text, "tcp://slow-resolver.test:2000: dial: resolving host name slow-resolver.test "
                                     "failed for now (try again)"));
    /* a name already in flight is still waited for (it shares) */
    assert_int_equal(lc__dial("tcp://slow-resolver.test:80", 50, &c, &err), LC_ETIMEDOUT);
    assert_int_equal(atomic_load(&slow_entered), entered0 + 64);
    slow_release_all();
    /* answered now (our resolver says no such name), and new lookups start */
    assert_int_equal(lc__dial("tcp://slow-resolver.test:2000", 2000, &c, &err), LC_ENOHOST);
    assert_int_equal(atomic_load(&slow_entered), entered0 + 65);
    slow_release_all();
}

/* ---- unix ----------------------------------------------------------------- */

static void test_unix_dial_accept_and_cleanup(void **state)
{
    LC_TEST_DEADLINE(10);
    make_tmpdir();
    char path[128], url[160], got[160];
    sock_path(path, sizeof path, "a.sock");
    snprintf(url, sizeof url, "unix://%s", path);
    lc_tlistener *l;
    lc_conn *c, *s;
    connect_pair(url, &l, &c, &s);
    assert_int_equal(lc__listener_url(l, got, sizeof got), 0);
    assert_string_equal(got, url);
    assert_int_equal(lc__listener_url(l, got, 8), LC_ERANGE);
    assert_string_equal(lc__conn_scheme(c), "unix");
    check_fd_flags(lc__conn_fd(c));
    check_fd_flags(lc__conn_fd(s));
    check_fd_flags(lc__listener_fd(l));
    exchange(c, s);
    /* half-close: the server reads EOF, and can still write */
    assert_int_equal(lc__conn_shutdown_write(c), 0);
    char buf[4];
    assert_int_equal(read_all(s, buf, 1), LC_EOF);
    assert_int_equal(write_all(s, "z", 1), 0);
    assert_int_equal(read_all(c, buf, 1), 0);
    lc__conn_close(c);
    lc__conn_close(s);
    assert_true(exists(path));
    lc__listener_close(l);
    assert_false(exists(path));
    remove_tmpdir();
}

static void test_unix_relative_and_abstract(void **state)
{
    LC_TEST_DEADLINE(10);
    make_tmpdir();
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmpdir), 0);
    lc_tlistener *l;
    lc_conn *c, *s;
    connect_pair("unix://rel.sock", &l, &c, &s);
    exchange(c, s);
    lc__conn_close(c);
    lc__conn_close(s);
    assert_true(exists("rel.sock"));
    lc__listener_close(l);
    assert_false(exists("rel.sock"));
    assert_int_equal(chdir(cwd), 0);
    remove_tmpdir();

    char url[64], got[64];
    snprintf(url, sizeof url, "unix://@lc-test-%d", (int)getpid());
    connect_pair(url, &l, &c, &s);
    assert_int_equal(lc__listener_url(l, got, sizeof got), 0);
    assert_string_equal(got, url);
    exchange(s, c);
    lc_tlistener *l2;
    assert_int_equal(lc__listen(url, &l2, NULL), -EADDRINUSE);
    lc__conn_close(c);
    lc__conn_close(s);
    lc__listener_close(l);
}

/*
 * A relative path is the file in the working directory of the listen: the
 * close removes that one, after a chdir too. It looked the relative path
 * up again at close, in the directory of that moment, and left the socket
 * file behind (a review helper).
 */
static void test_unix_relative_path_removed_after_chdir(void **state)
{
    (void)state;
    LC_TEST_DEADLINE(10);
    make_tmpdir();
    char cwd[512], file[128];
    assert_non_null(getcwd(cwd, sizeof cwd));
    sock_path(file, sizeof file, "moved.sock");
    assert_int_equal(chdir(tmpdir), 0);
    lc_tlistener *l;
    assert_int_equal(lc__listen("unix://moved.sock", &l, NULL), 0);
    assert_int_equal(chdir(cwd), 0);
    assert_true(exists(file));
    lc__listener_close(l);
    if (exists(file))
        fprintf(stderr, "%s: left behind by the close after a chdir\n", file);
    assert_false(exists(file));
    remove_tmpdir();
}

/*
 * bind(2) as the library calls it. The fork test below holds one lc_listen
 * inside its bind, which lies within the region under the directory's
 * flock, until the fork has either completed (then the child was born
 * sharing the locked file description) or waits (for the region to end).
 */
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
static atomic_int bind_hold;     /* 1: the next bind waits in hold_in_bind */
static atomic_int bind_held;     /* a bind waits there now */
static atomic_int fork_begun;    /* our prepare handler ran */
static atomic_int fork_done;     /* our parent handler ran */
static atomic_int forker_tid;    /* the thread that forks */
static atomic_int hold_timed_out;

/* Is thread tid asleep in a futex wait (a lock, in pthread_atfork's prepare
 * handlers)? Read with open/read, no malloc: the forking thread takes
 * malloc's locks in fork, and a reader holding one would put it to sleep. */
static bool asleep_in_futex(int tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ' || p[2] != 'S')
        return false;
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    return atol(buf) == SYS_futex;
}

static void hold_in_bind(void)
{
    atomic_store(&bind_held, 1);
    int64_t end = lc_test_now_us() + 10000000;
    struct timespec nap = { 0, 100000 };
    while (!atomic_load(&fork_begun) && lc_test_now_us() < end)
        nanosleep(&nap, NULL);
    while (!atomic_load(&fork_done) && !asleep_in_futex(atomic_load(&forker_tid)) && lc_test_now_us() < end)
        nanosleep(&nap, NULL);
    if (lc_test_now_us() >= end)
        atomic_store(&hold_timed_out, 1);
    atomic_store(&bind_held, 0);
}

int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
    static _Atomic(bind_fn) real;
    bind_fn f = atomic_load(&real);
    if (f == NULL) {
        f = (bind_fn)dlsym(RTLD_NEXT, "bind");
        atomic_store(&real, f);
    }
    if (sa->sa_family == AF_UNIX && atomic_exchange(&bind_hold, 0))
        hold_in_bind();
    return f(fd, sa, len);
}

static void fork_prepare(void)
{
    if (atomic_load(&bind_held))
        atomic_store(&fork_begun, 1);
}

static void fork_parent(void)
{
    if (atomic_load(&fork_begun))
        atomic_store(&fork_done, 1);
}

typedef struct {
    const char *url;
    lc_tlistener *l;
    int rc;
} listen_arg;

static void *listen_fn(void *x)
{
    listen_arg *a = x;
    a->rc = lc__listen(a->url, &a->l, NULL);
    return NULL;
}

/*
 * fork() while another thread is inside lc_listen's flocked region: the
 * child (a worker that does not exec) must not be born holding the
 * directory's lock. An flock belongs to the open file description, which
 * the child shared: the lock stayed held as long as it lived, and every
 * lc_listen and lc_listener_close in that directory, in any process, waited
 * ~2 s and went on unlocked (a review helper). Here the listening thread is
 * held inside its bind until the fork has completed or is seen waiting;
 * then, while the child lives, the directory must be free to lock.
 */
static void test_fork_while_listening_leaves_no_lock_to_the_child(void **state)
{
    (void)state;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    printf("SKIP: fork() of a multithreaded process under a sanitizer (see test_session_proc.c)\n");
    skip();
#endif
    LC_TEST_DEADLINE(30);
    make_tmpdir();
    char path[128], url[160];
    sock_path(path, sizeof path, "fork.sock");
    snprintf(url, sizeof url, "unix://%s", path);
    /* a listen first: the library's fork handlers exist before ours, so
     * ours run first in the prepare (POSIX: in reverse order) */
    lc_tlistener *l;
    assert_int_equal(lc__listen(url, &l, NULL), 0);
    lc__listener_close(l);
    static bool registered;
    if (!registered) {
        assert_int_equal(pthread_atfork(fork_prepare, fork_parent, NULL), 0);
        registered = true;
    }
    atomic_store(&fork_begun, 0);
    atomic_store(&fork_done, 0);
    atomic_store(&hold_timed_out, 0);
    atomic_store(&forker_tid, lc_test_gettid());
    atomic_store(&bind_hold, 1);
    listen_arg a = { url, NULL, -1 };
    pthread_t t;
    pthread_create(&t, NULL, listen_fn, &a);
    int64_t end = lc_test_now_us() + 10000000;
    while (!atomic_load(&bind_held) && lc_test_now_us() < end)
        usleep(100);
    assert_true(atomic_load(&bind_held));
    int go[2];
    assert_int_equal(pipe2(go, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* a worker that does not exec: it lives until the parent is done */
        char c;
        close(go[1]);
        while (read(go[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(go[0]);
    pthread_join(t, NULL);
    assert_false(atomic_load(&hold_timed_out));
    assert_int_equal(a.rc, 0);
    /* the child lives: nobody holds the directory's lock now */
    int dfd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    int lrc = flock(dfd, LOCK_EX | LOCK_NB);
    if (lrc != 0)
        fprintf(stderr, "%s: locked by the child forked while a thread was in lc_listen (%s)\n", tmpdir,
                strerror(errno));
    close(dfd);
    int64_t t0 = lc_test_now_us();
    lc__listener_close(a.l);
    int64_t close_ms = (lc_test_now_us() - t0) / 1000;
    close(go[1]);
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    assert_int_equal(lrc, 0);
    assert_true(close_ms < 1000);
    assert_false(exists(path));
    remove_tmpdir();
}

/*
 * A forked child (no exec) listens and closes on a unix path, and forks
 * again, as libchan.h allows. The fork guard of the directory turns was
 * unlocked in the child by a thread id glibc did not take for its writer:
 * it stayed locked there, and the child's first unix listen, or its fork,
 * hung for ever (a review helper: 5 of 5 runs).
 */
static void test_forked_child_listens_and_forks(void **state)
{
    (void)state;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    printf("SKIP: fork() of a multithreaded process under a sanitizer (see test_session_proc.c)\n");
    skip();
#endif
    LC_TEST_DEADLINE(30);
    make_tmpdir();
    char path[128], url[160], cpath[128], curl[160];
    sock_path(path, sizeof path, "parent.sock");
    sock_path(cpath, sizeof cpath, "child.sock");
    snprintf(url, sizeof url, "unix://%s", path);
    snprintf(curl, sizeof curl, "unix://%s", cpath);
    lc_tlistener *l;
    assert_int_equal(lc__listen(url, &l, NULL), 0); /* (the fork handlers exist from here) */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(10); /* a hang ends the child with SIGALRM */
        lc_tlistener *cl;
        if (lc__listen(curl, &cl, NULL) != 0)
            _exit(2);
        lc__listener_close(cl);
        pid_t g = fork();
        if (g < 0)
            _exit(3);
        if (g == 0)
            _exit(0);
        int gs;
        _exit(waitpid(g, &gs, 0) == g && WIFEXITED(gs) && WEXITSTATUS(gs) == 0 ? 0 : 4);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    lc__listener_close(l);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the child %s %d", WIFSIGNALED(status) ? "was killed by signal" : "exited with",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    assert_false(exists(path));
    assert_false(exists(cpath));
    remove_tmpdir();
}

/* The thread of a listen, and its tid once it runs. */
typedef struct tid_listen {
    listen_arg a;
    _Atomic int tid;
} tid_listen;

static void *tid_listen_fn(void *x)
{
    tid_listen *t = x;
    atomic_store(&t->tid, lc_test_gettid());
    return listen_fn(&t->a);
}

/* Whether thread tid sleeps in nanosleep (lock_dir_of's wait between tries
 * for a directory's flock: lc_listen sleeps nowhere else). */
static bool in_nanosleep(int tid)
{
    char path[64], w[64] = "";
    snprintf(path, sizeof path, "/proc/self/task/%d/wchan", tid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    bool got = fgets(w, sizeof w, f) != NULL && strstr(w, "nanosleep") != NULL;
    fclose(f);
    return got;
}

/*
 * A listen in one directory waits for another process's turn there (its
 * flock), ~2 s at most; a listen in another directory meanwhile does not.
 * The fork guard of the turns (a process-wide lock, so that no child is
 * born holding a directory's flock) was held through that wait at first:
 * every lc_listen and lc_listener_close on a unix path, and fork(), waited
 * as long (a review helper: 4.2 s for a listen in a free directory). Here
 * the other process's lock is an flock of our own on the directory (a lock
 * of another open file description).
 */
static void test_listen_elsewhere_does_not_wait_for_a_locked_directory(void **state)
{
    (void)state;
    LC_TEST_DEADLINE(30);
    make_tmpdir();
    char d1[128], d2[128], url1[200], url2[200], p1[160], p2[160];
    sock_path(d1, sizeof d1, "d1");
    sock_path(d2, sizeof d2, "d2");
    assert_int_equal(mkdir(d1, 0700), 0);
    assert_int_equal(mkdir(d2, 0700), 0);
    snprintf(p1, sizeof p1, "%s/a.sock", d1);
    snprintf(p2, sizeof p2, "%s/b.sock", d2);
    snprintf(url1, sizeof url1, "unix://%s", p1);
    snprintf(url2, sizeof url2, "unix://%s", p2);
    int held = open(d1, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(held >= 0);
    assert_int_equal(flock(held, LOCK_EX), 0);
    tid_listen a = { { url1, NULL, -1 }, 0 };
    pthread_t t;
    pthread_create(&t, NULL, tid_listen_fn, &a);
    /* the thread waits for its turn in d1 (between two tries) */
    int64_t end = lc_test_now_us() + 1500000;
    bool seen = false;
    while (!(seen = atomic_load(&a.tid) != 0 && in_nanosleep(atomic_load(&a.tid))) && lc_test_now_us() < end)
        usleep(50);
    if (!seen) {
        close(held);
        pthread_join(t, NULL);
        lc__listener_close(a.a.l);
        fail_msg("the listen in the locked directory was not seen waiting");
    }
    int64_t t0 = lc_test_now_us();
    lc_tlistener *l2;
    assert_int_equal(lc__listen(url2, &l2, NULL), 0);
    lc__listener_close(l2);
    int64_t took = lc_test_now_us() - t0;
    close(held); /* (the waiting listen goes on) */
    pthread_join(t, NULL);
    assert_int_equal(a.a.rc, 0);
    lc__listener_close(a.a.l);
    if (took > 500000)
        fail_msg("lc_listen + lc_listener_close in a free directory took %lld ms beside a listen "
                 "waiting for another's turn elsewhere",
                 (long long)(took / 1000));
    assert_false(exists(p1));
    assert_false(exists(p2));
    assert_int_equal(rmdir(d1), 0);
    assert_int_equal(rmdir(d2), 0);
    remove_tmpdir();
}

static void test_unix_stale_socket_file_is_replaced(void **state)
{
    LC_TEST_DEADLINE(10);
    make_tmpdir();
    char path[128], url[160];
    sock_path(path, sizeof path, "stale.sock");
    snprintf(url, sizeof url, "unix://%s", path);
    /* a crashed server: the file stays, nobody listens */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    assert_true(exists(path));
    assert_int_not_equal(lc__unix_listening(path), 1);
    lc_conn *c;
    assert_int_equal(lc__dial(url, 1000, &c, NULL), -ECONNREFUSED);

    lc_tlistener *l;
    lc_conn *s;
    connect_pair(url, &l, &c, &s);
    exchange(c, s);
    lc__conn_close(c);
    lc__conn_close(s);
    lc__listener_close(l);
    assert_false(exists(path));
    remove_tmpdir();
}

static void test_unix_live_socket_and_other_files_are_kept(void **state)
{
    LC_TEST_DEADLINE(10);
    make_tmpdir();
    char path[128], url[160];
    sock_path(path, sizeof path, "live.sock");
    snprintf(url, sizeof url, "unix://%s", path);
    lc_tlistener *l, *l2;
    lc_error err = {0};
    assert_int_equal(lc__listen(url, &l, NULL), 0);
    assert_int_equal(lc__listen(url, &l2, &err), -EADDRINUSE);
    assert_non_null(strstr(err.text, "listen"));
    lc_conn *c, *s;
    if (lc__unix_listening(path) == 1) {
        /* the failed listen asked the kernel, without connecting: nothing
         * is queued (its probing connect was accepted by the live listener
         * as a client that left at once) */
        assert_int_equal(lc__accept(l, 0, &s), LC_ETIMEDOUT);
    } else {
        /* no sock_diag here: it found it alive by connecting, and that
         * probe is queued and reads as an immediate end of stream */
        fprintf(stderr, "(no sock_diag for unix sockets here: lc__listen probes by connecting)\n");
        char b;
        assert_int_equal(lc__accept(l, 0, &s), 0);
        assert_int_equal(read_all(s, &b, 1), LC_EOF);
        lc__conn_close(s);
    }
    /* the first listener still works */
    assert_int_equal(lc__dial(url, 1000, &c, NULL), 0);
    assert_int_equal(lc__accept(l, 1000, &s), 0);
    exchange(c, s);
    lc__conn_close(c);
    lc__conn_close(s);
    lc__listener_close(l);

    /* a regular file is never removed */
    char fpath[128], furl[160];
    sock_path(fpath, sizeof fpath, "plain-file");
    snprintf(furl, sizeof furl, "unix://%s", fpath);
    int fd = open(fpath, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    lc_error ferr = {0};
    assert_int_equal(lc__listen(furl, &l, &ferr), -ENOTSOCK); /* not "in use": in the way */
    assert_non_null(strstr(ferr.text, "exists and is not a socket"));
    assert_true(exists(fpath));
    unlink(fpath);

    /* close removes only its own file: not one that replaced it */
    assert_int_equal(lc__listen(url, &l, NULL), 0);
    unlink(path);
    assert_int_equal(lc__listen(url, &l2, NULL), 0);
    lc__listener_close(l);
    assert_true(exists(path));
    lc__listener_close(l2);
    assert_false(exists(path));
    remove_tmpdir();
}

static void test_unix_dial_errors_and_full_backlog_timeout(void **state)
{
    LC_TEST_DEADLINE(20);
    make_tmpdir();
    char path[128], url[160];
    sock_path(path, sizeof path, "none.sock");
    snprintf(url, sizeof url, "unix://%s", path);
    lc_conn *c;
    assert_int_equal(lc__dial(url, 1000, &c, NULL), -ENOENT);

    /* a listener with backlog 0 that never accepts: fill its queue */
    sock_path(path, sizeof path, "full.sock");
    snprintf(url, sizeof url, "unix://%s", path);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 0), 0);
    int filler[8], nfill = 0;
    for (; nfill < 8; nfill++) {
        filler[nfill] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (connect(filler[nfill], (struct sockaddr *)&sa, sizeof sa) != 0) {
            assert_int_equal(errno, EAGAIN);
            close(filler[nfill]);
            break;
        }
    }
    assert_true(nfill < 8);
    assert_int_equal(lc__dial(url, 0, &c, NULL), LC_ETIMEDOUT);
    int64_t t0 = lc_test_now_us();
    assert_int_equal(lc__dial(url, 150, &c, NULL), LC_ETIMEDOUT);
    int64_t took = lc_test_now_us() - t0;
    assert_true(took >= 140000 && took < 3000000);
    for (int i = 0; i < nfill; i++)
        close(filler[i]);
    close(lfd);
    unlink(path);
    remove_tmpdir();
}

/* ---- fd passing ----------------------------------------------------------- */

static void unix_pair(lc_tlistener **l, lc_conn **c, lc_conn **s)
{
    char url[64];
    snprintf(url, sizeof url, "unix://@lc-fdpass-%d", (int)getpid());
    connect_pair(url, l, c, s);
}

static void close_pair(lc_tlistener *l, lc_conn *c, lc_conn *s)
{
    lc__conn_close(c);
    lc__conn_close(s);
    lc__listener_close(l);
}

/* Dials url, which l listens on, exchanges bytes both ways, closes both ends. */
static void dial_accept_exchange(lc_tlistener *l, const char *url)
{
    lc_conn *c, *s;
    assert_int_equal(lc__dial(url, 2000, &c, NULL), 0);
    assert_int_equal(lc__accept(l, 2000, &s), 0);
    exchange(c, s);
    lc__conn_close(c);
    lc__conn_close(s);
}

static void test_sendfds_passes_a_pipe(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    unix_pair(&l, &c, &s);
    int p1[2], p2[2];
    assert_int_equal(pipe2(p1, O_CLOEXEC), 0);
    assert_int_equal(pipe2(p2, O_CLOEXEC), 0);
    int send[2] = {p1[1], p2[1]};
    struct iovec iov = {"F", 1};
    assert_int_equal(lc__conn_sendfds(c, &iov, 1, send, 2), 1);
    /* the sender keeps its fds: close the write ends here */
    close(p1[1]);
    close(p2[1]);

    wait_fd(lc__conn_fd(s), POLLIN);
    char b;
    struct iovec r = {&b, 1};
    int got[LC_TRANSPORT_MAX_FDS];
    size_t n = LC_TRANSPORT_MAX_FDS;
    assert_int_equal(lc__conn_recvfds(s, &r, 1, got, &n), 1);
    assert_int_equal(b, 'F');
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++)
        assert_true(fcntl(got[i], F_GETFD) & FD_CLOEXEC);
    assert_int_equal(write(got[0], "one", 3), 3);
    assert_int_equal(write(got[1], "two", 3), 3);
    close(got[0]);
    close(got[1]);
    char buf[8];
    assert_int_equal(read(p1[0], buf, sizeof buf), 3);
    assert_memory_equal(buf, "one", 3);
    assert_int_equal(read(p1[0], buf, sizeof buf), 0); /* every write end closed */
    assert_int_equal(read(p2[0], buf, sizeof buf), 3);
    assert_memory_equal(buf, "two", 3);
    close(p1[0]);
    close(p2[0]);

    /* recvfds with nothing attached: plain data, zero fds */
    assert_int_equal(write_all(c, "plain", 5), 0);
    wait_fd(lc__conn_fd(s), POLLIN);
    char pb[8];
    struct iovec pr = {pb, sizeof pb};
    n = 4;
    assert_int_equal(lc__conn_recvfds(s, &pr, 1, got, &n), 5);
    assert_int_equal(n, 0);
    close_pair(l, c, s);
}

/* fds arrive no later than the bytes sent with them: an ordered queue. */
static void test_fds_arrive_with_their_bytes_in_order(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    unix_pair(&l, &c, &s);
    enum { ROUNDS = 20 };
    for (int i = 0; i < ROUNDS; i++) {
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        char tag = (char)('a' + i);
        assert_int_equal(write(p[1], &tag, 1), 1);
        char payload[100];
        memset(payload, tag, sizeof payload);
        struct iovec iov = {payload, sizeof payload};
        assert_int_equal(lc__conn_sendfds(c, &iov, 1, &p[0], 1), (ssize_t)sizeof payload);
        close(p[0]);
        close(p[1]);
    }
    int queue[ROUNDS];
    size_t nq = 0, bytes = 0;
    char buf[333];
    while (bytes < ROUNDS * 100) {
        struct iovec r = {buf, sizeof buf};
        int got[4];
        size_t n = 4;
        ssize_t k = lc__conn_recvfds(s, &r, 1, got, &n);
        if (k == -EAGAIN) {
            wait_fd(lc__conn_fd(s), POLLIN);
            continue;
        }
        assert_true(k > 0);
        for (size_t i = 0; i < n; i++)
            queue[nq++] = got[i];
        bytes += (size_t)k;
        /* every byte received so far was sent with an fd already queued */
        assert_true(nq * 100 >= bytes);
    }
    assert_int_equal(nq, ROUNDS);
    for (int i = 0; i < ROUNDS; i++) {
        char tag;
        assert_int_equal(read(queue[i], &tag, 1), 1);
        assert_int_equal(tag, 'a' + i);
        close(queue[i]);
    }
    close_pair(l, c, s);
}

static void test_recvfds_truncated_closes_what_arrived(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    unix_pair(&l, &c, &s);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    int three[3] = {p[0], p[1], p[0]};
    struct iovec iov = {"T", 1};
    assert_int_equal(lc__conn_sendfds(c, &iov, 1, three, 3), 1);
    wait_fd(lc__conn_fd(s), POLLIN);
    int before = lc_test_count_fds();
    char b;
    struct iovec r = {&b, 1};
    int got[1] = {-1};
    size_t n = 1;
    assert_int_equal(lc__conn_recvfds(s, &r, 1, got, &n), -EMSGSIZE);
    assert_int_equal(n, 0);
    assert_int_equal(lc_test_count_fds(), before);
    /* our pipe is intact: the write end we hold is the only one */
    close(p[1]);
    char x;
    assert_int_equal(read(p[0], &x, 1), 0);
    close(p[0]);
    close_pair(l, c, s);
}

static void test_readv_never_installs_unwanted_fds(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    unix_pair(&l, &c, &s);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    for (int i = 0; i < 5; i++) {
        struct iovec iov = {"U", 1};
        assert_int_equal(lc__conn_sendfds(c, &iov, 1, p, 2), 1);
    }
    close(p[0]);
    close(p[1]);
    int before = lc_test_count_fds();
    char buf[5];
    assert_int_equal(read_all(s, buf, 5), 0);
    assert_memory_equal(buf, "UUUUU", 5);
    assert_int_equal(lc_test_count_fds(), before);
    /* recvfds with capacity 0 behaves the same */
    struct iovec iov = {"V", 1};
    int own[1] = {lc__conn_fd(c)};
    assert_int_equal(lc__conn_sendfds(c, &iov, 1, own, 1), 1);
    wait_fd(lc__conn_fd(s), POLLIN);
    size_t n = 0;
    struct iovec r = {buf, 1};
    assert_int_equal(lc__conn_recvfds(s, &r, 1, NULL, &n), 1);
    assert_int_equal(n, 0);
    assert_int_equal(lc_test_count_fds(), before);
    close_pair(l, c, s);
}

static void test_sendfds_argument_errors(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    unix_pair(&l, &c, &s);
    int fds[LC_TRANSPORT_MAX_FDS + 1] = {0};
    struct iovec one = {"x", 1}, none = {"", 0};
    assert_int_equal(lc__conn_sendfds(c, &none, 1, fds, 1), LC_EINVAL);
    assert_int_equal(lc__conn_sendfds(c, &one, 1, fds, 0), LC_EINVAL);
    assert_int_equal(lc__conn_sendfds(c, &one, 1, fds, LC_TRANSPORT_MAX_FDS + 1), LC_EINVAL);
    int bad = 100000;
    assert_int_equal(lc__conn_sendfds(c, &one, 1, &bad, 1), LC_EBADF);
    close_pair(l, c, s);

    /* tcp has no fd passing */
    connect_pair("tcp://127.0.0.1:0", &l, &c, &s);
    assert_int_equal(lc__conn_sendfds(c, &one, 1, fds, 1), LC_ENOTSUP);
    size_t n = 1;
    struct iovec r = {fds, 1};
    assert_int_equal(lc__conn_recvfds(c, &r, 1, fds, &n), LC_ENOTSUP);
    close_pair(l, c, s);
}

/* ---- tcp ------------------------------------------------------------------ */

static void test_tcp_port0_dial_accept(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    connect_pair("tcp://127.0.0.1:0", &l, &c, &s);
    char url[64];
    assert_int_equal(lc__listener_url(l, url, sizeof url), 0);
    assert_true(strncmp(url, "tcp://127.0.0.1:", 16) == 0);
    assert_true(atoi(url + 16) > 0);
    assert_string_equal(lc__conn_scheme(s), "tcp");
    int fds[2] = {lc__conn_fd(c), lc__conn_fd(s)};
    for (int i = 0; i < 2; i++) {
        check_fd_flags(fds[i]);
        int v = 0;
        socklen_t sl = sizeof v;
        assert_int_equal(getsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &v, &sl), 0);
        assert_true(v != 0);
    }
    exchange(c, s);
    exchange(s, c);
    close_pair(l, c, s);
}

static void test_tcp_ipv6_and_names(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    int rc = lc__listen("tcp://[::1]:0", &l, NULL);
    if (rc == 0) {
        char url[64];
        assert_int_equal(lc__listener_url(l, url, sizeof url), 0);
        assert_true(strncmp(url, "tcp://[::1]:", 12) == 0);
        assert_int_equal(lc__dial(url, 2000, &c, NULL), 0);
        assert_int_equal(lc__accept(l, 2000, &s), 0);
        exchange(c, s);
        close_pair(l, c, s);
    } else {
        print_message("no IPv6 loopback here (%s): skipped that part\n", lc_strerror(rc));
    }
    /* a name: localhost may resolve to ::1 first; dial tries every address */
    assert_int_equal(lc__listen("tcp://127.0.0.1:0", &l, NULL), 0);
    char url[64], named[80];
    assert_int_equal(lc__listener_url(l, url, sizeof url), 0);
    snprintf(named, sizeof named, "tcp://localhost:%s", strrchr(url, ':') + 1);
    assert_int_equal(lc__dial(named, 2000, &c, NULL), 0);
    assert_int_equal(lc__accept(l, 2000, &s), 0);
    exchange(c, s);
    close_pair(l, c, s);
    /* the wildcard listener, dialled by its port only */
    assert_int_equal(lc__listen("tcp://:0", &l, NULL), 0);
    assert_int_equal(lc__listener_url(l, url, sizeof url), 0);
    snprintf(named, sizeof named, "tcp://:%s", strrchr(url, ':') + 1);
    assert_int_equal(lc__dial(named, 2000, &c, NULL), 0);
    assert_int_equal(lc__accept(l, 2000, &s), 0);
    exchange(c, s);
    lc__conn_close(c);
    lc__conn_close(s);
    /* ... takes IPv4 and, where the machine has IPv6 loopback, IPv6: it
     * listened on 0.0.0.0 only once (the resolver's first entry) */
    const char *port = strrchr(url, ':') + 1;
    snprintf(named, sizeof named, "tcp://127.0.0.1:%s", port);
    dial_accept_exchange(l, named);
    int v6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 lo6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have_v6 = v6 >= 0 && bind(v6, (struct sockaddr *)&lo6, sizeof lo6) == 0;
    if (v6 >= 0)
        close(v6);
    if (have_v6) {
        assert_true(strncmp(url, "tcp://[::]:", 11) == 0);
        snprintf(named, sizeof named, "tcp://[::1]:%s", port);
        dial_accept_exchange(l, named);
    } else {
        fprintf(stderr, "no IPv6 loopback here: the wildcard's IPv6 half is not tested\n");
    }
    lc__listener_close(l);
}

/*
 * A link-local IPv6 listener's URL names its interface: without the zone
 * ("%eth0") it could not be dialed (connect: EINVAL; a review helper).
 * Skipped where no interface has a link-local address.
 */
static void test_tcp_link_local_url_keeps_the_zone(void **state)
{
    (void)state;
    LC_TEST_DEADLINE(10);
    struct ifaddrs *ifs;
    assert_int_equal(getifaddrs(&ifs), 0);
    char host[INET6_ADDRSTRLEN] = "", ifname[IF_NAMESIZE] = "";
    for (struct ifaddrs *i = ifs; i != NULL && host[0] == '\0'; i = i->ifa_next) {
        if (i->ifa_addr == NULL || i->ifa_addr->sa_family != AF_INET6 || !(i->ifa_flags & IFF_UP))
            continue;
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)i->ifa_addr;
        if (!IN6_IS_ADDR_LINKLOCAL(&a6->sin6_addr) || strlen(i->ifa_name) >= sizeof ifname)
            continue;
        inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof host);
        strcpy(ifname, i->ifa_name);
    }
    freeifaddrs(ifs);
    if (host[0] == '\0') {
        printf("SKIP: no link-local IPv6 address on this machine\n");
        skip();
    }
    char url[128], got[128], zone[IF_NAMESIZE + 4];
    snprintf(url, sizeof url, "tcp://[%s%%%s]:0", host, ifname);
    lc_tlistener *l;
    lc_error err = { 0 };
    int rc = lc__listen(url, &l, &err);
    if (rc == -EADDRNOTAVAIL) {
        /* (still tentative: duplicate address detection not done) */
        printf("SKIP: %s: %s\n", url, err.text);
        skip();
    }
    if (rc != 0)
        fail_msg("listen %s: %s", url, err.text);
    assert_int_equal(lc__listener_url(l, got, sizeof got), 0);
    snprintf(zone, sizeof zone, "%%%s]:", ifname);
    if (strstr(got, zone) == NULL)
        fprintf(stderr, "lc_listener_url of %s: %s (no zone)\n", url, got);
    lc_conn *c, *s;
    rc = lc__dial(got, 2000, &c, &err);
    if (rc != 0)
        fprintf(stderr, "dial %s: %s\n", got, err.text);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(got, zone));
    assert_int_equal(lc__accept(l, 2000, &s), 0);
    exchange(c, s);
    close_pair(l, c, s);
    /* too short for the zone: LC_ERANGE, as for any URL that does not fit */
    assert_int_equal(lc__listen(url, &l, NULL), 0);
    assert_int_equal(lc__listener_url(l, got, sizeof got), 0);
    assert_int_equal(lc__listener_url(l, got, strlen(got)), LC_ERANGE);
    lc__listener_close(l);
}

static void test_accept_timeout(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *s;
    assert_int_equal(lc__listen("tcp://127.0.0.1:0", &l, NULL), 0);
    assert_int_equal(lc__accept(l, 0, &s), LC_ETIMEDOUT);
    int64_t t0 = lc_test_now_us();
    assert_int_equal(lc__accept(l, 80, &s), LC_ETIMEDOUT);
    int64_t took = lc_test_now_us() - t0;
    assert_true(took >= 75000 && took < 2000000);
    lc__listener_close(l);
}

static void test_tcp_dial_closed_port_is_refused_quickly(void **state)
{
    LC_TEST_DEADLINE(10);
    /* a port that is bound (so nobody else takes it) but not listening */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    lc_conn *c;
    lc_error err = {0};
    int64_t t0 = lc_test_now_us();
    assert_int_equal(lc__dial(url, 5000, &c, &err), -ECONNREFUSED);
    assert_true(lc_test_now_us() - t0 < 1000000);
    assert_non_null(strstr(err.text, "refused"));
    close(fd);
}

/* A tcp listener whose accept queue is full drops new SYNs: the dial can
 * only end by its timeout. */
static void test_tcp_dial_timeout_on_full_backlog(void **state)
{
    LC_TEST_DEADLINE(20);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 0), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    /* fill the queue: connections that complete and are never accepted */
    lc_conn *fill[4];
    int nfill = 0;
    for (; nfill < 4; nfill++)
        if (lc__dial(url, 300, &fill[nfill], NULL) != 0)
            break;
    assert_true(nfill >= 1 && nfill < 4);
    lc_conn *c;
    int64_t t0 = lc_test_now_us();
    assert_int_equal(lc__dial(url, 200, &c, NULL), LC_ETIMEDOUT);
    int64_t took = lc_test_now_us() - t0;
    assert_true(took >= 190000 && took < 3000000);
    for (int i = 0; i < nfill; i++)
        lc__conn_close(fill[i]);
    close(lfd);
}

static void test_write_to_closed_peer_is_epipe_not_sigpipe(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_tlistener *l;
    lc_conn *c, *s;
    unix_pair(&l, &c, &s);
    lc__conn_close(s);
    struct iovec iov = {"x", 1};
    ssize_t rc = lc__conn_writev(c, &iov, 1);
    assert_true(rc == -EPIPE || rc == -ECONNRESET);
    lc__conn_close(c);
    lc__listener_close(l);

    connect_pair("tcp://127.0.0.1:0", &l, &c, &s);
    lc__conn_close(s);
    char big[4096] = {0};
    struct iovec b = {big, sizeof big};
    do {
        rc = lc__conn_writev(c, &b, 1);
        if (rc == -EAGAIN)
            wait_fd(lc__conn_fd(c), POLLOUT);
    } while (rc > 0 || rc == -EAGAIN);
    assert_true(rc == -EPIPE || rc == -ECONNRESET);
    lc__conn_close(c);
    lc__listener_close(l);
}

/* ---- many connections ----------------------------------------------------- */

enum { NCONN = 100, NACCEPTORS = 2 };

typedef struct many {
    char url[160];
    lc_tlistener *l;
    _Atomic int errors;
    _Atomic int accepted;
    _Atomic int echoed;
} many;

typedef struct client_arg {
    many *m;
    uint32_t id;
} client_arg;

static void *client(void *p)
{
    client_arg *a = p;
    lc_conn *c;
    if (lc__dial(a->m->url, 10000, &c, NULL) != 0) {
        atomic_fetch_add(&a->m->errors, 1);
        return NULL;
    }
    uint32_t back = 0;
    if (write_all(c, &a->id, 4) != 0 || read_all(c, &back, 4) != 0 || back != a->id * 3 + 1)
        atomic_fetch_add(&a->m->errors, 1);
    else
        atomic_fetch_add(&a->m->echoed, 1);
    lc__conn_close(c);
    return NULL;
}

static void *acceptor(void *p)
{
    many *m = p;
    while (atomic_fetch_add(&m->accepted, 1) < NCONN) {
        lc_conn *s;
        uint32_t id;
        if (lc__accept(m->l, 10000, &s) != 0) {
            atomic_fetch_add(&m->errors, 1);
            continue;
        }
        if (read_all(s, &id, 4) != 0) {
            atomic_fetch_add(&m->errors, 1);
        } else {
            id = id * 3 + 1;
            if (write_all(s, &id, 4) != 0)
                atomic_fetch_add(&m->errors, 1);
        }
        lc__conn_close(s);
    }
    return NULL;
}

static void run_many(const char *listen_url)
{
    many m = {0};
    assert_int_equal(lc__listen(listen_url, &m.l, NULL), 0);
    assert_int_equal(lc__listener_url(m.l, m.url, sizeof m.url), 0);
    pthread_t acc[NACCEPTORS], cl[NCONN];
    client_arg args[NCONN];
    for (int i = 0; i < NACCEPTORS; i++)
        assert_int_equal(pthread_create(&acc[i], NULL, acceptor, &m), 0);
    for (int i = 0; i < NCONN; i++) {
        args[i] = (client_arg){&m, (uint32_t)i};
        assert_int_equal(pthread_create(&cl[i], NULL, client, &args[i]), 0);
    }
    for (int i = 0; i < NCONN; i++)
        pthread_join(cl[i], NULL);
    for (int i = 0; i < NACCEPTORS; i++)
        pthread_join(acc[i], NULL);
    lc__listener_close(m.l);
    assert_int_equal(atomic_load(&m.errors), 0);
    assert_int_equal(atomic_load(&m.echoed), NCONN);
}

static void test_many_concurrent_connections(void **state)
{
    LC_TEST_DEADLINE(60);
    run_many("tcp://127.0.0.1:0");
    make_tmpdir();
    char url[160];
    snprintf(url, sizeof url, "unix://%s/many.sock", tmpdir);
    run_many(url);
    remove_tmpdir();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_url_parse_accepts_every_form, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_url_parse_errors_say_why, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unresolvable_host_is_named, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_dial_timeout_covers_the_name_lookup, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_stuck_lookups_are_shared_and_bounded, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_child_looks_up_a_name_the_parent_was_looking_up, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unix_dial_accept_and_cleanup, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unix_relative_and_abstract, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unix_relative_path_removed_after_chdir, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fork_while_listening_leaves_no_lock_to_the_child, lc_test_setup,
                                        lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_listen_elsewhere_does_not_wait_for_a_locked_directory, lc_test_setup,
                                        lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_forked_child_listens_and_forks, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unix_stale_socket_file_is_replaced, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unix_live_socket_and_other_files_are_kept, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unix_dial_errors_and_full_backlog_timeout, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_sendfds_passes_a_pipe, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fds_arrive_with_their_bytes_in_order, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_recvfds_truncated_closes_what_arrived, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_readv_never_installs_unwanted_fds, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_sendfds_argument_errors, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_port0_dial_accept, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_ipv6_and_names, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_link_local_url_keeps_the_zone, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_accept_timeout, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_dial_closed_port_is_refused_quickly, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_tcp_dial_timeout_on_full_backlog, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_write_to_closed_peer_is_epipe_not_sigpipe, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_many_concurrent_connections, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

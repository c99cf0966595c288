/*
 * peer_proc.c - a separate process for the session tests (test_session_proc).
 * Started with posix_spawn; it prints one line on stdout (its URL, or
 * "ready") when the test may go on, and exits 0 when its work ends cleanly.
 * It arms alarm(60) so that it never outlives a failed test for long.
 *
 *   peer_proc echo URL           listens on URL, prints the bound URL, accepts one
 *                                session; every message {Value, Ret: S, Feed?: R}
 *                                on any channel gets {Echo: Value, Who: "B",
 *                                Sum: sum of the N's read from Feed} on Ret, which
 *                                is then closed. Exits when the session ends.
 *   peer_proc proxy URL UPSTREAM dials UPSTREAM, listens on URL, prints the bound
 *                                URL, accepts one session; every channel the
 *                                client opens is mirrored by one opened upstream,
 *                                and every message is forwarded as is (its channel
 *                                ends included); the end of a channel is
 *                                forwarded too. Exits when the client session ends.
 *   peer_proc dial-at-fd-limit URL  lowers RLIMIT_NOFILE to leave room for the
 *                                dial's socket only, so the session cannot start
 *                                (no fd for the engine); prints "refused: <err>"
 *                                when lc_dial fails cleanly, then raises the limit
 *                                again and dials URL once more, which must work.
 *   peer_proc pass-fds-limited URL N  as an unprivileged user (uid 65534 when
 *                                run as root) with RLIMIT_NOFILE 512, dials URL and
 *                                waits for a message on the first channel the
 *                                test opens, then sends N messages {I: i, F: a
 *                                pipe's read end}
 *                                on one channel (fd passing); prints "blocked" the
 *                                first time a send must wait, goes on with
 *                                blocking sends, closes the session, and prints
 *                                "sent N" when every send and the close worked.
 *   peer_proc partial-frame URL  raw SPDY on a unix socket: opens channel 1, sends
 *                                {N: 1}, then a DATA frame header announcing 100
 *                                bytes followed by 10 of them; prints "ready";
 *                                waits to be killed.
 *   peer_proc partial-msg URL    same, but the last DATA frame is whole and holds
 *                                the first half of a message.
 *   peer_proc flood URL          dials URL, opens a channel and sends {Seq: i,
 *                                Pad: 4 KiB} for i = 0, 1, ... forever; prints
 *                                "ready" after the first one; waits to be killed.
 *   peer_proc exit-live URL      dials URL; a thread receives on the first channel
 *                                the test opens, another sends on one of its own,
 *                                both without end; after 200 messages each way it
 *                                prints "ready" and calls exit(0) with all of it
 *                                still running (as C programs do).
 */
#include <pthread.h>
#include <sched.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "libchan.h"
#include "spdy/spdy.h"

#define DIE(...)                                   \
    do {                                           \
        fprintf(stderr, "peer_proc: " __VA_ARGS__); \
        fprintf(stderr, "\n");                     \
        exit(2);                                   \
    } while (0)

static void say(const char *line)
{
    printf("%s\n", line);
    fflush(stdout);
}

/* ---- echo -------------------------------------------------------------------- */

static void *echo_channel(void *x)
{
    lc_receiver *r = x;
    lc_msg *m;
    int rc;
    while ((rc = lc_recv(r, &m, -1)) == 0) {
        int64_t v;
        lc_sender *ret;
        lc_receiver *feed = NULL;
        if (lc_unpack(m, "{s:I, s:S, s?R}", "Value", &v, "Ret", &ret, "Feed", &feed) != 0)
            DIE("echo: unexpected message");
        lc_msg_free(m);
        int64_t sum = 0;
        if (feed != NULL) {
            lc_msg *fm;
            while ((rc = lc_recv(feed, &fm, 10000)) == 0) {
                int64_t n;
                if (lc_unpack(fm, "{s:I}", "N", &n) != 0)
                    DIE("echo: bad feed message");
                sum += n;
                lc_msg_free(fm);
            }
            if (rc != LC_EOF)
                DIE("echo: feed ended with %s", lc_strerror(rc));
            lc_receiver_release(feed);
        }
        lc_msg *rep = lc_pack("{s:I, s:s, s:I}", "Echo", v, "Who", "B", "Sum", sum);
        if (lc_send(ret, rep, 10000) != 0)
            DIE("echo: reply failed");
        lc_close(ret);
        lc_sender_release(ret);
    }
    if (rc != LC_EOF && rc != LC_ESESSION)
        DIE("echo: channel ended with %s", lc_strerror(rc));
    lc_receiver_release(r);
    return NULL;
}

/* Serves every channel the peer opens, one thread each, until the session ends. */
typedef void *(*chan_fn)(void *);

static void serve_channels(lc_session *s, chan_fn fn, void *(*mkarg)(lc_receiver *, void *), void *ctx)
{
    pthread_t th[256];
    int n = 0;
    for (;;) {
        lc_receiver *r;
        int rc = lc_session_receiver(s, &r, -1);
        if (rc == LC_ESESSION)
            break;
        if (rc != 0)
            DIE("lc_session_receiver: %s", lc_strerror(rc));
        if (n == 256)
            DIE("too many channels");
        if (pthread_create(&th[n++], NULL, fn, mkarg ? mkarg(r, ctx) : r) != 0)
            DIE("pthread_create");
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static int run_echo(const char *url)
{
    lc_listener *l;
    lc_error err = { 0 };
    if (lc_listen(url, NULL, &l, &err) != 0)
        DIE("listen %s: %s", url, err.text);
    char bound[256];
    lc_listener_url(l, bound, sizeof bound);
    say(bound);
    lc_session *s;
    int rc = lc_accept(l, &s, 20000);
    if (rc != 0)
        DIE("accept: %s", lc_strerror(rc));
    lc_listener_close(l);
    serve_channels(s, echo_channel, NULL, NULL);
    lc_session_free(s);
    return 0;
}

/* ---- proxy ------------------------------------------------------------------- */

typedef struct fwd {
    lc_receiver *from;
    lc_session *up;
} fwd;

static void *fwd_arg(lc_receiver *r, void *ctx)
{
    fwd *f = malloc(sizeof *f);
    if (f == NULL)
        DIE("malloc");
    f->from = r;
    f->up = ctx;
    return f;
}

static void *fwd_channel(void *x)
{
    fwd *f = x;
    lc_sender *to;
    int rc = lc_session_sender(f->up, &to);
    if (rc != 0)
        DIE("proxy: upstream channel: %s", lc_strerror(rc));
    lc_msg *m;
    while ((rc = lc_recv(f->from, &m, -1)) == 0) {
        /* the message goes on as is: a Sender or Receiver of the client's
         * session in it is forwarded through the upstream session */
        if ((rc = lc_send(to, m, 10000)) != 0)
            DIE("proxy: forward: %s", lc_strerror(rc));
    }
    if (rc != LC_EOF && rc != LC_ESESSION)
        DIE("proxy: channel ended with %s", lc_strerror(rc));
    lc_close(to);
    lc_sender_release(to);
    lc_receiver_release(f->from);
    free(f);
    return NULL;
}

static int run_proxy(const char *url, const char *upstream)
{
    lc_error err = { 0 };
    lc_session *up;
    int rc = lc_dial(upstream, NULL, &up, &err);
    if (rc != 0)
        DIE("dial %s: %s %s", upstream, lc_strerror(rc), err.text);
    lc_listener *l;
    if (lc_listen(url, NULL, &l, &err) != 0)
        DIE("listen %s: %s", url, err.text);
    char bound[256];
    lc_listener_url(l, bound, sizeof bound);
    say(bound);
    lc_session *down;
    rc = lc_accept(l, &down, 20000);
    if (rc != 0)
        DIE("accept: %s", lc_strerror(rc));
    lc_listener_close(l);
    serve_channels(down, fwd_channel, fwd_arg, up);
    rc = lc_session_close(up, 10000);
    if (rc != 0)
        DIE("close upstream: %s", lc_strerror(rc));
    lc_session_free(up);
    lc_session_free(down);
    return 0;
}

/* ---- raw peers that die mid-way ---------------------------------------------- */

static int unix_connect(const char *url)
{
    if (strncmp(url, "unix://", 7) != 0)
        DIE("not a unix url: %s", url);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof a.sun_path, "%s", url + 7);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        DIE("connect %s", url);
    return fd;
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            DIE("write");
        p += w;
        n -= (size_t)w;
    }
}

static int run_partial(const char *url, bool cut_frame)
{
    int fd = unix_connect(url);
    lc_spdy_deflater z;
    lc__spdy_deflater_init(&z, 6);
    lc_buf b;
    lc__buf_init(&b);
    lc_spdy_header h = { "libchan-ref", 11, "2", 1 };
    static const uint8_t n1[] = { 0x81, 0xa1, 'N', 0x01 };
    /* {"Pad": "xxxxxxxxxxxxxxxxxxxx"} cut in the middle */
    static const uint8_t half[] = { 0x81, 0xa3, 'P', 'a', 'd', 0xb4, 'x', 'x', 'x', 'x' };
    if (lc__spdy_put_syn_stream(&b, &z, 1, 0, 0, 0, 0, &h, 1) != 0 ||
        lc__spdy_put_data(&b, 1, 0, n1, sizeof n1) != 0)
        DIE("encode");
    if (cut_frame) {
        uint8_t hd[LC_SPDY_HEADER_LEN];
        lc__spdy_data_header(hd, 1, 0, 100);
        if (lc__buf_append(&b, hd, sizeof hd) != 0 || lc__buf_append(&b, half, sizeof half) != 0)
            DIE("encode");
    } else if (lc__spdy_put_data(&b, 1, 0, half, sizeof half) != 0) {
        DIE("encode");
    }
    write_all(fd, b.data, b.len);
    /* read what the session answers (SYN_REPLY for stream 1) so that nothing
     * is left unread when we die: the carrier then ends with a plain EOF,
     * not a reset */
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, NULL);
    bool replied = false;
    while (!replied) {
        uint8_t in[512];
        ssize_t n = read(fd, in, sizeof in);
        if (n <= 0)
            DIE("read");
        size_t off = 0;
        while (off < (size_t)n) {
            lc_spdy_frame f;
            size_t used;
            int rc = lc__spdy_decode(&d, in + off, (size_t)n - off, &used, &f);
            if (rc < 0)
                DIE("decode");
            off += used;
            if (rc == 0)
                break;
            if (f.type == LC_SPDY_SYN_REPLY && f.stream_id == 1)
                replied = true;
        }
    }
    say("ready");
    for (;;)
        pause();
}

static int run_flood(const char *url)
{
    lc_error err = { 0 };
    lc_session *s;
    int rc = lc_dial(url, NULL, &s, &err);
    if (rc != 0)
        DIE("dial %s: %s", url, err.text);
    lc_sender *ch;
    if (lc_session_sender(s, &ch) != 0)
        DIE("channel");
    static char pad[4097];
    memset(pad, 'p', sizeof pad - 1);
    for (int64_t i = 0;; i++) {
        if ((rc = lc_send(ch, lc_pack("{s:I, s:s}", "Seq", i, "Pad", pad), -1)) != 0)
            DIE("flood: send: %s", lc_strerror(rc));
        if (i == 0)
            say("ready");
    }
}

typedef struct {
    lc_session *s;
    _Atomic long got, sent;
} live_arg;

static void *live_receive(void *x)
{
    live_arg *a = x;
    lc_receiver *r;
    if (lc_session_receiver(a->s, &r, 10000) != 0)
        DIE("exit-live: no channel");
    for (;;) {
        lc_msg *m;
        int rc = lc_recv(r, &m, 50);
        if (rc == 0) {
            lc_msg_free(m);
            a->got++;
        } else if (rc != LC_ETIMEDOUT) {
            DIE("exit-live: recv: %s", lc_strerror(rc));
        }
    }
    return NULL;
}

static void *live_send(void *x)
{
    live_arg *a = x;
    lc_sender *ch;
    if (lc_session_sender(a->s, &ch) != 0)
        DIE("exit-live: channel");
    for (int64_t i = 0;; i++) {
        int rc = lc_send(ch, lc_pack("{s:I}", "Seq", i), 1000);
        if (rc != 0 && rc != LC_ETIMEDOUT)
            DIE("exit-live: send: %s", lc_strerror(rc));
        a->sent++;
    }
    return NULL;
}

static int run_exit_live(const char *url)
{
    lc_error err = { 0 };
    static live_arg a;
    if (lc_dial(url, NULL, &a.s, &err) != 0)
        DIE("dial %s: %s", url, err.text);
    pthread_t t1, t2;
    pthread_create(&t1, NULL, live_receive, &a);
    pthread_create(&t2, NULL, live_send, &a);
    while (a.got < 200 || a.sent < 200)
        sched_yield();
    say("ready");
    exit(0); /* sessions, channels and both threads still live */
}

static int run_dial_at_fd_limit(const char *url)
{
    struct rlimit old;
    if (getrlimit(RLIMIT_NOFILE, &old) != 0)
        DIE("getrlimit");
    int lowest = dup(0);
    if (lowest < 0)
        DIE("dup");
    close(lowest);
    struct rlimit low = { (rlim_t)lowest + 1, old.rlim_max }; /* the socket, nothing more */
    if (setrlimit(RLIMIT_NOFILE, &low) != 0)
        DIE("setrlimit");
    lc_session *s = NULL;
    lc_error err = { 0 };
    int rc = lc_dial(url, NULL, &s, &err);
    if (rc == 0 || s != NULL)
        DIE("dial at the fd limit succeeded");
    if (err.text[0] == 0)
        DIE("dial at the fd limit: %s with no text in err", lc_strerror(rc));
    char line[sizeof err.text + 16];
    snprintf(line, sizeof line, "refused: %s", err.text);
    if (setrlimit(RLIMIT_NOFILE, &old) != 0)
        DIE("setrlimit back");
    rc = lc_dial(url, NULL, &s, &err);
    if (rc != 0)
        DIE("dial after the limit was raised: %s (%s)", lc_strerror(rc), err.text);
    lc_session_free(s);
    say(line);
    return 0;
}

/* The kernel counts fds in flight in unix sockets against the sending user's
 * RLIMIT_NOFILE (root is exempt): with a receiver slow to read, sendmsg
 * fails with ETOOMANYREFS, which must be waited out, not end the session. */
static int run_pass_fds_limited(const char *url, int n)
{
    struct rlimit rl = { 512, 512 };
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        DIE("setrlimit");
    if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
        fprintf(stderr, "peer_proc: cannot leave root (%s): the in-flight limit does not apply\n",
                strerror(errno)); /* (a container without CAP_SETUID: the rest still runs) */
    lc_session *s;
    lc_error err = { 0 };
    if (lc_dial(url, NULL, &s, &err) != 0)
        DIE("dial %s: %s", url, err.text);
    /* the test's hello first: once a message from it has come, so have its
     * SETTINGS (its first frame), which say it takes passed fds; streams
     * sent before them go as sub-streams */
    lc_receiver *hello_r;
    lc_msg *hello;
    if (lc_session_receiver(s, &hello_r, 20000) != 0 || lc_recv(hello_r, &hello, 20000) != 0)
        DIE("no hello from the test");
    lc_msg_free(hello);
    lc_receiver_release(hello_r);
    lc_sender *tx;
    if (lc_session_sender(s, &tx) != 0)
        DIE("sender");
    int p[2];
    if (pipe(p) != 0)
        DIE("pipe");
    bool told = false;
    for (int i = 0; i < n; i++) {
        int d = fcntl(p[0], F_DUPFD_CLOEXEC, 3);
        if (d < 0)
            DIE("dup for message %d: %s", i, strerror(errno));
        lc_msg *m = lc_pack("{s:i, s:F}", "I", i, "F", d);
        /* the first one blocks for the fd-passing handshake (FD_ASK) */
        int rc = i == 0 || told ? LC_ETIMEDOUT : lc_send(tx, m, 0);
        if (rc == LC_ETIMEDOUT) {
            if (i > 0 && !told) {
                say("blocked");
                told = true;
            }
            rc = lc_send(tx, m, 20000);
        }
        if (rc != 0)
            DIE("send %d: %s (session: %s)", i, lc_strerror(rc), lc_strerror(lc_session_error(s)));
    }
    if (!told)
        DIE("no send ever waited");
    lc_close(tx);
    lc_sender_release(tx);
    int rc = lc_session_close(s, 20000);
    if (rc != 0)
        DIE("lc_session_close: %s", lc_strerror(rc));
    lc_session_free(s);
    close(p[0]);
    close(p[1]);
    char line[32];
    snprintf(line, sizeof line, "sent %d", n);
    say(line);
    return 0;
}

int main(int argc, char **argv)
{
    alarm(60);
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && strcmp(argv[1], "echo") == 0)
        return run_echo(argv[2]);
    if (argc == 4 && strcmp(argv[1], "proxy") == 0)
        return run_proxy(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "dial-at-fd-limit") == 0)
        return run_dial_at_fd_limit(argv[2]);
    if (argc == 4 && strcmp(argv[1], "pass-fds-limited") == 0)
        return run_pass_fds_limited(argv[2], atoi(argv[3]));
    if (argc == 3 && strcmp(argv[1], "partial-frame") == 0)
        return run_partial(argv[2], true);
    if (argc == 3 && strcmp(argv[1], "partial-msg") == 0)
        return run_partial(argv[2], false);
    if (argc == 3 && strcmp(argv[1], "flood") == 0)
        return run_flood(argv[2]);
    if (argc == 3 && strcmp(argv[1], "exit-live") == 0)
        return run_exit_live(argv[2]);
    fprintf(stderr, "usage: peer_proc echo|proxy|dial-at-fd-limit|pass-fds-limited|partial-frame|partial-msg|flood|exit-live URL [UPSTREAM]\n");
    return 2;
}

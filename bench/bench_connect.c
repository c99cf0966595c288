/*
 * bench_connect.c - a short-lived connection's whole life, over unix and
 * TCP loopback: dial, open a channel, send one {"N": i}, close the channel,
 * lc_session_close (which waits until the server has the message and hangs
 * up), lc_session_free. A server thread accepts, reads the channel to its
 * end and frees the session. Baseline, same run: the raw socket doing the
 * same work (connect, write 16 bytes, shutdown(SHUT_WR), read to the
 * server's EOF, close; the server thread reads to EOF and closes).
 *
 * lc_session_close used to look every 1-2 ms for the peer's SYN_REPLY: a
 * cycle took ~1.1 ms, nearly all of it that nap; it now waits on a
 * condition variable (send.c lc__close_progress_locked).
 *
 * Usage: bench_connect [cycles]   (default 2000 per transport)
 */
#include <libchan.h>

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- libchan --------------------------------------------------------------- */

static void *lc_server(void *x)
{
    lc_listener *l = x;
    lc_session *s;
    while (lc_accept(l, &s, -1) == 0) {
        lc_receiver *r;
        if (lc_session_receiver(s, &r, 5000) == 0) {
            lc_msg *m;
            while (lc_recv(r, &m, 5000) == 0)
                lc_msg_free(m);
            lc_receiver_release(r);
        }
        lc_session_free(s);
    }
    return NULL;
}

/* Runs n cycles against url; returns ns per cycle, close's p50/p99 in *p. */
static double lc_cycles(const char *url, int n, int64_t *close_ns)
{
    lc_listener *l;
    lc_error err = { 0 };
    if (lc_listen(url, NULL, &l, &err) != 0) {
        fprintf(stderr, "lc_listen %s: %s\n", url, err.text);
        exit(1);
    }
    char bound[256];
    lc_listener_url(l, bound, sizeof bound);
    pthread_t t;
    pthread_create(&t, NULL, lc_server, l);
    int64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        lc_session *c;
        lc_sender *s;
        if (lc_dial(bound, NULL, &c, &err) != 0 || lc_session_sender(c, &s) != 0) {
            fprintf(stderr, "lc_dial %s: %s\n", bound, err.text);
            exit(1);
        }
        lc_msg *m = lc_pack("{s:i}", "N", i);
        if (lc_send(s, m, 5000) != 0 || lc_close(s) != 0) {
            fprintf(stderr, "send failed\n");
            exit(1);
        }
        int64_t c0 = now_ns();
        int rc = lc_session_close(c, 5000);
        close_ns[i] = now_ns() - c0;
        if (rc != 0) {
            fprintf(stderr, "lc_session_close: %s\n", lc_strerror(rc));
            exit(1);
        }
        lc_sender_release(s);
        lc_session_free(c);
    }
    double per = (double)(now_ns() - t0) / n;
    lc_listener_close(l);
    pthread_join(t, NULL);
    qsort(close_ns, (size_t)n, sizeof *close_ns, cmp_i64);
    return per;
}

/* ---- raw sockets ------------------------------------------------------------- */

typedef struct {
    int lfd;
} raw_srv;

static void *raw_server(void *x)
{
    raw_srv *a = x;
    for (;;) {
        int fd = accept(a->lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        char buf[256];
        while (read(fd, buf, sizeof buf) > 0) {
        }
        close(fd);
    }
}

static double raw_cycles(int unix_sock, int n)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    int family = unix_sock ? AF_UNIX : AF_INET;
    int lfd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char path[108] = "";
    if (unix_sock) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        un->sun_family = AF_UNIX;
        snprintf(path, sizeof path, "/tmp/bench_connect.%d", (int)getpid());
        unlink(path);
        strcpy(un->sun_path, path);
        len = sizeof *un;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *in;
    }
    if (bind(lfd, (struct sockaddr *)&ss, len) != 0 || listen(lfd, 128) != 0) {
        perror("bind/listen");
        exit(1);
    }
    len = sizeof ss;
    getsockname(lfd, (struct sockaddr *)&ss, &len);
    raw_srv a = { lfd };
    pthread_t t;
    pthread_create(&t, NULL, raw_server, &a);
    static const char msg[16] = "0123456789abcdef";
    int64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char buf[64];
        if (connect(fd, (struct sockaddr *)&ss, len) != 0 || write(fd, msg, sizeof msg) != (ssize_t)sizeof msg) {
            perror("connect/write");
            exit(1);
        }
        shutdown(fd, SHUT_WR);
        while (read(fd, buf, sizeof buf) > 0) {
        }
        close(fd);
    }
    double per = (double)(now_ns() - t0) / n;
    shutdown(lfd, SHUT_RDWR); /* ends the server's accept */
    pthread_join(t, NULL);
    close(lfd);
    if (unix_sock)
        unlink(path);
    return per;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    if (n < 10)
        n = 10;
    int64_t *close_ns = malloc((size_t)n * sizeof *close_ns);
    printf("bench_connect: %d cycles each (dial, one message, graceful close)\n", n);
    for (int u = 1; u >= 0; u--) {
        char url[128];
        if (u)
            snprintf(url, sizeof url, "unix:///tmp/bench_connect.lc.%d", (int)getpid());
        else
            snprintf(url, sizeof url, "tcp://127.0.0.1:0");
        double raw = raw_cycles(u, n);
        double ours = lc_cycles(url, n, close_ns);
        printf("%-5s libchan %7.1f us per cycle (lc_session_close p50 %.1f us, p99 %.1f us)"
               "   raw socket %6.1f us   ratio %.2fx\n",
               u ? "unix" : "tcp", ours / 1000, close_ns[n / 2] / 1000.0, close_ns[n * 99 / 100] / 1000.0,
               raw / 1000, ours / raw);
    }
    free(close_ns);
    return 0;
}

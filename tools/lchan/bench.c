/*
 * bench.c - `lchan bench URL`: the client side of the throughput and latency
 * benchmarks against `lchan serve --echo`. Figures depend on the machine;
 * nothing is asserted.
 */
#include "lchan.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One request with a fresh reply Sender; the reply must come in 30 s.
 * SIGINT/SIGTERM end the wait (and the command). */
static int round_trip(lc_session *sess, lc_sender *chan, int64_t seq, const char *url)
{
    lc_receiver *r;
    lc_sender *s;
    int rc = lc_pipe(&r, &s, 1);
    if (rc != 0)
        lx_die(LX_INTERNAL, "lc_pipe: %s", lc_strerror(rc));
    lc_msg *m = lc_pack("{s:I, s:S}", "Seq", seq, "Reply", s);
    if (m == NULL)
        lx_die(LX_INTERNAL, "out of memory");
    lx_trace_msg("chan#1", ">>", m);
    if ((rc = lx_stoppable_send(chan, m, 10000)) == LX_ESTOPPED)
        lx_exit_stopped(sess);
    if (rc != 0)
        lx_die(lx_session_exit(rc), "send to %s: %s", url, lc_strerror(rc));
    lc_msg *rep;
    rc = lx_stoppable_recv(r, &rep, 30000);
    if (rc == LX_ESTOPPED)
        lx_exit_stopped(sess);
    if (rc == LC_ETIMEDOUT)
        lx_die(LX_TIMEOUT, "no reply from %s within 30 s (is it `lchan serve --echo`?)", url);
    if (rc != 0)
        lx_die(LX_SESSION, "no reply from %s: %s (is it `lchan serve --echo`?)", url, lc_strerror(rc));
    lx_trace_msg("reply", "<<", rep);
    lc_msg_free(rep);
    lc_receiver_release(r);
    return 0;
}

int lx_bench(int argc, char **argv)
{
    const char *url = NULL;
    long long n = 100000, rt = 2000, size = 64;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] != '\0') {
            if (!lx_common_opt(a, lx_help_bench) && !lx_opt_long(argc, argv, &i, "--messages", 0, 1000000000, &n) &&
                !lx_opt_long(argc, argv, &i, "--roundtrips", 0, 100000000, &rt) &&
                !lx_opt_long(argc, argv, &i, "--size", 0, 16 << 20, &size))
                lx_usage("unknown option '%s'", a);
        } else if (url == NULL) {
            url = a;
        } else {
            lx_usage("unexpected argument '%s'", a);
        }
    }
    if (url == NULL)
        lx_usage("missing URL (of an `lchan serve --echo`)");

    lc_session *s = lx_dial(url);
    if (lx_stop)
        lx_exit_stopped(s);
    lc_sender *chan;
    int rc = lc_session_sender(s, &chan);
    if (rc != 0)
        lx_die(lx_session_exit(rc), "cannot open a channel to %s: %s", url, lc_strerror(rc));
    char *payload = calloc(1, (size_t)size + 1);
    if (payload == NULL)
        lx_die(LX_INTERNAL, "out of memory");
    printf("lchan bench %s: %lld one-way messages of %lld bytes, %lld round trips\n", url, n, size, rt);
    fflush(stdout); /* (each line as it is done: a pipe would hold them to the end) */

    if (n > 0) {
        double t0 = now_s();
        for (long long i = 0; i < n; i++) {
            lc_msg *m = lc_pack("{s:I, s:b}", "Seq", (int64_t)i, "Data", payload, (size_t)size);
            if (m == NULL)
                lx_die(LX_INTERNAL, "out of memory");
            lx_trace_msg("chan#1", ">>", m);
            if ((rc = lx_stoppable_send(chan, m, 10000)) == LX_ESTOPPED)
                lx_exit_stopped(s);
            if (rc != 0)
                lx_die(lx_session_exit(rc), "send to %s: %s", url, lc_strerror(rc));
        }
        round_trip(s, chan, -1, url); /* the channel is in order: all arrived */
        double dt = now_s() - t0;
        printf("one-way:    %lld msgs in %.3f s = %.0f msgs/s, %.1f MB/s of payload\n", n, dt, (double)n / dt,
               (double)n * (double)size / dt / 1e6);
        fflush(stdout);
    }
    if (rt > 0) {
        double *lat = malloc((size_t)rt * sizeof *lat);
        if (lat == NULL)
            lx_die(LX_INTERNAL, "out of memory");
        double t0 = now_s();
        for (long long i = 0; i < rt; i++) {
            double t = now_s();
            round_trip(s, chan, i, url);
            lat[i] = now_s() - t;
        }
        double dt = now_s() - t0;
        qsort(lat, (size_t)rt, sizeof *lat, cmp_double);
        printf("round trip: %lld requests in %.3f s = %.0f req/s; latency p50 %.1f us, p99 %.1f us, max %.1f us\n",
               rt, dt, (double)rt / dt, lat[rt / 2] * 1e6, lat[rt * 99 / 100] * 1e6, lat[rt - 1] * 1e6);
        free(lat);
    }
    fflush(stdout);
    free(payload);
    lc_close(chan);
    lc_sender_release(chan);
    rc = lc_session_close(s, 5000);
    lc_session_free(s);
    return rc == 0 || rc == LC_ESESSION ? LX_OK : LX_SESSION;
}

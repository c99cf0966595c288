/*
 * bench_msg.c - what a message costs before any channel: allocation, lc_pack
 * and lc_unpack of the SimpleStruct {"Value": i} the session benchmark sends.
 *
 * - Allocation in the pattern a session receiver produces: a burst of 32
 *   messages made (the session decodes up to 32 ahead), then the 32 freed.
 *   lc_msg_new/lc_msg_free keep freed messages in a per-thread cache; the
 *   baseline is plain malloc/free of the same size in the same pattern (what
 *   lc_msg_new did before: glibc's own per-thread cache holds only 7 chunks
 *   of a size, the rest take the arena's slow path).
 * - lc_pack "{s:I}" + lc_msg_free, and lc_unpack "{s:I}", against building the
 *   same tree with the explicit builder and reading it with the getters (the
 *   floor a format-string walk is compared with). lc_pack writes the message
 *   in wire form (msgpack bytes, see msg_internal.h) and lc_unpack reads those
 *   bytes; the getters' lc_msg_root builds the tree once, before the loop.
 * - A message with a time, {"Value": i, "At": t}, through lc_pack, encode,
 *   decode and lc_unpack: as it goes (wire form all the way: times are kept
 *   as bytes), against the same with the tree built after decoding
 *   (lc_msg_root, then the tree walk: the path such a message took while
 *   times were tree-only).
 *
 * - A Go peer's {"Value": 200} (ugorji writes 200 as d1 00 c8) decoded and
 *   unpacked: kept as bytes, against the tree built after decoding (the
 *   path such messages took while only our own integer forms were kept).
 *
 * Nothing is asserted. Fixed iteration counts, ~2 s in all.
 */
#include "msg/msg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BURST 32
#define ROUNDS 200000
#define OPS 5000000

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static volatile int64_t sink;

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "bench_msg: %s failed\n", what);
    exit(1);
}

static double burst_lc(void)
{
    lc_msg *ms[BURST];
    double t0 = now_ns();
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < BURST; i++)
            if ((ms[i] = lc_msg_new()) == NULL)
                die("lc_msg_new");
        for (int i = 0; i < BURST; i++)
            lc_msg_free(ms[i]);
    }
    return (now_ns() - t0) / ((double)ROUNDS * BURST);
}

static double burst_malloc(void)
{
    void *ms[BURST];
    double t0 = now_ns();
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < BURST; i++) {
            if ((ms[i] = malloc(sizeof(lc_msg))) == NULL)
                die("malloc");
            /* what lc_msg_new writes besides the allocation */
            memset(ms[i], 0, offsetof(lc_msg, inline_arena));
        }
        for (int i = 0; i < BURST; i++)
            free(ms[i]);
    }
    return (now_ns() - t0) / ((double)ROUNDS * BURST);
}

static double pack_fmt(void)
{
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) {
        lc_msg *m = lc_pack("{s:I}", "Value", (int64_t)i);
        if (m == NULL)
            die("lc_pack");
        lc_msg_free(m);
    }
    return (now_ns() - t0) / OPS;
}

static double pack_builder(void)
{
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) {
        lc_msg *m = lc_msg_new();
        lc_value *map = m ? lc_new_map(m) : NULL;
        lc_value *v = m ? lc_new_int(m, i) : NULL;
        if (map == NULL || v == NULL || lc_map_set(m, map, "Value", v) != 0 || lc_msg_set_root(m, map) != 0)
            die("builder");
        lc_msg_free(m);
    }
    return (now_ns() - t0) / OPS;
}

static double unpack_fmt(lc_msg *m)
{
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) {
        int64_t v;
        if (lc_unpack(m, "{s:I}", "Value", &v) != 0)
            die("lc_unpack");
        sink = v;
    }
    return (now_ns() - t0) / OPS;
}

static double unpack_getters(lc_msg *m)
{
    double t0 = now_ns();
    for (int i = 0; i < OPS; i++) {
        int64_t v;
        lc_value *x = lc_map_get(lc_msg_root(m), "Value");
        if (x == NULL || lc_value_type(x) != LC_INT)
            die("getters");
        v = lc_value_int(x);
        sink = v;
    }
    return (now_ns() - t0) / OPS;
}

#define TIME_OPS 1000000

/* pack -> encode -> decode -> unpack of a message with a time; with_tree:
 * the decoded message's tree is built before lc_unpack. */
static double time_trip(bool with_tree)
{
    double t0 = now_ns();
    for (int i = 0; i < TIME_OPS; i++) {
        lc_msg *m = lc_pack("{s:I, s:t}", "Value", (int64_t)i, "At", (int64_t)1700000000 + i, i % 1000);
        uint8_t *p;
        size_t n;
        if (m == NULL || lc_msgpack_encode(m, &p, &n) != 0)
            die("lc_pack with a time");
        lc_msg_free(m);
        lc_msg *d;
        if (lc_msgpack_decode(p, n, NULL, &d) != 0)
            die("decoding a time");
        free(p);
        if (with_tree && lc_msg_root(d) == NULL)
            die("lc_msg_root");
        int64_t v, sec;
        int nsec;
        if (lc_unpack(d, "{s:I, s:t}", "Value", &v, "At", &sec, &nsec) != 0)
            die("lc_unpack with a time");
        sink = v + sec + nsec;
        lc_msg_free(d);
    }
    return (now_ns() - t0) / TIME_OPS;
}

/* decode -> unpack of a Go peer's SimpleStruct; with_tree as time_trip */
static double go_decode(bool with_tree)
{
    static const uint8_t go[] = { 0x81, 0xa5, 'V', 'a', 'l', 'u', 'e', 0xd1, 0x00, 0xc8 };
    double t0 = now_ns();
    for (int i = 0; i < TIME_OPS; i++) {
        lc_msg *d;
        if (lc_msgpack_decode(go, sizeof go, NULL, &d) != 0)
            die("decoding Go's form");
        if (with_tree && lc_msg_root(d) == NULL)
            die("lc_msg_root");
        int64_t v;
        if (lc_unpack(d, "{s:I}", "Value", &v) != 0)
            die("lc_unpack of Go's form");
        sink = v;
        lc_msg_free(d);
    }
    return (now_ns() - t0) / TIME_OPS;
}

int main(void)
{
    printf("messages, SimpleStruct {\"Value\": i}\n");
    (void)burst_lc(); /* warm both caches */
    double a = burst_lc(), b = burst_malloc();
    printf("  make %d, then free %d     lc_msg_new/free %.1f ns/msg   malloc/free %.1f ns/msg   ratio %.2f\n",
           BURST, BURST, a, b, a / b);
    double p = pack_fmt(), pb = pack_builder();
    printf("  pack + free                 lc_pack \"{s:I}\" %.1f ns   builder calls %.1f ns   ratio %.2f\n", p,
           pb, p / pb);
    lc_msg *m = lc_pack("{s:I}", "Value", (int64_t)42);
    if (m == NULL)
        die("lc_pack");
    double u = unpack_fmt(m), ug = unpack_getters(m);
    printf("  unpack                      lc_unpack \"{s:I}\" %.1f ns   getters %.1f ns   ratio %.2f\n", u, ug,
           u / ug);
    lc_msg_free(m);
    double tw = time_trip(false), tt = time_trip(true);
    printf("  with a time, pack..unpack   as bytes %.1f ns   tree built %.1f ns   ratio %.2f\n", tw, tt, tw / tt);
    double gw = go_decode(false), gt = go_decode(true);
    printf("  Go's 200, decode + unpack   as bytes %.1f ns   tree built %.1f ns   ratio %.2f\n", gw, gt, gw / gt);
    return 0;
}

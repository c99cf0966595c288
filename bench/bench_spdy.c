/*
 * bench_spdy.c - what a libchan header block costs to write (src/spdy
 * headers.c), one thread: the block of a fresh reply channel's SYN_STREAM
 * (libchan-ref, libchan-parent-ref) as our sessions send it, level 0:
 *   - lc__spdy_deflate_block, which writes the stored blocks itself;
 *   - zlib's deflate() at level 0 with the same window, memLevel and
 *     dictionary, on the same raw block (what the deflater called before);
 *   - lc__spdy_inflate_block on our block: read here while the stream has
 *     been stored blocks only, against the same blocks through zlib's
 *     inflate() once a compressed first block has handed it the stream.
 * Two such blocks (SYN_STREAM, SYN_REPLY) lie on a fresh reply channel's
 * round trip toward a Go peer, and each is inflated on the other side;
 * between two peers of ours only the SYN_STREAM's (NO_REPLIES,
 * docs/PROTOCOL.md 3.2).
 * Usage: bench_spdy [iterations]   (default 2000000)
 */
#include "spdy/spdy.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static const lc_spdy_header g_block[2] = { { "libchan-ref", 11, "1234", 4 }, { "libchan-parent-ref", 18, "3", 1 } };

static void die(const char *what)
{
    fprintf(stderr, "bench_spdy: %s failed\n", what);
    exit(1);
}

static double ours_ns(long iters, lc_buf *out)
{
    lc_spdy_deflater z;
    lc__spdy_deflater_init(&z, 0);
    double t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        out->len = 0;
        if (lc__spdy_deflate_block(&z, out, g_block, 2) != 0)
            die("lc__spdy_deflate_block");
    }
    double t = (now_ns() - t0) / (double)iters;
    lc__spdy_deflater_free(&z);
    return t;
}

/* zlib at level 0, as the deflater called it: the checks and the raw block
 * built the same way, then one deflate(Z_SYNC_FLUSH) into reserved room */
static double zlib_ns(long iters, lc_buf *out)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, 0, Z_DEFLATED, LC_SPDY_DEFLATE_WBITS, LC_SPDY_DEFLATE_MEMLEVEL, Z_DEFAULT_STRATEGY) != Z_OK ||
        deflateSetDictionary(&zs, lc__spdy_dictionary, (uInt)lc__spdy_dictionary_len) != Z_OK)
        die("deflateInit2");
    lc_buf raw;
    lc__buf_init(&raw);
    double t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        raw.len = 0;
        if (lc__spdy_hblock_build(&raw, g_block, 2) != 0)
            die("lc__spdy_hblock_build");
        out->len = 0;
        if (lc__buf_reserve(out, deflateBound(&zs, (uLong)raw.len) + 16) != 0)
            die("lc__buf_reserve");
        zs.next_in = raw.data;
        zs.avail_in = (uInt)raw.len;
        zs.next_out = out->data;
        zs.avail_out = (uInt)out->cap;
        if (deflate(&zs, Z_SYNC_FLUSH) != Z_OK || zs.avail_in != 0)
            die("deflate");
        out->len = out->cap - zs.avail_out;
    }
    double t = (now_ns() - t0) / (double)iters;
    lc__buf_free(&raw);
    deflateEnd(&zs);
    return t;
}

/* Times lc__spdy_inflate_block on our stored block. through_zlib: the
 * stream's first block is compressed (zlib level 1, then level 0 as ours),
 * so zlib inflates every block after it, stored ones included. */
static double inflate_ns(long iters, bool through_zlib)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, through_zlib ? 1 : 0, Z_DEFLATED, LC_SPDY_DEFLATE_WBITS, LC_SPDY_DEFLATE_MEMLEVEL,
                     Z_DEFAULT_STRATEGY) != Z_OK ||
        deflateSetDictionary(&zs, lc__spdy_dictionary, (uInt)lc__spdy_dictionary_len) != Z_OK)
        die("deflateInit2");
    lc_spdy_inflater in;
    lc__spdy_inflater_init(&in);
    lc_buf raw, b;
    lc__buf_init(&raw);
    lc__buf_init(&b);
    if (lc__spdy_hblock_build(&raw, g_block, 2) != 0 || lc__buf_reserve(&b, 4096) != 0)
        die("lc__spdy_hblock_build");
    double total = 0;
    for (long i = -1; i < iters; i++) {
        zs.next_in = raw.data;
        zs.avail_in = (uInt)raw.len;
        zs.next_out = b.data;
        zs.avail_out = (uInt)b.cap;
        if (deflate(&zs, Z_SYNC_FLUSH) != Z_OK || zs.avail_in != 0)
            die("deflate");
        b.len = b.cap - zs.avail_out;
        if (i == -1 && through_zlib && deflateParams(&zs, 0, Z_DEFAULT_STRATEGY) != Z_OK)
            die("deflateParams");
        const lc_spdy_header *h;
        size_t n;
        double t0 = now_ns();
        if (lc__spdy_inflate_block(&in, NULL, b.data, b.len, &h, &n) != 0 || n != 2)
            die("lc__spdy_inflate_block");
        if (i >= 0)
            total += now_ns() - t0;
    }
    lc__buf_free(&raw);
    lc__buf_free(&b);
    lc__spdy_inflater_free(&in);
    deflateEnd(&zs);
    return total / (double)iters;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 2000000;
    lc_buf a, b;
    lc__buf_init(&a);
    lc__buf_init(&b);
    ours_ns(iters / 10, &a); /* warm up */
    zlib_ns(iters / 10, &b);
    double o = ours_ns(iters, &a), zl = zlib_ns(iters, &b);
    printf("one libchan header block (2 pairs, %zu bytes written), level 0, %ld each, ns per block\n", a.len, iters);
    printf("  lc__spdy_deflate_block (stored blocks written here)   %6.0f\n", o);
    printf("  zlib deflate(), level 0, same raw block               %6.0f   %.2fx\n", zl, zl / o);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0)
        printf("  (the two outputs differ: that is a bug)\n");
    double hand = inflate_ns(iters / 4, false), zinf = inflate_ns(iters / 4, true);
    printf("reading it (each includes ~25 ns of clock)\n");
    printf("  lc__spdy_inflate_block, stored blocks read here       %6.0f\n", hand);
    printf("  the same through zlib inflate()                       %6.0f   %.2fx\n", zinf, zinf / hand);
    lc__buf_free(&a);
    lc__buf_free(&b);
    return 0;
}

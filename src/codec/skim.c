/*
 * skim.c - a structure-only walk over msgpack bytes that will never be
 * decoded (src/codec). A channel whose message the decoder refused (over
 * max_message, too deep, too many elements) is reset, and neither that
 * message nor the ones behind it on the stream reach the application. On a
 * unix carrier their passed fds (ext 1/2/3 with an 8-byte payload whose top
 * bit is set, docs/PROTOCOL.md 7) still came with them and wait in the
 * session's table: the skimmer finds their numbers so the session can close
 * them at once instead of keeping them until it is freed. The sub-streams
 * they name (channels and byte streams sent as streams of their own) are
 * reported too, so that the session can reset them: nothing will bind them.
 *
 * No limits apply (the bytes are dropped as they are walked; only the
 * nesting stack is kept, and bounded); bytes that are not msgpack at all
 * (0xc1), nesting deeper than SKIM_MAX_DEPTH or no memory for the stack end
 * the walk: nothing after them can be found.
 */
#include "codec/codec.h"
#include "codec/wire.h"

#include <stdlib.h>
#include <string.h>

/* Deeper nesting than this gives up (the stack costs 8 bytes per level). */
#define SKIM_MAX_DEPTH 4096

#define PASSED_FD_BIT 0x8000000000000000ull

void lc__skim_init(lc_skim *k)
{
    memset(k, 0, sizeof *k);
}

void lc__skim_free(lc_skim *k)
{
    free(k->left);
    memset(k, 0, sizeof *k);
}

static void element_done(lc_skim *k)
{
    while (k->depth > 0) {
        if (--k->left[k->depth - 1] > 0)
            return;
        k->depth--;
    }
}

/* Takes the header at buf (avail bytes): its size, or 0 when more bytes are
 * needed, or -1 when they are not msgpack. A stream ext's payload is taken
 * with its header, so that the reference can be read. */
static long take_header(lc_skim *k, const uint8_t *buf, size_t avail, lc_skim_found_fn found, void *ctx)
{
    struct lc_whdr h;
    int rc = lc__whdr_read(buf, avail, &h);
    if (rc == LC__WNEED)
        return 0;
    if (rc != 0)
        return -1;
    /* a ref is 4 bytes when it fits in 32 bits, else 8 (a passed fd's
     * always 8): the walk missed every 4-byte one, the usual sub-stream ref,
     * so the sub-streams named by dropped bytes were never reset */
    bool stream_ext = h.kind == LC_WK_EXT && h.ext >= LC_EXT_DUPLEX && h.ext <= LC_EXT_RECEIVER &&
                      (h.len == 8 || h.len == 4);
    size_t need = h.hlen + (stream_ext ? (size_t)h.len : 0u);
    if (avail < need)
        return 0;
    switch (h.kind) {
    case LC_WK_EXT:
        if (h.ext == LC_EXT_BODY && k->depth == 0) {
            /* an opaque-body message: its payload is [type, body, [refs]]
             * (PROTOCOL.md 4.5), walked as the message itself */
            break;
        }
        if (stream_ext) {
            uint64_t ref = h.len == 8 ? lc__be64(buf + h.hlen) : lc__be32(buf + h.hlen);
            if ((ref & PASSED_FD_BIT) && h.ext <= LC_EXT_READ)
                found(ctx, ref & ~PASSED_FD_BIT);
            else if (!(ref & PASSED_FD_BIT) && k->found_ref != NULL)
                k->found_ref(ctx, ref, h.ext);
            element_done(k);
            break;
        }
        /* fall through */
    case LC_WK_STR:
    case LC_WK_BIN:
        k->skip = h.len;
        element_done(k); /* (its payload is skipped before the next header) */
        break;
    case LC_WK_ARRAY:
    case LC_WK_MAP:
        if (h.len == 0) {
            element_done(k);
            break;
        }
        if (k->depth == SKIM_MAX_DEPTH)
            return -1;
        if (k->depth == k->cap) {
            uint32_t ncap = k->cap ? k->cap * 2 : 16;
            uint64_t *nl = realloc(k->left, (size_t)ncap * sizeof *nl);
            if (nl == NULL)
                return -1;
            k->left = nl;
            k->cap = ncap;
        }
        k->left[k->depth++] = h.kind == LC_WK_MAP ? 2 * h.len : h.len;
        break;
    default:
        element_done(k);
        break;
    }
    return (long)need;
}

int lc__skim_feed(lc_skim *k, const uint8_t *p, size_t n, lc_skim_found_fn found, void *ctx)
{
    while (n > 0 && !k->dead) {
        if (k->skip > 0) {
            size_t take = k->skip < n ? (size_t)k->skip : n;
            k->skip -= take;
            p += take;
            n -= take;
            continue;
        }
        long used;
        if (k->have > 0) {
            /* a header cut by the previous chunk's end: complete it here */
            size_t add = sizeof k->hdr - k->have < n ? sizeof k->hdr - k->have : n;
            memcpy(k->hdr + k->have, p, add);
            used = take_header(k, k->hdr, k->have + add, found, ctx);
            if (used == 0) {
                k->have += (uint8_t)add; /* (a header and its ref fit: never full) */
                return 0;
            }
            if (used > 0) {
                size_t from_p = (size_t)used - k->have;
                k->have = 0;
                p += from_p;
                n -= from_p;
            }
        } else {
            used = take_header(k, p, n, found, ctx);
            if (used == 0) {
                memcpy(k->hdr, p, n); /* n < 17 here */
                k->have = (uint8_t)n;
                return 0;
            }
            if (used > 0) {
                p += used;
                n -= (size_t)used;
            }
        }
        if (used < 0)
            k->dead = 1;
    }
    return k->dead ? LC_EBADMSG : 0;
}

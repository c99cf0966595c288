/*
 * stream.c - the streaming msgpack decoder (src/codec): a channel's DATA
 * payloads arrive in chunks split at any byte; this finds where each message
 * ends with a resumable scanner (remaining element count per nesting level,
 * limits checked as each header arrives) and hands every complete message to
 * the fast decoder. Each input byte is scanned once: linear in the input.
 */
#include "codec/codec.h"
#include "codec/wire.h"

#include <stdlib.h>
#include <string.h>

void lc__sd_init(lc_stream_decoder *d, const lc_limits *lim, const struct lc_codec_hooks *hooks)
{
    memset(d, 0, sizeof *d);
    lc__limits_resolve(&d->lim, lim);
    if (hooks != NULL) {
        d->hooks = *hooks;
        d->has_hooks = 1;
    }
    lc__buf_init(&d->in);
}

void lc__sd_free(lc_stream_decoder *d)
{
    lc__buf_free(&d->in);
    if (d->left != d->shallow)
        free(d->left);
    d->left = NULL;
    d->stack_cap = 0;
}

/* Drops the bytes of messages already returned, so the buffer holds at most
 * the current message plus what came after it. */
static void compact(lc_stream_decoder *d)
{
    if (d->start == 0)
        return;
    size_t keep = d->in.len - d->start;
    if (keep > 0)
        memmove(d->in.data, d->in.data + d->start, keep);
    d->in.len = keep;
    d->scan -= d->start;
    if (d->time_pending)
        d->time_at -= d->start;
    d->start = 0;
}

int lc__sd_feed(lc_stream_decoder *d, const void *p, size_t n)
{
    if (d->err != 0)
        return d->err;
    if (n == 0)
        return 0;
    if (p == NULL)
        return LC_EINVAL;
    /* Move the live tail down only when that is cheaper than growing: the
     * dead prefix is at least half of the buffer (amortised linear). */
    if (d->start > 0 && (d->start == d->in.len || d->start >= d->in.cap / 2))
        compact(d);
    if (lc__buf_append(&d->in, p, n) != 0)
        return LC_ENOMEM; /* not sticky: the caller may retry */
    return 0;
}

static int fail(lc_stream_decoder *d, int rc)
{
    d->err = rc;
    return rc;
}

/* One element is complete: count it off its container(s). */
static void element_done(lc_stream_decoder *d)
{
    while (d->depth > 0) {
        if (--d->left[d->depth - 1] > 0)
            return;
        d->depth--;
    }
    d->done = 1;
}

/*
 * Advances the scanner over the buffered bytes. 0 when the current message
 * is complete (ends at d->scan), LC__SD_AGAIN, or an error.
 *
 * It applies the fast decoder's header checks in the same order (wire.h) and
 * also the one content check that can fail before the end of a message: the
 * nanoseconds of a time ext, checked as soon as its 12 bytes are buffered and
 * before anything after them. So it reports the first error in document
 * order, the one lc__decode reports for the same message. (A bad ext 7
 * payload is found by lc__decode: ext 7 is a whole message.)
 */
static int scan(lc_stream_decoder *d)
{
    for (;;) {
        if (d->time_pending) {
            if (d->in.len < d->time_at + 12)
                return LC__SD_AGAIN;
            int64_t sec;
            uint32_t nsec;
            if (!lc__wtime(d->in.data + d->time_at, &sec, &nsec))
                return fail(d, LC_EBADMSG);
            d->time_pending = 0;
        }
        if (d->done)
            break;
        if (d->scan >= d->in.len)
            return LC__SD_AGAIN;
        struct lc_whdr h;
        int rc = lc__whdr_read(d->in.data + d->scan, d->in.len - d->scan, &h);
        if (rc == LC__WNEED)
            return LC__SD_AGAIN; /* re-read when more arrives: at most 9 bytes */
        if (rc != 0)
            return fail(d, rc);
        rc = lc__whdr_check(&h, d->scan - d->start, d->depth, &d->lim);
        if (rc != 0)
            return fail(d, rc);
        d->scan += h.hlen;
        switch (h.kind) {
        case LC_WK_EXT:
            if (h.ext == LC_EXT_TIME) {
                d->time_at = d->scan;
                d->time_pending = 1;
            }
            /* fall through */
        case LC_WK_STR:
        case LC_WK_BIN:
            d->scan += (size_t)h.len; /* may run ahead of the buffered bytes */
            element_done(d);
            break;
        case LC_WK_ARRAY:
        case LC_WK_MAP:
            if (h.len == 0) {
                element_done(d);
                break;
            }
            if (d->depth == d->stack_cap) {
                /* the first levels in the decoder itself: a stream per
                 * fresh reply channel, each fed one shallow message */
                if (d->stack_cap == 0) {
                    d->left = d->shallow;
                    d->stack_cap = sizeof d->shallow / sizeof d->shallow[0];
                } else {
                    uint32_t ncap = d->stack_cap * 4;
                    uint64_t *nl = malloc((size_t)ncap * sizeof *nl);
                    if (nl == NULL) {
                        d->err = LC_ENOMEM;
                        return LC_ENOMEM;
                    }
                    memcpy(nl, d->left, d->depth * sizeof *nl);
                    if (d->left != d->shallow)
                        free(d->left);
                    d->left = nl;
                    d->stack_cap = ncap;
                }
            }
            d->left[d->depth++] = h.kind == LC_WK_MAP ? 2 * h.len : h.len;
            break;
        default:
            element_done(d);
            break;
        }
    }
    return d->scan <= d->in.len ? 0 : LC__SD_AGAIN;
}

/* The current message, ending at `end`, was handed out: the next one starts
 * there (at the front again when nothing more is buffered). */
static void message_taken(lc_stream_decoder *d, size_t end)
{
    d->start = d->scan = end;
    d->done = 0;
    d->depth = 0;
    if (d->start == d->in.len) /* nothing buffered: restart at the front */
        d->in.len = d->start = d->scan = 0;
}

int lc__sd_next(lc_stream_decoder *d, lc_msg **out)
{
    if (out == NULL)
        return LC_EINVAL;
    *out = NULL;
    if (d->err != 0)
        return d->err;
    if (d->start == d->in.len)
        return LC__SD_AGAIN; /* nothing buffered (as scan() would say): the
                              * common call after a frame's last message */
    if (!d->has_hooks && d->scan == d->start) {
        /* Nothing scanned of this message yet: decode it straight from the
         * buffer, letting the decoder find its end (one pass instead of
         * two; bench_session's receiver spent ~10% in the scanner). Only a
         * message cut by the end of the buffer falls back to the scanner,
         * which resumes from its start; any other outcome is the one the
         * scanner + decoder would give, found in the same document order. */
        size_t used = 0;
        int rc = lc__decode(d->in.data + d->start, d->in.len - d->start, &d->lim, NULL, out, &used);
        if (rc == 0) {
            message_taken(d, d->start + used);
            return 0;
        }
        if (rc != LC_ETRUNCATED) {
            d->err = rc;
            return rc;
        }
    }
    int rc = scan(d);
    if (rc != 0)
        return rc;
    size_t len = d->scan - d->start;
    rc = lc__decode(d->in.data + d->start, len, &d->lim,
                    d->has_hooks ? &d->hooks : NULL, out, NULL);
    if (rc != 0) {
        d->err = rc;
        return rc;
    }
    message_taken(d, d->scan);
    return 0;
}

int lc__sd_next_direct(lc_stream_decoder *d, const uint8_t **p, size_t *n, lc_msg **out)
{
    *out = NULL;
    if (d->err != 0)
        return d->err;
    if (d->start != d->in.len || d->has_hooks || *n == 0)
        return LC__SD_AGAIN;
    size_t used = 0;
    int rc = lc__decode(*p, *n, &d->lim, NULL, out, &used);
    if (rc == 0) {
        *p += used;
        *n -= used;
        return 0;
    }
    if (rc == LC_ETRUNCATED)
        return LC__SD_AGAIN; /* (the scanner takes it once fed) */
    /* as next() after feed(): the faulty message's bytes on are buffered */
    d->in.len = d->start = d->scan = 0;
    if (lc__buf_append(&d->in, *p, *n) == 0) {
        *p += *n;
        *n = 0;
    }
    d->err = rc;
    return rc;
}

int lc__sd_finish(lc_stream_decoder *d)
{
    if (d->err != 0)
        return d->err;
    int rc = scan(d);
    if (rc == 0)
        return LC__SD_AGAIN; /* a complete message is still to be taken */
    if (rc < 0)
        return rc;
    if (d->in.len > d->start) {
        d->err = LC_ETRUNCATED;
        return LC_ETRUNCATED;
    }
    return 0;
}

/*
 * frame_encode.c - SPDY/3 frame encoders (src/spdy): each appends one frame
 * to an lc_buf, header blocks compressed through the session's sending
 * deflater. The session writes the buffer out; nothing here does I/O.
 */
#include "spdy/spdy.h"

#include <string.h>

/* Appends a control frame whose payload is fixed[0..nfixed) (+ nothing). */
static int put_fixed(lc_buf *b, uint16_t type, uint8_t flags, const uint8_t *fixed,
                     uint32_t nfixed)
{
    if (lc__buf_reserve(b, LC_SPDY_HEADER_LEN + (size_t)nfixed) != 0)
        return LC_ENOMEM;
    uint8_t *p = b->data + b->len;
    lc__spdy_control_header(p, type, flags, nfixed);
    memcpy(p + LC_SPDY_HEADER_LEN, fixed, nfixed);
    b->len += LC_SPDY_HEADER_LEN + (size_t)nfixed;
    return 0;
}

int lc__spdy_put_data(lc_buf *b, uint32_t stream_id, uint8_t flags, const void *p, size_t n)
{
    if (stream_id == 0 || stream_id > LC_SPDY_MAX_STREAM_ID || n > LC_SPDY_MAX_LENGTH ||
        (p == NULL && n))
        return LC_EINVAL;
    if (lc__buf_reserve(b, LC_SPDY_HEADER_LEN + n) != 0)
        return LC_ENOMEM;
    uint8_t *o = b->data + b->len;
    lc__spdy_data_header(o, stream_id, flags, (uint32_t)n);
    if (n)
        memcpy(o + LC_SPDY_HEADER_LEN, p, n);
    b->len += LC_SPDY_HEADER_LEN + n;
    return 0;
}

int lc__spdy_data_begin(lc_buf *b, uint32_t stream_id, uint8_t flags, size_t *mark)
{
    if (stream_id == 0 || stream_id > LC_SPDY_MAX_STREAM_ID)
        return LC_EINVAL;
    if (lc__buf_reserve(b, LC_SPDY_HEADER_LEN) != 0)
        return LC_ENOMEM;
    *mark = b->len;
    lc__spdy_data_header(b->data + b->len, stream_id, flags, 0);
    b->len += LC_SPDY_HEADER_LEN;
    return 0;
}

int lc__spdy_data_end(lc_buf *b, size_t mark)
{
    if (mark > b->len || b->len - mark < LC_SPDY_HEADER_LEN)
        return LC_EINVAL;
    size_t n = b->len - mark - LC_SPDY_HEADER_LEN;
    if (n > LC_SPDY_MAX_LENGTH)
        return LC__SPDY_EFRAME_SIZE;
    uint8_t *h = b->data + mark;
    lc__spdy_put32(h + 4, ((uint32_t)h[4] << 24) | (uint32_t)n);
    return 0;
}

/*
 * A frame with a header block: the 8-byte header, the fixed part, then the
 * compressed block; the length is patched once the block's size is known.
 */
static int put_with_block(lc_buf *b, lc_spdy_deflater *z, uint16_t type, uint8_t flags,
                          const uint8_t *fixed, uint32_t nfixed,
                          const lc_spdy_header *h, size_t n)
{
    size_t bound = lc__spdy_deflate_bound(z, h, n);
    if (bound > LC_SPDY_MAX_LENGTH - nfixed)
        return LC_EINVAL; /* nothing compressed: the deflater stays usable */
    size_t start = b->len;
    if (lc__buf_reserve(b, LC_SPDY_HEADER_LEN + (size_t)nfixed) != 0)
        return LC_ENOMEM;
    b->len += LC_SPDY_HEADER_LEN;
    memcpy(b->data + b->len, fixed, nfixed);
    b->len += nfixed;
    int r = lc__spdy_deflate_block(z, b, h, n);
    if (r < 0) {
        b->len = start;
        return r;
    }
    size_t len = b->len - start - LC_SPDY_HEADER_LEN;
    if (len > LC_SPDY_MAX_LENGTH) {
        /* The block is in the stream already: the peer would have to
         * inflate it to stay in step, and it cannot be sent. */
        b->len = start;
        z->state = LC__SPDY_EBROKEN;
        return LC__SPDY_EBROKEN;
    }
    lc__spdy_control_header(b->data + start, type, flags, (uint32_t)len);
    return 0;
}

int lc__spdy_put_syn_stream(lc_buf *b, lc_spdy_deflater *z, uint32_t stream_id,
                            uint32_t assoc_id, uint8_t priority, uint8_t slot, uint8_t flags,
                            const lc_spdy_header *h, size_t n)
{
    if (stream_id == 0 || stream_id > LC_SPDY_MAX_STREAM_ID ||
        assoc_id > LC_SPDY_MAX_STREAM_ID || priority > 7)
        return LC_EINVAL;
    uint8_t fixed[10];
    lc__spdy_put32(fixed, stream_id);
    lc__spdy_put32(fixed + 4, assoc_id);
    fixed[8] = (uint8_t)(priority << 5);
    fixed[9] = slot;
    return put_with_block(b, z, LC_SPDY_SYN_STREAM, flags, fixed, sizeof fixed, h, n);
}

static int put_reply_or_headers(lc_buf *b, lc_spdy_deflater *z, uint16_t type,
                                uint32_t stream_id, uint8_t flags,
                                const lc_spdy_header *h, size_t n)
{
    if (stream_id == 0 || stream_id > LC_SPDY_MAX_STREAM_ID)
        return LC_EINVAL;
    uint8_t fixed[4];
    lc__spdy_put32(fixed, stream_id);
    return put_with_block(b, z, type, flags, fixed, sizeof fixed, h, n);
}

int lc__spdy_put_syn_reply(lc_buf *b, lc_spdy_deflater *z, uint32_t stream_id, uint8_t flags,
                           const lc_spdy_header *h, size_t n)
{
    return put_reply_or_headers(b, z, LC_SPDY_SYN_REPLY, stream_id, flags, h, n);
}

int lc__spdy_put_headers(lc_buf *b, lc_spdy_deflater *z, uint32_t stream_id, uint8_t flags,
                         const lc_spdy_header *h, size_t n)
{
    return put_reply_or_headers(b, z, LC_SPDY_HEADERS, stream_id, flags, h, n);
}

int lc__spdy_put_rst_stream(lc_buf *b, uint32_t stream_id, uint32_t status)
{
    if (stream_id == 0 || stream_id > LC_SPDY_MAX_STREAM_ID)
        return LC_EINVAL;
    uint8_t fixed[8];
    lc__spdy_put32(fixed, stream_id);
    lc__spdy_put32(fixed + 4, status);
    return put_fixed(b, LC_SPDY_RST_STREAM, 0, fixed, sizeof fixed);
}

int lc__spdy_put_settings(lc_buf *b, uint8_t flags, const lc_spdy_setting *s, size_t n)
{
    if (n > (LC_SPDY_MAX_LENGTH - 4) / 8 || (s == NULL && n))
        return LC_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (s[i].id > 0xffffffu)
            return LC_EINVAL;
    uint32_t len = 4 + 8 * (uint32_t)n;
    if (lc__buf_reserve(b, LC_SPDY_HEADER_LEN + (size_t)len) != 0)
        return LC_ENOMEM;
    uint8_t *p = b->data + b->len;
    lc__spdy_control_header(p, LC_SPDY_SETTINGS, flags, len);
    lc__spdy_put32(p + 8, (uint32_t)n);
    p += 12;
    for (size_t i = 0; i < n; i++, p += 8) {
        lc__spdy_put32(p, ((uint32_t)s[i].flags << 24) | s[i].id);
        lc__spdy_put32(p + 4, s[i].value);
    }
    b->len += LC_SPDY_HEADER_LEN + (size_t)len;
    return 0;
}

int lc__spdy_put_ping(lc_buf *b, uint32_t id)
{
    uint8_t fixed[4];
    lc__spdy_put32(fixed, id);
    return put_fixed(b, LC_SPDY_PING, 0, fixed, sizeof fixed);
}

int lc__spdy_put_goaway(lc_buf *b, uint32_t last_good_stream_id, uint32_t status)
{
    if (last_good_stream_id > LC_SPDY_MAX_STREAM_ID)
        return LC_EINVAL;
    uint8_t fixed[8];
    lc__spdy_put32(fixed, last_good_stream_id);
    lc__spdy_put32(fixed + 4, status);
    return put_fixed(b, LC_SPDY_GOAWAY, 0, fixed, sizeof fixed);
}

int lc__spdy_put_window_update(lc_buf *b, uint32_t stream_id, uint32_t delta)
{
    if (stream_id > LC_SPDY_MAX_STREAM_ID || delta == 0 || delta > 0x7fffffffu)
        return LC_EINVAL;
    uint8_t fixed[8];
    lc__spdy_put32(fixed, stream_id);
    lc__spdy_put32(fixed + 4, delta);
    return put_fixed(b, LC_SPDY_WINDOW_UPDATE, 0, fixed, sizeof fixed);
}

/*
 * frame_decode.c - the SPDY/3 frame decoder (src/spdy): bytes split anywhere in,
 * frames out, no I/O. The session feeds it what the transport read.
 *
 * Cost model: a DATA frame whose bytes are contiguous in the input is
 * reported straight from the input (one header parse, no copy, no
 * allocation). Only control frames that arrive split are gathered, in a
 * buffer that is reused.
 */
#include "spdy/spdy.h"

#include <string.h>

enum {
    ST_HEAD = 0, /* collecting the 8-byte frame header */
    ST_DATA,     /* inside a DATA payload */
    ST_CTRL,     /* gathering a known control payload */
    ST_SKIP      /* skipping an unknown control payload */
};

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void lc__spdy_decoder_init(lc_spdy_decoder *d, const lc_spdy_limits *lim)
{
    memset(d, 0, sizeof *d);
    lc__spdy_limits_resolve(&d->lim, lim);
    lc__buf_init(&d->ctl);
    lc__spdy_inflater_init(&d->inf);
}

void lc__spdy_decoder_free(lc_spdy_decoder *d)
{
    lc__buf_free(&d->ctl);
    lc__spdy_inflater_free(&d->inf);
}

int lc__spdy_decoder_idle(const lc_spdy_decoder *d)
{
    return d->error == 0 && d->state == ST_HEAD && d->head_have == 0;
}

void lc__spdy_setting_get(const lc_spdy_frame *f, uint32_t i, lc_spdy_setting *out)
{
    const uint8_t *p = f->data + (size_t)i * 8;
    out->flags = p[0];
    out->id = get32(p) & 0xffffffu;
    out->value = get32(p + 4);
}

static int fail(lc_spdy_decoder *d, int code)
{
    d->error = code;
    return code;
}

static int known_type(uint16_t t)
{
    return (t >= LC_SPDY_SYN_STREAM && t <= LC_SPDY_SETTINGS) ||
           (t >= LC_SPDY_PING && t <= LC_SPDY_WINDOW_UPDATE);
}

/* The length rule of a known control type: the smallest payload, and for
 * fixed-size frames the only one. */
static int check_control_length(uint16_t t, uint32_t len)
{
    switch (t) {
    case LC_SPDY_SYN_STREAM:    return len < 10 ? LC__SPDY_ELEN_SYN_STREAM : 0;
    case LC_SPDY_SYN_REPLY:     return len < 4 ? LC__SPDY_ELEN_SYN_REPLY : 0;
    case LC_SPDY_HEADERS:       return len < 4 ? LC__SPDY_ELEN_HEADERS : 0;
    case LC_SPDY_RST_STREAM:    return len != 8 ? LC__SPDY_ELEN_RST_STREAM : 0;
    case LC_SPDY_SETTINGS:      return len < 4 || (len - 4) % 8 ? LC__SPDY_ELEN_SETTINGS : 0;
    case LC_SPDY_PING:          return len != 4 ? LC__SPDY_ELEN_PING : 0;
    case LC_SPDY_GOAWAY:        return len != 8 ? LC__SPDY_ELEN_GOAWAY : 0;
    case LC_SPDY_WINDOW_UPDATE: return len != 8 ? LC__SPDY_ELEN_WINDOW_UPDATE : 0;
    default:                    return 0;
    }
}

/*
 * Takes a complete frame header: checks everything the header alone decides
 * (before any payload is stored) and sets up the payload state.
 */
static int begin_frame(lc_spdy_decoder *d, const uint8_t *h)
{
    uint32_t w0 = get32(h), w1 = get32(h + 4);
    d->flags = (uint8_t)(w1 >> 24);
    d->length = w1 & LC_SPDY_MAX_LENGTH;
    d->done = 0;
    if (d->length > d->lim.max_frame)
        return fail(d, LC__SPDY_EFRAME_SIZE);
    if (!(w0 & 0x80000000u)) {
        d->type = LC_SPDY_DATA;
        d->raw_type = 0;
        d->stream_id = w0;
        if (w0 == 0)
            return fail(d, LC__SPDY_ESTREAM_ZERO);
        d->state = ST_DATA;
        return 0;
    }
    if (((w0 >> 16) & 0x7fff) != LC_SPDY_VERSION)
        return fail(d, LC__SPDY_EVERSION);
    d->raw_type = (uint16_t)w0;
    if (!known_type(d->raw_type)) {
        d->type = LC_SPDY_UNKNOWN;
        d->state = ST_SKIP;
        return 0;
    }
    d->type = d->raw_type;
    int r = check_control_length(d->raw_type, d->length);
    if (r < 0)
        return fail(d, r);
    if (d->length > d->lim.max_control_frame)
        return fail(d, LC__SPDY_EFRAME_SIZE);
    d->state = ST_CTRL;
    return 0;
}

/* Fills *f from a complete control payload p[0..d->length). */
static int parse_control(lc_spdy_decoder *d, const uint8_t *p, lc_spdy_frame *f)
{
    const uint32_t len = d->length;
    memset(f, 0, sizeof *f);
    f->type = d->type;
    f->raw_type = d->raw_type;
    f->flags = d->flags;
    f->length = len;
    size_t hb = 0; /* offset of the header block, if any */
    switch (d->type) {
    case LC_SPDY_SYN_STREAM:
        f->stream_id = get32(p) & LC_SPDY_MAX_STREAM_ID;
        f->assoc_id = get32(p + 4) & LC_SPDY_MAX_STREAM_ID;
        f->priority = p[8] >> 5;
        f->slot = p[9];
        hb = 10;
        break;
    case LC_SPDY_SYN_REPLY:
    case LC_SPDY_HEADERS:
        f->stream_id = get32(p) & LC_SPDY_MAX_STREAM_ID;
        hb = 4;
        break;
    case LC_SPDY_RST_STREAM:
        f->stream_id = get32(p) & LC_SPDY_MAX_STREAM_ID;
        f->status = get32(p + 4);
        if (f->stream_id == 0)
            return fail(d, LC__SPDY_ESTREAM_ZERO);
        return 0;
    case LC_SPDY_SETTINGS:
        f->value = get32(p);
        if ((uint64_t)f->value * 8 != len - 4)
            return fail(d, LC__SPDY_ELEN_SETTINGS);
        f->data = p + 4;
        f->data_len = len - 4;
        return 0;
    case LC_SPDY_PING:
        f->value = get32(p);
        return 0;
    case LC_SPDY_GOAWAY:
        f->stream_id = get32(p) & LC_SPDY_MAX_STREAM_ID;
        f->status = get32(p + 4);
        return 0;
    case LC_SPDY_WINDOW_UPDATE:
        f->stream_id = get32(p) & LC_SPDY_MAX_STREAM_ID;
        f->value = get32(p + 4) & 0x7fffffffu;
        return 0;
    default:
        return 0;
    }
    /* Inflate even for a frame the session will refuse: the zlib stream is
     * shared by every block of the session. */
    int r = lc__spdy_inflate_block(&d->inf, &d->lim, p + hb, len - hb, &f->headers,
                                   &f->n_headers);
    if (r < 0)
        return fail(d, r);
    if (f->stream_id == 0)
        return fail(d, LC__SPDY_ESTREAM_ZERO);
    return 0;
}

static void data_fragment(lc_spdy_decoder *d, const uint8_t *p, uint32_t k, lc_spdy_frame *f)
{
    f->type = LC_SPDY_DATA;
    f->raw_type = 0;
    f->flags = d->flags;
    f->priority = 0;
    f->slot = 0;
    f->length = d->length;
    f->stream_id = d->stream_id;
    f->assoc_id = 0;
    f->status = 0;
    f->value = 0;
    f->data_offset = d->done;
    f->data = p;
    f->data_len = k;
    f->headers = NULL;
    f->n_headers = 0;
    d->done += k;
    f->data_last = d->done == d->length;
    if (f->data_last)
        d->state = ST_HEAD;
}

int lc__spdy_decode(lc_spdy_decoder *d, const uint8_t *p, size_t n, size_t *used,
                    lc_spdy_frame *f)
{
    size_t i = 0;
    int r;
    *used = 0;
    if (d->error)
        return d->error;

    /* Fast path: a whole DATA frame at the start of the input. */
    if (d->state == ST_HEAD && d->head_have == 0 && n >= LC_SPDY_HEADER_LEN && !(p[0] & 0x80)) {
        uint32_t w0 = get32(p), w1 = get32(p + 4);
        uint32_t len = w1 & LC_SPDY_MAX_LENGTH;
        if (w0 != 0 && len <= d->lim.max_frame && n - LC_SPDY_HEADER_LEN >= len) {
            d->flags = (uint8_t)(w1 >> 24);
            d->length = len;
            d->done = 0;
            d->stream_id = w0;
            data_fragment(d, p + LC_SPDY_HEADER_LEN, len, f);
            *used = LC_SPDY_HEADER_LEN + (size_t)len;
            return LC_SPDY_FRAME;
        }
    }

    for (;;) {
        switch (d->state) {
        case ST_HEAD: {
            const uint8_t *h;
            if (d->head_have == 0 && n - i >= LC_SPDY_HEADER_LEN) {
                h = p + i;
                i += LC_SPDY_HEADER_LEN;
            } else {
                size_t k = LC_SPDY_HEADER_LEN - d->head_have;
                if (k > n - i)
                    k = n - i;
                if (k > 0) /* (p may be NULL with n == 0) */
                    memcpy(d->head + d->head_have, p + i, k);
                d->head_have = (uint8_t)(d->head_have + k);
                i += k;
                if (d->head_have < LC_SPDY_HEADER_LEN) {
                    *used = i;
                    return 0;
                }
                d->head_have = 0;
                h = d->head;
            }
            if ((r = begin_frame(d, h)) < 0) {
                *used = i;
                return r;
            }
            if (d->length == 0 && d->state != ST_CTRL) {
                /* an empty DATA frame or unknown frame is complete already */
                if (d->state == ST_DATA) {
                    data_fragment(d, p + i, 0, f);
                } else {
                    memset(f, 0, sizeof *f);
                    f->type = LC_SPDY_UNKNOWN;
                    f->raw_type = d->raw_type;
                    f->flags = d->flags;
                    d->state = ST_HEAD;
                }
                *used = i;
                return LC_SPDY_FRAME;
            }
            break;
        }
        case ST_DATA: {
            size_t k = d->length - d->done;
            if (k > n - i)
                k = n - i;
            if (k == 0) {
                *used = i;
                return 0;
            }
            data_fragment(d, p + i, (uint32_t)k, f);
            *used = i + k;
            return LC_SPDY_FRAME;
        }
        case ST_CTRL: {
            size_t need = d->length - d->done;
            const uint8_t *payload;
            if (d->done == 0 && n - i >= need) {
                payload = p + i; /* contiguous: parse in place */
                i += need;
            } else {
                size_t k = need < n - i ? need : n - i;
                if (d->done == 0) {
                    /* do not keep a large buffer for the usual small frames */
                    if (d->ctl.cap > 65536 && d->length <= 65536)
                        lc__buf_free(&d->ctl);
                    d->ctl.len = 0;
                    if (lc__buf_reserve(&d->ctl, d->length) != 0) {
                        *used = i;
                        return fail(d, LC_ENOMEM);
                    }
                }
                memcpy(d->ctl.data + d->ctl.len, p + i, k);
                d->ctl.len += k;
                d->done += (uint32_t)k;
                i += k;
                if (d->done < d->length) {
                    *used = i;
                    return 0;
                }
                payload = d->ctl.data;
            }
            d->state = ST_HEAD;
            *used = i;
            r = parse_control(d, payload, f);
            return r < 0 ? r : LC_SPDY_FRAME;
        }
        case ST_SKIP: {
            size_t k = d->length - d->done;
            if (k > n - i)
                k = n - i;
            d->done += (uint32_t)k;
            i += k;
            if (d->done < d->length) {
                *used = i;
                return 0;
            }
            memset(f, 0, sizeof *f);
            f->type = LC_SPDY_UNKNOWN;
            f->raw_type = d->raw_type;
            f->flags = d->flags;
            f->length = d->length;
            d->state = ST_HEAD;
            *used = i;
            return LC_SPDY_FRAME;
        }
        default:
            return fail(d, LC_EINVAL);
        }
    }
}

/*
 * wire.h - msgpack header classification shared by the fast decoder
 * (decode.c) and the streaming boundary scanner (stream.c), so that both
 * apply the same structural checks and limits in the same order and report
 * the same error for the same bytes. Private to src/codec.
 */
#ifndef LC_CODEC_WIRE_H
#define LC_CODEC_WIRE_H

#include "codec/codec.h"

#include <stdbool.h>
#include <string.h>

enum lc_wkind {
    LC_WK_NIL, LC_WK_BOOL, LC_WK_INT, LC_WK_UINT, LC_WK_F32, LC_WK_F64,
    LC_WK_STR, LC_WK_BIN, LC_WK_ARRAY, LC_WK_MAP, LC_WK_EXT
};

/* One decoded msgpack header. Numbers are complete in the header (hlen
 * includes their bytes); str/bin/ext payloads follow it. */
struct lc_whdr {
    uint8_t kind;    /* enum lc_wkind */
    uint8_t hlen;    /* bytes of the header */
    int8_t ext;      /* LC_WK_EXT: the (signed) ext type */
    uint64_t len;    /* STR/BIN/EXT: payload bytes; ARRAY/MAP: entries (pairs) */
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double d;
    } v;
};

/* lc__whdr_read result when fewer bytes than the header are available. */
#define LC__WNEED 1

static inline uint16_t lc__be16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static inline uint32_t lc__be32(const uint8_t *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return __builtin_bswap32(x);
}

static inline uint64_t lc__be64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return __builtin_bswap64(x);
}

/* The 12-byte payload of a time ext (ext 6) at pl: big-endian seconds,
 * then nanoseconds. Returns whether the nanoseconds are valid (< 1e9), the
 * one check a time's payload gets, wherever a decoder reads one. */
static inline bool lc__wtime(const uint8_t *pl, int64_t *sec, uint32_t *nsec)
{
    *sec = (int64_t)lc__be64(pl);
    *nsec = lc__be32(pl + 8);
    return *nsec < 1000000000u;
}

/* Reads the header at p (avail bytes there). 0, LC__WNEED, or LC_EBADMSG for
 * the reserved byte 0xc1. Does not look at payloads or limits. */
static inline __attribute__((always_inline)) int
lc__whdr_read(const uint8_t *p, size_t avail, struct lc_whdr *h)
{
    if (avail == 0)
        return LC__WNEED;
    uint8_t b = p[0];
    h->hlen = 1;
    h->ext = 0;
    h->len = 0;
    if (b <= 0x7f) {
        h->kind = LC_WK_INT;
        h->v.i = b;
        return 0;
    }
    if (b >= 0xe0) {
        h->kind = LC_WK_INT;
        h->v.i = (int8_t)b;
        return 0;
    }
    if (b <= 0x8f) {
        h->kind = LC_WK_MAP;
        h->len = b & 0x0fu;
        return 0;
    }
    if (b <= 0x9f) {
        h->kind = LC_WK_ARRAY;
        h->len = b & 0x0fu;
        return 0;
    }
    if (b <= 0xbf) {
        h->kind = LC_WK_STR;
        h->len = b & 0x1fu;
        return 0;
    }
    /* 0xc0..0xdf: the first byte says how long the header is */
    static const uint8_t hlen_of[32] = {
        1, 1, 1, 1,     /* c0 nil, c1 reserved, c2 false, c3 true */
        2, 3, 5,        /* c4..c6 bin 8/16/32 */
        3, 4, 6,        /* c7..c9 ext 8/16/32 */
        5, 9,           /* ca float32, cb float64 */
        2, 3, 5, 9,     /* cc..cf uint 8..64 */
        2, 3, 5, 9,     /* d0..d3 int 8..64 */
        2, 2, 2, 2, 2,  /* d4..d8 fixext 1/2/4/8/16 */
        2, 3, 5,        /* d9..db str 8/16/32 */
        3, 5,           /* dc, dd array 16/32 */
        3, 5            /* de, df map 16/32 */
    };
    unsigned hl = hlen_of[b - 0xc0];
    if (avail < hl)
        return LC__WNEED;
    h->hlen = (uint8_t)hl;
    const uint8_t *q = p + 1;
    switch (b) {
    case 0xc0: h->kind = LC_WK_NIL; return 0;
    case 0xc1: return LC_EBADMSG;
    case 0xc2: h->kind = LC_WK_BOOL; h->v.b = false; return 0;
    case 0xc3: h->kind = LC_WK_BOOL; h->v.b = true; return 0;
    case 0xc4: h->kind = LC_WK_BIN; h->len = q[0]; return 0;
    case 0xc5: h->kind = LC_WK_BIN; h->len = lc__be16(q); return 0;
    case 0xc6: h->kind = LC_WK_BIN; h->len = lc__be32(q); return 0;
    case 0xc7: h->kind = LC_WK_EXT; h->len = q[0]; h->ext = (int8_t)q[1]; return 0;
    case 0xc8: h->kind = LC_WK_EXT; h->len = lc__be16(q); h->ext = (int8_t)q[2]; return 0;
    case 0xc9: h->kind = LC_WK_EXT; h->len = lc__be32(q); h->ext = (int8_t)q[4]; return 0;
    case 0xca: {
        uint32_t x = lc__be32(q);
        float f;
        memcpy(&f, &x, 4);
        h->kind = LC_WK_F32;
        h->v.d = (double)f;
        return 0;
    }
    case 0xcb: {
        uint64_t x = lc__be64(q);
        h->kind = LC_WK_F64;
        memcpy(&h->v.d, &x, 8);
        return 0;
    }
    case 0xcc: h->kind = LC_WK_INT; h->v.i = q[0]; return 0;
    case 0xcd: h->kind = LC_WK_INT; h->v.i = lc__be16(q); return 0;
    case 0xce: h->kind = LC_WK_INT; h->v.i = lc__be32(q); return 0;
    case 0xcf:
        h->v.u = lc__be64(q);
        h->kind = h->v.u > (uint64_t)INT64_MAX ? LC_WK_UINT : LC_WK_INT;
        return 0;
    case 0xd0: h->kind = LC_WK_INT; h->v.i = (int8_t)q[0]; return 0;
    case 0xd1: h->kind = LC_WK_INT; h->v.i = (int16_t)lc__be16(q); return 0;
    case 0xd2: h->kind = LC_WK_INT; h->v.i = (int32_t)lc__be32(q); return 0;
    case 0xd3: h->kind = LC_WK_INT; h->v.i = (int64_t)lc__be64(q); return 0;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        h->kind = LC_WK_EXT;
        h->len = 1u << (b - 0xd4);
        h->ext = (int8_t)q[0];
        return 0;
    case 0xd9: h->kind = LC_WK_STR; h->len = q[0]; return 0;
    case 0xda: h->kind = LC_WK_STR; h->len = lc__be16(q); return 0;
    case 0xdb: h->kind = LC_WK_STR; h->len = lc__be32(q); return 0;
    case 0xdc: h->kind = LC_WK_ARRAY; h->len = lc__be16(q); return 0;
    case 0xdd: h->kind = LC_WK_ARRAY; h->len = lc__be32(q); return 0;
    case 0xde: h->kind = LC_WK_MAP; h->len = lc__be16(q); return 0;
    default:   h->kind = LC_WK_MAP; h->len = lc__be32(q); return 0; /* 0xdf */
    }
}

/*
 * Structural rules and limits for the header h found at byte offset pos of
 * the message, with `depth` containers open around it. In this order:
 * bad ext (LC_EBADMSG), container nesting (LC_EDEPTH), container entries
 * (LC_ETOOBIG), and the least number of bytes the value needs ending beyond
 * max_message (LC_ETOOBIG). Nothing here depends on bytes after the header,
 * so a header claiming 4 GiB is refused before anything is read or allocated.
 */
static inline __attribute__((always_inline)) int
lc__whdr_check(const struct lc_whdr *h, uint64_t pos, uint32_t depth, const lc_limits *lim)
{
    uint64_t need = h->hlen;
    switch (h->kind) {
    case LC_WK_EXT:
        if (h->ext >= LC_EXT_DUPLEX && h->ext <= LC_EXT_RECEIVER) {
            if (h->len != 4 && h->len != 8)
                return LC_EBADMSG;
        } else if (h->ext == LC_EXT_TIME) {
            if (h->len != 12)
                return LC_EBADMSG;
        } else if (h->ext != LC_EXT_BODY || depth != 0) {
            return LC_EBADMSG;
        }
        need += h->len;
        break;
    case LC_WK_STR:
    case LC_WK_BIN:
        need += h->len;
        break;
    case LC_WK_ARRAY:
    case LC_WK_MAP:
        if (depth >= lim->max_depth)
            return LC_EDEPTH;
        if (h->len > lim->max_elements)
            return LC_ETOOBIG;
        need += h->kind == LC_WK_MAP ? 2 * h->len : h->len;
        break;
    default:
        break;
    }
    if (pos > lim->max_message || need > lim->max_message - pos)
        return LC_ETOOBIG;
    return 0;
}

#endif

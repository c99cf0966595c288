/*
 * encode.c - the msgpack encoder (src/codec): a message's value tree (or its
 * opaque body) to bytes appended to an lc_buf, with msgpack-c's packer for
 * the primitives. Also lc_buf and the public lc_msgpack_encode().
 *
 * The walk is iterative (explicit stack), so a deep tree cannot overflow the
 * C stack; LC_ENCODE_MAX_DEPTH also stops a tree that was made cyclic.
 */
#include "codec/codec.h"

#include <stdlib.h>
#include <string.h>

/* ---- lc_buf -------------------------------------------------------------- */

void lc__buf_init(lc_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void lc__buf_free(lc_buf *b)
{
    free(b->data);
    lc__buf_init(b);
}

int lc__buf_reserve(lc_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    if (extra > SIZE_MAX / 2 - b->len)
        return LC_ENOMEM;
    size_t need = b->len + extra;
    size_t ncap = b->cap ? b->cap * 2 : 64;
    while (ncap < need)
        ncap *= 2;
    uint8_t *n = realloc(b->data, ncap);
    if (n == NULL)
        return LC_ENOMEM;
    b->data = n;
    b->cap = ncap;
    return 0;
}

int lc__buf_append(lc_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (lc__buf_reserve(b, n) != 0)
        return LC_ENOMEM;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

#include "codec/mpack.h"

/* ---- values -------------------------------------------------------------- */

uint8_t lc__codec_ext_for(const lc_value *v)
{
    if (v == NULL)
        return 0;
    switch (v->type) {
    case LC_SENDER:   return LC_EXT_SENDER;
    case LC_RECEIVER: return LC_EXT_RECEIVER;
    case LC_STREAM:
        switch (v->mode) {
        case LC_STREAM_DUPLEX: return LC_EXT_DUPLEX;
        case LC_STREAM_WRITE:  return LC_EXT_WRITE;
        case LC_STREAM_READ:   return LC_EXT_READ;
        default:               return 0;
        }
    default:
        if (v->type == (uint8_t)LC__REF)
            return v->mode;
        return 0;
    }
}

/* A reference: fixext 4 when the id fits in 32 bits, else fixext 8. */
static inline int pack_ref(lc_buf *pk, uint8_t type, uint64_t ref)
{
    uint8_t b[8];
    if (ref <= UINT32_MAX) {
        uint32_t x = __builtin_bswap32((uint32_t)ref);
        memcpy(b, &x, 4);
        if (lc__mp_ext(pk, 4, (int8_t)type) != 0 || lc__mp_ext_body(pk, b, 4) != 0)
            return LC_ENOMEM;
        return 0;
    }
    uint64_t x = __builtin_bswap64(ref);
    memcpy(b, &x, 8);
    if (lc__mp_ext(pk, 8, (int8_t)type) != 0 || lc__mp_ext_body(pk, b, 8) != 0)
        return LC_ENOMEM;
    return 0;
}

/* An attachment or an unresolved reference, as ext 1..5. */
static int pack_attachment(lc_buf *pk, lc_value *v, const struct lc_codec_hooks *hooks)
{
    if (v->type == (uint8_t)LC__REF) {
        if (v->mode < LC_EXT_DUPLEX || v->mode > LC_EXT_RECEIVER)
            return LC_EINVAL;
        return pack_ref(pk, v->mode, v->u.ref);
    }
    if (v->type != LC_SENDER && v->type != LC_RECEIVER && v->type != LC_STREAM)
        return LC_EINVAL;
    if (v->flags & LC_VF_TAKEN)
        return LC_ETAKEN;
    if (hooks == NULL || hooks->encode_attachment == NULL)
        return LC_ENOTSUP;
    uint8_t type = 0;
    uint64_t ref = 0;
    int rc = hooks->encode_attachment(hooks->ctx, v, &type, &ref);
    if (rc < 0)
        return rc;
    if (type < LC_EXT_DUPLEX || type > LC_EXT_RECEIVER)
        return LC_EINVAL;
    return pack_ref(pk, type, ref);
}

/* Everything but arrays and maps. */
static inline int pack_scalar(lc_buf *pk, lc_value *v, const struct lc_codec_hooks *hooks)
{
    int r;
    switch (v->type) {
    case LC_NIL:
        r = lc__mp_nil(pk);
        break;
    case LC_BOOL:
        r = v->u.b ? lc__mp_true(pk) : lc__mp_false(pk);
        break;
    case LC_INT:
        r = lc__mp_int64(pk, v->u.i);
        break;
    case LC_UINT:
        r = lc__mp_uint64(pk, v->u.u);
        break;
    case LC_DOUBLE:
        r = lc__mp_double(pk, v->u.d);
        break;
    case LC_STRING:
        r = lc__mp_str(pk, v->len);
        if (r == 0)
            r = lc__mp_str_body(pk, v->u.bytes, v->len);
        break;
    case LC_BINARY:
        r = lc__mp_bin(pk, v->len);
        if (r == 0)
            r = lc__mp_bin_body(pk, v->u.bytes, v->len);
        break;
    case LC_TIME:
        if (v->u.t.nsec >= 1000000000u)
            return LC_EINVAL;
        r = lc__mp_time(pk, v->u.t.sec, v->u.t.nsec);
        break;
    default:
        return pack_attachment(pk, v, hooks);
    }
    return r == 0 ? 0 : LC_ENOMEM;
}

struct eframe {
    lc_value **items;
    uint64_t i, n; /* next item, number of items (2 per map pair) */
};

#define ESTACK_INLINE 24

static int pack_tree(lc_buf *pk, lc_value *v, const struct lc_codec_hooks *hooks)
{
    struct eframe inl[ESTACK_INLINE];
    struct eframe *st = inl;
    uint32_t cap = ESTACK_INLINE, depth = 0;
    int rc = 0;

    for (;;) {
        if (v->type == LC_ARRAY || v->type == LC_MAP) {
            uint64_t n = v->type == LC_MAP ? 2 * (uint64_t)v->len : v->len;
            int r = v->type == LC_MAP ? lc__mp_map(pk, v->len) : lc__mp_array(pk, v->len);
            if (r != 0) {
                rc = LC_ENOMEM;
                break;
            }
            if (n > 0) {
                if (depth >= LC_ENCODE_MAX_DEPTH) {
                    rc = LC_EDEPTH;
                    break;
                }
                if (depth == cap) {
                    struct eframe *ns = malloc((size_t)cap * 2 * sizeof *ns);
                    if (ns == NULL) {
                        rc = LC_ENOMEM;
                        break;
                    }
                    memcpy(ns, st, (size_t)depth * sizeof *ns);
                    if (st != inl)
                        free(st);
                    st = ns;
                    cap *= 2;
                }
                st[depth].items = v->u.items;
                st[depth].i = 0;
                st[depth].n = n;
                depth++;
            }
        } else {
            rc = pack_scalar(pk, v, hooks);
            if (rc != 0)
                break;
        }
        while (depth > 0 && st[depth - 1].i == st[depth - 1].n)
            depth--;
        if (depth == 0)
            break;
        struct eframe *f = &st[depth - 1];
        v = f->items[f->i++];
    }
    if (st != inl)
        free(st);
    return rc;
}

/* Ext 7 (ours): [content-type, body, [attachment ext, ...]]. The payload is
 * packed after room for the largest ext header, then moved down behind the
 * header it turned out to need. */
static int pack_body(lc_buf *out, const lc_msg *m, const struct lc_codec_hooks *hooks)
{
    if (m->body_len > UINT32_MAX)
        return LC_ETOOBIG;
    size_t hdr = out->len;
    if (lc__buf_reserve(out, 6) != 0)
        return LC_ENOMEM;
    out->len += 6;

    lc_buf *pk = out;
    const char *ct = m->content_type ? m->content_type : "";
    size_t ct_len = strlen(ct);
    if (lc__mp_array(pk, 3) != 0 ||
        lc__mp_str(pk, ct_len) != 0 || lc__mp_str_body(pk, ct, ct_len) != 0 ||
        lc__mp_bin(pk, m->body_len) != 0 ||
        lc__mp_bin_body(pk, m->body, m->body_len) != 0 ||
        lc__mp_array(pk, m->body_att_len) != 0)
        return LC_ENOMEM;
    for (uint32_t i = 0; i < m->body_att_len; i++) {
        int rc = pack_attachment(pk, m->body_att[i], hooks);
        if (rc != 0)
            return rc;
    }
    size_t plen = out->len - hdr - 6;
    if (plen > UINT32_MAX)
        return LC_ETOOBIG;

    lc_buf h;
    uint8_t hb[8];
    h.data = hb;
    h.len = 0;
    h.cap = sizeof hb;
    if (lc__mp_ext(&h, plen, LC_EXT_BODY) != 0) /* <= 6 bytes: never grows h */
        return LC_ENOMEM;
    memmove(out->data + hdr + h.len, out->data + hdr + 6, plen);
    memcpy(out->data + hdr, hb, h.len);
    out->len = hdr + h.len + plen;
    return 0;
}

int lc__encode(const lc_msg *m, lc_buf *out, const struct lc_codec_hooks *hooks)
{
    if (m == NULL || out == NULL)
        return LC_EINVAL;
    size_t start = out->len;
    int rc;
    if (m->body != NULL) {
        rc = pack_body(out, m, hooks);
    } else if (m->wire != NULL) {
        rc = lc__buf_append(out, m->wire, m->wire_len);
    } else if (m->root == NULL) {
        rc = lc__buf_append(out, "\xc0", 1);
    } else {
        rc = pack_tree(out, m->root, hooks);
    }
    if (rc != 0)
        out->len = start;
    return rc;
}

LC_API int lc_msgpack_encode(const lc_msg *m, uint8_t **out, size_t *len)
{
    if (out != NULL)
        *out = NULL;
    if (len != NULL)
        *len = 0;
    if (m == NULL || out == NULL || len == NULL)
        return LC_EINVAL;
    lc_buf b;
    lc__buf_init(&b);
    int rc = lc__encode(m, &b, NULL);
    if (rc != 0) {
        lc__buf_free(&b);
        return rc;
    }
    *out = b.data;
    *len = b.len;
    return 0;
}

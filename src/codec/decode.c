/*
 * decode.c - the fast msgpack decoder (src/codec): one complete message from
 * a contiguous buffer straight into the message's arena, iteratively (an
 * explicit stack, so a hostile max_depth cannot overflow the C stack). The
 * streaming decoder (stream.c) finds message boundaries and calls this.
 * Also the public lc_msgpack_decode() and lc_limits_default().
 *
 * Our own decoder rather than msgpack-c's unpacker: bench/bench_msgpack.c
 * measures both (msgpack-c builds its own object tree in a zone that then has
 * to be converted), and msgpack-c cannot enforce our limits before allocating
 * (its nesting limit is a compile-time 32).
 */
#include "codec/codec.h"
#include "codec/wire.h"

#include <stdlib.h>
#include <string.h>

#define LC_DEFAULT_MAX_DEPTH    64u
#define LC_DEFAULT_MAX_MESSAGE  (64ull << 20)
#define LC_DEFAULT_MAX_ELEMENTS (1u << 20)

LC_API void lc_limits_default(lc_limits *l)
{
    if (l == NULL)
        return;
    l->max_depth = LC_DEFAULT_MAX_DEPTH;
    l->max_message = LC_DEFAULT_MAX_MESSAGE;
    l->max_elements = LC_DEFAULT_MAX_ELEMENTS;
}

void lc__limits_resolve(lc_limits *d, const lc_limits *s)
{
    lc_limits_default(d);
    if (s == NULL)
        return;
    if (s->max_depth)
        d->max_depth = s->max_depth;
    /* the encoder, the skimmer and the session's walks over references
     * (receive.c) stop at this depth: a deeper message would be decoded but
     * not fully walked */
    if (d->max_depth > LC_ENCODE_MAX_DEPTH)
        d->max_depth = LC_ENCODE_MAX_DEPTH;
    if (s->max_message)
        d->max_message = s->max_message;
    if (s->max_elements)
        d->max_elements = s->max_elements;
}

/* A placed value of type t with `extra` bytes right after it. */
static inline lc_value *new_val(lc_msg *m, uint8_t t, size_t extra)
{
    lc_value *v = lc__arena_alloc(m, sizeof *v + extra);
    if (v == NULL)
        return NULL;
    v->type = t;
    v->flags = LC_VF_PLACED;
    v->mode = 0;
    v->pad_ = 0;
    v->len = 0;
    v->cap = 0;
    v->owner = m;
    v->u.u = 0;
    return v;
}

static lc_value *new_bytes(lc_msg *m, uint8_t t, const uint8_t *p, uint32_t len)
{
    lc_value *v = new_val(m, t, (size_t)len + 1);
    if (v == NULL)
        return NULL;
    char *s = (char *)(v + 1);
    memcpy(s, p, len);
    s[len] = '\0';
    v->u.bytes = s;
    v->len = len;
    return v;
}

/* An ext 1..5 reference: through the hook, or as an LC__REF value. */
static int ref_value(lc_msg *m, uint8_t type, const uint8_t *payload, uint64_t plen,
                     const struct lc_codec_hooks *hooks, lc_value **out)
{
    uint64_t ref = plen == 4 ? lc__be32(payload) : lc__be64(payload);
    if (hooks != NULL && hooks->decode_attachment != NULL) {
        lc_value *v = NULL;
        int rc = hooks->decode_attachment(hooks->ctx, type, ref, m, &v);
        if (rc < 0)
            return rc;
        if (v == NULL || v->owner != m || (v->flags & LC_VF_PLACED))
            return LC_EINVAL;
        v->flags |= LC_VF_PLACED;
        *out = v;
        return 0;
    }
    lc_value *v = new_val(m, (uint8_t)LC__REF, 0);
    if (v == NULL)
        return LC_ENOMEM;
    m->has_refs = 1;
    v->mode = type;
    v->u.ref = ref;
    *out = v;
    return 0;
}

/*
 * Ext 7 (ours): payload [content-type str, body bin, [ext 1..5, ...]]. The
 * ext length bounds everything, so any inner inconsistency is LC_EBADMSG.
 */
static int decode_body(lc_msg *m, const uint8_t *q, size_t len, const lc_limits *lim,
                       const struct lc_codec_hooks *hooks)
{
    struct lc_whdr h;
    size_t off = 0;

    if (lc__whdr_read(q, len, &h) != 0 || h.kind != LC_WK_ARRAY || h.len != 3)
        return LC_EBADMSG;
    off += h.hlen;

    if (lc__whdr_read(q + off, len - off, &h) != 0 || h.kind != LC_WK_STR ||
        h.len > len - off - h.hlen)
        return LC_EBADMSG;
    const uint8_t *ct = q + off + h.hlen;
    size_t ct_len = (size_t)h.len;
    if (memchr(ct, 0, ct_len) != NULL)
        return LC_EBADMSG;
    off += h.hlen + ct_len;

    if (lc__whdr_read(q + off, len - off, &h) != 0 || h.kind != LC_WK_BIN ||
        h.len > len - off - h.hlen)
        return LC_EBADMSG;
    const uint8_t *body = q + off + h.hlen;
    size_t body_len = (size_t)h.len;
    off += h.hlen + body_len;

    if (lc__whdr_read(q + off, len - off, &h) != 0 || h.kind != LC_WK_ARRAY)
        return LC_EBADMSG;
    if (h.len > lim->max_elements)
        return LC_ETOOBIG;
    uint64_t natt = h.len;
    off += h.hlen;
    if (natt * 6 > len - off) /* each ref is at least d6 TT + 4 bytes */
        return LC_EBADMSG;

    lc_value **att = NULL;
    if (natt > 0) {
        att = lc__arena_alloc(m, (size_t)natt * sizeof *att);
        if (att == NULL)
            return LC_ENOMEM;
    }
    for (uint64_t i = 0; i < natt; i++) {
        if (lc__whdr_read(q + off, len - off, &h) != 0 || h.kind != LC_WK_EXT ||
            h.ext < LC_EXT_DUPLEX || h.ext > LC_EXT_RECEIVER ||
            (h.len != 4 && h.len != 8) || h.len > len - off - h.hlen)
            return LC_EBADMSG;
        int rc = ref_value(m, (uint8_t)h.ext, q + off + h.hlen, h.len, hooks, &att[i]);
        if (rc != 0)
            return rc;
        off += h.hlen + (size_t)h.len;
    }
    if (off != len)
        return LC_EBADMSG;

    char *cts = lc__arena_alloc(m, ct_len + 1);
    if (cts == NULL)
        return LC_ENOMEM;
    memcpy(cts, ct, ct_len);
    cts[ct_len] = '\0';
    int rc = lc_msg_set_body(m, body, body_len, cts);
    if (rc != 0)
        return rc;
    m->body_att = att;
    m->body_att_len = (uint32_t)natt;
    m->body_att_cap = (uint32_t)natt;
    return 0;
}

struct dframe {
    lc_value **next; /* the slot the next element goes to */
    uint64_t left;   /* elements still to come */
};

#define DSTACK_INLINE 24

/*
 * The value tree of the message at p[0..n) (n > 0), built in m: its root (or
 * its body), and in *used the bytes it took. 0 or an error; m then holds
 * whatever was built so far, for the caller to free.
 */
static int decode_tree(lc_msg *m, const uint8_t *p, size_t n, const lc_limits *limp,
                       const struct lc_codec_hooks *hooks, size_t *used)
{
    const lc_limits lim = *limp;
    struct dframe inl[DSTACK_INLINE];
    struct dframe *st = inl;
    uint32_t st_cap = DSTACK_INLINE, depth = 0;
    lc_value *root = NULL;
    lc_value **next = NULL; /* cursor of the innermost open container */
    uint64_t left = 0;
    size_t pos = 0;
    int rc;

    for (;;) {
        struct lc_whdr h;
        size_t avail = n - pos;
        rc = lc__whdr_read(p + pos, avail, &h);
        if (rc != 0) {
            if (rc == LC__WNEED)
                rc = LC_ETRUNCATED;
            goto fail;
        }
        rc = lc__whdr_check(&h, pos, depth, &lim);
        if (rc != 0)
            goto fail;
        const uint8_t *pl = p + pos + h.hlen; /* payload, if any */
        size_t after = avail - h.hlen;         /* bytes after the header */
        lc_value *v;

        switch (h.kind) {
        case LC_WK_NIL:
            v = new_val(m, LC_NIL, 0);
            break;
        case LC_WK_BOOL:
            v = new_val(m, LC_BOOL, 0);
            if (v)
                v->u.b = h.v.b;
            break;
        case LC_WK_INT:
            v = new_val(m, LC_INT, 0);
            if (v)
                v->u.i = h.v.i;
            break;
        case LC_WK_UINT:
            v = new_val(m, LC_UINT, 0);
            if (v)
                v->u.u = h.v.u;
            break;
        case LC_WK_F32:
        case LC_WK_F64:
            v = new_val(m, LC_DOUBLE, 0);
            if (v)
                v->u.d = h.v.d;
            break;
        case LC_WK_STR:
        case LC_WK_BIN:
            if (h.len > after) {
                rc = LC_ETRUNCATED;
                goto fail;
            }
            v = new_bytes(m, h.kind == LC_WK_STR ? LC_STRING : LC_BINARY, pl, (uint32_t)h.len);
            pos += (size_t)h.len;
            break;
        case LC_WK_ARRAY:
        case LC_WK_MAP: {
            uint64_t slots = h.kind == LC_WK_MAP ? 2 * h.len : h.len;
            if (slots > after) { /* every element takes at least one byte */
                rc = LC_ETRUNCATED;
                goto fail;
            }
            v = new_val(m, h.kind == LC_WK_MAP ? LC_MAP : LC_ARRAY, 0);
            if (v == NULL)
                break;
            if (slots > 0) {
                v->u.items = lc__arena_alloc(m, (size_t)slots * sizeof(lc_value *));
                if (v->u.items == NULL) {
                    v = NULL;
                    break;
                }
                v->len = v->cap = (uint32_t)h.len;
            }
            break;
        }
        default: /* LC_WK_EXT, kind and length already checked */
            if (h.len > after) {
                rc = LC_ETRUNCATED;
                goto fail;
            }
            pos += (size_t)h.len;
            if (h.ext == LC_EXT_TIME) {
                int64_t sec;
                uint32_t nsec;
                if (!lc__wtime(pl, &sec, &nsec)) {
                    rc = LC_EBADMSG;
                    goto fail;
                }
                v = new_val(m, LC_TIME, 0);
                if (v) {
                    v->u.t.sec = sec;
                    v->u.t.nsec = nsec;
                }
            } else if (h.ext == LC_EXT_BODY) { /* only at the top (checked) */
                rc = decode_body(m, pl, (size_t)h.len, &lim, hooks);
                if (rc != 0)
                    goto fail;
                pos += h.hlen;
                goto done;
            } else {
                rc = ref_value(m, (uint8_t)h.ext, pl, h.len, hooks, &v);
                if (rc != 0)
                    goto fail;
            }
            break;
        }
        if (v == NULL) {
            rc = LC_ENOMEM;
            goto fail;
        }
        pos += h.hlen;

        /* place v, then open it if it is a non-empty container. The open
         * container's cursor lives in locals (next, left); st[] keeps the
         * cursors of the containers around it. */
        if (depth == 0) {
            root = v;
        } else {
            *next++ = v;
            left--;
        }
        if ((h.kind == LC_WK_ARRAY || h.kind == LC_WK_MAP) && h.len > 0) {
            if (depth > 0) {
                if (depth - 1 == st_cap) {
                    uint32_t ncap = st_cap * 2;
                    struct dframe *ns = malloc((size_t)ncap * sizeof *ns);
                    if (ns == NULL) {
                        rc = LC_ENOMEM;
                        goto fail;
                    }
                    memcpy(ns, st, (size_t)(depth - 1) * sizeof *ns);
                    if (st != inl)
                        free(st);
                    st = ns;
                    st_cap = ncap;
                }
                st[depth - 1].next = next;
                st[depth - 1].left = left;
            }
            next = v->u.items;
            left = h.kind == LC_WK_MAP ? 2 * h.len : h.len;
            depth++;
            continue;
        }
        if (depth == 0) /* a scalar or an empty container at the top */
            break;
        while (left == 0) {
            if (--depth == 0)
                break;
            next = st[depth - 1].next;
            left = st[depth - 1].left;
        }
        if (depth == 0)
            break;
    }
    m->root = root;
done:
    if (st != inl)
        free(st);
    *used = pos;
    return 0;

fail:
    if (st != inl)
        free(st);
    return rc;
}

/*
 * Wire form. A message without any ext but times (no attachment, reference
 * or body) is kept as its bytes: lc_unpack reads them where it can (pack.c),
 * lc__encode sends them as they are, and the tree is built only when asked
 * for (lc_msg_root). Decoding a SimpleStruct into a tree was ~40% of a
 * session receiver's CPU per message (callgrind, bench_session lc-oneway).
 *
 * plain_length checks p[0..n) as decode_tree would, with the same header
 * checks (wire.h) in the same order. It returns the length of the message
 * at p when it is complete, plain, valid and canonical, and 0 in every
 * other case (an ext other than a time, an error, bytes missing, a header
 * in another form than ours, nesting deeper than its own stack): the
 * tree decoder then runs and reports what there is to report, so an error
 * is always the tree decoder's own.
 */
#define PLAIN_DEPTH 32

/* The header h read at p is the one the tree encoder writes for its value
 * (msgpack-c's smallest form; doubles always as float64), so that the kept
 * bytes are the bytes encoding the tree would give: a peer's other forms
 * (a float32, an int in a wider form) are re-encoded as before. One
 * exception: a positive integer in the smallest signed form that holds it,
 * the form Go's ugorji codec writes (200 as d1 00 c8, PROTOCOL.md 4.6), is
 * kept too, so that messages from Go peers stay bytes as ours do; such a
 * message is sent on as Go wrote it, and its tree, once built, encodes in
 * our form. */
static inline bool canonical(const uint8_t *p, const struct lc_whdr *h)
{
    uint64_t n = h->len;
    switch (h->kind) {
    case LC_WK_INT:
        if (h->v.i >= 0) {
            int64_t i = h->v.i;
            if (i < 128)
                return h->hlen == 1;
            if (p[0] >= 0xd1 && p[0] <= 0xd3) /* Go's form */
                return p[0] == (i <= INT16_MAX ? 0xd1 : i <= INT32_MAX ? 0xd2 : 0xd3);
            return p[0] >= 0xcc && p[0] <= 0xcf &&
                   h->hlen == (i < 256 ? 2 : i < 65536 ? 3 : i <= (int64_t)UINT32_MAX ? 5 : 9);
        } else {
            int64_t i = h->v.i;
            if (i >= -32)
                return h->hlen == 1;
            return h->hlen == (i >= -128 ? 2 : i >= -32768 ? 3 : i >= INT32_MIN ? 5 : 9);
        }
    case LC_WK_F32:
        return false;
    case LC_WK_STR:
        return h->hlen == (n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5);
    case LC_WK_BIN:
        return h->hlen == (n < 256 ? 2 : n < 65536 ? 3 : 5);
    case LC_WK_ARRAY:
    case LC_WK_MAP:
        return h->hlen == (n < 16 ? 1 : n < 65536 ? 3 : 5);
    default: /* nil, bool, uint above INT64_MAX, float64: one form each */
        return true;
    }
}

static size_t plain_length(const uint8_t *p, size_t n, const lc_limits *lim)
{
    uint64_t left[PLAIN_DEPTH];
    uint32_t depth = 0;
    size_t pos = 0;
    int64_t sec;   /* (a time's, only checked) */
    uint32_t nsec;
    for (;;) {
        /* The one-byte headers first (a SimpleStruct is nothing else): the
         * same checks as below, without the general header's round trip
         * through struct lc_whdr (~70 instructions per element, callgrind;
         * test_msg_wire's test_decode_limits_at_one_byte_headers) */
        uint8_t b = pos < n ? p[pos] : 0xc1;
        if (b <= 0x7f || b >= 0xe0) { /* fixint */
            if (pos >= lim->max_message)
                return 0;
            pos++;
            goto element_done;
        }
        if (b >= 0xa0 && b <= 0xbf) { /* fixstr */
            size_t len = b & 0x1fu;
            if (pos > lim->max_message || 1 + len > lim->max_message - pos || len > n - pos - 1)
                return 0;
            pos += 1 + len;
            goto element_done;
        }
        if (b >= 0x81 && b <= 0x9f && b != 0x90) { /* fixmap, fixarray, not empty */
            uint64_t len = b & 0x0fu, slots = b <= 0x8f ? 2 * len : len;
            if (depth >= lim->max_depth || len > lim->max_elements || pos > lim->max_message ||
                1 + slots > lim->max_message - pos || depth == PLAIN_DEPTH)
                return 0;
            pos++;
            left[depth++] = slots;
            continue;
        }
        struct lc_whdr h;
        if (lc__whdr_read(p + pos, n - pos, &h) != 0 || lc__whdr_check(&h, pos, depth, lim) != 0 ||
            !canonical(p + pos, &h))
            return 0;
        pos += h.hlen;
        switch (h.kind) {
        case LC_WK_EXT:
            /* a time, as our encoder writes it (c7 0c 06: whdr_check saw
             * the 12 bytes), with valid nanoseconds; any other ext (an
             * attachment, a reference, a body) goes to the tree */
            if (h.ext != LC_EXT_TIME || h.hlen != 3 || 12 > n - pos || !lc__wtime(p + pos, &sec, &nsec))
                return 0;
            pos += 12;
            break;
        case LC_WK_STR:
        case LC_WK_BIN:
            if (h.len > n - pos)
                return 0;
            pos += (size_t)h.len;
            break;
        case LC_WK_ARRAY:
        case LC_WK_MAP:
            if (h.len > 0) {
                if (depth == PLAIN_DEPTH)
                    return 0;
                left[depth++] = h.kind == LC_WK_MAP ? 2 * h.len : h.len;
                continue;
            }
            break;
        default:
            break;
        }
    element_done:
        /* one element is complete: count it off its containers */
        for (;;) {
            if (depth == 0)
                return pos;
            if (--left[depth - 1] > 0)
                break;
            depth--;
        }
    }
}

int lc__decode(const uint8_t *p, size_t n, const lc_limits *ulim,
               const struct lc_codec_hooks *hooks, lc_msg **out, size_t *consumed)
{
    if (out == NULL)
        return LC_EINVAL;
    *out = NULL;
    if (p == NULL && n > 0)
        return LC_EINVAL;
    if (n == 0)
        return LC_ETRUNCATED;

    lc_limits lim;
    lc__limits_resolve(&lim, ulim);
    lc_msg *m = lc_msg_new();
    if (m == NULL)
        return LC_ENOMEM;

    int rc = 0;
    size_t used = plain_length(p, n, &lim);
    if (used > 0) {
        uint8_t *w = lc__arena_alloc(m, used);
        if (w == NULL) {
            rc = LC_ENOMEM;
        } else {
            memcpy(w, p, used);
            m->wire = w;
            m->wire_len = used;
        }
    } else {
        rc = decode_tree(m, p, n, &lim, hooks, &used);
    }
    if (rc == 0 && consumed == NULL && used != n)
        rc = LC_ETRAILING;
    if (rc != 0) {
        lc_msg_free(m);
        return rc;
    }
    if (consumed != NULL)
        *consumed = used;
    *out = m;
    return 0;
}

int lc__msg_materialize(lc_msg *m)
{
    /* the bytes were checked when they came in (or written by lc_pack):
     * no limit applies a second time */
    static const lc_limits none = { UINT32_MAX, UINT64_MAX, UINT32_MAX };
    size_t used;
    int rc = decode_tree(m, m->wire, m->wire_len, &none, NULL, &used);
    if (rc == 0) {
        m->wire = NULL;
        m->wire_len = 0;
    }
    return rc;
}

/* Public decoding has no session to resolve references: refuse them rather
 * than expose internal LC__REF values. */
static int refuse_refs(void *ctx, uint8_t ext_type, uint64_t ref, lc_msg *m, lc_value **out)
{
    (void)ctx;
    (void)ext_type;
    (void)ref;
    (void)m;
    (void)out;
    return LC_ENOTSUP;
}

static const struct lc_codec_hooks public_decode_hooks = {
    .ctx = NULL, .encode_attachment = NULL, .decode_attachment = refuse_refs
};

LC_API int lc_msgpack_decode(const void *data, size_t len, const lc_limits *limits, lc_msg **out)
{
    if (out == NULL)
        return LC_EINVAL;
    *out = NULL;
    if (data == NULL)
        return len == 0 ? LC_ETRUNCATED : LC_EINVAL;
    return lc__decode(data, len, limits, &public_decode_hooks, out, NULL);
}

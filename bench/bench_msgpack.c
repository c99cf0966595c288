/*
 * bench_msgpack.c - the msgpack codec (src/codec) against msgpack-c.
 *
 * The codec rule: decode with msgpack-c unless our own decoder is at least 2x
 * faster on the message benchmark. The baseline here is msgpack-c's decoder
 * used the way we would have to use it: msgpack_unpack_next() into a reused
 * msgpack_unpacked (its zone), then a conversion of the msgpack_object tree
 * into our value tree (same arena, same result as lc__decode). The encoder is
 * the same on both sides (ours, built on msgpack-c's packer); a hand-written
 * byte writer over the same tree is printed as the floor the packer is
 * compared with.
 *
 * Nothing is asserted. Fixed iteration counts, ~1-2 s in all.
 */
#include "codec/codec.h"
#include "msg/msg_internal.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static volatile int64_t sink;

/* ---- the msgpack-c path: unpack, then convert to our tree ----------------- */

static lc_value *conv(lc_msg *m, const msgpack_object *o)
{
    lc_value *v;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return lc__value_alloc(m, LC_NIL);
    case MSGPACK_OBJECT_BOOLEAN:
        v = lc__value_alloc(m, LC_BOOL);
        if (v)
            v->u.b = o->via.boolean;
        return v;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        v = lc__value_alloc(m, o->via.u64 > INT64_MAX ? LC_UINT : LC_INT);
        if (v)
            v->u.u = o->via.u64;
        return v;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        v = lc__value_alloc(m, LC_INT);
        if (v)
            v->u.i = o->via.i64;
        return v;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        v = lc__value_alloc(m, LC_DOUBLE);
        if (v)
            v->u.d = o->via.f64;
        return v;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN: {
        v = lc__value_alloc(m, o->type == MSGPACK_OBJECT_STR ? LC_STRING : LC_BINARY);
        uint32_t n = o->type == MSGPACK_OBJECT_STR ? o->via.str.size : o->via.bin.size;
        const char *src = o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : o->via.bin.ptr;
        char *s = lc__arena_alloc(m, (size_t)n + 1);
        if (v == NULL || s == NULL)
            return NULL;
        memcpy(s, src, n);
        s[n] = 0;
        v->u.bytes = s;
        v->len = n;
        return v;
    }
    case MSGPACK_OBJECT_ARRAY: {
        v = lc__value_alloc(m, LC_ARRAY);
        uint32_t n = o->via.array.size;
        if (v == NULL)
            return NULL;
        if (n) {
            v->u.items = lc__arena_alloc(m, n * sizeof(lc_value *));
            if (v->u.items == NULL)
                return NULL;
        }
        v->len = v->cap = n;
        for (uint32_t i = 0; i < n; i++) {
            lc_value *c = conv(m, &o->via.array.ptr[i]);
            if (c == NULL)
                return NULL;
            c->flags |= LC_VF_PLACED;
            v->u.items[i] = c;
        }
        return v;
    }
    case MSGPACK_OBJECT_MAP: {
        v = lc__value_alloc(m, LC_MAP);
        uint32_t n = o->via.map.size;
        if (v == NULL)
            return NULL;
        if (n) {
            v->u.items = lc__arena_alloc(m, 2 * n * sizeof(lc_value *));
            if (v->u.items == NULL)
                return NULL;
        }
        v->len = v->cap = n;
        for (uint32_t i = 0; i < n; i++) {
            lc_value *k = conv(m, &o->via.map.ptr[i].key);
            lc_value *c = conv(m, &o->via.map.ptr[i].val);
            if (k == NULL || c == NULL)
                return NULL;
            k->flags |= LC_VF_PLACED;
            c->flags |= LC_VF_PLACED;
            v->u.items[2 * i] = k;
            v->u.items[2 * i + 1] = c;
        }
        return v;
    }
    case MSGPACK_OBJECT_EXT: {
        /* refs only (enough for the benchmark messages) */
        const uint8_t *p = (const uint8_t *)o->via.ext.ptr;
        v = lc__value_alloc(m, LC__REF);
        if (v == NULL)
            return NULL;
        v->mode = (uint8_t)o->via.ext.type;
        v->u.ref = o->via.ext.size == 4
            ? (uint64_t)p[0] << 24 | (uint64_t)p[1] << 16 | (uint64_t)p[2] << 8 | p[3]
            : 0;
        return v;
    }
    default:
        return NULL;
    }
}

static int msgpackc_decode(msgpack_unpacked *u, const uint8_t *p, size_t n, lc_msg **out)
{
    size_t off = 0;
    if (msgpack_unpack_next(u, (const char *)p, n, &off) != MSGPACK_UNPACK_SUCCESS)
        return LC_EBADMSG;
    if (off != n)
        return LC_ETRAILING;
    lc_msg *m = lc_msg_new();
    if (m == NULL)
        return LC_ENOMEM;
    lc_value *root = conv(m, &u->data);
    if (root == NULL) {
        lc_msg_free(m);
        return LC_ENOMEM;
    }
    root->flags |= LC_VF_PLACED;
    m->root = root;
    *out = m;
    return 0;
}

/* The fastest msgpack-c path: the (obsolete) msgpack_unpack() into a zone
 * that is kept and cleared, instead of a zone per message. */
static int msgpackc_decode_zone(msgpack_zone *z, const uint8_t *p, size_t n, lc_msg **out)
{
    size_t off = 0;
    msgpack_object o;
    msgpack_zone_clear(z);
    if (msgpack_unpack((const char *)p, n, &off, z, &o) != MSGPACK_UNPACK_SUCCESS)
        return LC_EBADMSG;
    if (off != n)
        return LC_ETRAILING;
    lc_msg *m = lc_msg_new();
    if (m == NULL)
        return LC_ENOMEM;
    lc_value *root = conv(m, &o);
    if (root == NULL) {
        lc_msg_free(m);
        return LC_ENOMEM;
    }
    root->flags |= LC_VF_PLACED;
    m->root = root;
    *out = m;
    return 0;
}

/* ---- msgpack-c's packer as <msgpack.h> instantiates it: a write callback
 * called through a function pointer (what src/codec does NOT use) */

static int cb_write(void *data, const char *p, size_t n)
{
    lc_buf *b = data;
    return lc__buf_append(b, p, n) == 0 ? 0 : -1;
}

static void callback_encode(msgpack_packer *pk, const lc_value *v)
{
    switch (v->type) {
    case LC_INT:
        msgpack_pack_int64(pk, v->u.i);
        return;
    case LC_STRING:
        msgpack_pack_str(pk, v->len);
        msgpack_pack_str_body(pk, v->u.bytes, v->len);
        return;
    case LC_MAP:
        msgpack_pack_map(pk, v->len);
        for (uint32_t i = 0; i < 2 * v->len; i++)
            callback_encode(pk, v->u.items[i]);
        return;
    default:
        abort();
    }
}

/* ---- a hand-written byte writer over the same tree (floor for the packer) */

static inline void put(lc_buf *b, const void *p, size_t n)
{
    if (b->cap - b->len < n && lc__buf_reserve(b, n) != 0)
        abort();
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void direct_encode(lc_buf *b, const lc_value *v)
{
    uint8_t h[9];
    switch (v->type) {
    case LC_INT: {
        int64_t i = v->u.i;
        if (i >= -32 && i < 128) {
            h[0] = (uint8_t)i;
            put(b, h, 1);
        } else {
            uint64_t x = __builtin_bswap64((uint64_t)i);
            h[0] = i < 0 ? 0xd3 : 0xcf;
            memcpy(h + 1, &x, 8);
            put(b, h, 9);
        }
        return;
    }
    case LC_STRING:
        if (v->len < 32) {
            h[0] = (uint8_t)(0xa0 | v->len);
            put(b, h, 1);
        } else {
            abort(); /* not needed here */
        }
        put(b, v->u.bytes, v->len);
        return;
    case LC_MAP:
        if (v->len >= 16)
            abort();
        h[0] = (uint8_t)(0x80 | v->len);
        put(b, h, 1);
        for (uint32_t i = 0; i < 2 * v->len; i++)
            direct_encode(b, v->u.items[i]);
        return;
    default:
        abort();
    }
}

/* ---- hooks for the attachment message ----------------------------------- */

struct hctx {
    uint64_t next_ref;
    lc_sender *sender; /* a real channel end to hand out, or NULL */
};

static int enc_hook(void *ctx, lc_value *v, uint8_t *type, uint64_t *ref)
{
    struct hctx *h = ctx;
    *type = lc__codec_ext_for(v);
    *ref = h->next_ref++;
    return 0;
}

static int dec_hook(void *ctx, uint8_t type, uint64_t ref, lc_msg *m, lc_value **out)
{
    struct hctx *h = ctx;
    lc_value *v;
    if (type == LC_EXT_SENDER && h->sender != NULL) {
        v = lc_new_sender(m, lc_sender_retain(h->sender));
    } else {
        v = lc__value_alloc(m, LC__REF); /* stand-in: no fd per message */
        if (v) {
            v->mode = type;
            v->u.ref = ref;
        }
    }
    if (v == NULL)
        return LC_ENOMEM;
    *out = v;
    return 0;
}

int main(void)
{
    const long N = 2000000;
    lc_buf b;
    lc__buf_init(&b);
    lc__buf_reserve(&b, 256);

    /* SimpleStruct {"Value": i}, as docker/libchan's benchmarks send it */
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_map(m);
    lc_value *val = lc_new_int(m, 0);
    lc_map_set(m, root, "Value", val);
    lc_msg_set_root(m, root);

    double t0, ours_ed, base_ed, zone_ed, ours_dec, base_dec, zone_dec, enc_pk, enc_direct, enc_cb;
    int64_t sum = 0;

    /* encode only: our encoder (msgpack-c's packer template over lc_buf) vs
     * the packer with its write callback vs plain byte writes */
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        val->u.i = i & 0xffff;
        b.len = 0;
        lc__encode(m, &b, NULL);
        sum += b.data[b.len - 1];
    }
    enc_pk = (now_ns() - t0) / N;
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        val->u.i = i & 0xffff;
        b.len = 0;
        direct_encode(&b, root);
        sum += b.data[b.len - 1];
    }
    enc_direct = (now_ns() - t0) / N;
    msgpack_packer cpk;
    msgpack_packer_init(&cpk, &b, cb_write);
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        val->u.i = i & 0xffff;
        b.len = 0;
        callback_encode(&cpk, root);
        sum += b.data[b.len - 1];
    }
    enc_cb = (now_ns() - t0) / N;

    /* encode + decode */
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        val->u.i = i & 0xffff;
        b.len = 0;
        lc__encode(m, &b, NULL);
        lc_msg *d;
        if (lc__decode(b.data, b.len, NULL, NULL, &d, NULL) != 0)
            abort();
        sum += d->root->u.items[1]->u.i;
        lc_msg_free(d);
    }
    ours_ed = (now_ns() - t0) / N;

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        val->u.i = i & 0xffff;
        b.len = 0;
        lc__encode(m, &b, NULL);
        lc_msg *d;
        if (msgpackc_decode(&u, b.data, b.len, &d) != 0)
            abort();
        sum += d->root->u.items[1]->u.i;
        lc_msg_free(d);
    }
    base_ed = (now_ns() - t0) / N;

    msgpack_zone zone;
    msgpack_zone_init(&zone, 2048);
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        val->u.i = i & 0xffff;
        b.len = 0;
        lc__encode(m, &b, NULL);
        lc_msg *d;
        if (msgpackc_decode_zone(&zone, b.data, b.len, &d) != 0)
            abort();
        sum += d->root->u.items[1]->u.i;
        lc_msg_free(d);
    }
    zone_ed = (now_ns() - t0) / N;

    /* decode only, of the same 8 bytes */
    val->u.i = 42;
    b.len = 0;
    lc__encode(m, &b, NULL);
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        lc_msg *d;
        if (lc__decode(b.data, b.len, NULL, NULL, &d, NULL) != 0)
            abort();
        sum += d->root->len;
        lc_msg_free(d);
    }
    ours_dec = (now_ns() - t0) / N;
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        lc_msg *d;
        if (msgpackc_decode(&u, b.data, b.len, &d) != 0)
            abort();
        sum += d->root->len;
        lc_msg_free(d);
    }
    base_dec = (now_ns() - t0) / N;
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        lc_msg *d;
        if (msgpackc_decode_zone(&zone, b.data, b.len, &d) != 0)
            abort();
        sum += d->root->len;
        lc_msg_free(d);
    }
    zone_dec = (now_ns() - t0) / N;

    /* what every decoder pays: one message allocation and its free */
    t0 = now_ns();
    for (long i = 0; i < N; i++) {
        lc_msg *d = lc_msg_new();
        sum += (int64_t)(uintptr_t)d & 1;
        lc_msg_free(d);
    }
    double floor_ns = (now_ns() - t0) / N;

    printf("simplestruct encode+decode: ours %.1f ns/op   msgpack-c %.1f ns/op   ratio %.2f"
           "   (msgpack-c with a reused zone: %.1f ns/op, ratio %.2f)\n",
           ours_ed, base_ed, ours_ed / base_ed, zone_ed, ours_ed / zone_ed);
    printf("simplestruct decode only:   ours %.1f ns/op   msgpack-c %.1f ns/op   ratio %.2f"
           "   (msgpack-c with a reused zone: %.1f ns/op, ratio %.2f)\n",
           ours_dec, base_dec, ours_dec / base_dec, zone_dec, ours_dec / zone_dec);
    printf("  (both decoders include lc_msg_new+lc_msg_free: %.1f ns/op; beyond it: ours %.1f, "
           "msgpack-c %.1f / reused zone %.1f)\n",
           floor_ns, ours_dec - floor_ns, base_dec - floor_ns, zone_dec - floor_ns);
    printf("simplestruct encode only:   ours (msgpack-c packer template, inline append) %.1f ns/op"
           "   msgpack-c packer with write callback %.1f ns/op   plain byte writes %.1f ns/op\n",
           enc_pk, enc_cb, enc_direct);
    lc_msg_free(m);

    /* a bigger message: 3 string fields, an array of 20 ints, a nested map */
    m = lc_msg_new();
    root = lc_new_map(m);
    lc_map_set(m, root, "Cmd", lc_new_string(m, "exec"));
    lc_map_set(m, root, "Host", lc_new_string(m, "worker-17.example.internal"));
    lc_map_set(m, root, "Data", lc_new_binary(m, "0123456789abcdef0123456789abcdef", 32));
    lc_value *arr = lc_new_array(m);
    for (int i = 0; i < 20; i++)
        lc_array_append(m, arr, lc_new_int(m, i * 1000));
    lc_map_set(m, root, "Args", arr);
    lc_value *env = lc_new_map(m);
    lc_map_set(m, env, "PATH", lc_new_string(m, "/usr/bin:/bin"));
    lc_map_set(m, env, "HOME", lc_new_string(m, "/root"));
    lc_map_set(m, root, "Env", env);
    lc_msg_set_root(m, root);
    const long N2 = N / 4;
    t0 = now_ns();
    for (long i = 0; i < N2; i++) {
        b.len = 0;
        lc__encode(m, &b, NULL);
        lc_msg *d;
        if (lc__decode(b.data, b.len, NULL, NULL, &d, NULL) != 0)
            abort();
        sum += d->root->len;
        lc_msg_free(d);
    }
    double big_ours = (now_ns() - t0) / N2;
    t0 = now_ns();
    for (long i = 0; i < N2; i++) {
        b.len = 0;
        lc__encode(m, &b, NULL);
        lc_msg *d;
        if (msgpackc_decode(&u, b.data, b.len, &d) != 0)
            abort();
        sum += d->root->len;
        lc_msg_free(d);
    }
    double big_base = (now_ns() - t0) / N2;
    t0 = now_ns();
    for (long i = 0; i < N2; i++) {
        b.len = 0;
        lc__encode(m, &b, NULL);
        lc_msg *d;
        if (msgpackc_decode_zone(&zone, b.data, b.len, &d) != 0)
            abort();
        sum += d->root->len;
        lc_msg_free(d);
    }
    double big_zone = (now_ns() - t0) / N2;
    printf("%zu-byte message encode+decode: ours %.1f ns/op   msgpack-c %.1f ns/op   ratio %.2f"
           "   (reused zone: %.1f ns/op, ratio %.2f)\n",
           b.len, big_ours, big_base, big_ours / big_base, big_zone, big_ours / big_zone);
    msgpack_zone_destroy(&zone);
    lc_msg_free(m);
    msgpack_unpacked_destroy(&u);

    /* attachments through hooks: {"Value": i, "Ret": Sender, "Stream": fd} */
    struct hctx hc = { .next_ref = 2 };
    lc_receiver *r = NULL;
    lc_sender *s = NULL;
    int have_core = lc_pipe(&r, &s, 1) == 0;
    m = lc_msg_new();
    root = lc_new_map(m);
    val = lc_new_int(m, 0);
    lc_map_set(m, root, "Value", val);
    int fds[2];
    if (pipe(fds) != 0)
        abort();
    close(fds[1]);
    if (have_core) {
        hc.sender = s;
        lc_map_set(m, root, "Ret", lc_new_sender(m, lc_sender_retain(s)));
    } else {
        lc_value *ref = lc__value_alloc(m, LC__REF);
        ref->mode = LC_EXT_SENDER;
        ref->u.ref = 3;
        lc_map_set(m, root, "Ret", ref);
    }
    lc_map_set(m, root, "Stream", lc_new_stream(m, fds[0], LC_STREAM_DUPLEX));
    lc_msg_set_root(m, root);
    struct lc_codec_hooks hooks = { &hc, enc_hook, dec_hook };
    t0 = now_ns();
    for (long i = 0; i < N2; i++) {
        val->u.i = i;
        b.len = 0;
        if (lc__encode(m, &b, &hooks) != 0)
            abort();
        lc_msg *d;
        if (lc__decode(b.data, b.len, NULL, &hooks, &d, NULL) != 0)
            abort();
        sum += d->root->len;
        lc_msg_free(d);
    }
    double att = (now_ns() - t0) / N2;
    printf("sender+fd message encode+decode with hooks: ours %.1f ns/op  (%s; the fd side "
           "decodes to a ref stand-in, no fd per message)\n",
           att, have_core ? "real lc_sender via lc_pipe" : "lc_pipe unavailable: sender is an LC__REF stand-in");
    lc_msg_free(m);
    lc_sender_release(s);
    lc_receiver_release(r);

    sink = sum;
    lc__buf_free(&b);
    return 0;
}

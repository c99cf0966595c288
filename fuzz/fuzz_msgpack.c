/*
 * fuzz_msgpack.c - fuzz target of the msgpack codec (src/codec): arbitrary
 * bytes into the fast decoder (lc__decode) and the streaming decoder
 * (lc__sd_*), with small limits (depth 8, message 4096, elements 64) and with
 * the defaults, without hooks and with attachment hooks.
 *
 * Checks beyond "no crash, no leak, no UB":
 *  - consumed: lc__decode with `consumed` and without it agree (the same
 *    error, or the same message, LC_ETRAILING when bytes are left over);
 *  - limits: what decodes under the small limits decodes under the defaults
 *    to the same message;
 *  - round trip: a decoded message re-encodes (lc__encode), the encoding
 *    decodes whole, and re-encodes to the same bytes;
 *  - wire form: a message kept as its bytes re-encodes to exactly them,
 *    and the tree built from them (lc_msg_root) encodes to them too, or,
 *    for Go's signed form of a positive integer, to no more bytes that are
 *    kept as they are when decoded;
 *  - lc_unpack over the bytes: every format of tests/msg/unpack_cases.h
 *    gives on such a message the result, error and outputs it gives on the
 *    tree built from the same bytes;
 *  - msgpack-c agrees: where we accept a message (small limits), msgpack-c's
 *    unpacker reads the same number of bytes and the same values;
 *  - the public API: lc_msgpack_decode gives what lc__decode gives, except
 *    that references fail with LC_ENOTSUP;
 *  - streaming: the input fed in chunks (one feed, sizes drawn from the
 *    input, one byte at a time) yields the same messages as repeated
 *    lc__decode with `consumed`, each as soon as its last byte is fed, then
 *    the same error (for a truncated tail: LC_ETRUNCATED at finish, or an
 *    error found further on); errors are sticky; the buffered bytes stay
 *    within max_message + one chunk;
 *  - hooks: decode_attachment creating real channel ends and fds (and
 *    failing for some refs) gives the same results in both decoders, the
 *    attachments re-encode to the same refs, and nothing (fd or memory) leaks
 *    when a decode fails half way.
 *
 * Built with LC_FUZZ_LIBFUZZER (clang -fsanitize=fuzzer) it is a libFuzzer
 * target; otherwise its main() runs the files named on the command line
 * (ctest replays the seed corpus that way in every build).
 */
#include "codec/codec.h"
#include "../tests/msg/unpack_cases.h"

#include <dirent.h>
#include <fcntl.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(c)                                                               \
    do {                                                                       \
        if (!(c)) {                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Small limits, so that the fuzzer reaches them. */
static const lc_limits small_limits = { .max_depth = 8, .max_message = 4096, .max_elements = 64 };

/* At most this many messages of one input are compared one by one. */
#define MAX_MSGS 512

/* ---- attachment hooks ------------------------------------------------------ */

/* The refs the decode hook saw for the last decoded message, in document
 * order; the encode hook hands them back in the same order. */
typedef struct hook_log {
    uint8_t ext[256];
    uint64_t ref[256];
    size_t n, next;
    int overflow;
} hook_log;

static int devnull_fd = -1;

static int dec_hook(void *ctx, uint8_t ext_type, uint64_t ref, lc_msg *m, lc_value **out)
{
    hook_log *lg = ctx;
    if ((ref & 0xff) == 0xee)
        return LC_EPROTO; /* a failing hook, half way through a message */
    lc_value *v = NULL;
    if (ext_type == LC_EXT_SENDER || ext_type == LC_EXT_RECEIVER) {
        lc_receiver *r;
        lc_sender *s;
        if (lc_pipe(&r, &s, 1) != 0)
            return LC_ENOMEM;
        if (ext_type == LC_EXT_SENDER) {
            v = lc_new_sender(m, s);
            lc_receiver_release(r);
        } else {
            v = lc_new_receiver(m, r);
            lc_sender_release(s);
        }
    } else {
        CHECK(ext_type >= LC_EXT_DUPLEX && ext_type <= LC_EXT_READ);
        int fd = fcntl(devnull_fd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0)
            return LC_ENOMEM;
        v = lc_new_stream(m, fd, ext_type == LC_EXT_DUPLEX ? LC_STREAM_DUPLEX
                                 : ext_type == LC_EXT_WRITE ? LC_STREAM_WRITE
                                                            : LC_STREAM_READ);
    }
    if (v == NULL)
        return LC_ENOMEM;
    if (lg->n < 256) {
        lg->ext[lg->n] = ext_type;
        lg->ref[lg->n] = ref;
        lg->n++;
    } else {
        lg->overflow = 1;
    }
    *out = v;
    return 0;
}

static int enc_hook(void *ctx, lc_value *v, uint8_t *ext_type, uint64_t *ref)
{
    hook_log *lg = ctx;
    CHECK(lg->next < lg->n);
    CHECK(lc__codec_ext_for(v) == lg->ext[lg->next]);
    *ext_type = lg->ext[lg->next];
    *ref = lg->ref[lg->next];
    lg->next++;
    return 0;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;
}

/* ---- helpers --------------------------------------------------------------- */

/* The encoding of m (with the replaying hook when lg is not NULL); any
 * failure other than running out of memory is a bug. Nonzero (and out
 * empty) when it could not be made: no memory, or too many refs logged. */
static int encode(const lc_msg *m, hook_log *lg, lc_buf *out)
{
    lc__buf_init(out);
    if (lg != NULL && lg->overflow)
        return 1;
    struct lc_codec_hooks h = { .ctx = lg, .encode_attachment = enc_hook };
    if (lg != NULL)
        lg->next = 0;
    int rc = lc__encode(m, out, lg ? &h : NULL);
    if (rc == LC_ENOMEM) {
        lc__buf_free(out);
        return rc;
    }
    if (rc != 0)
        fprintf(stderr, "lc__encode of a decoded message failed: %d (%s)\n", rc, lc_strerror(rc));
    CHECK(rc == 0);
    if (lg != NULL)
        CHECK(lg->next == lg->n);
    return 0;
}

static int bytes_equal(const lc_buf *a, const lc_buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* Round trip of a decoded message without attachments: encoding e decodes
 * whole (defaults) and re-encodes to e. */
static void roundtrip(const lc_buf *e)
{
    lc_msg *m2 = NULL;
    size_t used = 0;
    int rc = lc__decode(e->data, e->len, NULL, NULL, &m2, &used);
    if (rc == LC_ENOMEM)
        return;
    CHECK(rc == 0);
    CHECK(used == e->len);
    lc_buf e2;
    if (encode(m2, NULL, &e2) == 0) {
        CHECK(bytes_equal(e, &e2));
        lc__buf_free(&e2);
    }
    lc_msg_free(m2);
}

/* ---- msgpack-c as the reference ------------------------------------------- */

static int be_equal(const char *p, size_t n, uint64_t v)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = x << 8 | (uint8_t)p[i];
    return x == v;
}

static void same_value(const lc_value *v, const msgpack_object *o)
{
    switch (v->type) {
    case LC_NIL:
        CHECK(o->type == MSGPACK_OBJECT_NIL);
        break;
    case LC_BOOL:
        CHECK(o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean == v->u.b);
        break;
    case LC_INT:
        if (v->u.i >= 0)
            CHECK(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == (uint64_t)v->u.i);
        else
            CHECK(o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 == v->u.i);
        break;
    case LC_UINT:
        CHECK(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == v->u.u &&
              v->u.u > (uint64_t)INT64_MAX);
        break;
    case LC_DOUBLE:
        CHECK(o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64);
        CHECK(memcmp(&o->via.f64, &v->u.d, sizeof v->u.d) == 0);
        break;
    case LC_STRING:
    case LC_BINARY:
        if (v->type == LC_STRING)
            CHECK(o->type == MSGPACK_OBJECT_STR);
        else
            CHECK(o->type == MSGPACK_OBJECT_BIN);
        CHECK(o->via.str.size == v->len);
        CHECK(v->len == 0 || memcmp(o->via.str.ptr, v->u.bytes, v->len) == 0);
        CHECK(v->u.bytes[v->len] == '\0');
        break;
    case LC_TIME:
        CHECK(o->type == MSGPACK_OBJECT_EXT && o->via.ext.type == LC_EXT_TIME &&
              o->via.ext.size == 12);
        CHECK(be_equal(o->via.ext.ptr, 8, (uint64_t)v->u.t.sec));
        CHECK(be_equal(o->via.ext.ptr + 8, 4, v->u.t.nsec));
        CHECK(v->u.t.nsec < 1000000000u);
        break;
    case LC_ARRAY:
        CHECK(o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == v->len);
        for (uint32_t i = 0; i < v->len; i++)
            same_value(v->u.items[i], &o->via.array.ptr[i]);
        break;
    case LC_MAP:
        CHECK(o->type == MSGPACK_OBJECT_MAP && o->via.map.size == v->len);
        for (uint32_t i = 0; i < v->len; i++) {
            same_value(v->u.items[2 * i], &o->via.map.ptr[i].key);
            same_value(v->u.items[2 * i + 1], &o->via.map.ptr[i].val);
        }
        break;
    default:
        CHECK(v->type == (uint8_t)LC__REF);
        CHECK(o->type == MSGPACK_OBJECT_EXT && o->via.ext.type == (int8_t)v->mode);
        CHECK(v->mode >= LC_EXT_DUPLEX && v->mode <= LC_EXT_RECEIVER);
        CHECK(o->via.ext.size == 4 || o->via.ext.size == 8);
        CHECK(be_equal(o->via.ext.ptr, o->via.ext.size, v->u.ref));
        break;
    }
}

/* m was decoded from p[0..used) of p[0..n) under the small limits (so every
 * container is small: msgpack-c allocates them whole). */
static void check_against_msgpack_c(const uint8_t *p, size_t n, size_t used, lc_msg *m)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(&u, (const char *)p, n, &off);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR) {
        msgpack_unpacked_destroy(&u);
        return;
    }
    CHECK(r == MSGPACK_UNPACK_SUCCESS || r == MSGPACK_UNPACK_EXTRA_BYTES);
    CHECK(off == used);
    if (m->body != NULL) {
        CHECK(u.data.type == MSGPACK_OBJECT_EXT && u.data.via.ext.type == LC_EXT_BODY);
    } else {
        same_value(lc_msg_root(m), &u.data);
    }
    msgpack_unpacked_destroy(&u);
}

/* ---- lc_unpack over the bytes against the tree walk ------------------------ */

/* p[0..n) decodes (defaults) to a wire-form message: each unpack case on a
 * fresh such message and on its tree twin gives the same result, error and
 * outputs. Fresh each time: a wire walk that gives up builds the tree. */
static void unpack_both(const uint8_t *p, size_t n)
{
    for (size_t c = 0; c < sizeof ucases / sizeof ucases[0]; c++) {
        lc_msg *w = NULL, *t = NULL;
        if (lc__decode(p, n, NULL, NULL, &w, NULL) != 0 || lc__decode(p, n, NULL, NULL, &t, NULL) != 0) {
            lc_msg_free(w);
            lc_msg_free(t);
            return; /* (only out of memory: it decoded before) */
        }
        CHECK(w->wire != NULL);
        if (lc_msg_root(t) == NULL) {
            lc_msg_free(w);
            lc_msg_free(t);
            return; /* out of memory building the tree */
        }
        outs ow, ot;
        memset(&ow, 0, sizeof ow);
        memset(&ot, 0, sizeof ot);
        lc_error ew, et;
        int rw = ucases[c].f(w, &ew, &ow);
        int rt = ucases[c].f(t, &et, &ot);
        if (rw != LC_ENOMEM && rt != LC_ENOMEM) {
            const char *d = outs_differ(&ow, &ot);
            if (rw != rt || ew.code != et.code || strcmp(ew.text, et.text) != 0 || d != NULL)
                fprintf(stderr, "%s: wire %d '%s', tree %d '%s', output %s\n", ucases[c].name, rw, ew.text, rt,
                        et.text, d ? d : "(same)");
            CHECK(rw == rt && ew.code == et.code && strcmp(ew.text, et.text) == 0 && d == NULL);
        }
        lc_msg_free(w);
        lc_msg_free(t);
    }
}

/* ---- one message at the front: the fast decoder's checks ------------------ */

/* Decodes the message at the front of p[0..n) every way; returns lc__decode's
 * result under lim (no hooks) and its *used. */
static int front(const uint8_t *p, size_t n, const lc_limits *lim, size_t *used)
{
    lc_msg *m = NULL, *whole = NULL;
    *used = 0;
    int rc = lc__decode(p, n, lim, NULL, &m, used);
    CHECK((rc == 0) == (m != NULL));
    int rw = lc__decode(p, n, lim, NULL, &whole, NULL);
    CHECK((rw == 0) == (whole != NULL));
    if (rc == LC_ENOMEM || rw == LC_ENOMEM) {
        lc_msg_free(m);
        lc_msg_free(whole);
        return rc;
    }
    /* with and without `consumed` */
    if (rc != 0)
        CHECK(rw == rc);
    else {
        CHECK(*used >= 1 && *used <= n);
        CHECK(rw == (*used == n ? 0 : LC_ETRAILING));
    }
    if (rc == 0) {
        lc_buf e;
        if (encode(m, NULL, &e) == 0) {
            if (whole != NULL) {
                lc_buf ew;
                if (encode(whole, NULL, &ew) == 0) {
                    CHECK(bytes_equal(&e, &ew));
                    lc__buf_free(&ew);
                }
            }
            roundtrip(&e);
            if (m->wire != NULL) {
                /* kept as its bytes (wire form): they are the message as
                 * it came, and the encoding of the tree built from them,
                 * but for Go's signed form of a positive integer (kept,
                 * while the tree encodes in our form: never longer, and
                 * a form that is kept as it is in turn) */
                CHECK(e.len == *used && memcmp(e.data, p, e.len) == 0);
                lc_msg *t = NULL;
                if (lc__decode(p, *used, lim, NULL, &t, NULL) == 0) {
                    CHECK(t->wire != NULL);
                    lc_msg_root(t);
                    lc_buf et;
                    if (t->wire == NULL && encode(t, NULL, &et) == 0) {
                        if (!bytes_equal(&e, &et)) {
                            CHECK(et.len <= e.len);
                            lc_msg *o = NULL;
                            if (lc__decode(et.data, et.len, NULL, NULL, &o, NULL) == 0) {
                                CHECK(o->wire != NULL && o->wire_len == et.len);
                                unpack_both(et.data, et.len);
                            }
                            lc_msg_free(o);
                        }
                        lc__buf_free(&et);
                    }
                }
                lc_msg_free(t);
                if (lim != &small_limits)
                    unpack_both(p, *used);
            }
            /* the public API: the same, except for references */
            uint8_t *pe = NULL;
            size_t pl = 0;
            int pr = lc_msgpack_encode(m, &pe, &pl);
            CHECK(pr == 0 || pr == LC_ENOMEM);
            if (pr == 0) {
                CHECK(pl == e.len && memcmp(pe, e.data, pl) == 0);
                free(pe);
            }
            lc__buf_free(&e);
        }
        if (lim == &small_limits) {
            /* the defaults accept it too, as the same message */
            lc_msg *d = NULL;
            size_t du = 0;
            int rd = lc__decode(p, n, NULL, NULL, &d, &du);
            if (rd != LC_ENOMEM) {
                CHECK(rd == 0 && du == *used);
                lc_buf a, b;
                if (encode(m, NULL, &a) == 0) {
                    if (encode(d, NULL, &b) == 0) {
                        CHECK(bytes_equal(&a, &b));
                        lc__buf_free(&b);
                    }
                    lc__buf_free(&a);
                }
            }
            lc_msg_free(d);
            check_against_msgpack_c(p, n, *used, m);
        }
    }
    lc_msg *pm = NULL;
    int pr = lc_msgpack_decode(p, n, lim, &pm);
    if (pr != LC_ENOMEM) {
        if (rw == 0)
            CHECK(pr == (whole->has_refs ? LC_ENOTSUP : 0));
        else
            CHECK(pr == rw || pr == LC_ENOTSUP);
    }
    lc_msg_free(pm);
    lc_msg_free(m);
    lc_msg_free(whole);
    return rc;
}

/* ---- a stream of messages -------------------------------------------------- */

typedef struct expect {
    size_t n;              /* messages */
    size_t end[MAX_MSGS];  /* offset just past message i */
    lc_buf enc[MAX_MSGS];  /* its encoding (empty if it could not be made) */
    int err;               /* what ended the sequence: 0 (all consumed) or an error */
    size_t err_at;         /* where the message that failed starts */
} expect;

static void expect_free(expect *x)
{
    for (size_t i = 0; i < x->n; i++)
        lc__buf_free(&x->enc[i]);
    x->n = 0;
}

/* Repeated lc__decode with consumed over p[0..n). Returns 0, or LC_ENOMEM
 * (the comparison is skipped), or 1 when there are too many messages. */
static int reference(const uint8_t *p, size_t n, const lc_limits *lim, hook_log *lg, expect *x)
{
    struct lc_codec_hooks h = { .ctx = lg, .decode_attachment = dec_hook };
    size_t off = 0;
    x->n = 0;
    x->err = 0;
    while (off < n) {
        if (x->n == MAX_MSGS)
            return 1;
        lc_msg *m = NULL;
        size_t used = 0;
        if (lg != NULL)
            memset(lg, 0, sizeof *lg);
        int rc = lc__decode(p + off, n - off, lim, lg ? &h : NULL, &m, &used);
        if (rc == LC_ENOMEM)
            return rc;
        if (rc != 0) {
            x->err = rc;
            x->err_at = off;
            return 0;
        }
        CHECK(used >= 1 && used <= n - off);
        off += used;
        x->end[x->n] = off;
        if (encode(m, lg, &x->enc[x->n]) != 0)
            lc__buf_init(&x->enc[x->n]);
        x->n++;
        lc_msg_free(m);
    }
    return 0;
}

/*
 * Feeds p[0..n) to a streaming decoder in chunks: seed 0 one feed, 1 one byte
 * at a time, else sizes drawn from seed. Compares with x.
 */
static void stream(const uint8_t *p, size_t n, const lc_limits *lim, hook_log *lg,
                   const expect *x, unsigned seed)
{
    struct lc_codec_hooks h = { .ctx = lg, .decode_attachment = dec_hook };
    lc_stream_decoder d;
    lc__sd_init(&d, lim, lg ? &h : NULL);
    lc_limits rl;
    lc__limits_resolve(&rl, lim);
    size_t fed = 0, got = 0;
    unsigned k = 0;
    int err = 0;
    while (fed < n && err == 0) {
        size_t chunk = n - fed;
        if (seed == 1)
            chunk = 1;
        else if (seed > 1) {
            size_t c = 1 + (size_t)((seed * 31u + k++ * 7u) % (seed % 41u + 1u));
            if (c < chunk)
                chunk = c;
        }
        int rc = lc__sd_feed(&d, p + fed, chunk);
        if (rc == LC_ENOMEM)
            goto out;
        CHECK(rc == 0);
        fed += chunk;
        for (;;) {
            lc_msg *m = NULL;
            if (lg != NULL)
                memset(lg, 0, sizeof *lg);
            rc = lc__sd_next(&d, &m);
            if (rc == LC_ENOMEM)
                goto out;
            CHECK((rc == 0) == (m != NULL));
            if (rc == LC__SD_AGAIN) {
                /* a complete message is never held back */
                CHECK(got == x->n || fed < x->end[got]);
                /* buffered: the current message, bounded */
                CHECK(d.in.len >= d.start);
                CHECK(d.in.len - d.start <= rl.max_message + chunk);
                break;
            }
            if (rc < 0) {
                err = rc;
                break;
            }
            CHECK(rc == 0);
            CHECK(got < x->n);
            CHECK(fed >= x->end[got]);
            lc_buf e;
            if (encode(m, lg, &e) == 0) {
                if (x->enc[got].len > 0)
                    CHECK(bytes_equal(&e, &x->enc[got]));
                lc__buf_free(&e);
            }
            lc_msg_free(m);
            got++;
        }
    }
    /* every message before the fault came out */
    CHECK(got == x->n);
    int fin = err;
    if (err == 0)
        fin = lc__sd_finish(&d);
    CHECK(fin != LC__SD_AGAIN);
    if (x->err == 0) {
        CHECK(fin == 0);
    } else if (x->err == LC_ETRUNCATED || (lg != NULL && x->err == LC_EPROTO)) {
        /* LC_ETRUNCATED: the tail is a partial message; the stream may find
         * an error in it that the fast decoder, seeing too few bytes, did
         * not look for.
         * LC_EPROTO from the hook: the stream runs hooks on complete
         * messages only, so a partial one fails as truncated instead. */
        if (err == 0)
            CHECK(fin == LC_ETRUNCATED || fin == x->err);
        else
            CHECK(err < 0 && err != LC_ETRUNCATED);
    } else {
        /* the same error, reported before finish (every byte was fed) */
        if (err != x->err)
            fprintf(stderr, "stream error %d, fast decoder %d at offset %zu\n", err, x->err,
                    x->err_at);
        CHECK(err == x->err);
    }
    if (fin < 0) {
        lc_msg *m = NULL;
        CHECK(lc__sd_feed(&d, "x", 1) == fin);
        CHECK(lc__sd_next(&d, &m) == fin && m == NULL);
        CHECK(lc__sd_finish(&d) == fin);
    }
out:
    lc__sd_free(&d);
}

static void sequence(const uint8_t *p, size_t n, const lc_limits *lim, hook_log *lg,
                     unsigned seed)
{
    static expect x; /* large: not on the stack */
    int rc = reference(p, n, lim, lg, &x);
    if (rc == 0) {
        stream(p, n, lim, lg, &x, 0);
        stream(p, n, lim, lg, &x, 1);
        if (seed > 1)
            stream(p, n, lim, lg, &x, seed);
    }
    expect_free(&x);
}

/* ---- entry points ---------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv);
/* ---- the skimmer (skim.c) ---------------------------------------------------- */

typedef struct skim_log {
    uint64_t ref[64];
    size_t n;
} skim_log;

static void skim_note(void *ctx, uint64_t fd_number)
{
    skim_log *lg = ctx;
    if (lg->n < 64)
        lg->ref[lg->n] = fd_number;
    lg->n++;
}

/* The skimmer finds the same passed fds, and ends in the same state,
 * whether the input comes whole or in chunks (sizes from seed). */
static void skim_split(const uint8_t *data, size_t size, unsigned seed)
{
    lc_skim whole, parts;
    skim_log a = { 0 }, b = { 0 };
    lc__skim_init(&whole);
    lc__skim_init(&parts);
    int rc_a = lc__skim_feed(&whole, data, size, skim_note, &a);
    int rc_b = 0;
    for (size_t off = 0; off < size;) {
        seed = seed * 1103515245u + 12345u;
        size_t n = 1 + (seed >> 16) % 19;
        if (n > size - off)
            n = size - off;
        rc_b = lc__skim_feed(&parts, data + off, n, skim_note, &b);
        off += n;
    }
    CHECK(rc_a == rc_b);
    CHECK(a.n == b.n);
    CHECK(memcmp(a.ref, b.ref, (a.n < 64 ? a.n : 64) * sizeof a.ref[0]) == 0);
    if (rc_a == 0)
        CHECK(whole.depth == parts.depth && whole.skip == parts.skip);
    lc__skim_free(&whole);
    lc__skim_free(&parts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    devnull_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    CHECK(devnull_fd >= 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t used;
    /* the message at the front, both limit sets */
    front(data, size, &small_limits, &used);
    front(data, size, NULL, &used);
    /* lc__decode of a NULL/empty input */
    lc_msg *m = NULL;
    CHECK(lc__decode(data, 0, NULL, NULL, &m, &used) == LC_ETRUNCATED && m == NULL);

    /* the whole input as a stream of messages */
    unsigned seed = size ? (unsigned)(data[size - 1] | 2u) : 2u;
    sequence(data, size, &small_limits, NULL, seed);
    sequence(data, size, NULL, NULL, seed);

    /* with attachment hooks: real channel ends and fds, released on failure */
    int fds = count_fds();
    hook_log lg;
    sequence(data, size, &small_limits, &lg, seed);
    CHECK(count_fds() == fds);

    skim_split(data, size, seed);
    return 0;
}

#ifndef LC_FUZZ_LIBFUZZER
#include "replay.h"

/* Plain driver: runs every file named on the command line once. */
int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    int n = lc_fuzz_replay(argc, argv);
    if (n < 0)
        return 1;
    close(devnull_fd);
    printf("fuzz_msgpack: %d input(s) ran clean\n", n);
    return 0;
}
#endif

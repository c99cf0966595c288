/*
 * test_spdy.c - the SPDY/3 framer of src/spdy: exact bytes of every frame
 * type both ways, every decoder error with its own code, header blocks
 * (dictionary, stateful zlib across frames, limits, structure rules), the
 * captured Go sessions fed whole, split at every byte and byte by byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "libchan.h"
#include "spdy/spdy.h"
#include "testutil.h"
#include "hexbytes.h"

/* ---- byte helpers ---------------------------------------------------------- */


static void put32(uint8_t *p, uint32_t v)
{
    lc__spdy_put32(p, v);
}

/* Appends a control frame header (any version) + payload to out. */
static size_t ctl_frame(uint8_t *out, uint16_t version, uint16_t type, uint8_t flags,
                        const uint8_t *payload, size_t n)
{
    put32(out, 0x80000000u | (uint32_t)version << 16 | type);
    put32(out + 4, (uint32_t)flags << 24 | (uint32_t)n);
    if (n)
        memcpy(out + 8, payload, n);
    return 8 + n;
}

/* Uncompressed header block from NULL-terminated name, value, ... strings. */
static size_t raw_block(uint8_t *out, ...)
{
    va_list ap;
    const char *s;
    size_t n = 4, count = 0;
    va_start(ap, out);
    while ((s = va_arg(ap, const char *)) != NULL) {
        size_t l = strlen(s);
        put32(out + n, (uint32_t)l);
        memcpy(out + n + 4, s, l);
        n += 4 + l;
        count++;
    }
    va_end(ap);
    assert_int_equal(count % 2, 0);
    put32(out, (uint32_t)(count / 2));
    return n;
}

/* ---- an independent zlib peer (plain zlib calls, not src/spdy) --------------- */

typedef struct peer {
    z_stream zs;
} peer;

/* A zlib deflater at level, with a 2^wbits window and memLevel mem. */
static void peer_deflate_init_as(peer *t, const uint8_t *dict, size_t dn, int level, int wbits, int mem)
{
    memset(t, 0, sizeof *t);
    assert_int_equal(deflateInit2(&t->zs, level, Z_DEFLATED, wbits, mem, Z_DEFAULT_STRATEGY), Z_OK);
    if (dict != NULL)
        assert_int_equal(deflateSetDictionary(&t->zs, dict, (uInt)dn), Z_OK);
}

/* As Go's spdystream: level 9, 32 KiB window, memLevel 8. */
static void peer_deflate_init(peer *t, const uint8_t *dict, size_t dn)
{
    peer_deflate_init_as(t, dict, dn, 9, 15, 8);
}

/* Compresses raw[0..n) with the given flush; returns the compressed size. */
static size_t peer_deflate(peer *t, const uint8_t *raw, size_t n, uint8_t *out, size_t cap,
                           int flush)
{
    t->zs.next_in = (Bytef *)(uintptr_t)raw;
    t->zs.avail_in = (uInt)n;
    t->zs.next_out = out;
    t->zs.avail_out = (uInt)cap;
    int r = deflate(&t->zs, flush);
    assert_true(r == Z_OK || r == Z_STREAM_END);
    assert_int_equal(t->zs.avail_in, 0);
    assert_true(t->zs.avail_out > 0);
    return cap - t->zs.avail_out;
}

static void peer_deflate_end(peer *t)
{
    deflateEnd(&t->zs);
}

static void peer_inflate_init(peer *t)
{
    memset(t, 0, sizeof *t);
    assert_int_equal(inflateInit(&t->zs), Z_OK);
}

static size_t peer_inflate(peer *t, const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
    t->zs.next_in = (Bytef *)(uintptr_t)in;
    t->zs.avail_in = (uInt)n;
    t->zs.next_out = out;
    t->zs.avail_out = (uInt)cap;
    int r = inflate(&t->zs, Z_SYNC_FLUSH);
    if (r == Z_NEED_DICT) {
        assert_int_equal(t->zs.adler, LC_SPDY_DICTIONARY_ADLER);
        assert_int_equal(inflateSetDictionary(&t->zs, lc__spdy_dictionary,
                                              (uInt)lc__spdy_dictionary_len), Z_OK);
        r = inflate(&t->zs, Z_SYNC_FLUSH);
    }
    assert_int_equal(r, Z_OK);
    assert_int_equal(t->zs.avail_in, 0);
    return cap - t->zs.avail_out;
}

static void peer_inflate_end(peer *t)
{
    inflateEnd(&t->zs);
}

/* A header-frame payload: fixed[0..nfixed) then the block compressed by t. */
static size_t hdr_payload(uint8_t *out, peer *t, const uint8_t *fixed, size_t nfixed,
                          const uint8_t *raw, size_t rawn)
{
    memcpy(out, fixed, nfixed);
    return nfixed + peer_deflate(t, raw, rawn, out + nfixed, 65536, Z_SYNC_FLUSH);
}

/* ---- recording decoder output ------------------------------------------------ */

#define REC_MAX_FRAMES  32
#define REC_MAX_PAIRS   48
#define REC_MAX_DATA    1024

typedef struct rec_frame {
    lc_spdy_frame f;               /* headers/data pointers cleared */
    size_t data_len;
    uint8_t data[REC_MAX_DATA];
    int complete;
    size_t n_headers;
    char name[REC_MAX_PAIRS][64];
    char value[REC_MAX_PAIRS][64];
    size_t value_len[REC_MAX_PAIRS];
    lc_spdy_setting settings[8];
} rec_frame;

typedef struct rec {
    rec_frame fr[REC_MAX_FRAMES];
    size_t n;
    int err;
    size_t fragments;
} rec;

static rec *rec_new(void)
{
    rec *r = calloc(1, sizeof *r);
    assert_non_null(r);
    return r;
}

static void rec_take(rec *r, const lc_spdy_frame *f)
{
    if (f->type == LC_SPDY_DATA) {
        r->fragments++;
        rec_frame *cur = r->n ? &r->fr[r->n - 1] : NULL;
        if (f->data_offset == 0) {
            assert_true(cur == NULL || cur->complete);
            assert_true(r->n < REC_MAX_FRAMES);
            cur = &r->fr[r->n++];
            memset(cur, 0, sizeof *cur);
            cur->f = *f;
        } else {
            assert_non_null(cur);
            assert_false(cur->complete);
            assert_int_equal(cur->f.stream_id, f->stream_id);
            assert_int_equal(cur->data_len, f->data_offset);
        }
        assert_true(f->data_len > 0 || f->length == 0);
        assert_true(cur->data_len + f->data_len <= REC_MAX_DATA);
        if (f->data_len)
            memcpy(cur->data + cur->data_len, f->data, f->data_len);
        cur->data_len += f->data_len;
        cur->complete = f->data_last;
        assert_int_equal(f->data_last, cur->data_len == f->length);
        cur->f.data = NULL;
        return;
    }
    assert_true(r->n == 0 || r->fr[r->n - 1].complete);
    assert_true(r->n < REC_MAX_FRAMES);
    rec_frame *cur = &r->fr[r->n++];
    memset(cur, 0, sizeof *cur);
    cur->f = *f;
    cur->complete = 1;
    cur->n_headers = f->n_headers;
    assert_true(f->n_headers <= REC_MAX_PAIRS);
    for (size_t i = 0; i < f->n_headers; i++) {
        const lc_spdy_header *h = &f->headers[i];
        /* long names/values (limit tests) are kept cut short */
        memcpy(cur->name[i], h->name, h->name_len < 63 ? h->name_len : 63);
        memcpy(cur->value[i], h->value, h->value_len < 63 ? h->value_len : 63);
        cur->value_len[i] = h->value_len;
    }
    if (f->type == LC_SPDY_SETTINGS)
        for (uint32_t i = 0; i < f->value && i < 8; i++)
            lc__spdy_setting_get(f, i, &cur->settings[i]);
    cur->f.headers = NULL;
    cur->f.data = NULL;
}

/* Feeds p[0..n) to d, recording every frame; returns 0 or the error. */
static int feed(lc_spdy_decoder *d, rec *r, const uint8_t *p, size_t n)
{
    while (n > 0) {
        lc_spdy_frame f;
        size_t used = 12345;
        int rc = lc__spdy_decode(d, p, n, &used, &f);
        assert_true(used <= n);
        p += used;
        n -= used;
        if (rc < 0) {
            r->err = rc;
            return rc;
        }
        if (rc == 0) {
            assert_int_equal(n, 0);
            break;
        }
        assert_int_equal(rc, LC_SPDY_FRAME);
        rec_take(r, &f);
    }
    return 0;
}

/* Decodes p[0..n) in one feed with the given limits; returns the record. */
static rec *decode_all(const uint8_t *p, size_t n, const lc_spdy_limits *lim)
{
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, lim);
    rec *r = rec_new();
    feed(&d, r, p, n);
    lc__spdy_decoder_free(&d);
    return r;
}

/* The error p[0..n) gives, fed whole (and, same code, byte by byte). */
static int decode_err(const uint8_t *p, size_t n, const lc_spdy_limits *lim)
{
    rec *r = decode_all(p, n, lim);
    int err = r->err;
    free(r);
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, lim);
    r = rec_new();
    for (size_t i = 0; i < n && r->err == 0; i++)
        feed(&d, r, p + i, 1);
    assert_int_equal(r->err, err);
    free(r);
    lc__spdy_decoder_free(&d);
    return err;
}

static void assert_header(const rec_frame *fr, const char *name, const char *value)
{
    for (size_t i = 0; i < fr->n_headers; i++) {
        if (strcmp(fr->name[i], name) == 0) {
            assert_int_equal(fr->value_len[i], strlen(value));
            assert_memory_equal(fr->value[i], value, strlen(value));
            return;
        }
    }
    fail_msg("header %s missing", name);
}

/* ---- the dictionary ---------------------------------------------------------- */

static void test_dictionary_is_spdy3s(void **state)
{
    LC_TEST_DEADLINE(10);
    assert_int_equal(lc__spdy_dictionary_len, 1423);
    assert_int_equal(adler32(1, lc__spdy_dictionary, (uInt)lc__spdy_dictionary_len),
                     0xe3c6a7c2u);
    assert_memory_equal(lc__spdy_dictionary, "\0\0\0\x07options", 11);
    assert_memory_equal(lc__spdy_dictionary + 1423 - 6, "enq=0.", 6);
}

/* ---- encoding, exact bytes ------------------------------------------------------ */

static void test_encode_data(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_buf b;
    lc__buf_init(&b);
    assert_int_equal(lc__spdy_put_data(&b, 1, LC_SPDY_FLAG_FIN, "abc", 3), 0);
    assert_int_equal(lc__spdy_put_data(&b, 0x7fffffff, 0, NULL, 0), 0);
    HX(exp, "00 00 00 01 01 00 00 03 'abc'  7f ff ff ff 00 00 00 00");
    assert_bytes(b.data, b.len, exp, exp_n);

    uint8_t h[8];
    lc__spdy_data_header(h, 5, LC_SPDY_FLAG_FIN, 0xabcdef);
    HX(exph, "00 00 00 05 01 ab cd ef");
    assert_bytes(h, 8, exph, exph_n);

    /* begin/end: the payload is written in place, the length patched */
    b.len = 0;
    size_t mark;
    assert_int_equal(lc__spdy_data_begin(&b, 3, 0, &mark), 0);
    assert_int_equal(mark, 0);
    assert_int_equal(lc__buf_append(&b, "\x81\xa5Value\x01", 8), 0);
    assert_int_equal(lc__spdy_data_end(&b, mark), 0);
    assert_int_equal(lc__spdy_data_begin(&b, 3, LC_SPDY_FLAG_FIN, &mark), 0);
    assert_int_equal(mark, 16);
    assert_int_equal(lc__spdy_data_end(&b, mark), 0);
    HX(exp2, "00 00 00 03 00 00 00 08 81 a5 'Value' 01  00 00 00 03 01 00 00 00");
    assert_bytes(b.data, b.len, exp2, exp2_n);

    /* bad arguments leave the buffer as it was */
    size_t len = b.len;
    assert_int_equal(lc__spdy_put_data(&b, 0, 0, "x", 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_data(&b, 0x80000000u, 0, "x", 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_data(&b, 1, 0, "x", (size_t)LC_SPDY_MAX_LENGTH + 1), LC_EINVAL);
    assert_int_equal(lc__spdy_data_begin(&b, 0, 0, &mark), LC_EINVAL);
    assert_int_equal(b.len, len);
    lc__buf_free(&b);
}

static void test_encode_data_end_over_max_length(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_buf b;
    lc__buf_init(&b);
    size_t mark;
    assert_int_equal(lc__spdy_data_begin(&b, 1, 0, &mark), 0);
    assert_int_equal(lc__buf_reserve(&b, (size_t)LC_SPDY_MAX_LENGTH + 1), 0);
    memset(b.data + b.len, 'x', LC_SPDY_MAX_LENGTH);
    b.len += LC_SPDY_MAX_LENGTH;
    assert_int_equal(lc__spdy_data_end(&b, mark), 0); /* exactly the maximum */
    assert_int_equal(b.data[5], 0xff);
    b.data[b.len++] = 'x';
    assert_int_equal(lc__spdy_data_end(&b, mark), LC__SPDY_EFRAME_SIZE);
    lc__buf_free(&b);
}

static void test_encode_fixed_control_frames(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_buf b;
    lc__buf_init(&b);
    assert_int_equal(lc__spdy_put_rst_stream(&b, 3, LC_SPDY_CANCEL), 0);
    HX(rst, "80 03 00 03 00 00 00 08 00 00 00 03 00 00 00 05");
    assert_bytes(b.data, b.len, rst, rst_n);

    b.len = 0;
    lc_spdy_setting s[2] = {{LC_SPDY_SETTINGS_PERSIST_VALUE, LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE, 65536},
                            {0, 0xabcdef, 0xdeadbeef}};
    assert_int_equal(lc__spdy_put_settings(&b, LC_SPDY_FLAG_CLEAR_SETTINGS, s, 2), 0);
    HX(set, "80 03 00 04 01 00 00 14 00 00 00 02 01 00 00 07 00 01 00 00 00 ab cd ef de ad be ef");
    assert_bytes(b.data, b.len, set, set_n);

    b.len = 0;
    assert_int_equal(lc__spdy_put_settings(&b, 0, NULL, 0), 0);
    HX(set0, "80 03 00 04 00 00 00 04 00 00 00 00");
    assert_bytes(b.data, b.len, set0, set0_n);

    b.len = 0;
    assert_int_equal(lc__spdy_put_ping(&b, 0x01020304), 0);
    HX(ping, "80 03 00 06 00 00 00 04 01 02 03 04");
    assert_bytes(b.data, b.len, ping, ping_n);

    b.len = 0;
    assert_int_equal(lc__spdy_put_goaway(&b, 7, LC_SPDY_GOAWAY_OK), 0);
    HX(ga, "80 03 00 07 00 00 00 08 00 00 00 07 00 00 00 00");
    assert_bytes(b.data, b.len, ga, ga_n);

    b.len = 0;
    assert_int_equal(lc__spdy_put_window_update(&b, 5, 0x7fffffff), 0);
    HX(wu, "80 03 00 09 00 00 00 08 00 00 00 05 7f ff ff ff");
    assert_bytes(b.data, b.len, wu, wu_n);

    uint8_t h[8];
    lc__spdy_control_header(h, 0x1234, 0x56, 0x789abc);
    HX(ch, "80 03 12 34 56 78 9a bc");
    assert_bytes(h, 8, ch, ch_n);

    /* bad arguments: nothing appended */
    b.len = 0;
    assert_int_equal(lc__spdy_put_rst_stream(&b, 0, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_rst_stream(&b, 0x80000000u, 1), LC_EINVAL);
    lc_spdy_setting bad = {0, 0x1000000, 1};
    assert_int_equal(lc__spdy_put_settings(&b, 0, &bad, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_goaway(&b, 0x80000000u, 0), LC_EINVAL);
    assert_int_equal(lc__spdy_put_window_update(&b, 1, 0), LC_EINVAL);
    assert_int_equal(lc__spdy_put_window_update(&b, 1, 0x80000000u), LC_EINVAL);
    assert_int_equal(b.len, 0);
    lc__buf_free(&b);
}

/* Checks a header-block frame our encoder wrote: header, fixed part, and
 * that the independent zlib peer inflates the block to exactly `raw`. */
static void check_block_frame(const uint8_t *p, size_t n, const uint8_t *head, size_t nhead,
                              peer *in, const uint8_t *raw, size_t rawn)
{
    assert_true(n > nhead);
    assert_memory_equal(p, head, 5); /* version, type, flags */
    uint32_t len = (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
    assert_int_equal(len, n - 8);
    assert_memory_equal(p + 8, head + 8, nhead - 8);
    uint8_t out[4096];
    size_t on = peer_inflate(in, p + nhead, n - nhead, out, sizeof out);
    assert_bytes(out, on, raw, rawn);
}

/* Level 0 is written by hand (headers.c stored_blocks): its bytes must be
 * zlib's own at level 0 with the same window and memLevel, block after
 * block, including blocks past one stored block's 65535 bytes, and they
 * must inflate back to every pair. */
static void test_level0_matches_zlib(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_spdy_deflater ours;
    lc__spdy_deflater_init(&ours, 0);
    peer zl;
    peer_deflate_init_as(&zl, lc__spdy_dictionary, lc__spdy_dictionary_len, 0, LC_SPDY_DEFLATE_WBITS,
                         LC_SPDY_DEFLATE_MEMLEVEL);
    lc_spdy_inflater in;
    lc__spdy_inflater_init(&in);
    lc_spdy_limits lim = { .max_header_block = 1u << 20 };
    static char big[200000];
    memset(big, 'v', sizeof big);
    /* The raw block is 37 bytes plus the second value (4 for the count, 24
     * for libchan-ref: 12345, 9 around the value's one-byte name). Value
     * sizes: a libchan block, empty, raw blocks of 65534, 65535 and 65536
     * bytes (one stored block holds 65535), of 131070-131072 (two and
     * three), one of 200037, then small again (the stream goes on). */
    const size_t sizes[] = { 5, 0, 65497, 65498, 65499, 131033, 131034, 131035, 200000, 1, 7 };
    lc_buf a, b;
    lc__buf_init(&a);
    lc__buf_init(&b);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        lc_spdy_header h[2] = { { "libchan-ref", 11, "12345", 5 }, { "v", 1, big, sizes[k] } };
        size_t np = k == 0 ? 1 : 2;
        a.len = 0;
        assert_int_equal(lc__spdy_deflate_block(&ours, &a, h, np), 0);
        /* zlib's bytes for the same raw block */
        lc_buf raw;
        lc__buf_init(&raw);
        assert_int_equal(lc__spdy_hblock_build(&raw, h, np), 0);
        b.len = 0;
        assert_int_equal(lc__buf_reserve(&b, deflateBound(&zl.zs, raw.len) + 64), 0);
        b.len = peer_deflate(&zl, raw.data, raw.len, b.data, b.cap, Z_SYNC_FLUSH);
#if ZLIB_VERNUM >= 0x1290
        /* (zlib before 1.2.9 cut level-0 output into shorter stored blocks:
         * other bytes, the same content) */
        if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0)
            fail_msg("block %zu (value of %zu bytes): %zu bytes by hand, zlib %zu", k, sizes[k], a.len, b.len);
#endif
        const lc_spdy_header *got;
        size_t ngot;
        assert_int_equal(lc__spdy_inflate_block(&in, &lim, a.data, a.len, &got, &ngot), 0);
        assert_int_equal(ngot, np);
        assert_int_equal(got[np - 1].value_len, h[np - 1].value_len);
        assert_memory_equal(got[np - 1].value, h[np - 1].value, h[np - 1].value_len);
        lc__buf_free(&raw);
    }
    lc__buf_free(&a);
    lc__buf_free(&b);
    peer_deflate_end(&zl);
    lc__spdy_inflater_free(&in);
    lc__spdy_deflater_free(&ours);
}

static void test_encode_header_frames(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_spdy_deflater z;
    lc__spdy_deflater_init(&z, Z_DEFAULT_COMPRESSION);
    peer in;
    peer_inflate_init(&in);
    lc_buf b;
    lc__buf_init(&b);

    lc_spdy_header h1[] = {{"libchan-ref", 11, "2", 1}};
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0, 0, 0, 0, h1, 1), 0);
    /* the first block opens the zlib stream: header with FDICT + the
     * dictionary's adler32 */
    assert_int_equal(b.data[18] & 0x0f, 8);           /* deflate */
    assert_int_equal(b.data[18] >> 4, LC_SPDY_DEFLATE_WBITS - 8); /* window */
    assert_int_equal((b.data[18] << 8 | b.data[19]) % 31, 0);
    assert_true(b.data[19] & 0x20);                   /* FDICT */
    HX(dictid, "e3 c6 a7 c2");
    assert_memory_equal(b.data + 20, dictid, dictid_n);
    HX(ss, "80 03 00 01 00 00 00 00  00 00 00 01 00 00 00 00 00 00");
    uint8_t raw[512];
    size_t rawn = raw_block(raw, "libchan-ref", "2", NULL);
    check_block_frame(b.data, b.len, ss, ss_n, &in, raw, rawn);

    /* SYN_STREAM with every fixed field set */
    b.len = 0;
    lc_spdy_header h2[] = {{"libchan-ref", 11, "3", 1}, {"libchan-parent-ref", 18, "2", 1}};
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 3, 1, 7, 9,
                                             LC_SPDY_FLAG_FIN | LC_SPDY_FLAG_UNIDIRECTIONAL,
                                             h2, 2), 0);
    assert_memory_not_equal(b.data + 20, dictid, dictid_n); /* no second zlib header */
    HX(ss2, "80 03 00 01 03 00 00 00  00 00 00 03 00 00 00 01 e0 09");
    rawn = raw_block(raw, "libchan-ref", "3", "libchan-parent-ref", "2", NULL);
    check_block_frame(b.data, b.len, ss2, ss2_n, &in, raw, rawn);

    b.len = 0;
    lc_spdy_header h3[] = {{":status", 7, "200", 3}};
    assert_int_equal(lc__spdy_put_syn_reply(&b, &z, 1, 0, h3, 1), 0);
    HX(sr, "80 03 00 02 00 00 00 00  00 00 00 01");
    rawn = raw_block(raw, ":status", "200", NULL);
    check_block_frame(b.data, b.len, sr, sr_n, &in, raw, rawn);

    b.len = 0;
    lc_spdy_header h4[] = {{"x-trailer", 9, "a\0b", 3}};
    assert_int_equal(lc__spdy_put_headers(&b, &z, 5, LC_SPDY_FLAG_FIN, h4, 1), 0);
    HX(hd, "80 03 00 08 01 00 00 00  00 00 00 05");
    HX(rawh, "00 00 00 01 00 00 00 09 'x-trailer' 00 00 00 03 61 00 62");
    check_block_frame(b.data, b.len, hd, hd_n, &in, rawh, rawh_n);

    /* an empty block is legal: a count of 0 */
    b.len = 0;
    assert_int_equal(lc__spdy_put_syn_reply(&b, &z, 7, 0, NULL, 0), 0);
    HX(sr0, "80 03 00 02 00 00 00 00  00 00 00 07");
    HX(raw0, "00 00 00 00");
    check_block_frame(b.data, b.len, sr0, sr0_n, &in, raw0, raw0_n);

    lc__buf_free(&b);
    peer_inflate_end(&in);
    lc__spdy_deflater_free(&z);
}

static void test_encode_header_frame_errors(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_spdy_deflater z;
    lc__spdy_deflater_init(&z, Z_DEFAULT_COMPRESSION);
    lc_buf b;
    lc__buf_init(&b);
    assert_int_equal(lc__buf_append(&b, "keep", 4), 0);

    lc_spdy_header ok[] = {{"a", 1, "1", 1}};
    lc_spdy_header upper[] = {{"Libchan-Ref", 11, "2", 1}};
    lc_spdy_header empty[] = {{"", 0, "2", 1}};
    lc_spdy_header dup[] = {{"a", 1, "1", 1}, {"b", 1, "2", 1}, {"a", 1, "3", 1}};
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0, 0, 0, 0, upper, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0, 0, 0, 0, empty, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0, 0, 0, 0, dup, 3), LC_EINVAL);
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 0, 0, 0, 0, 0, ok, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0x80000000u, 0, 0, 0, ok, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0, 8, 0, 0, ok, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_syn_reply(&b, &z, 0, 0, ok, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_put_headers(&b, &z, 0x80000000u, 0, ok, 1), LC_EINVAL);
    assert_int_equal(b.len, 4);

    /* duplicates among many pairs (the hashed check) */
    lc_spdy_header many[40];
    char names[40][8];
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof names[i], "h%d", i);
        many[i] = (lc_spdy_header){names[i], strlen(names[i]), "v", 1};
    }
    many[39].name = "h7";
    many[39].name_len = 2;
    assert_int_equal(lc__spdy_put_headers(&b, &z, 1, 0, many, 40), LC_EINVAL);
    assert_int_equal(b.len, 4);

    /* rejected blocks never touched the stream: the next one still works */
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0, 0, 0, 0, ok, 1), 0);
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, NULL);
    rec *r = rec_new();
    assert_int_equal(feed(&d, r, b.data + 4, b.len - 4), 0);
    assert_int_equal(r->n, 1);
    assert_header(&r->fr[0], "a", "1");
    free(r);
    lc__spdy_decoder_free(&d);

    /* a block that cannot fit in a frame (2^24 - 1) is refused before it is
     * compressed, at level 0 (sessions) and 6: the deflater goes on (it was
     * left broken for good, every later block failing) */
    size_t big_n = (size_t)LC_SPDY_MAX_LENGTH;
    char *big_v = malloc(big_n);
    assert_non_null(big_v);
    memset(big_v, 'v', big_n);
    lc_spdy_header big[] = {{"a", 1, big_v, big_n}};
    lc_spdy_header fits[] = {{"a", 1, big_v, big_n - 2000}}; /* (with 257 stored blocks) */
    for (int level = 0; level <= 6; level += 6) {
        lc_spdy_deflater zl;
        lc__spdy_deflater_init(&zl, level);
        lc_buf bb;
        lc__buf_init(&bb);
        assert_int_equal(lc__spdy_put_syn_stream(&bb, &zl, 1, 0, 0, 0, 0, ok, 1), 0); /* (state 1) */
        size_t at = bb.len;
        assert_int_equal(lc__spdy_put_headers(&bb, &zl, 1, 0, big, 1), LC_EINVAL);
        assert_int_equal(bb.len, at);
        if (level == 0) /* exact at level 0: one just under the limit goes */
            assert_int_equal(lc__spdy_put_headers(&bb, &zl, 1, 0, fits, 1), 0);
        assert_int_equal(lc__spdy_put_syn_stream(&bb, &zl, 3, 0, 0, 0, 0, ok, 1), 0);
        lc_spdy_decoder dl;
        lc_spdy_limits lim = {0};
        lim.max_frame = LC_SPDY_MAX_LENGTH;
        lim.max_control_frame = LC_SPDY_MAX_LENGTH;
        lim.max_header_block = 32u << 20;
        lc__spdy_decoder_init(&dl, &lim);
        size_t used;
        lc_spdy_frame none;
        assert_int_equal(lc__spdy_decode(&dl, NULL, 0, &used, &none), 0); /* (UB once) */
        assert_int_equal(used, 0);
        rec *rl = rec_new();
        assert_int_equal(feed(&dl, rl, bb.data, bb.len), 0);
        assert_int_equal(rl->n, level == 0 ? 3 : 2);
        assert_header(&rl->fr[rl->n - 1], "a", "1");
        free(rl);
        lc__spdy_decoder_free(&dl);
        lc__buf_free(&bb);
        lc__spdy_deflater_free(&zl);
    }
    free(big_v);

    /* the uncompressed form has the same rules */
    lc_buf raw;
    lc__buf_init(&raw);
    assert_int_equal(lc__spdy_hblock_build(&raw, upper, 1), LC_EINVAL);
    assert_int_equal(lc__spdy_hblock_build(&raw, many, 40), LC_EINVAL);
    assert_int_equal(raw.len, 0);
    assert_int_equal(lc__spdy_hblock_build(&raw, ok, 1), 0);
    HX(exp, "00 00 00 01 00 00 00 01 'a' 00 00 00 01 '1'");
    assert_bytes(raw.data, raw.len, exp, exp_n);
    lc__buf_free(&raw);

    lc__buf_free(&b);
    lc__spdy_deflater_free(&z);
}

/* The upper-case rule is checked eight bytes at a time: every length up to
 * three words, every position, the bytes either side of 'A'..'Z' and the
 * same letters with the top bit set (not upper case: not ASCII). */
static void test_upper_case_names_at_every_position(void **state)
{
    (void)state;
    const unsigned char probes[] = { 'A', 'Z', 'M', '@', '[', 'a', 'z', 0xc1, 0xda, 0x80, 0xff, '-' };
    char name[24];
    lc_buf raw;
    lc__buf_init(&raw);
    for (size_t len = 1; len <= sizeof name; len++) {
        for (size_t at = 0; at < len; at++) {
            for (size_t k = 0; k < sizeof probes; k++) {
                memset(name, 'q', len);
                name[at] = (char)probes[k];
                bool upper = probes[k] >= 'A' && probes[k] <= 'Z';
                lc_spdy_header h[] = { { name, len, "v", 1 } };
                raw.len = 0;
                int rc = lc__spdy_hblock_build(&raw, h, 1);
                if (rc != (upper ? LC_EINVAL : 0))
                    fail_msg("name of %zu bytes, byte %zu = 0x%02x: got %d", len, at, probes[k], rc);
            }
        }
    }
    lc__buf_free(&raw);
}

/* ---- decoding hand-made bytes ------------------------------------------------------ */

static void test_decode_data_frames(void **state)
{
    LC_TEST_DEADLINE(10);
    HX(in, "00 00 00 01 00 00 00 03 'abc'  00 00 00 03 01 00 00 00  80 00 00 05 00 00 00 01 'z'");
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, NULL);
    lc_spdy_frame f;
    size_t used;
    assert_int_equal(lc__spdy_decode(&d, in, in_n, &used, &f), LC_SPDY_FRAME);
    assert_int_equal(used, 11);
    assert_int_equal(f.type, LC_SPDY_DATA);
    assert_int_equal(f.stream_id, 1);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.length, 3);
    assert_ptr_equal(f.data, in + 8); /* a view into the input: not copied */
    assert_int_equal(f.data_len, 3);
    assert_int_equal(f.data_offset, 0);
    assert_true(f.data_last);
    assert_true(lc__spdy_decoder_idle(&d));

    assert_int_equal(lc__spdy_decode(&d, in + 11, in_n - 11, &used, &f), LC_SPDY_FRAME);
    assert_int_equal(used, 8);
    assert_int_equal(f.type, LC_SPDY_DATA);
    assert_int_equal(f.stream_id, 3);
    assert_int_equal(f.flags, LC_SPDY_FLAG_FIN);
    assert_int_equal(f.length, 0);
    assert_int_equal(f.data_len, 0);
    assert_true(f.data_last);

    /* the reserved high bit of stream id: a data frame with stream 0x7fffffff */
    HX(big, "7f ff ff ff 00 00 00 01 'q'");
    lc__spdy_decoder_free(&d);
    lc__spdy_decoder_init(&d, NULL);
    assert_int_equal(lc__spdy_decode(&d, big, big_n, &used, &f), LC_SPDY_FRAME);
    assert_int_equal(f.stream_id, 0x7fffffff);

    /* a DATA frame split: fragments pointing into each input, in order */
    lc__spdy_decoder_free(&d);
    lc__spdy_decoder_init(&d, NULL);
    HX(sp, "00 00 00 07 01 00 00 05 'hello'");
    assert_int_equal(sp_n, 13);
    assert_int_equal(lc__spdy_decode(&d, sp, 3, &used, &f), 0);
    assert_int_equal(used, 3);
    assert_false(lc__spdy_decoder_idle(&d));
    assert_int_equal(lc__spdy_decode(&d, sp + 3, 5, &used, &f), 0); /* header done, no payload */
    assert_int_equal(lc__spdy_decode(&d, sp + 8, 2, &used, &f), LC_SPDY_FRAME);
    assert_ptr_equal(f.data, sp + 8);
    assert_int_equal(f.data_len, 2);
    assert_int_equal(f.data_offset, 0);
    assert_false(f.data_last);
    assert_int_equal(f.flags, LC_SPDY_FLAG_FIN); /* on every fragment; act on it at the last */
    assert_int_equal(lc__spdy_decode(&d, sp + 10, 3, &used, &f), LC_SPDY_FRAME);
    assert_int_equal(used, 3);
    assert_ptr_equal(f.data, sp + 10);
    assert_int_equal(f.data_offset, 2);
    assert_int_equal(f.data_len, 3);
    assert_true(f.data_last);
    assert_true(lc__spdy_decoder_idle(&d));
    lc__spdy_decoder_free(&d);
}

static void test_decode_fixed_control_frames(void **state)
{
    LC_TEST_DEADLINE(10);
    HX(in, "80 03 00 03 00 00 00 08 80 00 00 03 00 00 00 05"         /* RST_STREAM */
           "80 03 00 04 01 00 00 14 00 00 00 02 01 00 00 07 00 01 00 00"
           "   02 ab cd ef de ad be ef"                                /* SETTINGS */
           "80 03 00 06 00 00 00 04 00 00 00 02"                       /* PING */
           "80 03 00 07 00 00 00 08 00 00 00 09 00 00 00 01"           /* GOAWAY */
           "80 03 00 09 00 00 00 08 00 00 00 05 80 00 10 00"           /* WINDOW_UPDATE */
           "80 03 00 04 00 00 00 04 00 00 00 00");                     /* SETTINGS, empty */
    rec *r = decode_all(in, in_n, NULL);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->n, 6);

    lc_spdy_frame *f = &r->fr[0].f;
    assert_int_equal(f->type, LC_SPDY_RST_STREAM);
    assert_int_equal(f->stream_id, 3); /* reserved bit dropped */
    assert_int_equal(f->status, LC_SPDY_CANCEL);

    f = &r->fr[1].f;
    assert_int_equal(f->type, LC_SPDY_SETTINGS);
    assert_int_equal(f->flags, LC_SPDY_FLAG_CLEAR_SETTINGS);
    assert_int_equal(f->value, 2);
    assert_int_equal(r->fr[1].settings[0].flags, LC_SPDY_SETTINGS_PERSIST_VALUE);
    assert_int_equal(r->fr[1].settings[0].id, LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE);
    assert_int_equal(r->fr[1].settings[0].value, 65536);
    assert_int_equal(r->fr[1].settings[1].flags, LC_SPDY_SETTINGS_PERSISTED);
    assert_int_equal(r->fr[1].settings[1].id, 0xabcdef);
    assert_int_equal(r->fr[1].settings[1].value, 0xdeadbeef);

    f = &r->fr[2].f;
    assert_int_equal(f->type, LC_SPDY_PING);
    assert_int_equal(f->value, 2);

    f = &r->fr[3].f;
    assert_int_equal(f->type, LC_SPDY_GOAWAY);
    assert_int_equal(f->stream_id, 9);
    assert_int_equal(f->status, LC_SPDY_GOAWAY_PROTOCOL_ERROR);

    f = &r->fr[4].f;
    assert_int_equal(f->type, LC_SPDY_WINDOW_UPDATE);
    assert_int_equal(f->stream_id, 5);
    assert_int_equal(f->value, 0x1000); /* reserved bit dropped */

    f = &r->fr[5].f;
    assert_int_equal(f->type, LC_SPDY_SETTINGS);
    assert_int_equal(f->value, 0);
    free(r);

    /* our encoder's frames decode to what was encoded */
    lc_buf b;
    lc__buf_init(&b);
    lc_spdy_setting s = {0, LC_SPDY_SETTINGS_MAX_CONCURRENT_STREAMS, 100};
    assert_int_equal(lc__spdy_put_settings(&b, 0, &s, 1), 0);
    assert_int_equal(lc__spdy_put_ping(&b, 7), 0);
    assert_int_equal(lc__spdy_put_window_update(&b, 9, 12345), 0);
    r = decode_all(b.data, b.len, NULL);
    assert_int_equal(r->n, 3);
    assert_int_equal(r->fr[0].settings[0].id, LC_SPDY_SETTINGS_MAX_CONCURRENT_STREAMS);
    assert_int_equal(r->fr[0].settings[0].value, 100);
    assert_int_equal(r->fr[1].f.value, 7);
    assert_int_equal(r->fr[2].f.stream_id, 9);
    assert_int_equal(r->fr[2].f.value, 12345);
    free(r);
    lc__buf_free(&b);
}

static void test_decode_header_frames(void **state)
{
    LC_TEST_DEADLINE(10);
    peer t;
    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    uint8_t in[4096], pl[2048], raw[512];
    size_t n = 0, rawn, pn;

    HX(fx1, "00 00 00 01 00 00 00 00 a0 05"); /* stream 1, assoc 0, priority 5, slot 5 */
    rawn = raw_block(raw, "libchan-ref", "2", ":path", "/x", NULL);
    pn = hdr_payload(pl, &t, fx1, fx1_n, raw, rawn);
    n += ctl_frame(in + n, 3, LC_SPDY_SYN_STREAM, LC_SPDY_FLAG_UNIDIRECTIONAL, pl, pn);

    HX(fx2, "80 00 00 03 00 00 00 01 00 00"); /* reserved bits set */
    rawn = raw_block(raw, "libchan-ref", "3", "libchan-parent-ref", "2", NULL);
    pn = hdr_payload(pl, &t, fx2, fx2_n, raw, rawn);
    n += ctl_frame(in + n, 3, LC_SPDY_SYN_STREAM, LC_SPDY_FLAG_FIN, pl, pn);

    HX(fx3, "00 00 00 01");
    rawn = raw_block(raw, ":status", "200", NULL);
    pn = hdr_payload(pl, &t, fx3, fx3_n, raw, rawn);
    n += ctl_frame(in + n, 3, LC_SPDY_SYN_REPLY, 0, pl, pn);

    HX(fx4, "00 00 00 03");
    HX(rawv, "00 00 00 01 00 00 00 04 'x-vs' 00 00 00 03 61 00 62"); /* NUL-separated values */
    pn = hdr_payload(pl, &t, fx4, fx4_n, rawv, rawv_n);
    n += ctl_frame(in + n, 3, LC_SPDY_HEADERS, LC_SPDY_FLAG_FIN, pl, pn);

    HX(raw0, "00 00 00 00"); /* an empty block */
    pn = hdr_payload(pl, &t, fx3, fx3_n, raw0, raw0_n);
    n += ctl_frame(in + n, 3, LC_SPDY_HEADERS, 0, pl, pn);
    peer_deflate_end(&t);

    /* whole, and byte by byte: the same frames */
    for (int mode = 0; mode < 2; mode++) {
        lc_spdy_decoder d;
        lc__spdy_decoder_init(&d, NULL);
        rec *r = rec_new();
        if (mode == 0) {
            assert_int_equal(feed(&d, r, in, n), 0);
        } else {
            for (size_t i = 0; i < n; i++)
                assert_int_equal(feed(&d, r, in + i, 1), 0);
        }
        assert_true(lc__spdy_decoder_idle(&d));
        assert_int_equal(r->n, 5);
        rec_frame *fr = &r->fr[0];
        assert_int_equal(fr->f.type, LC_SPDY_SYN_STREAM);
        assert_int_equal(fr->f.flags, LC_SPDY_FLAG_UNIDIRECTIONAL);
        assert_int_equal(fr->f.stream_id, 1);
        assert_int_equal(fr->f.assoc_id, 0);
        assert_int_equal(fr->f.priority, 5);
        assert_int_equal(fr->f.slot, 5);
        assert_int_equal(fr->n_headers, 2);
        assert_string_equal(fr->name[0], "libchan-ref");
        assert_string_equal(fr->value[0], "2");
        assert_string_equal(fr->name[1], ":path");
        assert_string_equal(fr->value[1], "/x");

        fr = &r->fr[1];
        assert_int_equal(fr->f.type, LC_SPDY_SYN_STREAM);
        assert_int_equal(fr->f.flags, LC_SPDY_FLAG_FIN);
        assert_int_equal(fr->f.stream_id, 3);
        assert_int_equal(fr->f.assoc_id, 1);
        assert_int_equal(fr->f.priority, 0);
        assert_int_equal(fr->n_headers, 2);
        assert_header(fr, "libchan-ref", "3");
        assert_header(fr, "libchan-parent-ref", "2");

        fr = &r->fr[2];
        assert_int_equal(fr->f.type, LC_SPDY_SYN_REPLY);
        assert_int_equal(fr->f.stream_id, 1);
        assert_int_equal(fr->n_headers, 1);
        assert_header(fr, ":status", "200");

        fr = &r->fr[3];
        assert_int_equal(fr->f.type, LC_SPDY_HEADERS);
        assert_int_equal(fr->f.flags, LC_SPDY_FLAG_FIN);
        assert_int_equal(fr->f.stream_id, 3);
        assert_int_equal(fr->n_headers, 1);
        assert_int_equal(fr->value_len[0], 3);
        assert_memory_equal(fr->value[0], "a\0b", 3);

        fr = &r->fr[4];
        assert_int_equal(fr->f.type, LC_SPDY_HEADERS);
        assert_int_equal(fr->n_headers, 0);
        free(r);
        lc__spdy_decoder_free(&d);
    }
}

static void test_decode_unknown_types_are_skipped(void **state)
{
    LC_TEST_DEADLINE(10);
    uint8_t in[4096];
    size_t n = 0;
    uint8_t junk[1000];
    memset(junk, 0xee, sizeof junk);
    n += ctl_frame(in + n, 3, 10, 0x7f, junk, sizeof junk); /* CREDENTIAL: not supported */
    n += ctl_frame(in + n, 3, 5, 0, NULL, 0);               /* NOOP (SPDY/2), empty */
    n += ctl_frame(in + n, 3, 0, 0, junk, 3);               /* type 0 */
    n += ctl_frame(in + n, 3, 0xffff, 0, junk, 1);
    HX(tail, "80 03 00 06 00 00 00 04 00 00 00 01");
    memcpy(in + n, tail, tail_n);
    n += tail_n;

    /* skipped without buffering even beyond max_control_frame */
    lc_spdy_limits lim = {.max_control_frame = 16};
    for (int mode = 0; mode < 2; mode++) {
        lc_spdy_decoder d;
        lc__spdy_decoder_init(&d, &lim);
        rec *r = rec_new();
        if (mode == 0) {
            assert_int_equal(feed(&d, r, in, n), 0);
        } else {
            for (size_t i = 0; i < n; i++)
                assert_int_equal(feed(&d, r, in + i, 1), 0);
        }
        assert_int_equal(r->n, 5);
        assert_int_equal(r->fr[0].f.type, LC_SPDY_UNKNOWN);
        assert_int_equal(r->fr[0].f.raw_type, 10);
        assert_int_equal(r->fr[0].f.flags, 0x7f);
        assert_int_equal(r->fr[0].f.length, 1000);
        assert_int_equal(r->fr[1].f.type, LC_SPDY_UNKNOWN);
        assert_int_equal(r->fr[1].f.raw_type, 5);
        assert_int_equal(r->fr[2].f.type, LC_SPDY_UNKNOWN);
        assert_int_equal(r->fr[2].f.raw_type, 0);
        assert_int_equal(r->fr[3].f.raw_type, 0xffff);
        assert_int_equal(r->fr[4].f.type, LC_SPDY_PING);
        /* the 1000 bytes were never gathered (byte by byte, only the
         * PING's 4 bytes were) */
        assert_true(d.ctl.cap <= 64);
        free(r);
        lc__spdy_decoder_free(&d);
    }
}

static void test_decode_control_frame_split_is_gathered(void **state)
{
    LC_TEST_DEADLINE(10);
    HX(in, "80 03 00 07 00 00 00 08 00 00 00 09 00 00 00 01");
    assert_int_equal(in_n, 16);
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, NULL);
    lc_spdy_frame f;
    size_t used;
    assert_int_equal(lc__spdy_decode(&d, in, 10, &used, &f), 0);
    assert_int_equal(used, 10);
    assert_int_equal(lc__spdy_decode(&d, in + 10, 6, &used, &f), LC_SPDY_FRAME);
    assert_int_equal(used, 6);
    assert_int_equal(f.type, LC_SPDY_GOAWAY);
    assert_int_equal(f.stream_id, 9);
    assert_int_equal(f.status, 1);
    lc__spdy_decoder_free(&d);
}

/* ---- decoder errors ------------------------------------------------------------- */

static void test_decode_bad_version(void **state)
{
    LC_TEST_DEADLINE(10);
    HX(v2, "80 02 00 06 00 00 00 04 00 00 00 01");
    HX(v4, "80 04 00 06 00 00 00 04 00 00 00 01");
    HX(v2u, "80 02 00 0a 00 00 00 00"); /* unknown type: version still checked */
    HX(v0, "80 00 00 01 00 00 00 0a 00 00 00 01 00 00 00 00 00 00");
    assert_int_equal(decode_err(v2, v2_n, NULL), LC__SPDY_EVERSION);
    assert_int_equal(decode_err(v4, v4_n, NULL), LC__SPDY_EVERSION);
    assert_int_equal(decode_err(v2u, v2u_n, NULL), LC__SPDY_EVERSION);
    assert_int_equal(decode_err(v0, v0_n, NULL), LC__SPDY_EVERSION);

    /* the error is decided on the header alone, and sticks */
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, NULL);
    lc_spdy_frame f;
    size_t used;
    assert_int_equal(lc__spdy_decode(&d, v2, 8, &used, &f), LC__SPDY_EVERSION);
    assert_int_equal(used, 8);
    HX(ping, "80 03 00 06 00 00 00 04 00 00 00 01");
    assert_int_equal(lc__spdy_decode(&d, ping, ping_n, &used, &f), LC__SPDY_EVERSION);
    assert_int_equal(used, 0);
    assert_false(lc__spdy_decoder_idle(&d));
    lc__spdy_decoder_free(&d);
}

static void test_decode_bad_lengths_per_type(void **state)
{
    LC_TEST_DEADLINE(10);
    static const struct {
        uint16_t type;
        uint32_t len;
        int err;
    } cases[] = {
        {LC_SPDY_SYN_STREAM, 0, LC__SPDY_ELEN_SYN_STREAM},
        {LC_SPDY_SYN_STREAM, 9, LC__SPDY_ELEN_SYN_STREAM},
        {LC_SPDY_SYN_REPLY, 3, LC__SPDY_ELEN_SYN_REPLY},
        {LC_SPDY_RST_STREAM, 7, LC__SPDY_ELEN_RST_STREAM},
        {LC_SPDY_RST_STREAM, 9, LC__SPDY_ELEN_RST_STREAM},
        {LC_SPDY_SETTINGS, 0, LC__SPDY_ELEN_SETTINGS},
        {LC_SPDY_SETTINGS, 3, LC__SPDY_ELEN_SETTINGS},
        {LC_SPDY_SETTINGS, 13, LC__SPDY_ELEN_SETTINGS},
        {LC_SPDY_PING, 0, LC__SPDY_ELEN_PING},
        {LC_SPDY_PING, 3, LC__SPDY_ELEN_PING},
        {LC_SPDY_PING, 5, LC__SPDY_ELEN_PING},
        {LC_SPDY_GOAWAY, 4, LC__SPDY_ELEN_GOAWAY},
        {LC_SPDY_GOAWAY, 12, LC__SPDY_ELEN_GOAWAY},
        {LC_SPDY_HEADERS, 3, LC__SPDY_ELEN_HEADERS},
        {LC_SPDY_WINDOW_UPDATE, 4, LC__SPDY_ELEN_WINDOW_UPDATE},
        {LC_SPDY_WINDOW_UPDATE, 9, LC__SPDY_ELEN_WINDOW_UPDATE},
    };
    uint8_t zero[64] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t in[80];
        size_t n = ctl_frame(in, 3, cases[i].type, 0, zero, cases[i].len);
        /* decided on the 8-byte header, before the payload is stored */
        lc_spdy_decoder d;
        lc__spdy_decoder_init(&d, NULL);
        lc_spdy_frame f;
        size_t used;
        int rc = lc__spdy_decode(&d, in, 8, &used, &f);
        if (rc != cases[i].err)
            fail_msg("type %u length %u: got %d, expected %d", cases[i].type, cases[i].len, rc,
                     cases[i].err);
        assert_int_equal(used, 8);
        lc__spdy_decoder_free(&d);
        assert_int_equal(decode_err(in, n, NULL), cases[i].err);
    }

    /* SETTINGS whose count disagrees with its length */
    HX(s1, "80 03 00 04 00 00 00 0c 00 00 00 02 00 00 00 01 00 00 00 01");
    HX(s2, "80 03 00 04 00 00 00 0c 00 00 00 00 00 00 00 01 00 00 00 01");
    HX(s3, "80 03 00 04 00 00 00 0c ff ff ff ff 00 00 00 01 00 00 00 01");
    assert_int_equal(decode_err(s1, s1_n, NULL), LC__SPDY_ELEN_SETTINGS);
    assert_int_equal(decode_err(s2, s2_n, NULL), LC__SPDY_ELEN_SETTINGS);
    assert_int_equal(decode_err(s3, s3_n, NULL), LC__SPDY_ELEN_SETTINGS);
}

static void test_decode_stream_id_zero(void **state)
{
    LC_TEST_DEADLINE(10);
    HX(data, "00 00 00 00 00 00 00 01 'x'");
    HX(rst, "80 03 00 03 00 00 00 08 80 00 00 00 00 00 00 01");
    assert_int_equal(decode_err(data, data_n, NULL), LC__SPDY_ESTREAM_ZERO);
    assert_int_equal(decode_err(rst, rst_n, NULL), LC__SPDY_ESTREAM_ZERO);

    peer t;
    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    uint8_t raw[64], pl[256], in[512];
    size_t rawn = raw_block(raw, "a", "b", NULL);
    HX(fx10, "00 00 00 00 00 00 00 00 00 00");
    size_t pn = hdr_payload(pl, &t, fx10, fx10_n, raw, rawn);
    size_t n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, pl, pn);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_ESTREAM_ZERO);
    peer_deflate_end(&t);

    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    HX(fx4, "00 00 00 00");
    pn = hdr_payload(pl, &t, fx4, fx4_n, raw, rawn);
    n = ctl_frame(in, 3, LC_SPDY_SYN_REPLY, 0, pl, pn);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_ESTREAM_ZERO);
    peer_deflate_end(&t);
    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    pn = hdr_payload(pl, &t, fx4, fx4_n, raw, rawn);
    n = ctl_frame(in, 3, LC_SPDY_HEADERS, 0, pl, pn);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_ESTREAM_ZERO);
    peer_deflate_end(&t);
}

static void test_decode_oversize_frames(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_spdy_limits lim = {.max_frame = 100, .max_control_frame = 50};
    lc_spdy_decoder d;
    lc_spdy_frame f;
    size_t used;

    /* DATA over max_frame: refused on the header (nothing buffered) */
    HX(d101, "00 00 00 01 00 00 00 65");
    lc__spdy_decoder_init(&d, &lim);
    assert_int_equal(lc__spdy_decode(&d, d101, d101_n, &used, &f), LC__SPDY_EFRAME_SIZE);
    assert_int_equal(used, 8);
    lc__spdy_decoder_free(&d);

    /* exactly max_frame passes */
    uint8_t in[256] = {0};
    put32(in, 1);
    put32(in + 4, 100);
    rec *r = decode_all(in, 108, &lim);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->fr[0].data_len, 100);
    free(r);

    /* a known control frame over max_control_frame; unknown ones over
     * max_frame */
    uint8_t s[128];
    uint8_t pl[60] = {0};
    put32(pl, 7);
    size_t n = ctl_frame(s, 3, LC_SPDY_SETTINGS, 0, pl, 60);
    put32(s + 8, 7);
    assert_int_equal(decode_err(s, n, &lim), LC__SPDY_EFRAME_SIZE);
    HX(u101, "80 03 00 0a 00 00 00 65");
    assert_int_equal(decode_err(u101, u101_n, &lim), LC__SPDY_EFRAME_SIZE);

    /* the defaults: max_frame is the format's maximum; control frames 256 KiB */
    lc_spdy_limits def;
    lc__spdy_limits_resolve(&def, NULL);
    assert_int_equal(def.max_frame, 0xffffff);
    assert_int_equal(def.max_control_frame, 256 * 1024);
    assert_int_equal(def.max_header_block, 64 * 1024);
    assert_int_equal(def.max_header_pairs, 256);
    HX(bigs, "80 03 00 04 00 04 00 04");
    assert_int_equal(decode_err(bigs, bigs_n, NULL), LC__SPDY_EFRAME_SIZE);
    HX(bigd, "00 00 00 01 00 ff ff ff");
    lc__spdy_decoder_init(&d, NULL);
    assert_int_equal(lc__spdy_decode(&d, bigd, bigd_n, &used, &f), 0);
    lc__spdy_decoder_free(&d);
}

/* Decodes one SYN_STREAM carrying raw[0..rawn) compressed by a fresh peer. */
static int block_err(const uint8_t *raw, size_t rawn, const lc_spdy_limits *lim)
{
    peer t;
    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    static uint8_t pl[200000], in[200100];
    HX(fx, "00 00 00 01 00 00 00 00 00 00");
    size_t pn = hdr_payload(pl, &t, fx, fx_n, raw, rawn);
    peer_deflate_end(&t);
    size_t n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, pl, pn);
    rec *r = decode_all(in, n, lim);
    int err = r->err;
    free(r);
    return err;
}

static void test_decode_header_block_bomb(void **state)
{
    LC_TEST_DEADLINE(10);
    static uint8_t raw[140000];
    /* one pair whose value makes the block exactly max_header_block bytes */
    lc_spdy_limits lim = {.max_header_block = 1000};
    size_t rawn = 1000;
    put32(raw, 1);
    put32(raw + 4, 1);
    raw[8] = 'a';
    put32(raw + 9, (uint32_t)(rawn - 13));
    memset(raw + 13, 'z', rawn - 13);
    assert_int_equal(block_err(raw, rawn, &lim), 0);
    /* one byte more */
    rawn = 1001;
    put32(raw + 9, (uint32_t)(rawn - 13));
    memset(raw + 13, 'z', rawn - 13);
    assert_int_equal(block_err(raw, rawn, &lim), LC__SPDY_EHBLOCK_SIZE);

    /* the default cap, 64 KiB, with a real bomb: ~130 KiB of zeros compress
     * to a few hundred bytes */
    rawn = 130000;
    put32(raw + 9, (uint32_t)(rawn - 13));
    memset(raw + 13, 0, rawn - 13);
    assert_int_equal(block_err(raw, rawn, NULL), LC__SPDY_EHBLOCK_SIZE);
}

static void test_decode_corrupt_zlib(void **state)
{
    LC_TEST_DEADLINE(10);
    uint8_t raw[64], pl[512], in[600];
    size_t rawn = raw_block(raw, "libchan-ref", "2", NULL);
    HX(fx, "00 00 00 01 00 00 00 00 00 00");

    /* garbage instead of a zlib stream */
    HX(garbage, "00 00 00 01 00 00 00 00 00 00 ff ff ff ff ff ff ff ff");
    size_t n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, garbage, garbage_n);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_EZLIB);

    /* a valid block with its deflate data damaged */
    peer t;
    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    size_t pn = hdr_payload(pl, &t, fx, fx_n, raw, rawn);
    peer_deflate_end(&t);
    pl[fx_n + 6] ^= 0xff;
    pl[fx_n + 7] ^= 0xff;
    n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, pl, pn);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_EZLIB);

    /* another dictionary */
    peer_deflate_init(&t, (const uint8_t *)"not the spdy dictionary", 23);
    pn = hdr_payload(pl, &t, fx, fx_n, raw, rawn);
    peer_deflate_end(&t);
    n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, pl, pn);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_EZLIB);

    /* a stream the peer finished (Z_FINISH): later blocks could not follow */
    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    memcpy(pl, fx, fx_n);
    pn = fx_n + peer_deflate(&t, raw, rawn, pl + fx_n, sizeof pl - fx_n, Z_FINISH);
    peer_deflate_end(&t);
    n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, pl, pn);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_EZLIB);

    /* a block that is not flushed: its bytes are incomplete */
    peer_deflate_init(&t, lc__spdy_dictionary, lc__spdy_dictionary_len);
    memcpy(pl, fx, fx_n);
    pn = fx_n + peer_deflate(&t, raw, rawn, pl + fx_n, sizeof pl - fx_n, Z_NO_FLUSH);
    peer_deflate_end(&t);
    n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, pl, pn);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_EHBLOCK);

    /* an empty compressed block */
    n = ctl_frame(in, 3, LC_SPDY_SYN_STREAM, 0, fx, fx_n);
    assert_int_equal(decode_err(in, n, NULL), LC__SPDY_EHBLOCK);
}

static void test_decode_bad_header_block_structure(void **state)
{
    LC_TEST_DEADLINE(10);
    /* the count promises more pairs than there are */
    HX(b1, "00 00 00 02 00 00 00 01 'a' 00 00 00 01 'b'");
    assert_int_equal(block_err(b1, b1_n, NULL), LC__SPDY_EHBLOCK);
    /* a name length past the end */
    HX(b2, "00 00 00 01 00 00 00 09 'a' 00 00 00 01 'b'");
    assert_int_equal(block_err(b2, b2_n, NULL), LC__SPDY_EHBLOCK);
    /* a value length past the end */
    HX(b3, "00 00 00 01 00 00 00 01 'a' 00 00 00 02 'b'");
    assert_int_equal(block_err(b3, b3_n, NULL), LC__SPDY_EHBLOCK);
    /* a huge value length (no wrap-around) */
    HX(b4, "00 00 00 01 00 00 00 01 'a' ff ff ff ff 'b'");
    assert_int_equal(block_err(b4, b4_n, NULL), LC__SPDY_EHBLOCK);
    /* the value length itself cut off */
    HX(b5, "00 00 00 01 00 00 00 01 'a' 00 00");
    assert_int_equal(block_err(b5, b5_n, NULL), LC__SPDY_EHBLOCK);
    /* bytes after the last pair */
    HX(b6, "00 00 00 01 00 00 00 01 'a' 00 00 00 01 'b' 00");
    assert_int_equal(block_err(b6, b6_n, NULL), LC__SPDY_EHBLOCK);
    /* not even a count */
    HX(b7, "00 00 00");
    assert_int_equal(block_err(b7, b7_n, NULL), LC__SPDY_EHBLOCK);
    /* a huge count: too many pairs */
    HX(b8, "ff ff ff ff 00 00 00 01 'a' 00 00 00 01 'b'");
    assert_int_equal(block_err(b8, b8_n, NULL), LC__SPDY_EHPAIRS);

    /* upper-case names, empty names, duplicates */
    HX(u1, "00 00 00 01 00 00 00 0b 'libchan-Ref' 00 00 00 01 '2'");
    assert_int_equal(block_err(u1, u1_n, NULL), LC__SPDY_EHUPPER);
    HX(u2, "00 00 00 01 00 00 00 01 'Z' 00 00 00 00");
    assert_int_equal(block_err(u2, u2_n, NULL), LC__SPDY_EHUPPER);
    HX(e1, "00 00 00 01 00 00 00 00 00 00 00 01 'x'");
    assert_int_equal(block_err(e1, e1_n, NULL), LC__SPDY_EHNAME);
    HX(d1, "00 00 00 02 00 00 00 01 'a' 00 00 00 01 '1' 00 00 00 01 'a' 00 00 00 01 '2'");
    assert_int_equal(block_err(d1, d1_n, NULL), LC__SPDY_EHDUP);
    /* a value may be empty, names may hold other bytes */
    HX(ok, "00 00 00 02 00 00 00 01 'a' 00 00 00 00 00 00 00 03 ':@~' 00 00 00 01 'x'");
    assert_int_equal(block_err(ok, ok_n, NULL), 0);

    /* duplicates among many pairs (hashed check) */
    uint8_t raw[4096];
    size_t n = 4;
    for (int i = 0; i < 40; i++) {
        char name[8];
        int l = snprintf(name, sizeof name, "h%d", i == 39 ? 3 : i);
        put32(raw + n, (uint32_t)l);
        memcpy(raw + n + 4, name, (size_t)l);
        n += 4 + (size_t)l;
        put32(raw + n, 1);
        raw[n + 4] = 'v';
        n += 5;
    }
    put32(raw, 40);
    assert_int_equal(block_err(raw, n, NULL), LC__SPDY_EHDUP);
    raw[n - 6] = 'x'; /* the last name, "h3" -> "hx": distinct now */
    assert_int_equal(block_err(raw, n, NULL), 0);
}

static void test_decode_too_many_pairs(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_spdy_limits lim = {.max_header_pairs = 4};
    uint8_t raw[512];
    size_t n = raw_block(raw, "a", "1", "b", "2", "c", "3", "d", "4", NULL);
    assert_int_equal(block_err(raw, n, &lim), 0);
    n = raw_block(raw, "a", "1", "b", "2", "c", "3", "d", "4", "e", "5", NULL);
    assert_int_equal(block_err(raw, n, &lim), LC__SPDY_EHPAIRS);
}

static void test_header_errors_are_sticky(void **state)
{
    LC_TEST_DEADLINE(10);
    /* after a bad block the shared zlib stream is lost: every later call fails */
    lc_spdy_inflater z;
    lc__spdy_inflater_init(&z);
    const lc_spdy_header *h;
    size_t n;
    HX(bad, "78 f9 e3 c6 a7 c2 ff ff ff");
    assert_int_equal(lc__spdy_inflate_block(&z, NULL, bad, bad_n, &h, &n), LC__SPDY_EZLIB);
    lc_spdy_deflater dz;
    lc__spdy_deflater_init(&dz, 9);
    lc_buf b;
    lc__buf_init(&b);
    lc_spdy_header ok[] = {{"a", 1, "b", 1}};
    assert_int_equal(lc__spdy_deflate_block(&dz, &b, ok, 1), 0);
    assert_int_equal(lc__spdy_inflate_block(&z, NULL, b.data, b.len, &h, &n), LC__SPDY_EZLIB);
    lc__buf_free(&b);
    lc__spdy_deflater_free(&dz);
    lc__spdy_inflater_free(&z);
}

/* ---- stateful compression ------------------------------------------------------ */

/* One header block of a zlib stream of the test's own: the raw form, then
 * deflate(Z_SYNC_FLUSH) at `level` (switched first when it changes). */
static void zblock(z_stream *zs, int level, lc_buf *out, const lc_spdy_header *h, size_t n)
{
    lc_buf raw;
    lc__buf_init(&raw);
    assert_int_equal(lc__spdy_hblock_build(&raw, h, n), 0);
    uint8_t spare[64];
    zs->next_out = spare;
    zs->avail_out = sizeof spare;
    assert_int_equal(deflateParams(zs, level, Z_DEFAULT_STRATEGY), Z_OK);
    assert_int_equal(zs->avail_out, sizeof spare); /* nothing pending was written */
    out->len = 0;
    assert_int_equal(lc__buf_reserve(out, deflateBound(zs, (uLong)raw.len) + 64), 0);
    zs->next_in = raw.data;
    zs->avail_in = (uInt)raw.len;
    zs->next_out = out->data;
    zs->avail_out = (uInt)out->cap;
    assert_int_equal(deflate(zs, Z_SYNC_FLUSH), Z_OK);
    assert_int_equal(zs->avail_in, 0);
    out->len = out->cap - zs->avail_out;
    lc__buf_free(&raw);
}

static void assert_pairs(lc_spdy_inflater *in, const lc_spdy_limits *lim, const uint8_t *p, size_t n,
                         const lc_spdy_header *want, size_t nwant)
{
    const lc_spdy_header *got;
    size_t ngot;
    assert_int_equal(lc__spdy_inflate_block(in, lim, p, n, &got, &ngot), 0);
    assert_int_equal(ngot, nwant);
    for (size_t i = 0; i < nwant; i++) {
        assert_int_equal(got[i].name_len, want[i].name_len);
        assert_memory_equal(got[i].name, want[i].name, want[i].name_len);
        assert_int_equal(got[i].value_len, want[i].value_len);
        assert_memory_equal(got[i].value, want[i].value, want[i].value_len);
    }
}

/*
 * Stored blocks are read without zlib until a block of another kind comes;
 * zlib then goes on with everything before as its dictionary. The
 * compressed block refers back into the stored output (its value repeats
 * the last stored one) and into the SPDY dictionary. Variants: a few small
 * stored blocks; 48 KiB of them (the history ring wraps: zlib must get it
 * oldest byte first); a stored block cut between two header blocks (zlib
 * takes over inside it).
 */
static void test_inflate_stored_then_compressed(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_spdy_limits lim = {.max_header_block = 1 << 20};
    enum { BIG = 12000 };
    char *vals[4];
    for (int i = 0; i < 4; i++) {
        vals[i] = malloc(BIG + 1);
        assert_non_null(vals[i]);
        uint32_t x = 2463534242u + (uint32_t)i;
        for (int j = 0; j < BIG; j++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            vals[i][j] = (char)('a' + x % 26);
        }
        vals[i][BIG] = 0;
    }
    for (int variant = 0; variant < 3; variant++) {
        z_stream zs;
        memset(&zs, 0, sizeof zs);
        assert_int_equal(deflateInit2(&zs, 0, Z_DEFLATED, 15, 8, Z_DEFAULT_STRATEGY), Z_OK);
        assert_int_equal(deflateSetDictionary(&zs, lc__spdy_dictionary, (uInt)lc__spdy_dictionary_len), Z_OK);
        lc_spdy_inflater in;
        lc__spdy_inflater_init(&in);
        lc_buf b, c;
        lc__buf_init(&b);
        lc__buf_init(&c);
        int nstored = variant == 1 ? 4 : 2;
        const char *last = NULL;
        size_t last_len = 0;
        for (int i = 0; i < nstored; i++) {
            last = variant == 1 ? vals[i] : i == 0 ? "small-zero" : "small-one, a little longer";
            last_len = strlen(last);
            lc_spdy_header h[] = {{"x-value", 7, last, last_len}};
            zblock(&zs, 0, &b, h, 1);
            assert_int_equal(b.data[i == 0 ? 6 : 0] & 7, 0); /* stored, behind the zlib header */
            if (variant == 2 && i == nstored - 1) {
                /* hold back the last 3 bytes of the sync flush's empty
                 * stored block: they open the next header block */
                b.len -= 3;
                assert_int_equal(lc__buf_append(&c, b.data + b.len, 3), 0);
            }
            assert_pairs(&in, &lim, b.data, b.len, h, 1);
        }
        lc_spdy_header again[] = {{"x-again", 7, last, last_len}, {"content-type", 12, "text/html", 9}};
        zblock(&zs, 9, &b, again, 2);
        assert_true(b.len < (variant == 1 ? 400u : 60u)); /* back references, not the value again */
        assert_int_equal(lc__buf_append(&c, b.data, b.len), 0);
        assert_pairs(&in, &lim, c.data, c.len, again, 2);
        /* zlib reads the stream from now on, stored blocks included */
        lc_spdy_header more[] = {{"x-more", 6, "stored again", 12}};
        zblock(&zs, 0, &b, more, 1);
        assert_pairs(&in, &lim, b.data, b.len, more, 1);
        lc__buf_free(&b);
        lc__buf_free(&c);
        lc__spdy_inflater_free(&in);
        deflateEnd(&zs);
    }
    for (int i = 0; i < 4; i++)
        free(vals[i]);
}

/* The zlib header and the stored blocks read without zlib get zlib's
 * checks: another dictionary, a bad check value or method, a stored length
 * whose complement does not match, a block past the size limit. A stream
 * without a dictionary is fine. */
static void test_inflate_checks_what_zlib_checks(void **state)
{
    LC_TEST_DEADLINE(10);
    const lc_spdy_header *h;
    size_t n;
    /* a raw block for the stored form: 1 pair "a" = "b" */
    HX(raw, "00 00 00 01 00 00 00 01 'a' 00 00 00 01 'b'");
    struct {
        const char *what;
        uint8_t head[6];
        size_t head_n;
        int want;
    } cases[] = {
        {"SPDY dictionary", {0x78, 0xbb, 0xe3, 0xc6, 0xa7, 0xc2}, 6, 0},
        {"no dictionary", {0x78, 0x01}, 2, 0},
        {"another dictionary", {0x78, 0xbb, 0x00, 0x00, 0x00, 0x01}, 6, LC__SPDY_EZLIB},
        {"bad check bits", {0x78, 0xbc, 0xe3, 0xc6, 0xa7, 0xc2}, 6, LC__SPDY_EZLIB},
        {"not deflate", {0x79, 0x18}, 2, LC__SPDY_EZLIB},
        {"window over 32 KiB", {0x88, 0x1c}, 2, LC__SPDY_EZLIB},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint8_t blk[64];
        memcpy(blk, cases[k].head, cases[k].head_n);
        uint8_t *p = blk + cases[k].head_n;
        *p++ = 0;
        *p++ = (uint8_t)raw_n, *p++ = 0, *p++ = (uint8_t)~raw_n, *p++ = 0xff;
        memcpy(p, raw, raw_n);
        p += raw_n;
        memcpy(p, "\x00\x00\x00\xff\xff", 5);
        p += 5;
        lc_spdy_inflater z;
        lc__spdy_inflater_init(&z);
        int r = lc__spdy_inflate_block(&z, NULL, blk, (size_t)(p - blk), &h, &n);
        if (r != cases[k].want)
            fail_msg("%s: %d, want %d", cases[k].what, r, cases[k].want);
        lc__spdy_inflater_free(&z);
    }
    /* a stored block whose NLEN is not ~LEN; then one too large */
    for (int k = 0; k < 2; k++) {
        uint8_t blk[64] = {0x78, 0xbb, 0xe3, 0xc6, 0xa7, 0xc2, 0, (uint8_t)raw_n, 0, (uint8_t)~raw_n, 0xff};
        if (k == 0)
            blk[9] ^= 1;
        memcpy(blk + 11, raw, raw_n);
        lc_spdy_limits lim = {.max_header_block = k == 1 ? (uint32_t)raw_n - 1 : 0};
        lc_spdy_inflater z;
        lc__spdy_inflater_init(&z);
        assert_int_equal(lc__spdy_inflate_block(&z, &lim, blk, 11 + raw_n, &h, &n),
                         k == 0 ? LC__SPDY_EZLIB : LC__SPDY_EHBLOCK_SIZE);
        lc__spdy_inflater_free(&z);
    }
    /* a first block too short to hold the zlib header */
    lc_spdy_inflater z;
    lc__spdy_inflater_init(&z);
    assert_int_equal(lc__spdy_inflate_block(&z, NULL, (const uint8_t *)"\x78", 1, &h, &n), LC__SPDY_EHBLOCK);
    lc__spdy_inflater_free(&z);
}


static void test_roundtrip_stateful_across_frames(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_spdy_deflater z;
    lc__spdy_deflater_init(&z, Z_DEFAULT_COMPRESSION);
    lc_buf b;
    lc__buf_init(&b);
    size_t starts[12];
    char vals[12][16];
    for (uint32_t i = 0; i < 12; i++) {
        starts[i] = b.len;
        snprintf(vals[i], sizeof vals[i], "%u", i + 2);
        lc_spdy_header h[3] = {{"libchan-ref", 11, vals[i], strlen(vals[i])},
                               {"libchan-parent-ref", 18, "2", 1},
                               {"x-long", 6, "the same long value every time, compressible", 44}};
        size_t nh = i == 0 ? 1 : 3;
        if (i % 3 == 0)
            assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 2 * i + 1, 0, 0, 0, 0, h, nh), 0);
        else if (i % 3 == 1)
            assert_int_equal(lc__spdy_put_syn_reply(&b, &z, 2 * i + 1, 0, h, nh), 0);
        else
            assert_int_equal(lc__spdy_put_headers(&b, &z, 2 * i + 1, 0, h, nh), 0);
        assert_int_equal(lc__spdy_put_data(&b, 2 * i + 1, 0, vals[i], strlen(vals[i])), 0);
    }
    /* later blocks reuse the earlier ones: the repeated value costs little */
    for (int i = 2; i < 12; i++) {
        size_t len = starts[i] - starts[i - 1] - 8 - strlen(vals[i - 1]) - 8;
        if (i - 1 >= 2)
            assert_true(len < 4 + 44); /* less than the repeated value alone */
    }

    for (int mode = 0; mode < 3; mode++) {
        lc_spdy_decoder d;
        lc__spdy_decoder_init(&d, NULL);
        rec *r = rec_new();
        if (mode == 0) {
            assert_int_equal(feed(&d, r, b.data, b.len), 0);
        } else {
            size_t step = mode == 1 ? 1 : 7;
            for (size_t i = 0; i < b.len; i += step)
                assert_int_equal(feed(&d, r, b.data + i, b.len - i < step ? b.len - i : step), 0);
        }
        assert_int_equal(r->n, 24);
        for (uint32_t i = 0; i < 12; i++) {
            rec_frame *fr = &r->fr[2 * i];
            static const int types[3] = {LC_SPDY_SYN_STREAM, LC_SPDY_SYN_REPLY, LC_SPDY_HEADERS};
            assert_int_equal(fr->f.type, types[i % 3]);
            assert_int_equal(fr->f.stream_id, 2 * i + 1);
            assert_int_equal(fr->n_headers, i == 0 ? 1 : 3);
            assert_header(fr, "libchan-ref", vals[i]);
            if (i > 0) {
                assert_header(fr, "libchan-parent-ref", "2");
                assert_header(fr, "x-long", "the same long value every time, compressible");
            }
            fr = &r->fr[2 * i + 1];
            assert_int_equal(fr->f.type, LC_SPDY_DATA);
            assert_int_equal(fr->data_len, strlen(vals[i]));
            assert_memory_equal(fr->data, vals[i], fr->data_len);
        }
        free(r);
        lc__spdy_decoder_free(&d);
    }
    lc__buf_free(&b);
    lc__spdy_deflater_free(&z);
}

static void test_roundtrip_many_pairs_and_levels(void **state)
{
    LC_TEST_DEADLINE(10);
    static const int levels[] = {0, 1, 9, Z_DEFAULT_COMPRESSION};
    for (size_t li = 0; li < sizeof levels / sizeof levels[0]; li++) {
        lc_spdy_deflater z;
        lc__spdy_deflater_init(&z, levels[li]);
        lc_spdy_inflater in;
        lc__spdy_inflater_init(&in);
        lc_spdy_header h[40];
        char names[40][8], values[40][16];
        for (int i = 0; i < 40; i++) {
            snprintf(names[i], sizeof names[i], "h%d", i);
            snprintf(values[i], sizeof values[i], "value-%d", i * 7);
            h[i] = (lc_spdy_header){names[i], strlen(names[i]), values[i], strlen(values[i])};
        }
        for (int round = 0; round < 3; round++) {
            lc_buf b;
            lc__buf_init(&b);
            assert_int_equal(lc__spdy_deflate_block(&z, &b, h, 40), 0);
            const lc_spdy_header *got;
            size_t n;
            assert_int_equal(lc__spdy_inflate_block(&in, NULL, b.data, b.len, &got, &n), 0);
            assert_int_equal(n, 40);
            for (int i = 0; i < 40; i++) {
                assert_int_equal(got[i].name_len, h[i].name_len);
                assert_memory_equal(got[i].name, h[i].name, h[i].name_len);
                assert_int_equal(got[i].value_len, h[i].value_len);
                assert_memory_equal(got[i].value, h[i].value, h[i].value_len);
            }
            assert_ptr_equal(lc__spdy_header_find(got, n, "h17"), &got[17]);
            assert_null(lc__spdy_header_find(got, n, "h40"));
            lc__buf_free(&b);
        }
        lc__spdy_inflater_free(&in);
        lc__spdy_deflater_free(&z);
    }
}

static void test_strerror_names_every_code(void **state)
{
    LC_TEST_DEADLINE(10);
    for (int c = LC__SPDY_EBROKEN; c <= LC__SPDY_EVERSION; c++) {
        const char *s = lc__spdy_strerror(c);
        assert_non_null(s);
        assert_true(strncmp(s, "spdy: ", 6) == 0);
        for (int c2 = LC__SPDY_EBROKEN; c2 < c; c2++)
            assert_string_not_equal(s, lc__spdy_strerror(c2));
    }
    assert_string_equal(lc__spdy_strerror(LC_ENOMEM), lc_strerror(LC_ENOMEM));
}

/* ---- the Go vectors ------------------------------------------------------------ */

#ifndef LC_SPDY_VECTORS_DIR
#error "LC_SPDY_VECTORS_DIR must name tests/spdy/vectors"
#endif

static uint8_t *load_vector(const char *file, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", LC_SPDY_VECTORS_DIR, file);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    uint8_t *buf = malloc(8192);
    assert_non_null(buf);
    *n = fread(buf, 1, 8192, f);
    fclose(f);
    return buf;
}

typedef struct exp_frame {
    int type;
    uint32_t stream;
    uint8_t flags;
    uint32_t length;
    const char *hdr[6];  /* name, value, ... NULL */
    const char *data;    /* hx() text of the DATA payload */
} exp_frame;

static void check_record(const rec *r, const exp_frame *e, size_t ne)
{
    assert_int_equal(r->err, 0);
    assert_int_equal(r->n, ne);
    for (size_t i = 0; i < ne; i++) {
        const rec_frame *fr = &r->fr[i];
        assert_true(fr->complete);
        assert_int_equal(fr->f.type, e[i].type);
        assert_int_equal(fr->f.stream_id, e[i].stream);
        assert_int_equal(fr->f.flags, e[i].flags);
        assert_int_equal(fr->f.length, e[i].length);
        if (e[i].type == LC_SPDY_SYN_STREAM) {
            assert_int_equal(fr->f.assoc_id, 0);
            assert_int_equal(fr->f.priority, 0);
        }
        size_t np = 0;
        while (e[i].hdr[2 * np] != NULL) {
            assert_header(fr, e[i].hdr[2 * np], e[i].hdr[2 * np + 1]);
            np++;
        }
        assert_int_equal(fr->n_headers, np);
        if (e[i].type == LC_SPDY_DATA) {
            HX(want, e[i].data ? e[i].data : "");
            assert_bytes(fr->data, fr->data_len, want, want_n);
        }
    }
}

/* Runs a vector whole, split at every position, and one byte at a time. */
static void check_vector(const char *file, size_t expect_len, const exp_frame *e, size_t ne)
{
    size_t n;
    uint8_t *buf = load_vector(file, &n);
    assert_int_equal(n, expect_len);

    lc_spdy_decoder d;
    rec *r = rec_new();
    lc__spdy_decoder_init(&d, NULL);
    assert_int_equal(feed(&d, r, buf, n), 0);
    assert_true(lc__spdy_decoder_idle(&d));
    check_record(r, e, ne);
    /* fed whole, every DATA frame is one fragment: a view, never a copy */
    size_t ndata = 0;
    for (size_t i = 0; i < ne; i++)
        ndata += e[i].type == LC_SPDY_DATA;
    assert_int_equal(r->fragments, ndata);
    lc__spdy_decoder_free(&d);
    free(r);

    for (size_t cut = 0; cut <= n; cut++) {
        r = rec_new();
        lc__spdy_decoder_init(&d, NULL);
        assert_int_equal(feed(&d, r, buf, cut), 0);
        assert_int_equal(feed(&d, r, buf + cut, n - cut), 0);
        assert_true(lc__spdy_decoder_idle(&d));
        check_record(r, e, ne);
        lc__spdy_decoder_free(&d);
        free(r);
    }

    r = rec_new();
    lc__spdy_decoder_init(&d, NULL);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(feed(&d, r, buf + i, 1), 0);
    assert_true(lc__spdy_decoder_idle(&d));
    check_record(r, e, ne);
    lc__spdy_decoder_free(&d);
    free(r);
    free(buf);
}

static void test_vector_go_echo_client_to_server(void **state)
{
    LC_TEST_DEADLINE(10);
    size_t n;
    uint8_t *buf = load_vector("go-echo.client-to-server.bin", &n);
    /* the first header block opens the stream with the dictionary's id */
    HX(zh, "78 f9 e3 c6 a7 c2");
    assert_memory_equal(buf + 18, zh, zh_n);
    free(buf);

    static const exp_frame e[] = {
        {LC_SPDY_SYN_STREAM, 1, 0, 42, {"libchan-ref", "2", NULL}, NULL},
        {LC_SPDY_SYN_STREAM, 3, 0, 34, {"libchan-ref", "3", "libchan-parent-ref", "2", NULL}, NULL},
        {LC_SPDY_SYN_STREAM, 5, 0, 23, {"libchan-parent-ref", "2", "libchan-ref", "4", NULL}, NULL},
        {LC_SPDY_DATA, 1, 0, 42, {NULL},
         "84 a5 'Value' 2a a4 'Data' a5 'hello' a3 'Ret' d6 04 00 00 00 03"
         " a6 'Stream' d6 01 00 00 00 04"},
        {LC_SPDY_DATA, 5, 0, 12, {NULL}, "'stream-bytes'"},
        {LC_SPDY_DATA, 1, LC_SPDY_FLAG_FIN, 0, {NULL}, ""},
    };
    check_vector("go-echo.client-to-server.bin", 201, e, sizeof e / sizeof e[0]);
}

static void test_vector_go_echo_server_to_client(void **state)
{
    LC_TEST_DEADLINE(10);
    static const exp_frame e[] = {
        {LC_SPDY_SYN_REPLY, 1, 0, 30, {":status", "200", NULL}, NULL},
        {LC_SPDY_SYN_REPLY, 5, 0, 12, {":status", "200", NULL}, NULL},
        {LC_SPDY_SYN_REPLY, 3, 0, 12, {":status", "200", NULL}, NULL},
        {LC_SPDY_DATA, 3, 0, 18, {NULL}, "82 a4 'Echo' 2a a4 'Data' a5 'hello'"},
        {LC_SPDY_DATA, 5, 0, 12, {NULL}, "'stream-bytes'"},
        {LC_SPDY_DATA, 1, LC_SPDY_FLAG_FIN, 0, {NULL}, ""},
    };
    check_vector("go-echo.server-to-client.bin", 132, e, sizeof e / sizeof e[0]);
}

static void test_vector_go_oneway(void **state)
{
    LC_TEST_DEADLINE(10);
    static const exp_frame c2s[] = {
        {LC_SPDY_SYN_STREAM, 1, 0, 42, {"libchan-ref", "2", NULL}, NULL},
        {LC_SPDY_DATA, 1, 0, 8, {NULL}, "81 a5 'Value' 00"},
        {LC_SPDY_DATA, 1, 0, 8, {NULL}, "81 a5 'Value' 01"},
        {LC_SPDY_DATA, 1, 0, 8, {NULL}, "81 a5 'Value' 02"},
        {LC_SPDY_DATA, 1, LC_SPDY_FLAG_FIN, 0, {NULL}, ""},
    };
    check_vector("go-oneway.client-to-server.bin", 106, c2s, sizeof c2s / sizeof c2s[0]);
    static const exp_frame s2c[] = {
        {LC_SPDY_SYN_REPLY, 1, 0, 30, {":status", "200", NULL}, NULL},
        {LC_SPDY_DATA, 1, LC_SPDY_FLAG_FIN, 0, {NULL}, ""},
    };
    check_vector("go-oneway.server-to-client.bin", 46, s2c, sizeof s2c / sizeof s2c[0]);
}

/* Our encoder reproduces the Go session's frames (the header blocks differ
 * in bytes, not in content); our decoder reads them as it reads Go's. */
static void test_encoder_speaks_like_go(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_spdy_deflater z;
    lc__spdy_deflater_init(&z, Z_DEFAULT_COMPRESSION);
    lc_buf b;
    lc__buf_init(&b);
    lc_spdy_header h1[] = {{"libchan-ref", 11, "2", 1}};
    assert_int_equal(lc__spdy_put_syn_stream(&b, &z, 1, 0, 0, 0, 0, h1, 1), 0);
    for (int i = 0; i < 3; i++) {
        uint8_t m[8] = {0x81, 0xa5, 'V', 'a', 'l', 'u', 'e', (uint8_t)i};
        assert_int_equal(lc__spdy_put_data(&b, 1, 0, m, 8), 0);
    }
    assert_int_equal(lc__spdy_put_data(&b, 1, LC_SPDY_FLAG_FIN, NULL, 0), 0);

    size_t n;
    uint8_t *go = load_vector("go-oneway.client-to-server.bin", &n);
    /* everything after the SYN_STREAM is byte-identical */
    size_t ours_syn = 8 + ((size_t)b.data[6] << 8 | b.data[7]);
    assert_bytes(b.data + ours_syn, b.len - ours_syn, go + 50, n - 50);
    /* and the SYN_STREAM has the same header and fixed part */
    assert_memory_equal(b.data, go, 5);
    assert_memory_equal(b.data + 8, go + 8, 10);
    free(go);

    rec *r = decode_all(b.data, b.len, NULL);
    assert_int_equal(r->n, 5);
    assert_header(&r->fr[0], "libchan-ref", "2");
    free(r);
    lc__buf_free(&b);
    lc__spdy_deflater_free(&z);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, lc_test_setup, lc_test_teardown)
    const struct CMUnitTest tests[] = {
        T(test_dictionary_is_spdy3s),
        T(test_encode_data),
        T(test_encode_data_end_over_max_length),
        T(test_encode_fixed_control_frames),
        T(test_encode_header_frames),
        T(test_upper_case_names_at_every_position),
        T(test_level0_matches_zlib),
        T(test_encode_header_frame_errors),
        T(test_decode_data_frames),
        T(test_decode_fixed_control_frames),
        T(test_decode_header_frames),
        T(test_decode_unknown_types_are_skipped),
        T(test_decode_control_frame_split_is_gathered),
        T(test_decode_bad_version),
        T(test_decode_bad_lengths_per_type),
        T(test_decode_stream_id_zero),
        T(test_decode_oversize_frames),
        T(test_decode_header_block_bomb),
        T(test_decode_corrupt_zlib),
        T(test_decode_bad_header_block_structure),
        T(test_decode_too_many_pairs),
        T(test_header_errors_are_sticky),
        T(test_inflate_stored_then_compressed),
        T(test_inflate_checks_what_zlib_checks),
        T(test_roundtrip_stateful_across_frames),
        T(test_roundtrip_many_pairs_and_levels),
        T(test_strerror_names_every_code),
        T(test_vector_go_echo_client_to_server),
        T(test_vector_go_echo_server_to_client),
        T(test_vector_go_oneway),
        T(test_encoder_speaks_like_go),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_codec.c - the msgpack codec of src/codec: exact bytes of every wire
 * form at its boundaries, round trips of every type, the Go wire vectors,
 * every decode error with its own code, the streaming decoder under every
 * split of its input, attachment hooks, and the opaque body ext 7 (ours).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libchan.h"
#include "codec/codec.h"
#include "msg/msg_internal.h"
#include "testutil.h"
#include "hexbytes.h"

/* ---- helpers ------------------------------------------------------------- */


/* Encodes without hooks into a fresh buffer (caller frees). */
static lc_buf enc(const lc_msg *m)
{
    lc_buf b;
    lc__buf_init(&b);
    assert_int_equal(lc__encode(m, &b, NULL), 0);
    return b;
}

static lc_msg *dec(const uint8_t *p, size_t n)
{
    lc_msg *m = NULL;
    int rc = lc__decode(p, n, NULL, NULL, &m, NULL);
    if (rc != 0)
        hx_dump("decode failed on", p, n);
    assert_int_equal(rc, 0);
    assert_non_null(m);
    return m;
}

static int dec_rc(const uint8_t *p, size_t n, const lc_limits *lim)
{
    lc_msg *m = (lc_msg *)0x1;
    int rc = lc__decode(p, n, lim, NULL, &m, NULL);
    if (rc == 0)
        lc_msg_free(m);
    else
        assert_null(m);
    return rc;
}

static bool value_equal(const lc_value *a, const lc_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case LC_NIL:    return true;
    case LC_BOOL:   return a->u.b == b->u.b;
    case LC_INT:    return a->u.i == b->u.i;
    case LC_UINT:   return a->u.u == b->u.u;
    case LC_DOUBLE: return memcmp(&a->u.d, &b->u.d, sizeof a->u.d) == 0;
    case LC_STRING:
    case LC_BINARY:
        return a->len == b->len && memcmp(a->u.bytes, b->u.bytes, a->len) == 0 &&
               b->u.bytes[b->len] == '\0';
    case LC_TIME:   return a->u.t.sec == b->u.t.sec && a->u.t.nsec == b->u.t.nsec;
    case LC_ARRAY:
    case LC_MAP: {
        if (a->len != b->len)
            return false;
        uint32_t n = a->type == LC_MAP ? 2 * a->len : a->len;
        for (uint32_t i = 0; i < n; i++)
            if (!value_equal(a->u.items[i], b->u.items[i]))
                return false;
        return true;
    }
    default:
        if (a->type == (uint8_t)LC__REF)
            return a->mode == b->mode && a->u.ref == b->u.ref;
        return a->mode == b->mode;
    }
}

static lc_value *ref_val(lc_msg *m, uint8_t ext, uint64_t ref)
{
    lc_value *v = lc__value_alloc(m, LC__REF);
    assert_non_null(v);
    v->mode = ext;
    v->u.ref = ref;
    return v;
}

/* Single-value message -> exact bytes; then decode, compare, re-encode. */
static void check_form(lc_msg *m, const uint8_t *exp, size_t en)
{
    lc_buf b = enc(m);
    assert_bytes(b.data, b.len, exp, en);
    lc_msg *d = dec(b.data, b.len);
    assert_true(value_equal(lc_msg_root(m), lc_msg_root(d)));
    lc_buf b2 = enc(d);
    assert_bytes(b2.data, b2.len, exp, en);
    lc__buf_free(&b);
    lc__buf_free(&b2);
    lc_msg_free(d);
    lc_msg_free(m);
}

static void check_text(lc_msg *m, const char *text)
{
    HX(exp, text);
    check_form(m, exp, exp_n);
}

static lc_msg *with_root(lc_msg *m, lc_value *v)
{
    assert_non_null(v);
    assert_int_equal(lc_msg_set_root(m, v), 0);
    return m;
}

static lc_msg *int_msg(int64_t i)
{
    lc_msg *m = lc_msg_new();
    return with_root(m, lc_new_int(m, i));
}

/* A string/binary of n bytes 'x' with the given header text. */
static void check_bytes_form(lc_type t, size_t n, const char *hdr)
{
    uint8_t h[16];
    size_t hn = hx(hdr, h, sizeof h);
    uint8_t *exp = malloc(hn + n);
    char *s = malloc(n + 1);
    assert_non_null(exp);
    assert_non_null(s);
    memset(s, 'x', n);
    s[n] = 0;
    memcpy(exp, h, hn);
    memset(exp + hn, 'x', n);
    lc_msg *m = lc_msg_new();
    with_root(m, t == LC_STRING ? lc_new_stringn(m, s, n) : lc_new_binary(m, s, n));
    check_form(m, exp, hn + n);
    free(exp);
    free(s);
}

/* An array (or map) of n nil elements (pairs of nil, nil) with the header. */
static void check_container_form(lc_type t, size_t n, const char *hdr)
{
    uint8_t h[16];
    size_t hn = hx(hdr, h, sizeof h);
    size_t body = t == LC_MAP ? 2 * n : n;
    uint8_t *exp = malloc(hn + body);
    assert_non_null(exp);
    memcpy(exp, h, hn);
    memset(exp + hn, 0xc0, body);
    lc_msg *m = lc_msg_new();
    lc_value *c = t == LC_MAP ? lc_new_map(m) : lc_new_array(m);
    for (size_t i = 0; i < n; i++) {
        if (t == LC_MAP)
            assert_int_equal(lc_map_set_value(m, c, lc_new_nil(m), lc_new_nil(m)), 0);
        else
            assert_int_equal(lc_array_append(m, c, lc_new_nil(m)), 0);
    }
    with_root(m, c);
    check_form(m, exp, hn + body);
    free(exp);
}

/* A message using every type, nested, with non-string keys. */
static lc_msg *complex_msg(void)
{
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_map(m);
    assert_int_equal(lc_map_set(m, root, "nil", lc_new_nil(m)), 0);
    assert_int_equal(lc_map_set(m, root, "t", lc_new_bool(m, true)), 0);
    assert_int_equal(lc_map_set(m, root, "f", lc_new_bool(m, false)), 0);
    assert_int_equal(lc_map_set(m, root, "i", lc_new_int(m, -70000)), 0);
    assert_int_equal(lc_map_set(m, root, "big", lc_new_int(m, INT64_MAX)), 0);
    assert_int_equal(lc_map_set(m, root, "u", lc_new_uint(m, UINT64_MAX)), 0);
    assert_int_equal(lc_map_set(m, root, "d", lc_new_double(m, -0.25)), 0);
    assert_int_equal(lc_map_set(m, root, "s", lc_new_string(m, "héllo")), 0);
    assert_int_equal(lc_map_set(m, root, "b", lc_new_binary(m, "\0\1\2\xff", 4)), 0);
    assert_int_equal(lc_map_set(m, root, "tm", lc_new_time(m, -1234567890123LL, 999999999u)), 0);
    lc_value *arr = lc_new_array(m);
    for (int i = 0; i < 20; i++)
        assert_int_equal(lc_array_append(m, arr, lc_new_int(m, i * 1000 - 5000)), 0);
    lc_value *inner = lc_new_array(m);
    assert_int_equal(lc_array_append(m, inner, lc_new_array(m)), 0);
    assert_int_equal(lc_array_append(m, inner, lc_new_map(m)), 0);
    assert_int_equal(lc_array_append(m, arr, inner), 0);
    assert_int_equal(lc_map_set(m, root, "arr", arr), 0);
    lc_value *km = lc_new_map(m);
    assert_int_equal(lc_map_set_value(m, km, lc_new_int(m, 7), lc_new_string(m, "seven")), 0);
    assert_int_equal(lc_map_set_value(m, km, lc_new_nil(m), lc_new_double(m, 1e300)), 0);
    lc_value *akey = lc_new_array(m);
    assert_int_equal(lc_array_append(m, akey, lc_new_bool(m, true)), 0);
    assert_int_equal(lc_map_set_value(m, km, akey, lc_new_binary(m, "", 0)), 0);
    assert_int_equal(lc_map_set(m, root, "keys", km), 0);
    assert_int_equal(lc_map_set(m, root, "ref", ref_val(m, LC_EXT_SENDER, 3)), 0);
    assert_int_equal(lc_map_set(m, root, "ref8", ref_val(m, LC_EXT_READ, 0x123456789ULL)), 0);
    return with_root(m, root);
}

/* The DATA payloads of /work/shared/vectors (see its README). */
static const char GO_ECHO_REQ[] =
    "84 a5 'Value' 2a a4 'Data' a5 'hello' a3 'Ret' d6 04 00 00 00 03 "
    "a6 'Stream' d6 01 00 00 00 04";
static const char GO_ECHO_REPLY[] = "82 a4 'Echo' 2a a4 'Data' a5 'hello'";
static const char GO_ONEWAY[3][32] = { "81 a5 'Value' 00", "81 a5 'Value' 01", "81 a5 'Value' 02" };

/* ---- encoding: every form at its boundaries ------------------------------ */

static void test_encode_scalars_exact_bytes(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m;
    m = lc_msg_new();
    check_text(with_root(m, lc_new_nil(m)), "c0");
    m = lc_msg_new(); /* a new message's root is nil */
    check_text(m, "c0");
    m = lc_msg_new();
    check_text(with_root(m, lc_new_bool(m, false)), "c2");
    m = lc_msg_new();
    check_text(with_root(m, lc_new_bool(m, true)), "c3");
    m = lc_msg_new();
    check_text(with_root(m, lc_new_double(m, 1.5)), "cb 3f f8 00 00 00 00 00 00");
    m = lc_msg_new();
    check_text(with_root(m, lc_new_double(m, -2.0)), "cb c0 00 00 00 00 00 00 00");
}

static void test_encode_integers_smallest_form(void **state)
{
    LC_TEST_DEADLINE(10);
    check_text(int_msg(0), "00");
    check_text(int_msg(42), "2a"); /* what Go sends for 42 */
    check_text(int_msg(127), "7f");
    check_text(int_msg(128), "cc 80");
    check_text(int_msg(255), "cc ff");
    check_text(int_msg(256), "cd 01 00");
    check_text(int_msg(65535), "cd ff ff");
    check_text(int_msg(65536), "ce 00 01 00 00");
    check_text(int_msg(4294967295LL), "ce ff ff ff ff");
    check_text(int_msg(4294967296LL), "cf 00 00 00 01 00 00 00 00");
    check_text(int_msg(INT64_MAX), "cf 7f ff ff ff ff ff ff ff");
    lc_msg *m = lc_msg_new();
    check_text(with_root(m, lc_new_uint(m, (uint64_t)INT64_MAX + 1)), "cf 80 00 00 00 00 00 00 00");
    m = lc_msg_new();
    check_text(with_root(m, lc_new_uint(m, UINT64_MAX)), "cf ff ff ff ff ff ff ff ff");
    check_text(int_msg(-1), "ff");
    check_text(int_msg(-32), "e0");
    check_text(int_msg(-33), "d0 df");
    check_text(int_msg(-128), "d0 80");
    check_text(int_msg(-129), "d1 ff 7f");
    check_text(int_msg(-32768), "d1 80 00");
    check_text(int_msg(-32769), "d2 ff ff 7f ff");
    check_text(int_msg(INT32_MIN), "d2 80 00 00 00");
    check_text(int_msg((int64_t)INT32_MIN - 1), "d3 ff ff ff ff 7f ff ff ff");
    check_text(int_msg(INT64_MIN), "d3 80 00 00 00 00 00 00 00");
}

static void test_encode_str_bin_boundaries(void **state)
{
    LC_TEST_DEADLINE(10);
    check_bytes_form(LC_STRING, 0, "a0");
    check_bytes_form(LC_STRING, 31, "bf");
    check_bytes_form(LC_STRING, 32, "d9 20");
    check_bytes_form(LC_STRING, 255, "d9 ff");
    check_bytes_form(LC_STRING, 256, "da 01 00");
    check_bytes_form(LC_STRING, 65535, "da ff ff");
    check_bytes_form(LC_STRING, 65536, "db 00 01 00 00");
    check_bytes_form(LC_BINARY, 0, "c4 00");
    check_bytes_form(LC_BINARY, 255, "c4 ff");
    check_bytes_form(LC_BINARY, 256, "c5 01 00");
    check_bytes_form(LC_BINARY, 65535, "c5 ff ff");
    check_bytes_form(LC_BINARY, 65536, "c6 00 01 00 00");
}

static void test_encode_container_boundaries(void **state)
{
    LC_TEST_DEADLINE(10);
    check_container_form(LC_ARRAY, 0, "90");
    check_container_form(LC_ARRAY, 15, "9f");
    check_container_form(LC_ARRAY, 16, "dc 00 10");
    check_container_form(LC_ARRAY, 65535, "dc ff ff");
    check_container_form(LC_ARRAY, 65536, "dd 00 01 00 00");
    check_container_form(LC_MAP, 0, "80");
    check_container_form(LC_MAP, 15, "8f");
    check_container_form(LC_MAP, 16, "de 00 10");
    check_container_form(LC_MAP, 65536, "df 00 01 00 00");
}

static void test_encode_time_ext6(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_msg_new();
    check_text(with_root(m, lc_new_time(m, 1, 2)),
               "c7 0c 06 00 00 00 00 00 00 00 01 00 00 00 02");
    m = lc_msg_new();
    check_text(with_root(m, lc_new_time(m, -1, 999999999)),
               "c7 0c 06 ff ff ff ff ff ff ff ff 3b 9a c9 ff");
    m = lc_msg_new();
    check_text(with_root(m, lc_new_time(m, 1700000000, 0)),
               "c7 0c 06 00 00 00 00 65 53 f1 00 00 00 00 00");
}

static void test_encode_refs_4_and_8_bytes(void **state)
{
    LC_TEST_DEADLINE(10);
    for (uint8_t t = 1; t <= 5; t++) {
        char text[64];
        lc_msg *m = lc_msg_new();
        snprintf(text, sizeof text, "d6 %02x 00 00 00 03", t);
        check_text(with_root(m, ref_val(m, t, 3)), text);
        m = lc_msg_new();
        snprintf(text, sizeof text, "d6 %02x ff ff ff ff", t);
        check_text(with_root(m, ref_val(m, t, 0xffffffffu)), text);
        m = lc_msg_new();
        snprintf(text, sizeof text, "d7 %02x 00 00 00 01 00 00 00 00", t);
        check_text(with_root(m, ref_val(m, t, 0x100000000ULL)), text);
        m = lc_msg_new();
        snprintf(text, sizeof text, "d7 %02x ff ff ff ff ff ff ff ff", t);
        check_text(with_root(m, ref_val(m, t, UINT64_MAX)), text);
    }
}

static void test_encode_nested_map_exact(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_map(m);
    lc_value *a = lc_new_array(m);
    assert_int_equal(lc_array_append(m, a, lc_new_int(m, 1)), 0);
    assert_int_equal(lc_array_append(m, a, lc_new_string(m, "x")), 0);
    assert_int_equal(lc_map_set(m, root, "Cmd", lc_new_string(m, "ls")), 0);
    assert_int_equal(lc_map_set(m, root, "Args", a), 0);
    assert_int_equal(lc_map_set_value(m, root, lc_new_int(m, -5), lc_new_nil(m)), 0);
    check_text(with_root(m, root), "83 a3 'Cmd' a2 'ls' a4 'Args' 92 01 a1 'x' fb c0");
}

static void test_roundtrip_every_type(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = complex_msg();
    lc_buf b = enc(m);
    lc_msg *d = dec(b.data, b.len);
    assert_true(value_equal(lc_msg_root(m), lc_msg_root(d)));
    lc_value *r = lc_msg_root(d);
    assert_int_equal(lc_value_type(lc_map_get(r, "u")), LC_UINT);
    assert_int_equal(lc_value_type(lc_map_get(r, "big")), LC_INT);
    assert_string_equal(lc_value_string(lc_map_get(r, "s"), NULL), "héllo");
    int64_t sec;
    uint32_t ns;
    assert_true(lc_value_time(lc_map_get(r, "tm"), &sec, &ns));
    assert_int_equal(sec, -1234567890123LL);
    assert_int_equal(ns, 999999999u);
    lc_value *ref = lc_map_get(r, "ref8");
    assert_int_equal(ref->type, (uint8_t)LC__REF);
    assert_int_equal(ref->mode, LC_EXT_READ);
    assert_true(ref->u.ref == 0x123456789ULL);
    /* decoded values are placed and owned by the new message */
    assert_true(r->flags & LC_VF_PLACED);
    assert_ptr_equal(r->owner, d);
    lc_buf b2 = enc(d);
    assert_bytes(b2.data, b2.len, b.data, b.len);
    lc__buf_free(&b);
    lc__buf_free(&b2);
    lc_msg_free(d);
    lc_msg_free(m);
}

static void test_encode_appends_and_restores_on_failure(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_buf b;
    lc__buf_init(&b);
    lc_msg *m = int_msg(1);
    assert_int_equal(lc__encode(m, &b, NULL), 0);
    assert_int_equal(lc__encode(m, &b, NULL), 0);
    assert_int_equal(b.len, 2);
    /* an attachment without hooks: LC_ENOTSUP and nothing partial left */
    lc_msg *a = lc_msg_new();
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    close(fds[1]);
    lc_value *arr = lc_new_array(a);
    assert_int_equal(lc_array_append(a, arr, lc_new_int(a, 5)), 0);
    assert_int_equal(lc_array_append(a, arr, lc_new_stream(a, fds[0], LC_STREAM_READ)), 0);
    with_root(a, arr);
    assert_int_equal(lc__encode(a, &b, NULL), LC_ENOTSUP);
    assert_int_equal(b.len, 2);
    uint8_t *out = (uint8_t *)0x1;
    size_t len = 99;
    assert_int_equal(lc_msgpack_encode(a, &out, &len), LC_ENOTSUP);
    assert_null(out);
    assert_int_equal(len, 0);
    lc__buf_free(&b);
    lc_msg_free(a); /* closes the fd */
    lc_msg_free(m);
}

static void test_encode_cycle_fails_with_edepth(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_msg_new();
    lc_value *a = lc_new_array(m), *b = lc_new_array(m);
    assert_int_equal(lc_array_append(m, a, b), 0);
    if (lc_array_append(m, b, a) != 0) { /* the builder refused the cycle: fine */
        lc_msg_free(m);
        return;
    }
    m->root = a;
    lc_buf out;
    lc__buf_init(&out);
    assert_int_equal(lc__encode(m, &out, NULL), LC_EDEPTH);
    assert_int_equal(out.len, 0);
    lc__buf_free(&out);
    lc_msg_free(m);
}

/* ---- decoding ------------------------------------------------------------ */

static void test_decode_noncanonical_forms(void **state)
{
    LC_TEST_DEADLINE(10);
    struct { const char *in; const char *canonical; } cases[] = {
        { "cc 05", "05" },                       /* uint8 small -> int */
        { "d0 05", "05" },                       /* int8 positive */
        { "d3 00 00 00 00 00 00 00 2a", "2a" },  /* int64 small */
        { "cf 00 00 00 00 00 00 00 80", "cc 80" },
        { "d1 ff ff", "ff" },
        { "ca 3f c0 00 00", "cb 3f f8 00 00 00 00 00 00" }, /* float32 1.5 -> double */
        { "d9 01 'a'", "a1 'a'" },               /* str8 for a short string */
        { "db 00 00 00 00", "a0" },
        { "dc 00 01 c0", "91 c0" },
        { "df 00 00 00 01 01 02", "81 01 02" },
        { "c7 04 04 00 00 00 09", "d6 04 00 00 00 09" }, /* ext8 carrying a 4-byte ref */
        { "d7 05 00 00 00 00 00 00 00 07", "d6 05 00 00 00 07" }, /* 8-byte ref, small id */
        { "c8 00 0c 06 00 00 00 00 00 00 00 01 00 00 00 02",
          "c7 0c 06 00 00 00 00 00 00 00 01 00 00 00 02" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        HX(in, cases[i].in);
        HX(canon, cases[i].canonical);
        lc_msg *m = dec(in, in_n);
        lc_buf b = enc(m);
        assert_bytes(b.data, b.len, canon, canon_n);
        lc__buf_free(&b);
        lc_msg_free(m);
    }
    HX(f32, "ca 3f c0 00 00");
    lc_msg *m = dec(f32, f32_n);
    assert_int_equal(lc_value_type(lc_msg_root(m)), LC_DOUBLE);
    assert_true(lc_value_double(lc_msg_root(m)) == 1.5);
    lc_msg_free(m);
}

static void check_go_echo_request(lc_msg *m)
{
    lc_value *r = lc_msg_root(m);
    assert_int_equal(lc_value_type(r), LC_MAP);
    assert_int_equal(lc_value_len(r), 4);
    assert_int_equal(lc_value_int(lc_map_get(r, "Value")), 42);
    assert_string_equal(lc_value_string(lc_map_get(r, "Data"), NULL), "hello");
    lc_value *ret = lc_map_get(r, "Ret"), *st = lc_map_get(r, "Stream");
    assert_int_equal(ret->type, (uint8_t)LC__REF);
    assert_int_equal(ret->mode, LC_EXT_SENDER);
    assert_int_equal(ret->u.ref, 3);
    assert_int_equal(st->type, (uint8_t)LC__REF);
    assert_int_equal(st->mode, LC_EXT_DUPLEX);
    assert_int_equal(st->u.ref, 4);
}

static void test_decode_go_vectors_and_reencode_exact(void **state)
{
    LC_TEST_DEADLINE(10);
    HX(req, GO_ECHO_REQ);
    assert_int_equal(req_n, 42); /* DATA len=42 in the capture */
    lc_msg *m = dec(req, req_n);
    check_go_echo_request(m);
    lc_buf b = enc(m);
    assert_bytes(b.data, b.len, req, req_n);
    lc__buf_free(&b);
    lc_msg_free(m);
    /* without a session, the public decoder refuses the refs */
    assert_int_equal(lc_msgpack_decode(req, req_n, NULL, &m), LC_ENOTSUP);
    assert_null(m);

    HX(rep, GO_ECHO_REPLY);
    assert_int_equal(rep_n, 18);
    assert_int_equal(lc_msgpack_decode(rep, rep_n, NULL, &m), 0);
    assert_int_equal(lc_value_int(lc_map_get(lc_msg_root(m), "Echo")), 42);
    assert_string_equal(lc_value_string(lc_map_get(lc_msg_root(m), "Data"), NULL), "hello");
    uint8_t *out;
    size_t len;
    assert_int_equal(lc_msgpack_encode(m, &out, &len), 0);
    assert_bytes(out, len, rep, rep_n);
    free(out);
    lc_msg_free(m);

    for (int i = 0; i < 3; i++) {
        HX(ow, GO_ONEWAY[i]);
        assert_int_equal(ow_n, 8);
        assert_int_equal(lc_msgpack_decode(ow, ow_n, NULL, &m), 0);
        assert_int_equal(lc_value_type(lc_map_get(lc_msg_root(m), "Value")), LC_INT);
        assert_int_equal(lc_value_int(lc_map_get(lc_msg_root(m), "Value")), i);
        assert_int_equal(lc_msgpack_encode(m, &out, &len), 0);
        assert_bytes(out, len, ow, ow_n);
        free(out);
        lc_msg_free(m);
    }
}

/* Reads a captured direction and returns the concatenated payloads of its
 * non-empty DATA frames (SPDY/3: control frames have the top bit set; every
 * frame has an 8-byte header whose last 3 bytes are the length). */
static uint8_t *read_data_payloads(const char *file, size_t *n)
{
#ifdef LC_VECTORS_DIR
    char path[512];
    snprintf(path, sizeof path, "%s/%s", LC_VECTORS_DIR, file);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    uint8_t raw[8192];
    size_t rn = fread(raw, 1, sizeof raw, f);
    fclose(f);
    uint8_t *out = malloc(rn);
    assert_non_null(out);
    size_t on = 0, off = 0;
    while (off + 8 <= rn) {
        size_t flen = (size_t)raw[off + 5] << 16 | (size_t)raw[off + 6] << 8 | raw[off + 7];
        assert_true(off + 8 + flen <= rn);
        if (!(raw[off] & 0x80)) {
            memcpy(out + on, raw + off + 8, flen);
            on += flen;
        }
        off += 8 + flen;
    }
    assert_int_equal(off, rn);
    *n = on;
    return out;
#else
    (void)file;
    (void)n;
    return NULL;
#endif
}

static void test_decode_vector_files_if_present(void **state)
{
    LC_TEST_DEADLINE(10);
    size_t n = 0;
    uint8_t *c2s = read_data_payloads("go-echo.client-to-server.bin", &n);
    if (c2s == NULL)
        skip(); /* only in a checkout next to ../shared */
    /* request (42 bytes) then the 12 raw bytes of the byte stream (stream 5) */
    HX(req, GO_ECHO_REQ);
    assert_true(n == req_n + 12);
    assert_memory_equal(c2s, req, req_n);
    assert_memory_equal(c2s + req_n, "stream-bytes", 12);
    free(c2s);

    uint8_t *s2c = read_data_payloads("go-echo.server-to-client.bin", &n);
    assert_non_null(s2c);
    HX(rep, GO_ECHO_REPLY);
    assert_true(n == rep_n + 12);
    assert_memory_equal(s2c, rep, rep_n);
    free(s2c);

    /* go-oneway: the payloads are one continuous msgpack stream */
    uint8_t *ow = read_data_payloads("go-oneway.client-to-server.bin", &n);
    assert_non_null(ow);
    assert_int_equal(n, 24);
    lc_stream_decoder d;
    lc__sd_init(&d, NULL, NULL);
    assert_int_equal(lc__sd_feed(&d, ow, n), 0);
    for (int i = 0; i < 3; i++) {
        lc_msg *m;
        assert_int_equal(lc__sd_next(&d, &m), 0);
        assert_int_equal(lc_value_int(lc_map_get(lc_msg_root(m), "Value")), i);
        lc_buf b = enc(m);
        assert_bytes(b.data, b.len, ow + 8 * i, 8);
        lc__buf_free(&b);
        lc_msg_free(m);
    }
    lc_msg *m;
    assert_int_equal(lc__sd_next(&d, &m), LC__SD_AGAIN);
    assert_int_equal(lc__sd_finish(&d), 0);
    lc__sd_free(&d);
    free(ow);
}

/* ---- decode errors ------------------------------------------------------- */

/* Inputs that are wrong in one way, with the code each must give (also used
 * for the streaming decoder). */
static const struct bad_case {
    const char *in;
    int code;
} BAD[] = {
    { "c1", LC_EBADMSG },
    { "93 01 c1 02", LC_EBADMSG },
    { "81 c1 01", LC_EBADMSG },
    { "d5 04 00 01", LC_EBADMSG },                    /* ref of 2 bytes */
    { "c7 03 01 00 00 01", LC_EBADMSG },              /* ref of 3 bytes */
    { "d8 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01", LC_EBADMSG }, /* 16 */
    { "d7 06 00 00 00 00 00 00 00 01", LC_EBADMSG },  /* time of 8 bytes */
    { "d6 08 00 00 00 01", LC_EBADMSG },              /* unknown ext type */
    { "d6 00 00 00 00 01", LC_EBADMSG },
    { "d6 ff 00 00 00 01", LC_EBADMSG },              /* msgpack timestamp (-1) */
    { "91 d4 07 00", LC_EBADMSG },                    /* ext 7 below the top */
    { "c7 0c 06 00 00 00 00 00 00 00 01 3b 9a ca 00", LC_EBADMSG }, /* nsec 1e9 */
    { "92 c7 0c 06 00 00 00 00 00 00 00 01 ff ff ff ff 01", LC_EBADMSG },
    { "db ff ff ff ff", LC_ETOOBIG },                 /* str32 of 4 GiB */
    { "c6 ff ff ff ff", LC_ETOOBIG },                 /* bin32 of 4 GiB */
    { "c9 ff ff ff ff 07", LC_ETOOBIG },              /* ext32 of 4 GiB */
    { "dd ff ff ff ff", LC_ETOOBIG },                 /* array32 of 4G entries */
    { "df 00 10 00 01", LC_ETOOBIG },                 /* map of 1M+1 pairs */
    { "dd 00 10 00 01", LC_ETOOBIG },                 /* array of 1M+1 */
    { "92 01 db 10 00 00 00", LC_ETOOBIG },           /* 256 MiB string inside */
    { "dd 00 10 00 00", LC_ETRUNCATED },              /* 1M entries: allowed, absent */
    { "93 01 02", LC_ETRUNCATED },
    { "a5 'hell'", LC_ETRUNCATED },
    { "cd 01", LC_ETRUNCATED },
    { "", LC_ETRUNCATED },
};

static void test_decode_each_error_has_its_code(void **state)
{
    LC_TEST_DEADLINE(10);
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        HX(in, BAD[i].in);
        int rc = dec_rc(in, in_n, NULL);
        if (rc != BAD[i].code)
            fail_msg("case %zu '%s': got %d (%s), expected %d", i, BAD[i].in, rc,
                     lc_strerror(rc), BAD[i].code);
    }
    /* the nanosecond limit is exclusive */
    HX(ok, "c7 0c 06 00 00 00 00 00 00 00 01 3b 9a c9 ff");
    assert_int_equal(dec_rc(ok, ok_n, NULL), 0);
}

static void test_decode_truncated_at_every_byte(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = complex_msg();
    lc_buf b = enc(m);
    for (size_t cut = 0; cut < b.len; cut++) {
        int rc = dec_rc(b.data, cut, NULL);
        if (rc != LC_ETRUNCATED)
            fail_msg("cut at %zu of %zu: got %d", cut, b.len, rc);
    }
    assert_int_equal(dec_rc(b.data, b.len, NULL), 0);
    lc__buf_free(&b);
    lc_msg_free(m);
}

static void test_decode_trailing_bytes(void **state)
{
    LC_TEST_DEADLINE(10);
    HX(in, "81 a5 'Value' 00 00");
    assert_int_equal(dec_rc(in, in_n, NULL), LC_ETRAILING);
    lc_msg *m = NULL;
    assert_int_equal(lc_msgpack_decode(in, in_n, NULL, &m), LC_ETRAILING);
    assert_null(m);
    /* with `consumed`, the first message is returned and measured */
    size_t used = 0;
    assert_int_equal(lc__decode(in, in_n, NULL, NULL, &m, &used), 0);
    assert_int_equal(used, in_n - 1);
    lc_msg_free(m);
    HX(two, "c0 c0");
    assert_int_equal(dec_rc(two, two_n, NULL), LC_ETRAILING);
}

static void test_decode_depth_limit(void **state)
{
    LC_TEST_DEADLINE(10);
    uint8_t in[200];
    /* 64 nested arrays: [[[...[]...]]] is allowed by default, 65 is not */
    for (int depth = 1; depth <= 70; depth++) {
        for (int i = 0; i < depth - 1; i++)
            in[i] = 0x91;
        in[depth - 1] = 0x90;
        int rc = dec_rc(in, (size_t)depth, NULL);
        assert_int_equal(rc, depth <= 64 ? 0 : LC_EDEPTH);
    }
    /* maps count too; a custom limit */
    lc_limits lim = { .max_depth = 3 };
    HX(ok, "81 01 81 02 91 03");
    assert_int_equal(dec_rc(ok, ok_n, &lim), 0);
    HX(deep, "81 01 81 02 91 91 03");
    assert_int_equal(dec_rc(deep, deep_n, &lim), LC_EDEPTH);
    HX(deepkey, "81 81 91 90 00 00");
    assert_int_equal(dec_rc(deepkey, deepkey_n, &lim), LC_EDEPTH);
    /* a very deep input with a raised limit: no recursion, no crash (the
     * limit is capped at 4096: test_decode_depth_limit_is_capped) */
    size_t n = 100000;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    memset(big, 0x91, n - 1);
    big[n - 1] = 0xc0;
    lc_limits hi = { .max_depth = 200000 };
    assert_int_equal(dec_rc(big, n, &hi), LC_EDEPTH);
    assert_int_equal(dec_rc(big, n, NULL), LC_EDEPTH);
    free(big);
}

/* A max_depth above 4096 means 4096, the depth the encoder and the session's
 * walks over references handle (a review helper: a message nested deeper
 * decoded, and a session delivered it with a reference unresolved inside;
 * test_reference_nested_past_the_depth_cap_is_refused in tests/net). Both
 * decoders: 4096 levels decode and encode back the same, 4097 are LC_EDEPTH. */
static void test_decode_depth_limit_is_capped(void **state)
{
    LC_TEST_DEADLINE(10);
    enum { CAP = 4096 };
    static uint8_t in[CAP + 2];
    const lc_limits limits[] = { { .max_depth = CAP + 1 }, { .max_depth = UINT32_MAX } };
    for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
        for (size_t depth = CAP; depth <= CAP + 1; depth++) {
            memset(in, 0x91, depth);
            in[depth] = 0x07;
            int want = depth <= CAP ? 0 : LC_EDEPTH;
            lc_msg *m = NULL;
            assert_int_equal(lc_msgpack_decode(in, depth + 1, &limits[k], &m), want);
            if (want == 0) {
                uint8_t *out;
                size_t len;
                assert_int_equal(lc_msgpack_encode(m, &out, &len), 0);
                assert_int_equal(len, depth + 1);
                assert_memory_equal(out, in, len);
                free(out);
                lc_msg_free(m);
            }
            lc_stream_decoder d;
            lc__sd_init(&d, &limits[k], NULL);
            assert_int_equal(lc__sd_feed(&d, in, depth + 1), 0);
            m = NULL;
            assert_int_equal(lc__sd_next(&d, &m), want);
            lc_msg_free(m);
            lc__sd_free(&d);
        }
    }
}

static void test_decode_size_limits(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_limits lim = { .max_message = 10 };
    /* a 10-byte message fits, 11 does not */
    HX(fits, "99 01 02 03 04 05 06 07 08 09");
    assert_int_equal(dec_rc(fits, fits_n, &lim), 0);
    HX(over, "9a 01 02 03 04 05 06 07 08 09 0a");
    assert_int_equal(dec_rc(over, over_n, &lim), LC_ETOOBIG);
    /* the header alone tells: no waiting for the bytes */
    HX(str, "d9 20");
    assert_int_equal(dec_rc(str, str_n, &lim), LC_ETOOBIG);
    HX(bin, "c4 09");
    assert_int_equal(dec_rc(bin, bin_n, &lim), LC_ETOOBIG);
    HX(bin_ok, "c4 08 00 00 00 00 00 00 00 00");
    assert_int_equal(dec_rc(bin_ok, bin_ok_n, &lim), 0);
    HX(arr, "dc 00 0a");
    assert_int_equal(dec_rc(arr, arr_n, &lim), LC_ETOOBIG);
    HX(map, "85");
    assert_int_equal(dec_rc(map, map_n, &lim), LC_ETOOBIG); /* 1 + 10 > 10 */
    /* element count limit */
    lc_limits el = { .max_elements = 3 };
    HX(a3, "93 01 02 03");
    assert_int_equal(dec_rc(a3, a3_n, &el), 0);
    HX(a4, "94 01 02 03 04");
    assert_int_equal(dec_rc(a4, a4_n, &el), LC_ETOOBIG);
    HX(m4, "84 01 01 02 02 03 03 04 04");
    assert_int_equal(dec_rc(m4, m4_n, &el), LC_ETOOBIG);
    /* the limit counts bytes of one message, not of the buffer */
    HX(tr, "91 01 00 00 00 00 00 00 00 00 00 00 00");
    assert_int_equal(dec_rc(tr, tr_n, &lim), LC_ETRAILING);
    /* defaults */
    lc_limits d;
    lc_limits_default(&d);
    assert_int_equal(d.max_depth, 64);
    assert_true(d.max_message == 64ull << 20);
    assert_int_equal(d.max_elements, 1u << 20);
}

/* ---- streaming decoder --------------------------------------------------- */

struct stream_fixture {
    lc_buf all;          /* the concatenated stream */
    size_t count;
    size_t off[16], len[16];
};

static void add_msg(struct stream_fixture *f, const uint8_t *p, size_t n)
{
    assert_true(f->count < 16);
    f->off[f->count] = f->all.len;
    f->len[f->count] = n;
    f->count++;
    assert_int_equal(lc__buf_append(&f->all, p, n), 0);
}

static void make_stream(struct stream_fixture *f)
{
    lc__buf_init(&f->all);
    f->count = 0;
    lc_msg *m = complex_msg();
    lc_buf b = enc(m);
    add_msg(f, b.data, b.len);
    lc__buf_free(&b);
    lc_msg_free(m);
    HX(req, GO_ECHO_REQ);
    add_msg(f, req, req_n);
    HX(rep, GO_ECHO_REPLY);
    add_msg(f, rep, rep_n);
    for (int i = 0; i < 3; i++) {
        HX(ow, GO_ONEWAY[i]);
        add_msg(f, ow, ow_n);
    }
    HX(scalars, "2a");
    add_msg(f, scalars, scalars_n);
    HX(e, "90");
    add_msg(f, e, e_n);
    HX(t, "c7 0c 06 00 00 00 00 00 00 00 01 00 00 00 02");
    add_msg(f, t, t_n);
    m = lc_msg_new();
    char s[300];
    memset(s, 'z', sizeof s);
    with_root(m, lc_new_stringn(m, s, sizeof s));
    b = enc(m);
    add_msg(f, b.data, b.len);
    lc__buf_free(&b);
    lc_msg_free(m);
}

/* Drains complete messages, checking each re-encodes to its bytes. */
static void drain(lc_stream_decoder *d, const struct stream_fixture *f, size_t *got)
{
    for (;;) {
        lc_msg *m = NULL;
        int rc = lc__sd_next(d, &m);
        if (rc == LC__SD_AGAIN) {
            assert_null(m);
            return;
        }
        assert_int_equal(rc, 0);
        assert_true(*got < f->count);
        lc_buf b = enc(m);
        assert_bytes(b.data, b.len, f->all.data + f->off[*got], f->len[*got]);
        lc__buf_free(&b);
        lc_msg_free(m);
        (*got)++;
    }
}

static void run_chunks(const struct stream_fixture *f, const size_t *cuts, size_t ncuts)
{
    lc_stream_decoder d;
    lc__sd_init(&d, NULL, NULL);
    size_t got = 0, prev = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : f->all.len;
        assert_int_equal(lc__sd_feed(&d, f->all.data + prev, end - prev), 0);
        drain(&d, f, &got);
        prev = end;
    }
    assert_int_equal(got, f->count);
    assert_int_equal(lc__sd_finish(&d), 0);
    lc__sd_free(&d);
}

static void test_stream_split_at_every_byte(void **state)
{
    LC_TEST_DEADLINE(10);
    struct stream_fixture f;
    make_stream(&f);
    for (size_t cut = 0; cut <= f.all.len; cut++)
        run_chunks(&f, &cut, 1);
    /* two cuts, around every message boundary */
    for (size_t k = 0; k < f.count; k++)
        for (size_t a = f.off[k] > 3 ? f.off[k] - 3 : 0; a <= f.off[k] + 3 && a <= f.all.len; a++)
            for (size_t b = a; b <= a + 12 && b <= f.all.len; b++) {
                size_t cuts[2] = { a, b };
                run_chunks(&f, cuts, 2);
            }
    lc__buf_free(&f.all);
}

static void test_stream_one_byte_at_a_time(void **state)
{
    LC_TEST_DEADLINE(10);
    struct stream_fixture f;
    make_stream(&f);
    lc_stream_decoder d;
    lc__sd_init(&d, NULL, NULL);
    size_t got = 0;
    for (size_t i = 0; i < f.all.len; i++) {
        assert_int_equal(lc__sd_feed(&d, f.all.data + i, 1), 0);
        size_t before = got;
        drain(&d, &f, &got);
        /* a message comes out exactly when its last byte arrives */
        if (got > before)
            assert_int_equal(i + 1, f.off[got - 1] + f.len[got - 1]);
    }
    assert_int_equal(got, f.count);
    assert_int_equal(lc__sd_finish(&d), 0);
    lc__sd_free(&d);
    /* everything in one chunk */
    run_chunks(&f, NULL, 0);
    lc__buf_free(&f.all);
}

static void test_stream_is_linear_in_input(void **state)
{
    LC_TEST_DEADLINE(10);
    /* one array of 400k small ints fed one byte at a time: a decoder that
     * rescanned from the message start on every chunk would take ~1e11 steps */
    size_t n = 400000;
    lc_buf in;
    lc__buf_init(&in);
    uint8_t hdr[5] = { 0xdd, 0, (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
    assert_int_equal(lc__buf_append(&in, hdr, 5), 0);
    assert_int_equal(lc__buf_reserve(&in, n), 0);
    memset(in.data + 5, 0x07, n);
    in.len += n;
    /* and a 1 MiB binary after it, in 1-byte chunks too */
    size_t bn = 1 << 20;
    uint8_t bh[5] = { 0xc6, 0, 0x10, 0, 0 };
    assert_int_equal(lc__buf_append(&in, bh, 5), 0);
    assert_int_equal(lc__buf_reserve(&in, bn), 0);
    memset(in.data + in.len, 0xab, bn);
    in.len += bn;

    lc_stream_decoder d;
    lc__sd_init(&d, NULL, NULL);
    int64_t t0 = lc_test_now_us();
    int msgs = 0;
    for (size_t i = 0; i < in.len; i++) {
        assert_int_equal(lc__sd_feed(&d, in.data + i, 1), 0);
        lc_msg *m;
        int rc = lc__sd_next(&d, &m);
        if (rc == 0) {
            msgs++;
            if (msgs == 1) {
                assert_int_equal(lc_value_len(lc_msg_root(m)), n);
                assert_int_equal(lc_value_int(lc_array_get(lc_msg_root(m), n - 1)), 7);
            } else {
                assert_int_equal(lc_value_len(lc_msg_root(m)), bn);
            }
            lc_msg_free(m);
        } else {
            assert_int_equal(rc, LC__SD_AGAIN);
        }
    }
    assert_int_equal(msgs, 2);
    assert_int_equal(lc__sd_finish(&d), 0);
    int64_t us = lc_test_now_us() - t0;
    print_message("1.4 MB in 1-byte chunks: %lld ms\n", (long long)(us / 1000));
    lc__sd_free(&d);
    lc__buf_free(&in);
}

static void test_stream_errors_match_fast_decoder(void **state)
{
    LC_TEST_DEADLINE(10);
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        HX(in, BAD[i].in);
        /* a good message first, then the bad one, one byte at a time */
        HX(good, "81 a5 'Value' 01");
        lc_stream_decoder d;
        lc__sd_init(&d, NULL, NULL);
        int first = 0, rc = LC__SD_AGAIN;
        lc_buf all;
        lc__buf_init(&all);
        assert_int_equal(lc__buf_append(&all, good, good_n), 0);
        assert_int_equal(lc__buf_append(&all, in, in_n), 0);
        for (size_t k = 0; k < all.len; k++) {
            rc = lc__sd_feed(&d, all.data + k, 1);
            if (rc < 0)
                break;
            lc_msg *m;
            while ((rc = lc__sd_next(&d, &m)) == 0) {
                first++;
                lc_msg_free(m);
            }
            if (rc < 0)
                break;
        }
        assert_int_equal(first, 1);
        if (BAD[i].code == LC_ETRUNCATED) {
            assert_int_equal(rc, LC__SD_AGAIN);
            rc = lc__sd_finish(&d);
            if (in_n == 0) /* nothing of a second message */
                assert_int_equal(rc, 0);
            else
                assert_int_equal(rc, LC_ETRUNCATED);
        } else if (rc != BAD[i].code) {
            fail_msg("case %zu '%s': stream got %d, expected %d", i, BAD[i].in, rc, BAD[i].code);
        }
        /* errors are sticky */
        if (rc < 0) {
            lc_msg *m;
            assert_int_equal(lc__sd_next(&d, &m), rc);
            assert_int_equal(lc__sd_feed(&d, "\0", 1), rc);
            assert_int_equal(lc__sd_finish(&d), rc);
        }
        lc__sd_free(&d);
        lc__buf_free(&all);
    }
}

static void test_stream_refuses_huge_header_at_once(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_stream_decoder d;
    lc__sd_init(&d, NULL, NULL);
    HX(in, "db ff ff ff ff");
    assert_int_equal(lc__sd_feed(&d, in, in_n), 0);
    lc_msg *m;
    assert_int_equal(lc__sd_next(&d, &m), LC_ETOOBIG);
    assert_true(d.in.cap < 4096); /* nothing was reserved for the claim */
    lc__sd_free(&d);
    /* finish with a partial message; with a complete one pending */
    lc__sd_init(&d, NULL, NULL);
    HX(p, "92 01");
    assert_int_equal(lc__sd_feed(&d, p, p_n), 0);
    assert_int_equal(lc__sd_next(&d, &m), LC__SD_AGAIN);
    assert_int_equal(lc__sd_finish(&d), LC_ETRUNCATED);
    lc__sd_free(&d);
    lc__sd_init(&d, NULL, NULL);
    assert_int_equal(lc__sd_feed(&d, "\x01", 1), 0);
    assert_int_equal(lc__sd_finish(&d), LC__SD_AGAIN);
    assert_int_equal(lc__sd_next(&d, &m), 0);
    lc_msg_free(m);
    assert_int_equal(lc__sd_finish(&d), 0);
    lc__sd_free(&d);
    /* limits apply to the stream too */
    lc_limits lim = { .max_message = 16 };
    lc__sd_init(&d, &lim, NULL);
    for (int i = 0; i < 40; i++) /* an array of 40 nils, ever growing */
        assert_int_equal(lc__sd_feed(&d, i == 0 ? "\xdc\x00\x28" : "\xc0", i == 0 ? 3 : 1), 0);
    assert_int_equal(lc__sd_next(&d, &m), LC_ETOOBIG);
    lc__sd_free(&d);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* First outcome of the streaming decoder fed p in random chunks. */
static int stream_first(const uint8_t *p, size_t n, const lc_limits *lim, lc_msg **out, size_t *at)
{
    lc_stream_decoder d;
    lc__sd_init(&d, lim, NULL);
    int rc = LC__SD_AGAIN;
    size_t off = 0;
    *out = NULL;
    while (off < n) {
        size_t c = 1 + rnd(16);
        if (c > n - off)
            c = n - off;
        assert_int_equal(lc__sd_feed(&d, p + off, c), 0);
        off += c;
        rc = lc__sd_next(&d, out);
        if (rc != LC__SD_AGAIN)
            break;
    }
    *at = off;
    if (rc == LC__SD_AGAIN) {
        int f = lc__sd_finish(&d);
        assert_true(f == LC_ETRUNCATED || (n == 0 && f == 0));
    }
    lc__sd_free(&d);
    return rc;
}

/* Mutated messages: the fast decoder never crashes, and the streaming
 * decoder agrees with it (same message, or the same error). */
static void test_mutations_fast_and_stream_agree(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *cm = complex_msg();
    lc_buf cb = enc(cm);
    lc_msg_free(cm);
    HX(req, GO_ECHO_REQ);
    HX(tm, "93 c7 0c 06 00 00 00 00 00 00 00 01 00 00 00 02 92 a1 'x' c4 01 00 "
           "81 d6 04 00 00 00 05 d7 01 00 00 00 01 00 00 00 00");
    HX(body, "c7 0e 07 93 a3 'x/y' c4 00 91 d6 01 00 00 00 01");
    const struct { const uint8_t *p; size_t n; } base[] = {
        { cb.data, cb.len }, { req, req_n }, { tm, tm_n }, { body, body_n },
    };
    static const uint8_t special[] = { 0xc1, 0xdd, 0xdb, 0xdf, 0xc7, 0xd6, 0xd7, 0x91,
                                       0x9f, 0x8f, 0xc9, 0xff, 0x00, 0x3b, 0x07, 0x06 };
    const lc_limits small = { .max_depth = 3, .max_message = 48, .max_elements = 6 };
    uint8_t buf[1024];
    int counts[4] = { 0 };
    for (int iter = 0; iter < 6000; iter++) {
        size_t bi = rnd(4);
        size_t n = base[bi].n;
        memcpy(buf, base[bi].p, n);
        int muts = 1 + (int)rnd(3);
        for (int k = 0; k < muts; k++) {
            size_t at = rnd((uint32_t)n);
            switch (rnd(4)) {
            case 0: buf[at] = (uint8_t)rnd(256); break;
            case 1: buf[at] = special[rnd(sizeof special)]; break;
            case 2: n = at; break;                                  /* truncate */
            default:                                                /* insert */
                if (n < sizeof buf - 1) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = special[rnd(sizeof special)];
                    n++;
                }
            }
            if (n == 0)
                break;
        }
        const lc_limits *lim = rnd(3) == 0 ? &small : NULL;
        lc_msg *fm = NULL, *sm = NULL;
        size_t used = 0, fed = 0;
        int rf = lc__decode(buf, n, lim, NULL, &fm, &used);
        int rs = stream_first(buf, n, lim, &sm, &fed);
        if (rf == 0) {
            counts[0]++;
            if (rs != 0) {
                hx_dump("input", buf, n);
                fail_msg("iter %d: fast ok, stream %d", iter, rs);
            }
            lc_buf e1 = enc(fm), e2 = enc(sm);
            assert_bytes(e2.data, e2.len, e1.data, e1.len);
            assert_true(used <= n && dec_rc(e1.data, e1.len, NULL) == 0);
            lc__buf_free(&e1);
            lc__buf_free(&e2);
        } else if (rf != LC_ETRUNCATED) {
            counts[1]++;
            if (rs != rf) {
                hx_dump("input", buf, n);
                fail_msg("iter %d: fast %d, stream %d", iter, rf, rs);
            }
        } else {
            counts[rs == LC__SD_AGAIN ? 2 : 3]++;
            assert_true(rs == LC__SD_AGAIN || rs < 0);
        }
        lc_msg_free(fm);
        lc_msg_free(sm);
    }
    print_message("ok %d, same error %d, truncated %d, truncated+later error %d\n",
                  counts[0], counts[1], counts[2], counts[3]);
    lc__buf_free(&cb);
}

/* ---- hooks --------------------------------------------------------------- */

struct hook_log {
    int n;
    uint8_t type[16];
    uint64_t ref[16];
    lc_value *val[16];
    uint64_t next_ref;
    int fail_at;     /* call number that fails, or -1 */
};

static int enc_hook(void *ctx, lc_value *v, uint8_t *ext_type, uint64_t *ref)
{
    struct hook_log *l = ctx;
    if (l->n == l->fail_at)
        return -4242;
    *ext_type = lc__codec_ext_for(v);
    *ref = l->next_ref;
    l->next_ref = l->next_ref == 3 ? 0x100000000ULL : l->next_ref + 1; /* one 8-byte ref */
    l->type[l->n] = *ext_type;
    l->ref[l->n] = *ref;
    l->val[l->n] = v;
    l->n++;
    return 0;
}

static int dec_hook(void *ctx, uint8_t ext_type, uint64_t ref, lc_msg *m, lc_value **out)
{
    struct hook_log *l = ctx;
    if (l->n == l->fail_at)
        return LC_ENOTSUP;
    lc_value *v;
    if (ext_type <= LC_EXT_READ) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        close(fds[1]);
        lc_stream_mode mode = ext_type == LC_EXT_DUPLEX ? LC_STREAM_DUPLEX
                            : ext_type == LC_EXT_WRITE ? LC_STREAM_WRITE : LC_STREAM_READ;
        v = lc_new_stream(m, fds[0], mode); /* closed when m is freed */
    } else {
        v = lc__value_alloc(m, LC__REF); /* stand-in for a channel end */
        v->mode = ext_type;
        v->u.ref = ref;
    }
    l->type[l->n] = ext_type;
    l->ref[l->n] = ref;
    l->val[l->n] = v;
    l->n++;
    *out = v;
    return 0;
}

/* A Sender/Receiver value: a real channel end if the core is there, else an
 * untracked stand-in of the right type (the codec only looks at the type). */
static lc_value *chan_end(lc_msg *m, lc_type t)
{
    lc_receiver *r;
    lc_sender *s;
    if (lc_pipe(&r, &s, 1) == 0) {
        if (t == LC_SENDER) {
            lc_receiver_release(r);
            return lc_new_sender(m, s);
        }
        lc_sender_release(s);
        return lc_new_receiver(m, r);
    }
    lc_value *v = lc__value_alloc(m, t);
    assert_non_null(v);
    return v;
}

static int new_fd(void)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    close(fds[1]);
    return fds[0];
}

static void test_hooks_called_with_ext_types_and_refs(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_array(m);
    lc_value *vals[5] = {
        lc_new_stream(m, new_fd(), LC_STREAM_DUPLEX),
        lc_new_stream(m, new_fd(), LC_STREAM_WRITE),
        lc_new_stream(m, new_fd(), LC_STREAM_READ),
        chan_end(m, LC_SENDER),
        chan_end(m, LC_RECEIVER),
    };
    for (int i = 0; i < 5; i++) {
        assert_non_null(vals[i]);
        assert_int_equal(lc_array_append(m, root, vals[i]), 0);
    }
    with_root(m, root);
    assert_int_equal(lc__codec_ext_for(vals[0]), 1);
    assert_int_equal(lc__codec_ext_for(vals[1]), 2);
    assert_int_equal(lc__codec_ext_for(vals[2]), 3);
    assert_int_equal(lc__codec_ext_for(vals[3]), 4);
    assert_int_equal(lc__codec_ext_for(vals[4]), 5);
    assert_int_equal(lc__codec_ext_for(lc_msg_root(m)), 0);

    struct hook_log el = { .next_ref = 2, .fail_at = -1 };
    struct lc_codec_hooks hooks = { .ctx = &el, .encode_attachment = enc_hook };
    lc_buf b;
    lc__buf_init(&b);
    assert_int_equal(lc__encode(m, &b, &hooks), 0);
    assert_int_equal(el.n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(el.type[i], i + 1);
        assert_ptr_equal(el.val[i], vals[i]);
    }
    /* refs handed out: 2, 3, then 0x100000000.. (8-byte form) */
    uint8_t exp2[64];
    size_t n2 = hx("95 d6 01 00 00 00 02 d6 02 00 00 00 03 d7 03 00 00 00 01 00 00 00 00 "
                   "d7 04 00 00 00 01 00 00 00 01 d7 05 00 00 00 01 00 00 00 02",
                   exp2, sizeof exp2);
    assert_bytes(b.data, b.len, exp2, n2);

    /* decoding calls back with the same types and refs, in order */
    struct hook_log dl = { .fail_at = -1 };
    struct lc_codec_hooks dh = { .ctx = &dl, .decode_attachment = dec_hook };
    lc_msg *d = NULL;
    assert_int_equal(lc__decode(b.data, b.len, NULL, &dh, &d, NULL), 0);
    assert_int_equal(dl.n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(dl.type[i], el.type[i]);
        assert_true(dl.ref[i] == el.ref[i]);
        assert_ptr_equal(lc_array_get(lc_msg_root(d), (size_t)i), dl.val[i]);
    }
    assert_int_equal(lc_value_type(lc_array_get(lc_msg_root(d), 1)), LC_STREAM);
    assert_int_equal(lc_value_stream_mode(lc_array_get(lc_msg_root(d), 1)), LC_STREAM_WRITE);
    assert_int_equal(lc_value_stream_mode(lc_array_get(lc_msg_root(d), 2)), LC_STREAM_READ);
    lc_msg_free(d);

    /* a failing hook aborts with its code and frees what was created */
    struct hook_log fl = { .fail_at = 3 };
    dh.ctx = &fl;
    assert_int_equal(lc__decode(b.data, b.len, NULL, &dh, &d, NULL), LC_ENOTSUP);
    assert_null(d);
    size_t before = b.len;
    struct hook_log efl = { .next_ref = 2, .fail_at = 2 };
    hooks.ctx = &efl;
    assert_int_equal(lc__encode(m, &b, &hooks), -4242);
    assert_int_equal(b.len, before);

    /* a taken attachment cannot be encoded */
    int fd = lc_value_take_fd(vals[2], NULL);
    assert_true(fd >= 0);
    close(fd);
    el.n = 0;
    hooks.ctx = &el;
    assert_int_equal(lc__encode(m, &b, &hooks), LC_ETAKEN);
    lc__buf_free(&b);
    lc_msg_free(m);
}

/* ---- opaque body, ext 7 (ours) ------------------------------------------- */

static void test_body_ext7_roundtrip_with_attachments(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_msg_new();
    const char json[] = "{\"a\":1}";
    assert_int_equal(lc_msg_set_body(m, json, 7, "application/json"), 0);
    assert_int_equal(lc_msg_attach(m, lc_new_stream(m, new_fd(), LC_STREAM_READ)), 0);
    assert_int_equal(lc_msg_attach(m, chan_end(m, LC_SENDER)), 1);

    struct hook_log el = { .next_ref = 2, .fail_at = -1 };
    struct lc_codec_hooks hooks = { .ctx = &el, .encode_attachment = enc_hook };
    lc_buf b;
    lc__buf_init(&b);
    assert_int_equal(lc__encode(m, &b, &hooks), 0);
    HX(exp, "c7 28 07 93 b0 'application/json' c4 07 '{\"a\":1}' 92 "
            "d6 03 00 00 00 02 d6 04 00 00 00 03");
    assert_bytes(b.data, b.len, exp, exp_n);
    /* without hooks the attachments cannot be encoded */
    lc_buf nb;
    lc__buf_init(&nb);
    assert_int_equal(lc__encode(m, &nb, NULL), LC_ENOTSUP);
    assert_int_equal(nb.len, 0);
    lc__buf_free(&nb);

    /* decode with hooks: a body message with its attachments in order */
    struct hook_log dl = { .fail_at = -1 };
    struct lc_codec_hooks dh = { .ctx = &dl, .decode_attachment = dec_hook };
    lc_msg *d = NULL;
    assert_int_equal(lc__decode(b.data, b.len, NULL, &dh, &d, NULL), 0);
    size_t len;
    const char *ct;
    const void *body = lc_msg_body(d, &len, &ct);
    assert_non_null(body);
    assert_int_equal(len, 7);
    assert_memory_equal(body, json, 7);
    assert_string_equal(ct, "application/json");
    assert_int_equal(lc_msg_attachment_count(d), 2);
    assert_int_equal(lc_value_type(lc_msg_attachment(d, 0)), LC_STREAM);
    assert_int_equal(lc_value_stream_mode(lc_msg_attachment(d, 0)), LC_STREAM_READ);
    assert_ptr_equal(lc_msg_attachment(d, 1), dl.val[1]);
    assert_int_equal(dl.type[1], LC_EXT_SENDER);
    assert_int_equal(dl.ref[1], 3);
    lc_msg_free(d);

    /* without hooks: LC__REF attachments that re-encode byte-exact */
    d = dec(b.data, b.len);
    assert_int_equal(lc_msg_attachment_count(d), 2);
    assert_int_equal(lc_msg_attachment(d, 0)->type, (uint8_t)LC__REF);
    lc_buf b2 = enc(d);
    assert_bytes(b2.data, b2.len, exp, exp_n);
    lc__buf_free(&b2);
    lc_msg_free(d);
    /* the public decoder refuses the refs */
    assert_int_equal(lc_msgpack_decode(b.data, b.len, NULL, &d), LC_ENOTSUP);
    lc__buf_free(&b);
    lc_msg_free(m);

    /* a body without attachments via the public API; empty body */
    m = lc_msg_new();
    assert_int_equal(lc_msg_set_body(m, "", 0, "x/y"), 0);
    uint8_t *out;
    assert_int_equal(lc_msgpack_encode(m, &out, &len), 0);
    HX(e2, "d7 07 93 a3 'x/y' c4 00 90"); /* 8 bytes: the fixext 8 header */
    assert_bytes(out, len, e2, e2_n);
    assert_int_equal(lc_msgpack_decode(out, len, NULL, &d), 0);
    assert_non_null(lc_msg_body(d, &len, &ct));
    assert_int_equal(len, 0);
    assert_string_equal(ct, "x/y");
    assert_int_equal(lc_msg_attachment_count(d), 0);
    lc_msg_free(d);
    free(out);
    lc_msg_free(m);
}

static void test_body_ext7_malformed(void **state)
{
    LC_TEST_DEADLINE(10);
    const char *bad[] = {
        "d4 07 00",                                  /* payload not an array */
        "c7 07 07 92 a3 'x/y' c4 00",                /* 2 elements */
        "c7 09 07 93 a3 'x/y' c4 00 90 c0",          /* bytes left in the payload */
        "c7 07 07 93 a3 'x/y' c4 00",                /* attachment list missing */
        "c7 09 07 93 c4 03 'x/y' c4 00 90",          /* content type not a str */
        "c7 07 07 93 a3 'x/y' a0 90",                /* body not a bin */
        "c7 08 07 93 a3 'x' 00 'y' c4 00 90",        /* NUL in the content type */
        "c7 09 07 93 a3 'x/y' c4 00 91 01",          /* attachment not an ext */
        "c7 0e 07 93 a3 'x/y' c4 00 91 d6 06 00 00 00 01", /* not a ref ext */
        "c7 0e 07 93 a3 'x/y' c4 05 91 d6 01 00 00 00 01", /* body runs past */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        HX(in, bad[i]);
        int rc = dec_rc(in, in_n, NULL);
        if (rc != LC_EBADMSG)
            fail_msg("case %zu '%s': got %d", i, bad[i], rc);
    }
    HX(ok, "c7 0e 07 93 a3 'x/y' c4 00 91 d6 01 00 00 00 01");
    assert_int_equal(dec_rc(ok, ok_n, NULL), 0);
}

static void test_public_api_arguments(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = NULL;
    assert_int_equal(lc_msgpack_decode(NULL, 0, NULL, &m), LC_ETRUNCATED);
    assert_int_equal(lc_msgpack_decode(NULL, 3, NULL, &m), LC_EINVAL);
    assert_int_equal(lc_msgpack_decode("\xc0", 1, NULL, NULL), LC_EINVAL);
    uint8_t *out;
    size_t len;
    assert_int_equal(lc_msgpack_encode(NULL, &out, &len), LC_EINVAL);
    lc_limits_default(NULL);
    /* zero fields in limits mean the defaults */
    lc_limits z = { 0 };
    HX(in, "81 a5 'Value' 2a");
    assert_int_equal(lc_msgpack_decode(in, in_n, &z, &m), 0);
    lc_msg_free(m);
}

/* ---- skimmer (skim.c): passed-fd refs in bytes that will not be decoded ---- */

typedef struct {
    uint64_t got[16];
    int n;
} skim_seen;

static void skim_note(void *ctx, uint64_t fd_number)
{
    skim_seen *s = ctx;
    if (s->n < 16)
        s->got[s->n] = fd_number;
    s->n++;
}

/* Skims in[0..n) cut in two at every position: each time exactly the
 * passed fds want[0..3), in order, and every message ended. */
static void expect_skim_at_every_cut(const uint8_t *in, size_t n, const uint64_t want[3])
{
    for (size_t cut = 0; cut <= n; cut++) {
        lc_skim k;
        skim_seen seen = { 0 };
        lc__skim_init(&k);
        assert_int_equal(lc__skim_feed(&k, in, cut, skim_note, &seen), 0);
        assert_int_equal(lc__skim_feed(&k, in + cut, n - cut, skim_note, &seen), 0);
        assert_int_equal(seen.n, 3);
        assert_int_equal(seen.got[0], want[0]);
        assert_int_equal(seen.got[1], want[1]);
        assert_int_equal(seen.got[2], want[2]);
        assert_int_equal(k.depth, 0); /* every message ended where it should */
        lc__skim_free(&k);
    }
}

/* Four messages: passed fds 7 (fixext 8, ext 3), 9 (ext 16 form, ext 1) and
 * 11; a sub-stream ref (no top bit), a 4-byte ref and a bin whose payload
 * looks like a passed fd are not reported. */
#define SKIM_BYTES                                                     \
    "82 a1 'A' d7 03 80 00 00 00 00 00 00 07"                          \
    "   a1 'B' 93 c4 0b d7 01 80 00 00 00 00 00 00 63 ff"              \
    "             c8 00 08 01 80 00 00 00 00 00 00 09 c0"              \
    "92 d7 02 00 00 00 00 00 00 00 05 d6 01 00 00 00 05"               \
    "a3 'abc'"                                                         \
    "d7 01 80 00 00 00 00 00 00 0b"

static void test_skim_finds_passed_fds_split_anywhere(void **st)
{
    (void)st;
    HX(in, SKIM_BYTES);
    expect_skim_at_every_cut(in, in_n, (const uint64_t[3]){ 7, 9, 11 });
    lc_skim k;
    skim_seen seen = { 0 };
    lc__skim_init(&k);
    for (size_t i = 0; i < in_n; i++)
        assert_int_equal(lc__skim_feed(&k, in + i, 1, skim_note, &seen), 0);
    assert_int_equal(seen.n, 3);
    assert_int_equal(seen.got[2], 11);
    lc__skim_free(&k);
}

typedef struct {
    uint64_t ref[8];
    uint8_t ext[8];
    int n;
} skim_refs_seen;

static void skim_ref_note(void *ctx, uint64_t ref, uint8_t ext)
{
    skim_refs_seen *s = ctx;
    if (s->n < 8) {
        s->ref[s->n] = ref;
        s->ext[s->n] = ext;
    }
    s->n++;
}

static void skim_fd_ignore(void *ctx, uint64_t fd_number)
{
    (void)ctx;
    (void)fd_number;
}

/* The sub-stream refs of SKIM_BYTES, with found_ref set: the 8-byte one and
 * the 4-byte one (the usual width: only the 8-byte form was reported, so
 * the sub-streams that dropped bytes name were not reset), each with the ext
 * that names it, wherever the bytes are cut. */
static void test_skim_reports_substream_refs_of_both_widths(void **st)
{
    (void)st;
    HX(in, SKIM_BYTES "91 d6 05 00 01 00 00");
    for (size_t cut = 0; cut <= in_n; cut++) {
        lc_skim k;
        skim_refs_seen seen = { 0 };
        lc__skim_init(&k);
        k.found_ref = skim_ref_note;
        assert_int_equal(lc__skim_feed(&k, in, cut, skim_fd_ignore, &seen), 0);
        assert_int_equal(lc__skim_feed(&k, in + cut, in_n - cut, skim_fd_ignore, &seen), 0);
        assert_int_equal(seen.n, 3);
        assert_int_equal(seen.ref[0], 5);
        assert_int_equal(seen.ext[0], 2);
        assert_int_equal(seen.ref[1], 5);
        assert_int_equal(seen.ext[1], 1);
        assert_int_equal(seen.ref[2], 0x10000);
        assert_int_equal(seen.ext[2], 5);
        assert_int_equal(k.depth, 0);
        lc__skim_free(&k);
    }
}

static void test_skim_finds_passed_fds_in_a_body_message(void **st)
{
    (void)st;
    /* ext 7 (PROTOCOL.md 4.5): [content type, body, [refs]], passed fds 12
     * and 13 among its refs; then a plain message naming fd 14 */
    HX(in, "c7 1f 07 93 a4 'text' c4 02 'hi' 92"
           "    d7 01 80 00 00 00 00 00 00 0c d7 03 80 00 00 00 00 00 00 0d"
           "d7 02 80 00 00 00 00 00 00 0e");
    lc_msg *m = NULL;
    size_t used = 0;
    assert_int_equal(lc__decode(in, in_n, NULL, NULL, &m, &used), 0); /* the bytes are a body message */
    assert_int_equal(used, in_n - 10);
    lc_msg_free(m);
    expect_skim_at_every_cut(in, in_n, (const uint64_t[3]){ 12, 13, 14 });
}

static void test_skim_stops_at_bytes_that_are_not_msgpack(void **st)
{
    (void)st;
    /* 0xc1 is reserved: the ref before it is found, the one after is not */
    HX(in, "92 d7 01 80 00 00 00 00 00 00 01 c1 d7 01 80 00 00 00 00 00 00 02");
    lc_skim k;
    skim_seen seen = { 0 };
    lc__skim_init(&k);
    assert_int_equal(lc__skim_feed(&k, in, in_n, skim_note, &seen), LC_EBADMSG);
    assert_int_equal(seen.n, 1);
    assert_int_equal(seen.got[0], 1);
    assert_int_equal(lc__skim_feed(&k, in, in_n, skim_note, &seen), LC_EBADMSG); /* sticky */
    assert_int_equal(seen.n, 1);
    lc__skim_free(&k);

    /* nesting deeper than the skimmer keeps: it gives up, bounded */
    static uint8_t deep[5000];
    memset(deep, 0x91, sizeof deep);
    lc__skim_init(&k);
    assert_int_equal(lc__skim_feed(&k, deep, sizeof deep, skim_note, &seen), LC_EBADMSG);
    assert_true(k.cap <= 4096);
    lc__skim_free(&k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, lc_test_setup, lc_test_teardown)
        T(test_encode_scalars_exact_bytes),
        T(test_encode_integers_smallest_form),
        T(test_encode_str_bin_boundaries),
        T(test_encode_container_boundaries),
        T(test_encode_time_ext6),
        T(test_encode_refs_4_and_8_bytes),
        T(test_encode_nested_map_exact),
        T(test_roundtrip_every_type),
        T(test_encode_appends_and_restores_on_failure),
        T(test_encode_cycle_fails_with_edepth),
        T(test_decode_noncanonical_forms),
        T(test_decode_go_vectors_and_reencode_exact),
        T(test_decode_vector_files_if_present),
        T(test_decode_each_error_has_its_code),
        T(test_decode_truncated_at_every_byte),
        T(test_decode_trailing_bytes),
        T(test_decode_depth_limit),
        T(test_decode_depth_limit_is_capped),
        T(test_decode_size_limits),
        T(test_stream_split_at_every_byte),
        T(test_stream_one_byte_at_a_time),
        T(test_stream_is_linear_in_input),
        T(test_stream_errors_match_fast_decoder),
        T(test_stream_refuses_huge_header_at_once),
        T(test_mutations_fast_and_stream_agree),
        T(test_hooks_called_with_ext_types_and_refs),
        T(test_body_ext7_roundtrip_with_attachments),
        T(test_body_ext7_malformed),
        T(test_public_api_arguments),
        T(test_skim_finds_passed_fds_split_anywhere),
        T(test_skim_reports_substream_refs_of_both_widths),
        T(test_skim_finds_passed_fds_in_a_body_message),
        T(test_skim_stops_at_bytes_that_are_not_msgpack),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

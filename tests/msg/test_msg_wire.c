/*
 * test_msg_wire.c - wire-form messages (msg_internal.h): lc_pack writing
 * msgpack directly, lc_unpack reading those bytes, the tree built from them
 * on demand, and messages decoded into that form.
 *
 * Every check is differential: the wire path against the tree path of the
 * same message (a twin whose tree was built with lc_msg_root), so the two
 * must give the same bytes, the same outputs, the same error code and the
 * same error text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "libchan.h"
#include "msg/msg_internal.h"
#include "testutil.h"
#include "unpack_cases.h"

/* The encoding of m (lc_msgpack_encode), freed by the caller. */
static uint8_t *encoding(lc_msg *m, size_t *len)
{
    uint8_t *p = NULL;
    assert_int_equal(lc_msgpack_encode(m, &p, len), 0);
    return p;
}

/* m is in wire form; its bytes equal the encoding of the tree built from a
 * copy of them. Takes m. */
#define assert_wire_is_tree(m) wire_is_tree((m), __LINE__)
static void wire_is_tree(lc_msg *m, int line)
{
    if (m == NULL || m->wire == NULL)
        fail_msg("line %d: lc_pack gave %s", line, m == NULL ? "NULL" : "a tree");
    size_t wl, tl;
    uint8_t *w = encoding(m, &wl);
    assert_int_equal(wl, m->wire_len);
    assert_memory_equal(w, m->wire, wl);
    lc_msg *t = NULL;
    assert_int_equal(lc_msgpack_decode(w, wl, NULL, &t), 0);
    assert_non_null(t->wire); /* our bytes are canonical: kept as they are */
    lc_msg_root(t);
    assert_null(t->wire);
    uint8_t *tb = encoding(t, &tl);
    assert_int_equal(tl, wl);
    assert_memory_equal(tb, w, wl);
    free(tb);
    free(w);
    lc_msg_free(t);
    lc_msg_free(m);
}

static void test_pack_writes_the_bytes_of_the_tree(void **state)
{
    (void)state;
    static const uint8_t simple[] = { 0x81, 0xa5, 'V', 'a', 'l', 'u', 'e', 0x2a };
    lc_msg *m = lc_pack("{s:I}", "Value", (int64_t)42);
    assert_non_null(m);
    assert_non_null(m->wire);
    assert_int_equal(m->wire_len, sizeof simple);
    assert_memory_equal(m->wire, simple, sizeof simple);
    lc_msg_free(m);

    static const uint8_t bin3[] = { 1, 2, 3 };
    assert_wire_is_tree(lc_pack("n"));
    assert_wire_is_tree(lc_pack("B", 1));
    assert_wire_is_tree(lc_pack("B", 0));
    /* every integer width, both signs, and the uint above INT64_MAX */
    static const int64_t ints[] = { 0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295LL, 4294967296LL,
                                    INT64_MAX, -1, -32, -33, -128, -129, -32768, -32769,
                                    INT32_MIN, (int64_t)INT32_MIN - 1, INT64_MIN };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        assert_wire_is_tree(lc_pack("I", ints[i]));
        if (ints[i] >= 0)
            assert_wire_is_tree(lc_pack("U", (uint64_t)ints[i]));
        if (ints[i] >= INT_MIN && ints[i] <= INT_MAX)
            assert_wire_is_tree(lc_pack("i", (int)ints[i]));
    }
    assert_wire_is_tree(lc_pack("U", UINT64_MAX));
    assert_wire_is_tree(lc_pack("U", (uint64_t)INT64_MAX + 1));
    assert_wire_is_tree(lc_pack("f", 1.5));
    assert_wire_is_tree(lc_pack("f", -0.0));
    assert_wire_is_tree(lc_pack("f", NAN));
    assert_wire_is_tree(lc_pack("s", ""));
    assert_wire_is_tree(lc_pack("b", bin3, sizeof bin3));
    assert_wire_is_tree(lc_pack("b", NULL, (size_t)0));
    /* times, as the tree encoder writes them (c7 0c 06, seconds, nanoseconds) */
    assert_wire_is_tree(lc_pack("t", (int64_t)0, 0));
    assert_wire_is_tree(lc_pack("t", (int64_t)-1, 999999999));
    assert_wire_is_tree(lc_pack("t", INT64_MAX, 5));
    assert_wire_is_tree(lc_pack("{s:t, s:[t, i]}", "at", INT64_MIN, 0, "l", (int64_t)1700000000, 123, 7));
    assert_wire_is_tree(lc_pack("[]"));
    assert_wire_is_tree(lc_pack("{}"));
    assert_wire_is_tree(lc_pack("{s:i, s:[i, s, {s:n}], s:{}, s#:b}", "a", 1, "b", 2, "x", "c", "d", "ef",
                                (size_t)1, bin3, sizeof bin3));
    /* 15 and 16 entries: the fix header, then the 16-bit one */
    assert_wire_is_tree(lc_pack("[iiiiiiiiiiiiiii]", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    assert_wire_is_tree(lc_pack("[iiiiiiiiiiiiiiii]", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16));
    assert_wire_is_tree(lc_pack("{s:i s:i s:i s:i s:i s:i s:i s:i s:i s:i s:i s:i s:i s:i s:i s:i}", "a", 1, "b",
                                2, "c", 3, "d", 4, "e", 5, "f", 6, "g", 7, "h", 8, "i", 9, "j", 10, "k", 11, "l",
                                12, "m", 13, "n", 14, "o", 15, "p", 16));
    /* a duplicate key is kept, as the tree builder keeps it */
    assert_wire_is_tree(lc_pack("{s:i, s:i}", "a", 1, "a", 2));
}

/* Strings at every header boundary, and bytes that outgrow the message's
 * inline arena (the writer moves to arena blocks as it goes). */
static void test_pack_string_sizes_and_growth(void **state)
{
    (void)state;
    static const size_t sizes[] = { 31, 32, 255, 256, 383, 384, 1000, 65535, 65536, 300000 };
    char *big = malloc(300001);
    assert_non_null(big);
    for (size_t i = 0; i < 300000; i++)
        big[i] = (char)('a' + i % 26);
    big[300000] = '\0';
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        assert_wire_is_tree(lc_pack("s#", big, n));
        assert_wire_is_tree(lc_pack("b", big, n));
        assert_wire_is_tree(lc_pack("[s#, s#, i]", big, n, big, n / 2, 7));
        /* a container whose header grows from 1 to 3 bytes after a big body */
        assert_wire_is_tree(lc_pack("[s# i i i i i i i i i i i i i i i i]", big, n, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                    10, 11, 12, 13, 14, 15, 16));
        lc_msg *m = lc_pack("{s:s#}", "k", big, n);
        const char *s = NULL;
        size_t sl = 0;
        assert_int_equal(lc_unpack(m, "{s:s#}", "k", &s, &sl), 0);
        assert_non_null(m->wire);
        assert_int_equal(sl, n);
        assert_memory_equal(s, big, n);
        assert_int_equal(s[n], '\0');
        lc_msg_free(m);
    }
    free(big);
}

/* What the wire writer does not handle goes to the tree builder, which
 * builds the message or reports the error as before. */
static void test_pack_falls_back_to_the_tree(void **state)
{
    (void)state;
    lc_error e;
    /* nanoseconds out of range: the tree builder's error */
    assert_null(lc_pack_ex(&e, "{s:t}", "at", (int64_t)5, 1000000000));
    assert_int_equal(e.code, LC_ERANGE);
    assert_string_equal(e.text, "at: nanoseconds 1000000000 out of range");
    assert_null(lc_pack_ex(&e, "{s:t}", "at", (int64_t)5, -1));
    assert_int_equal(e.code, LC_ERANGE);
    lc_msg *m;
    assert_null(lc_pack_ex(&e, "{s:i, s:s}", "a", 1, "b", (const char *)NULL));
    assert_int_equal(e.code, LC_EINVAL);
    assert_string_equal(e.text, "b: NULL string");
    assert_null(lc_pack_ex(&e, "{i}", 1));
    assert_int_equal(e.code, LC_EFORMAT);
    assert_null(lc_pack_ex(&e, "[i", 1));
    assert_int_equal(e.code, LC_EFORMAT);
    assert_null(lc_pack_ex(&e, "i i", 1, 2));
    assert_int_equal(e.code, LC_EFORMAT);
    m = lc_pack_ex(&e, "{s:i}", "a", 1);
    assert_non_null(m);
    assert_int_equal(e.code, 0);
    assert_string_equal(e.text, "");
    lc_msg_free(m);
}

/* ---- lc_unpack: the wire walk against the tree walk ----------------------- */

static const uint8_t bin4[] = { 9, 8, 7, 6 };

/* The messages the cases run over, made fresh each time (a failed wire walk
 * builds the tree, so a message is used once). */
static lc_msg *source(int which)
{
    switch (which) {
    case 0:
        return lc_pack("{s:i, s:I, s:U, s:f, s:B, s:s, s:b, s:n, s:[i, i, {s:s}], s:i, s:i, s#:s, s:t, s:[t, i]}",
                       "i", -5, "I", INT64_MIN, "U", UINT64_MAX, "f", 1.5, "B", 1, "s", "text", "b", bin4,
                       sizeof bin4, "n", "a", 1, 2, "k", "v", "d", 3, "d", 4, "sXX", (size_t)2, "second", "t",
                       (int64_t)1700000000, 250, "tl", (int64_t)-5, 999999999, 3);
    case 1: /* numbers at the edges of what 'i', 'I' and 'U' take */
        return lc_pack("{s:I, s:U, s:i, s:f, s:s}", "I", (int64_t)INT_MAX + 1, "U", (uint64_t)INT64_MAX + 1,
                       "i", INT_MIN, "f", -2.25, "s", "");
    case 2:
        return lc_pack("[i, s, f]", 7, "x", 0.5);
    case 3:
        return lc_pack("{s:[i], s:{s:i}, s:i}", "a", 1, "x", "i", 2, "i", 3);
    default:
        return lc_pack("s", "just a string");
    }
}
#define NSOURCES 5

static void test_unpack_wire_matches_tree(void **state)
{
    (void)state;
    int fast = 0;
    for (int src = 0; src < NSOURCES; src++) {
        for (size_t c = 0; c < sizeof ucases / sizeof ucases[0]; c++) {
            lc_msg *w = source(src), *t = source(src);
            assert_non_null(w->wire);
            lc_msg_root(t);
            assert_null(t->wire);
            outs ow, ot;
            memset(&ow, 0, sizeof ow); /* untouched outputs must stay equal too */
            memset(&ot, 0, sizeof ot);
            lc_error ew, et;
            int rw = ucases[c].f(w, &ew, &ow);
            int rt = ucases[c].f(t, &et, &ot);
            if (rw != rt || ew.code != et.code || strcmp(ew.text, et.text) != 0)
                fail_msg("source %d, %s: wire %d '%s', tree %d '%s'", src, ucases[c].name, rw, ew.text, rt,
                         et.text);
            const char *d = outs_differ(&ow, &ot);
            if (d != NULL)
                fail_msg("source %d, %s: output %s differs", src, ucases[c].name, d);
            if (rw == 0 && w->wire != NULL)
                fast++;
            lc_msg_free(w);
            lc_msg_free(t);
        }
    }
    assert_true(fast >= 10); /* the wire walk did the work, not only the fallback */
}

/* The common case stays in wire form: unpacked many times, never a tree. */
static void test_unpack_keeps_wire_form(void **state)
{
    (void)state;
    lc_msg *m = lc_pack("{s:I, s:s}", "Value", (int64_t)-7, "Name", "n");
    for (int k = 0; k < 3; k++) {
        int64_t v = 0;
        const char *s = NULL;
        assert_int_equal(lc_unpack(m, "{s:I, s:s}", "Value", &v, "Name", &s), 0);
        assert_int_equal(v, -7);
        assert_string_equal(s, "n");
    }
    assert_non_null(m->wire);
    /* lc_msg_root builds the tree; the message then is that tree */
    lc_value *root = lc_msg_root(m);
    assert_null(m->wire);
    assert_int_equal(lc_value_type(root), LC_MAP);
    assert_int_equal(lc_value_int(lc_map_get(root, "Value")), -7);
    assert_int_equal(lc_map_set(m, root, "Extra", lc_new_int(m, 1)), 0);
    int64_t x = 0;
    assert_int_equal(lc_unpack(m, "{s:I}", "Extra", &x), 0);
    assert_int_equal(x, 1);
    lc_msg_free(m);

    /* a time is read from the bytes too */
    m = lc_pack("{s:t}", "at", (int64_t)-3, 999999999);
    int64_t sec = 0;
    int nsec = 0;
    assert_int_equal(lc_unpack(m, "{s:t}", "at", &sec, &nsec), 0);
    assert_non_null(m->wire);
    assert_int_equal(sec, -3);
    assert_int_equal(nsec, 999999999);
    assert_int_equal(lc_unpack(m, "{s:t}", "at", NULL, &nsec), 0);
    assert_non_null(m->wire);
    lc_msg_free(m);

    /* set_root and set_body replace the bytes */
    m = lc_pack("{s:i}", "a", 1);
    assert_int_equal(lc_msg_set_root(m, lc_new_int(m, 5)), 0);
    assert_null(m->wire);
    int i = 0;
    assert_int_equal(lc_unpack(m, "i", &i), 0);
    assert_int_equal(i, 5);
    lc_msg_free(m);
    m = lc_pack("{s:i}", "a", 1);
    assert_int_equal(lc_msg_set_body(m, "x", 1, "text/plain"), 0);
    assert_null(m->wire);
    assert_int_equal(lc_unpack(m, "{s:i}", "a", &i), LC_ETYPE);
    lc_msg_free(m);
}

/* bytes decode (defaults) into a tree, not kept as bytes */
#define assert_decoded_as_tree(bytes) decoded_as_tree((bytes), sizeof(bytes), __LINE__)
static void decoded_as_tree(const uint8_t *p, size_t n, int line)
{
    lc_msg *m = NULL;
    if (lc_msgpack_decode(p, n, NULL, &m) != 0 || m->wire != NULL)
        fail_msg("line %d: not decoded as a tree", line);
    lc_msg_free(m);
}

/* m encodes (lc_msgpack_encode) to exactly bytes */
#define assert_encodes_to(m, bytes) encodes_to((m), (bytes), sizeof(bytes), __LINE__)
static void encodes_to(lc_msg *m, const uint8_t *want, size_t want_len, int line)
{
    size_t n;
    uint8_t *e = encoding(m, &n);
    if (n != want_len || memcmp(e, want, n) != 0)
        fail_msg("line %d: encodes to other bytes (%zu, want %zu)", line, n, want_len);
    free(e);
}

/* Decoding keeps plain canonical messages as bytes, and builds the tree for
 * anything else, which then re-encodes canonically as before. */
static void test_decode_keeps_our_forms_and_gos_ints(void **state)
{
    (void)state;
    static const uint8_t plain[] = { 0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x92, 0xc3, 0xc0 };
    lc_msg *m = NULL;
    assert_int_equal(lc_msgpack_decode(plain, sizeof plain, NULL, &m), 0);
    assert_non_null(m->wire);
    lc_msg_free(m);

    static const uint8_t wide_int[] = { 0x81, 0xa1, 'a', 0xcc, 0x05 };   /* 5 as uint8 */
    static const uint8_t f32[] = { 0xca, 0x3f, 0xc0, 0x00, 0x00 };       /* 1.5 as float32 */
    static const uint8_t str8[] = { 0xd9, 0x01, 'x' };                   /* a short str8 */
    static const uint8_t time[] = { 0xd7, 0x06, 0, 0, 0, 0, 0, 0, 0, 1 }; /* not our ext 6 size */
    static const uint8_t ext_time[] = { 0xc7, 0x0c, 0x06, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2 };
    static const uint8_t canon_int[] = { 0x81, 0xa1, 'a', 0x05 };
    assert_int_equal(lc_msgpack_decode(wide_int, sizeof wide_int, NULL, &m), 0);
    assert_null(m->wire);
    assert_encodes_to(m, canon_int);
    lc_msg_free(m);
    assert_decoded_as_tree(f32);
    assert_decoded_as_tree(str8);
    assert_int_equal(lc_msgpack_decode(time, sizeof time, NULL, &m), LC_EBADMSG);
    /* a time in our form is kept; in an ext16 header, or with nanoseconds
     * out of range, it goes to the tree decoder (which refuses the latter) */
    assert_int_equal(lc_msgpack_decode(ext_time, sizeof ext_time, NULL, &m), 0);
    assert_non_null(m->wire);
    lc_msg_free(m);
    static const uint8_t ext16_time[] = { 0xc8, 0x00, 0x0c, 0x06, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2 };
    assert_int_equal(lc_msgpack_decode(ext16_time, sizeof ext16_time, NULL, &m), 0);
    assert_null(m->wire);
    assert_encodes_to(m, ext_time);
    lc_msg_free(m);
    static const uint8_t bad_nsec[] = { 0x91, 0xc7, 0x0c, 0x06, 0, 0, 0, 0, 0, 0, 0, 1, 0x3b, 0x9a, 0xca, 0x00 };
    assert_int_equal(lc_msgpack_decode(bad_nsec, sizeof bad_nsec, NULL, &m), LC_EBADMSG);
    assert_null(m);

    /* Go's signed form of a positive integer (PROTOCOL.md 4.6) is kept: the
     * message goes on as Go wrote it; its tree encodes in our form */
    static const uint8_t go_int[] = { 0x83, 0xa1, 'a', 0xd1, 0x00, 0xc8, 0xa1, 'b', 0xd2, 0x00, 0x01, 0x00, 0x00,
                                      0xa1, 'c', 0xd3, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00 };
    static const uint8_t our_int[] = { 0x83, 0xa1, 'a', 0xcc, 0xc8, 0xa1, 'b', 0xce, 0x00, 0x01, 0x00, 0x00,
                                       0xa1, 'c', 0xcf, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00 };
    assert_int_equal(lc_msgpack_decode(go_int, sizeof go_int, NULL, &m), 0);
    assert_non_null(m->wire);
    int a = 0;
    int64_t b = 0;
    uint64_t c = 0;
    assert_int_equal(lc_unpack(m, "{s:i, s:I, s:U}", "a", &a, "b", &b, "c", &c), 0);
    assert_non_null(m->wire);
    assert_int_equal(a, 200);
    assert_int_equal(b, 65536);
    assert_int_equal(c, 4294967296u);
    assert_encodes_to(m, go_int);
    lc_msg_root(m);
    assert_encodes_to(m, our_int);
    lc_msg_free(m);
    /* but not a signed form wider than the smallest, nor int8 for 0..127 */
    static const uint8_t wide_go[] = { 0xd2, 0x00, 0x00, 0x00, 0xc8 };
    static const uint8_t small_go[] = { 0xd0, 0x05 };
    assert_decoded_as_tree(wide_go);
    assert_decoded_as_tree(small_go);

    /* limits apply to plain messages as to any */
    lc_limits lim = { .max_depth = 1 };
    static const uint8_t nested[] = { 0x91, 0x91, 0x01 };
    assert_int_equal(lc_msgpack_decode(nested, sizeof nested, &lim, &m), LC_EDEPTH);
    assert_int_equal(lc_msgpack_decode(plain, sizeof plain - 1, NULL, &m), LC_ETRUNCATED);
    static const uint8_t trailing[] = { 0x01, 0x02 };
    assert_int_equal(lc_msgpack_decode(trailing, sizeof trailing, NULL, &m), LC_ETRAILING);
    assert_null(m);
}

/* A wire-form message travels through an in-process channel as it is. */
static void test_wire_message_through_a_pipe(void **state)
{
    (void)state;
    lc_receiver *r;
    lc_sender *s;
    int rc = lc_pipe(&r, &s, 4);
    if (rc == LC_ENOTSUP)
        skip();
    assert_int_equal(rc, 0);
    assert_int_equal(lc_send(s, lc_pack("{s:i, s:s}", "n", 3, "t", "three"), 0), 0);
    lc_msg *m = NULL;
    assert_int_equal(lc_recv(r, &m, 0), 0);
    int n = 0;
    const char *t = NULL;
    assert_int_equal(lc_unpack(m, "{s:i, s:s}", "n", &n, "t", &t), 0);
    assert_int_equal(n, 3);
    assert_string_equal(t, "three");
    lc_msg_free(m);
    lc_close(s);
    lc_sender_release(s);
    lc_receiver_release(r);
}

/* Bytes of m's arena blocks beyond its inline one. */
static size_t arena_extra(const lc_msg *m)
{
    size_t n = 0;
    for (const lc_arena_block *b = m->blocks; b != NULL; b = b->next)
        n += b->size;
    return n;
}

/*
 * Unpacking one wire-form message again and again (a configuration message
 * read field by field, a loop) keeps its memory bounded: each string read
 * from the bytes is copied for its NUL, and the copies stay until the
 * message is freed. 10000 reads of a 4095-byte string took 39 MB; past about
 * 64 KiB of copies the strings now come from the tree, built once. Every
 * read still gives the string.
 */
static void test_unpacking_a_wire_message_again_stays_bounded(void **state)
{
    (void)state;
    char big[4096];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    lc_msg *m = lc_pack("{s:s, s:i}", "S", big, "N", 7);
    assert_non_null(m);
    assert_non_null(m->wire); /* lc_pack makes the wire form */
    for (int i = 0; i < 10000; i++) {
        const char *got = NULL;
        int n = 0;
        assert_int_equal(lc_unpack(m, "{s:s, s:i}", "S", &got, "N", &n), 0);
        assert_non_null(got);
        assert_int_equal(strlen(got), sizeof big - 1);
        assert_int_equal(n, 7);
    }
    assert_true(arena_extra(m) < (1u << 20));
    lc_msg_free(m);
}

/* The limits at the one-byte headers (fixint, fixstr, fixmap, fixarray),
 * which the decoder checks on a path of their own before the general one
 * (plain_length, codec/decode.c): each case exactly at a limit and one past
 * it, and cut short. (Checked against the general path alone on 20 million
 * random messages and limits when that path was added.) */
static void test_decode_limits_at_one_byte_headers(void **state)
{
    (void)state;
    static const struct {
        uint8_t bytes[8];
        size_t n;
        lc_limits lim; /* depth, message bytes, elements (0: default) */
        int rc;
    } cases[] = {
        { { 0x81, 0xa1, 'a', 0x01 }, 4, { 0, 4, 0 }, 0 },
        { { 0x81, 0xa1, 'a', 0x01 }, 4, { 0, 3, 0 }, LC_ETOOBIG },
        { { 0xa3, 'a', 'b', 'c' }, 4, { 0, 4, 0 }, 0 },
        { { 0xa3, 'a', 'b', 'c' }, 4, { 0, 3, 0 }, LC_ETOOBIG },
        { { 0x05 }, 1, { 0, 1, 0 }, 0 },
        { { 0xe0 }, 1, { 0, 0, 0 }, 0 },
        { { 0x91, 0x91, 0x01 }, 3, { 2, 0, 0 }, 0 },
        { { 0x91, 0x91, 0x01 }, 3, { 1, 0, 0 }, LC_EDEPTH },
        { { 0x93, 0x01, 0x02, 0x03 }, 4, { 0, 0, 3 }, 0 },
        { { 0x93, 0x01, 0x02, 0x03 }, 4, { 0, 0, 2 }, LC_ETOOBIG },
        { { 0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0xff }, 7, { 0, 0, 2 }, 0 },
        { { 0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0xff }, 7, { 0, 0, 1 }, LC_ETOOBIG },
        { { 0xa2, 'a' }, 2, { 0, 0, 0 }, LC_ETRUNCATED },
        { { 0x82, 0xa1, 'a', 0x01 }, 4, { 0, 0, 0 }, LC_ETRUNCATED },
        { { 0x01, 0x02 }, 2, { 0, 0, 0 }, LC_ETRAILING },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lc_msg *m = NULL;
        int rc = lc_msgpack_decode(cases[i].bytes, cases[i].n, &cases[i].lim, &m);
        if (rc != cases[i].rc)
            fail_msg("case %zu: %d, want %d", i, rc, cases[i].rc);
        if (rc == 0) {
            if (m->wire == NULL || m->wire_len != cases[i].n || memcmp(m->wire, cases[i].bytes, cases[i].n) != 0)
                fail_msg("case %zu: not kept as its bytes", i);
            lc_msg_free(m);
        } else {
            assert_null(m);
        }
    }
}

#define T(f) cmocka_unit_test_setup_teardown(f, lc_test_setup, lc_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_pack_writes_the_bytes_of_the_tree),
        T(test_pack_string_sizes_and_growth),
        T(test_pack_falls_back_to_the_tree),
        T(test_unpack_wire_matches_tree),
        T(test_unpack_keeps_wire_form),
        T(test_decode_keeps_our_forms_and_gos_ints),
        T(test_wire_message_through_a_pipe),
        T(test_unpacking_a_wire_message_again_stays_bounded),
        T(test_decode_limits_at_one_byte_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

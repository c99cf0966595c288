/*
 * test_msg_pack.c - lc_pack()/lc_unpack() format strings (src/msg/pack.c):
 * round trips of every letter, nesting, optional keys and '*', exact error
 * texts and codes, format errors, the two-phase unpack guarantee, and who
 * owns attachments when a pack or unpack fails.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "libchan.h"
#include "msg/msg_internal.h"
#include "testutil.h"

static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static void pipe_or_skip(lc_receiver **r, lc_sender **s, size_t cap)
{
    int rc = lc_pipe(r, s, cap);
    if (rc == LC_ENOTSUP)
        skip();
    assert_int_equal(rc, 0);
}

/* Asserts code and exact text of an lc_error. */
#define assert_error(e, c, txt)                 \
    do {                                        \
        assert_int_equal((e).code, (c));        \
        assert_string_equal((e).text, (txt));   \
    } while (0)

/* ---- round trips ---------------------------------------------------------- */

static void test_scalars_round_trip(void **state)
{
    LC_TEST_DEADLINE(10);
    static const unsigned char bin[] = { 0xde, 0xad, 0x00, 0xbe, 0xef };
    lc_error e;
    lc_msg *m = lc_pack_ex(&e, "[n, B, B, i, I, U, U, f, s, s#, b, t]",
                           1, 0, -7, (int64_t)INT64_MIN, (uint64_t)UINT64_MAX, (uint64_t)5,
                           3.25, "hello", "abcdef", (size_t)3, bin, sizeof bin,
                           (int64_t)-1234567890123, 999999999);
    assert_non_null(m);
    assert_int_equal(e.code, 0);
    assert_string_equal(e.text, "");

    lc_value *root = lc_msg_root(m);
    assert_int_equal(lc_value_type(root), LC_ARRAY);
    assert_int_equal(lc_value_len(root), 12);
    assert_int_equal(lc_value_type(lc_array_get(root, 0)), LC_NIL);
    assert_int_equal(lc_value_type(lc_array_get(root, 6)), LC_INT); /* small uint */

    bool b1 = false, b2 = true;
    int i = 0, nsec = 0;
    int64_t I = 0, sec = 0;
    uint64_t U1 = 0, U2 = 0;
    double f = 0;
    const char *s = NULL, *sh = NULL;
    size_t shlen = 0, blen = 0;
    const void *bp = NULL;
    assert_int_equal(lc_unpack_ex(m, &e, "[n, B, B, i, I, U, U, f, s, s#, b, t]",
                                  &b1, &b2, &i, &I, &U1, &U2, &f, &s, &sh, &shlen,
                                  &bp, &blen, &sec, &nsec), 0);
    assert_int_equal(e.code, 0);
    assert_true(b1);
    assert_false(b2);
    assert_int_equal(i, -7);
    assert_true(I == INT64_MIN);
    assert_true(U1 == UINT64_MAX);
    assert_true(U2 == 5);
    assert_true(f == 3.25);
    assert_string_equal(s, "hello");
    assert_int_equal(shlen, 3);
    assert_memory_equal(sh, "abc", 3);
    assert_int_equal(sh[3], '\0');
    assert_int_equal(blen, sizeof bin);
    assert_memory_equal(bp, bin, sizeof bin);
    assert_true(sec == -1234567890123);
    assert_int_equal(nsec, 999999999);
    lc_msg_free(m);
}

static void test_nested_round_trip(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:s, s:[i, [s, {s:B}], {}], s:{s:{s:f}}, s:[]}",
                        "Op", "call",
                        "Args", 1, "x", "deep", 1,
                        "Meta", "Inner", "pi", 3.5,
                        "Empty");
    assert_non_null(m);

    /* the tree, through the getters */
    lc_value *root = lc_msg_root(m);
    assert_int_equal(lc_value_len(root), 4);
    assert_string_equal(lc_value_string(lc_map_key(root, 1), NULL), "Args");
    lc_value *args = lc_map_get(root, "Args");
    assert_int_equal(lc_value_len(args), 3);
    assert_int_equal(lc_value_type(lc_array_get(args, 2)), LC_MAP);
    assert_true(lc_value_bool(lc_map_get(lc_array_get(lc_array_get(args, 1), 1), "deep")));

    const char *op = NULL, *x = NULL;
    int one = 0;
    bool deep = false;
    double pi = 0;
    lc_value *empty = NULL;
    assert_int_equal(lc_unpack(m, "{s:s, s:[i, [s, {s:B}], {}], s:{s:{s:f}}, s:v}",
                               "Op", &op, "Args", &one, &x, "deep", &deep,
                               "Meta", "Inner", "pi", &pi, "Empty", &empty), 0);
    assert_string_equal(op, "call");
    assert_int_equal(one, 1);
    assert_string_equal(x, "x");
    assert_true(deep);
    assert_true(pi == 3.5);
    assert_non_null(empty);
    assert_int_equal(lc_value_type(empty), LC_ARRAY);
    assert_int_equal(lc_value_len(empty), 0);
    lc_msg_free(m);
}

static void test_separators_are_ignored(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack(" { s i \n s : s , }\t", "a", 1, "b", "two");
    assert_non_null(m);
    int a = 0;
    const char *b = NULL;
    assert_int_equal(lc_unpack(m, "{s i s s}", "a", &a, "b", &b), 0);
    assert_int_equal(a, 1);
    assert_string_equal(b, "two");
    assert_int_equal(lc_unpack(m, "{s:i,,:: s:s}", "a", &a, "b", &b), 0);
    lc_msg_free(m);
}

static void test_length_keys(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s#:i}", "keyXXXX", (size_t)3, 5);
    assert_non_null(m);
    assert_non_null(lc_map_get(lc_msg_root(m), "key"));
    int v = 0;
    assert_int_equal(lc_unpack(m, "{s#:i}", "keyZZ", (size_t)3, &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(lc_unpack(m, "{s:i}", "key", &v), 0);
    lc_msg_free(m);
}

static void test_value_v_is_borrowed(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:[i,i]}", "L", 1, 2);
    lc_value *l = NULL, *all = NULL;
    assert_int_equal(lc_unpack(m, "{s:v}", "L", &l), 0);
    assert_ptr_equal(l, lc_map_get(lc_msg_root(m), "L"));
    assert_int_equal(lc_unpack(m, "v", &all), 0);
    assert_ptr_equal(all, lc_msg_root(m));
    lc_msg_free(m);
}

static void test_nil_root_of_new_message(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_msg_new();
    assert_int_equal(lc_unpack(m, "n"), 0);
    lc_error e;
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i}", "x", NULL), LC_ETYPE);
    assert_error(e, LC_ETYPE, "expected map, got nil");
    lc_msg_free(m);
}

static void test_simple_struct_uses_only_the_inline_arena(void **state)
{
    LC_TEST_DEADLINE(10);
    /* the hot cases: one malloc (lc_msg_new), nothing else */
    for (int64_t i = 0; i < 1000; i++) {
        lc_msg *m = lc_pack("{s:I}", "Value", i);
        assert_non_null(m);
        assert_null(m->blocks);
        int64_t got = -1;
        assert_int_equal(lc_unpack(m, "{s:I}", "Value", &got), 0);
        assert_true(got == i);
        lc_msg_free(m);
    }
    /* and a request with its reply Sender (a fresh reply channel's) */
    for (int64_t i = 0; i < 100; i++) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, 1), 0);
        lc_msg *m = lc_pack("{s:I, s:S}", "Value", i, "Ret", s);
        assert_non_null(m);
        assert_null(m->blocks);
        lc_msg_free(m);
        lc_receiver_release(r);
    }
}

static void test_big_message_grows_arena(void **state)
{
    LC_TEST_DEADLINE(10);
    char big[10000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    lc_msg *m = lc_pack("[s, s, s, i]", big, big, big, 4);
    assert_non_null(m);
    const char *a = NULL;
    int four = 0;
    assert_int_equal(lc_unpack(m, "[s, *]", &a), 0);
    assert_int_equal(strlen(a), sizeof big - 1);
    assert_int_equal(lc_unpack(m, "[s, s, s, i]", NULL, NULL, NULL, &four), 0);
    assert_int_equal(four, 4);
    lc_msg_free(m);
}

static void test_nesting_limit(void **state)
{
    LC_TEST_DEADLINE(10);
    char fmt[200];
    /* 64 levels: fine */
    memset(fmt, '[', 64);
    fmt[64] = 'i';
    memset(fmt + 65, ']', 64);
    fmt[129] = '\0';
    lc_msg *m = lc_pack(fmt, 42);
    assert_non_null(m);
    int v = 0;
    assert_int_equal(lc_unpack(m, fmt, &v), 0);
    assert_int_equal(v, 42);
    lc_msg_free(m);

    /* 65 levels: a format error, in both directions */
    memset(fmt, '[', 65);
    fmt[65] = 'i';
    memset(fmt + 66, ']', 65);
    fmt[131] = '\0';
    lc_error e;
    assert_null(lc_pack_ex(&e, fmt, 42));
    assert_error(e, LC_EFORMAT, "format: nesting deeper than 64 at offset 64");
    m = lc_pack("i", 1);
    assert_int_equal(lc_unpack_ex(m, &e, fmt, &v), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: nesting deeper than 64 at offset 64");
    lc_msg_free(m);
}

/* ---- optional keys and '*' ------------------------------------------------ */

static void test_optional_keys(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:i}", "present", 1);
    int present = 0, absent = -5;
    lc_value *nested = (lc_value *)0x1;
    const char *s = "untouched";
    /* a missing optional key leaves every output of its value untouched, and
     * the arguments of the skipped value are consumed in step */
    assert_int_equal(lc_unpack(m, "{s?i, s?{s:s, s:v}, s:i}",
                               "absent", &absent, "gone", "s", &s, "n", &nested,
                               "present", &present), 0);
    assert_int_equal(absent, -5);
    assert_string_equal(s, "untouched");
    assert_ptr_equal(nested, (lc_value *)0x1);
    assert_int_equal(present, 1);
    assert_int_equal(lc_unpack(m, "{s?i}", "present", &absent), 0);
    assert_int_equal(absent, 1);
    lc_msg_free(m);
}

static void test_extra_elements_and_keys(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:[i,i,i], s:i}", "L", 1, 2, 3, "x", 9);
    int a = 0, x = 0;
    lc_error e;
    /* extra map keys are ignored, with or without '*' */
    assert_int_equal(lc_unpack(m, "{s:v}", "x", NULL), 0);
    assert_int_equal(lc_unpack(m, "{s:i *}", "x", &x), 0);
    assert_int_equal(x, 9);
    /* extra array elements need '*' */
    assert_int_equal(lc_unpack(m, "{s:[i, *]}", "L", &a), 0);
    assert_int_equal(a, 1);
    assert_int_equal(lc_unpack(m, "{s:[*]}", "L"), 0);
    assert_int_equal(lc_unpack_ex(m, &e, "{s:[i, i]}", "L", &a, &a), LC_ETYPE);
    assert_error(e, LC_ETYPE, "L: array has 3 elements, the format 2");
    /* too few elements: the missing one is named */
    assert_int_equal(lc_unpack_ex(m, &e, "{s:[i, i, i, i]}", "L", &a, &a, &a, &a), LC_ENOKEY);
    assert_error(e, LC_ENOKEY, "L[3]: missing array element");
    lc_msg_free(m);
}

/* ---- conversions and ranges ----------------------------------------------- */

static void test_number_conversions(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("[I, U, I, f]", (int64_t)-3, (uint64_t)UINT64_MAX, (int64_t)1 << 40, 0.5);
    double d1 = 0, d2 = 0;
    uint64_t u = 0;
    int64_t big = 0;
    /* 'f' accepts ints and uints */
    assert_int_equal(lc_unpack(m, "[f, f, *]", &d1, &d2), 0);
    assert_true(d1 == -3.0);
    assert_true(d2 == (double)UINT64_MAX);
    /* 'U' accepts non-negative ints */
    assert_int_equal(lc_unpack(m, "[*]"), 0);
    assert_int_equal(lc_unpack(m, "[v, v, U, *]", NULL, NULL, &u), 0);
    assert_true(u == (uint64_t)1 << 40);
    assert_int_equal(lc_unpack(m, "[v, v, I, *]", NULL, NULL, &big), 0);
    assert_true(big == (int64_t)1 << 40);
    lc_msg_free(m);

    /* 'I' accepts an LC_UINT that fits (the codec may produce one) */
    m = lc_msg_new();
    lc_value *v = lc__value_alloc(m, LC_UINT);
    v->u.u = 77;
    assert_int_equal(lc_msg_set_root(m, v), 0);
    assert_int_equal(lc_unpack(m, "I", &big), 0);
    assert_true(big == 77);
    lc_msg_free(m);
}

static void test_range_errors(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:I, s:I, s:U, s:I}", "big", (int64_t)1 << 40, "neg", (int64_t)-1,
                        "huge", (uint64_t)UINT64_MAX, "min", (int64_t)INT_MIN);
    lc_error e;
    int i = 123;
    int64_t I = 123;
    uint64_t U = 123;
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i}", "big", &i), LC_ERANGE);
    assert_error(e, LC_ERANGE, "big: 1099511627776 does not fit in int");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:U}", "neg", &U), LC_ERANGE);
    assert_error(e, LC_ERANGE, "neg: -1 does not fit in uint64");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:I}", "huge", &I), LC_ERANGE);
    assert_error(e, LC_ERANGE, "huge: 18446744073709551615 does not fit in int64");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i}", "huge", &i), LC_ERANGE);
    assert_int_equal(i, 123);
    assert_int_equal(I, 123);
    assert_true(U == 123);
    assert_int_equal(lc_unpack(m, "{s:i}", "min", &i), 0);
    assert_int_equal(i, INT_MIN);
    lc_msg_free(m);

    /* time nanoseconds must be in [0, 1e9) */
    assert_null(lc_pack_ex(&e, "{s:t}", "T", (int64_t)1, 1000000000));
    assert_error(e, LC_ERANGE, "T: nanoseconds 1000000000 out of range");
    assert_null(lc_pack_ex(&e, "t", (int64_t)1, -1));
    assert_error(e, LC_ERANGE, "nanoseconds -1 out of range");
}

/* ---- type errors and paths ------------------------------------------------ */

static void test_type_error_texts(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:s, s:[i, i, i], s:{s:[n, B]}}", "Op", "x", "Args", 1, 2, 3,
                        "Req", "Args", 1);
    lc_error e;
    const char *s;
    int i;
    bool b;
    double d;
    assert_int_equal(lc_unpack_ex(m, &e, "{s:[i, i, s]}", "Args", &i, &i, &s), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Args[2]: expected string, got int");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:{s:[n, i]}}", "Req", "Args", &i), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Req.Args[1]: expected int, got bool");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:{s:[B, *]}}", "Req", "Args", &b), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Req.Args[0]: expected bool, got nil");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:f}", "Op", &d), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Op: expected double, got string");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:n}", "Op"), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Op: expected nil, got string");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:{}}", "Args"), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Args: expected map, got array");
    assert_int_equal(lc_unpack_ex(m, &e, "[*]"), LC_ETYPE);
    assert_error(e, LC_ETYPE, "expected array, got map");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:{s:[b, *]}}", "Req", "Args", NULL, NULL), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Req.Args[0]: expected binary, got nil");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:t}", "Op", NULL, NULL), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Op: expected time, got string");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:S}", "Op", NULL), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Op: expected sender, got string");
    /* a key with a NUL or a control byte in it is shown whole, escaped */
    lc_msg *odd = lc_pack("{s#:s}", "a\0b\n", (size_t)4, "v");
    assert_int_equal(lc_unpack_ex(odd, &e, "{s#:i}", "a\0b\n", (size_t)4, &i), LC_ETYPE);
    assert_error(e, LC_ETYPE, "a\\x00b\\x0a: expected int, got string");
    lc_msg_free(odd);
    assert_int_equal(lc_unpack_ex(m, &e, "{s:R}", "Op", NULL), LC_ETYPE);
    assert_int_equal(lc_unpack_ex(m, &e, "{s:F}", "Op", NULL), LC_ETYPE);
    assert_error(e, LC_ETYPE, "Op: expected stream, got string");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:U}", "Op", NULL), LC_ETYPE);
    assert_int_equal(lc_unpack_ex(m, &e, "{s:I}", "Op", NULL), LC_ETYPE);
    /* lc_unpack returns the same code without the text */
    assert_int_equal(lc_unpack(m, "{s:i}", "Op", &i), LC_ETYPE);
    lc_msg_free(m);
}

static void test_missing_key_texts(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:{s:i}}", "Req", "Id", 1);
    lc_error e;
    int i;
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i}", "Ret", &i), LC_ENOKEY);
    assert_error(e, LC_ENOKEY, "Ret: missing required key");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:{s:i, s:i}}", "Req", "Id", &i, "Seq", &i), LC_ENOKEY);
    assert_error(e, LC_ENOKEY, "Req.Seq: missing required key");
    lc_msg_free(m);
}

static void test_invalid_arguments(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_error e;
    assert_null(lc_pack_ex(&e, NULL));
    assert_error(e, LC_EINVAL, "NULL format");
    assert_null(lc_pack(NULL));
    assert_null(lc_pack_ex(&e, "{s:s}", "Name", (const char *)NULL));
    assert_error(e, LC_EINVAL, "Name: NULL string");
    assert_null(lc_pack_ex(&e, "[i, {s:i}]", 1, (const char *)NULL, 2));
    assert_error(e, LC_EINVAL, "[1]: NULL map key");
    assert_null(lc_pack_ex(&e, "b", (const void *)NULL, (size_t)2));
    assert_error(e, LC_EINVAL, "NULL binary with length 2");
    assert_null(lc_pack_ex(&e, "S", (lc_sender *)NULL));
    assert_error(e, LC_EINVAL, "NULL sender");
    assert_null(lc_pack_ex(&e, "R", (lc_receiver *)NULL));
    assert_error(e, LC_EINVAL, "NULL receiver");
    assert_null(lc_pack_ex(&e, "[F]", -1));
    assert_error(e, LC_EBADF, "[0]: invalid fd -1");

    /* s# and b with NULL and length 0 are empty values, and an s# key the
     * empty key (it was "NULL map key" while the value was accepted) */
    lc_msg *m = lc_pack("[s#, b]", (const char *)NULL, (size_t)0, (const void *)NULL, (size_t)0);
    assert_non_null(m);
    lc_msg *k = lc_pack("{s#:i}", (const char *)NULL, (size_t)0, 5);
    assert_non_null(k);
    int kv = 0;
    assert_int_equal(lc_unpack(k, "{s:i}", "", &kv), 0);
    assert_int_equal(kv, 5);
    lc_msg_free(k);
    assert_int_equal(lc_unpack_ex(NULL, &e, "n"), LC_EINVAL);
    assert_error(e, LC_EINVAL, "NULL message");
    assert_int_equal(lc_unpack_ex(m, &e, NULL), LC_EINVAL);
    assert_error(e, LC_EINVAL, "NULL format");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i}", (const char *)NULL, NULL), LC_ETYPE);
    lc_msg_free(m);
    m = lc_pack("{}");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i}", (const char *)NULL, NULL), LC_EINVAL);
    assert_error(e, LC_EINVAL, "NULL map key");
    lc_msg_free(m);
}

/* ---- format errors -------------------------------------------------------- */

static void test_pack_format_errors(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_error e;
    assert_null(lc_pack_ex(&e, ""));
    assert_error(e, LC_EFORMAT, "format: unexpected end at offset 0");
    assert_null(lc_pack_ex(&e, "[i, i, }", 1, 2));
    assert_error(e, LC_EFORMAT, "format: unexpected '}' at offset 7");
    assert_null(lc_pack_ex(&e, "{i}", 1));
    assert_error(e, LC_EFORMAT, "format: expected 's' for a map key, got 'i' at offset 1");
    assert_null(lc_pack_ex(&e, "[i", 1));
    assert_error(e, LC_EFORMAT, "format: missing ']' at offset 2");
    assert_null(lc_pack_ex(&e, "{s:i", "a", 1));
    assert_error(e, LC_EFORMAT, "format: missing '}' at offset 4");
    assert_null(lc_pack_ex(&e, "{s}", "a"));
    assert_error(e, LC_EFORMAT, "format: unexpected '}' at offset 2");
    assert_null(lc_pack_ex(&e, "i i", 1, 2));
    assert_error(e, LC_EFORMAT, "format: more than one value at the top level at offset 2");
    assert_null(lc_pack_ex(&e, "x"));
    assert_error(e, LC_EFORMAT, "format: unexpected 'x' at offset 0");
    assert_null(lc_pack_ex(&e, "[\x01]"));
    assert_error(e, LC_EFORMAT, "format: unexpected \\x01 at offset 1");
    assert_null(lc_pack_ex(&e, "v", NULL));
    assert_error(e, LC_EFORMAT, "format: 'v' is only valid in lc_unpack at offset 0");
    assert_null(lc_pack_ex(&e, "[i*]", 1));
    assert_error(e, LC_EFORMAT, "format: '*' is only valid in lc_unpack at offset 2");
    assert_null(lc_pack_ex(&e, "{s?i}", "a", 1));
    assert_error(e, LC_EFORMAT, "format: '?' is only valid in lc_unpack at offset 2");
    /* a format error wins over an earlier data error: it is the bug to fix */
    assert_null(lc_pack_ex(&e, "[s, x]", (const char *)NULL));
    assert_int_equal(e.code, LC_EFORMAT);
}

static void test_unpack_format_errors(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("[i]", 1);
    lc_error e;
    int i = 0;
    assert_int_equal(lc_unpack_ex(m, &e, "[i, i, }", &i, &i), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: unexpected '}' at offset 7");
    assert_int_equal(lc_unpack_ex(m, &e, "[*i]", &i), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: '*' must come just before ']' at offset 2");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i*s:i}", "a", &i, "b", &i), LC_EFORMAT);
    assert_int_equal(lc_unpack_ex(m, &e, "?"), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: '?' must follow a map key 's' at offset 0");
    assert_int_equal(lc_unpack_ex(m, &e, "[i?]", &i), LC_EFORMAT);
    assert_int_equal(lc_unpack_ex(m, &e, "{i}", &i), LC_EFORMAT);
    assert_int_equal(lc_unpack_ex(m, &e, "*"), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: unexpected '*' at offset 0");
    assert_int_equal(lc_unpack_ex(m, &e, "[i] i", &i, &i), LC_EFORMAT);
    assert_int_equal(lc_unpack_ex(m, &e, "  "), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: unexpected end at offset 2");
    /* the format is checked before the data: a bad tail is found even though
     * the message would already fail at the first element */
    assert_int_equal(lc_unpack_ex(m, &e, "[s, ~]", NULL), LC_EFORMAT);
    assert_int_equal(i, 0);
    lc_msg_free(m);
}

static void test_unpack_format_error_wins_over_data_error(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_msg *m = lc_pack("{s:i}", "a", 1);
    lc_error e;
    int i = -7;
    /* the data fails at "a", the format only after it: the format error is
     * reported, with its own text */
    assert_int_equal(lc_unpack_ex(m, &e, "{s:s, s:i x}", "a", NULL, "b", &i), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: expected 's' for a map key, got 'x' at offset 10");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:i, s:[i]} {}", "a", &i, "b", &i), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: more than one value at the top level at offset 13");
    /* inside the value of an absent optional key too */
    assert_int_equal(lc_unpack_ex(m, &e, "{s?[i *i]}", "x", &i), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: '*' must come just before ']' at offset 7");
    assert_int_equal(i, -7);
    /* and over a message that cannot be unpacked at all */
    assert_int_equal(lc_msg_set_body(m, "x", 1, "text/plain"), 0);
    assert_int_equal(lc_unpack_ex(m, &e, "[i", &i), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: missing ']' at offset 2");
    assert_int_equal(lc_unpack_ex(m, &e, "[i]", &i), LC_ETYPE);
    assert_error(e, LC_ETYPE, "message has an opaque body (text/plain)");
    lc_msg_free(m);
}

static void test_unpack_format_error_after_checked_outputs_stores_nothing(void **state)
{
    LC_TEST_DEADLINE(10);
    int p[2];
    assert_int_equal(pipe(p), 0);
    close(p[1]);
    lc_msg *m = lc_pack("[i, F, i]", 1, p[0], 3);
    lc_error e;
    int a = -7, fd = -7, c = -7;
    /* a, fd and c pass their checks before the format turns out malformed */
    assert_int_equal(lc_unpack_ex(m, &e, "[i, F, i, * ~]", &a, &fd, &c), LC_EFORMAT);
    assert_error(e, LC_EFORMAT, "format: '*' must come just before ']' at offset 12");
    assert_int_equal(a, -7);
    assert_int_equal(fd, -7);
    assert_int_equal(c, -7);
    assert_false(lc_value_taken(lc_array_get(lc_msg_root(m), 1)));
    assert_int_equal(lc_unpack(m, "[i, F, i]", &a, &fd, &c), 0);
    assert_int_equal(a, 1);
    assert_int_equal(fd, p[0]);
    assert_int_equal(c, 3);
    lc_msg_free(m);
    assert_true(fd_open(fd));
    close(fd);
}

#define ADDR8(a, i) &(a)[i], &(a)[(i) + 1], &(a)[(i) + 2], &(a)[(i) + 3], \
                    &(a)[(i) + 4], &(a)[(i) + 5], &(a)[(i) + 6], &(a)[(i) + 7]
#define NUM8(i) (i), (i) + 1, (i) + 2, (i) + 3, (i) + 4, (i) + 5, (i) + 6, (i) + 7

static void test_unpack_more_outputs_than_recorded(void **state)
{
    LC_TEST_DEADLINE(10);
    /* lc_unpack records the outputs of up to 32 values while it checks; past
     * that it walks the format again to store them: same results, and still
     * nothing stored nor taken on failure */
    char fmt[128] = "[", fmt_bad[128]; /* fmt packs and unpacks the message */
    for (int k = 0; k < 40; k++)
        strcat(fmt, "i,");
    strcpy(fmt_bad, fmt);
    strcat(fmt, "F,s]");
    strcat(fmt_bad, "F,i]");
    int p[2];
    assert_int_equal(pipe(p), 0);
    close(p[1]);
    lc_msg *m = lc_pack(fmt, NUM8(0), NUM8(8), NUM8(16), NUM8(24), NUM8(32), p[0], "end");
    assert_non_null(m);

    int o[40], fd = -7;
    const char *end = NULL;
    for (int k = 0; k < 40; k++)
        o[k] = -7;
    lc_error e;
    assert_int_equal(lc_unpack_ex(m, &e, fmt_bad, ADDR8(o, 0), ADDR8(o, 8), ADDR8(o, 16), ADDR8(o, 24),
                                  ADDR8(o, 32), &fd, &fd), LC_ETYPE);
    assert_error(e, LC_ETYPE, "[41]: expected int, got string");
    for (int k = 0; k < 40; k++)
        assert_int_equal(o[k], -7);
    assert_int_equal(fd, -7);
    assert_false(lc_value_taken(lc_array_get(lc_msg_root(m), 40)));

    assert_int_equal(lc_unpack_ex(m, &e, fmt, ADDR8(o, 0), ADDR8(o, 8), ADDR8(o, 16), ADDR8(o, 24),
                                  ADDR8(o, 32), &fd, &end), 0);
    for (int k = 0; k < 40; k++)
        assert_int_equal(o[k], k);
    assert_int_equal(fd, p[0]);
    assert_string_equal(end, "end");
    assert_true(lc_value_taken(lc_array_get(lc_msg_root(m), 40)));
    lc_msg_free(m);
    assert_true(fd_open(fd));
    close(fd);
}

/* ---- attachments: ownership ----------------------------------------------- */

static void test_fd_round_trip(void **state)
{
    LC_TEST_DEADLINE(10);
    int p[2];
    assert_int_equal(pipe(p), 0);
    lc_msg *m = lc_pack("{s:F, s:F}", "r", p[0], "w", p[1]);
    assert_non_null(m);
    lc_value *vr = lc_map_get(lc_msg_root(m), "r");
    assert_int_equal(lc_value_type(vr), LC_STREAM);
    assert_int_equal(lc_value_stream_mode(vr), LC_STREAM_DUPLEX);

    int r = -1, w = -1;
    assert_int_equal(lc_unpack(m, "{s:F, s:F}", "r", &r, "w", &w), 0);
    assert_int_equal(r, p[0]);
    assert_int_equal(w, p[1]);
    assert_true(lc_value_taken(vr));
    lc_msg_free(m);
    /* taken: still open, and they are the same pipe */
    assert_int_equal(write(w, "z", 1), 1);
    char c = 0;
    assert_int_equal(read(r, &c, 1), 1);
    assert_int_equal(c, 'z');
    close(r);
    close(w);
}

static void test_unpack_takes_twice_gives_etaken(void **state)
{
    LC_TEST_DEADLINE(10);
    int p[2];
    assert_int_equal(pipe(p), 0);
    close(p[1]);
    lc_msg *m = lc_pack("{s:F}", "fd", p[0]);
    lc_error e;
    int fd = -1, again = -7;
    assert_int_equal(lc_unpack_ex(m, &e, "{s:F}", "fd", &fd), 0);
    assert_int_equal(fd, p[0]);
    assert_int_equal(lc_unpack_ex(m, &e, "{s:F}", "fd", &again), LC_ETAKEN);
    assert_error(e, LC_ETAKEN, "fd: stream already taken");
    assert_int_equal(again, -7);
    lc_msg_free(m);
    assert_true(fd_open(fd));
    close(fd);
}

static void test_unpack_same_attachment_twice_in_one_format(void **state)
{
    LC_TEST_DEADLINE(10);
    int p[2];
    assert_int_equal(pipe(p), 0);
    close(p[1]);
    lc_msg *m = lc_pack("{s:F}", "fd", p[0]);
    lc_error e;
    int a = -7, b = -7;
    /* both keys resolve to one stream: refused in the check pass, so nothing
     * is taken (not even the first) */
    assert_int_equal(lc_unpack_ex(m, &e, "{s:F, s:F}", "fd", &a, "fd", &b), LC_ETAKEN);
    assert_error(e, LC_ETAKEN, "fd: stream taken twice by the format");
    assert_int_equal(a, -7);
    assert_int_equal(b, -7);
    assert_false(lc_value_taken(lc_map_get(lc_msg_root(m), "fd")));
    /* the check pass leaves no marks behind: a correct format then works */
    assert_int_equal(lc_unpack(m, "{s:F}", "fd", &a), 0);
    assert_int_equal(a, p[0]);
    lc_msg_free(m);
    close(a);
}

static void test_failed_unpack_takes_nothing(void **state)
{
    LC_TEST_DEADLINE(10);
    int before = lc_test_count_fds();
    int p[2];
    assert_int_equal(pipe(p), 0);
    lc_msg *m = lc_pack("{s:F, s:s, s:F}", "in", p[0], "n", "not a number", "out", p[1]);
    assert_non_null(m);
    int in = -7, out = -7, n = -7;
    const char *name = "untouched";
    lc_error e;
    /* the failure is after both F in format order: still nothing is stored */
    assert_int_equal(lc_unpack_ex(m, &e, "{s:F, s:F, s:s, s:i}", "in", &in, "out", &out,
                                  "n", &name, "n", &n), LC_ETYPE);
    assert_error(e, LC_ETYPE, "n: expected int, got string");
    assert_int_equal(in, -7);
    assert_int_equal(out, -7);
    assert_int_equal(n, -7);
    assert_string_equal(name, "untouched");
    assert_true(fd_open(p[0]) && fd_open(p[1]));
    lc_value *root = lc_msg_root(m);
    assert_false(lc_value_taken(lc_map_get(root, "in")));
    assert_false(lc_value_taken(lc_map_get(root, "out")));
    lc_msg_free(m); /* the fds were never taken: the message closes them */
    assert_false(fd_open(p[0]));
    assert_false(fd_open(p[1]));
    assert_int_equal(lc_test_count_fds(), before);
}

static void test_null_output_checks_without_taking(void **state)
{
    LC_TEST_DEADLINE(10);
    int p[2];
    assert_int_equal(pipe(p), 0);
    close(p[1]);
    lc_msg *m = lc_pack("[F]", p[0]);
    assert_int_equal(lc_unpack(m, "[F]", NULL), 0);
    assert_false(lc_value_taken(lc_array_get(lc_msg_root(m), 0)));
    lc_msg_free(m);
    assert_false(fd_open(p[0]));
}

static void test_pack_failure_closes_every_fd(void **state)
{
    LC_TEST_DEADLINE(10);
    int before = lc_test_count_fds();
    int p[2], q[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pipe(q), 0);
    lc_error e;
    /* the failure (NULL string) sits between the fds: the ones before it are
     * in the message being built, the ones after it are closed as they are
     * read from the argument list */
    assert_null(lc_pack_ex(&e, "{s:F, s:[s, F], s:{s:F}, s:F}", "a", p[0], "b",
                           (const char *)NULL, p[1], "c", "d", q[0], "e", q[1]));
    assert_error(e, LC_EINVAL, "b[0]: NULL string");
    assert_false(fd_open(p[0]));
    assert_false(fd_open(p[1]));
    assert_false(fd_open(q[0]));
    assert_false(fd_open(q[1]));
    assert_int_equal(lc_test_count_fds(), before);

    /* an invalid fd is reported and never closed; the valid one is */
    assert_int_equal(pipe(p), 0);
    close(p[1]);
    assert_null(lc_pack_ex(&e, "[F, F]", p[1], p[0]));
    char want[64];
    snprintf(want, sizeof want, "[0]: invalid fd %d", p[1]);
    assert_error(e, LC_EBADF, want);
    assert_false(fd_open(p[0]));
    assert_int_equal(lc_test_count_fds(), before);
}

static void test_pack_format_error_closes_fds_before_it(void **state)
{
    LC_TEST_DEADLINE(10);
    int p[2];
    assert_int_equal(pipe(p), 0);
    lc_error e;
    assert_null(lc_pack_ex(&e, "[F, F, x]", p[0], p[1]));
    assert_int_equal(e.code, LC_EFORMAT);
    assert_false(fd_open(p[0]));
    assert_false(fd_open(p[1]));

    /* top-level values after the first are walked too (a missing '{}') */
    assert_int_equal(pipe(p), 0);
    assert_null(lc_pack_ex(&e, "s:F, s:F", "a", p[0], "b", p[1]));
    assert_error(e, LC_EFORMAT, "format: more than one value at the top level at offset 2");
    assert_false(fd_open(p[0]));
    assert_false(fd_open(p[1]));
}

/* ---- attachments: channel ends -------------------------------------------- */

static void test_sender_receiver_round_trip(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r, *r2 = NULL;
    lc_sender *s, *s2 = NULL;
    pipe_or_skip(&r, &s, 1);
    lc_msg *m = lc_pack("{s:S, s:R}", "tx", s, "rx", r);
    assert_non_null(m);
    assert_int_equal(lc_value_type(lc_map_get(lc_msg_root(m), "tx")), LC_SENDER);
    lc_error e;
    assert_int_equal(lc_unpack_ex(m, &e, "{s:S, s:R}", "tx", &s2, "rx", &r2), 0);
    assert_ptr_equal(s2, s);
    assert_ptr_equal(r2, r);
    assert_int_equal(lc_unpack_ex(m, &e, "{s:S}", "tx", &s2), LC_ETAKEN);
    assert_error(e, LC_ETAKEN, "tx: sender already taken");
    assert_int_equal(lc_unpack_ex(m, &e, "{s:R}", "rx", &r2), LC_ETAKEN);
    assert_error(e, LC_ETAKEN, "rx: receiver already taken");
    lc_msg_free(m);

    /* taken ends work: a message with a reply channel inside it */
    lc_receiver *rr;
    lc_sender *rs;
    pipe_or_skip(&rr, &rs, 1);
    lc_msg *req = lc_pack("{s:s, s:S}", "Op", "ping", "Reply", rs);
    assert_int_equal(lc_send(s2, req, 0), 0);
    lc_msg *got = NULL;
    assert_int_equal(lc_recv(r2, &got, 0), 0);
    lc_sender *reply = NULL;
    const char *op = NULL;
    assert_int_equal(lc_unpack(got, "{s:s, s:S}", "Op", &op, "Reply", &reply), 0);
    assert_string_equal(op, "ping");
    assert_int_equal(lc_send(reply, lc_pack("s", "pong"), 0), 0);
    lc_msg_free(got);
    lc_sender_release(reply); /* last ref of the reply sender: closed after "pong" */
    lc_msg *pong = NULL;
    assert_int_equal(lc_recv(rr, &pong, 0), 0);
    assert_int_equal(lc_unpack(pong, "s", &op), 0);
    assert_string_equal(op, "pong");
    lc_msg_free(pong);
    assert_int_equal(lc_recv(rr, &pong, 0), LC_EOF);
    lc_receiver_release(rr);
    lc_sender_release(s2);
    lc_receiver_release(r2);
}

static void test_pack_failure_releases_channel_ends(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r1, *r2;
    lc_sender *s1, *s2;
    pipe_or_skip(&r1, &s1, 1);
    pipe_or_skip(&r2, &s2, 1);
    lc_error e;
    /* s1 before the failure (in the message), s2's receiver after it */
    assert_null(lc_pack_ex(&e, "[S, i, s, R]", s1, 1, (const char *)NULL, r2));
    assert_error(e, LC_EINVAL, "[2]: NULL string");
    lc_msg *got = NULL;
    assert_int_equal(lc_recv(r1, &got, 0), LC_EOF);           /* s1 released */
    lc_msg *x = lc_msg_new();
    assert_int_equal(lc_send(s2, x, 0), LC_ECLOSED);          /* r2 released */
    lc_msg_free(x);
    lc_receiver_release(r1);
    lc_sender_release(s2);
}

static void test_failed_unpack_keeps_sender_in_message(void **state)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    pipe_or_skip(&r, &s, 1);
    lc_msg *m = lc_pack("[S, i]", s, 5);
    lc_sender *out = NULL;
    const char *str = NULL;
    assert_int_equal(lc_unpack(m, "[S, s]", &out, &str), LC_ETYPE);
    assert_null(out);
    assert_false(lc_value_taken(lc_array_get(lc_msg_root(m), 0)));
    lc_msg *got = NULL;
    assert_int_equal(lc_recv(r, &got, 0), LC_ETIMEDOUT); /* still open */
    lc_msg_free(m);                                       /* released now */
    assert_int_equal(lc_recv(r, &got, 0), LC_EOF);
    lc_receiver_release(r);
}

#define T(f) cmocka_unit_test_setup_teardown(f, lc_test_setup, lc_test_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_scalars_round_trip),
        T(test_nested_round_trip),
        T(test_separators_are_ignored),
        T(test_length_keys),
        T(test_value_v_is_borrowed),
        T(test_nil_root_of_new_message),
        T(test_simple_struct_uses_only_the_inline_arena),
        T(test_big_message_grows_arena),
        T(test_nesting_limit),
        T(test_optional_keys),
        T(test_extra_elements_and_keys),
        T(test_number_conversions),
        T(test_range_errors),
        T(test_type_error_texts),
        T(test_missing_key_texts),
        T(test_invalid_arguments),
        T(test_pack_format_errors),
        T(test_unpack_format_errors),
        T(test_unpack_format_error_wins_over_data_error),
        T(test_unpack_format_error_after_checked_outputs_stores_nothing),
        T(test_unpack_more_outputs_than_recorded),
        T(test_fd_round_trip),
        T(test_unpack_takes_twice_gives_etaken),
        T(test_unpack_same_attachment_twice_in_one_format),
        T(test_failed_unpack_takes_nothing),
        T(test_null_output_checks_without_taking),
        T(test_pack_failure_closes_every_fd),
        T(test_pack_format_error_closes_fds_before_it),
        T(test_sender_receiver_round_trip),
        T(test_pack_failure_releases_channel_ends),
        T(test_failed_unpack_keeps_sender_in_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

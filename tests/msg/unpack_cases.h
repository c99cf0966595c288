/*
 * unpack_cases.h - lc_unpack formats run over one message twice, as a wire-
 * form message and as its tree twin (lc_msg_root), by test_msg_wire and by
 * fuzz_msgpack (over every fuzzed message kept as its bytes). The two walks
 * must give the same result, error and outputs: outs_differ names the first
 * output that differs.
 *
 * The formats cover every letter, '?', '*', '#', missing keys, wrong types,
 * int/uint range, NULL outputs, nested arrays, array length and format
 * errors, times, and the letters the wire walk leaves to the tree (v, S).
 */
#ifndef LC_TESTS_UNPACK_CASES_H
#define LC_TESTS_UNPACK_CASES_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "libchan.h"

typedef struct outs {
    bool B;
    int i, i2;
    int64_t I;
    uint64_t U;
    double f, f2;
    const char *s, *s2;
    size_t sl, bl;
    const void *b;
    void *v; /* 'v' and 'S': compared for being set only */
} outs;

typedef int (*ucase)(lc_msg *m, lc_error *e, outs *o);

#define UCASE(name, ...) \
    static int name(lc_msg *m, lc_error *e, outs *o) { return lc_unpack_ex(m, e, __VA_ARGS__); }

UCASE(u_all, "{s:i, s:I, s:U, s:f, s:B, s:s, s:b, s:n}", "i", &o->i, "I", &o->I, "U", &o->U, "f", &o->f, "B",
      &o->B, "s", &o->s, "b", &o->b, &o->bl, "n")
UCASE(u_int_from_big, "{s:i}", "I", &o->i)
UCASE(u_uint_from_neg, "{s:U}", "i", &o->U)
UCASE(u_int64_from_uint, "{s:I}", "U", &o->I)
UCASE(u_double_from_ints, "{s:f, s:f}", "i", &o->f, "U", &o->f2)
UCASE(u_missing, "{s:i, s:i}", "i", &o->i, "nope", &o->i2)
UCASE(u_optional, "{s:i, s?i}", "i", &o->i, "nope", &o->i2)
UCASE(u_optional_nested, "{s?[i, {s:i}], s:i}", "nope", &o->i2, "x", &o->i, "i", &o->i)
UCASE(u_wrong_type, "{s:s}", "i", &o->s)
UCASE(u_nil_mismatch, "{s:n}", "i")
UCASE(u_string_hash, "{s:s#, s#:s}", "s", &o->s, &o->sl, "sXX", (size_t)2, &o->s2)
UCASE(u_null_outputs, "{s:i, s:s, s:b}", "i", NULL, "s", NULL, "b", NULL, NULL)
UCASE(u_length_only, "{s:s#}", "s", NULL, &o->sl)
UCASE(u_array, "{s:[i, i, {s:s}]}", "a", &o->i, &o->i2, "k", &o->s)
UCASE(u_array_short_format, "{s:[i, i]}", "a", &o->i, &o->i2)
UCASE(u_array_star, "{s:[i, *]}", "a", &o->i)
UCASE(u_array_long_format, "{s:[i, i, {s:s}, i]}", "a", &o->i, &o->i2, "k", &o->s, &o->i)
UCASE(u_extra_keys_star, "{s:i, *}", "i", &o->i)
UCASE(u_dup_key_first_wins, "{s:i}", "d", &o->i)
UCASE(u_key_twice, "{s:i, s:i}", "i", &o->i, "i", &o->i2)
UCASE(u_top_array, "[i, s, f]", &o->i, &o->s, &o->f)
UCASE(u_not_a_map, "{s:i}", "i", &o->i)
UCASE(u_format_error, "{s:i", "i", &o->i)
UCASE(u_format_error_after_data_error, "{s:s, s:x}", "i", &o->s, "i")
UCASE(u_trailing, "{s:i} i", "i", &o->i, &o->i2)
UCASE(u_bad_star, "{s:[*, i]}", "a", &o->i)
UCASE(u_value_v, "{s:v}", "i", &o->v)
UCASE(u_time, "{s:t}", "i", &o->I, &o->i)
UCASE(u_time_value, "{s:t, s:[t, *]}", "t", &o->I, &o->i, "tl", (int64_t *)&o->U, &o->i2)
UCASE(u_time_as_int, "{s:I}", "t", &o->I)
UCASE(u_sender, "{s:S}", "i", &o->v)
UCASE(u_null_key, "{s:i}", (const char *)NULL, &o->i)

static const struct {
    const char *name;
    ucase f;
} ucases[] = {
#define C(x) { #x, x }
    C(u_all), C(u_int_from_big), C(u_uint_from_neg), C(u_int64_from_uint), C(u_double_from_ints),
    C(u_missing), C(u_optional), C(u_optional_nested), C(u_wrong_type), C(u_nil_mismatch),
    C(u_string_hash), C(u_null_outputs), C(u_length_only), C(u_array), C(u_array_short_format),
    C(u_array_star), C(u_array_long_format), C(u_extra_keys_star), C(u_dup_key_first_wins),
    C(u_key_twice), C(u_top_array), C(u_not_a_map), C(u_format_error), C(u_format_error_after_data_error),
    C(u_trailing), C(u_bad_star), C(u_value_v), C(u_time), C(u_time_value), C(u_time_as_int), C(u_sender), C(u_null_key),
#undef C
};

/* The name of the first output that differs between a and b, or NULL. */
static inline const char *outs_differ(const outs *a, const outs *b)
{
    if (a->B != b->B)
        return "B";
    if (a->i != b->i || a->i2 != b->i2)
        return "i";
    if (a->I != b->I)
        return "I";
    if (a->U != b->U)
        return "U";
    if (memcmp(&a->f, &b->f, sizeof a->f) != 0 || memcmp(&a->f2, &b->f2, sizeof a->f2) != 0)
        return "f";
    if (a->sl != b->sl || a->bl != b->bl)
        return "a length";
    if ((a->s == NULL) != (b->s == NULL) || (a->s != NULL && strcmp(a->s, b->s) != 0))
        return "s";
    if ((a->s2 == NULL) != (b->s2 == NULL) || (a->s2 != NULL && strcmp(a->s2, b->s2) != 0))
        return "s2";
    if ((a->b == NULL) != (b->b == NULL) || (a->b != NULL && a->bl > 0 && memcmp(a->b, b->b, a->bl) != 0))
        return "b";
    if ((a->v == NULL) != (b->v == NULL))
        return "v";
    return NULL;
}

#endif

/*
 * hexbytes.h - test helpers for byte-exact checks: hand-written expected bytes
 * as text ("84 a5 'Value' 2a": hex pairs and 'quoted text'), and a comparison
 * that prints both sides when they differ. Include after <cmocka.h>.
 */
#ifndef LC_HEXBYTES_H
#define LC_HEXBYTES_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Parses text into out (at most cap bytes); returns the byte count. */
static inline size_t hx(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (*s) {
        if (*s == ' ') {
            s++;
        } else if (*s == '\'') {
            s++;
            while (*s && *s != '\'') {
                assert_true(n < cap);
                out[n++] = (uint8_t)*s++;
            }
            assert_int_equal(*s, '\'');
            s++;
        } else {
            unsigned v;
            assert_int_equal(sscanf(s, "%2x", &v), 1);
            assert_true(n < cap);
            out[n++] = (uint8_t)v;
            s += 2;
        }
    }
    return n;
}

/* Declares uint8_t name[] holding the bytes of text, and name##_n. */
#define HX(name, text)                \
    uint8_t name[2048];               \
    size_t name##_n = hx(text, name, sizeof name)

static inline void hx_dump(const char *what, const uint8_t *p, size_t n)
{
    fprintf(stderr, "%s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 96; i++)
        fprintf(stderr, " %02x", p[i]);
    fprintf(stderr, n > 96 ? " ...\n" : "\n");
}

static inline void assert_bytes(const uint8_t *got, size_t gn, const uint8_t *exp, size_t en)
{
    if (gn != en || memcmp(got, exp, en) != 0) {
        hx_dump("got     ", got, gn);
        hx_dump("expected", exp, en);
        fail_msg("bytes differ");
    }
}

#endif

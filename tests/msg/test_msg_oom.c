/*
 * test_msg_oom.c - out of memory while reading a message: the n-th
 * allocation fails (malloc, calloc and realloc are wrapped with the linker's
 * --wrap, see CMakeLists.txt), for every n until the operation needs no more,
 * and each failure must be the documented one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "libchan.h"
#include "msg/msg_internal.h"
#include "testutil.h"

/* ---- fault injection ------------------------------------------------------ */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

static bool armed;
static long countdown; /* allocations left before the one that fails */
static bool failed;    /* the armed failure happened */

static bool fail_now(void)
{
    if (!armed)
        return false;
    if (countdown-- > 0)
        return false;
    armed = false; /* one failure per run: the rest must cope with it */
    failed = true;
    return true;
}

void *__wrap_malloc(size_t n)
{
    return fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return fail_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return fail_now() ? NULL : __real_realloc(p, n);
}

static void arm(long n)
{
    countdown = n;
    failed = false;
    armed = true;
}

/* ---- tests --------------------------------------------------------------- */

static char big[5000];

/* A wire-form message (lc_pack's bytes) whose tree needs more than the
 * message's first arena block. */
static lc_msg *wire_msg(void)
{
    lc_msg *m = lc_pack("{s:i, s:s, s:[i,i,{s:s}]}", "a", 1, "b", big, "c", 1, 2, "d", big);
    assert_non_null(m);
    assert_non_null(m->wire);
    return m;
}

/* lc_unpack of a wire-form message through its tree ('v' is not read from
 * the bytes): when the tree cannot be built, LC_ENOMEM. It was LC_ETYPE
 * "expected map, got nil" (lc_msg_root's stand-in nil; found by a review
 * helper). Then the documented way to tell: lc_msg_root gives a nil of no
 * message, lc_unpack(m, "v", ...) LC_ENOMEM, and once memory is back both
 * give the map. */
static void test_unpack_reports_enomem_when_the_tree_cannot_be_built(void **state)
{
    (void)state;
    LC_TEST_DEADLINE(30);
    memset(big, 'x', sizeof big - 1);
    int nomem = 0;
    for (long n = 0;; n++) {
        assert_true(n < 1000);
        lc_msg *m = wire_msg();
        int a = 0;
        const char *b = NULL;
        lc_value *c = NULL;
        lc_error e;
        arm(n);
        int rc = lc_unpack_ex(m, &e, "{s:i, s:s, s:v}", "a", &a, "b", &b, "c", &c);
        armed = false;
        if (rc != 0 && rc != LC_ENOMEM)
            fail_msg("allocation %ld failed: %d (%s)", n, rc, e.text);
        if (rc == LC_ENOMEM) {
            nomem++;
            assert_null(c); /* nothing stored */
            lc_value *root = lc_msg_root(m);
            assert_int_equal(lc_value_type(root), LC_MAP); /* built now */
        } else {
            assert_int_equal(a, 1);
            assert_int_equal(lc_value_type(c), LC_ARRAY);
        }
        lc_msg_free(m);
        if (!failed)
            break; /* it needed fewer than n + 1 allocations */
    }
    assert_true(nomem > 0);

    /* lc_msg_root out of memory, and how a caller tells */
    bool seen = false;
    for (long n = 0; !seen; n++) {
        assert_true(n < 1000);
        lc_msg *m = wire_msg();
        arm(n);
        lc_value *root = lc_msg_root(m);
        armed = false;
        if (!failed) {
            lc_msg_free(m);
            break;
        }
        if (lc_value_type(root) == LC_NIL) {
            seen = true;
            lc_value *v = NULL;
            arm(0);
            assert_int_equal(lc_unpack(m, "v", &v), LC_ENOMEM);
            armed = false;
            assert_null(v);
            assert_int_equal(lc_unpack(m, "v", &v), 0);
            assert_int_equal(lc_value_type(v), LC_MAP);
            assert_ptr_equal(lc_msg_root(m), v);
        }
        lc_msg_free(m);
    }
    assert_true(seen);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unpack_reports_enomem_when_the_tree_cannot_be_built,
                                        lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

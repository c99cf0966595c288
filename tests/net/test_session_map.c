/*
 * test_session_map.c - the session's small maps (uint64 key -> pointer,
 * open addressing with tombstones; src/session/map.c), against a plain
 * array as the reference: random puts, gets and deletes, in the churn a
 * session sees (streams opened and ended all session long, few alive at
 * once) and with many keys alive; deletes that empty tombstone runs must
 * keep every live key reachable, and the table must stay small.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>

#include "session/session_internal.h"
#include "testutil.h"

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* keys 0..nkeys-1 (scaled, so that they collide in small tables) */
static void churn(size_t nkeys, size_t live_max, long rounds, uint64_t seed)
{
    lc_map m = {0};
    uintptr_t *ref = calloc(nkeys, sizeof *ref); /* 0: absent */
    assert_non_null(ref);
    size_t live = 0, max_cap = 0;
    for (long r = 0; r < rounds; r++) {
        size_t k = (size_t)(rnd(&seed) % nkeys);
        uint64_t key = (uint64_t)k * 2 + 1;
        bool add = ref[k] == 0 && live < live_max && rnd(&seed) % 2 == 0;
        if (add) {
            ref[k] = (uintptr_t)r * 8 + 8;
            assert_int_equal(lc__map_put(&m, key, (void *)ref[k]), 0);
            live++;
        } else if (ref[k] != 0 && rnd(&seed) % 2 == 0) {
            assert_ptr_equal(lc__map_del(&m, key), (void *)ref[k]);
            ref[k] = 0;
            live--;
        } else {
            assert_ptr_equal(lc__map_get(&m, key), (void *)ref[k]);
        }
        assert_int_equal(m.len, live);
        if (m.cap > max_cap)
            max_cap = m.cap;
        if (r % 997 == 0)
            for (size_t i = 0; i < nkeys; i++)
                assert_ptr_equal(lc__map_get(&m, (uint64_t)i * 2 + 1), (void *)ref[i]);
    }
    /* sized for what is alive, not for every key ever put */
    assert_true(max_cap <= 16 || max_cap <= 8 * live_max);
    size_t slots_used = 0;
    for (size_t i = 0; i < m.cap; i++)
        slots_used += m.slots[i].val != NULL;
    assert_int_equal(slots_used, m.used);
    lc__map_free(&m);
    free(ref);
}

static void test_map_churn_few_alive(void **state)
{
    LC_TEST_DEADLINE(30);
    churn(1000, 3, 200000, 88172645463325252ull);
}

static void test_map_many_alive(void **state)
{
    LC_TEST_DEADLINE(30);
    churn(5000, 4000, 300000, 2463534242ull);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_map_churn_few_alive, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_map_many_alive, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

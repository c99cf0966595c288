/*
 * deadline.h - timeouts in milliseconds (the API's unit; negative: none) as
 * absolute times in nanoseconds, saturating instead of overflowing: a
 * timeout too large to add (INT64_MAX ms, say) is "no deadline in practice",
 * not a deadline in the past (it used to make lc_accept, lc_dial over TCP and
 * a network lc_recv time out at once, and a huge ref_timeout_ms spin the
 * ref timer; found by a review helper, UBSan: signed overflow).
 */
#ifndef LC_COMMON_DEADLINE_H
#define LC_COMMON_DEADLINE_H

#include <stdint.h>

/* ms as ns, at most INT64_MAX (ms >= 0). */
static inline int64_t lc__ms_to_ns(int64_t ms)
{
    return ms > INT64_MAX / 1000000 ? INT64_MAX : ms * 1000000;
}

/* now_ns + timeout_ms, -1 for a negative timeout (none), at most INT64_MAX. */
static inline int64_t lc__deadline_ns(int64_t now_ns, int64_t timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    int64_t d = lc__ms_to_ns(timeout_ms);
    return d > INT64_MAX - now_ns ? INT64_MAX : now_ns + d;
}

#endif

/*
 * chan_internal.h - what the rest of the library (and the tests) may call in
 * the channel core (src/core). Never installed.
 */
#ifndef LC_CHAN_INTERNAL_H
#define LC_CHAN_INTERNAL_H

#include "libchan.h"

/* Releases a channel end held by a message being freed. Same as the public
 * release calls; named here so src/msg does not depend on their spelling. */
#define lc__sender_drop(s) lc_sender_release(s)
#define lc__receiver_drop(r) lc_receiver_release(r)

/* Number of blocked senders (senders=true) or receivers queued on the channel
 * of s (or of r when s is NULL), stale select entries included. For tests that
 * must wait until a thread is really blocked, without sleeping. */
size_t lc__chan_waiting(lc_sender *s, lc_receiver *r, bool senders);

#endif

/*
 * chan_internal.h - what the rest of the library may call in the channel core
 * (src/core). Never installed.
 */
#ifndef LC_CHAN_INTERNAL_H
#define LC_CHAN_INTERNAL_H

#include "libchan.h"

/* Releases a channel end held by a message being freed. Same as the public
 * release calls; named here so src/msg does not depend on their spelling. */
#define lc__sender_drop(s) lc_sender_release(s)
#define lc__receiver_drop(r) lc_receiver_release(r)

#endif

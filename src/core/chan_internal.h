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

/* ---- for the session layer ---------------------------------------------- */

/* Closes the channel of s like lc_close, but receivers get `err` (< 0)
 * instead of LC_EOF once the queue is drained: a session that lost its
 * carrier reports why. The first error set wins. */
int lc__close_error(lc_sender *s, int err);

typedef struct lc_chan lc_chan;

/* The error a closed channel ends with (what lc__close_error set), 0 for a
 * plain close (LC_EOF). For a network Sender's close op: a channel closed
 * with an error is reset on the wire, not ended with FIN. */
int lc__chan_close_err(lc_chan *c);

/* The party that receives on r (a session pumping it) is gone: from now on
 * sends fail (LC_ECLOSED), what is queued is dropped (fds closed), and
 * receives on r end with err (< 0) at once, a pending one included. r stays
 * valid until released. */
void lc__receiver_abandon(lc_receiver *r, int err);

/* Internal positive codes: "not now, retry later" and "registered". */
#define LC__WOULD_BLOCK 1
#define LC__PENDING 2

/* Puts ms[0..n) into s's buffered channel in order without blocking, waking
 * receivers once for the lot (one fence, not one per message). *taken says
 * how many went in (they belong to the channel). Returns 0 when all did,
 * LC_ETIMEDOUT when the ring filled, LC_ECLOSED when the receiving side is
 * gone, LC_EINVAL (nothing taken) for a channel without a ring. */
int lc__send_batch(lc_sender *s, lc_msg **ms, size_t n, size_t *taken);

/*
 * Callback operations. lc__send_async / lc__recv_async complete at once when
 * they can (returning 0, LC_ECLOSED or LC_EOF, with *m set for a receive), or
 * return LC__PENDING with *op set: cb then runs exactly once, later, with the
 * result (and the received message, which the callback owns), unless
 * lc__async_cancel(op) returns true first. cb runs on whatever thread
 * completed the operation (an application thread inside lc_send/lc_recv, or
 * the engine) after every channel lock is dropped, possibly before
 * lc__send_async/lc__recv_async has returned; it must not block. *op is set
 * before the operation becomes visible and stays valid until the callback
 * returns. lc__async_cancel returns false when the callback has run or is
 * about to, or when the op was woken to retry (something changed on the
 * channel) and is waiting again: its callback then runs with the next
 * change, not at once. The caller must then let it run; a caller that cancels must
 * serialise with its callback (e.g. a lock both take) so it never cancels an
 * op whose callback already returned. A cancelled send leaves m with the caller.
 */
typedef struct lc_async lc_async;
typedef void (*lc_async_cb)(void *ctx, int result, lc_msg *m);
int lc__send_async(lc_sender *s, lc_msg *m, lc_async_cb cb, void *ctx, lc_async **op);
int lc__recv_async(lc_receiver *r, lc_msg **m, lc_async_cb cb, void *ctx, lc_async **op);
bool lc__async_cancel(lc_async *op);

/*
 * Room watch, for the one party filling a ring (a session delivering into a
 * network Receiver's queue): rather than one callback send per message once
 * the ring is full, wait until `room` slots are free and refill in a batch.
 * Returns 0 when that many are free already (cb not called), LC__PENDING with
 * *op set when cb(ctx, result, NULL) will run exactly once, on the thread
 * whose receive made the room (0), or that released the last Receiver
 * (LC_ECLOSED; also 0 may come for a closed ring: the next send then fails).
 * LC_EINVAL for channels without a ring, or when a watch is set already. lc__room_cancel is true when it withdrew op before it fired.
 */
int lc__room_watch(lc_sender *s, size_t room, lc_async_cb cb, void *ctx, lc_async **op);
bool lc__room_cancel(lc_sender *s, lc_async *op);

/*
 * Network Senders: lc_send on them calls try_send on the calling thread (the
 * session encodes and writes); blocked senders and select cases wait on the
 * channel and retry when the session calls lc__chan_wake_senders.
 *   try_send: 0 (took m), LC__WOULD_BLOCK (keep m, wait), or a negative error
 *             (LC_ECLOSED once closed; m not taken).
 *   writable: true when try_send would not return LC__WOULD_BLOCK (also once
 *             closed). Called without channel locks held, and with.
 *   close:    lc_close or the last release: send FIN. Called once.
 *   release:  the last reference is gone (after close): drop ctx.
 * *chan (borrowed until release runs) is what lc__chan_wake_senders takes.
 */
typedef struct lc__net_ops {
    int (*try_send)(void *ctx, lc_msg *m);
    bool (*writable)(void *ctx);
    void (*close)(void *ctx);
    void (*release)(void *ctx);
    /* as try_send, and the message ends the channel (lc_send_last); NULL:
     * lc_send_last sends, then closes */
    int (*try_send_last)(void *ctx, lc_msg *m);
    /* What opens a full window comes by reading the carrier: the same as
     * lc__feeder_ops.passive (lc_select, a pollable fd: once per channel)
     * and .waiting (a blocked lc_send), for the sending side. */
    void (*passive)(void *ctx);
    void (*waiting)(void *ctx, int delta);
} lc__net_ops;
lc_sender *lc__net_sender_new(const lc__net_ops *ops, void *ctx, lc_chan **chan);
void lc__chan_wake_senders(lc_chan *c);
/* Keeps a channel's memory alive (not its Sender): for waking it safely
 * while its Sender may be released concurrently. */
void lc__chan_retain(lc_chan *c);
void lc__chan_release(lc_chan *c);
/* ctx of a network Sender made with these ops, NULL for any other Sender. */
void *lc__net_sender_ctx(lc_sender *s, const lc__net_ops *ops);

/*
 * Feeders: a session marks the network Receivers it fills. A thread about to
 * block in lc_recv on one calls drive(ctx, chan, now_ns, deadline_ns) first
 * (now_ns the monotonic time the caller just read, so the feeder need not
 * read the clock again; deadline an absolute monotonic time, -1 for none):
 * the session may read the carrier
 * on that thread until the channel has something, the deadline passes or the
 * session ends, and returns true; it returns false at once when another
 * thread is reading (the caller then waits as usual). retain/release bracket
 * the call (the channel's lock is not held during drive).
 */
typedef struct lc__feeder_ops {
    void (*retain)(void *ctx);
    void (*release)(void *ctx);
    bool (*drive)(void *ctx, lc_chan *c, int64_t now_ns, int64_t deadline_ns);
    /* The channel is (or was) waited on without drive: by lc_select, a
     * callback receive or a pollable fd. The feeder must then fill it on its
     * own (a session keeps its engine watching the carrier). Called once per
     * channel and feeder, without channel locks. */
    void (*passive)(void *ctx);
    /* One wait that does not read, and does not recur as lc_select's and a
     * pollable fd's do: +1 as it begins (drive said another thread reads, or
     * the channel is unbuffered, which nothing drives), -1 as it ends; the
     * feeder keeps the carrier watched in between. 0: a poll (timeout 0)
     * found nothing; what comes next must be read without the caller (the
     * feeder makes sure the carrier is watched now). Without channel locks. */
    void (*waiting)(void *ctx, int delta);
} lc__feeder_ops;
void lc__receiver_set_feeder(lc_receiver *r, const lc__feeder_ops *ops, void *ctx);
/* Called by the filling side (it holds the Sender) before it lets go. */
void lc__sender_clear_feeder(lc_sender *s);
/* For a session forwarding into an application's channel: become its
 * feeder unless it has one (true if claimed; *passive: the channel was
 * already waited on without drive, or a receiver waits on it now, before it
 * had a feeder to count it: the caller calls ops->passive itself once its
 * locks are released); release only if still ours. An unbuffered channel is
 * never driven (drive looks at a ring); its feeder hears of its waits. */
bool lc__sender_claim_feeder(lc_sender *s, const lc__feeder_ops *ops, void *ctx, bool *passive);
void lc__sender_release_feeder(lc_sender *s, void *ctx);
/* Messages queued in s's channel (rings; 0 for others). */
size_t lc__sender_queued(lc_sender *s);
/* Would a receive on c complete now? (rings only) */
bool lc__chan_recv_ready(lc_chan *c);

#endif

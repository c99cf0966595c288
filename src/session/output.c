/*
 * output.c - a session's output (src/session): the output buffer, the
 * writer (whoever finds the carrier idle writes, others append and the
 * writer coalesces), control frames and header blocks.
 */
#include "session_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <errno.h>
#include <unistd.h>

/* ---- output -------------------------------------------------------------- */

static void wake_timer(void *ctx);

/*
 * Senders blocked on a full output (max_pending_out) wait for it to drain
 * below half. A flush that gets there on a thread holding wmu cannot wake
 * them itself (waking takes channel locks, whose writability checks take
 * wmu): it has an engine run do it. The EPOLLOUT path wakes them directly.
 * Without this, a sending thread's own flush that drained the output (no
 * EAGAIN, as loopback TCP takes 512 KiB at once) left the others asleep
 * until their timeouts (test_senders_blocked_on_full_output_not_woken).
 * wmu held.
 */
void lc__wake_after_flush_locked(lc_session *s)
{
    if (s->wake_scheduled || s->eng == NULL || !atomic_load(&s->senders_blocked) || !output_low(s))
        return;
    session_ref(s);
    lc_timer_id id;
    if (lc__engine_timer_add(s->eng, 0, wake_timer, s, &id) == 0)
        s->wake_scheduled = true;
    else
        lc__session_unref(s);
}

/* How far flush_rounds goes: only what was queued when it began (a burst's
 * engine run, deferred_flush); also what is appended meanwhile, until
 * nothing is left; or the latter unless a flood is on (lc__flush_now). */
typedef enum { FLUSH_ONCE, FLUSH_ALL, FLUSH_ALL_BUT_FLOOD } flush_how;

static bool schedule_burst_run_locked(lc_session *s, int64_t from);
static void fd_retry(void *ctx);

/*
 * Writes out what is queued, on the calling thread; wmu held on entry and
 * exit. Only one writer at a time: a thread that finds another writing just
 * leaves its frames in `out` for that writer's next round. The lock is
 * dropped during the syscall so senders keep appending; how says whether
 * the writer goes on with what they append meanwhile.
 *
 * FLUSH_ALL_BUT_FLOOD: the flush after a read of the carrier (lc__flush_now),
 * which writes the answers the read produced. While another thread floods
 * the session with messages, going on with what it appended during each
 * write kept the engine thread writing 60-100 bytes at a time, thousands of
 * writes in a row without a pause (bench_session tcp one-way: 46000 of
 * 62000 writes in 2 s under 256 bytes, up to 5681 in a row, every time the
 * client read a WINDOW_UPDATE). The flood's messages go with its scheduled
 * run instead, as they would have without the read: 146000 -> 21000 writes
 * in 2 s, and in four interleaved pairs 7.4-8.6 -> 8.8-9.3 M msgs/s, the
 * client's CPU per message 122-140 -> 110-118 ns (unix unchanged).
 */
static void flush_rounds(lc_session *s, flush_how how)
{
    bool once = how == FLUSH_ONCE;
    if (s->writing || s->dead || s->conn == NULL)
        return;
    s->writing = true;
    bool wrote = false;
    for (;;) {
        if (s->inflight_off == s->inflight.len) {
            if (s->out.len == 0)
                break; /* fds are only queued with bytes: none can be left */
            if (once && wrote)
                break;
            if (wrote && how == FLUSH_ALL_BUT_FLOOD && s->flood && !s->out_urgent && s->eng != NULL &&
                (s->flush_scheduled || schedule_burst_run_locked(s, lc__now_ns())))
                break;
            lc_buf t = s->inflight; /* swap: inflight <- out */
            s->inflight = s->out;
            s->out = t;
            s->out.len = 0;
            s->deferred_len = 0;
            atomic_store_explicit(&s->fin_due, 0, memory_order_relaxed); /* it goes now */
            s->out_gen++; /* a DATA frame now in flight takes no more messages */
            s->out_urgent = false;
            s->inflight_off = 0;
            s->ctl_inflight = s->ctl_out;
            s->ctl_out = 0;
            if (s->opt.trace)
                lc__trace_out(s, s->inflight.data, s->inflight.len);
        }
        const uint8_t *p = s->inflight.data + s->inflight_off;
        size_t n = s->inflight.len - s->inflight_off;
        /* Passed fds go with the write that begins with the first byte of
         * the message naming them: the bytes before it go first, without
         * them. At most LC_TRANSPORT_MAX_FDS per write; with more queued,
         * this write ends where the message owning the next batch starts
         * (one byte at least). So fds never run ahead of their messages by
         * more than a batch: the receiver reads no further once it holds
         * MAX_UNCLAIMED_FDS unclaimed, and fds sent with whatever write came
         * next (one-byte writes of 64 fds each when more were queued) ran
         * hundreds ahead of unread messages and stalled it for good
         * (test_session_limits). */
        int fds[LC_TRANSPORT_MAX_FDS];
        size_t nfds = 0;
        if (s->fdq_len > 0) {
            struct lc_fdq_at at = s->fdq_at[0];
            bool here = at.gen + 1 == s->out_gen; /* in this buffer */
            if (at.gen == s->out_gen || (here && at.off > s->inflight_off)) {
                if (here)
                    n = at.off - s->inflight_off; /* up to its message */
            } else {
                nfds = s->fdq_len < LC_TRANSPORT_MAX_FDS ? s->fdq_len : LC_TRANSPORT_MAX_FDS;
                memcpy(fds, s->fdq, nfds * sizeof *fds);
                if (s->fdq_len > LC_TRANSPORT_MAX_FDS) {
                    struct lc_fdq_at nx = s->fdq_at[LC_TRANSPORT_MAX_FDS];
                    if (nx.gen + 1 == s->out_gen)
                        n = nx.off > s->inflight_off ? nx.off - s->inflight_off : 1;
                    else if (nx.gen + 1 < s->out_gen)
                        n = 1; /* (already begun: keep the batches going) */
                }
            }
        }
        s->in_write = true;
        pthread_mutex_unlock(&s->wmu);
        struct iovec iov = { (void *)p, n };
        ssize_t w = nfds ? lc__conn_sendfds(s->conn, &iov, 1, fds, nfds) : lc__conn_writev(s->conn, &iov, 1);
        pthread_mutex_lock(&s->wmu);
        if (w > 0 && nfds > 0) {
            /* the kernel holds them now: ours go */
            for (size_t i = 0; i < nfds; i++)
                close(fds[i]);
            memmove(s->fdq, s->fdq + nfds, (s->fdq_len - nfds) * sizeof *s->fdq);
            memmove(s->fdq_at, s->fdq_at + nfds, (s->fdq_len - nfds) * sizeof *s->fdq_at);
            s->fdq_len -= nfds;
        }
        s->in_write = false;
        if (s->flush_waiters)
            pthread_cond_broadcast(&s->flushed);
        if (w > 0 && nfds > 0)
            s->fd_retry_ms = 0;
        if (w == -ETOOMANYREFS && nfds > 0 && s->eng != NULL && !s->dead) {
            /* The kernel counts the fds in flight in unix sockets against
             * the sending user's RLIMIT_NOFILE (root is exempt): too many
             * are on their way to a peer slow to read. Nothing was sent; the
             * fds stay queued (lc_send waits once FDQ_MAX are) and the write
             * is tried again a little later, as no readiness says when the
             * peer has read some. It ended the session (a review helper,
             * as uid 65534 with 1024 fds: 1447 of 3000 messages sent, the
             * peer's reads then LC_EPROTO). */
            s->fd_retry_ms = s->fd_retry_ms == 0 ? 1 : s->fd_retry_ms < 32 ? s->fd_retry_ms * 2 : 32;
            session_ref(s);
            lc_timer_id id;
            if (lc__engine_timer_add(s->eng, lc__now_ns() + (int64_t)s->fd_retry_ms * 1000000, fd_retry, s,
                                     &id) == 0) {
                s->out_handed = true;
                return; /* writing stays true: the timer owns it */
            }
            lc__session_unref(s);
        }
        if (w == -EAGAIN) {
            if (s->watch != NULL) {
                /* the engine takes over when the carrier drains */
                lc__engine_arm(s->watch, EPOLLOUT);
                s->out_handed = true;
                return; /* writing stays true: the EPOLLOUT callback owns it */
            }
            /* The session ended while wmu was dropped for the syscall:
             * lc__session_fail took the watch (and the engine deletes it), so
             * nothing more is written. It was armed through the NULL
             * pointer before: a SIGSEGV in lc__engine_arm, seen once under
             * TSan in test_free_while_peer_opens_streams on the poll engine
             * (lc_session_sender's flush racing lc_session_free). */
            break;
        }
        if (w < 0) {
            s->writing = false;
            pthread_mutex_unlock(&s->wmu);
            /* EPIPE: the peer's end is gone, as a read would say with
             * ECONNRESET; said the same way (EPIPE is also LC_ECLOSED,
             * whose text is "channel closed") */
            lc__session_fail(s, w == -EPIPE ? -ECONNRESET : (int)w);
            pthread_mutex_lock(&s->wmu);
            return;
        }
        s->inflight_off += (size_t)w;
        s->written_total += (uint64_t)w;
        wrote = true;
        if (s->inflight_off == s->inflight.len) {
            s->inflight.len = 0;
            s->inflight_off = 0;
            s->ctl_inflight = 0;
        }
    }
    s->writing = false;
    if (s->flush_waiters)
        pthread_cond_broadcast(&s->flushed);
    lc__wake_after_flush_locked(s);
}

void lc__flush_locked(lc_session *s)
{
    flush_rounds(s, FLUSH_ALL);
}

/*
 * The application's send path. A message sent while the carrier is idle is
 * written at once by the sending thread (no hop: request/reply latency). A
 * message sent right after another one (a burst: less than COALESCE_NS since
 * the last send, and nothing read meanwhile) is only appended: one engine run
 * COALESCE_NS later writes the whole batch, so a flood costs one syscall per
 * batch instead of one per message (bench_session measured one sendmsg per
 * message without this). wmu held.
 *
 * A run writes what it found and no more: what the senders append during
 * its write waits for the next run. Once a run finds FLOOD_BATCH_BYTES or
 * more (a flood: ~80 small messages in 20 us), the runs come every
 * FLOOD_COALESCE_NS instead, until one finds less; the sending thread writes
 * for itself once BURST_WRITE_BYTES wait. A run that went on writing what
 * came in meanwhile wrote ~58 messages per write, and woke the engine thread
 * every 20 us: bench_session one-way, same machine, interleaved runs, unix
 * 7.7-8.2 -> 8.4-9.3 M msgs/s, tcp 6.7-7.2 -> 8.2-8.5 M msgs/s, client CPU
 * per message 124-153 -> 101-118 ns. The price: a flood's last messages
 * wait up to FLOOD_COALESCE_NS (a short burst's still COALESCE_NS).
 */
#define COALESCE_NS 20000
#define FLOOD_COALESCE_NS 100000
#define FLOOD_BATCH_BYTES 1024
#define BURST_WRITE_BYTES 32768

/* The period of the engine run that writes a burst: COALESCE_NS, or
 * FLOOD_COALESCE_NS once a run has found FLOOD_BATCH_BYTES queued. */
static int64_t coalesce_period(const lc_session *s)
{
    return s->flood ? FLOOD_COALESCE_NS : COALESCE_NS;
}

static void deferred_flush(void *ctx);

/* Has an engine run write the burst a period after `from`, holding a
 * session reference for it; false when the engine took no timer. wmu held. */
static bool schedule_burst_run_locked(lc_session *s, int64_t from)
{
    session_ref(s);
    lc_timer_id id;
    if (lc__engine_timer_add(s->eng, from + coalesce_period(s), deferred_flush, s, &id) != 0) {
        lc__session_unref(s);
        return false;
    }
    s->flush_scheduled = true;
    return true;
}

static void deferred_flush(void *ctx)
{
    lc_session *s = ctx;
    pthread_mutex_lock(&s->wmu);
    s->flush_scheduled = false;
    /* the sends this flush carries did not read the clock (below): a send
     * right after it still belongs to the burst */
    s->last_send_ns = lc__now_ns();
    s->flood = s->out.len >= FLOOD_BATCH_BYTES;
    flush_rounds(s, FLUSH_ONCE);
    /* (a dead session writes nothing: its output stays, and must not keep
     * a timer, and the session, alive) */
    if (s->out.len > 0 && !s->writing && !s->dead && s->conn != NULL && s->eng != NULL &&
        !schedule_burst_run_locked(s, s->last_send_ns))
        lc__flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    lc__session_unref(s); /* the timer's reference */
}

void lc__send_flush_locked(lc_session *s)
{
    /* A reply to what was just read is not part of a burst, however soon
     * it follows the previous send: coalescing it through the engine cost a
     * thread hop on every round trip faster than COALESCE_NS. It is written
     * at once even while a run is scheduled for a burst on another channel
     * (the burst goes with it): that run came up to FLOOD_COALESCE_NS later.
     * Such a send does not read the clock either (~50 ns here, kvm-clock; 4
     * reads per hop of a round trip were 12% of its user time): the send
     * after it then counts as the start of a burst, not as part of one.
     * Told before the writer check: a writer busy with an earlier flood's
     * output goes on with a reply (flood off), not leaving it to a run. */
    uint64_t rx = atomic_load_explicit(&s->rx_reads, memory_order_relaxed);
    bool reply = rx != s->last_send_rx;
    if (reply) {
        s->last_send_rx = rx;
        s->last_send_ns = INT64_MIN / 2;
        s->flood = false;
    }
    if (s->writing)
        return; /* the current writer takes it */
    if (reply) {
        lc__flush_locked(s);
        return;
    }
    if (s->flush_scheduled) {
        if (s->out.len >= BURST_WRITE_BYTES)
            lc__flush_locked(s);
        return; /* the scheduled run takes it */
    }
    int64_t now = lc__now_ns();
    bool burst = now - s->last_send_ns < COALESCE_NS;
    s->last_send_ns = now;
    if (!burst)
        s->flood = false; /* a burst after a pause starts with the short period */
    /* COALESCE_NS after this send, not at once: the engine's run then
     * carries a bigger batch (bench_session one-way unix 3.5 -> 4.5 M
     * msgs/s); a burst's last message waits at most that long */
    if (burst && s->eng != NULL && schedule_burst_run_locked(s, now))
        return;
    lc__flush_locked(s);
}

/* After output drained below the low-water mark: let blocked senders retry. */
void lc__wake_blocked_senders(lc_session *s)
{
    if (!atomic_exchange_explicit(&s->senders_blocked, false, memory_order_acq_rel))
        return;
    /* collect under mu with references, wake without locks (their retries
     * come back into try_send) */
    lc_chan **chans = NULL;
    lc_stream **sts = NULL, **pumps = NULL;
    lc_msg **helds = NULL;
    size_t n = 0, np = 0;
    pthread_mutex_lock(&s->mu);
    size_t cap = s->streams.len;
    chans = malloc((cap + 1) * sizeof *chans);
    sts = malloc((cap + 1) * sizeof *sts);
    pumps = malloc((cap + 1) * sizeof *pumps);
    helds = malloc((cap + 1) * sizeof *helds);
    if (chans && sts && pumps && helds) {
        for (size_t i = 0; i < s->streams.cap; i++) {
            lc_stream *st = s->streams.slots[i].val;
            if (st != NULL && st != LC_MAP_TOMB && st->kind == ST_BYTES && st->out_open && st->fdw)
                lc__engine_arm(st->fdw, EPOLLIN); /* its reads stopped on a full output */
            lc_msg *held = st != NULL && st != LC_MAP_TOMB ? lc__pump_take_locked(st) : NULL;
            if (held) {
                /* a stopped pump: resumed below (its own reference keeps st) */
                pumps[np] = st;
                helds[np++] = held;
                continue;
            }
            if (st == NULL || st == LC_MAP_TOMB || st->kind != ST_SEND || st->chan == NULL)
                continue;
            stream_ref(st);
            sts[n] = st;
            chans[n] = st->chan;
            lc__chan_retain(chans[n]);
            n++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        lc__chan_wake_senders(chans[i]);
        lc__chan_release(chans[i]);
        lc__stream_unref(sts[i]);
    }
    free(chans);
    free(sts);
    for (size_t i = 0; i < np; i++)
        lc__pump_resume(pumps[i], helds[i]);
    free(pumps);
    free(helds);
}

static void wake_timer(void *ctx)
{
    lc_session *s = ctx;
    pthread_mutex_lock(&s->wmu);
    s->wake_scheduled = false;
    bool low = output_low(s);
    pthread_mutex_unlock(&s->wmu);
    if (low)
        lc__wake_blocked_senders(s);
    lc__session_unref(s); /* the timer's reference */
}

/* The write that passes fds, again after ETOOMANYREFS (flush_rounds). */
static void fd_retry(void *ctx)
{
    lc_session *s = ctx;
    lc__output_ready(s);
    lc__session_unref(s); /* the timer's reference */
}

/* Appends nothing; flushes and wakes. Used by the EPOLLOUT path. */
void lc__output_ready(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    /* only the writer's role handed over is taken back: an EPOLLOUT nobody
     * asked for (another event's, or a watch slot's former owner's) must not
     * start a second writer beside one in its syscall */
    if (s->out_handed) {
        s->out_handed = false;
        s->writing = false;
    }
    lc__flush_locked(s);
    bool low = output_low(s);
    pthread_mutex_unlock(&s->wmu);
    if (low)
        lc__wake_blocked_senders(s);
}

/* ---- headers --------------------------------------------------------------- */

/* v in decimal at the end of buf[20] (u64 has at most 20 digits); returns
 * where it starts. snprintf's "%llu" cost ~100 ns per ref here, two per
 * sub-stream's SYN_STREAM on the sending path of a message that carries a
 * reply channel. */
static char *u64_decimal(char buf[20], uint64_t v)
{
    char *p = buf + 20;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return p;
}

int lc__put_syn_stream(lc_session *s, uint32_t id, uint64_t ref, uint64_t parent)
{
    char rbuf[20], pbuf[20];
    char *r = u64_decimal(rbuf, ref);
    lc_spdy_header h[2] = { { "libchan-ref", 11, r, (size_t)(rbuf + 20 - r) } };
    size_t nh = 1;
    if (parent) {
        char *q = u64_decimal(pbuf, parent);
        h[1] = (lc_spdy_header){ "libchan-parent-ref", 18, q, (size_t)(pbuf + 20 - q) };
        nh = 2;
    }
    return lc__spdy_put_syn_stream(&s->out, &s->defl, id, 0, 0, 0, 0, h, nh);
}

bool lc__parse_u64(const lc_spdy_header *h, uint64_t *out)
{
    if (h == NULL || h->value_len == 0 || h->value_len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < h->value_len; i++) {
        char c = h->value[i];
        if (c < '0' || c > '9')
            return false;
        uint64_t d = (uint64_t)(c - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false; /* (v * 10 wraps in more cases than nv < v saw) */
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* Queues a small control frame built by fn and flushes. */
void lc__send_control(lc_session *s, int (*fn)(lc_session *s, void *arg), void *arg)
{
    pthread_mutex_lock(&s->wmu);
    size_t before = s->out.len;
    if (!s->dead && fn(s, arg) == 0) {
        s->ctl_out += s->out.len - before;
        if (lc__tls_reading != s)
            lc__flush_locked(s);
    }
    pthread_mutex_unlock(&s->wmu);
}

/*
 * Queues a control frame nobody waits for (the FIN that answers a peer's
 * FIN: it only lets both ends forget the stream) without writing it: the
 * next write carries it, the backstop (LAZY_REARM_NS) at the latest. In a
 * fresh-reply round trip the requester wrote it alone after each reply
 * (bench_session under strace: ~2.2 -> ~1.5 writes per round trip over both
 * processes; p50 moved within the noise).
 */

void lc__send_control_deferred(lc_session *s, int (*fn)(lc_session *s, void *arg), void *arg)
{
    pthread_mutex_lock(&s->wmu);
    bool only_deferred = s->out.len == s->deferred_len;
    size_t before = s->out.len;
    if (!s->dead && fn(s, arg) == 0) {
        s->ctl_out += s->out.len - before;
        if (only_deferred)
            s->deferred_len = s->out.len; /* lc__flush_now leaves it */
        if (s->out_urgent || !lc__backstop_locked(s))
            lc__flush_locked(s);
    }
    pthread_mutex_unlock(&s->wmu);
}

/*
 * End of a read batch: write the control frames it produced. True when the
 * answers to the peer (SYN_REPLY, RST_STREAM, PING, FIN, WINDOW_UPDATE)
 * still queued exceed ANSWERS_MAX: a peer that sends and never reads would
 * have them pile up without bound (test_answer_flood_from_peer_that_never_
 * reads: 24 MiB of PINGs or stray DATA, each answered, 24 MiB queued). The
 * caller ends the session (LC_EPROTO). Not a pause of reading: two sessions
 * that flood each other could then both stop reading for good (a first
 * version did, test_session_limits: 14 of 20 runs). Only answers count: a
 * session's own messages may hold the output above max_pending_out (one
 * message past it per sending thread). wmu held by neither.
 */
#define ANSWERS_MAX(s) ((s)->opt.max_pending_out * 4 > (1u << 20) ? (s)->opt.max_pending_out * 4 : (1u << 20))

bool lc__flush_now(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    if (s->out.len > s->deferred_len)
        flush_rounds(s, FLUSH_ALL_BUT_FLOOD); /* (frames that wait for a later write stay) */
    bool flooded = s->ctl_out + s->ctl_inflight > ANSWERS_MAX(s);
    pthread_mutex_unlock(&s->wmu);
    return flooded;
}

/* Writes a settling FIN (net_end) now, with whatever waits with it; no
 * lock taken when there is none. */
void lc__fin_settled(lc_session *s)
{
    if (atomic_load_explicit(&s->fin_due, memory_order_relaxed) == 0)
        return;
    pthread_mutex_lock(&s->wmu);
    if (atomic_load_explicit(&s->fin_due, memory_order_relaxed) != 0)
        lc__flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
}

int lc__ctl_syn_reply(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    lc_spdy_header h = { ":status", 7, a->status == 200 ? "200" : "502", 3 };
    return lc__spdy_put_syn_reply(&s->out, &s->defl, a->id, a->status == 200 ? 0 : LC_SPDY_FLAG_FIN, &h, 1);
}

int lc__ctl_rst(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    return lc__spdy_put_rst_stream(&s->out, a->id, a->status);
}

int lc__ctl_ping(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    s->out_urgent = true; /* the peer measures its round trip */
    return lc__spdy_put_ping(&s->out, a->id);
}

int lc__ctl_goaway(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    return lc__spdy_put_goaway(&s->out, a->id, a->status);
}

int lc__ctl_window(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    s->out_urgent = true; /* a sender may be waiting for it */
    return lc__spdy_put_window_update(&s->out, a->id, a->status);
}

int lc__ctl_fin(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    return lc__spdy_put_data(&s->out, a->id, LC_SPDY_FLAG_FIN, NULL, 0);
}


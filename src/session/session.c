/*
 * session.c - the libchan protocol on one carrier (src/session): SPDY streams
 * to channel ends, top-level channels, sub-streams for the channel ends a
 * message carries, references, forwarding, carrier loss. PROTOCOL.md
 * sections 3 and 5; docs/PROTOCOL.md for what we add.
 *
 * Threads. The engine thread reads the carrier (one-shot EPOLLIN watch),
 * decodes frames and pushes messages into the local queues of network
 * Receivers. A thread calling lc_send on a network Sender encodes the message
 * and appends its frames to the session's output buffer; if nobody is
 * writing, it writes them itself (no thread hop), and frames appended while a
 * write is in progress go out in the writer's next writev. On EAGAIN the
 * engine's EPOLLOUT watch finishes the job.
 *
 * Locks, in this order only: wmu (output buffer, zlib sending context,
 * stream-id allocation) then mu (stream and reference tables, stream state).
 * No lock is held while calling into channels: their callbacks may come back.
 */
#include "session_internal.h"
#include "common/deadline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sched.h>
#include <unistd.h>

/* A control frame to send: stream (or ping/last-good) id and status. */
typedef struct { uint32_t id; uint32_t status; } ctl_arg;

/* Forward declarations of the pieces that call each other across sections. */
static void bytes_close(lc_stream *st);
static void pipe_grown_release(lc_stream *st);
static void resume_reading(lc_session *s);
static void stream_maybe_done_locked(lc_session *s, lc_stream *st);
static const lc__feeder_ops feeder_ops;

/* ---- options ------------------------------------------------------------- */

LC_API void lc_options_default(lc_options *o)
{
    memset(o, 0, sizeof *o);
    o->dial_timeout_ms = 10000;
    o->ref_timeout_ms = 5000;
    o->recv_queue = 256;
    o->accept_queue = 1024;
    o->max_pending_out = 4u << 20;
    /* 4 MiB: with 1 MiB, a byte stream's pump over TCP ran out of window
     * about once per MiB (~230 stalls per 256 MiB, each waiting for the
     * peer's WINDOW_UPDATE; ~45 with 4 MiB). bench_session tcp bulk as the
     * kernel places the threads, 3 interleaved pairs: from a pipe
     * 0.35-0.40x -> 0.40-0.51x of raw TCP, from a socketpair 0.43-0.48x
     * -> 0.50-0.67x; pinned unchanged (0.52-0.74x). */
    o->stream_window = 4u << 20;
    lc_limits_default(&o->limits);
}

static void options_resolve(lc_options *dst, const lc_options *src)
{
    lc_options d;
    lc_options_default(&d);
    if (src == NULL) {
        *dst = d;
        return;
    }
    *dst = *src;
    if (dst->dial_timeout_ms == 0)
        dst->dial_timeout_ms = d.dial_timeout_ms;
    if (dst->ref_timeout_ms <= 0)
        dst->ref_timeout_ms = d.ref_timeout_ms;
    if (dst->recv_queue == 0)
        dst->recv_queue = d.recv_queue;
    if (dst->accept_queue == 0)
        dst->accept_queue = d.accept_queue;
    if (dst->max_pending_out == 0)
        dst->max_pending_out = d.max_pending_out;
    if (dst->stream_window == 0 || dst->stream_window > 0x7fffffffu)
        dst->stream_window = d.stream_window;
    /* zero limits are the defaults here too (the session compares with
     * max_message itself: an unresolved 0 refused every early byte) */
    lc_limits l;
    lc__limits_resolve(&l, &dst->limits);
    dst->limits = l;
}

/* ---- small maps: uint64 key -> pointer, open addressing ------------------ */

static uint64_t mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

void *lc__map_get(const lc_map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = mix64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].val == NULL)
            return NULL;
        if (m->slots[i].key == key && m->slots[i].val != LC_MAP_TOMB)
            return m->slots[i].val;
    }
}

int lc__map_put(lc_map *m, uint64_t key, void *val)
{
    if ((m->used + 1) * 4 >= m->cap * 3) {
        /* sized for the live entries only: a table that fills up with
         * tombstones (streams opened and ended all session long) is rebuilt
         * at its size, not doubled (it grew with every stream ever opened,
         * and so did every scan of it) */
        size_t ncap = 16;
        while ((m->len + 1) * 2 >= ncap)
            ncap *= 2;
        lc_map n = { calloc(ncap, sizeof *n.slots), ncap, 0, 0 };
        if (n.slots == NULL)
            return LC_ENOMEM;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].val != NULL && m->slots[i].val != LC_MAP_TOMB)
                lc__map_put(&n, m->slots[i].key, m->slots[i].val);
        free(m->slots);
        *m = n;
    }
    for (size_t i = mix64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].val == NULL || m->slots[i].val == LC_MAP_TOMB) {
            if (m->slots[i].val == NULL)
                m->used++;
            m->slots[i].key = key;
            m->slots[i].val = val;
            m->len++;
            return 0;
        }
        if (m->slots[i].key == key) {
            m->slots[i].val = val;
            return 0;
        }
    }
}

void *lc__map_del(lc_map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = mix64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].val == NULL)
            return NULL;
        if (m->slots[i].key == key && m->slots[i].val != LC_MAP_TOMB) {
            void *v = m->slots[i].val;
            m->slots[i].val = LC_MAP_TOMB;
            m->len--;
            /* A tombstone followed by an empty slot ends no probe that
             * matters: it and the tombstones before it become empty. Streams
             * come and go every round trip with a fresh reply channel; the
             * table was rebuilt every few of them. */
            size_t mask = m->cap - 1;
            for (size_t j = i; m->slots[(j + 1) & mask].val == NULL && m->slots[j].val == LC_MAP_TOMB;
                 j = (j - 1) & mask) {
                m->slots[j].val = NULL;
                m->used--;
            }
            return v;
        }
    }
}

void lc__map_free(lc_map *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* ---- tracing (lc_options.trace) -------------------------------------------- */

static const char *frame_name(int type)
{
    switch (type) {
    case LC_SPDY_DATA:          return "DATA";
    case LC_SPDY_SYN_STREAM:    return "SYN_STREAM";
    case LC_SPDY_SYN_REPLY:     return "SYN_REPLY";
    case LC_SPDY_RST_STREAM:    return "RST_STREAM";
    case LC_SPDY_SETTINGS:      return "SETTINGS";
    case LC_SPDY_PING:          return "PING";
    case LC_SPDY_GOAWAY:        return "GOAWAY";
    case LC_SPDY_HEADERS:       return "HEADERS";
    case LC_SPDY_WINDOW_UPDATE: return "WINDOW_UPDATE";
    default:                    return "UNKNOWN";
    }
}

/* One readable line per frame (a DATA frame once, at its first fragment). */
static void trace_frame(lc_session *s, const char *dir, const lc_spdy_frame *f)
{
    if (f->type == LC_SPDY_DATA && f->data_offset != 0)
        return;
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s", dir, frame_name(f->type));
    size_t len = n > 0 ? (size_t)n : 0;
#define TR(...)                                                                          \
    do {                                                                                 \
        if (len < sizeof line) {                                                         \
            int k = snprintf(line + len, sizeof line - len, __VA_ARGS__);                \
            len += k > 0 ? (size_t)k : 0;                                                \
        }                                                                                \
    } while (0)
    switch (f->type) {
    case LC_SPDY_DATA:
        TR(" stream=%u len=%u%s", f->stream_id, f->length, (f->flags & LC_SPDY_FLAG_FIN) ? " FIN" : "");
        break;
    case LC_SPDY_SYN_STREAM:
    case LC_SPDY_SYN_REPLY:
    case LC_SPDY_HEADERS:
        TR(" stream=%u%s {", f->stream_id, (f->flags & LC_SPDY_FLAG_FIN) ? " FIN" : "");
        for (size_t i = 0; i < f->n_headers; i++)
            TR("%s%.*s: %.*s", i ? ", " : "", (int)f->headers[i].name_len, f->headers[i].name,
               (int)f->headers[i].value_len, f->headers[i].value);
        TR("}");
        break;
    case LC_SPDY_RST_STREAM:
        TR(" stream=%u status=%u", f->stream_id, f->status);
        break;
    case LC_SPDY_SETTINGS:
        TR(" {");
        for (uint32_t i = 0; i < f->value && i < 16; i++) {
            lc_spdy_setting e;
            lc__spdy_setting_get(f, i, &e);
            TR("%s%#x: %u", i ? ", " : "", e.id, e.value);
        }
        TR("}");
        break;
    case LC_SPDY_PING:
        TR(" id=%u", f->value);
        break;
    case LC_SPDY_GOAWAY:
        TR(" last-good=%u status=%u", f->stream_id, f->status);
        break;
    case LC_SPDY_WINDOW_UPDATE:
        TR(" stream=%u delta=%u", f->stream_id, f->value);
        break;
    default:
        TR(" type=%u", f->raw_type);
        break;
    }
#undef TR
    s->opt.trace(s->opt.trace_ctx, line);
}

/* Parses bytes we are about to write and traces their frames. wmu held. */
static void trace_out(lc_session *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        lc_spdy_frame f;
        size_t used = 0;
        int rc = lc__spdy_decode(&s->trace_dec, p, n, &used, &f);
        p += used;
        n -= used;
        if (rc <= 0)
            return;
        trace_frame(s, ">>", &f);
    }
}

/* ---- lifetime ------------------------------------------------------------ */

static void session_ref(lc_session *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

static void skim_drop(struct lc_skim_slot *sl);

static void session_unref(lc_session *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* the last stream and the user handle are gone; the watch was removed
     * when the session died or was freed */
    lc__spdy_decoder_free(&s->dec);
    lc__spdy_decoder_free(&s->trace_dec);
    lc__spdy_deflater_free(&s->defl);
    lc__buf_free(&s->out);
    lc__buf_free(&s->inflight);
    lc__map_free(&s->streams);
    lc__map_free(&s->peer_refs);
    for (size_t i = 0; i < s->in_fds.cap; i++) /* passed to us, never claimed */
        if (s->in_fds.slots[i].val != NULL && s->in_fds.slots[i].val != LC_MAP_TOMB)
            close((int)(intptr_t)s->in_fds.slots[i].val - 1);
    lc__map_free(&s->in_fds);
    for (size_t i = 0; i < SKIMS_KEEP; i++)
        skim_drop(&s->skims[i]);
    for (size_t i = 0; i < s->fdq_len; i++)
        close(s->fdq[i]);
    free(s->fdq);
    free(s->fdq_at);
    free(s->rbuf);
    lc_receiver_release(s->incoming_r);
    lc_sender_release(s->incoming_s);
    if (s->conn)
        lc__conn_close(s->conn);
    pthread_cond_destroy(&s->close_cv);
    pthread_cond_destroy(&s->flushed);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->wmu);
    free(s);
}

static lc_stream *stream_new(lc_session *s, st_kind kind)
{
    /* Not calloc, nor malloc and memset, which gcc turns into calloc:
     * glibc's calloc (before 2.41) bypasses the thread cache, and a fresh
     * reply channel makes a stream on each side in every round trip. */
    static const lc_stream zero;
    lc_stream *st = malloc(sizeof *st);
    if (st == NULL)
        return NULL;
    *st = zero;
    atomic_init(&st->refs, 1);
    st->s = s;
    st->kind = kind;
    st->fd = -1;
    session_ref(s);
    return st;
}

static void stream_ref(lc_stream *st)
{
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
}

/* Bytes queued for st's fd and not written yet. mu held. */
static size_t fd_queued(const lc_stream *st)
{
    return st->fd_out.len - st->fd_out_off;
}

/* Frees a chain of messages linked by next (closing their fds). */
static void msg_chain_free(lc_msg *m)
{
    while (m != NULL) {
        lc_msg *next = m->next;
        lc_msg_free(m);
        m = next;
    }
}

/* Takes st's whole list of decoded, undelivered messages (a chain for
 * msg_chain_free once the lock is dropped). mu held. */
static lc_msg *pending_take_all_locked(lc_stream *st)
{
    lc_msg *all = st->pending_head;
    st->pending_head = st->pending_tail = NULL;
    st->npending = 0;
    return all;
}

static void stream_unref(lc_stream *st)
{
    if (atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) != 1)
        return;
    msg_chain_free(st->pending_head);
    if (st->sd_init)
        lc__sd_free(&st->sd);
    lc__buf_free(&st->early);
    lc__buf_free(&st->fd_out);
    if (st->fd >= 0) {
        pipe_grown_release(st);
        close(st->fd);
    }
    if (st->into && st->kind == ST_RECV)
        lc__sender_clear_feeder(st->into);
    if (st->into && st->feeding)
        lc__sender_release_feeder(st->into, st->s);
    lc_sender_release(st->into);
    lc_receiver_release(st->source);
    lc_msg_free(st->pump_held); /* NULL: a held message keeps the pump's reference */
    lc_session *s = st->s;
    free(st);
    session_unref(s);
}

/* ---- output -------------------------------------------------------------- */

static size_t pending_out(lc_session *s)
{
    return s->out.len + (s->inflight.len - s->inflight_off) + s->direct_out;
}

static void session_fail(lc_session *s, int err);
static void deliver_pending(lc_stream *st);
static lc_msg *pump_take_locked(lc_stream *st);
static void pump_resume(lc_stream *st, lc_msg *held);

/* Bytes the peer still lets us send on st (wmu held); unlimited toward a
 * peer without windows. May be negative: one message may overdraw it, so a
 * message bigger than the window still goes (alone). */
static int64_t send_window(const lc_session *s, const lc_stream *st)
{
    /* Until the peer's first frame we cannot know whether it speaks
     * windows (ours open with SETTINGS, Go peers never send one): keep to
     * the SPDY/3 initial window meanwhile. Sending without limit until then
     * let a fast sender put ~1-2 MB on one channel before it had read our
     * SETTINGS (test_attached_receiver_pump_respects_window). */
    if (!atomic_load_explicit(&s->peer_fc, memory_order_relaxed) &&
        atomic_load_explicit(&s->peer_known, memory_order_acquire))
        return INT64_MAX;
    return (int64_t)s->peer_window + (int64_t)st->granted - (int64_t)st->sent;
}

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
static void wake_after_flush_locked(lc_session *s)
{
    if (s->wake_scheduled || s->eng == NULL || !atomic_load(&s->senders_blocked) ||
        pending_out(s) >= s->opt.max_pending_out / 2)
        return;
    session_ref(s);
    lc_timer_id id;
    if (lc__engine_timer_add(s->eng, 0, wake_timer, s, &id) == 0)
        s->wake_scheduled = true;
    else
        session_unref(s);
}

/* How far flush_rounds goes: only what was queued when it began (a burst's
 * engine run, deferred_flush); also what is appended meanwhile, until
 * nothing is left; or the latter unless a flood is on (flush_now). */
typedef enum { FLUSH_ONCE, FLUSH_ALL, FLUSH_ALL_BUT_FLOOD } flush_how;

static bool schedule_burst_run_locked(lc_session *s, int64_t from);

/*
 * Writes out what is queued, on the calling thread; wmu held on entry and
 * exit. Only one writer at a time: a thread that finds another writing just
 * leaves its frames in `out` for that writer's next round. The lock is
 * dropped during the syscall so senders keep appending; how says whether
 * the writer goes on with what they append meanwhile.
 *
 * FLUSH_ALL_BUT_FLOOD: the flush after a read of the carrier (flush_now),
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
                trace_out(s, s->inflight.data, s->inflight.len);
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
        if (w == -EAGAIN) {
            if (s->watch != NULL) {
                /* the engine takes over when the carrier drains */
                lc__engine_arm(s->watch, EPOLLOUT);
                return; /* writing stays true: the EPOLLOUT callback owns it */
            }
            /* The session ended while wmu was dropped for the syscall:
             * session_fail took the watch (and the engine deletes it), so
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
            session_fail(s, w == -EPIPE ? -ECONNRESET : (int)w);
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
    wake_after_flush_locked(s);
}

static void flush_locked(lc_session *s)
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

/* The largest DATA frame consecutive messages of one channel are merged
 * into (each message still starts its own frame beyond it). */
#define DATA_MERGE_MAX 16384

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
        session_unref(s);
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
        flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    session_unref(s); /* the timer's reference */
}

static void send_flush_locked(lc_session *s)
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
        flush_locked(s);
        return;
    }
    if (s->flush_scheduled) {
        if (s->out.len >= BURST_WRITE_BYTES)
            flush_locked(s);
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
    flush_locked(s);
}

/* After output drained below the low-water mark: let blocked senders retry. */
static void wake_blocked_senders(lc_session *s)
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
            lc_msg *held = st != NULL && st != LC_MAP_TOMB ? pump_take_locked(st) : NULL;
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
        stream_unref(sts[i]);
    }
    free(chans);
    free(sts);
    for (size_t i = 0; i < np; i++)
        pump_resume(pumps[i], helds[i]);
    free(pumps);
    free(helds);
}

static void wake_timer(void *ctx)
{
    lc_session *s = ctx;
    pthread_mutex_lock(&s->wmu);
    s->wake_scheduled = false;
    bool low = pending_out(s) < s->opt.max_pending_out / 2;
    pthread_mutex_unlock(&s->wmu);
    if (low)
        wake_blocked_senders(s);
    session_unref(s); /* the timer's reference */
}

/* Appends nothing; flushes and wakes. Used by the EPOLLOUT path. */
static void output_ready(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    s->writing = false;
    flush_locked(s);
    bool low = pending_out(s) < s->opt.max_pending_out / 2;
    pthread_mutex_unlock(&s->wmu);
    if (low)
        wake_blocked_senders(s);
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

static int put_syn_stream(lc_session *s, uint32_t id, uint64_t ref, uint64_t parent)
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

static bool parse_u64(const lc_spdy_header *h, uint64_t *out)
{
    if (h == NULL || h->value_len == 0 || h->value_len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < h->value_len; i++) {
        char c = h->value[i];
        if (c < '0' || c > '9')
            return false;
        uint64_t nv = v * 10 + (uint64_t)(c - '0');
        if (nv < v)
            return false;
        v = nv;
    }
    *out = v;
    return true;
}

/* Queues a small control frame built by fn and flushes. */
/* The session whose carrier this thread is reading (engine callback), if any:
 * control frames it produces wait for one flush per read batch. */
static _Thread_local lc_session *tls_reading;

/* The session this thread last took a message from by reading its carrier
 * itself (drive): the thread will likely read it again soon (net_end).
 * Only compared, never followed. */
static _Thread_local const lc_session *tls_served;

static void send_control(lc_session *s, int (*fn)(lc_session *s, void *arg), void *arg)
{
    pthread_mutex_lock(&s->wmu);
    size_t before = s->out.len;
    if (!s->dead && fn(s, arg) == 0) {
        s->ctl_out += s->out.len - before;
        if (tls_reading != s)
            flush_locked(s);
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
static bool backstop_locked(lc_session *s);

static void send_control_deferred(lc_session *s, int (*fn)(lc_session *s, void *arg), void *arg)
{
    pthread_mutex_lock(&s->wmu);
    bool only_deferred = s->out.len == s->deferred_len;
    size_t before = s->out.len;
    if (!s->dead && fn(s, arg) == 0) {
        s->ctl_out += s->out.len - before;
        if (only_deferred)
            s->deferred_len = s->out.len; /* flush_now leaves it */
        if (s->out_urgent || !backstop_locked(s))
            flush_locked(s);
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

static bool flush_now(lc_session *s)
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
static void fin_settled(lc_session *s)
{
    if (atomic_load_explicit(&s->fin_due, memory_order_relaxed) == 0)
        return;
    pthread_mutex_lock(&s->wmu);
    if (atomic_load_explicit(&s->fin_due, memory_order_relaxed) != 0)
        flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
}

static int ctl_syn_reply(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    lc_spdy_header h = { ":status", 7, a->status == 200 ? "200" : "502", 3 };
    return lc__spdy_put_syn_reply(&s->out, &s->defl, a->id, a->status == 200 ? 0 : LC_SPDY_FLAG_FIN, &h, 1);
}

static int ctl_rst(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    return lc__spdy_put_rst_stream(&s->out, a->id, a->status);
}

static int ctl_ping(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    s->out_urgent = true; /* the peer measures its round trip */
    return lc__spdy_put_ping(&s->out, a->id);
}

static int ctl_goaway(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    return lc__spdy_put_goaway(&s->out, a->id, a->status);
}

static int ctl_window(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    s->out_urgent = true; /* a sender may be waiting for it */
    return lc__spdy_put_window_update(&s->out, a->id, a->status);
}

static int ctl_fin(lc_session *s, void *arg)
{
    ctl_arg *a = arg;
    return lc__spdy_put_data(&s->out, a->id, LC_SPDY_FLAG_FIN, NULL, 0);
}

/* ---- session death ------------------------------------------------------- */



/* The carrier is gone (or the peer broke the protocol): every channel end of
 * the session fails now. Idempotent; no lock held by the caller. */
static void session_fail(lc_session *s, int err)
{
    pthread_mutex_lock(&s->wmu);
    pthread_mutex_lock(&s->mu);
    if (s->dead) {
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&s->wmu);
        return;
    }
    s->dead = true;
    atomic_store(&s->err, err);
    pthread_cond_broadcast(&s->flushed);
    pthread_cond_broadcast(&s->close_cv);
    int chan_err = err == LC_ESESSION || err == LC_EOF || err > -1000 ? LC_ESESSION : err;
    /* take every stream out of the tables; fail them outside the locks */
    size_t n = 0;
    lc_stream **all = malloc((s->streams.len + 1) * sizeof *all);
    lc_chan **chans = malloc((s->streams.len + 1) * sizeof *chans);
    lc_sender **intos = malloc((s->streams.len + 1) * sizeof *intos);
    lc_msg **helds = malloc((s->streams.len + 1) * sizeof *helds);
    lc_receiver **idle_pumps = malloc((s->streams.len + 1) * sizeof *idle_pumps);
    bool *drains = malloc((s->streams.len + 1) * sizeof *drains);
    lc_stream **draining = malloc((s->streams.len + 1) * sizeof *draining);
    size_t ndraining = 0;
    for (size_t i = 0; all && chans && intos && helds && idle_pumps && drains && draining && i < s->streams.cap;
         i++) {
        lc_stream *st = s->streams.slots[i].val;
        if (st == NULL || st == LC_MAP_TOMB)
            continue;
        st->in_table = false;
        all[n] = st; /* the table's reference moves to us */
        chans[n] = st->chan;
        if (chans[n])
            lc__chan_retain(chans[n]);
        intos[n] = st->into ? lc_sender_retain(st->into) : NULL;
        if (st->into != NULL) {
            /* what reached us is delivered first (decoded or not: a peer's
             * graceful close comes right behind its last messages, which a
             * full local queue had not taken yet), then the error; a
             * channel whose FIN came ends as it was closed, LC_EOF (this
             * overwrote it: test_graceful_close_after_unread_flood) */
            if (st->end_err == 0 && !st->remote_fin)
                st->end_err = chan_err;
            st->remote_fin_pending = true;
        }
        /* A byte stream that still holds bytes for its fd when the session
         * ends cleanly (the peer closed gracefully) writes them first, then
         * gives its holder EOF: closing it at once lost up to a window of
         * the last bytes the peer sent (lchan send of stdin over TCP, found
         * by a review helper). lc_session_free closes it whatever is left. */
        drains[n] = st->kind == ST_BYTES && err == LC_ESESSION && st->in_open && fd_queued(st) > 0 &&
                    st->fdw != NULL;
        if (drains[n]) {
            st->out_open = false;
            st->in_fin = true; /* EOF after what is held */
            stream_ref(st);
            draining[ndraining++] = st;
        } else {
            st->out_open = st->in_open = false; /* byte streams: closed below */
        }
        helds[n] = pump_take_locked(st);
        /* a pump waiting on its source: its next message could no longer
         * go, though the local lc_send would have said 0 (review helper) */
        idle_pumps[n] = st->kind == ST_PUMP_RECEIVER && st->source != NULL && helds[n] == NULL
                            ? lc_receiver_retain(st->source)
                            : NULL;
        n++;
    }
    if (ndraining > 0) {
        s->draining = draining;
        s->ndraining = ndraining;
        draining = NULL;
    }
    lc__map_free(&s->streams);
    lc__map_free(&s->peer_refs);
    lc_watch *w = s->watch;
    s->watch = NULL;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->wmu);

    /* no more reading: the session is over. From inside the engine callback
     * lc__engine_del does not wait (the callback holds a session reference). */
    if (w)
        lc__engine_del(w);
    pthread_mutex_lock(&s->wmu);
    if (s->conn)
        lc__conn_shutdown_write(s->conn);
    pthread_mutex_unlock(&s->wmu);
    lc__close_error(s->incoming_s, LC_ESESSION);
    for (size_t i = 0; i < n; i++) {
        if (intos[i]) {
            deliver_pending(all[i]); /* ends the channel with end_err once idle */
            lc_sender_release(intos[i]);
        }
        if (chans[i]) {
            lc__chan_wake_senders(chans[i]);
            lc__chan_release(chans[i]);
        }
        if (all[i]->kind == ST_BYTES && drains[i]) {
            pthread_mutex_lock(&s->mu);
            lc_watch *bw = all[i]->fdw;
            pthread_mutex_unlock(&s->mu);
            if (bw != NULL)
                lc__engine_arm(bw, EPOLLOUT); /* bytes_pump writes the rest, then EOF */
        } else if (all[i]->kind == ST_BYTES) {
            bytes_close(all[i]); /* the holder sees EOF / EPIPE */
        }
        if (helds[i])
            pump_resume(all[i], helds[i]); /* its send fails now: the pump ends */
        if (idle_pumps[i]) {
            /* its local senders fail from now on, and the pump ends */
            lc__receiver_abandon(idle_pumps[i], LC_ESESSION);
            lc_receiver_release(idle_pumps[i]);
        }
        stream_unref(all[i]);
    }
    free(all);
    free(chans);
    free(intos);
    free(helds);
    free(idle_pumps);
    free(drains);
    free(draining);
    /* lc_session_free on another thread waits for this: it must not return
     * while we still close the byte streams' fds */
    pthread_mutex_lock(&s->wmu);
    s->fail_done = true;
    pthread_cond_broadcast(&s->flushed);
    pthread_mutex_unlock(&s->wmu);
}

static bool flush_now(lc_session *s);

static void protocol_error(lc_session *s, uint32_t status)
{
    ctl_arg a = { s->last_peer_id, status };
    send_control(s, ctl_goaway, &a);
    flush_now(s); /* on the reading thread send_control only queues it */
    session_fail(s, LC_EPROTO);
}

/* ---- network Senders ----------------------------------------------------- */

static int net_try_send(void *ctx, lc_msg *m);
static int net_try_send_last(void *ctx, lc_msg *m);
static bool net_writable(void *ctx);
static void net_close(void *ctx);
static void net_release(void *ctx);
static const lc__net_ops net_ops = { net_try_send, net_writable, net_close, net_release, net_try_send_last };

/* A Sender writing on stream st (which must be ST_SEND, registered).
 * mu_held says whether the caller holds s->mu (st->chan is read under it). */
static lc_sender *make_net_sender(lc_stream *st, bool mu_held)
{
    stream_ref(st); /* the sender's reference */
    lc_chan *chan;
    lc_sender *snd = lc__net_sender_new(&net_ops, st, &chan);
    if (snd == NULL) {
        stream_unref(st);
        return NULL;
    }
    if (!mu_held)
        pthread_mutex_lock(&st->s->mu);
    st->chan = chan;
    if (!mu_held)
        pthread_mutex_unlock(&st->s->mu);
    return snd;
}

/* ---- encoding a message (attachments become sub-streams) ----------------- */

typedef struct open_rec {
    lc_value *v;
    lc_stream *st;
} open_rec;

#define ENC_OPENS_INLINE 4 /* a request with a reply channel opens 1 */

typedef struct enc_ctx {
    lc_session *s;
    open_rec *opens;    /* inl, or malloc'ed past ENC_OPENS_INLINE */
    open_rec inl[ENC_OPENS_INLINE];
    size_t n, cap;
    int err;
    bool pass_fds;      /* byte streams travel as fds (wmu held while encoding) */
    lc_value *passed[LC_TRANSPORT_MAX_FDS];
    size_t npassed;
} enc_ctx;

static int enc_attachment(void *ctx, lc_value *v, uint8_t *ext, uint64_t *ref)
{
    enc_ctx *e = ctx;
    if (lc_value_taken(v))
        return LC_ETAKEN;
    if (e->pass_fds && lc_value_type(v) == LC_STREAM && e->npassed < LC_TRANSPORT_MAX_FDS) {
        /* ours: the real fd goes with SCM_RIGHTS, numbered in sending order */
        e->passed[e->npassed++] = v;
        *ext = lc__codec_ext_for(v);
        *ref = LC_REF_PASSED_FD | e->s->fd_out_seq++;
        return 0;
    }
    st_kind kind;
    switch (lc_value_type(v)) {
    case LC_SENDER:   kind = ST_FWD_TO_SENDER; break;   /* we receive on it, forward */
    case LC_RECEIVER: kind = ST_PUMP_RECEIVER; break;   /* we pump the receiver onto it */
    case LC_STREAM:   kind = ST_BYTES; break;           /* we pump the fd */
    default:          return LC_ENOTSUP;
    }
    if (e->n == e->cap) {
        size_t nc = e->cap * 2;
        open_rec *no = e->opens == e->inl ? malloc(nc * sizeof *no) : realloc(e->opens, nc * sizeof *no);
        if (no == NULL)
            return LC_ENOMEM;
        if (e->opens == e->inl)
            memcpy(no, e->inl, sizeof e->inl);
        e->opens = no;
        e->cap = nc;
    }
    lc_stream *st = stream_new(e->s, kind);
    if (st == NULL)
        return LC_ENOMEM;
    st->ours = true;
    st->ref = atomic_fetch_add_explicit(&e->s->next_ref, 1, memory_order_relaxed);
    e->opens[e->n++] = (open_rec){ v, st };
    *ext = lc__codec_ext_for(v);
    *ref = st->ref;
    return 0;
}

/* Does m carry a byte stream not taken out yet? */
static bool msg_has_streams(const lc_msg *m)
{
    for (uint32_t i = 0; i < m->att_len; i++)
        if (m->att[i]->type == LC_STREAM && !(m->att[i]->flags & LC_VF_TAKEN))
            return true;
    return false;
}

/*
 * Per-thread scratch buffers, so that a send or a byte stream's read does not
 * malloc; freed at thread exit. On the heap, not _Thread_local arrays: those
 * are part of every thread's static TLS, which glibc zeroes at each
 * pthread_create of the application, whether the thread uses libchan or not.
 */
#define PUMP_READ (256u << 10)

typedef struct thread_bufs {
    lc_buf enc;    /* send_msg_on's encoding */
    uint8_t *pump; /* bytes_pump's reads of an fd, PUMP_READ bytes, on first use */
} thread_bufs;

static pthread_key_t bufs_key;
static pthread_once_t bufs_once = PTHREAD_ONCE_INIT;
static _Thread_local thread_bufs *tls_bufs;

static void thread_bufs_free(void *p)
{
    thread_bufs *t = p;
    lc__buf_free(&t->enc);
    free(t->pump);
    free(t);
    tls_bufs = NULL; /* a later destructor of this thread may still send */
}

static void bufs_key_make(void)
{
    pthread_key_create(&bufs_key, thread_bufs_free);
}

static thread_bufs *thread_bufs_get(void)
{
    if (tls_bufs == NULL) {
        pthread_once(&bufs_once, bufs_key_make);
        thread_bufs *t = calloc(1, sizeof *t);
        if (t == NULL)
            return NULL;
        lc__buf_init(&t->enc);
        pthread_setspecific(bufs_key, t);
        tls_bufs = t;
    }
    return tls_bufs;
}

static lc_buf *enc_buf(void)
{
    thread_bufs *t = thread_bufs_get();
    return t != NULL ? &t->enc : NULL;
}

/* NULL when out of memory. */
static uint8_t *pump_buf(void)
{
    thread_bufs *t = thread_bufs_get();
    if (t != NULL && t->pump == NULL)
        t->pump = malloc(PUMP_READ);
    return t != NULL ? t->pump : NULL;
}

static void start_pump(lc_stream *st);
static int bytes_start(lc_stream *st, int fd, bool we_read, bool we_write, bool mu_held);
static void bytes_kick(lc_stream *st);

/* The peer announced NO_REPLIES (PROTOCOL.md 3.2, 3.8): no SYN_REPLY, and
 * no FIN that answers a FIN of a channel, either way. */
static bool quiet_peer(const lc_session *s)
{
    return atomic_load_explicit(&s->peer_no_replies, memory_order_relaxed);
}

/* Whether n more streams of ours still get an id: SPDY/3 ids are 31 bits
 * and never reused, so a side opens at most 2^30 streams per session. wmu held. */
static bool ids_left_locked(const lc_session *s, size_t n)
{
    return n == 0 || (uint64_t)s->next_id + 2 * ((uint64_t)n - 1) <= LC_SPDY_MAX_STREAM_ID;
}

/* Registers a new stream of ours in the table; wmu and mu held. LC_ERANGE
 * once the session's stream ids are used up. */
static int register_ours_locked(lc_session *s, lc_stream *st)
{
    if (!ids_left_locked(s, 1))
        return LC_ERANGE;
    st->id = s->next_id;
    s->next_id += 2;
    if (lc__map_put(&s->streams, st->id, st) != 0)
        return LC_ENOMEM;
    stream_ref(st); /* the table's reference */
    st->in_table = true;
    if (!quiet_peer(s)) {
        st->awaiting_reply = true;
        s->unreplied++;
    }
    return 0;
}

/* Something lc_session_close may be waiting for happened (a SYN_REPLY, an
 * outgoing byte stream's end, reading paused, the session's end). It used
 * to look every 1-2 ms instead: a dial, send and close cycle took 1.1 ms,
 * nearly all of it that nap. mu held. */
static void close_progress_locked(lc_session *s)
{
    if (s->closing)
        pthread_cond_broadcast(&s->close_cv);
}

/* The peer answered (or reset, or the stream ended): one fewer reply for
 * lc_session_close to wait for. mu held. */
static void reply_came_locked(lc_session *s, lc_stream *st)
{
    if (!st->awaiting_reply)
        return;
    st->awaiting_reply = false;
    if (--s->unreplied == 0)
        close_progress_locked(s);
}

static void on_syn_reply(lc_session *s, const lc_spdy_frame *f)
{
    pthread_mutex_lock(&s->mu);
    lc_stream *st = lc__map_get(&s->streams, f->stream_id);
    if (st != NULL)
        reply_came_locked(s, st);
    pthread_mutex_unlock(&s->mu);
}

static void feeder_passive(void *ctx);

/* Why no message can go on p now, window aside: LC_ESESSION (the session
 * ended, or lc_session_close closed sending), LC_ECLOSED (the stream ended
 * or was reset), or 0. wmu held. */
static int send_refused_locked(const lc_session *s, const lc_stream *p)
{
    return s->dead || s->sends_closed ? LC_ESESSION : p->local_fin || p->reset ? LC_ECLOSED : 0;
}

/*
 * The first message that would pass fds asks the peer to read them
 * (FD_ASK, PROTOCOL.md 7) and waits, like a sender out of window, until
 * the peer's FD_READY says it reads the carrier with recvmsg: fds sent
 * before that could meet a plain recv(2), which closes them. One round trip
 * per session, the first time only. Returns 0 when the peer is ready (now),
 * LC__WOULD_BLOCK otherwise (wake_blocked_senders resumes the sender).
 */
static int ask_for_fds(lc_session *s, lc_stream *p)
{
    pthread_mutex_lock(&s->wmu);
    /* what send_msg_on would say, before any wait: a reset stream is
     * writable (net_writable), so a wait here would come straight back */
    int end = send_refused_locked(s, p);
    if (end != 0) {
        pthread_mutex_unlock(&s->wmu);
        return end;
    }
    if (!s->fds_asked) {
        lc_spdy_setting e = { 0, LC_SETTINGS_LIBCHAN, LC_FEATURE_FDPASS | LC_FEATURE_FD_ASK };
        int rc = lc__spdy_put_settings(&s->out, 0, &e, 1);
        if (rc != 0) {
            pthread_mutex_unlock(&s->wmu);
            return rc;
        }
        s->fds_asked = true;
        flush_locked(s);
    }
    pthread_mutex_unlock(&s->wmu);
    atomic_store(&s->senders_blocked, true);
    /* FD_READY may have come between the caller's look and the flag above:
     * then its wake found no flag (both seq_cst: one of us sees the other) */
    if (atomic_load(&s->peer_reads_fds))
        return 0;
    return LC__WOULD_BLOCK; /* (the caller makes sure the carrier is read) */
}

/* fin: the message is the channel's last; its DATA frame carries FIN
 * (lc_send_last), so the end costs no frame and no write of its own. */
static int send_msg_on(lc_stream *p, lc_msg *m, bool block_on_full, bool fin)
{
    lc_session *s = p->s;
    bool passive_seen = false; /* a reply channel we now feed is waited on without drive */
    /* passed[] is left as is: only its first npassed are read (zeroing it
     * all was ~4% of a one-way sender's CPU) */
    enc_ctx e;
    e.s = s;
    e.opens = e.inl;
    e.n = 0;
    e.cap = ENC_OPENS_INLINE;
    e.err = 0;
    e.pass_fds = false;
    e.npassed = 0;
    struct lc_codec_hooks hooks = { &e, enc_attachment, NULL };
    lc_buf *b = enc_buf();
    if (b == NULL)
        return LC_ENOMEM;
    b->len = 0;
    /* Passed fds are numbered in the order they go out, so a message that
     * passes some is encoded under wmu (rare; others encode unlocked). */
    e.pass_fds = atomic_load(&s->peer_fdpass) && msg_has_streams(m);
    if (e.pass_fds && !atomic_load(&s->peer_reads_fds)) {
        int asked = ask_for_fds(s, p);
        if (asked != 0)
            return asked; /* (nothing encoded yet: the message stays the caller's) */
    }
    if (e.pass_fds)
        pthread_mutex_lock(&s->wmu);
    int rc = lc__encode(m, b, &hooks);
    if (rc != 0) {
        if (e.pass_fds) {
            s->fd_out_seq -= e.npassed;
            pthread_mutex_unlock(&s->wmu);
        }
        goto fail;
    }
    if (!e.pass_fds)
        pthread_mutex_lock(&s->wmu);
    if (e.npassed > 0 && s->fdq_len + e.npassed > s->fdq_cap) {
        size_t nc = (s->fdq_len + e.npassed) * 2;
        int *nq = realloc(s->fdq, nc * sizeof *nq);
        struct lc_fdq_at *na = nq ? realloc(s->fdq_at, nc * sizeof *na) : NULL;
        if (nq != NULL)
            s->fdq = nq; /* (kept even if the second fails: fdq_cap says what both hold) */
        if (na != NULL)
            s->fdq_at = na;
        if (nq == NULL || na == NULL) {
            s->fd_out_seq -= e.npassed;
            pthread_mutex_unlock(&s->wmu);
            rc = LC_ENOMEM;
            goto fail;
        }
        s->fdq_cap = nc;
    }
    rc = send_refused_locked(s, p);
    if (rc == 0 && !ids_left_locked(s, e.n))
        rc = LC_ERANGE;
    if (rc != 0) {
        /* (checked before any frame is queued: a message whose sub-streams
         * cannot all open is not sent at all; after lc_session_close's GOAWAY
         * a message would never be written, nor read by a Go peer) */
        s->fd_out_seq -= e.npassed;
        pthread_mutex_unlock(&s->wmu);
        goto fail;
    }
    if (!block_on_full && (pending_out(s) >= s->opt.max_pending_out || send_window(s, p) <= 0)) {
        /* woken by wake_blocked_senders (output drained) or by the
         * peer's WINDOW_UPDATE for this stream */
        atomic_store_explicit(&s->senders_blocked, true, memory_order_release);
        rc = LC__WOULD_BLOCK;
        s->fd_out_seq -= e.npassed;
        pthread_mutex_unlock(&s->wmu);
        goto fail;
    }
    /* where the message starts in the output (its passed fds are sent by then) */
    struct lc_fdq_at msg_at = { s->out_gen, s->out.len };
    /* sub-streams first (as Go does), then the message's DATA frames */
    if (e.n)
        pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < e.n && rc == 0; i++) {
        lc_stream *st = e.opens[i].st;
        /* bound before its SYN_STREAM leaves: the peer may answer at once.
         * Borrowed until the send succeeds, then taken out of the message. */
        if (st->kind == ST_FWD_TO_SENDER) {
            st->into = e.opens[i].v->u.sender;
            /* a reply channel: whoever waits on it may read our carrier */
            bool passive = false;
            st->feeding = lc__sender_claim_feeder(st->into, &feeder_ops, s, &passive);
            passive_seen |= passive;
        } else if (st->kind == ST_PUMP_RECEIVER) {
            st->source = e.opens[i].v->u.receiver;
        } else {
            /* byte stream: its directions are known now, so bytes and a FIN
             * that arrive before its fd is watched are kept, not dropped */
            lc_stream_mode mode = lc_value_stream_mode(e.opens[i].v);
            st->out_open = mode != LC_STREAM_WRITE;
            st->in_open = mode != LC_STREAM_READ;
        }
        rc = register_ours_locked(s, st);
        if (rc == 0)
            rc = put_syn_stream(s, st->id, st->ref, p->ref);
    }
    if (e.n)
        pthread_mutex_unlock(&s->mu);
    if (!fin && e.n == 0 && b->len > 0 && s->tail_gen == s->out_gen && s->tail_end == s->out.len &&
        s->tail_id == p->id && s->tail_len + b->len <= DATA_MERGE_MAX) {
        /* The frame just before is this channel's DATA, not written yet:
         * the message joins it (PROTOCOL.md: messages may share a frame;
         * the receiver decodes a byte stream). In a burst of small messages
         * this saves the 8-byte header and, on the receiving side, a frame's
         * dispatch per message. */
        rc = lc__buf_append(&s->out, b->data, b->len);
        if (rc == 0) {
            s->tail_len += b->len;
            s->tail_end = s->out.len;
            lc__spdy_data_header(s->out.data + s->tail_hdr, p->id, 0, (uint32_t)s->tail_len);
            p->sent += b->len;
        }
    } else {
        for (size_t off = 0; rc == 0 && (off < b->len || off == 0);) {
            size_t chunk = b->len - off;
            if (chunk > LC_SPDY_MAX_LENGTH)
                chunk = LC_SPDY_MAX_LENGTH;
            size_t hdr = s->out.len;
            bool last = off + chunk == b->len;
            rc = lc__spdy_put_data(&s->out, p->id, fin && last ? LC_SPDY_FLAG_FIN : 0, b->data + off, chunk);
            p->sent += chunk;
            off += chunk;
            if (rc == 0 && fin && last) {
                p->local_fin = true; /* nothing may follow (net_close sends no FIN) */
            } else if (rc == 0) {
                /* the next message on this channel may join this frame */
                s->tail_hdr = hdr;
                s->tail_len = chunk;
                s->tail_end = s->out.len;
                s->tail_id = p->id;
                s->tail_gen = s->out_gen;
            }
            if (b->len == 0)
                break;
        }
    }
    if (rc != 0) {
        /* out of memory mid-frame: the output is no longer well formed */
        pthread_mutex_unlock(&s->wmu);
        session_fail(s, rc);
        rc = LC_ESESSION;
        goto fail_registered;
    }
    /* passed fds: owned by the queue from here, closed once sent */
    for (size_t i = 0; i < e.npassed; i++) {
        s->fdq_at[s->fdq_len] = msg_at;
        s->fdq[s->fdq_len++] = lc_value_take_fd(e.passed[i], NULL);
    }
    send_flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    if (passive_seen)
        feeder_passive(s); /* with no lock held: it may arm the engine */
    /* the attachments now belong to their streams */
    for (size_t i = 0; i < e.n; i++) {
        lc_stream *st = e.opens[i].st;
        if (st->kind == ST_FWD_TO_SENDER) {
            lc_value_take_sender(e.opens[i].v, NULL);
        } else if (st->kind == ST_PUMP_RECEIVER) {
            lc_value_take_receiver(e.opens[i].v, NULL);
            start_pump(st);
        } else {
            /* the holder's mode is what the peer does: we do the opposite */
            lc_stream_mode mode = lc_value_stream_mode(e.opens[i].v);
            int fd = lc_value_take_fd(e.opens[i].v, NULL);
            if (bytes_start(st, fd, mode != LC_STREAM_WRITE, mode != LC_STREAM_READ, false) == 0) {
                bytes_kick(st); /* the peer's bytes or FIN may already be here */
            } else {
                /* e.g. a regular file: the peer must not wait for bytes forever */
                ctl_arg rst = { st->id, LC_SPDY_CANCEL };
                send_control(s, ctl_rst, &rst);
                pthread_mutex_lock(&s->mu);
                st->reset = true;
                stream_maybe_done_locked(s, st);
                pthread_mutex_unlock(&s->mu);
            }
        }
        stream_unref(st); /* our creation reference; the table keeps one */
    }
    if (e.opens != e.inl)
        free(e.opens);
    lc_msg_free(m);
    return 0;
fail_registered:
fail:
    for (size_t i = 0; i < e.n; i++) {
        /* the borrowed ends stay in the message, which stays the caller's */
        pthread_mutex_lock(&s->mu);
        if (e.opens[i].st->feeding)
            lc__sender_release_feeder(e.opens[i].st->into, s);
        e.opens[i].st->feeding = false;
        e.opens[i].st->into = NULL;
        e.opens[i].st->source = NULL;
        pthread_mutex_unlock(&s->mu);
        stream_unref(e.opens[i].st);
    }
    if (e.opens != e.inl)
        free(e.opens);
    return rc;
}

static void ensure_watched(lc_session *s);

static int net_send(lc_stream *st, lc_msg *m, bool fin)
{
    int rc = send_msg_on(st, m, false, fin);
    if (rc == LC__WOULD_BLOCK)
        ensure_watched(st->s); /* the window opens by reading */
    return rc;
}

static int net_try_send(void *ctx, lc_msg *m)
{
    return net_send(ctx, m, false);
}

static int net_try_send_last(void *ctx, lc_msg *m)
{
    return net_send(ctx, m, true);
}

static bool net_writable(void *ctx)
{
    lc_stream *st = ctx;
    lc_session *s = st->s;
    pthread_mutex_lock(&s->wmu);
    /* (while FD_ASK waits for its answer no sender of the session is
     * writable: a message with fds would only be refused again) */
    bool w = s->dead || st->local_fin || st->reset ||
             (pending_out(s) < s->opt.max_pending_out && send_window(s, st) > 0 &&
              !(s->fds_asked && !atomic_load(&s->peer_reads_fds)));
    pthread_mutex_unlock(&s->wmu);
    return w;
}

static void stream_maybe_done_locked(lc_session *s, lc_stream *st);

/* How a stream we send on ends: FIN (a clean end: the peer's receiver gets
 * LC_EOF after the messages), RST_STREAM CANCEL (it ended with an error,
 * LC_ECLOSED there), or nothing written (what was meant for it can no
 * longer go: the session is closing or over, or the peer reset it). */
typedef enum { END_FIN, END_RESET, END_SILENT } net_end_how;

/*
 * A FIN written right after the reply it ends lands while the requester
 * reads that reply, and holds the read back until it is queued too
 * (bench_session unix, fresh reply channel closed by lc_close: 3 of 4
 * replies were read together with their FIN, ~0.8 us after those read
 * alone; the bench's server waiting 1 us before lc_close made the round
 * trip's p50 8.1 -> 6.8 us). So a FIN that closes a channel right after a
 * reply settles: it is written by the session's reading thread once it has
 * read for FIN_SETTLE_NS without finding anything, before it sleeps, or
 * with the next write, whichever comes first. Only when the closing thread
 * took its last message from this session's carrier itself and no other
 * thread reads it now: that thread reads again as it goes back to lc_recv
 * (or the engine reads, and writes it then). If nobody reads, the backstop
 * writes it (LAZY_REARM_NS): the end of a channel closed by a thread that
 * then leaves the library for long may wait that much (lc_send_last never
 * waits). wmu held.
 */
#define FIN_SETTLE_NS 1000

static bool fin_may_settle_locked(lc_session *s, size_t before)
{
    return tls_served == s && before == s->deferred_len && !s->out_urgent && !s->writing &&
           atomic_load_explicit(&s->reader, memory_order_relaxed) == 0 &&
           !atomic_load_explicit(&s->no_lazy, memory_order_relaxed) && s->watch != NULL && backstop_locked(s);
}

static void net_end(lc_stream *st, net_end_how how)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->wmu);
    if (!st->local_fin && !st->reset && !s->dead && how != END_SILENT) {
        st->local_fin = true;
        size_t before = s->out.len;
        int rc = how == END_FIN ? lc__spdy_put_data(&s->out, st->id, LC_SPDY_FLAG_FIN, NULL, 0)
                                : lc__spdy_put_rst_stream(&s->out, st->id, LC_SPDY_CANCEL);
        if (rc == 0) {
            if (how == END_RESET) {
                s->ctl_out += s->out.len - before;
                st->reset = true;
            }
            if (how == END_FIN && fin_may_settle_locked(s, before)) {
                s->deferred_len = s->out.len; /* flush_now leaves it */
                if (atomic_load_explicit(&s->fin_due, memory_order_relaxed) == 0)
                    atomic_store_explicit(&s->fin_due, lc__now_ns() + FIN_SETTLE_NS, memory_order_relaxed);
            } else {
                flush_locked(s);
            }
        }
    }
    st->local_fin = true;
    pthread_mutex_lock(&s->mu);
    stream_maybe_done_locked(s, st);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->wmu);
}

/* lc_close or the last release of a network Sender. A channel closed with
 * an error (lc__close_error: the channel this one forwards lost its session,
 * or its bytes did not decode) is reset, not ended: a FIN here told the far
 * receiver LC_EOF, as if every message had come. */
static void net_close(void *ctx)
{
    lc_stream *st = ctx;
    int err = st->chan != NULL ? lc__chan_close_err(st->chan) : 0;
    net_end(st, err != 0 ? END_RESET : END_FIN);
}

static void net_release(void *ctx)
{
    lc_stream *st = ctx;
    lc_session *s = st->s;
    pthread_mutex_lock(&s->mu);
    st->chan = NULL;
    pthread_mutex_unlock(&s->mu);
    stream_unref(st);
}

/*
 * Records a peer ref that a message named (or whose sub-stream ended unnamed),
 * so that naming it again fails at once. Only the last CLAIMED_KEEP are kept:
 * recording all of them grew without bound over a session's life (one entry
 * per fresh reply channel). An older ref named again waits like a ref that
 * never arrives, and fails after ref_timeout_ms. A ring written in order:
 * a map of them cost a fresh reply channel's round trip a delete and an
 * insert in a 64 KiB table, two cache misses; the ring is only searched for
 * a ref not found among the sub-streams, which our peers and Go's never
 * send. mu held.
 */
static void remember_claimed_locked(lc_session *s, uint64_t ref)
{
    s->claimed_ring[s->claimed_next % CLAIMED_KEEP] = ref;
    s->claimed_next++;
}

static bool was_claimed_locked(const lc_session *s, uint64_t ref)
{
    size_t n = s->claimed_next < CLAIMED_KEEP ? (size_t)s->claimed_next : CLAIMED_KEEP;
    bool found = false;
    for (size_t i = 0; i < n; i++) /* (no early exit: the compiler vectorizes it) */
        found |= s->claimed_ring[i] == ref;
    return found;
}

/* Bytes all unbound sub-streams of a session may hold together. */
#define EARLY_TOTAL_MAX(s) (4 * (size_t)(s)->opt.limits.max_message)

/* Frees the bytes kept for a sub-stream before it was named. mu held. */
static void early_drop_locked(lc_session *s, lc_stream *st)
{
    s->early_total -= st->early.len;
    lc__buf_free(&st->early);
}

/* Removes a stream from the table once both directions are finished. */
static void stream_maybe_done_locked(lc_session *s, lc_stream *st)
{
    if (!st->in_table)
        return;
    bool done;
    switch (st->kind) {
    case ST_SEND:
    case ST_PUMP_RECEIVER:
        /* we only write; the peer half-closes after reading our FIN, or,
         * when it announced NO_REPLIES, says nothing more */
        done = st->local_fin && (st->remote_fin || quiet_peer(s));
        break;
    default:
        done = st->remote_fin && st->local_fin;
        break;
    }
    if (st->reset)
        done = true;
    else if (st->remote_fin_pending || st->waiting_refs)
        done = false; /* ended, but not everything is delivered yet: a message
                       * waiting for a sub-stream is only failed by the ref
                       * timer, which walks the table (deliver_pending calls
                       * us again) */
    if (!done)
        return;
    lc__map_del(&s->streams, st->id);
    st->in_table = false;
    early_drop_locked(s, st); /* nothing will name it now */
    reply_came_locked(s, st); /* none will be waited for now */
    if (st->kind == ST_UNBOUND && lc__map_get(&s->peer_refs, st->ref) == st) {
        /* reset before any message named it: a later naming fails at once
         * (found by fuzz_session: it used to leave a dangling entry) */
        lc__map_del(&s->peer_refs, st->ref);
        remember_claimed_locked(s, st->ref);
    }
    stream_unref(st); /* the table's reference; the caller holds another */
}

/* ---- pumping a local Receiver onto a sub-stream --------------------------- */

static void pump_got(void *ctx, int result, lc_msg *m);

/* The pump ends: its source ended (result LC_EOF: FIN; an error such as a
 * lost upstream session: reset) or a send failed (END_SILENT: the session
 * is closing or over, or the peer reset the stream; a FIN would tell the
 * peer it had everything, though the message that failed, and those still
 * in the source, never went). */
static void pump_finish(lc_stream *st, net_end_how how)
{
    lc_session *s = st->s;
    net_end(st, how);
    pthread_mutex_lock(&s->mu);
    lc_receiver *src = st->source;
    st->source = NULL;
    close_progress_locked(s);
    pthread_mutex_unlock(&s->mu);
    lc_receiver_release(src);
    stream_unref(st); /* the pump's reference */
}

/*
 * Sends m on the pump's stream like an application's send: while the output
 * is over its limit or the peer's window for this channel is spent, the
 * message is held and the pump stops taking from its source (whose own
 * capacity then pushes back on the local senders): memory stays bounded.
 * wake_blocked_senders, WINDOW_UPDATE, RST and session_fail resume it.
 * Returns false when the pump stopped (held, or finished).
 */
static bool pump_send(lc_stream *st, lc_msg *m)
{
    lc_session *s = st->s;
    for (;;) {
        int rc = send_msg_on(st, m, false, false);
        if (rc == 0)
            return true;
        if (rc != LC__WOULD_BLOCK) {
            lc_msg_free(m);
            pump_finish(st, END_SILENT);
            return false;
        }
        pthread_mutex_lock(&s->mu);
        st->pump_held = m;
        st->pump_blocked = true;
        pthread_mutex_unlock(&s->mu);
        ensure_watched(s); /* the window opens by reading */
        /* a wake between send_msg_on's check and the flag found nothing to
         * resume: look again now that the flag is visible */
        if (!net_writable(st))
            return false;
        pthread_mutex_lock(&s->mu);
        bool mine = st->pump_blocked; /* else a waker took it and resumes */
        st->pump_blocked = false;
        st->pump_held = NULL;
        pthread_mutex_unlock(&s->mu);
        if (!mine)
            return false;
    }
}

/* The pump moves messages (lc_session_close waits while one does). A
 * reference of its own: pump_finish, inside, drops the pump's. */
static void pump_enter(lc_stream *st)
{
    stream_ref(st);
    atomic_fetch_add(&st->pump_active, 1);
}

static void pump_leave(lc_stream *st)
{
    atomic_fetch_sub(&st->pump_active, 1);
    stream_unref(st);
}

/* Moves messages from st->source to the wire until it would wait. Counted
 * in pump_active meanwhile: lc_session_close waits while a pump moves, or
 * while its source holds messages (sent before the close). */
static void pump_run(lc_stream *st)
{
    lc_session *s = st->s;
    pump_enter(st);
    for (;;) {
        lc_msg *m;
        lc_async *op;
        /* (source is only cleared by pump_finish, on this pump's thread) */
        int rc = lc__recv_async(st->source, &m, pump_got, st, &op);
        if (rc == LC__PENDING) {
            if (atomic_load(&s->close_waiting)) {
                pthread_mutex_lock(&s->mu);
                close_progress_locked(s);
                pthread_mutex_unlock(&s->mu);
            }
            break;
        }
        if (rc != 0) {
            pump_finish(st, rc == LC_EOF ? END_FIN : END_RESET);
            break;
        }
        if (!pump_send(st, m))
            break;
    }
    pump_leave(st);
}

static void pump_got(void *ctx, int result, lc_msg *m)
{
    lc_stream *st = ctx;
    if (result != 0) {
        pump_finish(st, result == LC_EOF ? END_FIN : END_RESET);
        return;
    }
    pump_enter(st);
    if (pump_send(st, m))
        pump_run(st);
    pump_leave(st);
}

/* Takes a held pump's message if it is stopped. mu held. */
static lc_msg *pump_take_locked(lc_stream *st)
{
    if (st->kind != ST_PUMP_RECEIVER || !st->pump_blocked)
        return NULL;
    st->pump_blocked = false;
    lc_msg *m = st->pump_held;
    st->pump_held = NULL;
    return m;
}

/* Resumes a stopped pump with its held message (no lock held). */
static void pump_resume(lc_stream *st, lc_msg *held)
{
    pump_enter(st);
    if (pump_send(st, held))
        pump_run(st);
    pump_leave(st);
}

static void start_pump(lc_stream *st)
{
    stream_ref(st); /* the pump's reference, dropped by pump_finish */
    pump_run(st);
}

/* ---- byte streams ----------------------------------------------------------- */

/*
 * A byte stream is a sub-stream whose DATA payloads are raw bytes and whose
 * FIN is EOF. Locally it is a file descriptor (the application's, when we
 * sent it; our end of a socketpair, when we received it) watched by the
 * engine: readable -> DATA frames (outbound), DATA frames -> written to it
 * (inbound, buffered in fd_out when the fd is full). Memory stays bounded:
 * outbound stops reading the fd while the session's output is over its
 * limit, inbound pauses the carrier while fd_out holds more than BYTES_BUF.
 */
#define BYTES_BUF (1u << 20)
/* The send buffer asked for a received byte stream's socketpair: one window,
 * up to this (resolve_one_locked says why not more). */
#define BYTES_SOCKBUF_MAX (1u << 20)

static void bytes_cb(void *ctx, uint32_t ev);

/* Before appending: moves what is left to the front once the written part
 * is at least half the buffer (the pump only advances fd_out_off: moving
 * the rest after each partial write copied up to a window per write). */
static void fd_out_compact(lc_stream *st)
{
    size_t left = fd_queued(st);
    if (st->fd_out_off == 0 || st->fd_out_off < left)
        return;
    memmove(st->fd_out.data, st->fd_out.data + st->fd_out_off, left);
    st->fd_out.len = left;
    st->fd_out_off = 0;
}

/*
 * Writes to a byte stream's fd without ever raising SIGPIPE in the
 * application when its reader has gone (a command that exits without
 * reading its stdin): sockets use MSG_NOSIGNAL; for pipes SIGPIPE is blocked
 * in this thread around the write and a pending one is consumed.
 */
static ssize_t write_nosigpipe(int fd, bool is_sock, const void *p, size_t n)
{
    if (is_sock)
        return send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (lc__signals_blocked)
        return write(fd, p, n); /* the engine thread: its SIGPIPE stays blocked */
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t w = write(fd, p, n);
    int err = errno;
    if (w < 0 && err == EPIPE) {
        struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_set, NULL, &zero) > 0)
            ; /* the SIGPIPE this write raised, not the application's */
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return w;
}

/* Appends inbound bytes for st's fd (written by bytes_kick). mu held. */
static int bytes_inbound_locked(lc_session *s, lc_stream *st, const uint8_t *p, size_t n)
{
    if (!st->in_open)
        return 0; /* the holder only writes: ignore (as Go would) */
    if (fd_queued(st) == 0 && st->fd >= 0 && n > 0) {
        /* nothing queued: straight from the read buffer to the fd (it is
         * nonblocking), one copy less; what does not fit is queued */
        ssize_t w;
        do
            w = write_nosigpipe(st->fd, st->fd_sock, p, n);
        while (w < 0 && errno == EINTR);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
        /* errors (the reader went away) are the pump's to find, with the
         * bytes queued as before */
    }
    if (n == 0)
        return 0;
    fd_out_compact(st);
    int rc = lc__buf_append(&st->fd_out, p, n);
    if (rc == 0 && fd_queued(st) > BYTES_BUF && !atomic_load(&s->peer_fc)) {
        s->paused = true; /* resumed once the fd drains (a peer with windows stops by itself) */
        close_progress_locked(s);
    }
    return rc;
}

/*
 * A pipe we read for a byte stream gets PIPE_GROW_SIZE of capacity instead
 * of the default 64 KiB: the application's writer then blocks, and our pump
 * wakes, once per 256 KiB instead of once per 64 KiB (bench_session tcp
 * lc-bulk, 6 interleaved pairs: pinned 2831-3130 -> 3259-3797 MB/s, unpinned
 * 1742-1825 -> 1936-2038; 1 MiB gained nothing more). The capacity counts
 * toward the user's pipe pages (pipe-user-pages-soft, 64 MiB by default,
 * past which new pipes are made small), so at most PIPE_GROW_MAX pipes of
 * the process are grown at a time: 4 MiB in all. A pipe the application
 * made bigger already is left alone; a refusal (the user is past a limit)
 * changes nothing.
 */
#define PIPE_GROW_SIZE (256 << 10)
#define PIPE_GROW_MAX 16

static atomic_int pipes_grown;

static bool pipe_grow(int fd)
{
    int cap = fcntl(fd, F_GETPIPE_SZ);
    if (cap < 0 || cap >= PIPE_GROW_SIZE)
        return false;
    if (atomic_fetch_add(&pipes_grown, 1) >= PIPE_GROW_MAX || fcntl(fd, F_SETPIPE_SZ, PIPE_GROW_SIZE) < 0) {
        atomic_fetch_sub(&pipes_grown, 1);
        return false;
    }
    return true;
}

/* st's fd is being closed. */
static void pipe_grown_release(lc_stream *st)
{
    if (st->fd_pipe_grown) {
        st->fd_pipe_grown = false;
        atomic_fetch_sub(&pipes_grown, 1);
    }
}

static int bytes_start(lc_stream *st, int fd, bool we_read, bool we_write, bool mu_held)
{
    lc_session *s = st->s;
    int fl = fcntl(fd, F_GETFL);
    int rc = 0;
    lc_watch *w = NULL;
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        rc = -errno;
    /* added disarmed: nothing runs before fd and fdw are stored */
    if (rc == 0)
        rc = lc__engine_add(s->eng, fd, 0, bytes_cb, st, &w);
    if (!mu_held)
        pthread_mutex_lock(&s->mu);
    lc_watch *unused = NULL;
    if (rc == 0 && (s->dead || !st->in_table)) {
        /* the session ended (or the stream did) since the frames were
         * queued: session_fail will not see this watch, and no FIN or RST can
         * come for it any more; a watch kept now would hold the stream, the
         * session and the fd for good */
        unused = w;
        rc = s->dead ? LC_ESESSION : LC_ECLOSED;
    }
    if (rc == 0) {
        struct stat sb;
        st->fd = fd;
        bool stat_ok = fstat(fd, &sb) == 0;
        st->fd_sock = stat_ok && S_ISSOCK(sb.st_mode);
        st->fd_pipe_grown = stat_ok && S_ISFIFO(sb.st_mode) && we_read && pipe_grow(fd);
        st->fdw = w;
        st->out_open = we_read;
        st->in_open = we_write;
        stream_ref(st); /* the watch's reference, dropped in bytes_close */
    } else {
        /* e.g. a regular file (epoll refuses them): not a stream */
        st->out_open = st->in_open = false;
    }
    if (!mu_held)
        pthread_mutex_unlock(&s->mu);
    if (unused != NULL)
        lc__engine_del(unused); /* added disarmed: it never ran */
    if (rc != 0) {
        close(fd);
        return rc;
    }
    if (we_read)
        lc__engine_arm(w, EPOLLIN);
    return 0;
}

/* Both directions are over: stop watching, close, leave the table. Called
 * with no lock; from the watch's own callback or any thread. */
static void bytes_close(lc_stream *st)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->mu);
    lc_watch *w = st->fdw;
    int fd = st->fd;
    pipe_grown_release(st); /* (once: a second bytes_close finds the flag clear) */
    st->fdw = NULL;
    st->fd = -1;
    st->local_fin = true;
    close_progress_locked(s);
    if (w != NULL)
        atomic_fetch_add(&s->fd_closers, 1); /* lc_session_free waits for the close */
    stream_maybe_done_locked(s, st);
    pthread_mutex_unlock(&s->mu);
    if (w == NULL)
        return;
    lc__engine_del(w);
    close(fd);
    atomic_fetch_sub(&s->fd_closers, 1);
    stream_unref(st); /* the watch's reference */
}

/* Queues a DATA frame of a byte stream; flush says whether to write now
 * (the pump batches several reads into one write). */
static void bytes_send(lc_stream *st, const uint8_t *p, size_t n, uint8_t flags, bool flush)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->wmu);
    if (!s->dead && !st->reset && lc__spdy_put_data(&s->out, st->id, flags, p, n) == 0) {
        st->sent += n;
        if (flush)
            flush_locked(s);
    }
    pthread_mutex_unlock(&s->wmu);
}

/*
 * While the carrier is idle (nothing queued, no writer), a DATA frame of a
 * byte stream goes straight from the pump's buffer: one writev of its header
 * and the bytes read, no copy into the output buffer. What the carrier does
 * not take becomes the start of the output, written by the usual flush.
 * Returns -1 when the carrier was busy (nothing done: queue the frame), 0
 * when all of it was written, 1 when some of it waits (stop reading the fd:
 * it is re-armed once the output drains). bench_session tcp lc-bulk-sp:
 * copying each 64 KiB read into the output buffer, and reading on while up
 * to max_pending_out (4 MiB) queued there, cost the sending process ~550 us
 * of CPU per MiB; 250-360 us with these direct writes.
 * splice(2) instead of read + writev was tried and not kept: the fd's bytes
 * moved into a pipe of the session's, the header sent with MSG_MORE, that
 * pipe spliced into the carrier, no copy through user space. Same bench,
 * three interleaved pairs (read + writev / splice), from a pipe 2746/2843,
 * 2909/2054, 3261/2139 MB/s, from a socketpair 2931/2420, 3461/3353,
 * 3674/3207. The copies saved came back as page churn: the pages the
 * application wrote stay with TCP until the peer has read them, then are
 * freed one by one (perf: the sender in _raw_spin_trylock and
 * skb_release_data; the receiver's CPU per MiB up from ~265 to ~300-540 us).
 */
static int bytes_write_direct(lc_stream *st, const uint8_t *p, size_t n)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->wmu);
    if (s->writing || s->dead || s->conn == NULL || pending_out(s) != 0 || s->fdq_len != 0 || st->reset ||
        s->opt.trace) {
        pthread_mutex_unlock(&s->wmu);
        return -1;
    }
    uint8_t hdr[LC_SPDY_HEADER_LEN];
    lc__spdy_data_header(hdr, st->id, 0, (uint32_t)n);
    st->sent += n;
    s->writing = true; /* as flush_rounds: others append meanwhile */
    s->in_write = true;
    s->direct_out = sizeof hdr + n; /* pending (lc_session_close counts it) */
    pthread_mutex_unlock(&s->wmu);
    struct iovec iov[2] = { { hdr, sizeof hdr }, { (void *)p, n } };
    ssize_t w = lc__conn_writev(s->conn, iov, 2);
    pthread_mutex_lock(&s->wmu);
    s->in_write = false;
    s->direct_out = 0;
    if (s->flush_waiters)
        pthread_cond_broadcast(&s->flushed);
    if (w < 0 && w != -EAGAIN) {
        s->writing = false;
        pthread_mutex_unlock(&s->wmu);
        session_fail(s, w == -EPIPE ? -ECONNRESET : (int)w);
        return 0; /* the pump finds the session dead */
    }
    size_t done = w > 0 ? (size_t)w : 0;
    s->written_total += done;
    int rc = 0;
    if (done < sizeof hdr + n) {
        /* the rest goes first: inflight was empty (nothing was pending),
         * and only the writer, us, touches it */
        s->inflight.len = 0;
        s->inflight_off = 0;
        int arc = 0;
        if (done < sizeof hdr)
            arc = lc__buf_append(&s->inflight, hdr + done, sizeof hdr - done);
        size_t from = done > sizeof hdr ? done - sizeof hdr : 0;
        if (arc == 0)
            arc = lc__buf_append(&s->inflight, p + from, n - from);
        if (arc != 0) {
            s->writing = false;
            pthread_mutex_unlock(&s->wmu);
            session_fail(s, arc); /* half a frame out: the stream of frames is broken */
            return 0;
        }
    }
    s->writing = false;
    if (pending_out(s) > 0)
        flush_locked(s); /* our rest, and what others appended meanwhile */
    if (pending_out(s) > 0) {
        /* the carrier is full (EPOLLOUT armed): its drain re-arms the pump */
        rc = 1;
        atomic_store(&s->senders_blocked, true);
    }
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

/*
 * A byte stream stops reading its fd once the session's output holds this
 * much (or max_pending_out, if lower). Each frame queued there delays every
 * other channel's messages: reading on up to max_pending_out (4 MiB) put up
 * to 4 MiB ahead of them, seconds on a slow link (toward a peer without
 * windows, which nothing else stops; test_byte_stream_leaves_the_output_to_
 * messages). The fd is read again once the output drains.
 */
#define BYTES_PENDING_MAX (256u << 10)

/* Moves what it can in both directions; re-arms the watch for the rest. */
static void bytes_pump(lc_stream *st, uint32_t ev)
{
    lc_session *s = st->s;
    /* bench_session tcp lc-bulk-sp: 16 KiB reads cost 2x; 256 KiB (one
     * DATA frame each) against 64 KiB, 7 interleaved pairs: 2679-3512 vs
     * 2363-3205 MB/s (medians 2851 / 2734), the sending process's CPU
     * 243-378 vs 310-433 us/MiB */
    uint8_t small[4096], *buf = small;
    size_t buf_len = sizeof small;
    size_t batched = 0;
    uint32_t want = 0;
    bool resume = false;

    /* outbound: fd -> DATA */
    pthread_mutex_lock(&s->mu);
    bool out_open = st->out_open && st->fd >= 0;
    int fd = st->fd;
    pthread_mutex_unlock(&s->mu);
    if (out_open && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        uint8_t *big = pump_buf();
        if (big != NULL) { /* (else out of memory: slower, not stuck) */
            buf = big;
            buf_len = PUMP_READ;
        }
        for (;;) {
            pthread_mutex_lock(&s->wmu);
            int64_t win = send_window(s, st);
            size_t limit = s->opt.max_pending_out < BYTES_PENDING_MAX ? s->opt.max_pending_out : BYTES_PENDING_MAX;
            size_t pending = pending_out(s);
            bool full = pending >= limit || s->dead;
            if (full && !s->dead)
                atomic_store(&s->senders_blocked, true); /* re-armed by wake_blocked_senders */
            pthread_mutex_unlock(&s->wmu);
            if (full || win <= 0) {
                if (win <= 0)
                    ensure_watched(s); /* the window opens by reading */
                break; /* re-armed when the output drains or the window reopens */
            }
            /* a whole buffer while the output has room for it, else 64 KiB:
             * what other channels' messages queue behind stays within the
             * limit and one 64 KiB frame */
            size_t want_n = limit - pending > buf_len ? buf_len : limit - pending;
            if (want_n < 65536)
                want_n = buf_len < 65536 ? buf_len : 65536;
            if ((int64_t)want_n > win)
                want_n = (size_t)win;
            ssize_t n = read(fd, buf, want_n);
            if (n > 0 && batched == 0) {
                int d = bytes_write_direct(st, buf, (size_t)n);
                if (d == 0)
                    continue;
                if (d == 1)
                    break; /* re-armed when the output drains */
            }
            if (n > 0) {
                /* one write per 256 KiB of reads, not one per read */
                batched += (size_t)n;
                bool flush = batched >= (256u << 10);
                if (flush)
                    batched = 0;
                bytes_send(st, buf, (size_t)n, 0, flush);
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN) {
                want |= EPOLLIN;
                break;
            }
            /* EOF (or a dead fd): FIN */
            bytes_send(st, NULL, 0, LC_SPDY_FLAG_FIN, true);
            pthread_mutex_lock(&s->mu);
            st->out_open = false;
            close_progress_locked(s);
            pthread_mutex_unlock(&s->mu);
            break;
        }
    }

    if (batched > 0)
        flush_now(s); /* what the batch left queued */

    /* inbound: buffered DATA -> fd */
    pthread_mutex_lock(&s->mu);
    while (st->in_open && st->fd >= 0 && fd_queued(st) > 0) {
        ssize_t n = write_nosigpipe(st->fd, st->fd_sock, st->fd_out.data + st->fd_out_off, fd_queued(st));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            want |= EPOLLOUT;
            break;
        }
        if (n < 0) {
            st->fd_out.len = st->fd_out_off = 0; /* the reader went away: drop */
            st->in_open = false;
            st->in_broken = true;
            break;
        }
        st->fd_out_off += (size_t)n;
        if (st->fd_out_off == st->fd_out.len)
            st->fd_out.len = st->fd_out_off = 0;
    }
    if (fd_queued(st) == 0 && st->in_fin && st->in_open && st->fd >= 0) {
        /* EOF for the holder: shut our end's write side */
        st->in_open = false;
        if (shutdown(st->fd, SHUT_WR) != 0 && !st->out_open) {
            /* not a socket (a pipe we were given): nothing more to do */
        }
    }
    if (fd_queued(st) <= BYTES_BUF && s->paused)
        resume = true;
    /* Nobody reads what the peer still sends: cancel the stream (RST_STREAM
     * CANCEL) so that the peer's pump stops and its writer gets EPIPE, rather
     * than dropping every byte from now on while the peer believes them
     * delivered. Only once we no longer read fd ourselves (a holder that
     * closed its fd gave us EOF; one that shut down only its reading side
     * may still write). */
    bool cancel = st->in_broken && !st->out_open && !st->remote_fin && !st->reset && st->fdw != NULL;
    if (cancel)
        st->reset = true;
    /* what reached the fd may be sent again */
    uint64_t grant = 0;
    if (atomic_load(&s->peer_fc) && !st->in_broken && !st->remote_fin && st->fed - fd_queued(st) > st->acked) {
        uint64_t out_now = st->fed - fd_queued(st);
        if (fd_queued(st) == 0 || out_now - st->acked >= s->opt.stream_window / 4) {
            grant = out_now - st->acked;
            st->acked = out_now;
        }
    }
    uint32_t sid = st->id;
    bool done = !st->out_open && !st->in_open && st->fdw != NULL;
    lc_watch *w = st->fdw;
    pthread_mutex_unlock(&s->mu);
    if (cancel) {
        ctl_arg rst = { sid, LC_SPDY_CANCEL };
        send_control(s, ctl_rst, &rst);
    }
    if (grant > 0) {
        ctl_arg wa = { sid, (uint32_t)(grant > 0x7fffffffu ? 0x7fffffffu : grant) };
        send_control(s, ctl_window, &wa);
    }
    if (resume)
        resume_reading(s);
    if (done)
        bytes_close(st);
    else if (want && w)
        lc__engine_arm(w, want);
}

static void bytes_cb(void *ctx, uint32_t ev)
{
    lc_stream *st = ctx;
    stream_ref(st);
    bytes_pump(st, ev);
    stream_unref(st);
}

/* Something arrived for the fd (or its end): write it out from here. */
static void bytes_kick(lc_stream *st)
{
    stream_ref(st);
    bytes_pump(st, 0);
    stream_unref(st);
}

/* ---- receiving: resolving references ------------------------------------- */

static int feed_stream_locked(lc_session *s, lc_stream *st, const uint8_t *p, size_t n);

/* Streams bound while resolving, to be kicked once the lock is dropped. */
/* A growable list of referenced streams (no fixed cap: a batch may touch
 * any number of channels). Starts on an inline array. */
typedef struct kick_list {
    lc_stream **st;
    size_t n, cap;
    lc_stream *inl[16];
} kick_list;

static void kl_init(kick_list *k)
{
    k->st = k->inl;
    k->n = 0;
    k->cap = 16;
}

/* Adds st with a reference; false only when out of memory. */
static bool kl_add(kick_list *k, lc_stream *st)
{
    if (k->n == k->cap) {
        size_t nc = k->cap * 2;
        lc_stream **nv = malloc(nc * sizeof *nv);
        if (nv == NULL)
            return false;
        memcpy(nv, k->st, k->n * sizeof *nv);
        if (k->st != k->inl)
            free(k->st);
        k->st = nv;
        k->cap = nc;
    }
    stream_ref(st);
    k->st[k->n++] = st;
    return true;
}

static void kl_free(kick_list *k)
{
    if (k->st != k->inl)
        free(k->st);
    kl_init(k);
}

/* ---- passed fds of messages that will not be decoded ---------------------- */

static void skim_drop(struct lc_skim_slot *sl)
{
    if (sl->k != NULL) {
        lc__skim_free(sl->k);
        free(sl->k);
    }
    sl->k = NULL;
    sl->id = 0;
}

/* A passed fd that a skimmed message names: it will never be claimed. */
static void skim_found(void *ctx, uint64_t n)
{
    lc_session *s = ctx;
    void *slot = lc__map_del(&s->in_fds, n);
    if (slot != NULL)
        close((int)(intptr_t)slot - 1);
    /* (not arrived: a peer naming fds it never passed; nothing to close) */
}

/* DATA for a stream no longer in the table: skimmed if it is one that
 * skim_start_locked took. mu held. */
static void skim_more_locked(lc_session *s, uint32_t id, const uint8_t *p, size_t n, bool fin)
{
    for (size_t i = 0; i < SKIMS_KEEP; i++) {
        struct lc_skim_slot *sl = &s->skims[i];
        if (sl->k == NULL || sl->id != id)
            continue;
        if (lc__skim_feed(sl->k, p, n, skim_found, s) != 0 || fin)
            skim_drop(sl);
        return;
    }
}

/*
 * st is reset because its bytes did not decode (over max_message, say),
 * found as they arrive, as its messages are reached (deliver_pending) or as
 * a sub-channel is named (bind_early_locked), or because the peer overran
 * its window. On a carrier that passes fds, the message it refused and
 * those behind it still brought their fds, which would wait in in_fds until
 * the session is freed and count toward MAX_UNCLAIMED_FDS. What the decoder
 * buffered from the refused message on is skimmed now, then extra (bytes
 * of the current frame the decoder did not take); DATA that still comes for
 * the stream (sent before the peer read our RST_STREAM) is skimmed as it
 * arrives (skim_more_locked), until its FIN or until SKIMS_KEEP newer
 * resets take the slot. Messages decoded before the refused one claim their
 * own fds. mu held.
 */
static void skim_start_locked(lc_session *s, lc_stream *st, const uint8_t *extra, size_t extra_n, bool fin)
{
    if (!atomic_load_explicit(&s->read_fds, memory_order_relaxed))
        return; /* no fd can have come to us: nothing to find */
    if (st->kind != ST_RECV && st->kind != ST_FWD_TO_SENDER)
        return; /* not messages (an unbound sub-stream may be a byte stream) */
    if (st->skimmed) {
        /* skimmed since binding found its early bytes bad: go on */
        skim_more_locked(s, st->id, extra, extra_n, fin);
        return;
    }
    st->skimmed = true;
    lc_skim *k = malloc(sizeof *k);
    if (k == NULL)
        return; /* the fds stay until the session is freed, as before */
    lc__skim_init(k);
    size_t n = 0;
    const uint8_t *rest = st->sd_init ? lc__sd_rest(&st->sd, &n) : NULL;
    if ((n > 0 && lc__skim_feed(k, rest, n, skim_found, s) != 0) ||
        (extra_n > 0 && lc__skim_feed(k, extra, extra_n, skim_found, s) != 0) || fin) {
        lc__skim_free(k);
        free(k);
        return;
    }
    struct lc_skim_slot *sl = &s->skims[s->skim_next++ % SKIMS_KEEP];
    skim_drop(sl);
    sl->id = st->id;
    sl->k = k;
}

/* A sub-stream just named by a message may already hold bytes (and its FIN):
 * decode them now, and have it delivered. mu held. */
static void bind_early_locked(lc_session *s, lc_stream *sub, kick_list *k)
{
    int rc = 0;
    if (sub->early.len > 0)
        rc = feed_stream_locked(s, sub, sub->early.data, sub->early.len);
    else if (!sub->sd_init)
        rc = feed_stream_locked(s, sub, NULL, 0);
    early_drop_locked(s, sub);
    if (rc >= 0 && sub->early_fin) {
        int frc = lc__sd_finish(&sub->sd);
        if (frc < 0 && frc != LC__SD_AGAIN)
            rc = frc;
        else
            sub->remote_fin_pending = true;
        if (!sub->local_fin) {
            sub->local_fin = true;
            sub->send_fin = !quiet_peer(s) || sub->kind == ST_BYTES;
        }
    }
    if (rc < 0) {
        sub->bad = rc;
        skim_start_locked(s, sub, NULL, 0, sub->early_fin);
    }
    kl_add(k, sub);
}

static void deliver_pending(lc_stream *st);
static void send_control(lc_session *s, int (*fn)(lc_session *s, void *arg), void *arg);
static int ctl_fin(lc_session *s, void *arg);

static void bytes_kick(lc_stream *st);

/* Runs what binding queued: FINs, errors, deliveries. No lock held. */
static void kick_streams(lc_session *s, kick_list *k)
{
    for (size_t i = 0; i < k->n; i++) {
        lc_stream *st = k->st[i];
        pthread_mutex_lock(&s->mu);
        bool fin = st->send_fin;
        st->send_fin = false;
        int bad = st->bad;
        st->bad = 0;
        pthread_mutex_unlock(&s->mu);
        if (fin) {
            ctl_arg fa = { st->id, 0 };
            send_control(s, ctl_fin, &fa);
        }
        if (st->kind == ST_BYTES)
            bytes_kick(st);
        else if (bad)
            lc__close_error(st->into, LC_EPROTO);
        else
            deliver_pending(st);
        stream_unref(st);
    }
    kl_free(k);
}

/* Walks v for unresolved references; returns how many are still missing
 * (peer streams not arrived yet), or a negative error. Resolves the ones it
 * can, in place. mu held. */
static int resolve_refs_locked(lc_session *s, lc_msg *m, lc_value *v, int depth, kick_list *k);

static int resolve_one_locked(lc_session *s, lc_msg *m, lc_value *v, kick_list *k)
{
    if ((v->u.ref & LC_REF_PASSED_FD) && v->mode >= 1 && v->mode <= 3) {
        /* ours: the fd came with SCM_RIGHTS; sequence numbers count arrivals */
        void *slot = lc__map_del(&s->in_fds, v->u.ref & ~LC_REF_PASSED_FD);
        if (slot == NULL)
            return 1; /* not arrived yet (a bounded wait, as for streams) */
        uint8_t ext = v->mode;
        v->type = LC_STREAM;
        v->mode = ext == 1 ? LC_STREAM_DUPLEX : ext == 2 ? LC_STREAM_WRITE : LC_STREAM_READ;
        v->u.fd = (int)(intptr_t)slot - 1;
        v->flags &= (uint8_t)~LC_VF_TAKEN;
        return lc__msg_track_attachment(m, v) != 0 ? LC_ENOMEM : 0;
    }
    lc_stream *sub = lc__map_get(&s->peer_refs, v->u.ref);
    if (sub == NULL)
        return was_claimed_locked(s, v->u.ref) ? LC_EPROTO /* named twice */
                                               : 1;        /* not arrived yet */
    if (sub->claimed)
        return LC_EPROTO; /* a sub-stream names one channel end, once */
    uint8_t ext = v->mode;
    if (ext == 4) {
        /* a Sender for us: we send on the peer's sub-stream */
        sub->kind = ST_SEND;
        sub->claimed = true;
        lc_sender *snd = make_net_sender(sub, true);
        if (snd == NULL)
            return LC_ENOMEM;
        v->type = LC_SENDER;
        v->mode = 0;
        v->u.sender = snd;
    } else if (ext == 5) {
        /* a Receiver for us: the peer writes messages on the sub-stream */
        lc_receiver *r;
        lc_sender *into;
        int rc = lc_pipe(&r, &into, s->opt.recv_queue);
        if (rc != 0)
            return rc;
        sub->kind = ST_RECV;
        sub->claimed = true;
        sub->into = into;
        lc__receiver_set_feeder(r, &feeder_ops, s);
        v->type = LC_RECEIVER;
        v->mode = 0;
        v->u.receiver = r;
    } else if (ext >= 1 && ext <= 3) {
        /* a byte stream: the application gets one end of a socketpair, we
         * pump the other to and from the sub-stream */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            return -errno;
        sub->kind = ST_BYTES;
        sub->claimed = true;
        if (ext != 2) {
            /* Room for one window in the socket, up to 1 MiB (the kernel
             * caps it at wmem_max, and doubles it): with the default ~208
             * KiB, a reader a little slower than the carrier kept filling
             * it, and the bytes went through fd_out and an EPOLLOUT
             * wake-up. bench_session tcp lc-bulk-sp: ~2000 -> ~2550 MB/s,
             * the receiving process's CPU per MiB 400-480 -> 320-350 us.
             * Not more: toward a peer without windows, this socket is what
             * holds the bytes of an fd nobody reads beyond BYTES_BUF
             * (test_byte_stream_without_windows_pauses_reading: 9 MiB with
             * a 4 MiB window here, where wmem_max is 4 MiB). */
            int sz = (int)(s->opt.stream_window < BYTES_SOCKBUF_MAX ? s->opt.stream_window : BYTES_SOCKBUF_MAX);
            setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        }
        /* ext 2: the holder writes (we read our end); 3: the holder reads */
        int rc = bytes_start(sub, sv[1], ext != 3, ext != 2, true);
        if (rc != 0) {
            close(sv[0]);
            return rc;
        }
        v->type = LC_STREAM;
        v->mode = ext == 1 ? LC_STREAM_DUPLEX : ext == 2 ? LC_STREAM_WRITE : LC_STREAM_READ;
        v->u.fd = sv[0];
    } else {
        return LC_EPROTO;
    }
    v->flags &= (uint8_t)~LC_VF_TAKEN;
    lc__map_del(&s->peer_refs, sub->ref);
    remember_claimed_locked(s, sub->ref); /* a second naming fails at once */
    if (lc__msg_track_attachment(m, v) != 0)
        return LC_ENOMEM;
    if (sub->kind == ST_RECV)
        bind_early_locked(s, sub, k); /* bytes that came before it was named */
    if (sub->kind == ST_BYTES && (sub->early.len > 0 || sub->early_fin)) {
        /* bytes (and maybe the end) that came before it was named */
        lc__buf_append(&sub->fd_out, sub->early.data, sub->early.len);
        early_drop_locked(s, sub);
        sub->in_fin = sub->early_fin;
        kl_add(k, sub);
    }
    if (sub->kind == ST_SEND)
        early_drop_locked(s, sub); /* DATA against its direction: ignored, as Go does */
    return 0;
}

static int resolve_refs_locked(lc_session *s, lc_msg *m, lc_value *v, int depth, kick_list *k)
{
    if (v == NULL || depth > 4096)
        return 0;
    int missing = 0;
    switch (v->type) {
    case LC__REF: {
        int rc = resolve_one_locked(s, m, v, k);
        if (rc < 0)
            return rc;
        return rc;
    }
    case LC_ARRAY:
        for (uint32_t i = 0; i < v->len; i++) {
            int rc = resolve_refs_locked(s, m, v->u.items[i], depth + 1, k);
            if (rc < 0)
                return rc;
            missing += rc;
        }
        return missing;
    case LC_MAP:
        for (uint32_t i = 0; i < 2 * v->len; i++) {
            int rc = resolve_refs_locked(s, m, v->u.items[i], depth + 1, k);
            if (rc < 0)
                return rc;
            missing += rc;
        }
        return missing;
    default:
        return 0;
    }
}

static int resolve_msg_locked(lc_session *s, lc_msg *m, kick_list *k)
{
    if (!m->has_refs)
        return 0; /* nothing to walk: most messages */
    if (m->body != NULL) {
        int missing = 0;
        for (uint32_t i = 0; i < m->body_att_len; i++) {
            int rc = resolve_refs_locked(s, m, m->body_att[i], 0, k);
            if (rc < 0)
                return rc;
            missing += rc;
        }
        return missing;
    }
    return resolve_refs_locked(s, m, m->root, 0, k);
}

/* ---- receiving: delivery ------------------------------------------------- */

static void deliver_pending(lc_stream *st);
static void resume_reading(lc_session *s);
static void arm_read(lc_session *s);

/*
 * The local Sender a forwarded channel delivers into refused a message for
 * good (rc: LC_ECLOSED when its channel was closed or its receiver released,
 * LC_ESESSION when it belongs to a session that died). The peer's sends on
 * that channel would go on succeeding into nothing (a reply channel whose
 * requester gave up, a channel forwarded through us from a session that is
 * gone): reset the stream, so that the peer's Sender gets LC_ECLOSED. What
 * is queued for it is dropped. Only for ST_FWD_TO_SENDER: a network
 * Receiver the application released resets nothing (PROTOCOL.md 3.9).
 */
static void forward_refused(lc_stream *st, int rc)
{
    lc_session *s = st->s;
    if (st->kind != ST_FWD_TO_SENDER || rc == 0 || rc == LC_ETIMEDOUT)
        return;
    pthread_mutex_lock(&s->mu);
    bool rst = !st->reset && !st->remote_fin && !s->dead;
    lc_msg *drop = NULL;
    uint32_t sid = st->id;
    if (rst) {
        st->reset = true; /* nothing more is decoded */
        drop = pending_take_all_locked(st);
        stream_maybe_done_locked(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    msg_chain_free(drop);
    if (rst) {
        ctl_arg ra = { sid, LC_SPDY_CANCEL };
        send_control(s, ctl_rst, &ra);
    }
}

/* Sets st->waiting_refs, counting the streams that wait (retry_waiting_refs
 * walks the table only when some does). mu held. */
static void waiting_refs_set_locked(lc_session *s, lc_stream *st, bool waiting)
{
    if (st->waiting_refs != waiting)
        s->refs_waiters += waiting ? 1 : (size_t)-1;
    st->waiting_refs = waiting;
}

/*
 * Sets st->push_op, counting the streams whose is set: the check for a full
 * local queue (read_carrier, resume_reading, toward a peer without windows)
 * walks the stream table only when some is, not after every read batch
 * (O(channels) per read with many channels open). The count is never too
 * low; a stream freed with its push_op set would leave it too high, which
 * only costs walks. mu held.
 */
static void push_op_set_locked(lc_session *s, lc_stream *st, lc_async *op)
{
    if ((st->push_op == NULL) != (op == NULL))
        s->pushes_set += op != NULL ? 1 : (size_t)-1;
    st->push_op = op;
}

static void push_done(void *ctx, int result, lc_msg *m)
{
    lc_stream *st = ctx;
    lc_session *s = st->s;
    (void)m;
    pthread_mutex_lock(&s->mu);
    push_op_set_locked(s, st, NULL);
    lc_msg *sent = st->pushing;
    st->pushing = NULL;
    pthread_mutex_unlock(&s->mu);
    if (result != 0) {
        lc_msg_free(sent); /* the local end went away: drop (fds closed) */
        forward_refused(st, result);
    }
    deliver_pending(st);
    stream_unref(st); /* the op's reference */
}

/* Decodes the next messages of st from the bytes its decoder holds. mu held.
 * False when they do not decode (or the channel's end is cut short). */
static bool decode_more_locked(lc_session *s, lc_stream *st)
{
    int rc = feed_stream_locked(s, st, NULL, 0);
    if (rc == 0 && st->remote_fin && !st->peer_reset) {
        int frc = lc__sd_finish(&st->sd);
        if (frc < 0)
            rc = frc; /* the last message was cut by the FIN */
    }
    return rc >= 0;
}

/* The local queue has room again (or its receiver is gone: the next send
 * says so). */
static void room_done(void *ctx, int result, lc_msg *m)
{
    lc_stream *st = ctx;
    lc_session *s = st->s;
    (void)result;
    (void)m;
    pthread_mutex_lock(&s->mu);
    push_op_set_locked(s, st, NULL);
    pthread_mutex_unlock(&s->mu);
    deliver_pending(st);
    stream_unref(st); /* the watch's reference */
}

/* Plain messages handed to the local queue per lock round. */
#define DELIVER_BATCH 32

/* Takes the head of st's decoded, undelivered messages. mu held. */
static lc_msg *pending_pop_locked(lc_stream *st)
{
    lc_msg *m = st->pending_head;
    st->pending_head = m->next;
    if (st->pending_head == NULL)
        st->pending_tail = NULL;
    st->npending--;
    return m;
}

/* Puts the n messages chained from first to last back at the head, in
 * order (the local queue was full). mu held. */
static void pending_unpop_locked(lc_stream *st, lc_msg *first, lc_msg *last, size_t n)
{
    last->next = st->pending_head;
    st->pending_head = first;
    if (st->pending_tail == NULL)
        st->pending_tail = last;
    st->npending += n;
}

/* The end of one hand-over of m (rc: its lc_send result): nothing is being
 * delivered any more, m is dropped if the local end refused it, and the
 * delivery's stream reference goes. */
static void push_end(lc_stream *st, lc_msg *m, int rc)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->mu);
    push_op_set_locked(s, st, NULL);
    st->pushing = NULL;
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) {
        lc_msg_free(m); /* the local end went away: drop (fds closed) */
        forward_refused(st, rc);
    }
    stream_unref(st);
}

/*
 * The local queue is full and the head of st's list waits for it. The
 * caller delivers (push_op is its placeholder) and holds a reference for
 * the wait. Into a ring: wait for a quarter of it to be free and refill in
 * one go (one callback per message, as a send op gives, cost the receiving
 * thread more than the messages). Into anything else (a forwarded message
 * into the application's own channel): one callback send. Returns true when
 * a callback continues the delivery, false when the caller goes on (push_op
 * cleared, reference dropped).
 */
static bool deliver_wait_room(lc_stream *st)
{
    lc_session *s = st->s;
    lc_async *op;
    int rc = lc__room_watch(st->into, s->opt.recv_queue / 4, room_done, st, &op);
    if (rc == LC__PENDING)
        return true; /* room_done continues */
    pthread_mutex_lock(&s->mu);
    lc_msg *m = rc == 0 ? NULL : st->pending_head;
    if (m == NULL) {
        /* room came meanwhile (or the ref timer dropped the list) */
        push_op_set_locked(s, st, NULL);
        pthread_mutex_unlock(&s->mu);
        stream_unref(st);
        return false;
    }
    pending_pop_locked(st);
    st->pushing = m;
    pthread_mutex_unlock(&s->mu);
    rc = lc__send_async(st->into, m, push_done, st, &op);
    if (rc == LC__PENDING)
        return true; /* push_done continues */
    push_end(st, m, rc);
    return false;
}

/*
 * Pushes queued messages into the stream's local channel while it has room.
 * Called without locks. Messages whose references are not resolved yet stay
 * queued (in order) until the sub-stream arrives or the deadline passes.
 * noted: the reader's batch listed st (note_delivery): cleared in the first
 * lock round.
 */
static void deliver_pending_noted(lc_stream *st, bool noted);

static void deliver_pending(lc_stream *st)
{
    deliver_pending_noted(st, false);
}

static void deliver_pending_noted(lc_stream *st, bool noted)
{
    lc_session *s = st->s;
    bool locked = false; /* a round that ends holding mu passes it on */
    for (;;) {
        if (!locked)
            pthread_mutex_lock(&s->mu);
        locked = false;
        if (noted) {
            st->noted = false; /* messages read from now on note it again */
            noted = false;
        }
        if (st->pending_head == NULL && st->push_op == NULL && st->sd_init && !st->reset &&
            !decode_more_locked(s, st)) {
            /* this channel's bytes do not decode (found now, as its messages
             * are reached): the receiver gets what decoded before, then
             * LC_EPROTO, and the peer a reset */
            bool rst = !st->remote_fin;
            uint32_t sid = st->id;
            st->reset = true;
            skim_start_locked(s, st, NULL, 0, st->remote_fin);
            if (st->into != NULL) {
                st->end_err = LC_EPROTO;
                st->remote_fin_pending = true;
            }
            stream_maybe_done_locked(s, st);
            pthread_mutex_unlock(&s->mu);
            if (rst) {
                ctl_arg ra = { sid, LC_SPDY_PROTOCOL_ERROR };
                send_control(s, ctl_rst, &ra);
            }
            continue;
        }
        lc_msg *m = st->pending_head;
        if (m == NULL || st->push_op != NULL) {
            /* idle: nothing listed and nothing being handed over */
            bool idle = m == NULL && st->push_op == NULL;
            bool close_now = idle && st->remote_fin_pending;
            if (close_now) {
                st->remote_fin_pending = false;
                stream_maybe_done_locked(s, st); /* (our caller holds a reference) */
            }
            /* everything received is in the local queue: the peer may send
             * that much again (a full queue grants nothing: that stream stalls,
             * the others flow) */
            uint64_t grant = 0;
            if (idle && !st->remote_fin && atomic_load(&s->peer_fc) &&
                st->fed - st->acked >= s->opt.stream_window / 2) {
                /* batched: the sender still has at least half a window */
                grant = st->fed - st->acked;
                st->acked = st->fed;
            }
            uint32_t sid = st->id;
            pthread_mutex_unlock(&s->mu);
            if (grant > 0) {
                ctl_arg wa = { sid, (uint32_t)(grant > 0x7fffffffu ? 0x7fffffffu : grant) };
                send_control(s, ctl_window, &wa);
            }
            if (close_now && st->end_err)
                lc__close_error(st->into, st->end_err); /* after what decoded before */
            else if (close_now)
                lc_close(st->into); /* end of channel after the last message */
            if (idle)
                resume_reading(s);
            return;
        }
        if (!m->has_refs) {
            /* The common case, plain messages: hand a batch over with one
             * lock round, not two per message (the reading thread takes mu
             * for every frame meanwhile: bench_session's receiver spent ~8%
             * spinning on it). */
            lc_msg *batch[DELIVER_BATCH];
            size_t nb = 0;
            while (st->pending_head != NULL && !st->pending_head->has_refs && nb < DELIVER_BATCH)
                batch[nb++] = pending_pop_locked(st);
            push_op_set_locked(s, st, (lc_async *)1); /* we are delivering: nobody else does */
            stream_ref(st);
            pthread_mutex_unlock(&s->mu);
            /* into a ring: one hand-over (one wake-up fence) for the lot */
            size_t i = 0;
            int refused = 0;
            int rc = lc__send_batch(st->into, batch, nb, &i);
            if (rc == LC_EINVAL) {
                /* not a ring (a forwarded channel into a Sender the
                 * application passed): one send each */
                for (; i < nb; i++) {
                    rc = lc_send(st->into, batch[i], 0);
                    if (rc == LC_ETIMEDOUT)
                        break; /* full */
                    if (rc != 0) {
                        lc_msg_free(batch[i]); /* the local end went away: drop (fds closed) */
                        refused = rc;
                    }
                }
            } else if (rc == LC_ECLOSED) {
                for (; i < nb; i++)
                    lc_msg_free(batch[i]); /* the local end went away: drop (fds closed) */
                refused = rc;
            }
            if (refused != 0)
                forward_refused(st, refused);
            pthread_mutex_lock(&s->mu);
            if (i < nb) {
                for (size_t j = i; j + 1 < nb; j++)
                    batch[j]->next = batch[j + 1];
                pending_unpop_locked(st, batch[i], batch[nb - 1], nb - i);
                pthread_mutex_unlock(&s->mu);
                if (deliver_wait_room(st))
                    return; /* a callback continues */
                continue;
            }
            push_op_set_locked(s, st, NULL);
            /* Not the last reference (callers hold one): dropped under mu,
             * which the next round keeps (one lock round less per delivered
             * batch). The last one frees, which needs mu released. */
            int r = atomic_load_explicit(&st->refs, memory_order_relaxed);
            while (r > 1 && !atomic_compare_exchange_weak_explicit(&st->refs, &r, r - 1, memory_order_acq_rel,
                                                                    memory_order_relaxed))
                ;
            if (r > 1) {
                locked = true;
                continue;
            }
            pthread_mutex_unlock(&s->mu);
            stream_unref(st);
            continue;
        }
        kick_list k;
        kl_init(&k);
        int missing = resolve_msg_locked(s, m, &k);
        if (missing != 0 && s->dead) {
            /* its sub-streams can no longer come (session_fail emptied the
             * tables): it and what follows it are lost, and the channel
             * ends now with the session's error */
            lc_msg *lost = pending_take_all_locked(st);
            st->reset = true; /* decode nothing more */
            st->remote_fin_pending = false;
            int end = st->end_err ? st->end_err : LC_ESESSION;
            pthread_mutex_unlock(&s->mu);
            kick_streams(s, &k);
            msg_chain_free(lost);
            lc__close_error(st->into, end);
            continue;
        }
        if (missing > 0) {
            if (!st->waiting_refs)
                st->waiting_since = lc__now_ns(); /* the bounded wait starts now */
            waiting_refs_set_locked(s, st, true);
            pthread_mutex_unlock(&s->mu);
            kick_streams(s, &k);
            /* the missing SYN_STREAMs can only arrive by reading: a session
             * paused for backpressure must read again (found by fuzz_session) */
            resume_reading(s);
            return; /* a SYN_STREAM or the ref timer calls us again */
        }
        if (st->waiting_refs) {
            waiting_refs_set_locked(s, st, false);
            st->waiting_since = 0;
            stream_maybe_done_locked(s, st); /* it may have ended meanwhile */
        }
        if (missing < 0) {
            pending_pop_locked(st);
            pthread_mutex_unlock(&s->mu);
            kick_streams(s, &k);
            lc_msg_free(m);
            lc__close_error(st->into, LC_EPROTO);
            continue;
        }
        if (k.n == 0) {
            /* resolved, and no sub-stream to start before it is seen (a
             * reply Sender): handed over as a plain message, in the next
             * round that keeps mu (one lock round and a callback-capable
             * send less per fresh reply channel) */
            m->has_refs = 0;
            locked = true;
            continue;
        }
        /* off the list before it is handed over: once sent, m is the
         * receiver's and may already be freed */
        pending_pop_locked(st);
        stream_ref(st);
        push_op_set_locked(s, st, (lc_async *)1); /* placeholder while registering */
        st->pushing = m;
        pthread_mutex_unlock(&s->mu);
        kick_streams(s, &k); /* sub-streams first: their queues exist before m is seen */
        /* the common case, the local queue has room: a plain try, without
         * the callback operation's allocation */
        int rc = lc_send(st->into, m, 0);
        if (rc == LC_ETIMEDOUT) {
            pthread_mutex_lock(&s->mu);
            pending_unpop_locked(st, m, m, 1);
            st->pushing = NULL;
            pthread_mutex_unlock(&s->mu);
            if (deliver_wait_room(st))
                return; /* a callback continues */
            continue;
        }
        push_end(st, m, rc);
    }
}

/* ---- reading the carrier ------------------------------------------------- */

static lc_stream *new_peer_stream_locked(lc_session *s, uint32_t id, uint64_t ref, st_kind kind)
{
    lc_stream *st = stream_new(s, kind);
    if (st == NULL)
        return NULL;
    st->id = id;
    st->ref = ref;
    if (lc__map_put(&s->streams, id, st) != 0) {
        stream_unref(st);
        return NULL;
    }
    st->in_table = true; /* the creation reference is the table's */
    return st;
}

/* Streams (channels, sub-streams; the peer's and ours) a session holds open
 * at once; the peer's new ones past it are refused (PROTOCOL.md 2.5). */
#define MAX_OPEN_STREAMS 65536

static void on_syn_stream(lc_session *s, const lc_spdy_frame *f, lc_receiver **announce)
{
    uint64_t ref = 0, parent = 0;
    const lc_spdy_header *hr = lc__spdy_header_find(f->headers, f->n_headers, "libchan-ref");
    const lc_spdy_header *hp = lc__spdy_header_find(f->headers, f->n_headers, "libchan-parent-ref");
    bool peer_parity = (f->stream_id & 1) == (s->is_client ? 0u : 1u);
    if (!peer_parity || f->stream_id <= s->last_peer_id) {
        /* a reused or wrongly numbered stream id: the framing can no longer
         * be trusted */
        protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
        return;
    }
    s->last_peer_id = f->stream_id;
    if (!parse_u64(hr, &ref) || (hp != NULL && !parse_u64(hp, &parent))) {
        /* a stream without a usable reference: refuse that stream only, as Go does */
        ctl_arg rst = { f->stream_id, LC_SPDY_PROTOCOL_ERROR };
        send_control(s, ctl_rst, &rst);
        return;
    }
    ctl_arg reply = { f->stream_id, 200 };
    pthread_mutex_lock(&s->mu);
    if (s->dead) {
        /* session_fail ran meanwhile (lc_session_free on another thread) and
         * emptied the tables: a stream put there now would never leave, and
         * would keep the session alive */
        pthread_mutex_unlock(&s->mu);
        return;
    }
    if (s->goaway_sent || s->closing) {
        pthread_mutex_unlock(&s->mu);
        reply.status = 502;
        send_control(s, ctl_syn_reply, &reply);
        return;
    }
    if (s->streams.len >= MAX_OPEN_STREAMS) {
        /* too many open at once: this one is refused (its Sender gets
         * LC_ECLOSED; a message naming it fails at once). A peer that opened
         * channels and never closed them grew the table without bound (the
         * accept queue only bounds channels nobody took yet). */
        if (hp != NULL)
            remember_claimed_locked(s, ref);
        pthread_mutex_unlock(&s->mu);
        ctl_arg rst = { f->stream_id, LC_SPDY_REFUSED_STREAM };
        send_control(s, ctl_rst, &rst);
        return;
    }
    if (hp == NULL) {
        /* a new top-level channel: queue its Receiver for the application */
        lc_stream *st = new_peer_stream_locked(s, f->stream_id, ref, ST_RECV);
        lc_receiver *r = NULL;
        lc_sender *into = NULL;
        if (st == NULL || lc_pipe(&r, &into, s->opt.recv_queue) != 0) {
            pthread_mutex_unlock(&s->mu);
            protocol_error(s, LC_SPDY_GOAWAY_INTERNAL_ERROR);
            return;
        }
        st->into = into;
        lc__receiver_set_feeder(r, &feeder_ops, s);
        *announce = r;
    } else {
        /* a sub-stream: recorded by reference until a message names it */
        if (lc__map_get(&s->peer_refs, ref) != NULL) {
            pthread_mutex_unlock(&s->mu);
            protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
            return;
        }
        lc_stream *st = new_peer_stream_locked(s, f->stream_id, ref, ST_UNBOUND);
        if (st == NULL || lc__map_put(&s->peer_refs, ref, st) != 0) {
            pthread_mutex_unlock(&s->mu);
            protocol_error(s, LC_SPDY_GOAWAY_INTERNAL_ERROR);
            return;
        }
        st->parent_ref = parent;
        atomic_store_explicit(&s->new_refs, true, memory_order_relaxed); /* messages waiting for it may go on */
    }
    lc_sender *end_now = NULL;
    if (f->flags & LC_SPDY_FLAG_FIN) {
        lc_stream *st = lc__map_get(&s->streams, f->stream_id);
        if (st)
            st->early_fin = true;
        if (st && hp == NULL) {
            /* a top-level channel opened and closed at once: it is empty;
             * answered with our FIN as after a DATA FIN (3.8), and gone from
             * the table (it used to stay there for the session's life) */
            st->remote_fin = true;
            st->local_fin = true;
            end_now = lc_sender_retain(st->into);
            stream_maybe_done_locked(s, st);
        }
    }
    pthread_mutex_unlock(&s->mu);
    /* A peer of ours that announced NO_REPLIES waits for none (it said so
     * in its first frame, read before this one). bench_session unix
     * lc-rt-fresh, 8 interleaved pairs: p50 5.75 -> 5.4 us (the reply
     * channel's SYN_REPLY was deflated, written and inflated in every round
     * trip, on the path of the reply). */
    if (!quiet_peer(s))
        send_control(s, ctl_syn_reply, &reply);
    if (end_now) {
        ctl_arg fa = { f->stream_id, 0 };
        if (!quiet_peer(s))
            send_control_deferred(s, ctl_fin, &fa);
        lc_close(end_now); /* after the Receiver is announced (run_actions) */
        lc_sender_release(end_now);
    }
}

/*
 * Messages decoded ahead of delivery, per stream. The rest of what arrived
 * stays as bytes in the stream decoder until the local queue takes these:
 * decoding a whole 64 KiB read at once (~3000 SimpleStructs, ~1 MB of
 * messages) made the heap grow and shrink on every read, and bench_session
 * spent a third of the receiver's CPU in page faults and malloc.
 */
#define DECODE_AHEAD 32

/* Feeds message bytes of stream st into its decoder (p may be NULL, n 0) and
 * decodes messages until DECODE_AHEAD are waiting. mu held. Returns 1 when
 * messages wait for delivery, 0 when none, or an error. */
static int feed_stream_locked(lc_session *s, lc_stream *st, const uint8_t *p, size_t n)
{
    if (!st->sd_init) {
        lc__sd_init(&st->sd, &s->opt.limits, NULL);
        st->sd_init = true;
    }
    int rc = n ? lc__sd_feed(&st->sd, p, n) : 0;
    while (rc == 0 && st->npending < DECODE_AHEAD) {
        lc_msg *m;
        rc = lc__sd_next(&st->sd, &m);
        if (rc != 0)
            break;
        m->next = NULL;
        if (st->pending_tail)
            st->pending_tail->next = m;
        else
            st->pending_head = m;
        st->pending_tail = m;
        st->npending++;
    }
    if (rc < 0)
        return rc;
    return st->npending > 0;
}

typedef struct rd_actions {
    kick_list deliver;      /* streams with new messages (referenced) */
    lc_receiver *announce;
} rd_actions;

/* Notes st for delivery once per batch (the flag avoids duplicates). mu held. */
static void note_delivery(rd_actions *a, lc_stream *st)
{
    if (st->noted)
        return;
    if (kl_add(&a->deliver, st))
        st->noted = true;
}

static void run_actions(lc_session *s, rd_actions *a)
{
    if (a->announce) {
        lc_msg *m = lc_msg_new();
        lc_value *v = m ? lc_new_receiver(m, a->announce) : NULL;
        if (v == NULL || lc_msg_set_root(m, v) != 0 || lc_send(s->incoming_s, m, 0) != 0)
            lc_msg_free(m); /* too many unclaimed channels: the channel is dropped */
        a->announce = NULL;
    }
    for (size_t i = 0; i < a->deliver.n; i++) {
        lc_stream *st = a->deliver.st[i];
        deliver_pending_noted(st, true);
        stream_unref(st);
    }
    kl_free(&a->deliver);
}

/* Streams whose messages wait for references get another chance. */
static void retry_waiting_refs(lc_session *s, rd_actions *a)
{
    /* only the reader's thread sets it (SYN_STREAMs, passed fds): no lock
     * to find it unset, the common case */
    if (!atomic_load_explicit(&s->new_refs, memory_order_relaxed))
        return;
    pthread_mutex_lock(&s->mu);
    atomic_store_explicit(&s->new_refs, false, memory_order_relaxed);
    /* Nobody waits, the common case: no walk of the table. Every fresh
     * reply channel sets new_refs; with 10000 other channels open, the walk
     * made a fresh reply round trip 103 us instead of 6 (bench_session,
     * "fresh, 10000 others open"). */
    for (size_t i = 0; s->refs_waiters > 0 && i < s->streams.cap; i++) {
        lc_stream *st = s->streams.slots[i].val;
        if (st != NULL && st != LC_MAP_TOMB && st->waiting_refs)
            note_delivery(a, st);
    }
    pthread_mutex_unlock(&s->mu);
}

/*
 * A peer that announced windows (6.2) and sends past ours: its unacknowledged
 * bytes on st exceed what a well-behaved peer can have out. That is our
 * window, or SPDY/3's 64 KiB while it had not read our SETTINGS, plus, on a
 * channel, one message (a message that starts inside the window goes whole;
 * a bigger one than max_message is refused anyway). Byte streams never
 * overdraw. Without this check such a peer was buffered without bound
 * (test_window_overrun_is_bounded: 48 MiB on a 64 KiB window). mu held.
 */
static bool window_overrun_locked(const lc_session *s, const lc_stream *st)
{
    if (!atomic_load_explicit(&s->peer_fc, memory_order_relaxed))
        return false;
    uint64_t limit = s->opt.stream_window > LC_SPDY_DEFAULT_WINDOW ? s->opt.stream_window : LC_SPDY_DEFAULT_WINDOW;
    switch (st->kind) {
    case ST_BYTES:
        break;
    case ST_RECV:
    case ST_FWD_TO_SENDER:
    case ST_UNBOUND:
        limit += s->opt.limits.max_message;
        break;
    default:
        return false; /* streams we only write: their DATA is ignored */
    }
    return st->fed - st->acked > limit;
}

static void on_data(lc_session *s, const lc_spdy_frame *f, rd_actions *a)
{
    bool fin = f->data_last && (f->flags & LC_SPDY_FLAG_FIN);
    bool bytes_kick_locked = false;
    pthread_mutex_lock(&s->mu);
    lc_stream *st = lc__map_get(&s->streams, f->stream_id);
    if (st == NULL || st->remote_fin) {
        if (st == NULL)
            skim_more_locked(s, f->stream_id, f->data, f->data_len, fin);
        pthread_mutex_unlock(&s->mu);
        if (f->data_last) {
            ctl_arg rst = { f->stream_id, LC_SPDY_INVALID_STREAM };
            send_control(s, ctl_rst, &rst);
        }
        return;
    }
    stream_ref(st); /* stream_maybe_done_locked may drop the table's reference */
    st->fed += f->data_len;
    int rc = 0;
    uint32_t rst_status = LC_SPDY_PROTOCOL_ERROR;
    bool not_taken = false; /* the frame's bytes did not reach st's decoder */
    if (window_overrun_locked(s, st)) {
        rc = LC_EPROTO;
        rst_status = LC_SPDY_FLOW_CONTROL_ERROR;
        not_taken = true;
    } else switch (st->kind) {
    case ST_RECV:
    case ST_FWD_TO_SENDER:
        /* (a decoder that failed before takes no more bytes) */
        not_taken = st->sd_init && st->sd.err != 0;
        rc = feed_stream_locked(s, st, f->data, f->data_len);
        if (rc > 0)
            note_delivery(a, st);
        break;
    case ST_BYTES:
        rc = bytes_inbound_locked(s, st, f->data, f->data_len);
        break;
    case ST_UNBOUND:
        /* not named by a message yet: keep the bytes, bounded per stream and
         * in all (EARLY_TOTAL_MAX: 48 such streams held 48 x max_message) */
        if (st->early.len + f->data_len > s->opt.limits.max_message ||
            s->early_total + f->data_len > EARLY_TOTAL_MAX(s)) {
            rc = LC_ETOOBIG;
        } else {
            rc = lc__buf_append(&st->early, f->data, f->data_len);
            if (rc == 0)
                s->early_total += f->data_len;
        }
        break;
    default:
        /* data on a stream we only write: ignored, as Go does */
        st->acked = st->fed;
        break;
    }
    if (rc < 0) {
        /* this channel's bytes do not decode (or overran its window): reset
         * it; its receiver gets the messages decoded before, then LC_EPROTO;
         * a byte stream's fd is closed (its holder sees EOF/EPIPE) */
        st->reset = true;
        skim_start_locked(s, st, not_taken ? f->data : NULL, not_taken ? f->data_len : 0, fin);
        bool deliver = st->into != NULL;
        if (deliver) {
            st->end_err = LC_EPROTO;
            st->remote_fin_pending = true;
            note_delivery(a, st);
        }
        bool bytes = st->kind == ST_BYTES;
        if (bytes)
            st->out_open = st->in_open = false;
        stream_maybe_done_locked(s, st);
        pthread_mutex_unlock(&s->mu);
        ctl_arg rst = { f->stream_id, rst_status };
        send_control(s, ctl_rst, &rst);
        if (bytes)
            bytes_close(st);
        stream_unref(st);
        return;
    }
    if (fin) {
        st->remote_fin = true;
        if (st->kind == ST_UNBOUND)
            st->early_fin = true;
        if (st->kind == ST_BYTES) {
            st->in_fin = true;
            bytes_kick_locked = true;
        }
        if (st->kind == ST_RECV || st->kind == ST_FWD_TO_SENDER) {
            /* end of channel once everything decoded is delivered; bytes
             * that do not decode (or a message the FIN cut) end it with
             * LC_EPROTO after those messages, not at once: closing the
             * channel here lost the messages still waiting to be delivered
             * and passed on the decoder's own code (fuzz_session) */
            int frc = st->sd_init ? lc__sd_finish(&st->sd) : 0;
            if (frc < 0 && st->into != NULL)
                st->end_err = LC_EPROTO;
            st->remote_fin_pending = true;
            note_delivery(a, st);
            if (!st->local_fin) {
                /* the receiving side half-closes after end-of-channel (as Go;
                 * silently toward a peer that said NO_REPLIES) */
                st->local_fin = true;
                st->send_fin = !quiet_peer(s);
            }
        }
        stream_maybe_done_locked(s, st);
    }
    bool send_fin = st->send_fin;
    st->send_fin = false;
    uint32_t id = st->id;
    /* the pump writes what is queued and grants the window back for what
     * reached the fd (also when bytes_inbound_locked wrote it directly) */
    bool kick = bytes_kick_locked ||
                (st->kind == ST_BYTES &&
                 (fd_queued(st) > 0 || (atomic_load(&s->peer_fc) &&
                                         st->fed - st->acked >= s->opt.stream_window / 4)));
    pthread_mutex_unlock(&s->mu);
    if (send_fin) {
        ctl_arg fa = { id, 0 };
        send_control_deferred(s, ctl_fin, &fa);
    }
    if (kick)
        bytes_kick(st);
    stream_unref(st);
}

static void on_rst(lc_session *s, const lc_spdy_frame *f, rd_actions *a)
{
    pthread_mutex_lock(&s->mu);
    lc_stream *st = lc__map_get(&s->streams, f->stream_id);
    if (st == NULL) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    stream_ref(st);
    st->remote_fin = true;
    st->local_fin = true;
    reply_came_locked(s, st);
    lc_sender *into = NULL;
    if ((st->kind == ST_RECV || st->kind == ST_FWD_TO_SENDER) && st->into != NULL) {
        /* A channel we receive on ends after what reached us, then
         * LC_ECLOSED: its messages may be in this very read, decoded or
         * not yet (closing at once lost them when the RST came in the same
         * read, test_rst_behind_message_in_one_read). Not `reset`: that
         * stops decoding. */
        st->peer_reset = true;
        if (st->end_err == 0)
            st->end_err = LC_ECLOSED;
        st->remote_fin_pending = true;
        note_delivery(a, st);
    } else {
        st->reset = true;
        into = st->into ? lc_sender_retain(st->into) : NULL;
    }
    lc_chan *chan = st->chan;
    if (chan)
        lc__chan_retain(chan);
    lc_msg *held = pump_take_locked(st);
    stream_maybe_done_locked(s, st);
    pthread_mutex_unlock(&s->mu);
    if (held)
        pump_resume(st, held); /* its send fails now: the pump ends */
    if (into) {
        lc__close_error(into, LC_ECLOSED);
        lc_sender_release(into);
    }
    if (chan) {
        lc__chan_wake_senders(chan);
        lc__chan_release(chan);
    }
    if (st->kind == ST_BYTES) {
        /* a reset byte stream: stop pumping, close our end (the holder sees
         * EOF/EPIPE); found by fuzz_session (the fd used to stay open) */
        pthread_mutex_lock(&s->mu);
        st->out_open = st->in_open = false;
        pthread_mutex_unlock(&s->mu);
        bytes_close(st);
    }
    stream_unref(st);
}

/* FD_READY, and FD_ASK with it unless we asked already: a session that
 * passes fds one way soon passes them back (a reply's streams), and the
 * peer's FD_READY then comes ahead of its fds, so that our asking never
 * waits on a read paused by unclaimed fds. wmu held (send_control). */
static int ctl_fd_ready(lc_session *s, void *arg)
{
    (void)arg;
    /* (a peer that asks without offering fds itself is not asked back:
     * asked, its missing answer would keep our Senders unwritable) */
    bool ask = !s->fds_asked && atomic_load(&s->peer_fdpass);
    uint32_t bits = LC_FEATURE_FDPASS | LC_FEATURE_FD_READY | (ask ? LC_FEATURE_FD_ASK : 0);
    lc_spdy_setting e = { 0, LC_SETTINGS_LIBCHAN, bits };
    int rc = lc__spdy_put_settings(&s->out, 0, &e, 1);
    if (rc == 0 && ask)
        s->fds_asked = true;
    return rc;
}

static void on_settings(lc_session *s, const lc_spdy_frame *f)
{
    bool fc = false, window_set = false, asked = false, ready = false, fdpass = false, quiet = false;
    uint32_t window = 0;
    for (uint32_t i = 0; i < f->value; i++) {
        lc_spdy_setting e;
        lc__spdy_setting_get(f, i, &e);
        if (e.id == LC_SETTINGS_LIBCHAN && (e.value & LC_FEATURE_WINDOWS))
            fc = true;
        if (e.id == LC_SETTINGS_LIBCHAN && (e.value & LC_FEATURE_NO_REPLIES))
            quiet = true;
        if (e.id == LC_SETTINGS_LIBCHAN && s->fdpass_local) {
            fdpass |= (e.value & LC_FEATURE_FDPASS) != 0;
            asked |= (e.value & LC_FEATURE_FD_ASK) != 0;
            ready |= (e.value & LC_FEATURE_FD_READY) != 0;
            s->peer_asks |= (e.value & LC_FEATURE_FD_ASKS) != 0;
        }
        if (e.id == LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE && e.value > 0 && e.value <= 0x7fffffffu) {
            window = e.value;
            window_set = true;
        }
    }
    if (fdpass) {
        /* A first frame that offers fds without FD_ASKS is an older peer's:
         * it reads fds always and passes them unasked (handle_frame keeps
         * our recvmsg). Said before peer_fdpass: a sender that sees that
         * (send_msg_on loads it first) sees this too, and never asks such
         * a peer (it did, and slept: the wake below had already gone). */
        if (!atomic_load(&s->peer_known) && !s->peer_asks)
            atomic_store(&s->peer_reads_fds, true);
        atomic_store(&s->peer_fdpass, true);
    }
    pthread_mutex_lock(&s->wmu);
    if (window_set)
        s->peer_window = window; /* applies to every stream, open ones too */
    if (fc)
        atomic_store(&s->peer_fc, true);
    pthread_mutex_unlock(&s->wmu);
    if (quiet && !atomic_exchange(&s->peer_no_replies, true)) {
        /* Streams we opened before reading this wait for no SYN_REPLY any
         * more (lc_session_close may be waiting for them), and channels we
         * ended before it for no FIN: they leave the table now (held by
         * the list meanwhile: the table's reference may be the last). */
        kick_list ended;
        kl_init(&ended);
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->streams.cap; i++) {
            lc_stream *st = s->streams.slots[i].val;
            if (st == NULL || st == LC_MAP_TOMB)
                continue;
            reply_came_locked(s, st);
            if ((st->kind == ST_SEND || st->kind == ST_PUMP_RECEIVER) && st->local_fin && kl_add(&ended, st))
                stream_maybe_done_locked(s, st);
        }
        pthread_mutex_unlock(&s->mu);
        for (size_t i = 0; i < ended.n; i++)
            stream_unref(ended.st[i]);
        kl_free(&ended);
    }
    if (asked && !s->peer_asked) {
        /* From the next read on, fds that come with the bytes are taken;
         * the peer passes none before it reads our FD_READY, which leaves
         * after this (we are the reader: no read is in progress). */
        s->peer_asked = true;
        atomic_store(&s->read_fds, true);
        send_control(s, ctl_fd_ready, NULL);
    }
    if (ready && atomic_load(&s->peer_fdpass))
        atomic_store(&s->peer_reads_fds, true);
    if (window_set || (ready && atomic_load(&s->peer_reads_fds))) {
        atomic_store(&s->senders_blocked, true);
        wake_blocked_senders(s);
    }
}

static void on_window_update(lc_session *s, const lc_spdy_frame *f)
{
    pthread_mutex_lock(&s->wmu);
    pthread_mutex_lock(&s->mu);
    lc_stream *st = lc__map_get(&s->streams, f->stream_id);
    lc_chan *chan = NULL;
    lc_watch *fdw = NULL;
    lc_msg *held = NULL;
    if (st != NULL) {
        st->granted += f->value;
        chan = st->chan;
        if (chan)
            lc__chan_retain(chan);
        if (st->kind == ST_BYTES && st->out_open)
            fdw = st->fdw;
        if (fdw)
            lc__engine_arm(fdw, EPOLLIN); /* its reads stopped on a spent window */
        held = pump_take_locked(st);
    }
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->wmu);
    if (chan) {
        lc__chan_wake_senders(chan);
        lc__chan_release(chan);
    }
    if (held)
        pump_resume(st, held); /* its own reference keeps st */
}

static void handle_frame(lc_session *s, const lc_spdy_frame *f, rd_actions *a)
{
    if (s->opt.trace)
        trace_frame(s, "<<", f);
    if (!atomic_load_explicit(&s->peer_known, memory_order_relaxed)) {
        /* the peer's first frame: a SETTINGS of ours says it speaks windows
         * (on_settings); anything else, that it does not: whatever waited
         * for the initial window goes on without one */
        if (f->type == LC_SPDY_SETTINGS)
            on_settings(s, f);
        if (s->fdpass_local) {
            /* we read with recvmsg up to here: a peer that passes fds
             * unasked (FDPASS without FD_ASKS: on_settings) gets that for
             * good; toward others plain recv from now on, unless this
             * frame asked for fds already */
            bool unasked = atomic_load(&s->peer_fdpass) && !s->peer_asks;
            if (!unasked && !s->peer_asked)
                atomic_store(&s->read_fds, false);
        }
        atomic_store_explicit(&s->peer_known, true, memory_order_release);
        if (!atomic_load(&s->peer_fc)) {
            atomic_store(&s->senders_blocked, true);
            wake_blocked_senders(s);
        }
        if (f->type == LC_SPDY_SETTINGS)
            return;
    }
    switch (f->type) {
    case LC_SPDY_SYN_STREAM:
        on_syn_stream(s, f, &a->announce);
        break;
    case LC_SPDY_DATA:
        on_data(s, f, a);
        break;
    case LC_SPDY_RST_STREAM:
        on_rst(s, f, a);
        break;
    case LC_SPDY_PING:
        /* answer the peer's pings (their ids have the peer's parity) */
        if ((f->value & 1) == (s->is_client ? 0u : 1u)) {
            ctl_arg p = { f->value, 0 };
            send_control(s, ctl_ping, &p);
        }
        break;
    case LC_SPDY_GOAWAY:
        pthread_mutex_lock(&s->mu);
        s->goaway_recv = true;
        pthread_mutex_unlock(&s->mu);
        break;
    case LC_SPDY_SETTINGS:
        on_settings(s, f);
        break;
    case LC_SPDY_WINDOW_UPDATE:
        on_window_update(s, f);
        break;
    case LC_SPDY_SYN_REPLY:
        on_syn_reply(s, f);
        break;
    default:
        break; /* HEADERS, unknown: nothing to do */
    }
}

/*
 * The carrier is read READ_CHUNK bytes at a time, and READ_CHUNK_BULK at a
 * time once a read has filled the buffer (more was waiting: a byte stream or
 * a flood). A byte stream's 64 KiB DATA frames straddled every 64 KiB read,
 * so each cost two reads and two writes into its fd; bench_session tcp
 * lc-bulk-sp, 4 interleaved pairs: 2530-2738 MB/s with 64 KiB reads,
 * 2904-3584 with 256 KiB, 3498-3747 with 512 KiB (receiving process 316-381
 * -> 229-250 CPU us/MiB). A session that never gets more than 64 KiB at once
 * keeps the small buffer.
 * A byte stream's payload moved by splice(2) from the carrier into a pipe,
 * then into its fd, never through this buffer, was tried and not kept: in
 * the full bench_session tcp bulk (medians of 9, two pairs) it changed
 * nothing from a socketpair (0.63/0.50x, 0.52/0.54x of raw TCP) and lost from
 * a pipe (0.41/0.44x, 0.54/0.43x): the sender's TCP pages, now held until
 * the receiving application read them, could no longer be reused, and the
 * sender's CPU per MiB rose (~260 -> 270-510 us). Nor would handing the
 * application a pipe that the carrier is spliced into (no copy at all on
 * this side) help: a scratch relay of the same path (socketpair, thread,
 * TCP, then splice into a 1 MiB pipe the reader reads) made 2586-2666 MB/s
 * against 2575-2634 for the plain read/write relay, 4 interleaved runs.
 */
#define READ_CHUNK 65536
#define READ_CHUNK_BULK (512u << 10)

/* Asks the engine for the next EPOLLIN, unless reading is paused or the
 * session is over (the watch pointer is only valid under wmu). */
static void arm_read(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    pthread_mutex_lock(&s->mu);
    bool paused = s->paused;
    pthread_mutex_unlock(&s->mu);
    atomic_store_explicit(&s->lazy, false, memory_order_relaxed);
    if (s->watch != NULL && !paused)
        lc__engine_arm(s->watch, EPOLLIN);
    pthread_mutex_unlock(&s->wmu);
}

/*
 * Lazy re-arming. A thread that reads the carrier for its own channel
 * (drive) disarms the engine's watch meanwhile. Re-arming it as it leaves
 * and disarming it as the next receive comes were two epoll_ctl calls per
 * message on a round trip (reused-channel p50 ~16.7 -> ~11.5 us without
 * them, bench_session unix). So when the carrier was drained, the watch
 * stays disarmed: the next receive reads it anyway. A backstop timer arms
 * it once no thread has read for LAZY_REARM_NS; whatever waits without
 * reading (a sender out of window, lc_session_receiver, lc_session_close)
 * arms it at once (ensure_watched), and a channel waited on without reading
 * (lc_select, a pollable fd, a callback receive) turns lazy re-arming off
 * for the session (feeder_passive). What still depends on the backstop:
 * frames for the engine's own work (bytes for a byte stream's fd, a peer's
 * PING) that arrive after the last thread stopped reading.
 * 4 ms: with 1 ms, the backstop's own wake-ups on 2 busy cores made 2-4% of
 * fresh-reply round trips take 0.2-1 ms (bench_session histogram).
 */
#define LAZY_REARM_NS 4000000

static void lazy_backstop(void *ctx)
{
    lc_session *s = ctx;
    pthread_mutex_lock(&s->wmu);
    s->backstop_set = false;
    flush_locked(s); /* frames a drive left for the next write (flush_or_defer_locked) */
    bool arm = false;
    if (atomic_load_explicit(&s->lazy, memory_order_relaxed) && !s->dead) {
        int64_t now = lc__now_ns();
        int64_t last = atomic_load(&s->last_drive_ns);
        if (atomic_load(&s->reader) != 0 || now - last < LAZY_REARM_NS) {
            /* threads still read: look again later (the timer keeps its
             * reference) */
            int64_t at = (atomic_load(&s->reader) != 0 ? now : last) + LAZY_REARM_NS;
            if (lc__engine_timer_add(s->eng, at, lazy_backstop, s, &s->backstop_id) == 0) {
                s->backstop_set = true;
                pthread_mutex_unlock(&s->wmu);
                return;
            }
        }
        arm = true;
    }
    pthread_mutex_unlock(&s->wmu);
    if (arm)
        arm_read(s);
    session_unref(s); /* the timer's reference */
}

/* Sets the backstop timer unless it is set. wmu held. */
static bool backstop_locked(lc_session *s)
{
    if (s->backstop_set)
        return true;
    if (s->dead || s->eng == NULL)
        return false;
    session_ref(s);
    if (lc__engine_timer_add(s->eng, lc__now_ns() + LAZY_REARM_NS, lazy_backstop, s, &s->backstop_id) != 0) {
        session_unref(s);
        return false;
    }
    s->backstop_set = true;
    return true;
}

/*
 * The end of a drive that hands a message to the application: what the
 * reads queued (a SYN_REPLY for a sub-stream the message opened, the FIN
 * that answers a closed channel) can wait for the application's next
 * write, typically its reply: one write and one wake-up of the peer instead
 * of two (fresh-reply round trip). WINDOW_UPDATE and PING answers cannot
 * wait; nothing waits beyond the backstop (LAZY_REARM_NS). wmu held.
 */
static void flush_or_defer_locked(lc_session *s)
{
    if (s->out.len == 0 || s->out_urgent || !backstop_locked(s))
        flush_locked(s);
}

/* After a drive that left the carrier drained: stay disarmed, with a
 * backstop. now: the drive's latest reading of the clock (the backstop's
 * 4 ms do not need a fresh one). False when that cannot be (then the caller
 * arms). wmu held. */
static bool go_lazy_locked(lc_session *s, int64_t now)
{
    if (atomic_load(&s->no_lazy))
        return false;
    atomic_store(&s->last_drive_ns, now);
    bool ok = s->watch != NULL && backstop_locked(s);
    if (ok)
        atomic_store_explicit(&s->lazy, true, memory_order_relaxed);
    return ok;
}

/* Someone waits for what only reading brings, without reading itself. */
static void ensure_watched(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    bool lazy = atomic_load_explicit(&s->lazy, memory_order_relaxed);
    pthread_mutex_unlock(&s->wmu);
    if (lazy)
        arm_read(s);
}

/*
 * Passed fds received and not yet claimed by a message (PROTOCOL.md 7) are
 * open fds of this process: past MAX_UNCLAIMED_FDS we stop reading until
 * messages have claimed half of them. Without it a peer could fill the
 * process's fd table (test_unclaimed_fd_flood_is_bounded: 4096 fds riding on
 * PINGs, all kept). A message names at most 64 passed fds, and our senders
 * send them with the write that begins with their message (flush_locked),
 * at most one batch ahead of its bytes: the fds of messages not read yet
 * never reach half of the limit, so reading resumes once the application
 * takes its messages.
 */
#define MAX_UNCLAIMED_FDS 256

/* Reads and dispatches until the carrier would block (then, for the engine,
 * asks for the next EPOLLIN) or reading must pause. Returns true when the
 * carrier would block (or `until`, the channel of a thread reading for
 * itself, has a message), false when the session ended or reading paused.
 * The caller holds the reader token. */
static bool read_carrier(lc_session *s, bool engine, lc_chan *until, bool *drained)
{
    if (drained)
        *drained = false;
    for (;;) {
        uint8_t *buf = s->rbuf;
        struct iovec iov = { buf, s->rbuf_cap };
        ssize_t n;
        if (atomic_load_explicit(&s->read_fds, memory_order_relaxed)) {
            int fds[LC_TRANSPORT_MAX_FDS];
            size_t nfds = LC_TRANSPORT_MAX_FDS;
            n = lc__conn_recvfds(s->conn, &iov, 1, fds, &nfds);
            if (n == -EMSGSIZE) {
                protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR); /* more fds than allowed */
                return false;
            }
            if (nfds > 0) {
                pthread_mutex_lock(&s->mu);
                for (size_t i = 0; i < nfds; i++)
                    if (lc__map_put(&s->in_fds, s->fd_in_seq++, (void *)(intptr_t)(fds[i] + 1)) != 0)
                        close(fds[i]);
                s->in_fds_high = s->in_fds.len > MAX_UNCLAIMED_FDS;
                atomic_store_explicit(&s->new_refs, true, memory_order_relaxed); /* messages waiting for them may go on */
                pthread_mutex_unlock(&s->mu);
            }
        } else {
            n = lc__conn_readv(s->conn, &iov, 1);
        }
        if (n == -EAGAIN) {
            if (engine)
                arm_read(s);
            if (drained)
                *drained = true;
            return true;
        }
        if (n <= 0) {
            /* EOF between frames is the peer hanging up; inside one, a cut */
            int err = n == 0 ? (lc__spdy_decoder_idle(&s->dec) ? LC_ESESSION : LC_EPROTO) : (int)n;
            session_fail(s, err);
            return false;
        }
        bool full_read = (size_t)n == s->rbuf_cap;
        bool answerable = false; /* DATA or SYN_STREAM: something the application may answer */
        rd_actions a; /* not "= {...}": that zeroed the inline list on every read */
        a.announce = NULL;
        kl_init(&a.deliver);
        size_t off = 0;
        while (off < (size_t)n && !s->dead) {
            lc_spdy_frame f;
            size_t used = 0;
            int rc = lc__spdy_decode(&s->dec, buf + off, (size_t)n - off, &used, &f);
            off += used;
            if (rc < 0) {
                run_actions(s, &a);
                protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
                return false;
            }
            if (rc == 0)
                break;
            if (!answerable && (f.type == LC_SPDY_DATA || f.type == LC_SPDY_SYN_STREAM)) {
                /* counted before anything of it is delivered. A read of
                 * control frames only (a WINDOW_UPDATE granting more room)
                 * is not counted: it made a flood's next send a "reply",
                 * written at once, and the flood's batching started over */
                answerable = true;
                /* (only the reader token's holder counts: no locked add) */
                atomic_store_explicit(&s->rx_reads, atomic_load_explicit(&s->rx_reads, memory_order_relaxed) + 1,
                                      memory_order_relaxed);
            }
            handle_frame(s, &f, &a);
            if (f.type == LC_SPDY_SYN_STREAM && a.announce)
                run_actions(s, &a);
        }
        retry_waiting_refs(s, &a);
        run_actions(s, &a);
        if (s->dead)
            return false;
        if (full_read && s->rbuf_cap < READ_CHUNK_BULK) {
            /* more was waiting: read in bigger chunks from now on (what
             * the decoder needs of this read it has kept) */
            uint8_t *big = malloc(READ_CHUNK_BULK);
            if (big != NULL) {
                free(s->rbuf);
                s->rbuf = big;
                s->rbuf_cap = READ_CHUNK_BULK;
            }
        }
        /* a thread reading for its own channel: has it something now? (one
         * answer for both the flush below and the early return) */
        bool ready = until != NULL && lc__chan_recv_ready(until);
        if (!ready && flush_now(s)) {
            /* replies, FINs and window updates of this batch went out; a peer
             * that reads none of them is ended */
            protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
            return false;
        }
        /* (else the drive about to return decides: flush_or_defer_locked) */
        /* backpressure: a local queue is full, stop reading until it drains.
         * Toward a peer with windows its own window stops it, per stream. */
        bool fc = atomic_load_explicit(&s->peer_fc, memory_order_relaxed);
        /* (unclaimed fds only grow here: below the limit when last looked
         * at, they still are) */
        if (!fc || s->in_fds_high) {
            pthread_mutex_lock(&s->mu);
            bool full = s->in_fds.len > MAX_UNCLAIMED_FDS;
            s->in_fds_high = full;
            for (size_t i = 0; !fc && s->pushes_set > 0 && i < s->streams.cap && !full; i++) {
                lc_stream *st = s->streams.slots[i].val;
                full = st != NULL && st != LC_MAP_TOMB && st->push_op != NULL;
            }
            if (full) {
                s->paused = true;
                close_progress_locked(s);
            }
            pthread_mutex_unlock(&s->mu);
        }
        /* Paused, here or by a byte stream whose fd buffer passed BYTES_BUF
         * toward a peer without windows (bytes_inbound_locked, during this
         * batch): stop here. This loop went on to EAGAIN in the latter case,
         * which a peer writing as fast as we read never gives: 64 MiB
         * buffered for an fd nobody read
         * (test_byte_stream_without_windows_pauses_reading). */
        if (atomic_load_explicit(&s->paused, memory_order_relaxed))
            return false;
        /* a thread reading for its own channel returns as soon as that has
         * something: the read that would only say EAGAIN is a syscall on
         * the round trip's path (whatever is left, the engine reads) */
        if (ready) {
            if (drained)
                *drained = !full_read; /* a short read took all there was */
            return true;
        }
    }
}

static void resume_reading(lc_session *s)
{
    /* Callers changed what paused depends on under mu just before, after
     * whoever paused let go of mu: not paused here is not paused. (One lock
     * round less on every delivery.) */
    if (!atomic_load(&s->paused))
        return;
    pthread_mutex_lock(&s->mu);
    bool was = s->paused;
    bool still = was && s->in_fds.len > MAX_UNCLAIMED_FDS / 2;
    /* as read_carrier: full queues pause only toward a peer without windows */
    bool fc = atomic_load_explicit(&s->peer_fc, memory_order_relaxed);
    for (size_t i = 0; was && !fc && s->pushes_set > 0 && i < s->streams.cap && !still; i++) {
        lc_stream *st = s->streams.slots[i].val;
        still = st != NULL && st != LC_MAP_TOMB && st->push_op != NULL;
    }
    if (was && !still)
        s->paused = false;
    pthread_mutex_unlock(&s->mu);
    if (was && !still)
        arm_read(s);
}

static void ref_timer(void *ctx);

/*
 * The reader token: one thread reads the carrier at a time, either the
 * engine (EPOLLIN callback) or an application thread blocked in lc_recv on a
 * network Receiver of this session (drive). An engine callback that finds the
 * token taken leaves a note, and the token's holder re-arms EPOLLIN when it
 * lets go, so readiness is never lost.
 */
static bool reader_take(lc_session *s)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&s->reader, &expected, 1))
        return true;
    atomic_store(&s->rearm_needed, true);
    /* the holder may have let go meanwhile without seeing the note */
    expected = 0;
    if (atomic_compare_exchange_strong(&s->reader, &expected, 1)) {
        atomic_store(&s->rearm_needed, false);
        return true;
    }
    return false;
}

/* How long a receiving thread that reads the carrier itself keeps trying
 * before it sleeps in poll(2). bench_session (unix, this 2-core VM): 10 us
 * -> fresh-reply round trip p50 ~48 us, 25 us -> ~36 us (the reply to a
 * request that opened a sub-stream often takes longer than 10 us), reused
 * channel unchanged at ~20 us. */
#define DRIVE_SPIN_NS 25000

/*
 * Spinning only pays while the answer comes within the spin. On a busy
 * machine it does not: the spinning thread takes the CPU the peer needs to
 * answer. bench_session's reused round trip with one CPU hog beside it
 * (2 cores): p50 74.8 us spinning 25 us, 32.4 us spinning 10 us, 22.9 us
 * not spinning (idle machine: 10.6, 10.7 and 32.1 us). So after
 * SPIN_MISSES_MAX waits in a row that outlasted their spin, a session's
 * readers block at once, and spin again on every SPIN_PROBE_EVERY-th wait
 * to see whether it pays again (one hit resets the count).
 */
#define SPIN_PROBE_EVERY 32 /* (SPIN_MISSES_MAX: session_internal.h) */

static bool drive(void *ctx, lc_chan *c, int64_t now, int64_t deadline)
{
    lc_session *s = ctx;
    /* Counted in in_cb before dead is looked at: lc_session_free sets dead,
     * then waits for in_cb to be 0 before it closes the carrier, so either
     * it waits for us or we see dead (both seq_cst). Counted after the look,
     * a thread in between read a carrier already closed (s->conn NULL, or
     * its fd number reused). */
    atomic_fetch_add(&s->in_cb, 1);
    /* (without mu: a stale "not paused" costs one read, which pauses again) */
    if (atomic_load(&s->paused) || atomic_load(&s->dead)) {
        atomic_fetch_sub(&s->in_cb, 1);
        return false; /* the engine resumes reading when the queues drain */
    }
    int expected = 0;
    if (!atomic_compare_exchange_strong(&s->reader, &expected, 1)) {
        /* another thread reads; we are about to wait without reading, so
         * whoever holds the token arms the engine as it leaves (it checks
         * after letting go: if it already has, the token is free now) */
        atomic_store(&s->rearm_needed, true);
        expected = 0;
        if (!atomic_compare_exchange_strong(&s->reader, &expected, 1)) {
            atomic_fetch_sub(&s->in_cb, 1);
            return false;
        }
    }
    tls_reading = s;
    /* The engine need not watch the carrier while we read it: an armed watch
     * woke the engine thread for every message we then read ourselves
     * (strace: one epoll_wait + one epoll_ctl per message), a wake-up that
     * competes for the two cores with the threads doing the work. */
    /* lazy: the last drive left it unarmed (only arm_read arms it, and it
     * clears lazy first), so there is nothing to disarm or to lock the
     * engine for. Looked at without wmu (written under it): an arm_read
     * just after the look is the same as one just after our disarm, which
     * could always happen; the drive's end re-arms as needed. */
    bool disarmed = false;
    if (!atomic_load_explicit(&s->lazy, memory_order_relaxed)) {
        pthread_mutex_lock(&s->wmu);
        disarmed = s->watch != NULL && !atomic_load_explicit(&s->lazy, memory_order_relaxed) &&
                   lc__engine_disarm(s->watch, EPOLLIN) > 0;
        pthread_mutex_unlock(&s->wmu);
    }
    int fd = lc__conn_fd(s->conn);
    /* (counted by the token's holder alone: no locked add) */
    unsigned nth = atomic_load_explicit(&s->drives, memory_order_relaxed);
    atomic_store_explicit(&s->drives, nth + 1, memory_order_relaxed);
    bool spin = atomic_load_explicit(&s->spin_misses, memory_order_relaxed) < SPIN_MISSES_MAX ||
                nth % SPIN_PROBE_EVERY == 0;
    int64_t spin_until = spin ? now + DRIVE_SPIN_NS : 0;
    bool drained = false, slept = false;
    unsigned round = 0;
    for (;;) {
        if (!read_carrier(s, false, c, &drained))
            break; /* ended, or paused */
        if (lc__chan_recv_ready(c))
            break;
        int64_t fin_due = atomic_load_explicit(&s->fin_due, memory_order_relaxed);
        if (fin_due != 0 && lc__now_ns() >= fin_due)
            fin_settled(s); /* the reply it ends has been read by now */
        /* Here the last read found the carrier empty, after flushing what
         * the reads before it produced (read_carrier). A spinning round is
         * one recvmsg (~440 ns on a unix carrier, bench_transport): the
         * clock (~50 ns) is read every 4th, so a reply is seen sooner. */
        if (spin && (++round & 3) != 0)
            continue;
        now = lc__now_ns();
        if (deadline >= 0 && now >= deadline)
            break;
        if (now < spin_until)
            continue; /* a reply often comes within microseconds */
        /* sleep in the kernel on the carrier itself: one wake-up, not two */
        int64_t left_ms = deadline < 0 ? 100 : (deadline - now + 999999) / 1000000;
        struct pollfd pfd = { fd, POLLIN, 0 };
        flush_now(s); /* (before sleeping: whatever another thread left queued) */
        fin_settled(s);
        poll(&pfd, 1, (int)(left_ms > 100 ? 100 : left_ms));
        slept = true;
    }
    tls_reading = NULL;
    bool got = lc__chan_recv_ready(c);
    if (got)
        tls_served = s;
    if (got && spin) {
        /* did the spin pay? (relaxed: a heuristic several readers share) */
        if (slept) {
            int misses = atomic_load_explicit(&s->spin_misses, memory_order_relaxed);
            if (misses < SPIN_MISSES_MAX)
                atomic_store_explicit(&s->spin_misses, misses + 1, memory_order_relaxed);
        } else {
            atomic_store_explicit(&s->spin_misses, 0, memory_order_relaxed);
        }
    }
    atomic_store(&s->reader, 0);
    bool rearm = atomic_exchange(&s->rearm_needed, false);
    /* one wmu round for the flush and the re-arming decision */
    pthread_mutex_lock(&s->wmu);
    /* a settling FIN goes now: the thread stops reading (and the message it
     * got may keep the application from writing for long) */
    bool fin = atomic_load_explicit(&s->fin_due, memory_order_relaxed) != 0;
    if (got && !fin)
        flush_or_defer_locked(s); /* the application gets a message, likely replies */
    else if (fin || s->out.len > s->deferred_len)
        flush_locked(s);
    bool lazy_now = atomic_load_explicit(&s->lazy, memory_order_relaxed);
    rearm = rearm || ((disarmed || lazy_now) && !(drained && go_lazy_locked(s, now)));
    pthread_mutex_unlock(&s->wmu);
    if (rearm)
        arm_read(s); /* the engine saw readiness meanwhile, or bytes may be left */
    atomic_fetch_sub(&s->in_cb, 1);
    return true;
}

static void feeder_retain(void *ctx)
{
    session_ref(ctx);
}

static void feeder_release(void *ctx)
{
    session_unref(ctx);
}

/* One of our channels is waited on without reading the carrier: from now on
 * the engine always watches it (no lazy re-arming for this session). */
static void feeder_passive(void *ctx)
{
    lc_session *s = ctx;
    atomic_store(&s->no_lazy, true);
    ensure_watched(s);
}

static const lc__feeder_ops feeder_ops = { feeder_retain, feeder_release, drive, feeder_passive };

static void carrier_cb(void *ctx, uint32_t ev)
{
    lc_session *s = ctx;
    session_ref(s); /* the session may be freed by another thread meanwhile */
    atomic_fetch_add_explicit(&s->in_cb, 1, memory_order_acq_rel);
    if (ev & EPOLLOUT)
        output_ready(s);
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (reader_take(s)) {
            tls_reading = s;
            read_carrier(s, true, NULL, NULL);
            tls_reading = NULL;
            flush_now(s);
            fin_settled(s); /* the engine read instead of the closing thread */
            atomic_store(&s->reader, 0);
        }
    }
    atomic_fetch_sub_explicit(&s->in_cb, 1, memory_order_acq_rel);
    session_unref(s);
}

/* Fails messages whose references never arrived (PROTOCOL.md section 3). */
static void ref_timer(void *ctx)
{
    lc_session *s = ctx;
    pthread_mutex_lock(&s->mu);
    s->ref_timer = 0;
    int64_t now = lc__now_ns();
    lc_sender *fail[32];
    size_t nf = 0;
    bool any_waiting = false;
    lc_msg *dropped = NULL;
    for (size_t i = 0; i < s->streams.cap; i++) {
        lc_stream *st = s->streams.slots[i].val;
        if (st == NULL || st == LC_MAP_TOMB || !st->waiting_refs)
            continue;
        if (st->waiting_since == 0)
            st->waiting_since = now;
        if (now - st->waiting_since >= lc__ms_to_ns(s->opt.ref_timeout_ms) && nf < 32 && st->into) {
            fail[nf++] = lc_sender_retain(st->into);
            waiting_refs_set_locked(s, st, false);
            st->reset = true;
            /* its undelivered messages go with it (closing their fds) */
            while (st->pending_head) {
                lc_msg *m = st->pending_head;
                st->pending_head = m->next;
                m->next = dropped;
                dropped = m;
            }
            st->pending_tail = NULL;
            st->npending = 0;
            stream_maybe_done_locked(s, st); /* an ended channel stayed for this (may free st) */
        } else {
            any_waiting = true;
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < nf; i++) {
        lc__close_error(fail[i], LC_EPROTO);
        lc_sender_release(fail[i]);
    }
    msg_chain_free(dropped);
    if (nf > 0)
        resume_reading(s); /* nothing waits on those streams any more */
    (void)any_waiting;
    /* periodic while the session lives (cheap: a few per second), so a wait
     * that starts later is always watched; the timer holds a reference */
    pthread_mutex_lock(&s->mu);
    bool again = !atomic_load(&s->dead) &&
                 lc__engine_timer_add(s->eng, lc__now_ns() + lc__ms_to_ns(s->opt.ref_timeout_ms) / 4, ref_timer,
                                      s, &s->ref_timer) == 0;
    pthread_mutex_unlock(&s->mu);
    if (!again)
        session_unref(s);
}

/* ---- sessions ------------------------------------------------------------ */

/*
 * Our header blocks go out as stored deflate blocks (level 0): valid zlib
 * with the SPDY dictionary for every peer, no compression. A libchan header
 * block is two short pairs (libchan-ref, libchan-parent-ref), and each one
 * is flushed alone: level 6 spent ~1.2 us per block here (level 1: ~0.9 us),
 * level 0 ~0.07 us, for ~60 bytes instead of ~11. Two blocks per fresh
 * reply channel (SYN_STREAM, SYN_REPLY) lie on the round trip's path.
 */
#define HEADER_DEFLATE_LEVEL 0

static int session_start(lc_conn *conn, bool is_client, const lc_options *o, lc_session **out)
{
    lc_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        lc__conn_close(conn);
        return LC_ENOMEM;
    }
    options_resolve(&s->opt, o);
    atomic_init(&s->refs, 1);
    atomic_init(&s->next_ref, 2); /* as Go: refs start at 2 */
    /* Adaptive: both locks are held for a few hundred ns at most, and the
     * application's and the engine's threads take them on every message; a
     * contended futex sleep and wake-up cost microseconds here. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&s->mu, &ma);
    pthread_mutex_init(&s->wmu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&s->flushed, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->close_cv, &ca);
    pthread_condattr_destroy(&ca);
    s->conn = conn;
    s->is_client = is_client;
    s->fdpass_local = strcmp(lc__conn_scheme(conn), "unix") == 0; /* before any read */
    /* recvmsg until the peer's first frame tells how it passes fds */
    atomic_store(&s->read_fds, s->fdpass_local);
    s->next_id = is_client ? 1 : 2;
    s->peer_window = LC_SPDY_DEFAULT_WINDOW;
    lc__spdy_decoder_init(&s->dec, NULL);
    lc__spdy_decoder_init(&s->trace_dec, NULL);
    lc__spdy_deflater_init(&s->defl, HEADER_DEFLATE_LEVEL);
    lc__buf_init(&s->out);
    lc__buf_init(&s->inflight);
    s->rbuf = malloc(READ_CHUNK);
    s->rbuf_cap = READ_CHUNK;
    int rc = s->rbuf != NULL ? lc_pipe(&s->incoming_r, &s->incoming_s, s->opt.accept_queue) : LC_ENOMEM;
    if (rc == 0) {
        s->eng = lc__engine_default();
        rc = s->eng ? 0 : LC_ENOMEM;
    }
    if (rc == 0) {
        /* added disarmed, armed once s->watch is stored: the callback may
         * run at once (the peer's first frames are often there already)
         * and re-arms through s->watch */
        pthread_mutex_lock(&s->wmu);
        rc = lc__engine_add(s->eng, lc__conn_fd(conn), 0, carrier_cb, s, &s->watch);
        if (rc == 0)
            rc = lc__engine_arm(s->watch, EPOLLIN);
        pthread_mutex_unlock(&s->wmu);
    }
    if (rc != 0) {
        lc_sender_release(s->incoming_s);
        lc_receiver_release(s->incoming_r);
        session_unref(s);
        return rc;
    }
    /* our first frame: the window we grant per stream, and the marker that
     * tells a peer of ours we speak windows (a Go peer ignores both) */
    lc_spdy_setting set[2] = {
        { 0, LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE, s->opt.stream_window },
        { 0, LC_SETTINGS_LIBCHAN,
          LC_FEATURE_WINDOWS | LC_FEATURE_NO_REPLIES |
              (s->fdpass_local ? LC_FEATURE_FDPASS | LC_FEATURE_FD_ASKS : 0) } };
    pthread_mutex_lock(&s->wmu);
    if (lc__spdy_put_settings(&s->out, 0, set, 2) == 0)
        flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    /* a timer that looks after messages waiting for references */
    session_ref(s);
    pthread_mutex_lock(&s->mu);
    if (lc__engine_timer_add(s->eng, lc__now_ns() + lc__ms_to_ns(s->opt.ref_timeout_ms) / 4, ref_timer, s,
                             &s->ref_timer) != 0) {
        pthread_mutex_unlock(&s->mu);
        session_unref(s);
    } else {
        pthread_mutex_unlock(&s->mu);
    }
    *out = s;
    return 0;
}

int lc__session_from_fd(int fd, bool is_client, const lc_options *o, lc_session **out)
{
    lc_conn *conn;
    int rc = lc__conn_wrap(&lc__unix_ops, fd, &conn);
    if (rc != 0)
        return rc;
    return session_start(conn, is_client, o, out);
}

LC_API int lc_dial(const char *url, const lc_options *o, lc_session **out, lc_error *err)
{
    if (url == NULL || out == NULL)
        return LC_EINVAL;
    *out = NULL;
    lc_options opt;
    options_resolve(&opt, o);
    lc_conn *conn;
    int rc = lc__dial(url, opt.dial_timeout_ms, &conn, err);
    if (rc != 0)
        return rc;
    return session_start(conn, true, &opt, out);
}

/*
 * lc_listener_close may come while other threads wait in lc_accept (an
 * accept loop told to stop from elsewhere, as Go's Listener.Close ends a
 * blocked Accept): the waits poll the listening fd together with an
 * eventfd that close makes readable for good, and close frees nothing
 * until the last of them has left.
 */
struct lc_listener {
    lc_tlistener *tl;
    lc_options opt;
    int wake;            /* eventfd: readable once closing */
    pthread_mutex_t mu;
    pthread_cond_t idle; /* signalled when the last accepting thread leaves */
    int accepting;
    bool closing;
};

LC_API int lc_listen(const char *url, const lc_options *o, lc_listener **out, lc_error *err)
{
    if (url == NULL || out == NULL)
        return LC_EINVAL;
    *out = NULL;
    lc_listener *l = calloc(1, sizeof *l);
    if (l == NULL)
        return LC_ENOMEM;
    options_resolve(&l->opt, o);
    l->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wake < 0) {
        int rc = -errno;
        free(l);
        return rc;
    }
    int rc = lc__listen(url, &l->tl, err);
    if (rc != 0) {
        close(l->wake);
        free(l);
        return rc;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->idle, NULL);
    *out = l;
    return 0;
}

LC_API int lc_listener_url(lc_listener *l, char *buf, size_t len)
{
    return l ? lc__listener_url(l->tl, buf, len) : LC_EINVAL;
}

/* One connection from l's queue within deadline (ns, -1: none): 0,
 * LC_ETIMEDOUT, LC_ECLOSED once lc_listener_close has begun, or -errno. */
static int accept_conn(lc_listener *l, int64_t deadline, lc_conn **conn)
{
    struct pollfd pf[2] = { { lc__listener_fd(l->tl), POLLIN, 0 }, { l->wake, POLLIN, 0 } };
    for (;;) {
        int rc = lc__accept(l->tl, 0, conn); /* what is queued, without waiting */
        if (rc != LC_ETIMEDOUT)
            return rc;
        int64_t now = lc__now_ns();
        if (deadline >= 0 && now >= deadline)
            return LC_ETIMEDOUT;
        int64_t left_ms = deadline < 0 ? -1 : (deadline - now + 999999) / 1000000;
        int n = poll(pf, 2, left_ms > INT32_MAX ? INT32_MAX : (int)left_ms);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0 && pf[1].revents)
            return LC_ECLOSED;
    }
}

/* A connection that has ended before sending anything (a client that gave
 * up, or another lc_listen probing whether this path is live: it connects
 * and hangs up) is nobody to serve. */
static bool conn_already_over(lc_conn *conn)
{
    char c;
    return recv(lc__conn_fd(conn), &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

LC_API int lc_accept(lc_listener *l, lc_session **out, int64_t timeout_ms)
{
    if (l == NULL || out == NULL)
        return LC_EINVAL;
    *out = NULL;
    pthread_mutex_lock(&l->mu);
    bool closing = l->closing;
    if (!closing)
        l->accepting++;
    pthread_mutex_unlock(&l->mu);
    if (closing)
        return LC_ECLOSED;
    int64_t deadline = lc__deadline_ns(lc__now_ns(), timeout_ms);
    lc_conn *conn = NULL;
    int rc;
    while ((rc = accept_conn(l, deadline, &conn)) == 0 && conn_already_over(conn)) {
        lc__conn_close(conn);
        conn = NULL;
    }
    /* the session starts from l->opt before this accept stops counting:
     * lc_listener_close frees l as soon as no accept is counted (it used to
     * read l->opt after that, a use after free found by a review helper) */
    if (rc == 0)
        rc = session_start(conn, false, &l->opt, out);
    pthread_mutex_lock(&l->mu);
    if (--l->accepting == 0 && l->closing)
        pthread_cond_broadcast(&l->idle);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

LC_API void lc_listener_close(lc_listener *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->closing = true;
    pthread_mutex_unlock(&l->mu);
    uint64_t one = 1;
    ssize_t w = write(l->wake, &one, sizeof one); /* never read: stays readable */
    (void)w;
    pthread_mutex_lock(&l->mu);
    while (l->accepting > 0)
        pthread_cond_wait(&l->idle, &l->mu);
    pthread_mutex_unlock(&l->mu);
    lc__listener_close(l->tl);
    close(l->wake);
    pthread_cond_destroy(&l->idle);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

LC_API int lc_session_sender(lc_session *s, lc_sender **out)
{
    if (s == NULL || out == NULL)
        return LC_EINVAL;
    *out = NULL;
    lc_stream *st = stream_new(s, ST_SEND);
    if (st == NULL)
        return LC_ENOMEM;
    st->ours = true;
    st->ref = atomic_fetch_add_explicit(&s->next_ref, 1, memory_order_relaxed);
    pthread_mutex_lock(&s->wmu);
    int rc = s->dead || s->sends_closed ? LC_ESESSION : 0;
    if (rc == 0 && s->goaway_recv)
        rc = LC_ECLOSED; /* the peer is going away: no new channels */
    if (rc == 0) {
        pthread_mutex_lock(&s->mu);
        rc = register_ours_locked(s, st);
        pthread_mutex_unlock(&s->mu);
    }
    if (rc == 0)
        rc = put_syn_stream(s, st->id, st->ref, 0);
    if (rc == 0)
        flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    if (rc == 0) {
        *out = make_net_sender(st, false);
        if (*out == NULL)
            rc = LC_ENOMEM;
    }
    stream_unref(st); /* creation reference: the table and the sender hold theirs */
    return rc;
}

LC_API int lc_session_receiver(lc_session *s, lc_receiver **out, int64_t timeout_ms)
{
    if (s == NULL || out == NULL)
        return LC_EINVAL;
    *out = NULL;
    /* held for the call: lc_session_free on another thread meanwhile ends
     * the wait (LC_ESESSION) rather than freeing what it waits on (an accept
     * loop's thread, stopped by freeing its session) */
    session_ref(s);
    lc_msg *m;
    if (timeout_ms != 0)
        ensure_watched(s); /* new channels come by reading */
    int rc = lc_recv(s->incoming_r, &m, timeout_ms);
    if (rc == 0) {
        *out = lc_value_take_receiver(lc_msg_root(m), NULL);
        lc_msg_free(m);
        rc = *out ? 0 : LC_EPROTO;
    } else if (rc == LC_EOF) {
        rc = LC_ESESSION;
    }
    session_unref(s);
    return rc;
}

LC_API int lc_session_error(lc_session *s)
{
    return s ? atomic_load(&s->err) : LC_EINVAL;
}

/* lc_session_close's deadline (-1: none) has passed. */
static bool deadline_passed(int64_t deadline)
{
    return deadline >= 0 && lc__now_ns() >= deadline;
}

/* Waits on s->flushed for at most 10 ms (the cond is CLOCK_REALTIME, so the
 * caller's monotonic deadline is looked at between waits). wmu held. */
static void wait_flushed_10ms(lc_session *s)
{
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    rt.tv_nsec += 10000000;
    if (rt.tv_nsec >= 1000000000) {
        rt.tv_sec++;
        rt.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&s->flushed, &s->wmu, &rt);
}

/*
 * Is something sent before lc_session_close still on its way to the output?
 * A byte stream whose fd is not at EOF yet, or a pumped Receiver (one the
 * application sent over the session) that holds a message, is moving one,
 * or whose channel still queues some: the application had sent them (into
 * the pump's channel) before the close. The close used to wait for byte
 * streams only: a pump's queued messages were cut off at the GOAWAY, and its
 * FIN then told the peer it had them all.
 */
static bool sends_in_progress(lc_session *s)
{
    size_t n = 0;
    bool busy = false;
    pthread_mutex_lock(&s->mu);
    lc_receiver **srcs = malloc((s->streams.len + 1) * sizeof *srcs);
    if (srcs == NULL)
        busy = true; /* look again after the wait */
    for (size_t i = 0; i < s->streams.cap && !busy; i++) {
        lc_stream *st = s->streams.slots[i].val;
        if (st == NULL || st == LC_MAP_TOMB)
            continue;
        if (st->kind == ST_BYTES)
            busy = st->out_open && st->fdw != NULL;
        else if (st->kind == ST_PUMP_RECEIVER && st->source != NULL)
            busy = st->pump_blocked || atomic_load(&st->pump_active) > 0;
        if (!busy && st->kind == ST_PUMP_RECEIVER && st->source != NULL)
            srcs[n++] = lc_receiver_retain(st->source);
    }
    pthread_mutex_unlock(&s->mu);
    /* (queue lengths outside mu: the channel's lock is taken before ours
     * when a send completes into the pump) */
    for (size_t i = 0; i < n; i++) {
        if (!busy && lc_receiver_queued(srcs[i]) > 0)
            busy = true;
        lc_receiver_release(srcs[i]);
    }
    free(srcs);
    return busy;
}

/* Waits on close_cv until close_progress_locked, the deadline, or 2 ms: a
 * backstop for a change that does not signal (the naps this replaced
 * looked every 1-2 ms). mu held. */
static void close_wait_locked(lc_session *s, int64_t deadline)
{
    int64_t until = lc__now_ns() + 2000000;
    if (deadline >= 0 && deadline < until)
        until = deadline;
    struct timespec ts = { (time_t)(until / 1000000000), (long)(until % 1000000000) };
    pthread_cond_timedwait(&s->close_cv, &s->mu, &ts);
}

static int session_close(lc_session *s, int64_t timeout_ms);

LC_API int lc_session_close(lc_session *s, int64_t timeout_ms)
{
    if (s == NULL)
        return LC_EINVAL;
    session_ref(s); /* as in lc_session_receiver: a concurrent lc_session_free ends the wait */
    int rc = session_close(s, timeout_ms);
    session_unref(s);
    return rc;
}

static int session_close(lc_session *s, int64_t timeout_ms)
{
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    s->goaway_sent = true;
    uint32_t last = s->last_peer_id;
    pthread_mutex_unlock(&s->mu);
    atomic_store(&s->no_lazy, true); /* from here on the engine reads (window updates, the peer's end) */
    ensure_watched(s);

    /* everything sent before this call reaches the carrier, or we say so */
    int64_t deadline = lc__deadline_ns(lc__now_ns(), timeout_ms);
    int rc = 0;
    /* byte streams we send: their fds are read to EOF first (their bytes
     * were sent before the close, from the application's point of view) */
    atomic_store(&s->close_waiting, true);
    for (;;) {
        bool busy = sends_in_progress(s);
        if (!busy || atomic_load(&s->dead))
            break;
        if (deadline_passed(deadline)) {
            rc = LC_ETIMEDOUT;
            break;
        }
        pthread_mutex_lock(&s->mu);
        close_wait_locked(s, deadline); /* the engine pumps them */
        pthread_mutex_unlock(&s->mu);
    }
    atomic_store(&s->close_waiting, false);
    /* Messages sent from here on fail (LC_ESESSION): one queued behind the
     * last flush and the half-close below would never be written, though
     * its lc_send had returned 0. */
    pthread_mutex_lock(&s->wmu);
    s->sends_closed = true;
    pthread_mutex_unlock(&s->wmu);
    /* The peer's SYN_REPLY for every stream we opened, before the GOAWAY:
     * spdystream stops writing once it has read a GOAWAY, so a SYN_REPLY it
     * had not written yet fails, and it then drops the stream's DATA ("not
     * replied"): a message sent right before lc_session_close was lost by a
     * Go peer, whose Close then hung (c_close_before_go_replied, 8 of 8
     * runs). Ours reply at once (within 4 ms), Go in its frame handler. */
    pthread_mutex_lock(&s->mu);
    while (rc == 0 && !s->dead) {
        /* (paused: a full queue toward Go, nothing is read) */
        if (s->unreplied == 0 || s->paused)
            break;
        if (deadline_passed(deadline)) {
            rc = LC_ETIMEDOUT;
            break;
        }
        close_wait_locked(s, deadline); /* the engine reads them */
    }
    pthread_mutex_unlock(&s->mu);
    /* GOAWAY after the streams' last bytes: spdystream ends its streams
     * when it reads one. Success is everything before it written: a peer
     * may hang up once it has what it waited for (a Go peer also once it
     * has read the GOAWAY), and the GOAWAY or frames we queue after it (a
     * FIN, a RST) may then meet a reset, which loses nothing that was sent
     * (c_close_races_senders: LC_ESESSION though Go had every message, 1
     * in 3 ASan runs while the GOAWAY still counted). */
    pthread_mutex_lock(&s->wmu);
    s->goaway_end = s->written_total + pending_out(s);
    size_t before = s->out.len;
    if (!s->dead && ctl_goaway(s, &(ctl_arg){ last, LC_SPDY_GOAWAY_OK }) == 0)
        s->ctl_out += s->out.len - before;
    flush_locked(s);
    s->flush_waiters++;
    while (!s->dead && (pending_out(s) > 0 || s->writing)) {
        if (deadline_passed(deadline)) {
            if (s->written_total < s->goaway_end)
                rc = LC_ETIMEDOUT; /* (only later frames left: not an error) */
            break;
        }
        if (deadline < 0)
            pthread_cond_wait(&s->flushed, &s->wmu);
        else
            wait_flushed_10ms(s);
    }
    /* A write another thread has in flight may be the one that carried the
     * last bytes before the GOAWAY: the peer can have read them and hung up
     * (the session is dead now) before that thread has counted them in
     * written_total. Its send returns at once (nonblocking): wait for it. */
    while (s->in_write)
        pthread_cond_wait(&s->flushed, &s->wmu);
    if (rc == 0 && s->dead && s->written_total < s->goaway_end)
        rc = atomic_load(&s->err) ? atomic_load(&s->err) : LC_ESESSION;
    /* Half-close, then let the peer finish and hang up (the reader sees its
     * EOF and ends the session): closing outright with unread bytes in our
     * receive buffer would make the kernel reset the connection, and the
     * peer would lose what it had not read yet. */
    if (rc == 0 && !s->dead && s->conn != NULL) {
        lc__conn_shutdown_write(s->conn);
        while (!s->dead) {
            if (deadline_passed(deadline))
                break; /* everything was written: a slow hang-up is not an error */
            wait_flushed_10ms(s); /* session_fail signals it */
        }
    }
    s->flush_waiters--;
    pthread_mutex_unlock(&s->wmu);
    session_fail(s, LC_ESESSION);
    return rc;
}

LC_API void lc_session_free(lc_session *s)
{
    if (s == NULL)
        return;
    /* a settling FIN (net_end) was as good as written when lc_close
     * returned: it goes, if the carrier takes it now, before the end */
    fin_settled(s);
    session_fail(s, LC_ESESSION);
    /* a session_fail already running on another thread (a write that failed
     * in an engine callback) closes fds of ours: wait until it is done */
    pthread_mutex_lock(&s->wmu);
    while (!s->fail_done)
        pthread_cond_wait(&s->flushed, &s->wmu);
    pthread_mutex_unlock(&s->wmu);
    /* Channels the peer opened that nobody accepted, and nobody can now:
     * their Receivers go. The session's last reference released them, but a
     * stream waiting for room in such a channel's full queue held a
     * reference itself: a cycle that kept the session, its streams and
     * their messages for good (test_free_with_a_full_unaccepted_channel).
     * Without a Receiver the queue is marked: the waiting stream learns it
     * and ends. */
    lc_msg *unaccepted;
    while (lc_recv(s->incoming_r, &unaccepted, 0) == 0)
        lc_msg_free(unaccepted);
    /* byte streams still writing what they held to their fds: the handle
     * goes, so do they (no fd outlives it) */
    pthread_mutex_lock(&s->mu);
    lc_stream **dr = s->draining;
    size_t ndr = s->ndraining;
    s->draining = NULL;
    s->ndraining = 0;
    for (size_t i = 0; i < ndr; i++)
        dr[i]->in_open = false;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < ndr; i++) {
        bytes_close(dr[i]);
        stream_unref(dr[i]);
    }
    free(dr);
    /* and a byte stream's own callback that took its fd to close it just
     * before session_fail looked (session_fail then found nothing to close) */
    while (atomic_load(&s->fd_closers) != 0)
        sched_yield();
    pthread_mutex_lock(&s->mu);
    lc_timer_id tid = s->ref_timer;
    s->ref_timer = 0;
    pthread_mutex_unlock(&s->mu);
    if (tid && lc__engine_timer_cancel(s->eng, tid))
        session_unref(s); /* the cancelled timer's reference */
    pthread_mutex_lock(&s->wmu);
    lc_timer_id bid = s->backstop_set ? s->backstop_id : 0;
    pthread_mutex_unlock(&s->wmu);
    if (bid && lc__engine_timer_cancel(s->eng, bid)) {
        pthread_mutex_lock(&s->wmu);
        s->backstop_set = false;
        pthread_mutex_unlock(&s->wmu);
        session_unref(s); /* the cancelled backstop's reference */
    }
    /* Close the carrier now, so no fd outlives the handle: wait out an
     * engine callback that deleted its own watch and is finishing, and a
     * write syscall in progress; nobody starts new I/O on a dead session
     * (drive counts itself in in_cb before it looks at dead). */
    while (atomic_load(&s->in_cb) != 0)
        sched_yield();
    pthread_mutex_lock(&s->wmu);
    s->flush_waiters++;
    while (s->in_write)
        pthread_cond_wait(&s->flushed, &s->wmu);
    s->flush_waiters--;
    lc_conn *conn = s->conn;
    s->conn = NULL;
    pthread_mutex_unlock(&s->wmu);
    lc__conn_close(conn);
    session_unref(s);
}

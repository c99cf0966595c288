/*
 * session.c - the libchan protocol on one carrier (src/session): SPDY streams
 * to channel ends, top-level channels, sub-streams for the channel ends a
 * message carries, references, forwarding, carrier loss. PROTOCOL.md
 * sections 3 and 5; docs/PROTOCOL.md for what we add.
 *
 * Files. This one: options, lifetime, session death, and the public calls
 * (dial, listen, accept, close). output.c writes the carrier; send.c encodes
 * messages (attachments open sub-streams); bytes.c pumps byte streams;
 * receive.c resolves references and delivers messages; read.c reads the
 * carrier and dispatches its frames; map.c and trace.c are helpers.
 * session_internal.h holds the session's data and what the files share.
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

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <unistd.h>

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

/* ---- lifetime ------------------------------------------------------------ */

/* Closes the fds passed to us that no message claimed, and ours still queued
 * to be sent; the tables stay usable (empty). No I/O may be under way. */
static void close_passed_fds(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    for (size_t i = 0; i < s->fdq_len; i++)
        close(s->fdq[i]);
    s->fdq_len = 0;
    pthread_mutex_unlock(&s->wmu);
    pthread_mutex_lock(&s->mu);
    lc__close_unclaimed_fds_locked(s);
    pthread_mutex_unlock(&s->mu);
}

/* Closes the passed fds no message claimed; the table stays usable. mu held. */
void lc__close_unclaimed_fds_locked(lc_session *s)
{
    for (size_t i = 0; i < s->in_fds.cap; i++)
        if (s->in_fds.slots[i].val != NULL && s->in_fds.slots[i].val != LC_MAP_TOMB)
            close(lc__val_as_fd(s->in_fds.slots[i].val));
    lc__map_free(&s->in_fds);
    s->in_fds_high = false;
}

void lc__session_unref(lc_session *s)
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
    lc__map_free(&s->ended_refs);
    close_passed_fds(s);
    for (size_t i = 0; i < SKIMS_KEEP; i++)
        lc__skim_drop(&s->skims[i]);
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

lc_stream *lc__stream_new(lc_session *s, st_kind kind)
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

/* Frees a chain of messages linked by next (closing their fds). */
void lc__msg_chain_free(lc_msg *m)
{
    while (m != NULL) {
        lc_msg *next = m->next;
        lc_msg_free(m);
        m = next;
    }
}

/* Takes st's whole list of decoded, undelivered messages, to be dropped (a
 * chain for lc__msg_chain_free once the lock is dropped): the passed fds
 * they name and nobody claimed are closed. mu held. */
lc_msg *lc__pending_take_all_locked(lc_stream *st)
{
    lc_msg *all = st->pending_head;
    lc__drop_refs_locked(st->s, all);
    st->pending_head = st->pending_tail = NULL;
    st->npending = 0;
    return all;
}

void lc__stream_unref(lc_stream *st)
{
    if (atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) != 1)
        return;
    lc__msg_chain_free(st->pending_head);
    if (st->sd_init)
        lc__sd_free(&st->sd);
    lc__buf_free(&st->early);
    lc__buf_free(&st->fd_out);
    if (st->fd_over) {
        /* (lc__bytes_close clears it: a stream freed without one must not
         * keep the session's reading paused) */
        pthread_mutex_lock(&st->s->mu);
        st->s->fds_over--;
        pthread_mutex_unlock(&st->s->mu);
        lc__resume_reading(st->s);
    }
    if (st->fd >= 0) {
        lc__pipe_grown_release(st);
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
    lc__session_unref(s);
}

/*
 * Records a peer ref that a message named (or that a message never to be
 * delivered named, skim_ref_found), so that naming it again fails at once.
 * Only the last CLAIMED_KEEP are kept: recording all of them grew without
 * bound over a session's life (one entry per fresh reply channel). An older ref named again waits like a ref that
 * never arrives, and fails after ref_timeout_ms. A ring written in order:
 * a map of them cost a fresh reply channel's round trip a delete and an
 * insert in a 64 KiB table, two cache misses; the ring is only searched for
 * a ref not found among the sub-streams, which our peers and Go's never
 * send. mu held.
 */
void lc__remember_claimed_locked(lc_session *s, uint64_t ref)
{
    s->claimed_ring[s->claimed_next % CLAIMED_KEEP] = ref;
    s->claimed_next++;
}

bool lc__was_claimed_locked(const lc_session *s, uint64_t ref)
{
    size_t n = s->claimed_next < CLAIMED_KEEP ? (size_t)s->claimed_next : CLAIMED_KEEP;
    bool found = false;
    for (size_t i = 0; i < n; i++) /* (no early exit: the compiler vectorizes it) */
        found |= s->claimed_ring[i] == ref;
    return found;
}

/*
 * Records a peer ref whose sub-stream ended (the peer reset it, or we
 * refused or reset it) before any message named it. The message that names
 * it later gets an ended channel end or byte stream (resolve_one_locked):
 * recorded as claimed instead, that naming was "named twice", LC_EPROTO,
 * and the message and the rest of its channel were lost though the peer's
 * lc_send had returned 0 (a review helper: a regular file sent over TCP,
 * whose sub-stream the sender reset at once). Each is kept until a message
 * names it, as the sub-stream itself would have been, up to MAX_ENDED_REFS:
 * the last 256 only were kept at first, and a receiver 257 such messages
 * behind lost its channel to the ref timeout (a review helper: 500
 * forwarded TCP connections reset by their clients, read 300 ms late).
 * Past the bound (a peer that keeps opening and resetting sub-streams no
 * message names), or without memory, a ref is not kept, and a message
 * naming it waits like one whose ref never comes (§3.6). mu held.
 */
void lc__remember_ended_locked(lc_session *s, uint64_t ref)
{
    if (s->ended_refs.len < MAX_ENDED_REFS)
        (void)lc__map_put(&s->ended_refs, ref, LC_ENDED_REF);
}

/* Takes ref out of the ended ones: true if it was there. mu held. */
bool lc__take_ended_locked(lc_session *s, uint64_t ref)
{
    return lc__map_del(&s->ended_refs, ref) != NULL;
}

/* Frees the bytes kept for a sub-stream before it was named. mu held. */
void lc__early_drop_locked(lc_session *s, lc_stream *st)
{
    s->early_total -= st->early.len;
    lc__buf_free(&st->early);
}

/* Something lc_session_close may be waiting for happened (a SYN_REPLY, an
 * outgoing byte stream's end, reading paused, the session's end). It used
 * to look every 1-2 ms instead: a dial, send and close cycle took 1.1 ms,
 * nearly all of it that nap. mu held. */
void lc__close_progress_locked(lc_session *s)
{
    if (s->closing)
        pthread_cond_broadcast(&s->close_cv);
}

/* The peer answered (or reset, or the stream ended): one fewer reply for
 * lc_session_close to wait for. mu held. */
void lc__reply_came_locked(lc_session *s, lc_stream *st)
{
    if (!st->awaiting_reply)
        return;
    st->awaiting_reply = false;
    if (--s->unreplied == 0)
        lc__close_progress_locked(s);
}

/* Removes a stream from the table once both directions are finished. */
void lc__stream_maybe_done_locked(lc_session *s, lc_stream *st)
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
        /* a byte stream the peer only reads gets no FIN from it (a side
         * that never sends sends none): ended once ours is (it stayed in
         * the table for the session's life, and past MAX_OPEN_STREAMS the
         * peer's new streams were refused; a review helper), and the peer's
         * SYN_REPLY, if one is awaited (leaving sooner counted as it: the
         * close then did not wait for Go's, and Go dropped the bytes) */
        done = (st->remote_fin || (st->no_inbound && !st->awaiting_reply)) && st->local_fin;
        break;
    }
    if (st->reset)
        done = true;
    else if (st->remote_fin_pending || st->waiting_refs)
        done = false; /* ended, but not everything is delivered yet: a message
                       * waiting for a sub-stream is only failed by the ref
                       * timer, which walks the table (lc__deliver_pending calls
                       * us again) */
    if (!done)
        return;
    lc__map_del(&s->streams, st->id);
    st->in_table = false;
    lc__early_drop_locked(s, st); /* nothing will name it now */
    lc__reply_came_locked(s, st); /* none will be waited for now */
    if (st->kind == ST_UNBOUND && lc__map_get(&s->peer_refs, st->ref) == st) {
        /* reset before any message named it: a later naming gets an ended
         * end at once (found by fuzz_session: it used to leave a dangling
         * entry) */
        lc__map_del(&s->peer_refs, st->ref);
        lc__remember_ended_locked(s, st->ref);
    }
    lc__stream_unref(st); /* the table's reference; the caller holds another */
}

/* st, ours, carries its first DATA (a refusal that comes once it has left
 * the table is still reported by lc_session_close). wmu held. */
void lc__note_data_wmu_locked(lc_session *s, lc_stream *st)
{
    if (!st->ours || st->sent != 0)
        return;
    /* Past the last-good id of a GOAWAY already read: the peer drops it.
     * on_goaway counts the streams with DATA when it reads the GOAWAY, then
     * ends the others as refused outside the locks: a first send in between
     * went out, lc_send said 0, and lc_session_close said 0 too (seen once
     * in TSan, test_close_reports_a_channel_the_closing_peer_refused). */
    if (s->goaway_recv && st->id > s->goaway_last && (!s->goaway_top_only || st->top))
        atomic_store(&s->sent_refused, true);
    if (st->id > s->max_data_id)
        s->max_data_id = st->id;
    if (st->top && st->id > s->max_top_data_id)
        s->max_top_data_id = st->id;
    if (st->top)
        s->top_data_ids[s->top_data_next++ % LC_TOP_DATA_KEEP] = st->id;
}

/* ---- session death ------------------------------------------------------- */

/* The carrier is gone (or the peer broke the protocol): every channel end of
 * the session fails now. Idempotent; no lock held by the caller. */
void lc__session_fail(lc_session *s, int err)
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
        /* (what this side was still sending: lc_session_close reports it) */
        if ((st->kind == ST_BYTES && st->out_open && st->fdw != NULL) ||
            (st->kind == ST_PUMP_RECEIVER && st->source != NULL && (st->pump_blocked || atomic_load(&st->pump_active) > 0)))
            s->sends_cut = true;
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
        helds[n] = lc__pump_take_locked(st);
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
    lc__map_free(&s->ended_refs);
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
            lc__deliver_pending(all[i]); /* ends the channel with end_err once idle */
            lc_sender_release(intos[i]);
        }
        if (chans[i]) {
            lc__chan_wake_senders(chans[i]);
            lc__chan_release(chans[i]);
        }
        if (all[i]->kind == ST_BYTES && drains[i]) {
            /* armed under mu, while fdw is still this stream's watch: the
             * pump may finish and close it meanwhile, and the watch's slot
             * then go to another fd, whose owner got an EPOLLOUT it did not
             * ask for (a review helper: an unrelated session wrote the same
             * bytes twice and died with -EFAULT); bytes.c arms the same way */
            pthread_mutex_lock(&s->mu);
            if (all[i]->fdw != NULL)
                lc__engine_arm(all[i]->fdw, EPOLLOUT); /* bytes_pump writes the rest, then EOF */
            pthread_mutex_unlock(&s->mu);
        } else if (all[i]->kind == ST_BYTES) {
            lc__bytes_close(all[i]); /* the holder sees EOF / EPIPE */
        }
        if (helds[i])
            lc__pump_resume(all[i], helds[i]); /* its send fails now: the pump ends */
        if (idle_pumps[i]) {
            if (lc_receiver_queued(idle_pumps[i]) > 0) {
                pthread_mutex_lock(&s->mu);
                s->sends_cut = true;
                pthread_mutex_unlock(&s->mu);
            }
            /* its local senders fail from now on, and the pump ends */
            lc__receiver_abandon(idle_pumps[i], LC_ESESSION);
            lc_receiver_release(idle_pumps[i]);
        }
        lc__stream_unref(all[i]);
    }
    free(all);
    free(chans);
    free(intos);
    free(helds);
    free(idle_pumps);
    free(drains);
    free(draining);
    lc__rst_due_flush(s); /* (their references: nothing is written now) */
    /* lc_session_free on another thread waits for this: it must not return
     * while we still close the byte streams' fds */
    pthread_mutex_lock(&s->wmu);
    /* The fds queued to pass can no longer go (the carrier is shut for
     * writing): closed now, not at lc_session_free. A holder waiting for
     * EOF on a pipe whose other end it passed never saw it while it kept
     * the session (a review helper: 36 of 40 pipes still open after the
     * peer was killed). Not while a write is in flight: its thread holds a
     * copy of the first ones, and closes them itself once they are sent. */
    s->flush_waiters++;
    while (s->in_write)
        pthread_cond_wait(&s->flushed, &s->wmu);
    s->flush_waiters--;
    for (size_t i = 0; i < s->fdq_len; i++)
        close(s->fdq[i]);
    s->fdq_len = 0;
    s->fail_done = true;
    pthread_cond_broadcast(&s->flushed);
    pthread_mutex_unlock(&s->wmu);
}

void lc__protocol_error(lc_session *s, uint32_t status)
{
    ctl_arg a = { s->last_peer_id, status };
    lc__send_control(s, lc__ctl_goaway, &a);
    lc__flush_now(s); /* on the reading thread lc__send_control only queues it */
    lc__session_fail(s, LC_EPROTO);
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
        rc = lc__engine_add(s->eng, lc__conn_fd(conn), 0, lc__carrier_cb, s, &s->watch);
        if (rc == 0)
            rc = lc__engine_arm(s->watch, EPOLLIN);
        pthread_mutex_unlock(&s->wmu);
    }
    if (rc != 0) {
        /* the last reference frees the rest, the channel ends and the
         * carrier included (they were released here as well: a double
         * release, found by a review helper when a process at its fd limit
         * could not create the engine) */
        if (s->watch != NULL)
            lc__engine_del(s->watch);
        s->watch = NULL;
        lc__session_unref(s);
        return rc;
    }
    /* our first frame: the window we grant per stream, and the marker that
     * tells a peer of ours we speak windows (a Go peer ignores both) */
    lc_spdy_setting set[2] = {
        { 0, LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE, s->opt.stream_window },
        { 0, LC_SETTINGS_LIBCHAN,
          LC_FEATURE_WINDOWS | LC_FEATURE_NO_REPLIES |
              (s->fdpass_local ? LC_FEATURE_FDPASS | LC_FEATURE_FD_ASKS | LC_FEATURE_FD_CHARGE : 0) } };
    pthread_mutex_lock(&s->wmu);
    if (lc__spdy_put_settings(&s->out, 0, set, 2) == 0)
        lc__flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    /* a timer that looks after messages waiting for references */
    session_ref(s);
    pthread_mutex_lock(&s->mu);
    if (lc__engine_timer_add(s->eng, lc__now_ns() + lc__ms_to_ns(s->opt.ref_timeout_ms) / 4, lc__ref_timer, s,
                             &s->ref_timer) != 0) {
        pthread_mutex_unlock(&s->mu);
        lc__session_unref(s);
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

/* The start of lc_dial and lc_listen: err gets a text for every failure,
 * including the arguments' own, and *out is NULL unless it succeeds. */
static int endpoint_args(const char *url, void *out, lc_error *err)
{
    if (out == NULL)
        return lc__url_error(err, LC_EINVAL, "%s: no output pointer", url ? url : "(null)");
    if (url == NULL)
        return lc__url_error(err, LC_EINVAL, "no URL");
    return 0;
}

LC_API int lc_dial(const char *url, const lc_options *o, lc_session **out, lc_error *err)
{
    if (out != NULL)
        *out = NULL;
    int rc = endpoint_args(url, out, err);
    if (rc != 0)
        return rc;
    lc_options opt;
    options_resolve(&opt, o);
    lc_conn *conn;
    rc = lc__dial(url, opt.dial_timeout_ms, &conn, err);
    if (rc != 0)
        return rc;
    rc = session_start(conn, true, &opt, out);
    if (rc != 0)
        lc__url_error(err, rc, "%s: connected, but the session could not start: %s", url, lc_strerror(rc));
    return rc;
}

/*
 * lc_listener_shutdown (and lc_listener_close, which begins with it) may come
 * while other threads wait in lc_accept (an accept loop told to stop from
 * elsewhere, as Go's Listener.Close ends a blocked Accept): the waits poll
 * the listening fd together with an eventfd that shutdown makes readable for
 * good, and the transport listener is closed only once the last of them has
 * left. The lc_listener itself stays until lc_listener_close, so an accept
 * loop stopped by a shutdown may call lc_accept once more and read
 * LC_ECLOSED, whenever the shutdown came.
 */
struct lc_listener {
    lc_tlistener *tl; /* NULL once shut down (under mu) */
    lc_options opt;
    int wake;            /* eventfd: readable once closing */
    pthread_mutex_t mu;
    pthread_cond_t idle; /* signalled when the last accepting thread leaves */
    int accepting;
    bool closing;
};

LC_API int lc_listen(const char *url, const lc_options *o, lc_listener **out, lc_error *err)
{
    if (out != NULL)
        *out = NULL;
    int rc = endpoint_args(url, out, err);
    if (rc != 0)
        return rc;
    lc_listener *l = calloc(1, sizeof *l);
    if (l == NULL)
        return lc__url_error(err, LC_ENOMEM, "%s: %s", url, lc_strerror(LC_ENOMEM));
    options_resolve(&l->opt, o);
    l->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wake < 0) {
        rc = -errno;
        free(l);
        return lc__url_error(err, rc, "%s: eventfd: %s", url, lc_strerror(rc));
    }
    rc = lc__listen(url, &l->tl, err);
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
    if (l == NULL)
        return LC_EINVAL;
    pthread_mutex_lock(&l->mu);
    int rc = l->tl != NULL ? lc__listener_url(l->tl, buf, len) : LC_ECLOSED;
    pthread_mutex_unlock(&l->mu);
    return rc;
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
 * up, or another lc_listen that could not ask sock_diag whether this path is
 * live: it connects and hangs up) is nobody to serve. Ended with a reset
 * too: a client that aborts (SO_LINGER 0, as load balancers' health checks
 * do) leaves an RST, and the peek says ECONNRESET, not 0 (lc_accept
 * returned a session already dead of it; a review helper). */
static bool conn_already_over(lc_conn *conn)
{
    char c;
    ssize_t n = recv(lc__conn_fd(conn), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE || errno == ETIMEDOUT));
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

LC_API void lc_listener_shutdown(lc_listener *l)
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
    /* (under mu: lc_listener_url reads tl under it; accepts are over) */
    lc__listener_close(l->tl);
    l->tl = NULL;
    pthread_mutex_unlock(&l->mu);
}

LC_API void lc_listener_close(lc_listener *l)
{
    if (l == NULL)
        return;
    lc_listener_shutdown(l);
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
    lc_stream *st = lc__stream_new(s, ST_SEND);
    if (st == NULL)
        return LC_ENOMEM;
    st->ours = true;
    st->top = true;
    st->ref = atomic_fetch_add_explicit(&s->next_ref, 1, memory_order_relaxed);
    pthread_mutex_lock(&s->wmu);
    int rc = s->dead || s->sends_closed ? LC_ESESSION : 0;
    if (rc == 0 && s->goaway_recv)
        rc = LC_ECLOSED; /* the peer is going away: no new channels */
    if (rc == 0) {
        pthread_mutex_lock(&s->mu);
        rc = lc__register_ours_locked(s, st);
        pthread_mutex_unlock(&s->mu);
    }
    if (rc == 0)
        rc = lc__put_syn_stream(s, st->id, st->ref, 0);
    if (rc == 0)
        lc__flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    if (rc == 0) {
        *out = lc__make_net_sender(st, false);
        if (*out == NULL)
            rc = LC_ENOMEM;
    }
    lc__stream_unref(st); /* creation reference: the table and the sender hold theirs */
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
    /* new channels come by reading; also for a poll (timeout 0): one that
     * skipped this saw them only at the lazy backstop, up to 4 ms later
     * (found by a review helper: test_polled_session_receiver_sees_channels) */
    /* A wait is counted while it lasts (lc__session_waiting), as a blocked
     * lc_recv beside a reading thread is: armed once, another thread's
     * drive left the carrier lazily unwatched and the channel was seen at
     * the backstop (test_blocked_session_receiver_beside_a_reader_is_woken_
     * at_once). */
    bool waits = timeout_ms != 0;
    if (waits)
        lc__session_waiting(s, 1);
    else
        lc__ensure_watched(s);
    int rc = lc_recv(s->incoming_r, &m, timeout_ms);
    if (waits)
        lc__session_waiting(s, -1);
    if (rc == 0) {
        *out = lc_value_take_receiver(lc_msg_root(m), NULL);
        lc_msg_free(m);
        rc = *out ? 0 : LC_EPROTO;
    } else if (rc == LC_EOF) {
        rc = LC_ESESSION;
    }
    lc__session_unref(s);
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

/* Waits on close_cv until lc__close_progress_locked, the deadline, or 2 ms: a
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
    lc__session_unref(s);
    return rc;
}

/* Whether the session, ended, was ended while this side was still sending
 * (once lc__session_fail has finished looking). wmu held. */
static bool sends_were_cut_wmu_locked(lc_session *s)
{
    while (!s->fail_done)
        pthread_cond_wait(&s->flushed, &s->wmu);
    pthread_mutex_lock(&s->mu);
    bool cut = s->sends_cut;
    pthread_mutex_unlock(&s->mu);
    return cut;
}

static bool sends_were_cut(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    bool cut = sends_were_cut_wmu_locked(s);
    pthread_mutex_unlock(&s->wmu);
    return cut;
}

/* The session's error, or dflt while it has none. */
static int session_error_or(lc_session *s, int dflt)
{
    int e = atomic_load(&s->err);
    return e != 0 ? e : dflt;
}

static int session_close(lc_session *s, int64_t timeout_ms)
{
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        /* A second close (another thread's) waits for the first and says
         * what it said: it wrote another GOAWAY after the first's
         * half-close, met EPIPE, and a clean end became -ECONNRESET (a
         * review helper: 5 of 20 rounds with two closers). */
        int64_t deadline = lc__deadline_ns(lc__now_ns(), timeout_ms);
        while (!s->close_done && !deadline_passed(deadline))
            close_wait_locked(s, deadline);
        int rc = s->close_done ? s->close_rc : LC_ETIMEDOUT;
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    s->closing = true;
    s->goaway_sent = true;
    pthread_mutex_unlock(&s->mu);
    atomic_store(&s->no_lazy, true); /* from here on the engine reads (window updates, the peer's end) */
    lc__ensure_watched(s);

    /* everything sent before this call reaches the carrier, or we say so */
    int64_t deadline = lc__deadline_ns(lc__now_ns(), timeout_ms);
    int rc = 0;
    /* Messages the application sends from here on fail (LC_ESESSION): one
     * queued behind the last flush and the half-close below would never be
     * written, though its lc_send had returned 0. Those sent before are
     * written, and what they carry is started (attach_starting). */
    pthread_mutex_lock(&s->wmu);
    s->sends_closed = true;
    pthread_mutex_unlock(&s->wmu);
    /* byte streams we send: their fds are read to EOF first (their bytes
     * were sent before the close, from the application's point of view);
     * the Receivers we pump: what they hold is sent */
    atomic_store(&s->close_waiting, true);
    for (;;) {
        bool dead = atomic_load(&s->dead);
        bool busy = atomic_load(&s->attach_starting) > 0;
        if (!busy)
            busy = sends_in_progress(s);
        if (!busy && !dead)
            break;
        if (dead) {
            /* Ended while they still had something (lc__session_fail saw
             * it: an ended session's tables are empty), which can no longer
             * go: not everything sent before the call reached the carrier.
             * This returned 0 (a review helper's peer got 1 of 3 pumped
             * messages). */
            if (busy || sends_were_cut(s))
                rc = session_error_or(s, LC_ESESSION);
            break;
        }
        if (deadline_passed(deadline)) {
            rc = LC_ETIMEDOUT;
            break;
        }
        pthread_mutex_lock(&s->mu);
        close_wait_locked(s, deadline); /* the engine pumps them */
        pthread_mutex_unlock(&s->mu);
    }
    atomic_store(&s->close_waiting, false);
    /* now the pumps' too */
    pthread_mutex_lock(&s->wmu);
    s->pump_sends_closed = true;
    pthread_mutex_unlock(&s->wmu);
    /* The peer's SYN_REPLY for every stream we opened, before the GOAWAY:
     * spdystream stops writing once it has read a GOAWAY, so a SYN_REPLY it
     * had not written yet fails, and it then drops the stream's DATA ("not
     * replied"): a message sent right before lc_session_close was lost by a
     * Go peer, whose Close then hung (c_close_before_go_replied, 8 of 8
     * runs). Ours reply at once (within 4 ms), Go in its frame handler. */
    pthread_mutex_lock(&s->mu);
    while (rc == 0) {
        /* (paused: a full queue toward Go, nothing is read) */
        if (s->unreplied == 0 || s->paused)
            break;
        if (s->dead) {
            /* replies come before a peer's hang-up: it ended (or was freed)
             * without taking a channel we had opened, whose messages a Go
             * peer then drops */
            rc = session_error_or(s, LC_ESESSION);
            break;
        }
        if (deadline_passed(deadline)) {
            rc = LC_ETIMEDOUT;
            break;
        }
        close_wait_locked(s, deadline); /* the engine reads them */
    }
    if (rc == 0 && s->sent_refused)
        rc = LC_ECLOSED; /* answered with a refusal: what went on it was dropped */
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
    /* last-good: the peer's last stream taken up to now, not when the close
     * began (the sub-streams taken since, 3.2, are not refused: a peer of
     * ours past them reset them), and not one refused with 502 (a 502 the
     * reader had not queued yet when the GOAWAY went, and the half-close
     * after it, left the peer with nothing saying its channel was refused,
     * and its lc_session_close returned 0) */
    pthread_mutex_lock(&s->mu);
    uint32_t last = s->last_taken_id;
    pthread_mutex_unlock(&s->mu);
    if (!s->dead && lc__ctl_goaway(s, &(ctl_arg){ last, LC_SPDY_GOAWAY_OK }) == 0)
        s->ctl_out += s->out.len - before;
    lc__flush_locked(s);
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
    if (rc == 0 && s->dead) {
        /* (also when it ended between the first loop's look at dead and
         * its look at the tables, which lc__session_fail had emptied: the
         * loop then saw nothing to wait for; a review helper, under gdb) */
        if (sends_were_cut_wmu_locked(s) || s->written_total < s->goaway_end)
            rc = session_error_or(s, LC_ESESSION);
    }
    /* Half-close, then let the peer finish and hang up (the reader sees its
     * EOF and ends the session): closing outright with unread bytes in our
     * receive buffer would make the kernel reset the connection, and the
     * peer would lose what it had not read yet. */
    bool drain = false;
    if (rc == 0 && !s->dead && s->conn != NULL) {
        lc__conn_shutdown_write(s->conn);
        while (!s->dead) {
            if (deadline_passed(deadline))
                break; /* everything was written: a slow hang-up is not an error */
            /* reading paused (what came waits for the application): nobody
             * would see the hang-up; wait for it reading, below */
            if (atomic_load(&s->paused)) {
                drain = true;
                break;
            }
            wait_flushed_10ms(s); /* lc__session_fail signals it */
        }
    }
    s->flush_waiters--;
    pthread_mutex_unlock(&s->wmu);
    if (drain)
        lc__drain_until_hangup(s, deadline);
    lc__session_fail(s, LC_ESESSION);
    pthread_mutex_lock(&s->mu);
    if (rc == 0 && s->sent_refused)
        rc = LC_ECLOSED; /* a refusal read while we waited for the hang-up (a
                          * peer of ours is not waited for in step 4) */
    s->close_done = true;
    s->close_rc = rc;
    pthread_cond_broadcast(&s->close_cv);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

LC_API void lc_session_free(lc_session *s)
{
    if (s == NULL)
        return;
    /* a settling FIN (net_end) was as good as written when lc_close
     * returned: it goes, if the carrier takes it now, before the end */
    lc__fin_settled(s);
    lc__session_fail(s, LC_ESESSION);
    /* a lc__session_fail already running on another thread (a write that failed
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
        lc__bytes_close(dr[i]);
        lc__stream_unref(dr[i]);
    }
    free(dr);
    /* and a byte stream's own callback that took its fd to close it just
     * before lc__session_fail looked (lc__session_fail then found nothing to close) */
    while (atomic_load(&s->fd_closers) != 0)
        sched_yield();
    pthread_mutex_lock(&s->mu);
    lc_timer_id tid = s->ref_timer;
    s->ref_timer = 0;
    pthread_mutex_unlock(&s->mu);
    if (tid && lc__engine_timer_cancel(s->eng, tid))
        lc__session_unref(s); /* the cancelled timer's reference */
    pthread_mutex_lock(&s->wmu);
    lc_timer_id bid = s->backstop_set ? s->backstop_id : 0;
    pthread_mutex_unlock(&s->wmu);
    if (bid && lc__engine_timer_cancel(s->eng, bid)) {
        pthread_mutex_lock(&s->wmu);
        s->backstop_set = false;
        pthread_mutex_unlock(&s->wmu);
        lc__session_unref(s); /* the cancelled backstop's reference */
    }
    pthread_mutex_lock(&s->wmu);
    lc_timer_id fid = s->first_timer; /* (send.c, wait_first_frame) */
    s->first_timer = 0;
    pthread_mutex_unlock(&s->wmu);
    if (fid && lc__engine_timer_cancel(s->eng, fid))
        lc__session_unref(s); /* the cancelled timer's reference */
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
    /* and the passed fds it holds: they waited for the session's last
     * reference, which a Sender the application keeps can hold for ever
     * (found by a review helper: 7302 fds of a freed session). A message
     * still inside the session that names one of them is lost now, as
     * when the session dies before its fd has come (its channel ends with
     * LC_ESESSION). */
    close_passed_fds(s);
    lc__late_refs_release(s); /* (ends bound for messages never delivered: as the fds) */
    lc__session_unref(s);
}

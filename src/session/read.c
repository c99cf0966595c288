/*
 * read.c - reading a session's carrier (src/session): frames decoded and
 * dispatched, the engine's watch and lazy re-arming, and a receiving
 * thread reading the carrier itself (drive).
 */
#include "session_internal.h"
#include "common/deadline.h"

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <errno.h>
#include <poll.h>
#include <unistd.h>

/* The session whose carrier this thread is reading (engine callback), if any:
 * control frames it produces wait for one flush per read batch. */
_Thread_local lc_session *lc__tls_reading;

/* The session this thread last took a message from by reading its carrier
 * itself (drive): the thread will likely read it again soon (net_end).
 * Only compared, never followed. */
_Thread_local const lc_session *lc__tls_served;

static lc_stream *new_peer_stream_locked(lc_session *s, uint32_t id, uint64_t ref, st_kind kind)
{
    lc_stream *st = lc__stream_new(s, kind);
    if (st == NULL)
        return NULL;
    st->id = id;
    st->ref = ref;
    if (lc__map_put(&s->streams, id, st) != 0) {
        lc__stream_unref(st);
        return NULL;
    }
    st->in_table = true; /* the creation reference is the table's */
    s->last_taken_id = id;
    return st;
}

static void on_syn_stream(lc_session *s, const lc_spdy_frame *f, lc_receiver **announce)
{
    uint64_t ref = 0, parent = 0;
    const lc_spdy_header *hr = lc__spdy_header_find(f->headers, f->n_headers, "libchan-ref");
    const lc_spdy_header *hp = lc__spdy_header_find(f->headers, f->n_headers, "libchan-parent-ref");
    bool peer_parity = (f->stream_id & 1) == (s->is_client ? 0u : 1u);
    if (!peer_parity || f->stream_id <= s->last_peer_id) {
        /* a reused or wrongly numbered stream id: the framing can no longer
         * be trusted */
        lc__protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
        return;
    }
    s->last_peer_id = f->stream_id;
    if (!lc__parse_u64(hr, &ref) || (hp != NULL && !lc__parse_u64(hp, &parent))) {
        /* a stream without a usable reference: refuse that stream only, as Go does */
        ctl_arg rst = { f->stream_id, LC_SPDY_PROTOCOL_ERROR };
        lc__send_control(s, lc__ctl_rst, &rst);
        return;
    }
    ctl_arg reply = { f->stream_id, 200 };
    pthread_mutex_lock(&s->mu);
    if (s->dead) {
        /* lc__session_fail ran meanwhile (lc_session_free on another thread) and
         * emptied the tables: a stream put there now would never leave, and
         * would keep the session alive */
        pthread_mutex_unlock(&s->mu);
        return;
    }
    if ((s->goaway_sent || s->closing) && hp == NULL) {
        /* Closing: no new top-level channel. A sub-stream is still taken:
         * it belongs to a message on a channel already accepted, whose
         * messages are still delivered; refused, that message and every
         * later one on its channel were lost though their lc_send had
         * returned 0 (a review helper, both sides closing under traffic). */
        pthread_mutex_unlock(&s->mu);
        reply.status = 502;
        lc__send_control(s, lc__ctl_syn_reply, &reply);
        return;
    }
    if (s->streams.len >= MAX_OPEN_STREAMS) {
        /* too many open at once: this one is refused (its Sender gets
         * LC_ECLOSED; a message naming it gets an ended end). A peer that opened
         * channels and never closed them grew the table without bound (the
         * accept queue only bounds channels nobody took yet). */
        if (hp != NULL)
            lc__remember_ended_locked(s, ref);
        pthread_mutex_unlock(&s->mu);
        ctl_arg rst = { f->stream_id, LC_SPDY_REFUSED_STREAM };
        lc__send_control(s, lc__ctl_rst, &rst);
        return;
    }
    if (hp == NULL) {
        /* a new top-level channel: queue its Receiver for the application */
        lc_stream *st = new_peer_stream_locked(s, f->stream_id, ref, ST_RECV);
        lc_receiver *r = NULL;
        lc_sender *into = NULL;
        if (st == NULL || lc_pipe(&r, &into, s->opt.recv_queue) != 0) {
            pthread_mutex_unlock(&s->mu);
            lc__protocol_error(s, LC_SPDY_GOAWAY_INTERNAL_ERROR);
            return;
        }
        st->into = into;
        lc__receiver_set_feeder(r, &lc__session_feeder_ops, s);
        *announce = r;
    } else {
        /* a sub-stream: recorded by reference until a message names it */
        if (lc__map_get(&s->peer_refs, ref) != NULL) {
            pthread_mutex_unlock(&s->mu);
            lc__protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
            return;
        }
        lc_stream *st = new_peer_stream_locked(s, f->stream_id, ref, ST_UNBOUND);
        if (st == NULL || lc__map_put(&s->peer_refs, ref, st) != 0) {
            pthread_mutex_unlock(&s->mu);
            lc__protocol_error(s, LC_SPDY_GOAWAY_INTERNAL_ERROR);
            return;
        }
        st->parent_ref = parent;
        atomic_store_explicit(&s->new_refs, true, memory_order_relaxed); /* messages waiting for it may go on */
    }
    lc_sender *end_now = NULL;
    if (f->flags & LC_SPDY_FLAG_FIN) {
        lc_stream *st = lc__map_get(&s->streams, f->stream_id);
        if (st) {
            /* the peer's end, for a sub-stream too (DATA after it is
             * refused; binding reads early_fin): with early_fin alone a
             * sub-stream named and ended stayed in the table (a review
             * helper) */
            st->early_fin = true;
            st->remote_fin = true;
        }
        if (st && hp == NULL) {
            /* a top-level channel opened and closed at once: it is empty;
             * answered with our FIN as after a DATA FIN (3.8), and gone from
             * the table (it used to stay there for the session's life) */
            st->remote_fin = true;
            st->local_fin = true;
            end_now = lc_sender_retain(st->into);
            lc__stream_maybe_done_locked(s, st);
        }
    }
    pthread_mutex_unlock(&s->mu);
    /* A peer of ours that announced NO_REPLIES waits for none (it said so
     * in its first frame, read before this one). bench_session unix
     * lc-rt-fresh, 8 interleaved pairs: p50 5.75 -> 5.4 us (the reply
     * channel's SYN_REPLY was deflated, written and inflated in every round
     * trip, on the path of the reply). */
    if (!quiet_peer(s))
        lc__send_control(s, lc__ctl_syn_reply, &reply);
    if (end_now) {
        ctl_arg fa = { f->stream_id, 0 };
        if (!quiet_peer(s))
            lc__send_control_deferred(s, lc__ctl_fin, &fa);
        lc_close(end_now); /* after the Receiver is announced (run_actions) */
        lc_sender_release(end_now);
    }
}

/* Appends a decoded message to st's list of undelivered ones. mu held. */
void lc__pending_append_locked(lc_stream *st, lc_msg *m)
{
    m->next = NULL;
    if (st->pending_tail)
        st->pending_tail->next = m;
    else
        st->pending_head = m;
    st->pending_tail = m;
    st->npending++;
}

/*
 * LC_DECODE_AHEAD: messages decoded ahead of delivery, per stream. The rest
 * of what arrived stays as bytes in the stream decoder until the local queue
 * takes these:
 * decoding a whole 64 KiB read at once (~3000 SimpleStructs, ~1 MB of
 * messages) made the heap grow and shrink on every read, and bench_session
 * spent a third of the receiver's CPU in page faults and malloc. Never more
 * than the local queue holds (recv_queue): a message that carries channels
 * is held decoded, as values (up to ~50 bytes per byte of a message of tiny
 * elements), and with recv_queue 1 a channel nobody read held 33 of them (a
 * review helper: 231 MB for 4 MB of messages).
 */

/* Feeds message bytes of stream st into its decoder (p may be NULL, n 0) and
 * decodes messages until LC_DECODE_AHEAD (at most recv_queue) are waiting.
 * mu held. Returns 1 when messages wait for delivery, 0 when none, or an
 * error. */
int lc__feed_stream_locked(lc_session *s, lc_stream *st, const uint8_t *p, size_t n)
{
    if (!st->sd_init) {
        lc__sd_init(&st->sd, &s->opt.limits, NULL);
        st->sd_init = true;
    }
    size_t ahead = lc__decode_ahead(s);
    int rc = 0;
    /* messages straight from the frame while the decoder holds nothing (the
     * usual case: a frame of whole messages), the rest fed */
    while (n > 0 && st->npending < ahead) {
        lc_msg *m;
        rc = lc__sd_next_direct(&st->sd, &p, &n, &m);
        if (rc != 0)
            break;
        lc__pending_append_locked(st, m);
    }
    if (rc < 0)
        return rc;
    rc = n ? lc__sd_feed(&st->sd, p, n) : 0;
    while (rc == 0 && st->npending < ahead) {
        lc_msg *m;
        rc = lc__sd_next(&st->sd, &m);
        if (rc != 0)
            break;
        lc__pending_append_locked(st, m);
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
    if (lc__kl_add(&a->deliver, st))
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
        lc__deliver_pending_noted(st, true);
        lc__stream_unref(st);
    }
    lc__kl_free(&a->deliver);
    lc__rst_due_flush(s); /* sub-streams named by skimmed bytes */
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
            lc__skim_more_locked(s, f->stream_id, f->data, f->data_len, fin);
        pthread_mutex_unlock(&s->mu);
        if (f->data_last) {
            ctl_arg rst = { f->stream_id, LC_SPDY_INVALID_STREAM };
            lc__send_control(s, lc__ctl_rst, &rst);
        }
        return;
    }
    stream_ref(st); /* lc__stream_maybe_done_locked may drop the table's reference */
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
        rc = lc__feed_stream_locked(s, st, f->data, f->data_len);
        if (rc > 0)
            note_delivery(a, st);
        break;
    case ST_BYTES:
        rc = lc__bytes_inbound_locked(s, st, f->data, f->data_len);
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
        lc__skim_start_locked(s, st, not_taken ? f->data : NULL, not_taken ? f->data_len : 0, fin);
        bool deliver = st->into != NULL;
        if (deliver) {
            st->end_err = LC_EPROTO;
            st->remote_fin_pending = true;
            note_delivery(a, st);
        }
        bool bytes = st->kind == ST_BYTES;
        if (bytes)
            st->out_open = st->in_open = false;
        lc__stream_maybe_done_locked(s, st);
        pthread_mutex_unlock(&s->mu);
        ctl_arg rst = { f->stream_id, rst_status };
        lc__send_control(s, lc__ctl_rst, &rst);
        if (bytes)
            lc__bytes_close(st);
        lc__stream_unref(st);
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
        lc__stream_maybe_done_locked(s, st);
    }
    bool send_fin = st->send_fin;
    st->send_fin = false;
    uint32_t id = st->id;
    /* the pump writes what is queued and grants the window back for what
     * reached the fd (also when lc__bytes_inbound_locked wrote it directly) */
    bool kick = bytes_kick_locked ||
                (st->kind == ST_BYTES &&
                 (fd_queued(st) > 0 || (atomic_load(&s->peer_fc) &&
                                         st->fed - st->acked >= s->opt.stream_window / 4)));
    pthread_mutex_unlock(&s->mu);
    if (send_fin) {
        ctl_arg fa = { id, 0 };
        lc__send_control_deferred(s, lc__ctl_fin, &fa);
    }
    if (kick)
        lc__bytes_kick(st);
    lc__stream_unref(st);
}

/* The peer answered a stream we opened (lc_session_close waits for it). */
static void on_rst(lc_session *s, const lc_spdy_frame *f, rd_actions *a);

/* Ends stream id here as the peer's RST_STREAM with status would: a stream
 * the peer refused (it never took it), or one we reset for a flow-control
 * error. Its Sender then fails (LC_ECLOSED) instead of sending into nothing. */
static void end_as_reset(lc_session *s, uint32_t id, uint32_t status, rd_actions *a)
{
    if (status == LC_SPDY_REFUSED_STREAM) {
        /* What was sent on it was accepted by lc_send and is dropped by
         * the peer: lc_session_close says so (it returned 0, the messages
         * silently lost). Toward a peer of ours a channel we sent on and
         * closed has left the table by now: its id is among the last
         * top-level ones that carried DATA (a review helper) */
        pthread_mutex_lock(&s->wmu);
        pthread_mutex_lock(&s->mu);
        lc_stream *st = lc__map_get(&s->streams, id);
        bool carried = st != NULL && st->ours && st->sent > 0 && !st->reset;
        for (size_t i = 0; st == NULL && i < LC_TOP_DATA_KEEP && !carried; i++)
            carried = s->top_data_ids[i] == id && id != 0;
        if (carried)
            s->sent_refused = true;
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&s->wmu);
    }
    lc_spdy_frame rst = { .type = LC_SPDY_RST_STREAM, .stream_id = id, .status = status };
    on_rst(s, &rst, a);
}

static void on_syn_reply(lc_session *s, const lc_spdy_frame *f, rd_actions *a)
{
    /* ":status" other than 200, with FIN: the peer refused the stream (ours
     * and spdystream send 502 while closing), and drops what comes on it.
     * Taking it as an answer lost every message sent on it meanwhile (a
     * review helper). */
    const lc_spdy_header *h = lc__spdy_header_find(f->headers, f->n_headers, ":status");
    bool ok = !(f->flags & LC_SPDY_FLAG_FIN) &&
              (h == NULL || (h->value_len >= 3 && memcmp(h->value, "200", 3) == 0));
    if (!ok) {
        end_as_reset(s, f->stream_id, LC_SPDY_REFUSED_STREAM, a);
        return;
    }
    pthread_mutex_lock(&s->mu);
    lc_stream *st = lc__map_get(&s->streams, f->stream_id);
    if (st != NULL) {
        stream_ref(st); /* (its free must not run under mu) */
        lc__reply_came_locked(s, st);
        lc__stream_maybe_done_locked(s, st); /* (a one-way byte stream waited for it) */
    }
    pthread_mutex_unlock(&s->mu);
    if (st != NULL)
        lc__stream_unref(st);
}

/* The peer's GOAWAY: no new top-level channels from us; and the streams we
 * opened past its last-good id it never took (it stopped reading new ones):
 * they end as refused, where their Senders went on returning 0 into a peer
 * that dropped everything (a review helper: for ever toward Go). */
static void on_goaway(lc_session *s, const lc_spdy_frame *f, rd_actions *a)
{
    pthread_mutex_lock(&s->wmu);
    pthread_mutex_lock(&s->mu);
    s->goaway_recv = true; /* (lc_session_sender reads it under wmu) */
    /* A peer of ours (NO_REPLIES) takes sub-streams until it hangs up
     * (3.2): its last-good applies to top-level channels only (all of ours
     * past it were reset, and reported lost, though it took them, a review
     * helper). spdystream takes nothing after its GOAWAY. */
    bool top_only = quiet_peer(s);
    s->goaway_last = f->stream_id;
    s->goaway_top_only = top_only;
    if ((top_only ? s->max_top_data_id : s->max_data_id) > f->stream_id)
        s->sent_refused = true; /* (also a stream that left the table: its DATA was dropped) */
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < s->streams.cap; i++) {
        lc_stream *st = s->streams.slots[i].val;
        if (st == NULL || st == LC_MAP_TOMB || !st->ours || st->id <= f->stream_id || (top_only && !st->top))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            uint32_t *ni = realloc(ids, nc * sizeof *ni);
            if (ni == NULL)
                break; /* (those not refused go on until the carrier ends, as before) */
            ids = ni;
            cap = nc;
        }
        ids[n++] = st->id;
    }
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->wmu);
    for (size_t i = 0; i < n; i++)
        end_as_reset(s, ids[i], LC_SPDY_REFUSED_STREAM, a);
    free(ids);
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
    lc__reply_came_locked(s, st);
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
    lc_msg *held = lc__pump_take_locked(st);
    lc__stream_maybe_done_locked(s, st);
    pthread_mutex_unlock(&s->mu);
    if (held)
        lc__pump_resume(st, held); /* its send fails now: the pump ends */
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
        lc__bytes_close(st);
    }
    lc__stream_unref(st);
}

/* FD_READY, and FD_ASK with it unless we asked already: a session that
 * passes fds one way soon passes them back (a reply's streams), and the
 * peer's FD_READY then comes ahead of its fds, so that our asking never
 * waits on a read paused by unclaimed fds. wmu held (lc__send_control). */
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
            if ((e.value & LC_FEATURE_FD_CHARGE) && (e.value & LC_FEATURE_WINDOWS))
                atomic_store(&s->peer_fd_charge, true);
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
        lc__kl_init(&ended);
        pthread_mutex_lock(&s->mu);
        for (size_t i = 0; i < s->streams.cap; i++) {
            lc_stream *st = s->streams.slots[i].val;
            if (st == NULL || st == LC_MAP_TOMB)
                continue;
            lc__reply_came_locked(s, st);
            /* (a one-way byte stream ended before waited for that reply
             * only: a review helper saw 50 stay for the session's life) */
            bool may_end = st->kind == ST_SEND || st->kind == ST_PUMP_RECEIVER || (st->kind == ST_BYTES && st->no_inbound);
            if (may_end && st->local_fin && lc__kl_add(&ended, st))
                lc__stream_maybe_done_locked(s, st);
        }
        pthread_mutex_unlock(&s->mu);
        for (size_t i = 0; i < ended.n; i++)
            lc__stream_unref(ended.st[i]);
        lc__kl_free(&ended);
    }
    if (asked && !s->peer_asked) {
        /* From the next read on, fds that come with the bytes are taken;
         * the peer passes none before it reads our FD_READY, which leaves
         * after this (we are the reader: no read is in progress). */
        s->peer_asked = true;
        atomic_store(&s->read_fds, true);
        lc__send_control(s, ctl_fd_ready, NULL);
    }
    if (ready && atomic_load(&s->peer_fdpass))
        atomic_store(&s->peer_reads_fds, true);
    if (window_set || (ready && atomic_load(&s->peer_reads_fds))) {
        atomic_store(&s->senders_blocked, true);
        lc__wake_blocked_senders(s);
    }
}

static void on_window_update(lc_session *s, const lc_spdy_frame *f, rd_actions *a)
{
    pthread_mutex_lock(&s->wmu);
    pthread_mutex_lock(&s->mu);
    lc_stream *st = lc__map_get(&s->streams, f->stream_id);
    lc_chan *chan = NULL;
    lc_watch *fdw = NULL;
    lc_msg *held = NULL;
    int64_t window = st != NULL ? send_window(s, st) : 0; /* (INT64_MAX: no windows) */
    if (st != NULL && window <= 0x7fffffff && window + (int64_t)f->value > 0x7fffffff) {
        /* SPDY/3: a window past 2^31 - 1 is a stream error, FLOW_CONTROL_ERROR
         * (it was taken: 4295032830 bytes, a review helper). The stream ends
         * as if the peer had reset it. */
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&s->wmu);
        ctl_arg rst = { f->stream_id, LC_SPDY_FLOW_CONTROL_ERROR };
        lc__send_control(s, lc__ctl_rst, &rst);
        end_as_reset(s, f->stream_id, LC_SPDY_FLOW_CONTROL_ERROR, a);
        return;
    }
    if (st != NULL) {
        st->granted += f->value;
        chan = st->chan;
        if (chan)
            lc__chan_retain(chan);
        if (st->kind == ST_BYTES && st->out_open)
            fdw = st->fdw;
        if (fdw)
            lc__engine_arm(fdw, EPOLLIN); /* its reads stopped on a spent window */
        held = lc__pump_take_locked(st);
    }
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->wmu);
    if (chan) {
        lc__chan_wake_senders(chan);
        lc__chan_release(chan);
    }
    if (held)
        lc__pump_resume(st, held); /* its own reference keeps st */
}

static void handle_frame(lc_session *s, const lc_spdy_frame *f, rd_actions *a)
{
    if (s->opt.trace)
        lc__trace_frame(s, "<<", f);
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
            if (!atomic_load(&s->peer_fdpass)) {
                /* fds that came before this frame from a peer that does
                 * not pass any (no 0x2): never a message's; a message naming
                 * one is refused (resolve_one_locked). They were numbered and
                 * could be claimed (a review helper). */
                pthread_mutex_lock(&s->mu);
                lc__close_unclaimed_fds_locked(s);
                pthread_mutex_unlock(&s->mu);
            }
        }
        /* (seq_cst: a sender that saw peer_known unset and set first_wait
         * is seen below; wait_first_frame) */
        atomic_store(&s->peer_known, true);
        /* whatever waited for the initial window goes on without one, and a
         * message with byte streams that waited for this frame goes on,
         * with fds if the peer offers them (send.c, wait_first_frame) */
        if (!atomic_load(&s->peer_fc) || atomic_load(&s->first_wait) == FIRST_WAITING) {
            atomic_store(&s->senders_blocked, true);
            lc__wake_blocked_senders(s);
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
            lc__send_control(s, lc__ctl_ping, &p);
        }
        break;
    case LC_SPDY_GOAWAY:
        on_goaway(s, f, a);
        break;
    case LC_SPDY_SETTINGS:
        on_settings(s, f);
        break;
    case LC_SPDY_WINDOW_UPDATE:
        on_window_update(s, f, a);
        break;
    case LC_SPDY_SYN_REPLY:
        on_syn_reply(s, f, a);
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

/* Asks the engine for the next EPOLLIN, or while reading is paused for the
 * peer's hang-up only (below), unless the session is over (the watch
 * pointer is only valid under wmu).
 *
 * While reading is paused the carrier is still watched for the peer's
 * hang-up or a failure (EPOLLRDHUP, and EPOLLERR/EPOLLHUP that always come):
 * unwatched, a peer that went away was never seen, and every call blocked
 * on the session's other channels stayed blocked (a review helper). The
 * hang-up does not end the session at once: what the carrier still holds
 * came before it and is bounded now, so lc__carrier_cb notes it (peer_gone)
 * and reading goes on to the end, its messages kept for their channels. */
static void arm_read(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    pthread_mutex_lock(&s->mu);
    bool paused = s->paused;
    pthread_mutex_unlock(&s->mu);
    atomic_store_explicit(&s->lazy, false, memory_order_relaxed);
    if (s->watch != NULL)
        /* (resumed: the hang-up watch goes, else it stayed armed for
         * good, one more epoll_ctl after each callback) */
        lc__engine_arm_instead(s->watch, paused ? EPOLLRDHUP : EPOLLIN, paused ? 0 : EPOLLRDHUP);
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
 * reading (a sender out of window, lc_session_receiver, lc_session_close,
 * a receive polled with timeout 0 that found nothing) arms it at once
 * (lc__ensure_watched); a wait without reading that may outlast other
 * threads' reads (lc_recv that found another thread reading, a receive on
 * an unbuffered reply channel, lc_send out of window) also keeps it from
 * going lazy while it lasts (lc__session_waiting); and a channel waited on
 * without reading again and again (lc_select, a pollable fd of either end,
 * a callback receive) turns lazy re-arming off for the session
 * (lc__feeder_passive). What still depends on the backstop:
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
    lc__flush_locked(s); /* frames a drive left for the next write (flush_or_defer_locked) */
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
    lc__session_unref(s); /* the timer's reference */
}

/* Sets the backstop timer unless it is set. wmu held. */
bool lc__backstop_locked(lc_session *s)
{
    if (s->backstop_set)
        return true;
    if (s->dead || s->eng == NULL)
        return false;
    session_ref(s);
    if (lc__engine_timer_add(s->eng, lc__now_ns() + LAZY_REARM_NS, lazy_backstop, s, &s->backstop_id) != 0) {
        lc__session_unref(s);
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
    /* Nothing queued, nobody waiting on a flush: a flush would only look
     * (what a reader leaves when its message needs no answer of its own, on
     * every hop of a round trip) */
    if (s->out.len == 0 && s->flush_waiters == 0 && !atomic_load(&s->senders_blocked))
        return;
    if (s->out.len == 0 || s->out_urgent || !lc__backstop_locked(s))
        lc__flush_locked(s);
}

/* After a drive that left the carrier drained: stay disarmed, with a
 * backstop. now: the drive's latest reading of the clock (the backstop's
 * 4 ms do not need a fresh one). False when that cannot be (then the caller
 * arms). wmu held. */
static bool go_lazy_locked(lc_session *s, int64_t now)
{
    /* (passive_waiters under wmu: lc__session_waiting counts, then looks
     * at lazy under it, so one of the two sees the other) */
    if (atomic_load(&s->no_lazy) || atomic_load(&s->passive_waiters) > 0)
        return false;
    atomic_store(&s->last_drive_ns, now);
    bool ok = s->watch != NULL && lc__backstop_locked(s);
    if (ok)
        atomic_store_explicit(&s->lazy, true, memory_order_relaxed);
    return ok;
}

/* Someone waits for what only reading brings, without reading itself. */
void lc__ensure_watched(lc_session *s)
{
    pthread_mutex_lock(&s->wmu);
    bool lazy = atomic_load_explicit(&s->lazy, memory_order_relaxed);
    pthread_mutex_unlock(&s->wmu);
    if (lazy)
        arm_read(s);
}

/*
 * A wait without reading that does not recur (lc__feeder_ops.waiting): +1
 * as it begins, -1 as it ends, 0 for a poll that found nothing. Arming once
 * as the wait began was not enough: a thread that read its own channel
 * meanwhile left the carrier unwatched again when it drained it, and the
 * waiter's message came at the backstop, 4 ms later (a blocked lc_recv
 * beside a reading thread, a receive on an unbuffered reply channel, a
 * sender out of window: test_recv_beside_a_reading_thread_is_woken_at_once
 * and the tests after it). So go_lazy_locked stays off while one lasts.
 * The round trips that lazy re-arming is for never get here: their
 * threads read the carrier themselves.
 */
void lc__session_waiting(lc_session *s, int delta)
{
    if (delta != 0)
        atomic_fetch_add(&s->passive_waiters, delta);
    if (delta >= 0)
        lc__ensure_watched(s);
}

static void feeder_waiting(void *ctx, int delta)
{
    lc__session_waiting(ctx, delta);
}

/*
 * Passed fds received and not yet claimed by a message (PROTOCOL.md 7) are
 * open fds of this process: past MAX_UNCLAIMED_FDS we stop reading until
 * messages have claimed half of them. Without it a peer could fill the
 * process's fd table (test_unclaimed_fd_flood_is_bounded: 4096 fds riding on
 * PINGs, all kept). A message names at most 64 passed fds, and our senders
 * send them with the write that begins with their message (lc__flush_locked),
 * at most one batch ahead of its bytes: the fds of messages not read yet
 * never reach half of the limit, so reading resumes once the application
 * takes its messages.
 */
#define MAX_UNCLAIMED_FDS 256

/*
 * Whether reading the carrier must pause (resuming: may stay paused, with
 * the lower marks that give hysteresis): too many received fds nobody has
 * claimed; toward a peer without windows also channels that hold more than
 * one stream_window undecoded for a full queue or a missing sub-stream
 * (half of it to resume), or a byte stream more than BYTES_BUF behind. One
 * rule for pausing and resuming: a resume that looked at less than the
 * pause undid it (a byte stream's). mu held.
 */
static bool reading_blocked_locked(lc_session *s, bool resuming)
{
    if (atomic_load(&s->peer_gone))
        return false; /* nothing more can come than the carrier holds */
    if (s->in_fds.len > (resuming ? MAX_UNCLAIMED_FDS / 2 : MAX_UNCLAIMED_FDS))
        return true;
    if (atomic_load_explicit(&s->peer_fc, memory_order_relaxed))
        return false; /* its windows stop it, per stream */
    return s->fds_over > 0 || lc__stalled_over_locked(s, resuming ? s->opt.stream_window / 2 : s->opt.stream_window);
}

/* Reads and dispatches until the carrier would block (then, for the engine,
 * asks for the next EPOLLIN) or reading must pause. Returns true when the
 * carrier would block (or `until`, the channel of a thread reading for
 * itself, has a message: then *ready is set), false when the session ended
 * or reading paused. The caller holds the reader token. */
static bool read_carrier(lc_session *s, bool engine, lc_chan *until, bool *drained, bool *ready_out)
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
                lc__protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR); /* more fds than allowed */
                return false;
            }
            if (nfds > 0) {
                pthread_mutex_lock(&s->mu);
                for (size_t i = 0; i < nfds; i++)
                    if (lc__map_put(&s->in_fds, s->fd_in_seq++, lc__fd_as_val(fds[i])) != 0)
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
            if (err == LC_ESESSION)
                lc__bind_all_before_end(s); /* what came is still delivered */
            lc__session_fail(s, err);
            return false;
        }
        bool full_read = (size_t)n == s->rbuf_cap;
        bool answerable = false; /* DATA or SYN_STREAM: something the application may answer */
        rd_actions a; /* not "= {...}": that zeroed the inline list on every read */
        a.announce = NULL;
        lc__kl_init(&a.deliver);
        size_t off = 0;
        while (off < (size_t)n && !s->dead) {
            lc_spdy_frame f;
            size_t used = 0;
            int rc = lc__spdy_decode(&s->dec, buf + off, (size_t)n - off, &used, &f);
            off += used;
            if (rc < 0) {
                run_actions(s, &a);
                lc__protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
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
        if (!ready && lc__flush_now(s)) {
            /* replies, FINs and window updates of this batch went out; a peer
             * that reads none of them is ended */
            lc__protocol_error(s, LC_SPDY_GOAWAY_PROTOCOL_ERROR);
            return false;
        }
        /* (else the drive about to return decides: flush_or_defer_locked) */
        /* backpressure toward a peer without windows: once the channels
         * whose local queue is full hold more than one stream_window of
         * bytes not yet decoded, stop reading until they hold half of it.
         * Stopping as soon as one queue was full stalled every other
         * channel at once (test_full_queue_stalls_others_only_past_a_window).
         * Toward a peer with windows its own window stops it, per stream. */
        bool fc = atomic_load_explicit(&s->peer_fc, memory_order_relaxed);
        /* (unclaimed fds only grow here: below the limit when last looked
         * at, they still are) */
        if (!fc || s->in_fds_high) {
            pthread_mutex_lock(&s->mu);
            s->in_fds_high = s->in_fds.len > MAX_UNCLAIMED_FDS;
            bool full = reading_blocked_locked(s, false);
            if (full) {
                s->paused = true;
                lc__close_progress_locked(s);
            }
            pthread_mutex_unlock(&s->mu);
        }
        /* Paused, here or by a byte stream whose fd buffer passed BYTES_BUF
         * toward a peer without windows (lc__bytes_inbound_locked, during this
         * batch): stop here. This loop went on to EAGAIN in the latter case,
         * which a peer writing as fast as we read never gives: 64 MiB
         * buffered for an fd nobody read
         * (test_byte_stream_without_windows_pauses_reading). */
        if (atomic_load_explicit(&s->paused, memory_order_relaxed)) {
            arm_read(s); /* (paused: for the peer's hang-up only) */
            return false;
        }
        /* a thread reading for its own channel returns as soon as that has
         * something: the read that would only say EAGAIN is a syscall on
         * the round trip's path (whatever is left, the engine reads) */
        if (ready) {
            if (drained)
                *drained = !full_read; /* a short read took all there was */
            if (ready_out)
                *ready_out = true;
            return true;
        }
    }
}

void lc__resume_reading(lc_session *s)
{
    /* Callers changed what paused depends on under mu just before, after
     * whoever paused let go of mu: not paused here is not paused. (One lock
     * round less on every delivery.) */
    if (!atomic_load(&s->paused))
        return;
    pthread_mutex_lock(&s->mu);
    bool was = s->paused;
    bool still = was && reading_blocked_locked(s, true);
    if (was && !still)
        s->paused = false;
    pthread_mutex_unlock(&s->mu);
    if (was && !still)
        arm_read(s);
}

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

/*
 * lc_session_close's wait for the peer's hang-up while reading is paused
 * (what came waits for the application; the session ends right after
 * anyway): reads what the carrier holds and drops it, until the peer hangs
 * up (or fails) or deadline (ns, -1: none). Closing with those bytes unread
 * would make the kernel reset the connection, and the peer could lose what
 * we wrote last (our GOAWAY, our last messages); waiting without reading
 * never saw the hang-up, and without a timeout never ended
 * (test_close_while_paused_does_not_wait_for_ever). Another thread
 * reading: it sees the hang-up, nothing to do here.
 */
void lc__drain_until_hangup(lc_session *s, int64_t deadline)
{
    /* counted in in_cb (as drive): lc_session_free closes the carrier only
     * once no one reads it */
    atomic_fetch_add(&s->in_cb, 1);
    if (atomic_load(&s->dead) || s->conn == NULL || !reader_take(s)) {
        atomic_fetch_sub(&s->in_cb, 1);
        return;
    }
    int fd = lc__conn_fd(s->conn);
    for (;;) {
        struct iovec iov = { s->rbuf, s->rbuf_cap };
        ssize_t n = lc__conn_readv(s->conn, &iov, 1);
        if (n == 0 || (n < 0 && n != -EAGAIN && n != -EINTR))
            break; /* hung up (or gone) */
        if (n > 0 || n == -EINTR)
            continue;
        int64_t now = lc__now_ns();
        if (atomic_load(&s->dead) || (deadline >= 0 && now >= deadline))
            break;
        /* (10 ms at a time: lc_session_free waits for us) */
        int64_t ms = deadline < 0 ? 10 : (deadline - now + 999999) / 1000000;
        struct pollfd pf = { fd, POLLIN, 0 };
        poll(&pf, 1, ms > 10 ? 10 : (int)ms);
    }
    atomic_store(&s->reader, 0);
    atomic_fetch_sub(&s->in_cb, 1);
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
    lc__tls_reading = s;
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
        bool ready = false; /* (read_carrier looked already when its read gave c a message) */
        if (!read_carrier(s, false, c, &drained, &ready))
            break; /* ended, or paused */
        if (ready || lc__chan_recv_ready(c))
            break;
        int64_t fin_due = atomic_load_explicit(&s->fin_due, memory_order_relaxed);
        if (fin_due != 0 && lc__now_ns() >= fin_due)
            lc__fin_settled(s); /* the reply it ends has been read by now */
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
        lc__flush_now(s); /* (before sleeping: whatever another thread left queued) */
        lc__fin_settled(s);
        poll(&pfd, 1, (int)(left_ms > 100 ? 100 : left_ms));
        slept = true;
    }
    lc__tls_reading = NULL;
    bool got = lc__chan_recv_ready(c);
    if (got)
        lc__tls_served = s;
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
        lc__flush_locked(s);
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
    lc__session_unref(ctx);
}

/* One of our channels is waited on without reading the carrier: from now on
 * the engine always watches it (no lazy re-arming for this session). */
void lc__feeder_passive(void *ctx)
{
    lc_session *s = ctx;
    atomic_store(&s->no_lazy, true);
    lc__ensure_watched(s);
}

const lc__feeder_ops lc__session_feeder_ops = { feeder_retain, feeder_release, drive, lc__feeder_passive,
                                                 feeder_waiting };

void lc__carrier_cb(void *ctx, uint32_t ev)
{
    lc_session *s = ctx;
    session_ref(s); /* the session may be freed by another thread meanwhile */
    atomic_fetch_add_explicit(&s->in_cb, 1, memory_order_acq_rel);
    if (ev & EPOLLOUT)
        lc__output_ready(s);
    if ((ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && atomic_load(&s->paused) && !atomic_load(&s->peer_gone)) {
        /* (the hang-up watch of arm_read) */
        pthread_mutex_lock(&s->mu);
        atomic_store(&s->peer_gone, true);
        s->paused = false;
        pthread_mutex_unlock(&s->mu);
        ev |= EPOLLIN;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (reader_take(s)) {
            lc__tls_reading = s;
            read_carrier(s, true, NULL, NULL, NULL);
            lc__tls_reading = NULL;
            lc__flush_now(s);
            lc__fin_settled(s); /* the engine read instead of the closing thread */
            atomic_store(&s->reader, 0);
        }
    }
    atomic_fetch_sub_explicit(&s->in_cb, 1, memory_order_acq_rel);
    lc__session_unref(s);
}

/* Fails messages whose references never arrived (PROTOCOL.md section 3). */
void lc__ref_timer(void *ctx)
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
            lc__waiting_refs_set_locked(s, st, false);
            st->reset = true;
            /* its undelivered messages go with it (closing their fds, also
             * the passed ones they name), and what it still gets is
             * skimmed for passed fds */
            lc_msg *taken = lc__pending_take_all_locked(st);
            while (taken != NULL) {
                lc_msg *m = taken;
                taken = m->next;
                m->next = dropped;
                dropped = m;
            }
            lc__skim_start_locked(s, st, NULL, 0, st->remote_fin);
            lc__stream_maybe_done_locked(s, st); /* an ended channel stayed for this (may free st) */
        } else {
            any_waiting = true;
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < nf; i++) {
        lc__close_error(fail[i], LC_EPROTO);
        lc_sender_release(fail[i]);
    }
    lc__drop_chain(s, dropped);
    if (nf > 0)
        lc__resume_reading(s); /* nothing waits on those streams any more */
    (void)any_waiting;
    /* periodic while the session lives (cheap: a few per second), so a wait
     * that starts later is always watched; the timer holds a reference */
    pthread_mutex_lock(&s->mu);
    bool again = !atomic_load(&s->dead) &&
                 lc__engine_timer_add(s->eng, lc__now_ns() + lc__ms_to_ns(s->opt.ref_timeout_ms) / 4, lc__ref_timer,
                                      s, &s->ref_timer) == 0;
    pthread_mutex_unlock(&s->mu);
    if (!again)
        lc__session_unref(s);
}


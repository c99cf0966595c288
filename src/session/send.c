/*
 * send.c - sending on a session (src/session): network Senders, encoding
 * a message whose attachments open sub-streams, and pumping a local
 * Receiver onto a sub-stream.
 */
#include "session_internal.h"

#include <stdlib.h>
#include <string.h>

/* The largest DATA frame consecutive messages of one channel are merged
 * into (each message still starts its own frame beyond it). */
#define DATA_MERGE_MAX 16384

/* ---- network Senders ----------------------------------------------------- */

static int net_try_send(void *ctx, lc_msg *m);
static int net_try_send_last(void *ctx, lc_msg *m);
static bool net_writable(void *ctx);
static void net_close(void *ctx);
static void net_release(void *ctx);
static void net_passive(void *ctx);
static void net_waiting(void *ctx, int delta);
static const lc__net_ops net_ops = { net_try_send,      net_writable, net_close, net_release,
                                     net_try_send_last, net_passive,  net_waiting };

/* A Sender writing on stream st (which must be ST_SEND, registered).
 * mu_held says whether the caller holds s->mu (st->chan is read under it). */
lc_sender *lc__make_net_sender(lc_stream *st, bool mu_held)
{
    stream_ref(st); /* the sender's reference */
    lc_chan *chan;
    lc_sender *snd = lc__net_sender_new(&net_ops, st, &chan);
    if (snd == NULL) {
        lc__stream_unref(st);
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
    lc_watch *w; /* a byte stream's fd, registered disarmed (lc__bytes_watch) */
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
    if (e->pass_fds && lc_value_type(v) == LC_STREAM) {
        /* One fd twice in a message is the caller's error, refused as the
         * sub-stream path refuses it (the engine's EEXIST): passed twice,
         * it went out twice and was closed twice, the second close hitting
         * whatever fd took the number meanwhile; passed and then again past
         * the 64 passed ones, as a sub-stream, the queue closed it after
         * the write and the sub-stream pumped and closed the number (review
         * helpers) */
        for (size_t i = 0; i < e->npassed; i++)
            if (e->passed[i]->u.fd == v->u.fd)
                return LC_EINVAL;
        if (e->npassed < LC_TRANSPORT_MAX_FDS) {
            /* ours: the real fd goes with SCM_RIGHTS, numbered in sending order */
            e->passed[e->npassed++] = v;
            *ext = lc__codec_ext_for(v);
            *ref = LC_REF_PASSED_FD | e->s->fd_out_seq++;
            return 0;
        }
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
    lc_stream *st = lc__stream_new(e->s, kind);
    if (st == NULL)
        return LC_ENOMEM;
    lc_watch *w = NULL;
    if (kind == ST_BYTES) {
        /* An fd the session cannot pump (a directory: the engine refuses it) fails
         * the send now, the message left to the caller: after its SYN_STREAM
         * it could only be reset, lc_send returned 0, and the peer got a
         * stream cut before its first byte (a review helper, over TCP). */
        int rc = lc__bytes_watch(st, v->u.fd, &w);
        if (rc != 0) {
            lc__stream_unref(st);
            return rc;
        }
    }
    st->ours = true;
    st->ref = atomic_fetch_add_explicit(&e->s->next_ref, 1, memory_order_relaxed);
    e->opens[e->n++] = (open_rec){ v, st, w };
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
uint8_t *lc__pump_buf(void)
{
    thread_bufs *t = thread_bufs_get();
    if (t != NULL && t->pump == NULL)
        t->pump = malloc(PUMP_READ);
    return t != NULL ? t->pump : NULL;
}

static void start_pump(lc_stream *st);

/* Whether n more streams of ours still get an id: SPDY/3 ids are 31 bits
 * and never reused, so a side opens at most 2^30 streams per session. wmu held. */
static bool ids_left_locked(const lc_session *s, size_t n)
{
    return n == 0 || (uint64_t)s->next_id + 2 * ((uint64_t)n - 1) <= LC_SPDY_MAX_STREAM_ID;
}

/* Registers a new stream of ours in the table; wmu and mu held. LC_ERANGE
 * once the session's stream ids are used up. */
int lc__register_ours_locked(lc_session *s, lc_stream *st)
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

/* Why no message can go on p now, window aside: LC_ESESSION (the session
 * ended, or lc_session_close closed sending: the application's messages at
 * its start, a pumped Receiver's once it has pumped what that held), LC_ECLOSED
 * (the stream ended or was reset), or 0. wmu held. */
static int send_refused_locked(const lc_session *s, const lc_stream *p)
{
    bool closed = p->kind == ST_PUMP_RECEIVER ? s->pump_sends_closed : s->sends_closed;
    return s->dead || closed ? LC_ESESSION : p->local_fin || p->reset ? LC_ECLOSED : 0;
}

/*
 * The first message that would pass fds asks the peer to read them
 * (FD_ASK, PROTOCOL.md 7) and waits, like a sender out of window, until
 * the peer's FD_READY says it reads the carrier with recvmsg: fds sent
 * before that could meet a plain recv(2), which closes them. One round trip
 * per session, the first time only. Returns 0 when the peer is ready (now),
 * LC__WOULD_BLOCK otherwise (lc__wake_blocked_senders resumes the sender).
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
        lc__flush_locked(s);
    }
    pthread_mutex_unlock(&s->wmu);
    atomic_store(&s->senders_blocked, true);
    /* FD_READY may have come between the caller's look and the flag above:
     * then its wake found no flag (both seq_cst: one of us sees the other) */
    if (atomic_load(&s->peer_reads_fds))
        return 0;
    return LC__WOULD_BLOCK; /* (the caller makes sure the carrier is read) */
}

/*
 * How long a message with byte streams waits for the peer's first frame on
 * a unix carrier. Ours write their SETTINGS as the session starts (the
 * accepting side as lc_accept takes the connection), and a Go peer answers
 * the SYN_STREAM of the channel (lc_session_sender writes it at once) with
 * SYN_REPLY: any frame ends the wait, so it lasts the peer's accept plus a
 * round trip, microseconds on an idle machine. A second is far past what a
 * loaded one adds to that, and what a peer that never speaks first can
 * cost: the wait happens once per session, after it such messages go at
 * once, with sub-streams, until the first frame is read.
 */
#define FIRST_FRAME_WAIT_NS 1000000000LL

/* The wait for the peer's first frame is over: its senders go on with
 * sub-streams (the timer's reference). */
static void first_frame_timer(void *ctx)
{
    lc_session *s = ctx;
    pthread_mutex_lock(&s->wmu);
    s->first_timer = 0;
    pthread_mutex_unlock(&s->wmu);
    atomic_store(&s->first_wait, FIRST_OVER);
    atomic_store(&s->senders_blocked, true);
    lc__wake_blocked_senders(s);
    lc__session_unref(s);
}

/*
 * A message with byte streams, before the peer's first frame was read on a
 * carrier where we offer fd passing: whether the fds can go as themselves
 * is not known yet. Sub-streams (what it got before) gave the receiver a
 * socketpair end where the promise is the sender's own fd: the usual dial,
 * then a request with its stdin and stdout, hit it whenever the send won
 * the race with the read of the peer's SETTINGS (a review helper: 50 of
 * 50 rounds between two processes; test_fd_sent_right_after_dial_is_passed).
 * So it waits, as a sender out of window, until that frame is read
 * (handle_frame wakes it), for FIRST_FRAME_WAIT_NS at most (then it goes
 * with sub-streams). Returns 0 to send now, LC__WOULD_BLOCK to wait (the
 * caller makes sure the carrier is read), or why the send fails.
 */
static int wait_first_frame(lc_session *s, lc_stream *p)
{
    pthread_mutex_lock(&s->wmu);
    int end = send_refused_locked(s, p); /* (as ask_for_fds: no wait for a sure failure) */
    if (end != 0) {
        pthread_mutex_unlock(&s->wmu);
        return end;
    }
    if (atomic_load(&s->first_wait) == FIRST_NONE) {
        session_ref(s); /* the timer's */
        if (lc__engine_timer_add(s->eng, lc__now_ns() + FIRST_FRAME_WAIT_NS, first_frame_timer, s,
                                 &s->first_timer) == 0) {
            atomic_store(&s->first_wait, FIRST_WAITING);
        } else {
            atomic_store(&s->first_wait, FIRST_OVER); /* no bound: no wait */
            lc__session_unref(s);
        }
    }
    pthread_mutex_unlock(&s->wmu);
    atomic_store(&s->senders_blocked, true);
    /* the first frame may have been read between the caller's look and the
     * flag: then its wake found no flag (seq_cst both: one of us sees the
     * other; handle_frame stores peer_known, then looks at first_wait) */
    if (atomic_load(&s->peer_known) || atomic_load(&s->first_wait) == FIRST_OVER)
        return 0;
    return LC__WOULD_BLOCK;
}

/* The streams of a message's attachments are started (or the message
 * failed): one fewer for lc_session_close to wait for. */
static void attach_started(lc_session *s)
{
    /* (a lock round only while a close waits: a fresh reply channel in
     * every request comes this way; a signal missed meanwhile, its 2 ms
     * backstop covers) */
    if (atomic_fetch_sub(&s->attach_starting, 1) == 1 && atomic_load(&s->close_waiting)) {
        pthread_mutex_lock(&s->mu);
        lc__close_progress_locked(s);
        pthread_mutex_unlock(&s->mu);
    }
}

/* A send that failed: the borrowed ends stay in the message, which stays
 * the caller's; their streams let go of them (and of the claims to feed
 * the Senders). No lock held. */
static void detach_attachments(lc_session *s, enc_ctx *e)
{
    for (size_t i = 0; i < e->n; i++) {
        lc_stream *st = e->opens[i].st;
        pthread_mutex_lock(&s->mu);
        if (st->feeding)
            lc__sender_release_feeder(st->into, s);
        st->feeding = false;
        st->into = NULL;
        st->source = NULL;
        pthread_mutex_unlock(&s->mu);
    }
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
    if (s->fdpass_local && !atomic_load(&s->peer_known) && atomic_load(&s->first_wait) != FIRST_OVER &&
        msg_has_streams(m)) {
        int waited = wait_first_frame(s, p);
        if (waited != 0)
            return waited; /* (nothing encoded yet: the message stays the caller's) */
    }
    e.pass_fds = atomic_load(&s->peer_fdpass) && msg_has_streams(m);
    if (e.pass_fds && !atomic_load(&s->peer_reads_fds)) {
        int asked = ask_for_fds(s, p);
        if (asked != 0)
            return asked; /* (nothing encoded yet: the message stays the caller's) */
    }
    if (e.pass_fds)
        pthread_mutex_lock(&s->wmu);
    /* A message kept as its bytes (wire form: codec/decode.c, a reply built
     * by lc_pack) goes out as they are, without a copy into b first */
    const uint8_t *body = m->body == NULL ? m->wire : NULL;
    size_t blen = body != NULL ? m->wire_len : 0;
    int rc = body != NULL ? 0 : lc__encode(m, b, &hooks);
    if (body == NULL) {
        body = b->data;
        blen = b->len;
    }
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
    if (!block_on_full && (output_full(s) || send_window(s, p) <= 0)) {
        /* woken by lc__wake_blocked_senders (output drained) or by the
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
            st->feeding = lc__sender_claim_feeder(st->into, &lc__session_feeder_ops, s, &passive);
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
        rc = lc__register_ours_locked(s, st);
        if (rc == 0)
            rc = lc__put_syn_stream(s, st->id, st->ref, p->ref);
    }
    /* From here until its attachments' streams are started, lc_session_close
     * cannot see them (a byte stream's fd is not watched yet): it waits for
     * this count. Without it, a stream sent while the close began could get
     * no byte out, and the peer a clean EOF (0 of 100000 bytes), both calls
     * returning 0 (test_close_waits_for_stream_sent_concurrently). */
    bool starting = false;
    if (e.n) {
        if (rc == 0) {
            atomic_fetch_add(&s->attach_starting, 1);
            starting = true;
        }
        pthread_mutex_unlock(&s->mu);
    }
    if (!fin && e.n == 0 && blen > 0 && s->tail_gen == s->out_gen && s->tail_end == s->out.len &&
        s->tail_id == p->id && s->tail_len + blen <= DATA_MERGE_MAX) {
        /* The frame just before is this channel's DATA, not written yet:
         * the message joins it (PROTOCOL.md: messages may share a frame;
         * the receiver decodes a byte stream). In a burst of small messages
         * this saves the 8-byte header and, on the receiving side, a frame's
         * dispatch per message. */
        rc = lc__buf_append(&s->out, body, blen);
        if (rc == 0) {
            s->tail_len += blen;
            s->tail_end = s->out.len;
            lc__spdy_data_header(s->out.data + s->tail_hdr, p->id, 0, (uint32_t)s->tail_len);
            lc__note_data_wmu_locked(s, p);
            p->sent += blen;
        }
    } else {
        for (size_t off = 0; rc == 0 && (off < blen || off == 0);) {
            size_t chunk = blen - off;
            if (chunk > LC_SPDY_MAX_LENGTH)
                chunk = LC_SPDY_MAX_LENGTH;
            size_t hdr = s->out.len;
            bool last = off + chunk == blen;
            rc = lc__spdy_put_data(&s->out, p->id, fin && last ? LC_SPDY_FLAG_FIN : 0, body + off, chunk);
            if (chunk > 0)
                lc__note_data_wmu_locked(s, p);
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
            if (blen == 0)
                break;
        }
    }
    if (rc != 0) {
        /* out of memory mid-frame: the output is no longer well formed.
         * The message stays the caller's, its channel ends too: they are
         * taken from the streams before the session's end fails what the
         * streams hold (it closed the caller's Senders and abandoned its
         * Receivers: a review helper, with the stream table's growth
         * failing under a message of 20 Receivers). */
        pthread_mutex_unlock(&s->wmu);
        detach_attachments(s, &e);
        lc__session_fail(s, rc);
        rc = LC_ESESSION;
        goto fail_registered;
    }
    /* passed fds: owned by the queue from here, closed once sent; each
     * costs fd_charge of the channel's window toward a peer that credits it */
    for (size_t i = 0; i < e.npassed; i++) {
        s->fdq_at[s->fdq_len] = msg_at;
        s->fdq[s->fdq_len++] = lc_value_take_fd(e.passed[i], NULL);
    }
    if (e.npassed > 0 && atomic_load(&s->peer_fd_charge))
        p->sent += e.npassed * fd_charge(s->peer_window);
    lc__send_flush_locked(s);
    pthread_mutex_unlock(&s->wmu);
    if (passive_seen)
        lc__feeder_passive(s); /* with no lock held: it may arm the engine */
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
            if (lc__bytes_start(st, fd, mode != LC_STREAM_WRITE, mode != LC_STREAM_READ, false, e.opens[i].w) == 0) {
                lc__bytes_kick(st); /* the peer's bytes or FIN may already be here */
            } else {
                /* (the session or the stream ended since the frames were
                 * queued): the peer must not wait for bytes forever */
                ctl_arg rst = { st->id, LC_SPDY_CANCEL };
                lc__send_control(s, lc__ctl_rst, &rst);
                pthread_mutex_lock(&s->mu);
                st->reset = true;
                lc__stream_maybe_done_locked(s, st);
                pthread_mutex_unlock(&s->mu);
            }
        }
        lc__stream_unref(st); /* our creation reference; the table keeps one */
    }
    if (starting)
        attach_started(s);
    if (e.opens != e.inl)
        free(e.opens);
    lc_msg_free(m);
    return 0;
fail_registered:
    if (starting)
        attach_started(s);
fail:
    detach_attachments(s, &e); /* the borrowed ends stay in the message, which stays the caller's */
    for (size_t i = 0; i < e.n; i++) {
        if (e.opens[i].w != NULL)
            lc__engine_del(e.opens[i].w); /* never armed: nothing ran */
        lc__stream_unref(e.opens[i].st);
    }
    if (e.opens != e.inl)
        free(e.opens);
    return rc;
}

static int net_send(lc_stream *st, lc_msg *m, bool fin)
{
    int rc = send_msg_on(st, m, false, fin);
    if (rc == LC__WOULD_BLOCK)
        lc__ensure_watched(st->s); /* the window opens by reading */
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

/* The window a sender waits for opens by reading (WINDOW_UPDATE): a
 * pollable fd or lc_select waits without reading, again and again, a
 * blocked lc_send once. */
static void net_passive(void *ctx)
{
    lc_stream *st = ctx;
    lc__feeder_passive(st->s);
}

static void net_waiting(void *ctx, int delta)
{
    lc_stream *st = ctx;
    lc__session_waiting(st->s, delta);
}

static bool net_writable(void *ctx)
{
    lc_stream *st = ctx;
    lc_session *s = st->s;
    pthread_mutex_lock(&s->wmu);
    /* (while FD_ASK waits for its answer, or a message with byte streams
     * for the peer's first frame, no sender of the session is writable: a
     * message with fds would only be refused again) */
    bool w = s->dead || st->local_fin || st->reset ||
             (!output_full(s) && send_window(s, st) > 0 &&
              !(s->fds_asked && !atomic_load(&s->peer_reads_fds)) &&
              !(atomic_load(&s->first_wait) == FIRST_WAITING && !atomic_load(&s->peer_known)));
    /* A sender re-checks here after queueing itself on the channel. The
     * drain that answered the try_send's senders_blocked may have run
     * between the two (its wake found nobody queued and cleared the flag)
     * and the output filled again since: say so again, or the next drain
     * wakes nobody and the sender sleeps to its timeout (CI, TSan:
     * test_direct_write_wakes_blocked_senders waited its 2 s; 10 runs of
     * 10 before this with that gap widened by 300 us in a scratch build,
     * none after). */
    if (!w && output_full(s))
        atomic_store_explicit(&s->senders_blocked, true, memory_order_release);
    pthread_mutex_unlock(&s->wmu);
    return w;
}

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
    return lc__tls_served == s && before == s->deferred_len && !s->out_urgent && !s->writing &&
           atomic_load_explicit(&s->reader, memory_order_relaxed) == 0 &&
           !atomic_load_explicit(&s->no_lazy, memory_order_relaxed) && s->watch != NULL && lc__backstop_locked(s);
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
                s->deferred_len = s->out.len; /* lc__flush_now leaves it */
                if (atomic_load_explicit(&s->fin_due, memory_order_relaxed) == 0)
                    atomic_store_explicit(&s->fin_due, lc__now_ns() + FIN_SETTLE_NS, memory_order_relaxed);
            } else {
                lc__flush_locked(s);
            }
        }
    }
    st->local_fin = true;
    pthread_mutex_lock(&s->mu);
    lc__stream_maybe_done_locked(s, st);
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
    lc__stream_unref(st);
}

/* ---- pumping a local Receiver onto a sub-stream --------------------------- */

static void pump_got(void *ctx, int result, lc_msg *m);

/* The pump ends: its source ended (result LC_EOF: FIN; an error such as a
 * lost upstream session: reset) or a send failed (END_SILENT: the session
 * is closing or over, or the peer reset the stream; a FIN would tell the
 * peer it had everything, though the message that failed, and those still
 * in the source, never went; END_RESET: the message could not be encoded). */
static void pump_finish(lc_stream *st, net_end_how how)
{
    lc_session *s = st->s;
    net_end(st, how);
    pthread_mutex_lock(&s->mu);
    lc_receiver *src = st->source;
    st->source = NULL;
    lc__close_progress_locked(s);
    pthread_mutex_unlock(&s->mu);
    lc_receiver_release(src);
    lc__stream_unref(st); /* the pump's reference */
}

/*
 * Sends m on the pump's stream like an application's send: while the output
 * is over its limit or the peer's window for this channel is spent, the
 * message is held and the pump stops taking from its source (whose own
 * capacity then pushes back on the local senders): memory stays bounded.
 * lc__wake_blocked_senders, WINDOW_UPDATE, RST and lc__session_fail resume it.
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
            /* Silent only when nothing can be said (the session is closing
             * or over) or needs saying (the stream ended or was reset). A
             * message that does not encode (LC_ETAKEN: its attachment was
             * taken out, which an in-memory lc_send accepts; LC_ERANGE,
             * LC_ENOMEM) resets the stream: silent, the peer's Receiver
             * waited for ever (a review helper). */
            pump_finish(st, rc == LC_ESESSION || rc == LC_ECLOSED ? END_SILENT : END_RESET);
            return false;
        }
        pthread_mutex_lock(&s->mu);
        st->pump_held = m;
        st->pump_blocked = true;
        pthread_mutex_unlock(&s->mu);
        /* the window opens by reading: as for a byte stream out of window
         * (bytes_pump), no lazy re-arming for this session from now on
         * (test_pump_out_of_window_resumes_at_once) */
        lc__feeder_passive(s);
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
    lc__stream_unref(st);
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
                lc__close_progress_locked(s);
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
lc_msg *lc__pump_take_locked(lc_stream *st)
{
    if (st->kind != ST_PUMP_RECEIVER || !st->pump_blocked)
        return NULL;
    st->pump_blocked = false;
    lc_msg *m = st->pump_held;
    st->pump_held = NULL;
    return m;
}

/* Resumes a stopped pump with its held message (no lock held). */
void lc__pump_resume(lc_stream *st, lc_msg *held)
{
    pump_enter(st);
    if (pump_send(st, held))
        pump_run(st);
    pump_leave(st);
}

/*
 * A pump's message that carries a Receiver starts that one's pump from
 * inside (send_msg_on): one level of recursion per link of a chain of
 * Receivers whose messages wait in them (each naming the next), a depth
 * the application, or the peer of a proxy forwarding such a chain, chooses
 * (a review helper: 16000 links overflowed the 8 MiB main stack). Past
 * PUMP_DEPTH_MAX levels on a thread, the pump waits in a list the
 * outermost start_pump of the thread runs once its own pump has returned.
 */
#define PUMP_DEPTH_MAX 16

static _Thread_local unsigned pump_depth;
static _Thread_local kick_list *pump_outer; /* (a kick list: a stream and a reference each) */

static void start_pump(lc_stream *st)
{
    stream_ref(st); /* the pump's reference, dropped by pump_finish */
    if (pump_depth >= PUMP_DEPTH_MAX && pump_outer != NULL && lc__kl_add(pump_outer, st))
        return; /* (out of memory: it runs here, deeper) */
    kick_list later;
    bool outermost = pump_outer == NULL;
    if (outermost) {
        lc__kl_init(&later);
        pump_outer = &later;
    }
    pump_depth++;
    pump_run(st);
    /* (later.n re-read each round: the pumps it runs may defer more) */
    for (size_t i = 0; outermost && i < later.n; i++) {
        pump_run(later.st[i]);
        lc__stream_unref(later.st[i]); /* the list's reference */
    }
    pump_depth--;
    if (outermost) {
        pump_outer = NULL;
        lc__kl_free(&later);
    }
}


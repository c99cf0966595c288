/*
 * receive.c - receiving on a session (src/session): resolving the
 * references a message names, skimming reset channels for passed fds, and
 * delivering decoded messages to their channels.
 */
#include "session_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <errno.h>
#include <unistd.h>

/* ---- receiving: resolving references ------------------------------------- */

void lc__kl_init(kick_list *k)
{
    k->st = k->inl;
    k->n = 0;
    k->cap = 16;
    k->passed = 0;
}

/* Adds st with a reference; false only when out of memory. */
bool lc__kl_add(kick_list *k, lc_stream *st)
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

void lc__kl_free(kick_list *k)
{
    if (k->st != k->inl)
        free(k->st);
    lc__kl_init(k);
}

/* ---- what messages that will not be delivered name ------------------------ */

void lc__skim_drop(struct lc_skim_slot *sl)
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
        close(lc__val_as_fd(slot));
    /* (not arrived: a peer naming fds it never passed; nothing to close) */
}

/*
 * A sub-stream of the peer's that a message never to be delivered names:
 * nothing will bind it. It leaves the tables and is reset (RST_STREAM
 * CANCEL, written by lc__rst_due_flush once mu is released). Left unbound
 * it stayed in the table for the session's life, and the peer's end of it
 * waited for ever: a Sender it gave us (an ack channel in a reply the
 * requester gave up on) never ended on its side (a review helper). mu held.
 */
static void skim_ref_found(void *ctx, uint64_t ref, uint8_t ext)
{
    (void)ext;
    lc_session *s = ctx;
    lc_stream *sub = lc__map_get(&s->peer_refs, ref);
    if (sub == NULL) {
        /* not arrived (never opened), named already, or ended unnamed:
         * that one is named now, and forgotten */
        if (lc__take_ended_locked(s, ref))
            lc__remember_claimed_locked(s, ref);
        return;
    }
    lc__map_del(&s->peer_refs, ref);
    lc__remember_claimed_locked(s, ref); /* a later naming fails at once */
    if (!sub->reset) {
        if (s->rst_due_n == s->rst_due_cap) {
            size_t nc = s->rst_due_cap ? 2 * s->rst_due_cap : 8;
            lc_stream **nv = realloc(s->rst_due, nc * sizeof *nv);
            if (nv != NULL) {
                s->rst_due = nv;
                s->rst_due_cap = nc;
            }
        }
        if (s->rst_due_n < s->rst_due_cap) { /* (else out of memory: no RST, as before) */
            stream_ref(sub);
            s->rst_due[s->rst_due_n++] = sub;
            atomic_store_explicit(&s->rst_due_any, true, memory_order_relaxed);
        }
    }
    sub->reset = true;
    lc__stream_maybe_done_locked(s, sub); /* (leaves the table: reset) */
}

/* Resets the sub-streams skim_ref_found gave up on. No lock held. */
void lc__rst_due_flush(lc_session *s)
{
    if (!atomic_load_explicit(&s->rst_due_any, memory_order_relaxed))
        return;
    pthread_mutex_lock(&s->mu);
    lc_stream **due = s->rst_due;
    size_t n = s->rst_due_n;
    s->rst_due = NULL;
    s->rst_due_n = s->rst_due_cap = 0;
    atomic_store_explicit(&s->rst_due_any, false, memory_order_relaxed);
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        ctl_arg ra = { due[i]->id, LC_SPDY_CANCEL };
        lc__send_control(s, lc__ctl_rst, &ra);
        lc__stream_unref(due[i]);
    }
    free(due);
}

/* The references a value names that no message will claim now: passed fds
 * closed, sub-streams reset (skim_ref_found). */
static void drop_refs_locked(lc_session *s, const lc_value *v, int depth)
{
    if (v == NULL || depth > 4096)
        return;
    if (v->type == LC__REF) {
        if ((v->u.ref & LC_REF_PASSED_FD) && v->mode >= 1 && v->mode <= 3)
            skim_found(s, v->u.ref & ~LC_REF_PASSED_FD);
        else if (!(v->u.ref & LC_REF_PASSED_FD) && v->mode >= 1 && v->mode <= 5)
            skim_ref_found(s, v->u.ref, v->mode);
    } else if (v->type == LC_ARRAY || v->type == LC_MAP) {
        uint32_t n = v->type == LC_MAP ? 2 * v->len : v->len;
        for (uint32_t i = 0; i < n; i++)
            drop_refs_locked(s, v->u.items[i], depth + 1);
    }
}

/*
 * Messages that will never be delivered (their channel was refused, reset,
 * or its references timed out) may name passed fds not yet claimed: those
 * are closed now. They stayed in in_fds until the session was freed, and
 * past MAX_UNCLAIMED_FDS of them reading paused for good (a review helper:
 * a requester that released its reply Receiver, a responder answering with
 * fds). The sub-streams they name are reset (skim_ref_found). Resolved ones
 * are the messages' own and go with lc_msg_free. mu held; the caller drops
 * the chain with lc__drop_chain.
 */
void lc__drop_refs_locked(lc_session *s, lc_msg *chain)
{
    for (lc_msg *m = chain; m != NULL; m = m->next) {
        if (!m->has_refs)
            continue;
        if (m->body != NULL) {
            for (uint32_t i = 0; i < m->body_att_len; i++)
                drop_refs_locked(s, m->body_att[i], 0);
        } else {
            drop_refs_locked(s, m->root, 0);
        }
    }
}

/* Frees a chain of dropped messages, and resets the sub-streams they named.
 * No lock held. */
void lc__drop_chain(lc_session *s, lc_msg *chain)
{
    lc__msg_chain_free(chain);
    lc__rst_due_flush(s);
}

/* DATA for a stream no longer in the table: skimmed if it is one that
 * lc__skim_start_locked took. mu held. */
void lc__skim_more_locked(lc_session *s, uint32_t id, const uint8_t *p, size_t n, bool fin)
{
    for (size_t i = 0; i < SKIMS_KEEP; i++) {
        struct lc_skim_slot *sl = &s->skims[i];
        if (sl->k == NULL || sl->id != id)
            continue;
        if (lc__skim_feed(sl->k, p, n, skim_found, s) != 0 || fin)
            lc__skim_drop(sl);
        return;
    }
}

/*
 * st is reset because its bytes did not decode (over max_message, say),
 * found as they arrive, as its messages are reached (lc__deliver_pending) or as
 * a sub-channel is named (bind_early_locked), or because the peer overran
 * its window. On a carrier that passes fds, the message it refused and
 * those behind it still brought their fds, which would wait in in_fds until
 * the session is freed and count toward MAX_UNCLAIMED_FDS. What the decoder
 * buffered from the refused message on is skimmed now, then extra (bytes
 * of the current frame the decoder did not take); DATA that still comes for
 * the stream (sent before the peer read our RST_STREAM) is skimmed as it
 * arrives (lc__skim_more_locked), until its FIN or until SKIMS_KEEP newer
 * resets take the slot. Messages decoded before the refused one claim their
 * own fds. mu held.
 */
void lc__skim_start_locked(lc_session *s, lc_stream *st, const uint8_t *extra, size_t extra_n, bool fin)
{
    if (st->kind != ST_RECV && st->kind != ST_FWD_TO_SENDER)
        return; /* not messages (an unbound sub-stream may be a byte stream) */
    if (st->skimmed) {
        /* skimmed since binding found its early bytes bad: go on */
        lc__skim_more_locked(s, st->id, extra, extra_n, fin);
        return;
    }
    st->skimmed = true;
    lc_skim *k = malloc(sizeof *k);
    if (k == NULL)
        return; /* the fds stay until the session is freed, as before */
    lc__skim_init(k);
    k->found_ref = skim_ref_found;
    size_t n = 0;
    const uint8_t *rest = st->sd_init ? lc__sd_rest(&st->sd, &n) : NULL;
    if ((n > 0 && lc__skim_feed(k, rest, n, skim_found, s) != 0) ||
        (extra_n > 0 && lc__skim_feed(k, extra, extra_n, skim_found, s) != 0) || fin) {
        lc__skim_free(k);
        free(k);
        return;
    }
    struct lc_skim_slot *sl = &s->skims[s->skim_next++ % SKIMS_KEEP];
    lc__skim_drop(sl);
    sl->id = st->id;
    sl->k = k;
}

/* A sub-stream just named by a message may already hold bytes (and its FIN):
 * decode them now, and have it delivered. mu held. */
static void bind_early_locked(lc_session *s, lc_stream *sub, kick_list *k)
{
    int rc = 0;
    if (sub->early.len > 0)
        rc = lc__feed_stream_locked(s, sub, sub->early.data, sub->early.len);
    else if (!sub->sd_init)
        rc = lc__feed_stream_locked(s, sub, NULL, 0);
    lc__early_drop_locked(s, sub);
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
        lc__skim_start_locked(s, sub, NULL, 0, sub->early_fin);
    }
    lc__kl_add(k, sub);
}

/*
 * Delivering a sub-stream's messages can bind further sub-streams, whose
 * delivery kick_streams runs in turn: one level of recursion per link of a
 * chain of Receivers (each one's message naming the next), a depth the peer
 * chooses (a review helper: a 1000-link chain overflowed a 256 KiB thread
 * stack, 20000 the 8 MiB main one). Past KICK_DEPTH_MAX levels on a thread,
 * the streams join the list the outermost kick_streams of the thread is
 * running, which delivers them once the levels above have returned; up to
 * there, a sub-stream's messages are in its queue before the message naming
 * it is handed over, as always.
 */
#define KICK_DEPTH_MAX 16

static _Thread_local unsigned kick_depth;
static _Thread_local kick_list *kick_outer;

/* Runs what binding queued: FINs, errors, deliveries (of streams of any
 * session). No lock held. */
static void kick_streams(kick_list *k)
{
    if (kick_depth >= KICK_DEPTH_MAX && kick_outer != NULL) {
        size_t moved = 0;
        while (moved < k->n && lc__kl_add(kick_outer, k->st[moved])) {
            lc__stream_unref(k->st[moved]); /* (the outer list's reference stays) */
            moved++;
        }
        /* (out of memory: the rest runs here, deeper) */
        memmove(k->st, k->st + moved, (k->n - moved) * sizeof *k->st);
        k->n -= moved;
    }
    bool outermost = kick_outer == NULL;
    if (outermost)
        kick_outer = k;
    kick_depth++;
    /* (k->n and k->st re-read each round: deeper levels may append) */
    for (size_t i = 0; i < k->n; i++) {
        lc_stream *st = k->st[i];
        lc_session *ss = st->s;
        pthread_mutex_lock(&ss->mu);
        bool fin = st->send_fin;
        st->send_fin = false;
        int bad = st->bad;
        st->bad = 0;
        pthread_mutex_unlock(&ss->mu);
        if (fin) {
            ctl_arg fa = { st->id, 0 };
            lc__send_control(ss, lc__ctl_fin, &fa);
        }
        if (st->kind == ST_BYTES)
            lc__bytes_kick(st);
        else if (bad)
            lc__close_error(st->into, LC_EPROTO);
        else
            lc__deliver_pending(st);
        lc__stream_unref(st);
    }
    kick_depth--;
    if (outermost)
        kick_outer = NULL;
    lc__kl_free(k);
}

/* Walks v for unresolved references; returns how many are still missing
 * (peer streams not arrived yet), or a negative error. Resolves the ones it
 * can, in place. mu held. */
static int resolve_refs_locked(lc_session *s, lc_msg *m, lc_value *v, int depth, kick_list *k);

/*
 * A ref whose sub-stream ended before this message named it (the peer reset
 * it, e.g. a byte stream it could not pump, or we refused it): v becomes an
 * end of its kind that shows what a reset does to a bound one, and the
 * message goes on. A Sender (ext 4): its channel has no receiver (lc_send
 * gives LC_ECLOSED); a Receiver (ext 5): closed with LC_ECLOSED; a byte
 * stream (ext 1-3): a socketpair end whose peer is closed (EOF, EPIPE).
 */
static int resolve_ended(lc_value *v)
{
    uint8_t ext = v->mode;
    if (ext == 4 || ext == 5) {
        lc_receiver *r;
        lc_sender *snd;
        int rc = lc_pipe(&r, &snd, 0);
        if (rc != 0)
            return rc;
        if (ext == 4) {
            lc_receiver_release(r);
            v->type = LC_SENDER;
            v->u.sender = snd;
        } else {
            lc__close_error(snd, LC_ECLOSED);
            lc_sender_release(snd);
            v->type = LC_RECEIVER;
            v->u.receiver = r;
        }
        v->mode = 0;
    } else if (ext >= 1 && ext <= 3) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            return -errno;
        close(sv[1]);
        v->type = LC_STREAM;
        v->mode = ext == 1 ? LC_STREAM_DUPLEX : ext == 2 ? LC_STREAM_WRITE : LC_STREAM_READ;
        v->u.fd = sv[0];
    } else {
        return LC_EPROTO;
    }
    v->flags &= (uint8_t)~LC_VF_TAKEN;
    return 0;
}

/* The channels lc__bind_all_before_end still has to walk (referenced, as in
 * a kick list). */
struct lc_bind_work {
    kick_list l;
    bool lost; /* out of memory once: the table is scanned again */
};

static void bind_work_push(struct lc_bind_work *w, lc_stream *st)
{
    if (!lc__kl_add(&w->l, st))
        w->lost = true;
}

/*
 * Binds the peer's sub-stream sub to the end v names (v: LC__REF, mode its
 * wire ext), which v becomes: a Sender, a Receiver or a byte stream's fd.
 * The sub-stream leaves peer_refs and is remembered as named. mu held.
 */
static int bind_sub_locked(lc_session *s, lc_stream *sub, lc_value *v, kick_list *k)
{
    if (sub->claimed)
        return LC_EPROTO; /* a sub-stream names one channel end, once */
    uint8_t ext = v->mode;
    if (ext == 4) {
        /* a Sender for us: we send on the peer's sub-stream */
        sub->kind = ST_SEND;
        sub->claimed = true;
        lc_sender *snd = lc__make_net_sender(sub, true);
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
        lc__receiver_set_feeder(r, &lc__session_feeder_ops, s);
        if (s->bind_work != NULL)
            bind_work_push(s->bind_work, sub); /* its own messages: a later turn */
        v->type = LC_RECEIVER;
        v->mode = 0;
        v->u.receiver = r;
    } else if (ext >= 1 && ext <= 3) {
        /* a byte stream: the application gets one end of a socketpair */
        int app_fd;
        int rc = lc__bytes_open_received(sub, ext, &app_fd);
        if (rc != 0)
            return rc;
        v->type = LC_STREAM;
        v->mode = ext == 1 ? LC_STREAM_DUPLEX : ext == 2 ? LC_STREAM_WRITE : LC_STREAM_READ;
        v->u.fd = app_fd;
    } else {
        return LC_EPROTO;
    }
    v->flags &= (uint8_t)~LC_VF_TAKEN;
    lc__map_del(&s->peer_refs, sub->ref);
    lc__remember_claimed_locked(s, sub->ref); /* a second naming fails at once */
    if (sub->kind == ST_RECV)
        bind_early_locked(s, sub, k); /* bytes that came before it was named */
    if (sub->kind == ST_BYTES && (sub->early.len > 0 || sub->early_fin)) {
        /* bytes (and maybe the end) that came before it was named; DATA
         * against its direction (ext 2: the holder writes, nobody drains
         * fd_out) is ignored, as later DATA would be: kept, it paused
         * reading for every channel toward a peer without windows (a
         * review helper) */
        if (sub->in_open)
            lc__buf_append(&sub->fd_out, sub->early.data, sub->early.len);
        lc__bytes_over_note_locked(s, sub);
        lc__early_drop_locked(s, sub);
        sub->in_fin = sub->early_fin;
        lc__kl_add(k, sub);
    }
    if (sub->kind == ST_SEND)
        lc__early_drop_locked(s, sub); /* DATA against its direction: ignored, as Go does */
    return 0;
}

/* An end bound at a clean end before the message naming it was decoded
 * (lc__bind_all_before_end): kept in late_refs until that message claims
 * it, or lc_session_free releases it. */
typedef struct late_end {
    uint8_t ext; /* the wire ext that named it: a later naming must agree */
    lc_value v;  /* the end (its type, mode and u) */
} late_end;

static int resolve_one_locked(lc_session *s, lc_msg *m, lc_value *v, kick_list *k)
{
    if ((v->u.ref & LC_REF_PASSED_FD) && v->mode >= 1 && v->mode <= 3) {
        /* ours: the fd came with SCM_RIGHTS; sequence numbers count arrivals */
        if (!atomic_load(&s->peer_fdpass))
            return LC_EPROTO; /* a peer that never said it passes fds (0x2) */
        void *slot = lc__map_del(&s->in_fds, v->u.ref & ~LC_REF_PASSED_FD);
        if (slot == NULL)
            return 1; /* not arrived yet (a bounded wait, as for streams) */
        uint8_t ext = v->mode;
        v->type = LC_STREAM;
        v->mode = ext == 1 ? LC_STREAM_DUPLEX : ext == 2 ? LC_STREAM_WRITE : LC_STREAM_READ;
        v->u.fd = lc__val_as_fd(slot);
        v->flags &= (uint8_t)~LC_VF_TAKEN;
        k->passed++;
        return lc__msg_track_attachment(m, v) != 0 ? LC_ENOMEM : 0;
    }
    if (s->late_refs.len > 0) {
        late_end *e = lc__map_get(&s->late_refs, v->u.ref);
        if (e != NULL) {
            if (e->ext != v->mode)
                return LC_EPROTO; /* named before as another kind of end */
            lc__map_del(&s->late_refs, v->u.ref);
            v->type = e->v.type;
            v->mode = e->v.mode;
            v->u = e->v.u;
            v->flags &= (uint8_t)~LC_VF_TAKEN;
            free(e);
            return lc__msg_track_attachment(m, v) != 0 ? LC_ENOMEM : 0;
        }
    }
    lc_stream *sub = lc__map_get(&s->peer_refs, v->u.ref);
    if (sub == NULL) {
        if (lc__was_claimed_locked(s, v->u.ref))
            return LC_EPROTO; /* named twice */
        if (!lc__take_ended_locked(s, v->u.ref))
            return 1; /* not arrived yet */
        lc__remember_claimed_locked(s, v->u.ref); /* a second naming fails at once */
        int rc = resolve_ended(v);
        return rc != 0 ? rc : lc__msg_track_attachment(m, v) != 0 ? LC_ENOMEM : 0;
    }
    int rc = bind_sub_locked(s, sub, v, k);
    if (rc != 0)
        return rc;
    return lc__msg_track_attachment(m, v) != 0 ? LC_ENOMEM : 0;
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

/* A passed fd a skimmed message names: nothing to do here (in_fds keeps it
 * until the message claims it, also after the session's end). */
static void late_fd_found(void *ctx, uint64_t n)
{
    (void)ctx;
    (void)n;
}

typedef struct late_ctx {
    lc_session *s;
    kick_list *k;
    size_t bytes; /* byte streams bound so far */
} late_ctx;

/* Byte streams bound this way, at most: each takes a socketpair (two fds)
 * until its message is received, and a peer's backlog could otherwise take
 * the process's fds (1024 by default) from its other work. The messages
 * past it are lost, as all were before. */
#define LATE_BYTES_MAX 128

/* A sub-stream a message still undecoded names at a clean end: bound now,
 * while it is in the tables, and kept for that message (late_refs). Refs of
 * no sub-stream here (never opened, or named already) are left to the
 * message's own resolution. mu held. */
static void late_ref_found(void *ctx, uint64_t ref, uint8_t ext)
{
    late_ctx *c = ctx;
    lc_session *s = c->s;
    if (ext < 1 || ext > 5 || lc__map_get(&s->late_refs, ref) != NULL ||
        (ext <= 3 && c->bytes >= LATE_BYTES_MAX))
        return;
    lc_stream *sub = lc__map_get(&s->peer_refs, ref);
    bool ended = sub == NULL && !lc__was_claimed_locked(s, ref) && lc__take_ended_locked(s, ref);
    if (sub == NULL && !ended)
        return;
    /* in the table first (its growth is what may fail): a bound end with
     * nowhere to go would have to be released, which mu forbids */
    late_end *e = calloc(1, sizeof *e);
    if (e == NULL || lc__map_put(&s->late_refs, ref, e) != 0) {
        free(e);
        if (ended)
            lc__remember_ended_locked(s, ref); /* its message resolves it, as before */
        return;
    }
    e->ext = ext;
    e->v.type = LC__REF;
    e->v.mode = ext;
    e->v.u.ref = ref;
    int rc;
    if (ended) {
        lc__remember_claimed_locked(s, ref);
        rc = resolve_ended(&e->v);
    } else {
        rc = bind_sub_locked(s, sub, &e->v, c->k);
    }
    if (rc != 0) {
        /* (no memory or fds: its message is lost at its turn, as before) */
        lc__map_del(&s->late_refs, ref);
        free(e);
        return;
    }
    c->bytes += ext <= 3;
}

/* One channel's turn: its messages that may still enter its queue are
 * decoded and resolved, the rest skimmed. mu held. */
static void bind_channel_locked(lc_session *s, lc_stream *st, late_ctx *lc)
{
    if (st->late_skimmed || st->reset || (st->kind != ST_RECV && st->kind != ST_FWD_TO_SENDER))
        return;
    st->late_skimmed = true; /* (once: nothing more arrives) */
    size_t want = lc__decode_ahead(s);
    size_t queued = st->kind == ST_RECV ? lc__sender_queued(st->into) : 0;
    if (st->kind == ST_RECV && queued < s->opt.recv_queue)
        want += s->opt.recv_queue - queued; /* room still in the queue */
    lc_msg *m;
    while (st->sd_init && st->npending < want && lc__sd_next(&st->sd, &m) == 0)
        lc__pending_append_locked(st, m);
    for (m = st->pending_head; m != NULL; m = m->next)
        if (m->has_refs && resolve_msg_locked(s, m, lc->k) < 0)
            break; /* (its delivery fails the channel, as it would have) */
    /* bytes that do not decode are where delivery will stop: not walked */
    if (!st->sd_init || st->sd.err != 0)
        return;
    size_t n;
    const uint8_t *rest = lc__sd_rest(&st->sd, &n);
    if (n == 0)
        return;
    lc_skim sk;
    lc__skim_init(&sk);
    sk.found_ref = late_ref_found;
    lc__skim_feed(&sk, rest, n, late_fd_found, lc);
    lc__skim_free(&sk);
}

static void bind_work_scan_locked(lc_session *s, struct lc_bind_work *w)
{
    for (size_t i = 0; i < s->streams.cap; i++) {
        lc_stream *st = s->streams.slots[i].val;
        if (st != NULL && st != LC_MAP_TOMB && !st->late_skimmed && !st->reset &&
            (st->kind == ST_RECV || st->kind == ST_FWD_TO_SENDER))
            bind_work_push(w, st);
    }
}

/*
 * The peer hung up cleanly, after its last frames: the messages that reached
 * us are still delivered (libchan.h), but the sub-streams their attachments
 * name leave the tables with the session, and a message resolved after that
 * was dropped with everything behind it (a review helper: recv_queue 1, 8
 * messages carrying a byte stream each, the peer closed gracefully: 2
 * arrived; another: a proxy got 13007 of 20000 replies when every 100th
 * carried a Receiver). So every reference is bound now, while it still can
 * be: those of the messages that can still enter a channel's queue, and of
 * those decoded ahead of it (min(32, recv_queue)), which are decoded; and
 * those of the messages behind them, still bytes, which are skimmed
 * (late_ref_found) and not decoded: decoding all that was buffered held ~50
 * bytes of values per byte, 194 MB for 3.5 MB (a review helper). A byte
 * stream gets its bytes and EOF (the end drains it), a Receiver its
 * messages and end. (Decoded up to there: a delivery in flight may have
 * left fewer decoded than that.)
 * A Receiver bound on the way has its own messages: it gets its turn too.
 * Lost are only messages behind bytes that do not decode, or whose
 * sub-stream never came (PROTOCOL.md 3.11). Called before
 * lc__session_fail; no lock held.
 */
void lc__bind_all_before_end(lc_session *s)
{
    kick_list k;
    lc__kl_init(&k);
    late_ctx lc = { s, &k, 0 };
    struct lc_bind_work w = { .lost = false };
    lc__kl_init(&w.l);
    size_t done = 0; /* entries of w walked (and their references kept until the end) */
    pthread_mutex_lock(&s->mu);
    if (!s->dead) {
        /* Each channel once, in a list: a Receiver bound on the way (by a
         * message, or by skimmed bytes) joins it. Passes over the whole
         * table until one bound nothing new took one pass per link of a
         * chain of Receivers (each one's message naming the next): minutes
         * under mu for 65536 (a review helper: 26.9 s for 20000). */
        s->bind_work = &w;
        bind_work_scan_locked(s, &w);
        for (;;) {
            for (; done < w.l.n && !s->dead; done++)
                bind_channel_locked(s, w.l.st[done], &lc);
            if (!w.lost || s->dead)
                break;
            w.lost = false; /* out of memory on the way: look again */
            size_t before = w.l.n;
            bind_work_scan_locked(s, &w);
            if (w.l.n == before)
                break;
        }
        s->bind_work = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < w.l.n; i++)
        lc__stream_unref(w.l.st[i]);
    lc__kl_free(&w.l);
    kick_streams(&k);
}

/* The ends bound for messages that never claimed them (lc_session_free:
 * those messages can no longer be delivered). No lock held. */
void lc__late_refs_release(lc_session *s)
{
    pthread_mutex_lock(&s->mu);
    lc_map late = s->late_refs;
    memset(&s->late_refs, 0, sizeof s->late_refs);
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < late.cap; i++) {
        late_end *e = late.slots[i].val;
        if (e == NULL || e == LC_MAP_TOMB)
            continue;
        if (e->v.type == LC_SENDER)
            lc_sender_release(e->v.u.sender);
        else if (e->v.type == LC_RECEIVER)
            lc_receiver_release(e->v.u.receiver);
        else if (e->v.type == LC_STREAM && e->v.u.fd >= 0)
            close(e->v.u.fd);
        free(e);
    }
    lc__map_free(&late);
}

/* ---- receiving: delivery ------------------------------------------------- */

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
        drop = lc__pending_take_all_locked(st);
        /* what it still gets is skimmed for passed fds */
        lc__skim_start_locked(s, st, NULL, 0, st->remote_fin);
        lc__stream_maybe_done_locked(s, st);
    }
    pthread_mutex_unlock(&s->mu);
    lc__drop_chain(s, drop);
    if (rst) {
        ctl_arg ra = { sid, LC_SPDY_CANCEL };
        lc__send_control(s, lc__ctl_rst, &ra);
    }
}

/* Sets st->waiting_refs, counting the streams that wait (retry_waiting_refs
 * walks the table only when some does). mu held. */
void lc__waiting_refs_set_locked(lc_session *s, lc_stream *st, bool waiting)
{
    if (st->waiting_refs != waiting)
        s->refs_waiters += waiting ? 1 : (size_t)-1;
    st->waiting_refs = waiting;
}

/*
 * Toward a peer without windows, whether the channels whose local queue is
 * full (push_op set), or whose next message waits for a sub-stream
 * (waiting_refs), hold more than limit bytes not yet decoded: the session
 * keeps reading the carrier for the other channels until they do. (A
 * waiting channel was not counted: a peer that never sent the sub-stream
 * could make it hold gigabytes until the ref timer,
 * test_waiting_channel_bytes_bounded.) mu held.
 */
bool lc__stalled_over_locked(const lc_session *s, size_t limit)
{
    size_t held = 0;
    for (size_t i = 0; (s->pushes_set > 0 || s->refs_waiters > 0) && i < s->streams.cap; i++) {
        lc_stream *st = s->streams.slots[i].val;
        if (st == NULL || st == LC_MAP_TOMB || (st->push_op == NULL && !st->waiting_refs) || !st->sd_init)
            continue;
        size_t n;
        lc__sd_rest(&st->sd, &n);
        held += n;
        if (held > limit)
            return true;
    }
    return false;
}

/*
 * Sets st->push_op, counting the streams whose is set: the check for a full
 * local queue (read_carrier, lc__resume_reading, toward a peer without windows)
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
    lc__deliver_pending(st);
    lc__stream_unref(st); /* the op's reference */
}

/* Decodes the next messages of st from the bytes its decoder holds. mu held.
 * False when they do not decode (or the channel's end is cut short). */
static bool decode_more_locked(lc_session *s, lc_stream *st)
{
    if (lc__sd_idle(&st->sd))
        return true; /* (the look after every delivered batch) */
    int rc = lc__feed_stream_locked(s, st, NULL, 0);
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
    lc__deliver_pending(st);
    lc__stream_unref(st); /* the watch's reference */
}

/*
 * The peer broke the protocol on st (bytes that do not decode, a message
 * naming a reference it cannot have): it is reset, nothing more of it is
 * decoded (what remains is skimmed for passed fds), its receiver gets what
 * was handed over before, then LC_EPROTO (at the next idle round, as a FIN),
 * and the peer a RST_STREAM PROTOCOL_ERROR. mu held on entry, released.
 */
static void fail_channel_unlock(lc_session *s, lc_stream *st)
{
    bool rst = !st->reset && !st->remote_fin;
    uint32_t sid = st->id;
    st->reset = true;
    lc__skim_start_locked(s, st, NULL, 0, st->remote_fin);
    if (st->into != NULL) {
        st->end_err = LC_EPROTO;
        st->remote_fin_pending = true;
    }
    lc__stream_maybe_done_locked(s, st);
    pthread_mutex_unlock(&s->mu);
    if (rst) {
        ctl_arg ra = { sid, LC_SPDY_PROTOCOL_ERROR };
        lc__send_control(s, lc__ctl_rst, &ra);
    }
    lc__rst_due_flush(s); /* sub-streams its skimmed bytes named */
}

/*
 * A Sender this side sent ended cleanly on the peer's side (its FIN: released
 * or closed there, one and the same on the wire), after every message that
 * came on it was handed over. The session's reference goes, as any holder's
 * would: the channel closes with its last reference (libchan.h), so a Sender
 * handed to two workers, or kept by the application, stays open while
 * another holds it; in the usual case, a reply Sender given away, the
 * session held the last one and the channel ends as before. Closing it
 * outright closed it for every holder (a review helper: the second worker's
 * messages were dropped, the requester's own lc_send got LC_ECLOSED). An
 * error (a reset, the session's end) still closes it with that error.
 */
static void fwd_release(lc_stream *st)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->mu);
    lc_sender *into = st->into;
    bool feeding = st->feeding;
    st->into = NULL;
    st->feeding = false;
    pthread_mutex_unlock(&s->mu);
    if (into != NULL && feeding)
        lc__sender_release_feeder(into, s);
    lc_sender_release(into);
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
    lc__stream_unref(st);
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
    /* What the channel holds undecoded may be under the limit now (this
     * round decoded more of it), and reading must resume then: only after a
     * round that delivered some, it stayed paused while rounds of 32 filled
     * the room a watch gives (the default queue) exactly, and another channel
     * waited for ever (test_paused_reading_resumes_at_half_window). */
    lc__resume_reading(s);
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
        lc__stream_unref(st);
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

void lc__deliver_pending(lc_stream *st)
{
    lc__deliver_pending_noted(st, false);
}

void lc__deliver_pending_noted(lc_stream *st, bool noted)
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
             * are reached) */
            fail_channel_unlock(s, st);
            continue;
        }
        lc_msg *m = st->pending_head;
        if (m == NULL || st->push_op != NULL) {
            /* idle: nothing listed and nothing being handed over */
            bool idle = m == NULL && st->push_op == NULL;
            bool close_now = idle && st->remote_fin_pending;
            if (close_now) {
                st->remote_fin_pending = false;
                lc__stream_maybe_done_locked(s, st); /* (our caller holds a reference) */
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
                lc__send_control(s, lc__ctl_window, &wa);
            }
            if (close_now && st->end_err)
                lc__close_error(st->into, st->end_err); /* after what decoded before */
            else if (close_now && st->kind == ST_FWD_TO_SENDER)
                fwd_release(st);
            else if (close_now)
                lc_close(st->into); /* end of channel after the last message */
            if (idle)
                lc__resume_reading(s);
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
            lc__stream_unref(st);
            continue;
        }
        kick_list k;
        lc__kl_init(&k);
        int missing = resolve_msg_locked(s, m, &k);
        if (k.passed > 0 && atomic_load(&s->peer_fd_charge))
            st->fed += k.passed * fd_charge(s->opt.stream_window); /* granted back when handed over */
        if (missing != 0 && (s->dead || (missing > 0 && st->reset))) {
            /* its sub-streams can no longer come (lc__session_fail emptied the
             * tables), or can no longer be waited for (the channel was reset,
             * e.g. its later bytes did not decode, and left the table the ref
             * timer walks: it ended as a clean EOF once released,
             * test_bad_bytes_behind_waiting_message_give_eproto): it and what
             * follows it are lost, and the channel ends now with its error */
            lc_msg *lost = lc__pending_take_all_locked(st);
            st->reset = true; /* decode nothing more */
            st->remote_fin_pending = false;
            lc__waiting_refs_set_locked(s, st, false);
            int end = st->end_err ? st->end_err : s->dead ? LC_ESESSION : LC_EPROTO;
            pthread_mutex_unlock(&s->mu);
            kick_streams(&k);
            lc__drop_chain(s, lost);
            lc__close_error(st->into, end);
            continue;
        }
        if (missing > 0) {
            if (!st->waiting_refs)
                st->waiting_since = lc__now_ns(); /* the bounded wait starts now */
            lc__waiting_refs_set_locked(s, st, true);
            pthread_mutex_unlock(&s->mu);
            kick_streams(&k);
            /* the missing SYN_STREAMs can only arrive by reading: a session
             * paused for backpressure must read again (found by fuzz_session) */
            lc__resume_reading(s);
            return; /* a SYN_STREAM or the ref timer calls us again */
        }
        if (st->waiting_refs) {
            lc__waiting_refs_set_locked(s, st, false);
            st->waiting_since = 0;
            lc__stream_maybe_done_locked(s, st); /* it may have ended meanwhile */
        }
        if (missing < 0) {
            /* A reference it cannot have (named twice, of the wrong kind):
             * as for bytes that do not decode, the channel ends with
             * LC_EPROTO after what came before, what follows is dropped and
             * nothing more decoded, and the peer gets a reset. It used to
             * take only this message off the list, with no reset: the next
             * ones went on into the closed channel, and one delivered by
             * another thread meanwhile could arrive before the error
             * (suspected by a review helper). */
            lc_msg *lost = lc__pending_take_all_locked(st);
            fail_channel_unlock(s, st);
            kick_streams(&k);
            lc__drop_chain(s, lost);
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
        kick_streams(&k); /* sub-streams first: their queues exist before m is seen */
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


/*
 * session_internal.h - the session's data (src/session). Never installed.
 */
#ifndef LC_SESSION_INTERNAL_H
#define LC_SESSION_INTERNAL_H

#include "libchan.h"
#include "codec/codec.h"
#include "core/chan_internal.h"
#include "engine/engine.h"
#include "msg/msg_internal.h"
#include "spdy/spdy.h"
#include "transport/transport.h"

#include <pthread.h>
#include <stdatomic.h>

/* uint64 -> pointer, open addressing (stream ids, peer references). */
#define LC_MAP_TOMB ((void *)1)
typedef struct lc_map {
    struct { uint64_t key; void *val; } *slots;
    size_t cap, len, used;
} lc_map;
void *lc__map_get(const lc_map *m, uint64_t key);
int lc__map_put(lc_map *m, uint64_t key, void *val);
void *lc__map_del(lc_map *m, uint64_t key);
void lc__map_free(lc_map *m);
/* A passed fd as a map value: fd + 2, so that neither NULL (absent) nor
 * LC_MAP_TOMB (1) can be a value (fd 0 arrives as a passed fd in a process
 * whose stdin is closed; as fd + 1 it was the tombstone: lost, and leaked). */
static inline void *lc__fd_as_val(int fd) { return (void *)(intptr_t)(fd + 2); }
static inline int lc__val_as_fd(void *v) { return (int)(intptr_t)v - 2; }

/* Waits in a row whose spin ran out after which a session's readers stop
 * spinning (drive, read.c). */
#define SPIN_MISSES_MAX 4

/* How many of the peer's refs already named a session remembers. */
#define CLAIMED_KEEP 1024

/* Streams (channels, sub-streams; the peer's and ours) a session holds open
 * at once; the peer's new ones past it are refused (PROTOCOL.md 2.5). */
#define MAX_OPEN_STREAMS 65536

/* The peer's sub-streams that ended before a message named them, that a
 * session remembers until one does (ended_refs; PROTOCOL.md 2.5). */
#define MAX_ENDED_REFS 65536

/* lc_session.first_wait: the wait of messages with byte streams for the
 * peer's first frame (send.c) */
enum { FIRST_NONE, FIRST_WAITING, FIRST_OVER };

/* How many reset channels a session skims for passed fds at once. */
#define SKIMS_KEEP 8

typedef enum st_kind {
    ST_UNBOUND,       /* a peer sub-stream no message has named yet */
    ST_SEND,          /* we write messages on it (a network Sender) */
    ST_RECV,          /* we decode messages into a local queue (a network Receiver) */
    ST_FWD_TO_SENDER, /* we decode messages and forward them into a local Sender */
    ST_PUMP_RECEIVER, /* we pump a local Receiver's messages onto it */
    ST_BYTES          /* a byte stream: DATA payloads are bytes, FIN is EOF */
} st_kind;

typedef struct lc_stream {
    _Atomic int refs;
    struct lc_session *s;
    uint32_t id;          /* SPDY stream id */
    uint64_t ref;         /* libchan-ref (the creating side's counter) */
    uint64_t parent_ref;
    st_kind kind;
    bool ours;            /* we opened it */
    bool top;             /* ours, a top-level channel (lc_session_sender) */
    bool in_table;        /* s->streams holds a reference */
    bool claimed;         /* a peer sub-stream already named by a message */
    bool no_inbound;      /* mu: a byte stream the peer never sends on (it only reads
                             what we pump): no FIN will come (PROTOCOL.md 5.3) */
    bool noted;           /* mu: listed for delivery in the current read batch */
    bool skimmed;         /* mu: its bytes went to a skimmer (skim_start_locked) */
    bool late_skimmed;    /* mu: its undecoded bytes were walked for refs at a clean end
                             (lc__bind_all_before_end) */
    bool feeding;         /* we are the feeder of into's channel (a reply channel) */
    _Atomic bool local_fin; /* written under wmu (senders) or mu (reader): atomic */
    bool remote_fin;
    _Atomic bool reset;
    bool send_fin;        /* a FIN to send once the lock is dropped */
    bool remote_fin_pending; /* close the local channel after delivering what is queued */
    int end_err;          /* ... with this error instead of end-of-channel (bad input) */
    bool peer_reset;      /* mu: ended by the peer's RST_STREAM: a message it cut is dropped, not an error */
    bool awaiting_reply;  /* mu: ours, and the peer's SYN_REPLY (or RST) has not come yet */
    bool early_fin;
    int bad;              /* decoding the early bytes failed with this */
    bool waiting_refs;    /* the head message names sub-streams not arrived yet */
    int64_t waiting_since;
    lc_chan *chan;        /* ST_SEND: the network Sender's channel (until released) */
    lc_sender *into;      /* ST_RECV / ST_FWD_TO_SENDER: where messages go (owned) */
    lc_receiver *source;  /* ST_PUMP_RECEIVER: what is pumped (owned; cleared under mu) */
    _Atomic int pump_active; /* the pump is moving messages (not parked on source) */
    lc_msg *pump_held;    /* mu: taken from source, waiting for output room or window */
    bool pump_blocked;    /* mu: the pump waits for wake_blocked_senders / WINDOW_UPDATE */
    bool sd_init;
    lc_stream_decoder sd;
    lc_msg *pending_head, *pending_tail; /* decoded, not yet delivered */
    size_t npending;
    lc_async *push_op;    /* non-NULL while a delivery waits for room */
    lc_msg *pushing;      /* the message that delivery is handing over */
    lc_buf early;         /* ST_UNBOUND: bytes that came before a message named it */
    /* ST_BYTES */
    int fd;               /* the local end (ours to close), -1 when none */
    bool fd_sock;         /* fd is a socket (MSG_NOSIGNAL works) */
    bool fd_pipe_grown;   /* fd is a pipe whose capacity we raised (pipe_grow) */
    lc_watch *fdw;
    bool out_open;        /* we read fd and send DATA */
    bool in_open;         /* we write DATA payloads to fd */
    bool in_broken;       /* a write to fd failed (its reader is gone): the
                             stream is cancelled once we no longer read fd */
    bool in_fin;          /* the peer's FIN came: EOF after fd_out drains */
    lc_buf fd_out;        /* inbound bytes for fd: those from fd_out_off on are
                             not written yet (fd_queued) */
    size_t fd_out_off;
    bool fd_over;         /* mu: counted in s->fds_over (lc__bytes_over_note_locked) */
    /* flow control (toward a peer that speaks SPDY windows) */
    uint64_t sent;        /* wmu: DATA payload bytes we sent on it */
    uint64_t granted;     /* wmu: WINDOW_UPDATE deltas the peer gave us */
    uint64_t fed;         /* mu: DATA payload bytes we received on it */
    uint64_t acked;       /* mu: of which granted back to the peer */
} lc_stream;

/* Top-level channels of ours that carried DATA, remembered for a 502 that
 * comes after they left the table (lc_session.top_data_ids). */
#define LC_TOP_DATA_KEEP 16

struct lc_session {
    _Atomic long refs;    /* the user handle + one per stream */
    lc_options opt;
    lc_conn *conn;
    bool is_client;
    lc_engine *eng;
    lc_watch *watch;
    lc_timer_id ref_timer;
    _Atomic int err;      /* first fatal error */
    _Atomic bool dead;
    _Atomic bool senders_blocked;
    _Atomic uint64_t next_ref;

    /* wmu: output */
    pthread_mutex_t wmu;
    pthread_cond_t flushed;
    int flush_waiters;
    bool fail_done;       /* session_fail has finished (wmu; flushed is broadcast) */
    bool sends_closed;    /* lc_session_close began: the application's messages are refused (wmu) */
    bool pump_sends_closed; /* ... and the pumped Receivers' too, before its GOAWAY (wmu) */
    atomic_size_t attach_starting; /* messages queued whose attachments' streams are
                                      not started yet (lc_session_close waits for them) */
    lc_spdy_deflater defl;
    lc_buf out;           /* frames not yet handed to a writer */
    lc_buf inflight;      /* frames a writer is writing */
    size_t inflight_off;
    size_t direct_out;    /* wmu: bytes of a byte stream's frame being written
                             straight from its pump's buffer (bytes_write_direct) */
    bool writing;         /* a writer owns the output (maybe waiting for EPOLLOUT) */
    bool out_handed;      /* wmu: ...which the EPOLLOUT callback or fd_retry now owns */
    bool in_write;        /* a thread is inside the write syscall */
    bool flush_scheduled; /* an engine run will write what is queued */
    bool flood;           /* the last such run found a flood's batch */
    bool wake_scheduled;  /* an engine run will wake the senders blocked on a full output */
    size_t ctl_out;       /* wmu: bytes of control frames (answers to the peer) in `out` */
    size_t ctl_inflight;  /* wmu: ... in `inflight` (counted whole until it is written) */
    int64_t last_send_ns; /* when the application last sent: bursts are coalesced */
    uint64_t last_send_rx; /* rx_reads at that send */
    /* wmu: the last frame appended to `out` by a message send, while nothing
     * followed it (tail_end == out.len) in the same buffer (tail_gen ==
     * out_gen): a DATA frame of stream tail_id at tail_hdr, tail_len bytes */
    uint64_t out_gen, tail_gen;
    size_t tail_hdr, tail_end, tail_len;
    uint32_t tail_id;
    _Atomic uint64_t rx_reads; /* carrier reads that brought DATA or SYN_STREAM frames */
    _Atomic int in_cb;    /* engine callbacks (and driving receivers) running on it */
    _Atomic int fd_closers; /* bytes_close calls between taking a watch and closing its fd */
    _Atomic int reader;   /* the reader token: 1 while a thread reads the carrier */
    _Atomic bool rearm_needed; /* the engine found the token taken: re-arm EPOLLIN */
    /* wmu: after a thread read the carrier itself, the engine's watch stays
     * disarmed (lazy) while threads keep doing so; backstop_set: a timer
     * re-arms it once nobody has for LAZY_REARM_NS */
    _Atomic bool peer_known; /* its first frame came: peer_fc is settled */
    _Atomic bool lazy;    /* written under wmu; drive looks without it */
    bool backstop_set;
    lc_timer_id backstop_id; /* wmu: valid while backstop_set */
    bool out_urgent;      /* wmu: `out` holds a WINDOW_UPDATE or PING reply: no deferring */
    size_t deferred_len;  /* wmu: `out` up to here holds only frames nobody waits for */
    /* a FIN left to settle (net_end): the reading thread writes it once this
     * time (ns) has passed; 0: none. Written under wmu, looked at without */
    _Atomic int64_t fin_due;
    _Atomic bool no_lazy; /* a channel is waited on without reading (select, pollfd, async) */
    /* waits going on without reading, each once (lc__session_waiting):
     * while any lasts, a drive that drained the carrier re-arms the watch */
    _Atomic int passive_waiters;
    _Atomic bool close_waiting; /* lc_session_close waits for pumps: a parking pump signals */
    _Atomic int64_t last_drive_ns;
    /* adaptive spinning of threads that read the carrier themselves (drive):
     * waits in a row whose spin ran out before the message came, and drives
     * so far (for the periodic probe) */
    _Atomic int spin_misses; /* saturates at SPIN_MISSES_MAX */
    _Atomic unsigned drives;
    uint32_t next_id;     /* our next SPDY stream id (odd client, even server) */
    _Atomic bool peer_fc; /* the peer announced SPDY windows (our SETTINGS marker) */
    _Atomic bool peer_fd_charge;  /* the peer announced FD_CHARGE (it charges, and credits) */
    _Atomic bool peer_no_replies; /* ... and NO_REPLIES: no SYN_REPLY, no answering FIN */
    bool fdpass_local;    /* a unix carrier: we announced fd passing */
    _Atomic bool peer_fdpass; /* ... and so did the peer */
    /* fds are read only once asked for (PROTOCOL.md 7): recv(2) is ~0.2 us
     * cheaper than recvmsg(2) with room for fds, twice per round trip */
    _Atomic bool read_fds;        /* we read the carrier with recvmsg: until the peer's first
                                     frame, then once asked (we announced FD_READY), or for
                                     good toward a peer that passes fds unasked */
    /* A message with byte streams sent before the peer's first frame was
     * read waits for it (it says whether fds pass: PROTOCOL.md 7), at most
     * FIRST_FRAME_WAIT_NS (send.c); then and from then on such messages use
     * sub-streams until that frame comes */
    _Atomic int first_wait;       /* FIRST_NONE, FIRST_WAITING (timer armed), FIRST_OVER */
    lc_timer_id first_timer;      /* wmu: the bound's timer while armed (0: none) */
    bool fds_asked;               /* wmu: we sent FD_ASK */
    bool peer_asked;              /* reader: the peer sent FD_ASK */
    _Atomic bool peer_reads_fds;  /* the peer announced FD_READY (or reads fds always): we
                                     may pass fds */
    bool peer_asks;               /* reader: the peer announced FD_ASKS */
    uint64_t fd_out_seq;  /* wmu: fds passed so far */
    int *fdq;             /* wmu: fds to send with the next write (owned) */
    struct lc_fdq_at { uint64_t gen; size_t off; } *fdq_at; /* wmu: where fdq[i]'s message starts
                             (out_gen of its buffer, offset in it) */
    size_t fdq_len, fdq_cap;
    int fd_retry_ms;      /* wmu: the next wait after ETOOMANYREFS (0: none yet) */
    uint32_t peer_window; /* wmu: its INITIAL_WINDOW_SIZE for the streams we send on */

    /* mu: tables and state */
    pthread_mutex_t mu;
    lc_map streams;       /* SPDY id -> stream */
    lc_map peer_refs;     /* peer's libchan-ref -> unbound sub-stream */
    lc_map late_refs;     /* mu: peer's libchan-ref -> its end (a late_end), bound at a clean
                             end for a message still undecoded (lc__bind_all_before_end) */
    struct lc_bind_work *bind_work; /* mu: while lc__bind_all_before_end runs, where
                             the Receivers it binds are listed for their own turn */
    lc_map in_fds;        /* received fd sequence number -> fd + 1, not yet claimed */
    uint64_t claimed_ring[CLAIMED_KEEP]; /* peer refs already named by a message (the last
                                            CLAIMED_KEEP), oldest at claimed_next % CLAIMED_KEEP */
    uint64_t claimed_next;
    lc_map ended_refs;    /* mu: peer refs whose sub-stream ended (reset, refused) before a
                             message named them -> LC_ENDED_REF, until one does (at most
                             MAX_ENDED_REFS) */
    size_t refs_waiters;  /* mu: streams whose head message waits for sub-streams */
    size_t pushes_set;    /* mu: streams whose push_op is set (push_op_set_locked) */
    uint64_t fd_in_seq;
    /* mu: channels reset because a message did not decode, on a carrier
     * that passes fds: what is left of their bytes, and what still comes
     * for them, is skimmed for passed fds to close (the newest SKIMS_KEEP) */
    struct lc_skim_slot {
        uint32_t id;
        lc_skim *k;
    } skims[SKIMS_KEEP];
    unsigned skim_next;
    /* mu: the peer's sub-streams that messages never to be delivered named
     * (nothing will bind them): each referenced, to be reset with
     * RST_STREAM CANCEL once mu is released (lc__rst_due_flush) */
    struct lc_stream **rst_due;
    size_t rst_due_n, rst_due_cap;
    _Atomic bool rst_due_any;
    /* mu: inbound byte streams of a cleanly ended session still writing
     * what they hold to their fds (session_fail); closed by lc_session_free */
    struct lc_stream **draining;
    size_t ndraining;
    size_t unreplied;     /* mu: streams of ours still awaiting_reply (lc_session_close waits for 0) */
    /* mu, CLOCK_MONOTONIC: lc_session_close waits on it for SYN_REPLYs and
     * for outgoing byte streams' EOF (broadcast by close_progress_locked) */
    pthread_cond_t close_cv;
    uint64_t written_total; /* wmu: bytes written to the carrier */
    /* wmu: the streams we opened that carried DATA, for a refusal that comes
     * after they left the table (toward a peer of ours they leave with our
     * FIN): the highest id, of all and of top-level ones (a GOAWAY's
     * last-good below it), and the last top-level ones (a SYN_REPLY 502) */
    uint32_t max_data_id, max_top_data_id;
    uint32_t top_data_ids[LC_TOP_DATA_KEEP];
    unsigned top_data_next;
    uint64_t goaway_end;  /* wmu: written_total once all before lc_session_close's GOAWAY is written */
    size_t early_total;   /* mu: bytes held for sub-streams no message has named yet (all of them) */
    _Atomic bool new_refs; /* set by the reader (SYN_STREAM, fds): retry waiting messages */
    /* the reader's own note (read_carrier, reader token held): unclaimed
     * fds were past MAX_UNCLAIMED_FDS when it last looked under mu */
    bool in_fds_high;
    size_t fds_over;      /* mu: byte streams holding more than BYTES_BUF for their fd */
    bool goaway_sent, goaway_recv, closing;
    bool close_done;      /* mu: the first lc_session_close has returned close_rc */
    bool sends_cut;       /* mu: the session ended while this side was still sending
                             (a pump held messages, a byte stream was not at EOF) */
    _Atomic bool sent_refused; /* the peer refused a stream we had sent DATA on (502,
                             or past its GOAWAY's last-good id): those bytes were dropped */
    uint32_t goaway_last; /* wmu + mu: the last-good id of the peer's GOAWAY (goaway_recv) */
    bool goaway_top_only; /* wmu + mu: ... which applies to top-level channels only */
    int close_rc;
    /* reading stopped: a local queue is full. Written under mu; read without
     * it where a stale value only costs a round (drive, resume_reading's
     * fast path) */
    _Atomic bool paused;
    _Atomic bool peer_gone; /* the peer hung up (or the carrier failed) while reading was
                               paused: what is left is bounded, read it to the end */

    lc_spdy_decoder trace_dec; /* wmu: parses our own output when tracing */

    /* engine thread only */
    lc_spdy_decoder dec;
    _Atomic uint32_t last_peer_id; /* engine writes, lc_session_close reads */
    uint32_t last_taken_id; /* mu: the peer's last stream we took (the GOAWAY's
                               last-good: not one refused with 502 meanwhile) */
    /* the carrier's read buffer: READ_CHUNK bytes, READ_CHUNK_BULK once a
     * read filled it (read_carrier). Only the reader token's holder. */
    uint8_t *rbuf;
    size_t rbuf_cap;

    /* top-level channels the peer opened, waiting for lc_session_receiver */
    lc_receiver *incoming_r;
    lc_sender *incoming_s;
};

/* Our SETTINGS entry announcing what we speak beyond docker/libchan (a peer
 * that does not know the id ignores it; SPDY/3 section 2.6.4). Value bits: */
#define LC_SETTINGS_LIBCHAN     0x4c43 /* "LC" */
#define LC_FEATURE_WINDOWS      0x1u   /* we enforce and grant per-stream windows */
#define LC_FEATURE_FDPASS       0x2u   /* byte streams may travel as fds (unix only) */
#define LC_FEATURE_FD_ASK       0x4u   /* we want to pass fds: read them and say FD_READY */
#define LC_FEATURE_FD_READY     0x8u   /* we read fds from now on: pass them */
#define LC_FEATURE_FD_ASKS      0x10u  /* (with FDPASS) we ask before we pass fds, and read
                                          them only once asked; a peer that announces FDPASS
                                          without it passes fds unasked */
#define LC_FEATURE_NO_REPLIES   0x20u  /* send us no SYN_REPLY (bar a refusal) and no FIN
                                          answering a channel's FIN: we wait for neither, and
                                          send you neither once you say the same */
#define LC_FEATURE_FD_CHARGE    0x40u  /* (with FDPASS and WINDOWS) each passed fd counts
                                          fd_charge(window) bytes of its channel's window */

/*
 * What a passed fd costs in its channel's window when both sides charge
 * (FD_CHARGE): a 128th of the window the receiver grants. Windows count
 * bytes, and a message passing an fd is ~20 of them: one channel whose
 * application did not read held the session's whole bound of unclaimed fds
 * (MAX_UNCLAIMED_FDS, 256) within its window, and reading paused for every
 * channel (a review helper). Charged, a channel holds at most 128 fds past
 * what was granted, and one message's 64 (which may overdraw): below the
 * bound.
 */
static inline uint64_t fd_charge(uint32_t window)
{
    return window / 128 > 0 ? window / 128 : 1;
}
/* ext 1/2/3 payload of a passed fd: this bit | its sequence number among the
 * fds the sender passed on this session (docs/PROTOCOL.md) */
#define LC_REF_PASSED_FD        0x8000000000000000ull
#define LC_SPDY_DEFAULT_WINDOW  65536u /* SPDY/3's initial window until SETTINGS says */

/* ---- shared between the session's files ----------------------------------
 * session.c (lifetime, death, the public calls), output.c, send.c, bytes.c,
 * receive.c, read.c, map.c, trace.c: what one of them calls in another. Each
 * function's comment is at its definition. */

/* A control frame to send: stream (or ping/last-good) id and status. */
typedef struct { uint32_t id; uint32_t status; } ctl_arg;

/* Streams bound while resolving, to be kicked once the lock is dropped: a
 * growable list of referenced streams (no fixed cap: a batch may touch any
 * number of channels). Starts on an inline array. */
typedef struct kick_list {
    lc_stream **st;
    size_t n, cap;
    size_t passed; /* passed fds resolved (FD_CHARGE credit) */
    lc_stream *inl[16];
} kick_list;

/* A byte stream's pump reads an fd this much at a time (bytes.c; the
 * buffer is per thread, send.c lc__pump_buf). */
#define PUMP_READ (256u << 10)

static inline void stream_ref(lc_stream *st)
{
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
}

static inline void session_ref(lc_session *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

/* Bytes queued for st's fd and not written yet. mu held. */
static inline size_t fd_queued(const lc_stream *st)
{
    return st->fd_out.len - st->fd_out_off;
}

/* Output bytes not yet written: queued, being written, or a byte stream's
 * frame written straight from its pump (wmu held). */
static inline size_t pending_out(lc_session *s)
{
    return s->out.len + (s->inflight.len - s->inflight_off) + s->direct_out;
}

/*
 * Passed fds queued to be sent past which lc_send waits, as for a full
 * output: each is an open fd of the process until the write that carries it,
 * and a message passing one is only ~20 bytes, so max_pending_out alone let
 * a session hold thousands for a peer that does not read (a review helper:
 * 7304, and the application's own open() failing with EMFILE).
 */
#define FDQ_MAX 256

/* Is the output full for the application's sends (wmu held)? */
static inline bool output_full(lc_session *s)
{
    return pending_out(s) >= s->opt.max_pending_out || s->fdq_len >= FDQ_MAX;
}

/* Has the output drained enough to wake the senders it blocked (wmu held)? */
static inline bool output_low(lc_session *s)
{
    return pending_out(s) < s->opt.max_pending_out / 2 && s->fdq_len < FDQ_MAX / 2;
}

/* Bytes the peer still lets us send on st (wmu held); unlimited toward a
 * peer without windows. May be negative: one message may overdraw it, so a
 * message bigger than the window still goes (alone). */
static inline int64_t send_window(const lc_session *s, const lc_stream *st)
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

/* The peer announced NO_REPLIES (PROTOCOL.md 3.2, 3.8): no SYN_REPLY, and
 * no FIN that answers a FIN of a channel, either way. */
static inline bool quiet_peer(const lc_session *s)
{
    return atomic_load_explicit(&s->peer_no_replies, memory_order_relaxed);
}

/* read.c: the session whose carrier this thread is reading (an engine
 * callback), and the one it last took a message from by reading it itself */
extern _Thread_local lc_session *lc__tls_reading;
extern _Thread_local const lc_session *lc__tls_served;

/* Bytes all unbound sub-streams of a session may hold together. */
#define EARLY_TOTAL_MAX(s) (4 * (size_t)(s)->opt.limits.max_message)

/* Messages decoded ahead of a channel's local queue, at most (and never
 * more than recv_queue; read.c says why). */
#define LC_DECODE_AHEAD 32

static inline size_t lc__decode_ahead(const lc_session *s)
{
    return s->opt.recv_queue < LC_DECODE_AHEAD ? s->opt.recv_queue : LC_DECODE_AHEAD;
}

/* The carrier is read this much at a time, and READ_CHUNK_BULK once a
 * read filled the buffer (read.c says why). */
#define READ_CHUNK 65536
#define READ_CHUNK_BULK (512u << 10)

/* session.c */
void lc__session_unref(lc_session *s);
lc_stream *lc__stream_new(lc_session *s, st_kind kind);
void lc__msg_chain_free(lc_msg *m);
void lc__rst_due_flush(lc_session *s);
lc_msg *lc__pending_take_all_locked(lc_stream *st);
void lc__drop_chain(lc_session *s, lc_msg *chain);
void lc__stream_unref(lc_stream *st);
void lc__remember_claimed_locked(lc_session *s, uint64_t ref);
bool lc__was_claimed_locked(const lc_session *s, uint64_t ref);
/* A value of ended_refs (neither NULL nor LC_MAP_TOMB). */
#define LC_ENDED_REF ((void *)2)
void lc__remember_ended_locked(lc_session *s, uint64_t ref);
bool lc__take_ended_locked(lc_session *s, uint64_t ref);
void lc__early_drop_locked(lc_session *s, lc_stream *st);
void lc__close_progress_locked(lc_session *s);
void lc__reply_came_locked(lc_session *s, lc_stream *st);
void lc__stream_maybe_done_locked(lc_session *s, lc_stream *st);
void lc__session_fail(lc_session *s, int err);
void lc__protocol_error(lc_session *s, uint32_t status);

/* bytes.c (more below) */
void lc__bytes_over_note_locked(lc_session *s, lc_stream *st);

/* output.c */
void lc__flush_locked(lc_session *s);
/* Senders blocked on a full output are woken (from an engine run) once it is
 * below half. wmu held. */
void lc__wake_after_flush_locked(lc_session *s);
void lc__send_flush_locked(lc_session *s);
void lc__wake_blocked_senders(lc_session *s);
void lc__output_ready(lc_session *s);
int lc__put_syn_stream(lc_session *s, uint32_t id, uint64_t ref, uint64_t parent);
bool lc__parse_u64(const lc_spdy_header *h, uint64_t *out);
void lc__send_control(lc_session *s, int (*fn)(lc_session *s, void *arg), void *arg);
void lc__send_control_deferred(lc_session *s, int (*fn)(lc_session *s, void *arg), void *arg);
bool lc__flush_now(lc_session *s);
void lc__fin_settled(lc_session *s);
int lc__ctl_syn_reply(lc_session *s, void *arg);
int lc__ctl_rst(lc_session *s, void *arg);
int lc__ctl_ping(lc_session *s, void *arg);
int lc__ctl_goaway(lc_session *s, void *arg);
int lc__ctl_window(lc_session *s, void *arg);
int lc__ctl_fin(lc_session *s, void *arg);

/* send.c */
lc_sender *lc__make_net_sender(lc_stream *st, bool mu_held);
uint8_t *lc__pump_buf(void);
int lc__register_ours_locked(lc_session *s, lc_stream *st);
lc_msg *lc__pump_take_locked(lc_stream *st);
void lc__pump_resume(lc_stream *st, lc_msg *held);

/* bytes.c */
int lc__bytes_inbound_locked(lc_session *s, lc_stream *st, const uint8_t *p, size_t n);
void lc__pipe_grown_release(lc_stream *st);
int lc__bytes_watch(lc_stream *st, int fd, lc_watch **w);
int lc__bytes_start(lc_stream *st, int fd, bool we_read, bool we_write, bool mu_held, lc_watch *pre);
int lc__bytes_open_received(lc_stream *sub, int ext, int *app_fd);
void lc__bytes_close(lc_stream *st);
void lc__bytes_kick(lc_stream *st);

/* receive.c */
void lc__kl_init(kick_list *k);
bool lc__kl_add(kick_list *k, lc_stream *st);
void lc__kl_free(kick_list *k);
void lc__skim_drop(struct lc_skim_slot *sl);
void lc__skim_more_locked(lc_session *s, uint32_t id, const uint8_t *p, size_t n, bool fin);
void lc__skim_start_locked(lc_session *s, lc_stream *st, const uint8_t *extra, size_t extra_n, bool fin);
void lc__drop_refs_locked(lc_session *s, lc_msg *chain);
void lc__bind_all_before_end(lc_session *s);
void lc__late_refs_release(lc_session *s);
void lc__pending_append_locked(lc_stream *st, lc_msg *m);
void lc__note_data_wmu_locked(lc_session *s, lc_stream *st);
void lc__close_unclaimed_fds_locked(lc_session *s);
bool lc__stalled_over_locked(const lc_session *s, size_t limit);
void lc__waiting_refs_set_locked(lc_session *s, lc_stream *st, bool waiting);
void lc__deliver_pending(lc_stream *st);
void lc__deliver_pending_noted(lc_stream *st, bool noted);

/* read.c */
int lc__feed_stream_locked(lc_session *s, lc_stream *st, const uint8_t *p, size_t n);
bool lc__backstop_locked(lc_session *s);
void lc__ensure_watched(lc_session *s);
void lc__resume_reading(lc_session *s);
void lc__drain_until_hangup(lc_session *s, int64_t deadline);
void lc__feeder_passive(void *ctx);
void lc__session_waiting(lc_session *s, int delta);
extern const lc__feeder_ops lc__session_feeder_ops;
void lc__carrier_cb(void *ctx, uint32_t ev);
void lc__ref_timer(void *ctx);

/* trace.c */
void lc__trace_frame(lc_session *s, const char *dir, const lc_spdy_frame *f);
void lc__trace_out(lc_session *s, const uint8_t *p, size_t n);

/* A session on an already connected unix stream socket fd (taken), for tests
 * that play the peer byte by byte. */
int lc__session_from_fd(int fd, bool is_client, const lc_options *o, lc_session **out);

#endif

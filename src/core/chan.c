/*
 * chan.c - in-memory channels and select (src/core), the bottom of the stack
 * that every channel end shares.
 *
 * Two mechanisms, chosen by capacity:
 *   - Unbuffered channels use Go's algorithm (runtime/chan.go, select.go): a
 *     mutex, two wait queues of "sudogs" (one per blocked send or receive,
 *     living on the blocked thread's stack), and direct hand-off: whoever finds
 *     a matching waiter claims it with one CAS, passes the message, wakes it.
 *   - Buffered channels keep their messages in a lock-free bounded ring of
 *     stamped slots (the design of Vyukov's bounded MPMC queue, with a mark bit
 *     in the tail for close, as in crossbeam's array channel). A producer and a
 *     consumer then share no lock: with a mutex, bench_chan measured one lock
 *     cache-line transfer per message and a spinning receiver turned the buffer
 *     into per-message hand-offs. Blocking uses the same wait queues, as an
 *     eventcount: register, fence, re-check, sleep; whoever changes the ring
 *     wakes one registered waiter, which retries.
 * The claim CAS is what lets one select wait on many channels while exactly
 * one case fires. Waking uses a futex after a short, time-bounded spin: a
 * cross-core wake-up costs ~20 us here, so a partner that answers within a
 * few microseconds is caught spinning instead.
 */
#include "chan_internal.h"
#include "../common/deadline.h"
#include "../msg/msg_internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- waiters ------------------------------------------------------------- */

enum { W_WAITING = 0, W_SLEEPING = 1, W_DONE = 2 };
enum { SEL_FREE = -1, SEL_CANCELLED = -2 };

/* Result of a sudog woken on a buffered channel: "the ring changed, retry". */
#define RES_NOTIFY 1

/* One blocked call (lc_send, lc_recv or lc_select): lives on its stack. */
typedef struct waiter {
    _Atomic uint32_t state;  /* W_*: the futex word */
    _Atomic int selected;    /* SEL_FREE until a channel claims one case */
    struct lc_async *async;  /* non-NULL: a callback operation, nobody sleeps */
} waiter;

/* One case of a blocked call, queued on one channel. */
typedef struct sudog {
    struct sudog *next, *prev;
    waiter *w;
    struct lc_chan *chan;
    lc_msg *msg;      /* unbuffered send: the message offered; recv: filled by the waker */
    int case_index;
    int result;       /* 0, LC_EOF, LC_ECLOSED or RES_NOTIFY: set by the waker */
    bool queued;
    bool is_send;
    bool last;        /* an lc_send_last: the channel closes as its message is taken */
} sudog;

typedef struct sudog_queue {
    sudog *head, *tail;
    _Atomic size_t len; /* read without the lock to skip waking when nobody waits */
} sudog_queue;

/* How long a waiter spins before sleeping in the kernel. bench_chan: the
 * ping-pong round trip drops from ~45 us (sleeping) to well under 1 us. */
#ifndef LC_SPIN_NS
#define LC_SPIN_NS 10000
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static long futex_call(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, FUTEX_BITSET_MATCH_ANY);
}

static void waiter_init(waiter *w)
{
    atomic_init(&w->state, W_WAITING);
    atomic_init(&w->selected, SEL_FREE);
    w->async = NULL;
}

/* Claims waiter w for case `index`; false if another case or a timeout got it first. */
static bool waiter_claim(waiter *w, int index)
{
    int expected = SEL_FREE;
    return atomic_compare_exchange_strong_explicit(&w->selected, &expected, index,
                                                   memory_order_acq_rel, memory_order_acquire);
}

/* Withdraws w; false when a channel claimed it first (it will be woken). */
static bool waiter_cancel(waiter *w)
{
    int expected = SEL_FREE;
    return atomic_compare_exchange_strong_explicit(&w->selected, &expected, SEL_CANCELLED,
                                                   memory_order_acq_rel, memory_order_acquire);
}

/* Wakes a claimed waiter. After the exchange the waiter may return and its
 * stack vanish: nothing here touches *w afterwards except the futex syscall,
 * which on a stale address at worst wakes a waiter that re-checks its word. */
static void async_fire(struct lc_async *op);

static void waiter_wake(waiter *w)
{
    if (w->async != NULL) {
        async_fire(w->async); /* runs the operation's continuation here */
        return;
    }
    if (atomic_exchange_explicit(&w->state, W_DONE, memory_order_acq_rel) == W_SLEEPING)
        futex_call(&w->state, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Waits until woken (true) or the absolute CLOCK_MONOTONIC deadline passes
 * (false). deadline NULL = forever. */
static bool waiter_wait(waiter *w, const struct timespec *deadline)
{
    int64_t spin_until = 0;
    for (unsigned i = 0;; i++) {
        if (atomic_load_explicit(&w->state, memory_order_acquire) == W_DONE)
            return true;
        cpu_relax();
        if ((i & 63) == 0) {
            int64_t now = mono_ns();
            if (spin_until == 0)
                spin_until = now + LC_SPIN_NS;
            else if (now >= spin_until)
                break;
        }
    }
    /* A second wait after a timed-out one (select_wait, when a channel
     * claimed the waiter just as it gave up) finds the word still
     * W_SLEEPING: that is no wake-up. Taking the failed exchange below for
     * one returned before the claimer had woken us; its late W_DONE then
     * landed in a stack frame that was gone (found by fuzz_session under
     * TSan: heap-use-after-free in async_fire, a stale sudog left queued). */
    uint32_t expected = W_WAITING;
    if (!atomic_compare_exchange_strong_explicit(&w->state, &expected, W_SLEEPING,
                                                 memory_order_acq_rel, memory_order_acquire) &&
        expected == W_DONE)
        return true;
    for (;;) {
        long r = futex_call(&w->state, FUTEX_WAIT_BITSET_PRIVATE, W_SLEEPING, deadline);
        if (atomic_load_explicit(&w->state, memory_order_acquire) == W_DONE)
            return true;
        if (r == -1 && errno == ETIMEDOUT)
            return false;
    }
}

/* ---- channels ------------------------------------------------------------ */

typedef struct ring_slot {
    _Atomic size_t stamp; /* lap+index when free for that position, +1 when full */
    lc_msg *msg;
} ring_slot;

enum { RING_OK = 0, RING_WOULD_BLOCK = 1, RING_CLOSED = 2 };

struct lc_chan {
    /* buffered ring: positions are lap | mark | index; head and tail live on
     * their own cache lines so producers and consumers do not share one */
    _Alignas(64) _Atomic size_t head;
    _Alignas(64) _Atomic size_t tail;
    _Alignas(64) pthread_mutex_t mu; /* wait queues, close, pollable fds */
    size_t cap;                      /* 0 = unbuffered */
    size_t mark_bit, one_lap;
    ring_slot *ring;
    sudog_queue sendq, recvq;
    bool closed;                     /* lc_close called or last Sender released */
    bool rx_gone;                    /* last Receiver released */
    _Atomic int close_err;           /* what receivers get after draining: 0 = LC_EOF */
    _Atomic bool polled;             /* a pollable fd exists: keep it up to date */
    _Atomic int refs;                /* one per end object alive */
    const lc__net_ops *net;          /* network Sender: the session's hooks */
    void *net_ctx;
    const lc__feeder_ops *feed;      /* network Receiver: who fills the ring (mu) */
    void *feed_ctx;
    _Atomic bool fed;                /* a feeder was set once: waits may need to tell it */
    _Atomic bool passive;            /* waited on without drive (lc__feeder_ops.passive; a
                                      * network Sender: without sending, lc__net_ops.passive) */
    int recv_efd, send_efd;
    bool recv_sig, send_sig;
    /* the filling party's room watch (lc__room_watch): fired by the receive
     * that leaves room_need slots free, without taking the lock */
    _Atomic(struct lc_async *) room_op;
    _Atomic size_t room_need;
    void *block; /* what chan_alloc got from malloc */
};

struct lc_sender {
    _Atomic long refs;
    lc_chan *c;
};

struct lc_receiver {
    _Atomic long refs;
    lc_chan *c;
};

static void mark_passive(lc_chan *c);
static void poll_missed(lc_chan *c);

/*
 * A zeroed channel on its 64-byte boundary, from plain malloc. glibc's
 * aligned_alloc (before 2.38) never takes a chunk from the thread cache and
 * splits one off the arena each time, freeing the slack; freed channels
 * then overflow the cache into the arena's bins. A fresh reply channel
 * allocates two channels per round trip: with aligned_alloc here (and
 * calloc for its streams), glibc's slow paths took ~0.9 us of CPU per
 * round trip, both processes together (perf, bench_session unix
 * lc-rt-fresh).
 */
static lc_chan *chan_alloc(void)
{
    char *block = malloc(sizeof(lc_chan) + 64);
    if (block == NULL)
        return NULL;
    lc_chan *c = (lc_chan *)(block + (64 - (uintptr_t)block % 64));
    memset(c, 0, sizeof *c);
    c->block = block;
    return c;
}

static void chan_free(lc_chan *c)
{
    if (c)
        free(c->block);
}

/* ---- the lock-free ring (buffered channels) ------------------------------ */

/* Pushes m; with last, the tail is marked (closed) in the same CAS, so
 * nothing can be pushed after m (lc_send_last). Inlined into each caller,
 * so the plain push keeps no call and no flag on the send path. */
static inline __attribute__((always_inline)) int ring_push_ex(lc_chan *c, lc_msg *m, bool last)
{
    size_t mark = last ? c->mark_bit : 0;
    size_t tail = atomic_load_explicit(&c->tail, memory_order_relaxed);
    for (;;) {
        if (tail & c->mark_bit)
            return RING_CLOSED;
        size_t index = tail & (c->mark_bit - 1);
        size_t lap = tail & ~(c->one_lap - 1);
        size_t next = index + 1 < c->cap ? tail + 1 : lap + c->one_lap;
        ring_slot *s = &c->ring[index];
        size_t stamp = atomic_load_explicit(&s->stamp, memory_order_acquire);
        if (stamp == tail) {
            if (atomic_compare_exchange_weak_explicit(&c->tail, &tail, next | mark, memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                s->msg = m;
                atomic_store_explicit(&s->stamp, tail + 1, memory_order_release);
                return RING_OK;
            }
        } else if (stamp + c->one_lap == tail + 1) {
            /* the slot still holds last lap's message: full, unless head moved */
            atomic_thread_fence(memory_order_seq_cst);
            size_t head = atomic_load_explicit(&c->head, memory_order_relaxed);
            if (head + c->one_lap == tail)
                return RING_WOULD_BLOCK;
            tail = atomic_load_explicit(&c->tail, memory_order_relaxed);
        } else {
            /* another producer is mid-way: retry */
            cpu_relax();
            tail = atomic_load_explicit(&c->tail, memory_order_relaxed);
        }
    }
}

static int ring_push(lc_chan *c, lc_msg *m)
{
    return ring_push_ex(c, m, false);
}

static int ring_pop(lc_chan *c, lc_msg **out)
{
    size_t head = atomic_load_explicit(&c->head, memory_order_relaxed);
    for (;;) {
        size_t index = head & (c->mark_bit - 1);
        size_t lap = head & ~(c->one_lap - 1);
        ring_slot *s = &c->ring[index];
        size_t stamp = atomic_load_explicit(&s->stamp, memory_order_acquire);
        if (stamp == head + 1) {
            size_t next = index + 1 < c->cap ? head + 1 : lap + c->one_lap;
            if (atomic_compare_exchange_weak_explicit(&c->head, &head, next, memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                *out = s->msg;
                atomic_store_explicit(&s->stamp, head + c->one_lap, memory_order_release);
                return RING_OK;
            }
        } else if (stamp == head) {
            /* empty, unless a producer reserved the slot and is writing it.
             * Acquire: a marked tail must also show the close_err stored
             * before the mark (end_result); relaxed, a weakly ordered CPU
             * could read close_err first and report LC_EOF for the error
             * (found by a review helper; no test: x86 cannot show it). */
            atomic_thread_fence(memory_order_seq_cst);
            size_t tail = atomic_load_explicit(&c->tail, memory_order_acquire);
            if ((tail & ~c->mark_bit) == head)
                return (tail & c->mark_bit) ? RING_CLOSED : RING_WOULD_BLOCK;
            cpu_relax();
            head = atomic_load_explicit(&c->head, memory_order_relaxed);
        } else {
            cpu_relax();
            head = atomic_load_explicit(&c->head, memory_order_relaxed);
        }
    }
}

/* Messages in the ring now (a consistent snapshot of head and tail). */
static size_t ring_len(lc_chan *c)
{
    for (;;) {
        size_t tail = atomic_load_explicit(&c->tail, memory_order_seq_cst);
        size_t head = atomic_load_explicit(&c->head, memory_order_seq_cst);
        if (atomic_load_explicit(&c->tail, memory_order_seq_cst) != tail)
            continue;
        size_t hix = head & (c->mark_bit - 1), tix = tail & (c->mark_bit - 1);
        if (hix < tix)
            return tix - hix;
        if (hix > tix)
            return c->cap - hix + tix;
        return (tail & ~c->mark_bit) == head ? 0 : c->cap;
    }
}

static bool ring_marked(lc_chan *c)
{
    return (atomic_load_explicit(&c->tail, memory_order_seq_cst) & c->mark_bit) != 0;
}

/* Would a receive (recv=true) or a send on the ring complete now? */
static bool ring_ready(lc_chan *c, bool recv)
{
    if (ring_marked(c))
        return true;
    size_t n = ring_len(c);
    return recv ? n > 0 : n < c->cap;
}

/* Channels whose waiters are notified to retry (a ring, or a network Sender)
 * rather than handed a message (unbuffered). */
static bool notify_based(const lc_chan *c)
{
    return c->cap > 0 || c->net != NULL;
}

/* Would the case complete now, for a notify-based channel? */
static bool case_ready(lc_chan *c, bool recv)
{
    if (c->net != NULL)
        return c->net->writable(c->net_ctx); /* true once closed, too */
    return ring_ready(c, recv);
}

/* ---- wait queues --------------------------------------------------------- */

static void q_push(sudog_queue *q, sudog *s)
{
    s->next = NULL;
    s->prev = q->tail;
    if (q->tail)
        q->tail->next = s;
    else
        q->head = s;
    q->tail = s;
    s->queued = true;
    atomic_fetch_add_explicit(&q->len, 1, memory_order_seq_cst);
}

static void q_remove(sudog_queue *q, sudog *s)
{
    if (!s->queued)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        q->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        q->tail = s->prev;
    s->next = s->prev = NULL;
    s->queued = false;
    atomic_fetch_sub_explicit(&q->len, 1, memory_order_relaxed);
}

/* Removes and returns the first waiter that can still be claimed, claiming it;
 * stale entries of selects that already fired elsewhere are dropped. */
static sudog *q_claim(sudog_queue *q)
{
    sudog *s;
    while ((s = q->head) != NULL) {
        q_remove(q, s);
        if (waiter_claim(s->w, s->case_index))
            return s;
    }
    return NULL;
}

static sudog_queue *queue_of(sudog *sg)
{
    return sg->is_send ? &sg->chan->sendq : &sg->chan->recvq;
}

/* ---- pollable readiness -------------------------------------------------- */

static void efd_set(int efd, bool *sig, bool ready)
{
    if (ready == *sig)
        return;
    uint64_t v = 1;
    ssize_t n;
    if (ready)
        n = write(efd, &v, sizeof v);
    else
        n = read(efd, &v, sizeof v);
    (void)n; /* a nonblocking eventfd used as a flag cannot fail here */
    *sig = ready;
}

/* Brings the pollable fds in line with the channel's state; lock held. Costs
 * one branch when nobody asked for fds. */
static void poll_update(lc_chan *c)
{
    if (c->recv_efd < 0 && c->send_efd < 0)
        return;
    bool rready, sready;
    if (c->net != NULL) {
        rready = false;
        sready = c->closed || c->net->writable(c->net_ctx);
    } else if (c->cap > 0) {
        rready = ring_ready(c, true);
        sready = ring_ready(c, false);
    } else {
        rready = c->closed || c->rx_gone || c->sendq.head != NULL; /* (as try_case) */
        sready = c->closed || c->rx_gone || c->recvq.head != NULL;
    }
    if (c->recv_efd >= 0)
        efd_set(c->recv_efd, &c->recv_sig, rready);
    if (c->send_efd >= 0)
        efd_set(c->send_efd, &c->send_sig, sready);
}

/* After a ring operation: wake one waiter of the other side (if any is
 * registered) and refresh pollable fds (if any exist). The seq_cst fence pairs
 * with the one a waiter issues between registering and re-checking the ring,
 * so one of the two always sees the other. */
static void room_check(lc_chan *c);

static void ring_changed_n(lc_chan *c, bool pushed, size_t n)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (!pushed && atomic_load_explicit(&c->room_op, memory_order_relaxed) != NULL)
        room_check(c);
    sudog_queue *q = pushed ? &c->recvq : &c->sendq;
    bool polled = atomic_load_explicit(&c->polled, memory_order_relaxed);
    if (atomic_load_explicit(&q->len, memory_order_relaxed) == 0 && !polled)
        return;
    /* n messages (or slots) changed: up to n waiters may go on. Woken after
     * the unlock, a few at a time. */
    for (;;) {
        sudog *wake[8];
        size_t nw = 0;
        pthread_mutex_lock(&c->mu);
        while (nw < n && nw < 8 && (wake[nw] = q_claim(q)) != NULL)
            wake[nw++]->result = RES_NOTIFY;
        poll_update(c);
        pthread_mutex_unlock(&c->mu);
        for (size_t i = 0; i < nw; i++)
            waiter_wake(wake[i]->w);
        n -= nw;
        if (nw < 8 || n == 0)
            return;
    }
}

static void ring_changed(lc_chan *c, bool pushed)
{
    ring_changed_n(c, pushed, 1);
}

/* What a receive on a closed, drained channel reports. */
static int end_result(lc_chan *c)
{
    int e = atomic_load_explicit(&c->close_err, memory_order_acquire);
    return e ? e : LC_EOF;
}

/* ---- lifetime ------------------------------------------------------------ */

static void chan_unref(lc_chan *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (c->cap > 0) {
        lc_msg *m;
        while (ring_pop(c, &m) == RING_OK)
            lc_msg_free(m);
    }
    free(c->ring);
    if (c->recv_efd >= 0)
        close(c->recv_efd);
    if (c->send_efd >= 0)
        close(c->send_efd);
    pthread_mutex_destroy(&c->mu);
    chan_free(c);
}

LC_API int lc_pipe(lc_receiver **r, lc_sender **s, size_t capacity)
{
    if (r == NULL || s == NULL || capacity > ((size_t)1 << 40))
        return LC_EINVAL;
    *r = NULL;
    *s = NULL;
    lc_chan *c = chan_alloc();
    lc_sender *sn = malloc(sizeof *sn);
    lc_receiver *rc = malloc(sizeof *rc);
    ring_slot *ring = capacity ? malloc(capacity * sizeof *ring) : NULL;
    if (c == NULL || sn == NULL || rc == NULL || (capacity && ring == NULL)) {
        chan_free(c);
        free(sn);
        free(rc);
        free(ring);
        return LC_ENOMEM;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->cap = capacity;
    c->ring = ring;
    if (capacity) {
        size_t mark = 1;
        while (mark <= capacity)
            mark <<= 1;
        c->mark_bit = mark;
        c->one_lap = mark << 1;
        for (size_t i = 0; i < capacity; i++)
            atomic_init(&ring[i].stamp, i);
    }
    c->recv_efd = c->send_efd = -1;
    atomic_init(&c->refs, 2);
    atomic_init(&sn->refs, 1);
    sn->c = c;
    atomic_init(&rc->refs, 1);
    rc->c = c;
    *r = rc;
    *s = sn;
    return 0;
}

LC_API lc_sender *lc_sender_retain(lc_sender *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

LC_API lc_receiver *lc_receiver_retain(lc_receiver *r)
{
    if (r)
        atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

/* Claims every waiter of q with `result` and wakes them, in batches that fit a
 * stack array; lock held on entry and exit. A claimed waiter cannot leave
 * before it is woken, and the caller has made the channel's state final for
 * new arrivals (closed), so dropping the lock between batches is safe. */
static void wake_all_locked(lc_chan *c, sudog_queue *q, int result)
{
    waiter *wake[64];
    size_t n;
    do {
        n = 0;
        sudog *sg;
        while (n < 64 && (sg = q_claim(q)) != NULL) {
            if (!sg->is_send && result != RES_NOTIFY)
                sg->msg = NULL;
            sg->result = result;
            wake[n++] = sg->w;
        }
        poll_update(c);
        if (n == 0)
            return; /* nobody waits (the usual close): mu stays held, no round */
        pthread_mutex_unlock(&c->mu);
        for (size_t i = 0; i < n; i++)
            waiter_wake(wake[i]);
        pthread_mutex_lock(&c->mu);
    } while (n == 64);
}

/* err: what receivers get after draining instead of LC_EOF (0: LC_EOF),
 * only if this call closes the channel: set before the close is visible,
 * receivers read it once they see it. (Set before the look at closed, a
 * lc__close_error after a clean close turned the end a second receiver saw
 * into the error, where a first one had had LC_EOF: found by a review
 * helper, test_close_error_after_close_changes_nothing.) */
static int chan_close(lc_chan *c, bool explicit_close, int err)
{
    pthread_mutex_lock(&c->mu);
    if (c->closed) {
        pthread_mutex_unlock(&c->mu);
        return explicit_close ? LC_ECLOSED : 0;
    }
    if (err != 0) {
        int expected = 0;
        atomic_compare_exchange_strong_explicit(&c->close_err, &expected, err, memory_order_release,
                                                memory_order_relaxed);
    }
    c->closed = true;
    if (c->net != NULL) {
        /* the session sends FIN (outside our lock: it writes), then blocked
         * senders retry and find the stream closed */
        pthread_mutex_unlock(&c->mu);
        c->net->close(c->net_ctx);
        pthread_mutex_lock(&c->mu);
        wake_all_locked(c, &c->sendq, RES_NOTIFY);
    } else if (c->cap > 0) {
        /* buffered: mark the tail (no push succeeds after this), then let every
         * waiter retry: receivers drain what is queued before seeing the end */
        atomic_fetch_or_explicit(&c->tail, c->mark_bit, memory_order_seq_cst);
        wake_all_locked(c, &c->recvq, RES_NOTIFY);
        wake_all_locked(c, &c->sendq, RES_NOTIFY);
    } else {
        wake_all_locked(c, &c->recvq, end_result(c));
        wake_all_locked(c, &c->sendq, LC_ECLOSED); /* the message stays the sender's */
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* After a last message went (lc_send_last): the rest of the channel's end,
 * outside any lock. The end itself is already in place: a ring's marked
 * tail, an unbuffered channel's closed flag (set with the hand-over), a
 * network stream's FIN (with the message). */
static void close_finish(lc_chan *c)
{
    if (c->cap > 0 || c->net != NULL) {
        chan_close(c, false, 0); /* (a ring's tail is marked already; the stream sent its FIN) */
        return;
    }
    pthread_mutex_lock(&c->mu);
    wake_all_locked(c, &c->recvq, end_result(c));
    wake_all_locked(c, &c->sendq, LC_ECLOSED); /* the message stays the sender's */
    pthread_mutex_unlock(&c->mu);
}

LC_API int lc_close(lc_sender *s)
{
    if (s == NULL)
        return LC_EINVAL;
    return chan_close(s->c, true, 0);
}

/*
 * Nobody receives on c any more: fail every blocked and later sender and drop
 * what is queued (closing its fds, releasing its channel ends). recv_err
 * (< 0): receives still waiting (a session's pump, lc__receiver_abandon)
 * end with it, once the queue is empty; 0: there are none (the last
 * Receiver was released).
 */
static void receivers_gone(lc_chan *c, int recv_err)
{
    pthread_mutex_lock(&c->mu);
    c->rx_gone = true;
    if (c->cap > 0) {
        atomic_fetch_or_explicit(&c->tail, c->mark_bit, memory_order_seq_cst);
        wake_all_locked(c, &c->sendq, RES_NOTIFY);
    } else {
        wake_all_locked(c, &c->sendq, LC_ECLOSED);
        if (recv_err != 0)
            wake_all_locked(c, &c->recvq, recv_err);
    }
    pthread_mutex_unlock(&c->mu);
    if (c->cap > 0) {
        lc_msg *m;
        while (ring_pop(c, &m) == RING_OK)
            lc_msg_free(m); /* outside the lock: it may release other channels */
        if (recv_err != 0) {
            pthread_mutex_lock(&c->mu);
            wake_all_locked(c, &c->recvq, RES_NOTIFY); /* they find the ring marked and empty */
            pthread_mutex_unlock(&c->mu);
        }
        room_check(c); /* the ring is marked: a room watch learns it now */
    }
}

void lc__receiver_abandon(lc_receiver *r, int err)
{
    /* set before the end is visible: the receive that sees it reads it */
    int expected = 0;
    atomic_compare_exchange_strong_explicit(&r->c->close_err, &expected, err, memory_order_release,
                                            memory_order_relaxed);
    receivers_gone(r->c, err);
}

int lc__chan_close_err(lc_chan *c)
{
    return atomic_load_explicit(&c->close_err, memory_order_acquire);
}

int lc__close_error(lc_sender *s, int err)
{
    if (s == NULL || err >= 0)
        return LC_EINVAL;
    return chan_close(s->c, true, err);
}

LC_API void lc_sender_release(lc_sender *s)
{
    if (s == NULL)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    lc_chan *c = s->c;
    free(s);
    chan_close(c, false, 0); /* the last Sender gone: receivers drain, then EOF */
    if (c->net != NULL)
        c->net->release(c->net_ctx);
    chan_unref(c);
}

LC_API void lc_receiver_release(lc_receiver *r)
{
    if (r == NULL)
        return;
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    lc_chan *c = r->c;
    free(r);
    receivers_gone(c, 0);
    chan_unref(c);
}

/* ---- one case, without blocking ----------------------------------------- */

/* lc_send_last's case: a send whose message is the channel's last, the end
 * taken atomically with it (internal: lc_select accepts only the public
 * two). */
#define LC__CASE_SEND_LAST ((lc_case_op)3)

static lc_chan *case_chan(const lc_case *k)
{
    if (k->op != LC_CASE_RECV)
        return k->sender ? k->sender->c : NULL;
    return k->receiver ? k->receiver->c : NULL;
}

/* What to do after the locks are dropped, when a case fired. */
typedef struct fired {
    waiter *wake;       /* unbuffered: the partner to wake */
    lc_chan *changed;   /* buffered: the ring that changed */
    bool pushed;
    lc_chan *closed;    /* a last message went: this channel's end to finish */
} fired;

/* Tries case cs on channel c without blocking. For an unbuffered channel the
 * lock of c must be held; a buffered ring needs no lock. Returns true when the
 * case fired: cs->result is set, cs->msg is the received message (recv) or
 * NULL when taken (send); *f says whom to wake after unlocking. */
static bool try_case(lc_chan *c, lc_case *cs, fired *f)
{
    bool last = cs->op == LC__CASE_SEND_LAST;
    if (c->net != NULL) {
        if (cs->op == LC_CASE_RECV)
            return false; /* a network Sender has no local receiving side */
        /* the last message: it and the end in one frame (the stream takes
         * nothing after it) */
        int r = last && c->net->try_send_last != NULL ? c->net->try_send_last(c->net_ctx, cs->msg)
                                                      : c->net->try_send(c->net_ctx, cs->msg);
        if (r == LC__WOULD_BLOCK)
            return false;
        cs->result = r;
        if (r == 0) {
            cs->msg = NULL;
            if (last)
                f->closed = c;
        }
        return true;
    }
    if (c->cap > 0) {
        if (cs->op != LC_CASE_RECV) {
            int r = ring_push_ex(c, cs->msg, last);
            if (r == RING_WOULD_BLOCK)
                return false;
            cs->result = r == RING_OK ? 0 : LC_ECLOSED;
            if (r == RING_OK) {
                cs->msg = NULL;
                f->changed = c;
                f->pushed = true;
                if (last)
                    f->closed = c;
            }
            return true;
        }
        lc_msg *m = NULL;
        int r = ring_pop(c, &m);
        if (r == RING_WOULD_BLOCK)
            return false;
        cs->msg = m;
        cs->result = r == RING_OK ? 0 : end_result(c);
        if (r == RING_OK) {
            f->changed = c;
            f->pushed = false;
        }
        return true;
    }
    if (cs->op != LC_CASE_RECV) {
        if (c->closed || c->rx_gone) {
            cs->result = LC_ECLOSED;
            return true;
        }
        sudog *sg = q_claim(&c->recvq);
        if (sg == NULL)
            return false;
        sg->msg = cs->msg;
        sg->result = 0;
        f->wake = sg->w;
        cs->msg = NULL;
        cs->result = 0;
        if (last) {
            c->closed = true; /* with the hand-over: no other send completes */
            f->closed = c;
        }
        poll_update(c);
        return true;
    }
    /* (a closed channel's senders are woken with LC_ECLOSED, or about to be:
     * close_finish; once receivers are gone none is queued) */
    sudog *sg = c->closed ? NULL : q_claim(&c->sendq);
    if (sg != NULL) {
        cs->msg = sg->msg;
        cs->result = 0;
        sg->result = 0;
        f->wake = sg->w;
        if (sg->last) {
            c->closed = true;
            f->closed = c;
        }
        poll_update(c);
        return true;
    }
    /* rx_gone: abandoned (lc__receiver_abandon; close_err is its error), or
     * the last Receiver released (nobody receives): no send completes any
     * more, so a receive ends as on a closed channel. Looking at closed
     * alone, a receive on an abandoned channel waited for ever. */
    if (c->closed || c->rx_gone) {
        cs->msg = NULL;
        cs->result = end_result(c);
        return true;
    }
    return false;
}

static void close_finish(lc_chan *c);

static void after_fired(const fired *f)
{
    if (f->wake)
        waiter_wake(f->wake);
    if (f->changed)
        ring_changed(f->changed, f->pushed);
    if (f->closed)
        close_finish(f->closed);
}

/* ---- deadlines ----------------------------------------------------------- */

/*
 * A call's deadline is taken once, when it starts, as an absolute
 * CLOCK_MONOTONIC time in ns (-1: none; 0: a zero timeout, try once without
 * reading the clock), and every stage waits only until it. Each stage
 * starting its own timeout_ms made a network lc_recv wait up to twice it:
 * the time spent reading the carrier (feed_and_try) before reading paused,
 * then the whole timeout again in select_wait (found by a review helper,
 * test_recv_timeout_counts_time_spent_reading).
 */
static int64_t deadline_of(int64_t timeout_ms)
{
    if (timeout_ms <= 0)
        return timeout_ms < 0 ? -1 : 0;
    return lc__deadline_ns(mono_ns(), timeout_ms);
}

static struct timespec ns_timespec(int64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };
    return ts;
}

/* ---- select (and, with one case, send and receive) ----------------------- */

static uint64_t rand_next(void)
{
    static _Thread_local uint64_t state;
    if (state == 0) {
        state = ((uint64_t)mono_ns() * 0x9E3779B97F4A7C15ull) ^ (uint64_t)(uintptr_t)&state;
        if (state == 0)
            state = 1;
    }
    /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}

static int cmp_chan(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (lc_chan *const *)a, y = (uintptr_t) * (lc_chan *const *)b;
    return (x > y) - (x < y);
}

static void lock_all(lc_chan **locks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pthread_mutex_lock(&locks[i]->mu);
}

static void unlock_all(lc_chan **locks, size_t n)
{
    for (size_t i = n; i-- > 0;)
        pthread_mutex_unlock(&locks[i]->mu);
}

/*
 * A network Sender's operations (its try_send, and its writability, which
 * poll_update asks for) take its session's locks, and the session takes
 * channel locks under those: it claims a reply channel's feeder while it
 * writes the message that carries it. So they are never called with other
 * channels' locks held. A select that held a reply channel's lock (a receive
 * case on it) while sending a message carrying that channel's Sender on a
 * network Sender locked it twice and hung for good; with two threads the
 * same orders crossed.
 */
static void poll_update_unless_net(lc_chan **locks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (locks[i]->net == NULL)
            poll_update(locks[i]);
}

/* The network Senders' pollable fds, each under its own lock alone; after
 * unlock_all. */
static void poll_update_nets(lc_chan **locks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        lc_chan *c = locks[i];
        if (c->net == NULL || !atomic_load_explicit(&c->polled, memory_order_relaxed))
            continue;
        pthread_mutex_lock(&c->mu);
        poll_update(c);
        pthread_mutex_unlock(&c->mu);
    }
}

/*
 * The blocking core. `order` lists the active cases (non-NULL channel) in the
 * order to try them; `locks` the distinct channels sorted by address (the
 * global lock order that keeps concurrent selects deadlock-free); `sgs` one
 * sudog per case index.
 *
 * Each round: with every lock held, try the cases in order; if none fires,
 * queue a sudog on every channel, unlock, re-check the buffered rings (their
 * operations do not take the lock, so a change may have slipped in) and
 * sleep. A waker either completed an unbuffered operation for us (done) or
 * told us a ring changed (retry that case first, then another round).
 */
static int select_wait(lc_case *cases, const size_t *order, size_t active, lc_chan **locks,
                       size_t nlocks, sudog *sgs, int64_t deadline, lc_chan *feed_check)
{
    struct timespec dl = ns_timespec(deadline > 0 ? deadline : 0);
    for (;;) {
        lock_all(locks, nlocks);
        /* in order; a network Sender's case with the locks dropped (see
         * poll_update_unless_net), after which the cases tried before it
         * are tried again under the locks: a partner that came to an
         * unbuffered channel meanwhile found no sudog of ours to take */
        bool dropped = false;
        for (int pass = 0; pass < 2; pass++) {
            for (size_t k = 0; k < active; k++) {
                size_t i = order[k];
                lc_chan *c = case_chan(&cases[i]);
                fired f = { 0 };
                if (c->net != NULL) {
                    if (pass > 0 || cases[i].op == LC_CASE_RECV)
                        continue; /* (a network Sender has no receiving side) */
                    unlock_all(locks, nlocks);
                    if (try_case(c, &cases[i], &f)) {
                        after_fired(&f);
                        return (int)i;
                    }
                    lock_all(locks, nlocks);
                    dropped = true;
                    continue;
                }
                if (try_case(c, &cases[i], &f)) {
                    unlock_all(locks, nlocks);
                    after_fired(&f);
                    return (int)i;
                }
            }
            if (!dropped)
                break;
        }
        if (deadline == 0 || (deadline > 0 && mono_ns() >= deadline)) {
            /* a network Sender's writability is not pushed to its pollable
             * fd when it goes (a window spent): refresh it now that a try
             * has found it gone, or a poll loop would spin on it */
            unlock_all(locks, nlocks);
            poll_update_nets(locks, nlocks);
            return LC_ETIMEDOUT;
        }

        waiter w;
        waiter_init(&w);
        bool any_buffered = false;
        for (size_t k = 0; k < active; k++) {
            size_t i = order[k];
            sudog *sg = &sgs[i];
            memset(sg, 0, sizeof *sg);
            sg->w = &w;
            sg->chan = case_chan(&cases[i]);
            sg->case_index = (int)i;
            sg->is_send = cases[i].op != LC_CASE_RECV;
            sg->last = cases[i].op == LC__CASE_SEND_LAST;
            sg->msg = sg->is_send ? cases[i].msg : NULL;
            q_push(queue_of(sg), sg);
            any_buffered |= notify_based(sg->chan);
        }
        /* a feeder claimed since passive_begin looked at recvq before we
         * were in it (same lock: one of us sees the other) */
        bool tell = feed_check != NULL && feed_check->feed != NULL;
        poll_update_unless_net(locks, nlocks);
        unlock_all(locks, nlocks);
        poll_update_nets(locks, nlocks);
        if (tell) {
            mark_passive(feed_check); /* what the claim does for a queued receiver */
            feed_check = NULL;
        }

        bool ready = false;
        if (any_buffered) {
            atomic_thread_fence(memory_order_seq_cst);
            for (size_t k = 0; k < active && !ready; k++) {
                lc_case *cs = &cases[order[k]];
                lc_chan *c = case_chan(cs);
                ready = notify_based(c) && case_ready(c, cs->op == LC_CASE_RECV);
            }
        }
        bool claimed = !ready && waiter_wait(&w, deadline > 0 ? &dl : NULL);

        if (claimed && active == 1) {
            /* the claimer dequeued our only sudog and refreshed the fds:
             * skip re-locking, which would bounce the lock line back */
            goto claimed_done;
        }
        lock_all(locks, nlocks);
        if (!claimed && !waiter_cancel(&w))
            claimed = true; /* a channel got to us first: honour it */
        for (size_t k = 0; k < active; k++)
            q_remove(queue_of(&sgs[order[k]]), &sgs[order[k]]);
        poll_update_unless_net(locks, nlocks);
        unlock_all(locks, nlocks);
        poll_update_nets(locks, nlocks);
        if (!claimed)
            continue; /* re-checked readiness or the deadline: next round decides */

        waiter_wait(&w, NULL); /* the claimer may still be filling the sudog */
    claimed_done:;
        int idx = atomic_load_explicit(&w.selected, memory_order_acquire);
        sudog *sg = &sgs[idx];
        lc_case *cs = &cases[idx];
        if (sg->result == RES_NOTIFY) {
            /* a ring changed: try that case first, it was meant for us */
            fired f = { 0 };
            if (try_case(sg->chan, cs, &f)) {
                after_fired(&f);
                return idx;
            }
            continue;
        }
        cs->result = sg->result;
        if (sg->is_send) {
            if (sg->result == 0)
                cs->msg = NULL;
        } else {
            cs->msg = sg->msg;
        }
        return idx;
    }
}

#define SELECT_STACK_CASES 16

LC_API int lc_select(lc_case *cases, size_t n, int64_t timeout_ms)
{
    if ((cases == NULL && n > 0) || n > INT_MAX)
        return LC_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (cases[i].op != LC_CASE_SEND && cases[i].op != LC_CASE_RECV)
            return LC_EINVAL;
        if (cases[i].op == LC_CASE_SEND && case_chan(&cases[i]) != NULL && cases[i].msg == NULL)
            return LC_EINVAL;
    }
    int64_t deadline = deadline_of(timeout_ms);

    /* Scratch: poll order (random), lock order (by address, deduplicated), sudogs. */
    size_t stack_order[SELECT_STACK_CASES];
    lc_chan *stack_locks[SELECT_STACK_CASES];
    sudog stack_sg[SELECT_STACK_CASES];
    size_t *order = stack_order;
    lc_chan **locks = stack_locks;
    sudog *sgs = stack_sg;
    void *heap = NULL;
    if (n > SELECT_STACK_CASES) {
        heap = malloc(n * (sizeof *order + sizeof *locks + sizeof *sgs));
        if (heap == NULL)
            return LC_ENOMEM;
        sgs = heap;
        order = (size_t *)(sgs + n);
        locks = (lc_chan **)(order + n);
    }

    size_t active = 0, nlocks = 0;
    for (size_t i = 0; i < n; i++) {
        lc_chan *c = case_chan(&cases[i]);
        if (c == NULL)
            continue;
        /* inside-out Fisher-Yates: a uniform permutation of the active cases */
        size_t j = (size_t)(rand_next() % (active + 1));
        order[active] = order[j];
        order[j] = i;
        active++;
        locks[nlocks++] = c;
    }
    qsort(locks, nlocks, sizeof *locks, cmp_chan);
    size_t uniq = 0;
    for (size_t i = 0; i < nlocks; i++)
        if (uniq == 0 || locks[uniq - 1] != locks[i])
            locks[uniq++] = locks[i];
    nlocks = uniq;

    int ret;
    if (active == 0) {
        if (timeout_ms < 0) {
            ret = LC_EINVAL; /* select {} with no channel would block forever: a bug */
        } else {
            /* no channel at all: wait out the timeout, like a lone timer case */
            struct timespec dl = ns_timespec(deadline);
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL) == EINTR)
                ;
            ret = LC_ETIMEDOUT;
        }
    } else {
        /* A network Sender's send case waits for a window that only reading
         * the carrier opens, as a receive case on a fed channel waits for
         * what it brings. (The send case used to recover only because a
         * reading thread's flush woke it to try again, and the failed try
         * re-armed the carrier.) */
        if (timeout_ms != 0)
            for (size_t i = 0; i < n; i++) {
                lc_chan *c = case_chan(&cases[i]);
                if (c != NULL && (cases[i].op == LC_CASE_RECV || c->net != NULL))
                    mark_passive(c);
            }
        ret = select_wait(cases, order, active, locks, nlocks, sgs, deadline, NULL);
        if (ret == LC_ETIMEDOUT && timeout_ms == 0)
            for (size_t i = 0; i < n; i++)
                if (cases[i].op == LC_CASE_RECV && case_chan(&cases[i]) != NULL)
                    poll_missed(case_chan(&cases[i]));
    }
    free(heap);
    return ret;
}

/*
 * A receive on a ring that a session fills: rather than sleeping until the
 * engine thread has read the carrier and then being woken by it (two thread
 * wake-ups), the receiving thread reads the carrier itself when nobody else
 * does, until deadline (absolute ns, -1: none; now: the clock just read).
 * Returns 1 when the case fired, 0 to fall back to waiting, or LC_ETIMEDOUT.
 */
static int feed_and_try(lc_chan *c, lc_case *cs, int64_t now, int64_t deadline)
{
    for (;;) {
        pthread_mutex_lock(&c->mu);
        const lc__feeder_ops *ops = c->feed;
        void *ctx = c->feed_ctx;
        if (ops)
            ops->retain(ctx);
        pthread_mutex_unlock(&c->mu);
        if (ops == NULL)
            return 0;
        bool drove = ops->drive(ctx, c, now, deadline);
        ops->release(ctx);
        fired f = { 0 };
        if (try_case(c, cs, &f)) {
            after_fired(&f);
            return 1;
        }
        if (!drove)
            return 0;
        now = mono_ns();
        if (deadline >= 0 && now >= deadline)
            return LC_ETIMEDOUT;
    }
}

bool lc__chan_recv_ready(lc_chan *c)
{
    return ring_ready(c, true);
}

static void feeder_set(lc_chan *c, const lc__feeder_ops *ops, void *ctx);
static void feeder_told(lc_chan *c, const lc__feeder_ops *ops, void *ctx);

void lc__receiver_set_feeder(lc_receiver *r, const lc__feeder_ops *ops, void *ctx)
{
    pthread_mutex_lock(&r->c->mu);
    feeder_set(r->c, ops, ctx);
    pthread_mutex_unlock(&r->c->mu);
    feeder_told(r->c, ops, ctx);
}

void lc__sender_clear_feeder(lc_sender *s)
{
    pthread_mutex_lock(&s->c->mu);
    s->c->feed = NULL;
    s->c->feed_ctx = NULL;
    pthread_mutex_unlock(&s->c->mu);
}

bool lc__sender_claim_feeder(lc_sender *s, const lc__feeder_ops *ops, void *ctx, bool *passive)
{
    /* (cap and net never change: a network Sender's lock is not taken here,
     * under the caller's session locks, see poll_update_unless_net) */
    *passive = false;
    if (s->c->net != NULL)
        return false;
    pthread_mutex_lock(&s->c->mu);
    bool ok = s->c->feed == NULL;
    if (ok)
        feeder_set(s->c, ops, ctx);
    /* a receiver that waits already began without a feeder to tell
     * (waiting): it counts as passive (a thread that blocks on the reply
     * channel before another sends the request) */
    bool waited = ok && atomic_load_explicit(&s->c->recvq.len, memory_order_relaxed) > 0;
    pthread_mutex_unlock(&s->c->mu);
    /* not feeder_told: the caller holds its own locks; it calls passive */
    *passive = ok && (waited || atomic_load(&s->c->passive));
    return ok;
}

void lc__sender_release_feeder(lc_sender *s, void *ctx)
{
    pthread_mutex_lock(&s->c->mu);
    if (s->c->feed_ctx == ctx) {
        s->c->feed = NULL;
        s->c->feed_ctx = NULL;
    }
    pthread_mutex_unlock(&s->c->mu);
}

/*
 * A wait of one case that does not read the carrier the channel depends on
 * (a fed channel's receive that drive could not serve, a network Sender's
 * send out of window): its feeder or session keeps the carrier watched
 * while it lasts. A thread that reads its own channel leaves the carrier
 * unwatched when it drained it (lazy re-arming, session/read.c); a receive
 * that waited beside it saw its message only at the backstop, ~4 ms later
 * (test_recv_beside_a_reading_thread_is_woken_at_once).
 */
typedef struct passive_wait {
    const lc__feeder_ops *feed; /* retained */
    const lc__net_ops *net;     /* the caller's Sender keeps it */
    void *ctx;
} passive_wait;

/* c's feeder, retained, if it wants to hear of waits (its ctx in *ctx), or
 * NULL. No lock for a channel that never had a feeder (fed). */
static const lc__feeder_ops *waiting_feeder(lc_chan *c, void **ctx)
{
    if (!atomic_load_explicit(&c->fed, memory_order_relaxed))
        return NULL;
    pthread_mutex_lock(&c->mu);
    const lc__feeder_ops *ops = c->feed;
    *ctx = c->feed_ctx;
    if (ops != NULL && ops->waiting != NULL)
        ops->retain(*ctx);
    else
        ops = NULL;
    pthread_mutex_unlock(&c->mu);
    return ops;
}

static void passive_begin(lc_chan *c, bool recv, passive_wait *pw)
{
    pw->feed = NULL;
    pw->net = NULL;
    pw->ctx = NULL;
    if (c->net != NULL) {
        if (!recv && c->net->waiting != NULL) {
            pw->net = c->net;
            pw->ctx = c->net_ctx;
            pw->net->waiting(pw->ctx, 1);
        }
        return;
    }
    if (!recv)
        return;
    void *ctx = NULL;
    const lc__feeder_ops *ops = waiting_feeder(c, &ctx);
    if (ops != NULL) {
        pw->feed = ops;
        pw->ctx = ctx;
        ops->waiting(ctx, 1);
    }
}

static void passive_end(passive_wait *pw)
{
    if (pw->net != NULL)
        pw->net->waiting(pw->ctx, -1);
    if (pw->feed != NULL) {
        pw->feed->waiting(pw->ctx, -1);
        pw->feed->release(pw->ctx);
    }
}

/* A receive polled with timeout 0 found nothing on c: if a feeder fills it,
 * what comes next must reach it without the caller reading (a poll loop
 * after a thread's own read left the carrier unwatched saw its message only
 * at the backstop: test_polled_recv_sees_messages_at_once). */
static void poll_missed(lc_chan *c)
{
    if (c->net != NULL)
        return;
    void *ctx = NULL;
    const lc__feeder_ops *ops = waiting_feeder(c, &ctx);
    if (ops != NULL) {
        ops->waiting(ctx, 0);
        ops->release(ctx);
    }
}

/* One case: the lock-free attempt first, then the general path. */
static int single_case(lc_case *cs, int64_t timeout_ms)
{
    lc_chan *c = case_chan(cs);
    int64_t deadline;
    if (notify_based(c)) {
        fired f = { 0 };
        if (try_case(c, cs, &f)) {
            after_fired(&f);
            return 0;
        }
        if (timeout_ms == 0) {
            if (c->net != NULL && atomic_load_explicit(&c->polled, memory_order_relaxed)) {
                /* as in select_wait: the pollable fd learns that it is not
                 * writable any more */
                pthread_mutex_lock(&c->mu);
                poll_update(c);
                pthread_mutex_unlock(&c->mu);
            }
            if (cs->op == LC_CASE_RECV)
                poll_missed(c);
            return LC_ETIMEDOUT;
        }
        int64_t now = mono_ns();
        deadline = lc__deadline_ns(now, timeout_ms); /* (-1, or after now: never 0) */
        if (cs->op == LC_CASE_RECV && c->cap > 0) {
            int fr = feed_and_try(c, cs, now, deadline);
            if (fr != 0)
                return fr < 0 ? fr : 0;
            now = mono_ns();
        }
        /* Poll the ring a little before registering as a waiter: a partner
         * that is busy producing (or consuming) then never needs the lock to
         * wake us. bench_chan's buffered one-way figure depends on this. */
        int64_t until = now + LC_SPIN_NS;
        bool recv = cs->op == LC_CASE_RECV;
        for (unsigned i = 1;; i++) {
            cpu_relax();
            if (case_ready(c, recv) && try_case(c, cs, &f)) {
                after_fired(&f);
                return 0;
            }
            if ((i & 15) == 0 && mono_ns() >= until)
                break;
        }
    } else {
        deadline = deadline_of(timeout_ms);
    }
    size_t order = 0;
    sudog sg;
    passive_wait pw;
    if (deadline != 0)
        passive_begin(c, cs->op == LC_CASE_RECV, &pw);
    lc_chan *fc = deadline != 0 && cs->op == LC_CASE_RECV && c->net == NULL && pw.feed == NULL ? c : NULL;
    int rc = select_wait(cs, &order, 1, &c, 1, &sg, deadline, fc);
    if (deadline != 0)
        passive_end(&pw);
    else if (rc == LC_ETIMEDOUT && cs->op == LC_CASE_RECV)
        poll_missed(c); /* (unbuffered) */
    return rc < 0 ? rc : 0;
}

LC_API int lc_send(lc_sender *s, lc_msg *m, int64_t timeout_ms)
{
    if (s == NULL || m == NULL)
        return LC_EINVAL;
    lc_case cs = { .op = LC_CASE_SEND, .sender = s, .msg = m };
    int rc = single_case(&cs, timeout_ms);
    return rc < 0 ? rc : cs.result;
}

LC_API int lc_send_last(lc_sender *s, lc_msg *m, int64_t timeout_ms)
{
    if (s == NULL || m == NULL)
        return LC_EINVAL;
    lc_case cs = { .op = LC__CASE_SEND_LAST, .sender = s, .msg = m };
    int rc = single_case(&cs, timeout_ms);
    return rc < 0 ? rc : cs.result;
}

int lc__send_batch(lc_sender *s, lc_msg **ms, size_t n, size_t *taken)
{
    *taken = 0;
    lc_chan *c = s->c;
    if (c->cap == 0 || c->net != NULL)
        return LC_EINVAL;
    int rc = 0;
    size_t i = 0;
    for (; i < n; i++) {
        int r = ring_push(c, ms[i]);
        if (r != RING_OK) {
            rc = r == RING_WOULD_BLOCK ? LC_ETIMEDOUT : LC_ECLOSED;
            break;
        }
    }
    *taken = i;
    if (i > 0)
        ring_changed_n(c, true, i);
    return rc;
}

LC_API int lc_recv(lc_receiver *r, lc_msg **m, int64_t timeout_ms)
{
    if (r == NULL || m == NULL)
        return LC_EINVAL;
    lc_case cs = { .op = LC_CASE_RECV, .receiver = r };
    int rc = single_case(&cs, timeout_ms);
    *m = rc == 0 ? cs.msg : NULL;
    return rc < 0 ? rc : cs.result;
}

/* ---- passive waits on fed channels --------------------------------------- */

/* Marks c as waited on without drive and tells its feeder, once. Cheap after
 * the first time (one load): lc_select calls it for every receive case. */
static void mark_passive(lc_chan *c)
{
    if (atomic_load_explicit(&c->passive, memory_order_relaxed))
        return;
    if (c->net != NULL) {
        /* (the caller's Sender keeps the ops' ctx; no channel lock: they
         * take the session's, see poll_update_unless_net) */
        if (!atomic_exchange(&c->passive, true) && c->net->passive != NULL)
            c->net->passive(c->net_ctx);
        return;
    }
    pthread_mutex_lock(&c->mu);
    bool first = !atomic_exchange(&c->passive, true);
    const lc__feeder_ops *ops = first ? c->feed : NULL;
    void *ctx = c->feed_ctx;
    if (ops)
        ops->retain(ctx);
    pthread_mutex_unlock(&c->mu);
    if (ops) {
        ops->passive(ctx);
        ops->release(ctx);
    }
}

/* c->mu held; the caller then tells the feeder (feeder_told) unlocked. */
static void feeder_set(lc_chan *c, const lc__feeder_ops *ops, void *ctx)
{
    c->feed = ops;
    c->feed_ctx = ctx;
    if (ops != NULL)
        atomic_store_explicit(&c->fed, true, memory_order_relaxed);
}

/* A feeder set on a channel already waited on passively learns it now. */
static void feeder_told(lc_chan *c, const lc__feeder_ops *ops, void *ctx)
{
    if (ops != NULL && atomic_load(&c->passive))
        ops->passive(ctx);
}

/* ---- callback operations (for the session layer) ------------------------- */

/*
 * An asynchronous send or receive: the same sudog as a blocked call, but the
 * waker runs the continuation instead of waking a thread. On a notify-based
 * channel (ring, network Sender) the continuation retries the operation and
 * re-registers when it lost the race; the callback runs exactly once, with
 * the final result.
 */
struct lc_async {
    waiter w;
    sudog sg;
    lc_case cs;
    lc_async_cb cb;
    void *ctx;
};

/* Registers op on its channel, or completes it if it became possible in the
 * meantime. Returns true when it completed now (result in op->cs). Once it
 * returns false the op belongs to whoever claims it: the caller must not
 * touch it again. That is why the eventcount re-check of a ring happens here
 * with the lock still held (a claimer needs the lock), not after unlocking as
 * a blocked thread may do. */
static bool async_register(struct lc_async *op, fired *f)
{
    lc_chan *c = case_chan(&op->cs);
    for (;;) {
        /* a network Sender is tried with no channel lock held (see
         * poll_update_unless_net): a send that ends its session wakes the
         * channel's senders, under this very lock */
        if (c->net != NULL && try_case(c, &op->cs, f))
            return true;
        pthread_mutex_lock(&c->mu);
        if (c->net == NULL && try_case(c, &op->cs, f)) {
            pthread_mutex_unlock(&c->mu);
            return true;
        }
        waiter_init(&op->w);
        op->w.async = op;
        memset(&op->sg, 0, sizeof op->sg);
        op->sg.w = &op->w;
        op->sg.chan = c;
        op->sg.is_send = op->cs.op != LC_CASE_RECV;
        op->sg.msg = op->sg.is_send ? op->cs.msg : NULL;
        q_push(queue_of(&op->sg), &op->sg);
        if (notify_based(c)) {
            atomic_thread_fence(memory_order_seq_cst);
            if (case_ready(c, op->cs.op == LC_CASE_RECV)) {
                q_remove(queue_of(&op->sg), &op->sg); /* nobody could claim it: we hold the lock */
                pthread_mutex_unlock(&c->mu);
                continue;
            }
        }
        poll_update(c);
        pthread_mutex_unlock(&c->mu);
        return false;
    }
}

static void async_fire(struct lc_async *op)
{
    fired f = { 0 };
    if (op->sg.result == RES_NOTIFY) {
        /* something changed: retry, or wait again */
        if (!async_register(op, &f))
            return;
    } else {
        op->cs.result = op->sg.result;
        if (op->sg.is_send) {
            if (op->sg.result == 0)
                op->cs.msg = NULL;
        } else {
            op->cs.msg = op->sg.msg;
        }
    }
    after_fired(&f);
    /* freed after the callback: a cancel serialised with the callback (the
     * session holds a lock the callback takes) never sees freed memory */
    op->cb(op->ctx, op->cs.result, op->sg.is_send ? NULL : op->cs.msg);
    free(op);
}

static int async_start(lc_case *cs, lc_msg **m, lc_async_cb cb, void *ctx, lc_async **out)
{
    *out = NULL;
    struct lc_async *op = malloc(sizeof *op);
    if (op == NULL)
        return LC_ENOMEM;
    op->cs = *cs;
    op->cb = cb;
    op->ctx = ctx;
    *out = op; /* before it is visible: the callback may run before we return */
    fired f = { 0 };
    if (async_register(op, &f)) {
        *out = NULL;
        after_fired(&f);
        int result = op->cs.result;
        if (m)
            *m = op->cs.msg;
        free(op);
        return result;
    }
    return LC__PENDING;
}

int lc__send_async(lc_sender *s, lc_msg *m, lc_async_cb cb, void *ctx, lc_async **op)
{
    if (s == NULL || m == NULL || cb == NULL || op == NULL)
        return LC_EINVAL;
    lc_case cs = { .op = LC_CASE_SEND, .sender = s, .msg = m };
    return async_start(&cs, NULL, cb, ctx, op);
}

int lc__recv_async(lc_receiver *r, lc_msg **m, lc_async_cb cb, void *ctx, lc_async **op)
{
    if (r == NULL || m == NULL || cb == NULL || op == NULL)
        return LC_EINVAL;
    *m = NULL;
    mark_passive(r->c);
    lc_case cs = { .op = LC_CASE_RECV, .receiver = r };
    return async_start(&cs, m, cb, ctx, op);
}

bool lc__async_cancel(lc_async *op)
{
    /* the case's channel, not op->sg.chan: a retry after a notify
     * (async_fire) rewrites sg under the channel's lock, which we do not
     * hold yet (a data race TSan showed, found by a review helper) */
    lc_chan *c = case_chan(&op->cs);
    pthread_mutex_lock(&c->mu);
    bool cancelled = waiter_cancel(&op->w);
    if (cancelled) {
        q_remove(queue_of(&op->sg), &op->sg);
        poll_update(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (cancelled)
        free(op);
    return cancelled;
}

/* ---- room watches (for the session layer) -------------------------------- */

/* Would a watch for `need` free slots fire now? Also once the ring is marked
 * (closed, or nobody receives): the filler's next send then fails at once. */
static bool room_ok(lc_chan *c, size_t need)
{
    return ring_marked(c) || c->cap - ring_len(c) >= need;
}

/* Fires the room watch when its condition holds; whoever takes it out of the
 * slot runs it, exactly once. */
static void room_check(lc_chan *c)
{
    struct lc_async *op = atomic_load_explicit(&c->room_op, memory_order_acquire);
    if (op == NULL || !room_ok(c, atomic_load_explicit(&c->room_need, memory_order_relaxed)))
        return;
    if (!atomic_compare_exchange_strong_explicit(&c->room_op, &op, NULL, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return;
    op->cb(op->ctx, ring_marked(c) ? LC_ECLOSED : 0, NULL);
    free(op);
}

int lc__room_watch(lc_sender *s, size_t room, lc_async_cb cb, void *ctx, lc_async **out)
{
    if (s == NULL || cb == NULL || out == NULL)
        return LC_EINVAL;
    *out = NULL;
    lc_chan *c = s->c;
    if (c->cap == 0 || c->net != NULL)
        return LC_EINVAL;
    if (room == 0)
        room = 1;
    if (room > c->cap)
        room = c->cap;
    if (room_ok(c, room))
        return 0;
    if (atomic_load_explicit(&c->room_op, memory_order_acquire) != NULL)
        return LC_EINVAL; /* one watch per channel (one filler: no race here) */
    struct lc_async *op = malloc(sizeof *op);
    if (op == NULL)
        return LC_ENOMEM;
    op->cb = cb;
    op->ctx = ctx;
    *out = op; /* before it is visible: it may fire before we return */
    atomic_store_explicit(&c->room_need, room, memory_order_relaxed);
    struct lc_async *expected = NULL;
    if (!atomic_compare_exchange_strong_explicit(&c->room_op, &expected, op, memory_order_seq_cst,
                                                 memory_order_relaxed)) {
        *out = NULL;
        free(op);
        return LC_EINVAL; /* one watch per channel */
    }
    /* pairs with the fence of ring_changed: a receive that made room either
     * sees the watch or is seen by this re-check */
    atomic_thread_fence(memory_order_seq_cst);
    if (room_ok(c, room)) {
        expected = op;
        if (atomic_compare_exchange_strong_explicit(&c->room_op, &expected, NULL,
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            *out = NULL;
            free(op);
            return 0;
        }
        /* a receiver took it and is firing it */
    }
    return LC__PENDING;
}

bool lc__room_cancel(lc_sender *s, lc_async *op)
{
    struct lc_async *expected = op;
    if (!atomic_compare_exchange_strong_explicit(&s->c->room_op, &expected, NULL,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return false;
    free(op);
    return true;
}

/* ---- network Senders ----------------------------------------------------- */

lc_sender *lc__net_sender_new(const lc__net_ops *ops, void *ctx, lc_chan **chan)
{
    lc_chan *c = chan_alloc();
    lc_sender *s = malloc(sizeof *s);
    if (c == NULL || s == NULL) {
        chan_free(c);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->net = ops;
    c->net_ctx = ctx;
    c->recv_efd = c->send_efd = -1;
    c->rx_gone = true; /* there is no local receiving end */
    atomic_init(&c->refs, 1);
    atomic_init(&s->refs, 1);
    s->c = c;
    if (chan)
        *chan = c;
    return s;
}

void lc__chan_retain(lc_chan *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void lc__chan_release(lc_chan *c)
{
    chan_unref(c);
}

void lc__chan_wake_senders(lc_chan *c)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&c->sendq.len, memory_order_relaxed) == 0 &&
        !atomic_load_explicit(&c->polled, memory_order_relaxed))
        return;
    pthread_mutex_lock(&c->mu);
    wake_all_locked(c, &c->sendq, RES_NOTIFY);
    pthread_mutex_unlock(&c->mu);
}

void *lc__net_sender_ctx(lc_sender *s, const lc__net_ops *ops)
{
    return (s != NULL && s->c->net == ops) ? s->c->net_ctx : NULL;
}

/* ---- pollable fds -------------------------------------------------------- */

static int chan_pollfd(lc_chan *c, bool recv_side)
{
    pthread_mutex_lock(&c->mu);
    int *efd = recv_side ? &c->recv_efd : &c->send_efd;
    if (*efd < 0) {
        int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0) {
            int err = -errno;
            pthread_mutex_unlock(&c->mu);
            return err;
        }
        *efd = fd;
        if (recv_side)
            c->recv_sig = false;
        else
            c->send_sig = false;
        /* from now on every ring operation refreshes the fds (ring_changed);
         * the seq_cst store pairs with its fence so none is missed */
        atomic_store_explicit(&c->polled, true, memory_order_seq_cst);
        poll_update(c);
    }
    int fd = *efd;
    pthread_mutex_unlock(&c->mu);
    if (recv_side || c->net != NULL)
        mark_passive(c); /* whoever polls the fd does not read the carrier (nor
                          * get a network Sender's window opened by it) */
    return fd;
}

LC_API int lc_receiver_pollfd(lc_receiver *r)
{
    return r ? chan_pollfd(r->c, true) : LC_EINVAL;
}

LC_API int lc_sender_pollfd(lc_sender *s)
{
    return s ? chan_pollfd(s->c, false) : LC_EINVAL;
}

LC_API size_t lc_receiver_queued(lc_receiver *r)
{
    if (r == NULL || r->c->cap == 0)
        return 0;
    return ring_len(r->c);
}

size_t lc__sender_queued(lc_sender *s)
{
    if (s == NULL || s->c->cap == 0)
        return 0;
    return ring_len(s->c);
}

/* ---- introspection for tests --------------------------------------------- */

size_t lc__chan_waiting(lc_sender *s, lc_receiver *r, bool senders)
{
    lc_chan *c = s ? s->c : r ? r->c : NULL;
    if (c == NULL)
        return 0;
    pthread_mutex_lock(&c->mu);
    size_t n = atomic_load(senders ? &c->sendq.len : &c->recvq.len);
    pthread_mutex_unlock(&c->mu);
    return n;
}


/*
 * chan.c - in-memory channels and select (src/core), the bottom of the stack
 * that every channel end shares.
 *
 * The algorithm is Go's (runtime/chan.go, runtime/select.go), rewritten for C:
 * a channel has a ring buffer and two wait queues of "sudogs" (one per blocked
 * send or receive, living on the blocked thread's stack). Whoever finds a
 * matching waiter hands the message over directly and wakes it; a waiter is
 * claimed with one CAS, which is what lets one select wait on many channels
 * while exactly one case fires. Waking uses a futex after a short spin: a
 * cross-core wake-up costs ~20 us here, so a partner that answers within a
 * few microseconds is caught spinning instead.
 */
#include "chan_internal.h"
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

/* One blocked call (lc_send, lc_recv or lc_select): lives on its stack. */
typedef struct waiter {
    _Atomic uint32_t state;  /* W_*: the futex word */
    _Atomic int selected;    /* SEL_FREE until a channel claims one case */
} waiter;

/* One case of a blocked call, queued on one channel. */
typedef struct sudog {
    struct sudog *next, *prev;
    waiter *w;
    struct lc_chan *chan;
    lc_msg *msg;      /* send: the message offered; recv: filled by the waker */
    int case_index;
    int result;       /* 0, LC_EOF or LC_ECLOSED: set by the waker */
    bool queued;
    bool is_send;
} sudog;

typedef struct sudog_queue {
    sudog *head, *tail;
} sudog_queue;

/* Spin iterations before sleeping in the kernel. Tuned with bench_chan: long
 * enough to catch a partner that answers at once on the other core, short
 * enough not to burn a core when nobody comes. */
#ifndef LC_SPIN_ITERS
#define LC_SPIN_ITERS 2000
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long futex_call(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, FUTEX_BITSET_MATCH_ANY);
}

static void waiter_init(waiter *w)
{
    atomic_init(&w->state, W_WAITING);
    atomic_init(&w->selected, SEL_FREE);
}

/* Claims waiter w for case `index`; false if another case or a timeout got it first. */
static bool waiter_claim(waiter *w, int index)
{
    int expected = SEL_FREE;
    return atomic_compare_exchange_strong_explicit(&w->selected, &expected, index,
                                                   memory_order_acq_rel, memory_order_acquire);
}

/* Wakes a claimed waiter. After the exchange the waiter may return and its
 * stack vanish: nothing here touches *w afterwards except the futex syscall,
 * which on a stale address at worst wakes a waiter that re-checks its word. */
static void waiter_wake(waiter *w)
{
    if (atomic_exchange_explicit(&w->state, W_DONE, memory_order_acq_rel) == W_SLEEPING)
        futex_call(&w->state, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Waits until woken (true) or the absolute CLOCK_MONOTONIC deadline passes
 * (false). deadline NULL = forever. */
static bool waiter_wait(waiter *w, const struct timespec *deadline)
{
    for (int i = 0; i < LC_SPIN_ITERS; i++) {
        if (atomic_load_explicit(&w->state, memory_order_acquire) == W_DONE)
            return true;
        cpu_relax();
    }
    uint32_t expected = W_WAITING;
    if (!atomic_compare_exchange_strong_explicit(&w->state, &expected, W_SLEEPING,
                                                 memory_order_acq_rel, memory_order_acquire))
        return true; /* became W_DONE */
    for (;;) {
        long r = futex_call(&w->state, FUTEX_WAIT_BITSET_PRIVATE, W_SLEEPING, deadline);
        if (atomic_load_explicit(&w->state, memory_order_acquire) == W_DONE)
            return true;
        if (r == -1 && errno == ETIMEDOUT)
            return false;
    }
}

/* ---- channels ------------------------------------------------------------ */

typedef struct lc_chan {
    pthread_mutex_t mu;
    size_t cap;          /* 0 = unbuffered */
    size_t count, head;  /* ring buffer of cap messages */
    lc_msg **buf;
    sudog_queue sendq, recvq;
    bool closed;         /* lc_close called or last Sender released */
    bool rx_gone;        /* last Receiver released: nobody will ever receive */
    _Atomic int refs;    /* one per end object alive */
    /* pollable readiness (lazily created; -1 until asked for) */
    int recv_efd, send_efd;
    bool recv_sig, send_sig;
} lc_chan;

struct lc_sender {
    _Atomic long refs;
    lc_chan *c;
};

struct lc_receiver {
    _Atomic long refs;
    lc_chan *c;
};

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

/* Brings the pollable fds in line with the channel's state. Called with the
 * lock held after every change; costs one branch when nobody asked for fds. */
static void poll_update(lc_chan *c)
{
    if (c->recv_efd >= 0)
        efd_set(c->recv_efd, &c->recv_sig, c->count > 0 || c->sendq.head != NULL || c->closed);
    if (c->send_efd >= 0)
        efd_set(c->send_efd, &c->send_sig,
                c->closed || c->rx_gone || c->count < c->cap || c->recvq.head != NULL);
}

static void chan_unref(lc_chan *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < c->count; i++)
        lc_msg_free(c->buf[(c->head + i) % c->cap]);
    free(c->buf);
    if (c->recv_efd >= 0)
        close(c->recv_efd);
    if (c->send_efd >= 0)
        close(c->send_efd);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

LC_API int lc_pipe(lc_receiver **r, lc_sender **s, size_t capacity)
{
    if (r == NULL || s == NULL || capacity > (SIZE_MAX / sizeof(lc_msg *)))
        return LC_EINVAL;
    *r = NULL;
    *s = NULL;
    lc_chan *c = calloc(1, sizeof *c);
    lc_sender *sn = malloc(sizeof *sn);
    lc_receiver *rc = malloc(sizeof *rc);
    lc_msg **buf = capacity ? malloc(capacity * sizeof *buf) : NULL;
    if (c == NULL || sn == NULL || rc == NULL || (capacity && buf == NULL)) {
        free(c);
        free(sn);
        free(rc);
        free(buf);
        return LC_ENOMEM;
    }
    /* Critical sections are a few dozen instructions: an adaptive mutex spins
     * briefly before sleeping, which bench_chan shows is what contended
     * producers and consumers want. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&c->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    c->cap = capacity;
    c->buf = buf;
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

/* Claims up to `max` waiters of c (receivers first) and records their result
 * for a closed channel; lock held. Returns how many were claimed. */
static size_t claim_for_close(lc_chan *c, waiter **wake, size_t max)
{
    size_t n = 0;
    sudog *sg;
    /* Receivers only wait on an empty buffer: they see end-of-channel. */
    while (n < max && (sg = q_claim(&c->recvq)) != NULL) {
        sg->msg = NULL;
        sg->result = LC_EOF;
        wake[n++] = sg->w;
    }
    while (n < max && (sg = q_claim(&c->sendq)) != NULL) {
        sg->result = LC_ECLOSED; /* the message stays the sender's */
        wake[n++] = sg->w;
    }
    return n;
}

/* Closes c and wakes every waiter, in batches that fit a stack array. A claimed
 * waiter cannot leave before it is woken, and no new waiter can queue on a
 * closed channel, so dropping the lock between batches is safe. */
static int chan_close(lc_chan *c, bool explicit_close)
{
    waiter *wake[64];
    pthread_mutex_lock(&c->mu);
    if (c->closed) {
        pthread_mutex_unlock(&c->mu);
        return explicit_close ? LC_ECLOSED : 0;
    }
    c->closed = true;
    size_t n;
    do {
        n = claim_for_close(c, wake, 64);
        poll_update(c);
        pthread_mutex_unlock(&c->mu);
        for (size_t i = 0; i < n; i++)
            waiter_wake(wake[i]);
        pthread_mutex_lock(&c->mu);
    } while (n == 64);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

LC_API int lc_close(lc_sender *s)
{
    if (s == NULL)
        return LC_EINVAL;
    return chan_close(s->c, true);
}

LC_API void lc_sender_release(lc_sender *s)
{
    if (s == NULL)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    lc_chan *c = s->c;
    free(s);
    chan_close(c, false); /* the last Sender gone: receivers drain, then EOF */
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
    /* Nobody can receive any more: drop what is queued (closing its fds and
     * releasing its channel ends) and fail every blocked sender. */
    pthread_mutex_lock(&c->mu);
    c->rx_gone = true;
    lc_msg *drop = NULL;
    while (c->count > 0) {
        lc_msg *m = c->buf[c->head];
        c->head = (c->head + 1) % c->cap;
        c->count--;
        m->next = drop;
        drop = m;
    }
    waiter *wake[64];
    size_t n;
    sudog *sg;
    do {
        n = 0;
        while (n < 64 && (sg = q_claim(&c->sendq)) != NULL) {
            sg->result = LC_ECLOSED;
            wake[n++] = sg->w;
        }
        poll_update(c);
        pthread_mutex_unlock(&c->mu);
        for (size_t i = 0; i < n; i++)
            waiter_wake(wake[i]);
        pthread_mutex_lock(&c->mu);
    } while (n == 64);
    pthread_mutex_unlock(&c->mu);
    while (drop != NULL) {
        lc_msg *next = drop->next;
        lc_msg_free(drop); /* outside the lock: it may release other channels */
        drop = next;
    }
    chan_unref(c);
}

/* ---- deadlines ----------------------------------------------------------- */

static bool deadline_from(int64_t timeout_ms, struct timespec *ts)
{
    if (timeout_ms < 0)
        return false;
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
    return true;
}

/* ---- the non-blocking attempts, shared by send/recv and select ------------ */

/* Tries to send m on c (lock held). Returns 1 when done (result in *result:
 * 0 = taken, LC_ECLOSED = not taken), 0 when it would block. *wake gets a
 * waiter to wake after unlocking, if any. */
static int try_send_locked(lc_chan *c, lc_msg *m, int *result, waiter **wake)
{
    if (c->closed || c->rx_gone) {
        *result = LC_ECLOSED;
        return 1;
    }
    sudog *sg = q_claim(&c->recvq);
    if (sg != NULL) {
        sg->msg = m;
        sg->result = 0;
        *wake = sg->w;
        *result = 0;
        poll_update(c);
        return 1;
    }
    if (c->count < c->cap) {
        c->buf[(c->head + c->count) % c->cap] = m;
        c->count++;
        *result = 0;
        poll_update(c);
        return 1;
    }
    return 0;
}

/* Tries to receive from c (lock held). Returns 1 when done (*m set, *result 0
 * or LC_EOF), 0 when it would block. */
static int try_recv_locked(lc_chan *c, lc_msg **m, int *result, waiter **wake)
{
    if (c->count > 0) {
        *m = c->buf[c->head];
        c->head = (c->head + 1) % c->cap;
        c->count--;
        /* A sender blocked on the full buffer moves its message in. */
        sudog *sg = q_claim(&c->sendq);
        if (sg != NULL) {
            c->buf[(c->head + c->count) % c->cap] = sg->msg;
            c->count++;
            sg->result = 0;
            *wake = sg->w;
        }
        *result = 0;
        poll_update(c);
        return 1;
    }
    sudog *sg = q_claim(&c->sendq);
    if (sg != NULL) { /* unbuffered rendezvous */
        *m = sg->msg;
        sg->result = 0;
        *wake = sg->w;
        *result = 0;
        poll_update(c);
        return 1;
    }
    if (c->closed) {
        *m = NULL;
        *result = LC_EOF;
        return 1;
    }
    return 0;
}

/* ---- send / recv --------------------------------------------------------- */

/* Blocks on one channel with one sudog already queued; returns its result or
 * LC_ETIMEDOUT. */
static int wait_single(lc_chan *c, waiter *w, sudog *sg, sudog_queue *q, const struct timespec *dl)
{
    if (waiter_wait(w, dl))
        return sg->result;
    pthread_mutex_lock(&c->mu);
    int expected = SEL_FREE;
    if (atomic_compare_exchange_strong_explicit(&w->selected, &expected, SEL_CANCELLED,
                                                memory_order_acq_rel, memory_order_acquire)) {
        q_remove(q, sg);
        poll_update(c);
        pthread_mutex_unlock(&c->mu);
        return LC_ETIMEDOUT;
    }
    pthread_mutex_unlock(&c->mu);
    /* Claimed just before the timeout: the waker is about to finish. */
    waiter_wait(w, NULL);
    return sg->result;
}

LC_API int lc_send(lc_sender *s, lc_msg *m, int64_t timeout_ms)
{
    if (s == NULL || m == NULL)
        return LC_EINVAL;
    lc_chan *c = s->c;
    int result;
    waiter *wake = NULL;
    pthread_mutex_lock(&c->mu);
    if (try_send_locked(c, m, &result, &wake)) {
        pthread_mutex_unlock(&c->mu);
        if (wake)
            waiter_wake(wake);
        return result;
    }
    if (timeout_ms == 0) {
        pthread_mutex_unlock(&c->mu);
        return LC_ETIMEDOUT;
    }
    struct timespec dl;
    bool has_dl = deadline_from(timeout_ms, &dl);
    waiter w;
    waiter_init(&w);
    sudog sg = { .w = &w, .chan = c, .msg = m, .case_index = 0, .is_send = true };
    q_push(&c->sendq, &sg);
    poll_update(c);
    pthread_mutex_unlock(&c->mu);
    return wait_single(c, &w, &sg, &c->sendq, has_dl ? &dl : NULL);
}

LC_API int lc_recv(lc_receiver *r, lc_msg **m, int64_t timeout_ms)
{
    if (r == NULL || m == NULL)
        return LC_EINVAL;
    *m = NULL;
    lc_chan *c = r->c;
    int result;
    waiter *wake = NULL;
    pthread_mutex_lock(&c->mu);
    if (try_recv_locked(c, m, &result, &wake)) {
        pthread_mutex_unlock(&c->mu);
        if (wake)
            waiter_wake(wake);
        return result;
    }
    if (timeout_ms == 0) {
        pthread_mutex_unlock(&c->mu);
        return LC_ETIMEDOUT;
    }
    struct timespec dl;
    bool has_dl = deadline_from(timeout_ms, &dl);
    waiter w;
    waiter_init(&w);
    sudog sg = { .w = &w, .chan = c, .case_index = 0, .is_send = false };
    q_push(&c->recvq, &sg);
    poll_update(c);
    pthread_mutex_unlock(&c->mu);
    int rc = wait_single(c, &w, &sg, &c->recvq, has_dl ? &dl : NULL);
    if (rc == 0)
        *m = sg.msg;
    return rc;
}

/* ---- select -------------------------------------------------------------- */

static uint64_t rand_next(void)
{
    static _Thread_local uint64_t state;
    if (state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        state = ((uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull) ^ (uint64_t)(uintptr_t)&state;
        if (state == 0)
            state = 1;
    }
    /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}

static lc_chan *case_chan(const lc_case *k)
{
    if (k->op == LC_CASE_SEND)
        return k->sender ? k->sender->c : NULL;
    return k->receiver ? k->receiver->c : NULL;
}

static int cmp_chan(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(lc_chan *const *)a, y = (uintptr_t)*(lc_chan *const *)b;
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

    int ret = LC_ETIMEDOUT;
    if (active == 0 && timeout_ms < 0) {
        /* select {} with no channel blocks forever in Go; here that is a bug. */
        ret = LC_EINVAL;
        goto out;
    }

    lock_all(locks, nlocks);
    for (size_t k = 0; k < active; k++) {
        size_t i = order[k];
        lc_case *cs = &cases[i];
        lc_chan *c = case_chan(cs);
        waiter *wake = NULL;
        int result;
        int done;
        if (cs->op == LC_CASE_SEND) {
            done = try_send_locked(c, cs->msg, &result, &wake);
            if (done && result == 0)
                cs->msg = NULL; /* taken */
        } else {
            lc_msg *m = NULL;
            done = try_recv_locked(c, &m, &result, &wake);
            if (done)
                cs->msg = m;
        }
        if (done) {
            unlock_all(locks, nlocks);
            if (wake)
                waiter_wake(wake);
            cs->result = result;
            ret = (int)i;
            goto out;
        }
    }
    if (timeout_ms == 0 || active == 0) {
        unlock_all(locks, nlocks);
        if (active == 0 && timeout_ms > 0) {
            /* No channel at all: just wait out the timeout, like a Go timer case. */
            struct timespec dl;
            deadline_from(timeout_ms, &dl);
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &dl, NULL) == EINTR)
                ;
        }
        ret = LC_ETIMEDOUT;
        goto out;
    }

    /* Nothing ready: queue a sudog on every case's channel and sleep. */
    waiter w;
    waiter_init(&w);
    for (size_t k = 0; k < active; k++) {
        size_t i = order[k];
        lc_case *cs = &cases[i];
        sudog *sg = &sgs[i];
        memset(sg, 0, sizeof *sg);
        sg->w = &w;
        sg->chan = case_chan(cs);
        sg->case_index = (int)i;
        sg->is_send = cs->op == LC_CASE_SEND;
        sg->msg = sg->is_send ? cs->msg : NULL;
        q_push(sg->is_send ? &sg->chan->sendq : &sg->chan->recvq, sg);
    }
    for (size_t i = 0; i < nlocks; i++)
        poll_update(locks[i]);
    unlock_all(locks, nlocks);

    struct timespec dl;
    bool has_dl = deadline_from(timeout_ms, &dl);
    bool woken = waiter_wait(&w, has_dl ? &dl : NULL);

    lock_all(locks, nlocks);
    if (!woken) {
        int expected = SEL_FREE;
        if (atomic_compare_exchange_strong_explicit(&w.selected, &expected, SEL_CANCELLED,
                                                    memory_order_acq_rel, memory_order_acquire))
            ret = LC_ETIMEDOUT;
        else
            ret = expected; /* claimed just before the timeout */
    } else {
        ret = atomic_load_explicit(&w.selected, memory_order_acquire);
    }
    /* Dequeue every case that is still queued (all but the fired one). */
    for (size_t k = 0; k < active; k++) {
        sudog *sg = &sgs[order[k]];
        q_remove(sg->is_send ? &sg->chan->sendq : &sg->chan->recvq, sg);
    }
    for (size_t i = 0; i < nlocks; i++)
        poll_update(locks[i]);
    unlock_all(locks, nlocks);

    if (ret >= 0) {
        if (!woken)
            waiter_wait(&w, NULL); /* the waker finishes filling the sudog */
        sudog *sg = &sgs[ret];
        lc_case *cs = &cases[ret];
        cs->result = sg->result;
        if (sg->is_send) {
            if (sg->result == 0)
                cs->msg = NULL;
        } else {
            cs->msg = sg->msg;
        }
    }
out:
    free(heap);
    return ret;
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
        poll_update(c);
    }
    int fd = *efd;
    pthread_mutex_unlock(&c->mu);
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
    if (r == NULL)
        return 0;
    pthread_mutex_lock(&r->c->mu);
    size_t n = r->c->count;
    pthread_mutex_unlock(&r->c->mu);
    return n;
}

/* ---- introspection for tests --------------------------------------------- */

static size_t queue_len(const sudog_queue *q)
{
    size_t n = 0;
    for (const sudog *s = q->head; s != NULL; s = s->next)
        n++;
    return n;
}

size_t lc__chan_waiting(lc_sender *s, lc_receiver *r, bool senders)
{
    lc_chan *c = s ? s->c : r ? r->c : NULL;
    if (c == NULL)
        return 0;
    pthread_mutex_lock(&c->mu);
    size_t n = queue_len(senders ? &c->sendq : &c->recvq);
    pthread_mutex_unlock(&c->mu);
    return n;
}

/*
 * engine.c - the event engine (src/engine): epoll with EPOLLONESHOT arming
 * (or poll(2), below), a timer min-heap, and an eventfd that interrupts
 * epoll_wait.
 *
 * The hard part is removing a watch while another thread may be about to run
 * its callback: epoll_wait can hand an event to thread A, then thread B calls
 * lc__engine_del and frees the watch, then A dereferences it. So watches are
 * never freed while the engine lives: they are slots in chunks that only grow,
 * and the epoll event carries (generation << 32 | slot index). A slot's
 * generation changes every time it is freed, so a stale event finds a
 * mismatch and is dropped; the slot's own mutex orders the claim ("not
 * running, still armed -> running") against lc__engine_del, which waits on
 * the slot's condition variable while the callback runs elsewhere.
 *
 * Timers live in a growable slot array plus a binary heap of slot indices,
 * all under the engine mutex; a timer id is likewise generation | index, so a
 * late cancel of a fired timer is a harmless miss. The earliest deadline is
 * programmed into a timerfd in the epoll set, not into epoll_wait's timeout:
 * then it is the kernel that wakes whichever thread waits when a deadline
 * comes, and a thread that drives the engine for a single round (and does not
 * loop) cannot swallow the wake-up meant for the engine's own thread.
 *
 * An fd with no readiness to wait for (a regular file; with epoll also a
 * device without a poll method, /dev/null: epoll_ctl refuses both with
 * EPERM, where poll(2) calls them always ready) is an always-ready watch:
 * arming it puts it on the engine's ready list, which the next round runs
 * as if the kernel had reported the armed IN/OUT interest. So a byte stream
 * may be a file, pumped like a pipe (its reads simply never meet EAGAIN).
 *
 * The poll(2) backend (LIBCHAN_ENGINE=poll, or where epoll cannot be had)
 * keeps the same contract with the kernel's part done here: the armed watches
 * are a list under the engine mutex that each round copies into a pollfd
 * array; a watch leaves the list when one of its events is claimed (that is
 * the one-shot) and when it is disarmed, and arming a watch while a thread
 * sleeps in poll() wakes that thread through the eventfd so that its next
 * round includes it.
 */
#include "engine.h"
#include "libchan.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_SHIFT 8
#define CHUNK_SLOTS (1u << CHUNK_SHIFT)
#define MAX_CHUNKS 4096 /* 1M watches per engine */
#define NO_SLOT UINT32_MAX
#define WAKE_TAG UINT64_MAX
#define TIMER_TAG (UINT64_MAX - 1)
#define EVENTS_PER_ROUND 64
#define ARMABLE (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI)
#define POLL_STACK 64 /* pollfds on the stack; more are malloc'd per round */

/* Linux gives poll(2) and epoll the same bits for these; the poll backend
 * relies on it. */
_Static_assert(EPOLLIN == POLLIN && EPOLLOUT == POLLOUT && EPOLLPRI == POLLPRI &&
                   EPOLLERR == POLLERR && EPOLLHUP == POLLHUP && EPOLLRDHUP == POLLRDHUP,
               "epoll and poll event bits differ");

struct lc_watch {
    pthread_mutex_t mu;
    pthread_cond_t idle;   /* broadcast when a callback returns and a del waits */
    lc_engine *e;
    uint32_t index;
    uint32_t gen;          /* bumped when the slot is freed; carried by epoll events */
    uint32_t next_free;    /* free-list link, under e->mu */
    int fd;
    lc_watch_cb cb;
    void *ctx;
    uint32_t armed;        /* interest not yet reported */
    bool live;             /* between add and the slot's release */
    bool dying;            /* lc__engine_del has started: never run again */
    bool running;
    bool self_deleted;     /* del called from inside the running callback */
    bool in_kernel;        /* registered with epoll, or in the poll list, or on the
                            * ready list (see watch_set) */
    bool always_ready;     /* no readiness to wait for: armed -> the ready list */
    uint32_t ppos;         /* poll backend: index in e->pset, NO_SLOT if absent (e->mu) */
    pthread_t runner;
};

/* An armed watch as the poll backend polls it. */
typedef struct pentry {
    int fd;
    uint32_t events;
    uint64_t tag; /* generation << 32 | slot index, like an epoll event's data */
} pentry;

enum { T_FREE = 0, T_PENDING = 1, T_RUNNING = 2 };

typedef struct tslot {
    int64_t deadline;
    uint64_t seq;
    lc_timer_cb cb;
    void *ctx;
    uint32_t gen;
    uint32_t heap_pos;
    uint32_t next_free;
    int state;
    pthread_t runner;
} tslot;

struct lc_engine {
    int epfd, evfd, tfd;       /* epfd -1 with the poll backend */
    bool use_poll;
    _Atomic bool stopping;
    bool has_thread;
    pthread_t thread;

    pthread_mutex_t mu;     /* slot allocation, timers */
    _Atomic(lc_watch *) chunks[MAX_CHUNKS];
    uint32_t nchunks;
    uint32_t free_head;
    size_t nwatches;

    tslot *tslots;
    uint32_t tcap;
    uint32_t tfree_head;
    uint32_t *heap;
    uint32_t heap_len;
    uint64_t tseq;
    int64_t tfd_deadline;      /* what tfd is set to (0: disarmed); under mu */
    pthread_cond_t timer_idle; /* broadcast when a timer callback returns (with mu) */
    int timer_waiters;

    /* poll backend, under mu: the armed watches, the threads inside poll(),
     * and which fds have a watch (epoll's EEXIST) */
    pentry *pset;
    uint32_t pset_len, pset_cap;
    int pollers;
    /* A change a poller must see bumps pset_gen and wakes the pollers once
     * (one eventfd write); pollers_current counts those asleep on a
     * snapshot of the current generation. A poller that drains the wake-up
     * while others still sleep on an older snapshot wakes them again: with
     * two threads in poll(), the first took the one wake-up, the second
     * slept on without the new watch, whose callback never ran (found by a
     * review helper: 86 of 200 rounds; epoll has no such gap) */
    uint64_t pset_gen;
    int pollers_current;
    uint64_t *fdbits;
    size_t fdwords;

    /* armed always-ready watches, as tags (generation << 32 | slot index),
     * each at most once (w->in_kernel while there), its room reserved when
     * the watch is added (ready_watches <= ready_cap): arming never
     * allocates, so it cannot fail; under mu (ready_len is also read
     * without it: every round looks, and most engines never have one) */
    uint64_t *ready;
    _Atomic uint32_t ready_len;
    uint32_t ready_cap, ready_watches;
};

int64_t lc__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void lc__engine_wake(lc_engine *e)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is saturated: it is readable anyway */
    ssize_t n = write(e->evfd, &one, sizeof one);
    (void)n;
}

/* ---- watch slots --------------------------------------------------------- */

static lc_watch *slot_at(lc_engine *e, uint32_t index)
{
    lc_watch *chunk = atomic_load_explicit(&e->chunks[index >> CHUNK_SHIFT], memory_order_acquire);
    return chunk == NULL ? NULL : &chunk[index & (CHUNK_SLOTS - 1)];
}

static lc_watch *slot_alloc(lc_engine *e)
{
    pthread_mutex_lock(&e->mu);
    if (e->free_head == NO_SLOT) {
        if (e->nchunks == MAX_CHUNKS) {
            pthread_mutex_unlock(&e->mu);
            return NULL;
        }
        lc_watch *chunk = calloc(CHUNK_SLOTS, sizeof *chunk);
        if (chunk == NULL) {
            pthread_mutex_unlock(&e->mu);
            return NULL;
        }
        uint32_t base = e->nchunks << CHUNK_SHIFT;
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++) {
            lc_watch *w = &chunk[i];
            pthread_mutex_init(&w->mu, NULL);
            pthread_cond_init(&w->idle, NULL);
            w->e = e;
            w->index = base + i;
            w->fd = -1;
            w->ppos = NO_SLOT;
            w->next_free = i + 1 < CHUNK_SLOTS ? base + i + 1 : NO_SLOT;
        }
        atomic_store_explicit(&e->chunks[e->nchunks], chunk, memory_order_release);
        e->nchunks++;
        e->free_head = base;
    }
    lc_watch *w = slot_at(e, e->free_head);
    e->free_head = w->next_free;
    e->nwatches++;
    pthread_mutex_unlock(&e->mu);
    return w;
}

/* Returns w's slot to the free list. Caller holds w->mu. */
static void slot_release(lc_watch *w)
{
    lc_engine *e = w->e;
    w->gen++;
    w->live = false;
    w->dying = false;
    w->self_deleted = false;
    w->armed = 0;
    w->cb = NULL;
    w->ctx = NULL;
    w->fd = -1;
    pthread_mutex_lock(&e->mu);
    w->next_free = e->free_head;
    e->free_head = w->index;
    e->nwatches--;
    pthread_mutex_unlock(&e->mu);
}

/* What identifies w in an epoll event or a poll list entry: a stale one
 * (slot freed or reused since) finds another generation. */
static uint64_t watch_tag(const lc_watch *w)
{
    return ((uint64_t)w->gen << 32) | w->index;
}

/* ---- the poll backend's list ------------------------------------------------ */

/* Puts w in the poll list with `interest`, or takes it out (0). w->mu held.
 * A thread asleep in poll() does not see a new interest: it is woken so that
 * its next round does. 0, or LC_ENOMEM (w left out, as epoll_ctl's ENOMEM
 * would leave it). */
static int pset_put(lc_watch *w, uint32_t interest)
{
    lc_engine *e = w->e;
    bool wake = false;
    pthread_mutex_lock(&e->mu);
    if (interest == 0) {
        if (w->ppos != NO_SLOT) {
            /* swap-remove: the last entry takes the hole */
            pentry last = e->pset[--e->pset_len];
            if (w->ppos != e->pset_len) {
                e->pset[w->ppos] = last;
                slot_at(e, (uint32_t)last.tag)->ppos = w->ppos;
            }
            w->ppos = NO_SLOT;
        }
    } else if (w->ppos == NO_SLOT) {
        if (e->pset_len == e->pset_cap) {
            uint32_t ncap = e->pset_cap ? e->pset_cap * 2 : 64;
            pentry *n = realloc(e->pset, (size_t)ncap * sizeof *n);
            if (n == NULL) {
                pthread_mutex_unlock(&e->mu);
                return LC_ENOMEM;
            }
            e->pset = n;
            e->pset_cap = ncap;
        }
        w->ppos = e->pset_len++;
        e->pset[w->ppos] = (pentry){ w->fd, interest, watch_tag(w) };
        wake = e->pollers > 0;
    } else {
        pentry *p = &e->pset[w->ppos];
        wake = e->pollers > 0 && (p->events | interest) != p->events;
        p->events = interest;
    }
    if (wake) {
        e->pset_gen++;
        e->pollers_current = 0;
    }
    pthread_mutex_unlock(&e->mu);
    if (wake)
        lc__engine_wake(e);
    return 0;
}

/* Marks fd as watched in e->fdbits (the poll backend's watches and the
 * always-ready ones of either: the kernel does not tell us of a second watch
 * of the same fd there); -EEXIST if it is already. */
static int fd_claim(lc_engine *e, int fd)
{
    size_t word = (size_t)fd / 64;
    uint64_t bit = (uint64_t)1 << (fd % 64);
    int rc = 0;
    pthread_mutex_lock(&e->mu);
    if (word >= e->fdwords) {
        size_t n = word + 1 > 2 * e->fdwords ? word + 1 : 2 * e->fdwords;
        uint64_t *b = realloc(e->fdbits, n * sizeof *b);
        if (b == NULL) {
            rc = LC_ENOMEM;
        } else {
            memset(b + e->fdwords, 0, (n - e->fdwords) * sizeof *b);
            e->fdbits = b;
            e->fdwords = n;
        }
    }
    if (rc == 0 && (e->fdbits[word] & bit))
        rc = -EEXIST;
    else if (rc == 0)
        e->fdbits[word] |= bit;
    pthread_mutex_unlock(&e->mu);
    return rc;
}

/* What kind of fd a watch is for: -EBADF for none, -EPERM for a directory
 * (both backends refuse it: no read or write would take it), 1 for a regular
 * file (always ready), 0 for another (one poll(2) waits on; with epoll, an
 * fd epoll_ctl refused is always ready unless this says it is a directory). */
static int fd_kind(int fd)
{
    struct stat sb;
    if (fcntl(fd, F_GETFD) < 0 || fstat(fd, &sb) != 0)
        return -EBADF;
    if (S_ISDIR(sb.st_mode))
        return -EPERM;
    return S_ISREG(sb.st_mode) ? 1 : 0;
}

static void fd_release(lc_engine *e, int fd)
{
    pthread_mutex_lock(&e->mu);
    e->fdbits[(size_t)fd / 64] &= ~((uint64_t)1 << (fd % 64));
    pthread_mutex_unlock(&e->mu);
}

/* Puts an armed always-ready watch on the ready list and wakes a thread
 * waiting in the kernel to run it (the caller may be none that will run the
 * engine again soon). w->mu held. */
static void ready_push(lc_watch *w)
{
    lc_engine *e = w->e;
    pthread_mutex_lock(&e->mu);
    /* (room: ready_add reserved it, ready_remove gives back a deleted
     * watch's entry with its room) */
    e->ready[e->ready_len++] = watch_tag(w);
    w->in_kernel = true;
    pthread_mutex_unlock(&e->mu);
    lc__engine_wake(e);
}

/* A new always-ready watch of fd: claims the fd (one watch per fd) and
 * reserves the watch's room on the ready list. 0, -EEXIST or LC_ENOMEM
 * (nothing kept). w->mu held. */
static int ready_add(lc_watch *w, int fd)
{
    lc_engine *e = w->e;
    int rc = fd_claim(e, fd);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&e->mu);
    if (e->ready_watches == e->ready_cap) {
        uint32_t ncap = e->ready_cap ? e->ready_cap * 2 : 16;
        uint64_t *n = realloc(e->ready, (size_t)ncap * sizeof *n);
        if (n == NULL)
            rc = LC_ENOMEM;
        else {
            e->ready = n;
            e->ready_cap = ncap;
        }
    }
    if (rc == 0)
        e->ready_watches++;
    pthread_mutex_unlock(&e->mu);
    if (rc != 0)
        fd_release(e, fd);
    else
        w->always_ready = true;
    return rc;
}

/* An always-ready watch is deleted: its entry (if on the list) and its
 * room go, and its fd. w->mu held. */
static void ready_remove(lc_watch *w)
{
    lc_engine *e = w->e;
    uint64_t tag = watch_tag(w);
    pthread_mutex_lock(&e->mu);
    for (uint32_t i = 0; w->in_kernel && i < e->ready_len; i++)
        if (e->ready[i] == tag) {
            memmove(e->ready + i, e->ready + i + 1, (e->ready_len - i - 1) * sizeof *e->ready);
            e->ready_len--;
            break;
        }
    w->in_kernel = false;
    e->ready_watches--;
    pthread_mutex_unlock(&e->mu);
    fd_release(e, w->fd);
}

static int ctl(lc_watch *w, int op, uint32_t interest)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = interest | EPOLLONESHOT;
    ev.data.u64 = watch_tag(w);
    return epoll_ctl(w->e->epfd, op, w->fd, &ev) == 0 ? 0 : -errno;
}

/*
 * Gives the kernel w's interest (w->armed), w->mu held and no callback
 * running. A watch disarmed on purpose leaves epoll altogether (DEL, ADD
 * again when armed) rather than staying registered with no interest: a
 * registered fd puts epoll on the file's wait queue, and every write to it
 * then goes through the wake-up path, whoever waits. For a session's carrier
 * that a thread reads itself (the engine's watch disarmed meanwhile) that
 * was every message the peer sent: a raw unix ping-pong with such a
 * registration on both ends took 3.5 -> 4.0 us per round trip here.
 */
static int watch_set(lc_watch *w)
{
    if (w->always_ready) {
        /* an entry already on the list stays (run_ready drops it if it was
         * disarmed meanwhile): no search through the list here */
        if (w->armed != 0 && !w->in_kernel)
            ready_push(w);
        return 0;
    }
    if (w->e->use_poll) {
        int rc = pset_put(w, w->armed);
        w->in_kernel = rc == 0 && w->armed != 0;
        return rc;
    }
    if (w->armed == 0) {
        if (!w->in_kernel)
            return 0;
        w->in_kernel = false;
        /* (ENOENT/EBADF: nothing to remove; the point is that nothing fires) */
        return epoll_ctl(w->e->epfd, EPOLL_CTL_DEL, w->fd, NULL) == 0 || errno == ENOENT ? 0 : -errno;
    }
    int rc = ctl(w, w->in_kernel ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->armed);
    if (rc == 0)
        w->in_kernel = true;
    return rc;
}

/* ready_add, then the watch goes on the ready list if it was added armed.
 * w->mu held. */
static int always_ready_add(lc_watch *w, int fd)
{
    int rc = ready_add(w, fd);
    if (rc == 0)
        (void)watch_set(w); /* (cannot fail: its room is reserved) */
    return rc;
}

int lc__engine_add(lc_engine *e, int fd, uint32_t events, lc_watch_cb cb, void *ctx,
                   lc_watch **out)
{
    if (e == NULL || fd < 0 || cb == NULL || out == NULL)
        return LC_EINVAL;
    if (atomic_load_explicit(&e->stopping, memory_order_acquire))
        return LC_ECLOSED;
    lc_watch *w = slot_alloc(e);
    if (w == NULL)
        return LC_ENOMEM;
    pthread_mutex_lock(&w->mu);
    w->fd = fd;
    w->cb = cb;
    w->ctx = ctx;
    w->armed = events & ARMABLE;
    w->live = true;
    w->always_ready = false;
    w->in_kernel = false;
    if (e->use_poll) {
        int rc = fd_kind(fd);
        if (rc == 1) {
            rc = always_ready_add(w, fd);
        } else if (rc == 0 && (rc = fd_claim(e, fd)) == 0 && (rc = watch_set(w)) != 0) {
            fd_release(e, fd);
        }
        if (rc != 0) {
            slot_release(w);
            pthread_mutex_unlock(&w->mu);
            return rc;
        }
        pthread_mutex_unlock(&w->mu);
        *out = w;
        return 0;
    }
    /* Added with no interest, the kernel would still report ERR/HUP; that
     * event is dropped (armed == 0) and leaves the kernel side disarmed. */
    int rc = ctl(w, EPOLL_CTL_ADD, w->armed);
    if (rc == -EPERM) {
        /* nothing to wait for (a regular file, /dev/null), unless it is a
         * directory (rc stays -EPERM) */
        if (fd_kind(fd) >= 0)
            rc = always_ready_add(w, fd);
        if (rc != 0)
            slot_release(w);
        pthread_mutex_unlock(&w->mu);
        if (rc == 0)
            *out = w;
        return rc;
    }
    if (rc != 0) {
        slot_release(w);
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    w->in_kernel = true; /* (added even when disarmed: the kernel says now whether it takes the fd) */
    pthread_mutex_unlock(&w->mu);
    *out = w;
    return 0;
}

int lc__engine_arm_instead(lc_watch *w, uint32_t events, uint32_t drop)
{
    events &= ARMABLE;
    drop &= ARMABLE & ~events;
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    if (w->live && !w->dying) {
        uint32_t before = w->armed;
        w->armed = (before & ~drop) | events;
        /* While the callback runs, the re-arm happens when it returns. When
         * the interest was already armed nothing changes in the kernel: either
         * it is armed there, or an event for it is on its way to a thread,
         * which will run the callback and re-arm what is left. */
        if (!w->running && (before == 0 || w->armed != before))
            rc = watch_set(w);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int lc__engine_arm(lc_watch *w, uint32_t events)
{
    return lc__engine_arm_instead(w, events, 0);
}

uint32_t lc__engine_armed(lc_watch *w)
{
    pthread_mutex_lock(&w->mu);
    uint32_t a = w->armed;
    pthread_mutex_unlock(&w->mu);
    return a;
}

int lc__engine_disarm(lc_watch *w, uint32_t events)
{
    events &= ARMABLE;
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    if (w->live && !w->dying && (w->armed & events) != 0) {
        w->armed &= ~events;
        rc = 1;
        /* while the callback runs, what it re-arms on return is w->armed */
        if (!w->running) {
            int c = watch_set(w);
            if (c != 0)
                rc = c;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void lc__engine_del(lc_watch *w)
{
    pthread_t self = pthread_self();
    pthread_mutex_lock(&w->mu);
    w->dying = true;
    w->armed = 0;
    if (w->always_ready) {
        ready_remove(w); /* (an entry a round took already finds the slot released) */
    } else if (w->e->use_poll) {
        (void)pset_put(w, 0);
        fd_release(w->e, w->fd);
    } else {
        /* ENOENT/EBADF are harmless here: the point is that nothing fires */
        epoll_ctl(w->e->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    }
    if (w->running && pthread_equal(w->runner, self)) {
        /* from inside its own callback: the dispatcher frees the slot on return */
        w->self_deleted = true;
        pthread_mutex_unlock(&w->mu);
        return;
    }
    while (w->running)
        pthread_cond_wait(&w->idle, &w->mu);
    slot_release(w);
    pthread_mutex_unlock(&w->mu);
}

int lc__watch_fd(const lc_watch *w)
{
    return w->fd;
}

/* Runs the callback an epoll event names, if it still may run. 1 if it ran. */
static int dispatch(lc_engine *e, const struct epoll_event *ev)
{
    uint32_t index = (uint32_t)ev->data.u64;
    uint32_t gen = (uint32_t)(ev->data.u64 >> 32);
    lc_watch *w = slot_at(e, index);
    if (w == NULL)
        return 0;
    pthread_mutex_lock(&w->mu);
    uint32_t revents = ev->events;
    if (w->always_ready && w->live && w->gen == gen) {
        /* its ready-list entry (ev->events 0): reports what is armed */
        w->in_kernel = false;
        revents = w->armed & (EPOLLIN | EPOLLOUT | EPOLLPRI);
        if (revents == 0) {
            pthread_mutex_unlock(&w->mu);
            return 0; /* disarmed since, or armed for a hang-up only, which never comes */
        }
    }
    if (!w->live || w->gen != gen || w->dying || w->running || w->armed == 0) {
        /* stale (slot freed or reused), being removed, or a duplicate while
         * the callback runs elsewhere: that run re-arms what is left, and
         * level-triggered readiness is reported again then */
        pthread_mutex_unlock(&w->mu);
        return 0;
    }
    if (revents & (EPOLLERR | EPOLLHUP))
        w->armed = 0;
    else
        w->armed &= ~revents;
    if (e->use_poll) {
        /* the one-shot: not polled again until re-armed (a level-triggered
         * fd would otherwise wake every other poller while this runs) */
        (void)pset_put(w, 0); /* (taking out cannot fail) */
        w->in_kernel = false;
    }
    w->running = true;
    w->runner = pthread_self();
    lc_watch_cb cb = w->cb;
    void *ctx = w->ctx;
    pthread_mutex_unlock(&w->mu);

    cb(ctx, revents);

    pthread_mutex_lock(&w->mu);
    w->running = false;
    if (w->dying) {
        if (w->self_deleted)
            slot_release(w);
        else
            pthread_cond_broadcast(&w->idle); /* the deleter frees it */
    } else if (w->armed != 0) {
        /* a failure here (the fd was closed under us) leaves the watch
         * disarmed; nothing else can be done from the engine thread */
        (void)watch_set(w);
    }
    pthread_mutex_unlock(&w->mu);
    return 1;
}

/* ---- timers -------------------------------------------------------------- */

static bool t_before(const lc_engine *e, uint32_t a, uint32_t b)
{
    const tslot *x = &e->tslots[a], *y = &e->tslots[b];
    return x->deadline < y->deadline || (x->deadline == y->deadline && x->seq < y->seq);
}

static void heap_set(lc_engine *e, uint32_t pos, uint32_t slot)
{
    e->heap[pos] = slot;
    e->tslots[slot].heap_pos = pos;
}

static void heap_up(lc_engine *e, uint32_t pos)
{
    uint32_t slot = e->heap[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (!t_before(e, slot, e->heap[parent]))
            break;
        heap_set(e, pos, e->heap[parent]);
        pos = parent;
    }
    heap_set(e, pos, slot);
}

static void heap_down(lc_engine *e, uint32_t pos)
{
    uint32_t slot = e->heap[pos];
    for (;;) {
        uint32_t child = 2 * pos + 1;
        if (child >= e->heap_len)
            break;
        if (child + 1 < e->heap_len && t_before(e, e->heap[child + 1], e->heap[child]))
            child++;
        if (!t_before(e, e->heap[child], slot))
            break;
        heap_set(e, pos, e->heap[child]);
        pos = child;
    }
    heap_set(e, pos, slot);
}

static void heap_remove(lc_engine *e, uint32_t pos)
{
    uint32_t last = e->heap[--e->heap_len];
    if (pos == e->heap_len)
        return;
    heap_set(e, pos, last);
    if (pos > 0 && t_before(e, last, e->heap[(pos - 1) / 2]))
        heap_up(e, pos);
    else
        heap_down(e, pos);
}

static void tslot_release(lc_engine *e, uint32_t index)
{
    tslot *t = &e->tslots[index];
    t->state = T_FREE;
    t->cb = NULL;
    t->ctx = NULL;
    if (++t->gen == 0)
        t->gen = 1; /* ids are never 0 */
    t->next_free = e->tfree_head;
    e->tfree_head = index;
}

static lc_timer_id timer_id(const lc_engine *e, uint32_t index)
{
    return ((uint64_t)e->tslots[index].gen << 32) | index;
}

/*
 * The engine whose round (lc__engine_run) this thread is running. A timer
 * its callbacks add leaves the timerfd to the end of the round (run_timers
 * points it once): a session's burst run re-arms its timer at every run,
 * under the session's write lock, and the timerfd_settime inside made the
 * application thread sending the burst wait for that lock on a futex
 * (bench_session tcp one-way: ~15000 such waits in 2 s).
 */
static _Thread_local lc_engine *tls_running;

/* Points the timerfd at the earliest deadline. Caller holds e->mu. Only
 * calls the kernel when that deadline changed. */
static void timerfd_sync(lc_engine *e)
{
    int64_t want = 0;
    if (e->heap_len > 0) {
        want = e->tslots[e->heap[0]].deadline;
        if (want < 1)
            want = 1; /* an it_value of 0 would disarm: 1 ns is long past */
    }
    if (want == e->tfd_deadline)
        return;
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = (time_t)(want / 1000000000);
    its.it_value.tv_nsec = (long)(want % 1000000000);
    if (timerfd_settime(e->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        e->tfd_deadline = want;
}

int lc__engine_timer_add(lc_engine *e, int64_t deadline_ns, lc_timer_cb cb, void *ctx,
                         lc_timer_id *out)
{
    if (e == NULL || cb == NULL || out == NULL)
        return LC_EINVAL;
    pthread_mutex_lock(&e->mu);
    if (atomic_load_explicit(&e->stopping, memory_order_acquire)) {
        pthread_mutex_unlock(&e->mu);
        return LC_ECLOSED;
    }
    if (e->tfree_head == NO_SLOT) {
        if (e->tcap >= (UINT32_MAX >> 2)) {
            pthread_mutex_unlock(&e->mu);
            return LC_ENOMEM;
        }
        uint32_t ncap = e->tcap ? e->tcap * 2 : 16;
        tslot *ns = realloc(e->tslots, (size_t)ncap * sizeof *ns);
        if (ns == NULL) {
            pthread_mutex_unlock(&e->mu);
            return LC_ENOMEM;
        }
        e->tslots = ns;
        uint32_t *nh = realloc(e->heap, (size_t)ncap * sizeof *nh);
        if (nh == NULL) {
            pthread_mutex_unlock(&e->mu);
            return LC_ENOMEM;
        }
        e->heap = nh;
        for (uint32_t i = e->tcap; i < ncap; i++) {
            memset(&ns[i], 0, sizeof ns[i]);
            ns[i].gen = 1;
            ns[i].next_free = i + 1 < ncap ? i + 1 : NO_SLOT;
        }
        e->tfree_head = e->tcap;
        e->tcap = ncap;
    }
    uint32_t index = e->tfree_head;
    tslot *t = &e->tslots[index];
    e->tfree_head = t->next_free;
    t->deadline = deadline_ns;
    t->seq = e->tseq++;
    t->cb = cb;
    t->ctx = ctx;
    t->state = T_PENDING;
    e->heap[e->heap_len++] = index;
    heap_up(e, e->heap_len - 1);
    if (tls_running != e)
        timerfd_sync(e); /* (a callback of this thread's round: the round's end does it) */
    *out = timer_id(e, index);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

bool lc__engine_timer_cancel(lc_engine *e, lc_timer_id id)
{
    uint32_t index = (uint32_t)id;
    uint32_t gen = (uint32_t)(id >> 32);
    if (e == NULL || id == 0)
        return false;
    bool prevented = false;
    pthread_mutex_lock(&e->mu);
    if (index < e->tcap && e->tslots[index].gen == gen) {
        tslot *t = &e->tslots[index];
        if (t->state == T_PENDING) {
            heap_remove(e, t->heap_pos);
            tslot_release(e, index);
            timerfd_sync(e);
            prevented = true;
        } else if (t->state == T_RUNNING && !pthread_equal(t->runner, pthread_self())) {
            e->timer_waiters++;
            /* the slot array may move while we wait: index it afresh */
            while (e->tslots[index].gen == gen && e->tslots[index].state == T_RUNNING)
                pthread_cond_wait(&e->timer_idle, &e->mu);
            e->timer_waiters--;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return prevented;
}

/* Runs the timers due now that existed when this round started, then points
 * the timerfd at what is left. fired: the timerfd was drained this round. */
static int run_timers(lc_engine *e, bool fired)
{
    int ran = 0;
    int64_t now = lc__now_ns();
    pthread_mutex_lock(&e->mu);
    if (fired)
        e->tfd_deadline = 0; /* it expired: setting the same deadline again must re-arm it */
    uint64_t seq_limit = e->tseq; /* timers added by these callbacks wait a round */
    while (e->heap_len > 0 && !atomic_load_explicit(&e->stopping, memory_order_relaxed)) {
        uint32_t index = e->heap[0];
        tslot *t = &e->tslots[index];
        if (t->deadline > now || t->seq >= seq_limit)
            break;
        heap_remove(e, 0);
        t->state = T_RUNNING;
        t->runner = pthread_self();
        lc_timer_cb cb = t->cb;
        void *ctx = t->ctx;
        pthread_mutex_unlock(&e->mu);
        cb(ctx);
        ran++;
        pthread_mutex_lock(&e->mu);
        tslot_release(e, index);
        if (e->timer_waiters > 0)
            pthread_cond_broadcast(&e->timer_idle);
    }
    timerfd_sync(e);
    pthread_mutex_unlock(&e->mu);
    return ran;
}

/* ---- running ------------------------------------------------------------- */

/* The eventfd was readable: drain it. While stopping it stays readable, so
 * every thread waiting in the kernel sees it. */
static void wake_drain(lc_engine *e)
{
    if (atomic_load_explicit(&e->stopping, memory_order_acquire))
        return;
    uint64_t v;
    ssize_t r = read(e->evfd, &v, sizeof v);
    (void)r;
    /* that read may have eaten lc__engine_stop's wake-up */
    if (atomic_load_explicit(&e->stopping, memory_order_acquire))
        lc__engine_wake(e);
}

/* The timerfd was readable: drain it. True when this thread did (another
 * may have first: EAGAIN). */
static bool timer_drain(lc_engine *e)
{
    uint64_t v;
    return read(e->tfd, &v, sizeof v) > 0;
}

static int run_epoll(lc_engine *e, int timeout_ms, bool *fired)
{
    struct epoll_event evs[EVENTS_PER_ROUND];
    int n = epoll_wait(e->epfd, evs, EVENTS_PER_ROUND, timeout_ms < 0 ? -1 : timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    int ran = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == TIMER_TAG)
            *fired |= timer_drain(e);
        else if (evs[i].data.u64 == WAKE_TAG)
            wake_drain(e);
        else
            ran += dispatch(e, &evs[i]);
    }
    return ran;
}

/* One poll(2) round over a snapshot of the armed watches. A watch that
 * changed since (disarmed, deleted, its slot reused) is sorted out by
 * dispatch, as a stale epoll event is. */
static int run_poll(lc_engine *e, int timeout_ms, bool *fired)
{
    struct pollfd stack_pfd[POLL_STACK];
    uint64_t stack_tag[POLL_STACK];
    struct pollfd *pfd = stack_pfd;
    uint64_t *tag = stack_tag;
    pthread_mutex_lock(&e->mu);
    size_t n = 2 + (size_t)e->pset_len;
    if (n > POLL_STACK) {
        pfd = malloc(n * sizeof *pfd);
        tag = malloc(n * sizeof *tag);
        if (pfd == NULL || tag == NULL) {
            /* out of memory: this round polls the first POLL_STACK only */
            free(pfd);
            free(tag);
            pfd = stack_pfd;
            tag = stack_tag;
            n = POLL_STACK;
        }
    }
    pfd[0] = (struct pollfd){ e->evfd, POLLIN, 0 };
    pfd[1] = (struct pollfd){ e->tfd, POLLIN, 0 };
    for (size_t i = 2; i < n; i++) {
        const pentry *p = &e->pset[i - 2];
        pfd[i] = (struct pollfd){ p->fd, (short)p->events, 0 };
        tag[i] = p->tag;
    }
    e->pollers++;
    e->pollers_current++;
    uint64_t gen = e->pset_gen;
    pthread_mutex_unlock(&e->mu);

    int r = poll(pfd, (nfds_t)n, timeout_ms < 0 ? -1 : timeout_ms);
    int err = errno;

    pthread_mutex_lock(&e->mu);
    e->pollers--;
    if (gen == e->pset_gen)
        e->pollers_current--;
    bool stale_sleepers = e->pollers > e->pollers_current;
    pthread_mutex_unlock(&e->mu);
    int ran = 0;
    if (r < 0) {
        ran = err == EINTR ? 0 : -err;
    } else {
        if (pfd[1].revents)
            *fired |= timer_drain(e);
        if (pfd[0].revents) {
            wake_drain(e);
            if (stale_sleepers)
                lc__engine_wake(e);
        }
        for (size_t i = 2; i < n; i++) {
            if (pfd[i].revents == 0)
                continue;
            struct epoll_event ev;
            /* POLLNVAL (an fd closed before its watch was deleted): as an error */
            ev.events = pfd[i].revents & POLLNVAL ? EPOLLERR : (uint32_t)(unsigned short)pfd[i].revents;
            ev.data.u64 = tag[i];
            ran += dispatch(e, &ev);
        }
    }
    if (pfd != stack_pfd) {
        free(pfd);
        free(tag);
    }
    return ran;
}

/* Runs the always-ready watches armed when this round started (those the
 * callbacks arm again wait for the next round, as a re-armed fd would). */
static int run_ready(lc_engine *e)
{
    uint64_t tags[EVENTS_PER_ROUND];
    if (atomic_load_explicit(&e->ready_len, memory_order_acquire) == 0)
        return 0; /* (one pushed meanwhile also wrote the eventfd) */
    pthread_mutex_lock(&e->mu);
    uint32_t n = e->ready_len < EVENTS_PER_ROUND ? e->ready_len : EVENTS_PER_ROUND;
    if (n == 0) {
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    memcpy(tags, e->ready, n * sizeof *tags);
    e->ready_len -= n;
    memmove(e->ready, e->ready + n, e->ready_len * sizeof *tags);
    bool more = e->ready_len > 0;
    pthread_mutex_unlock(&e->mu);
    if (more)
        lc__engine_wake(e); /* this thread may drive one round only, having
                               drained the wake-up meant for the rest */
    int ran = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct epoll_event ev = { .events = 0, .data.u64 = tags[i] };
        ran += dispatch(e, &ev);
    }
    return ran;
}

static bool ready_waiting(lc_engine *e)
{
    return atomic_load_explicit(&e->ready_len, memory_order_acquire) > 0;
}

int lc__engine_run(lc_engine *e, int timeout_ms)
{
    if (e == NULL)
        return LC_EINVAL;
    if (atomic_load_explicit(&e->stopping, memory_order_acquire))
        return LC_ECLOSED;
    lc_engine *outer = tls_running;
    tls_running = e;
    bool fired = false;
    if (timeout_ms != 0 && ready_waiting(e))
        timeout_ms = 0; /* a watch is ready now: only look at the others */
    int ran = e->use_poll ? run_poll(e, timeout_ms, &fired) : run_epoll(e, timeout_ms, &fired);
    if (ran >= 0) {
        ran += run_ready(e);
        ran += run_timers(e, fired); /* (it points the timerfd at the earliest deadline) */
    } else {
        pthread_mutex_lock(&e->mu);
        timerfd_sync(e);
        pthread_mutex_unlock(&e->mu);
    }
    tls_running = outer;
    return ran;
}

_Thread_local bool lc__signals_blocked;

static void *engine_thread(void *arg)
{
    lc_engine *e = arg;
    lc__signals_blocked = true; /* created with every signal blocked, never changed */
    while (!atomic_load_explicit(&e->stopping, memory_order_acquire))
        lc__engine_run(e, -1);
    return NULL;
}

/* LIBCHAN_ENGINE in the environment: "poll" or "epoll"; anything else (or
 * unset) is auto. */
static lc__engine_backend backend_from_env(void)
{
    const char *v = getenv("LIBCHAN_ENGINE");
    if (v != NULL && strcmp(v, "poll") == 0)
        return LC__ENGINE_POLL;
    if (v != NULL && strcmp(v, "epoll") == 0)
        return LC__ENGINE_EPOLL;
    return LC__ENGINE_AUTO;
}

int lc__engine_new(lc_engine **out, bool with_thread)
{
    return lc__engine_new_backend(out, with_thread, LC__ENGINE_AUTO);
}

bool lc__engine_uses_poll(const lc_engine *e)
{
    return e->use_poll;
}

int lc__engine_new_backend(lc_engine **out, bool with_thread, lc__engine_backend backend)
{
    if (out == NULL || (backend != LC__ENGINE_AUTO && backend != LC__ENGINE_EPOLL && backend != LC__ENGINE_POLL))
        return LC_EINVAL;
    if (backend == LC__ENGINE_AUTO)
        backend = backend_from_env();
    lc_engine *e = calloc(1, sizeof *e);
    if (e == NULL)
        return LC_ENOMEM;
    e->free_head = NO_SLOT;
    e->tfree_head = NO_SLOT;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->timer_idle, NULL);
    int rc = 0;
    e->evfd = -1;
    e->tfd = -1;
    e->epfd = -1;
    if (backend != LC__ENGINE_POLL) {
        e->epfd = epoll_create1(EPOLL_CLOEXEC);
        /* auto: no epoll here (a seccomp filter, an emulation without it) */
        if (e->epfd < 0 && backend == LC__ENGINE_AUTO && (errno == ENOSYS || errno == EPERM || errno == EACCES))
            e->use_poll = true;
        else if (e->epfd < 0) {
            rc = -errno;
            goto fail;
        }
    } else {
        e->use_poll = true;
    }
    e->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->evfd < 0) {
        rc = -errno;
        goto fail;
    }
    e->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (e->tfd < 0) {
        rc = -errno;
        goto fail;
    }
    if (!e->use_poll) { /* (poll: both are in every round's pollfd array) */
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN; /* level-triggered: see wake_drain */
        ev.data.u64 = WAKE_TAG;
        if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &ev) != 0) {
            rc = -errno;
            goto fail;
        }
        ev.data.u64 = TIMER_TAG;
        if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->tfd, &ev) != 0) {
            rc = -errno;
            goto fail;
        }
    }
    if (with_thread) {
        /* the engine thread takes no signals: they belong to the application */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int err = pthread_create(&e->thread, NULL, engine_thread, e);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (err != 0) {
            rc = -err;
            goto fail;
        }
        e->has_thread = true;
    }
    *out = e;
    return 0;
fail:
    if (e->tfd >= 0)
        close(e->tfd);
    if (e->evfd >= 0)
        close(e->evfd);
    if (e->epfd >= 0)
        close(e->epfd);
    pthread_cond_destroy(&e->timer_idle);
    pthread_mutex_destroy(&e->mu);
    free(e);
    return rc;
}

void lc__engine_stop(lc_engine *e)
{
    if (e == NULL)
        return;
    pthread_mutex_lock(&e->mu);
    atomic_store_explicit(&e->stopping, true, memory_order_release);
    pthread_mutex_unlock(&e->mu);
    lc__engine_wake(e);
}

void lc__engine_free(lc_engine *e)
{
    if (e == NULL)
        return;
    lc__engine_stop(e);
    if (e->has_thread)
        pthread_join(e->thread, NULL);
    for (uint32_t c = 0; c < e->nchunks; c++) {
        lc_watch *chunk = atomic_load_explicit(&e->chunks[c], memory_order_acquire);
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++) {
            pthread_mutex_destroy(&chunk[i].mu);
            pthread_cond_destroy(&chunk[i].idle);
        }
        free(chunk);
    }
    free(e->tslots);
    free(e->heap);
    free(e->pset);
    free(e->fdbits);
    free(e->ready);
    close(e->tfd);
    close(e->evfd);
    if (e->epfd >= 0)
        close(e->epfd);
    pthread_cond_destroy(&e->timer_idle);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void lc__engine_stats(lc_engine *e, size_t *watches, size_t *timers)
{
    pthread_mutex_lock(&e->mu);
    if (watches)
        *watches = e->nwatches;
    if (timers)
        *timers = e->heap_len;
    pthread_mutex_unlock(&e->mu);
}

size_t lc__engine_polled(lc_engine *e)
{
    pthread_mutex_lock(&e->mu);
    size_t n = e->pset_len;
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* ---- the default engine -------------------------------------------------- */

static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(lc_engine *) default_engine;
static void default_at_exit(void);
static bool default_hooks;

/* A forked child has no engine thread and shares the parent's epoll set:
 * forget the parent's engine (its fds are close-on-exec) and start afresh. */
static void default_after_fork(void)
{
    atomic_store_explicit(&default_engine, NULL, memory_order_relaxed);
}

lc_engine *lc__engine_default(void)
{
    lc_engine *e = atomic_load_explicit(&default_engine, memory_order_acquire);
    if (e != NULL)
        return e;
    pthread_mutex_lock(&default_mu);
    e = atomic_load_explicit(&default_engine, memory_order_acquire);
    if (e == NULL && lc__engine_new(&e, true) == 0) {
        atomic_store_explicit(&default_engine, e, memory_order_release);
        if (!default_hooks) {
            default_hooks = true;
            atexit(default_at_exit);
            pthread_atfork(NULL, NULL, default_after_fork);
        }
    }
    pthread_mutex_unlock(&default_mu);
    return e;
}

/*
 * At exit: free the default engine only when nothing uses it. A program may
 * call exit() while sessions, listeners and the threads using them are still
 * at work (test_exit_with_live_sessions): freeing the engine under them was a
 * use-after-free. Then it is left to the process's end, still reachable
 * through default_engine (so leak checkers do not count it).
 */
static void default_at_exit(void)
{
    pthread_mutex_lock(&default_mu);
    lc_engine *e = atomic_load_explicit(&default_engine, memory_order_acquire);
    bool busy = false;
    if (e != NULL) {
        pthread_mutex_lock(&e->mu);
        busy = e->nwatches > 0 || e->heap_len > 0;
        pthread_mutex_unlock(&e->mu);
    }
    pthread_mutex_unlock(&default_mu);
    if (!busy)
        lc__engine_shutdown();
}

void lc__engine_shutdown(void)
{
    pthread_mutex_lock(&default_mu);
    lc_engine *e = atomic_exchange_explicit(&default_engine, NULL, memory_order_acq_rel);
    pthread_mutex_unlock(&default_mu);
    if (e == NULL)
        return;
    /* exit() called from a callback: the engine thread cannot join itself */
    if (e->has_thread && pthread_equal(e->thread, pthread_self()))
        return;
    lc__engine_free(e);
}

/*
 * engine.h - the event engine (src/engine), the bottom layer: fd readiness on
 * epoll (or poll(2)) with one-shot arming, timers on a min-heap, an eventfd
 * to interrupt a sleeping wait. Never installed.
 *
 * Any thread may drive an engine (lc__engine_run); the process-wide default
 * engine also has one dedicated thread doing so. One-shot arming is what makes
 * that safe: a watch fires once per arming, so no two threads ever run the same
 * watch's callback at once, and a thread that wants to do the I/O itself (a
 * sender writing its own frames) can simply not arm.
 *
 * Callbacks run on whichever thread drives the engine. They must not block for
 * long (they stall every other watch that thread would serve). From inside a
 * callback every call here is allowed, with the limits stated per call.
 */
#ifndef LC_ENGINE_H
#define LC_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

typedef struct lc_engine lc_engine;
typedef struct lc_watch lc_watch;

/* Readiness callback: revents are EPOLLIN/EPOLLOUT/EPOLLRDHUP/EPOLLERR/EPOLLHUP
 * bits. Readiness is level-triggered and may be spurious (another thread may
 * have consumed the data first): always treat EAGAIN as "arm and wait". */
typedef void (*lc_watch_cb)(void *ctx, uint32_t revents);

/* Timer callback. Runs once, on a thread driving the engine. */
typedef void (*lc_timer_cb)(void *ctx);

/* A timer handle: an id, never a pointer, so a stale one is harmless (cancel
 * on a timer that already fired is a no-op returning false). 0 is "none". */
typedef uint64_t lc_timer_id;

/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC), the clock of timer deadlines. */
int64_t lc__now_ns(void);

/* ---- engines ------------------------------------------------------------- */

/* How an engine waits: epoll, or poll(2) over a list of the armed watches
 * kept in user space (slower per change of interest: each one that comes
 * while a thread sleeps in poll() wakes it). Auto: LIBCHAN_ENGINE=poll or
 * =epoll in the environment decides; unset, epoll, and poll where
 * epoll_create1 fails with ENOSYS, EPERM or EACCES (seccomp filters,
 * emulators without it). */
typedef enum { LC__ENGINE_AUTO, LC__ENGINE_EPOLL, LC__ENGINE_POLL } lc__engine_backend;

/*
 * A new engine (an epoll set or the poll list, an eventfd for wake-ups, a
 * timerfd for the earliest deadline), waiting the automatic way (above).
 * with_thread: also start one thread that drives it until lc__engine_free
 * (it blocks every signal). Without, callers drive it with lc__engine_run.
 * Returns 0 or a negative code (LC_ENOMEM, -EMFILE, ...).
 */
int lc__engine_new(lc_engine **out, bool with_thread);

/* lc__engine_new with the backend chosen by the caller (LC_EINVAL for an
 * unknown one). Everything below behaves the same with either. */
int lc__engine_new_backend(lc_engine **out, bool with_thread, lc__engine_backend backend);

/* True when e waits with poll(2). */
bool lc__engine_uses_poll(const lc_engine *e);

/*
 * Stops an engine without freeing it: every thread in lc__engine_run wakes and
 * returns, and every later lc__engine_run, lc__engine_add and timer_add
 * returns LC_ECLOSED. Use it to stop threads of your own that drive the
 * engine, join them, then lc__engine_free. Idempotent; any thread.
 */
void lc__engine_stop(lc_engine *e);

/*
 * Stops (lc__engine_stop) and frees an engine: joins the engine's own thread
 * and frees every watch and timer still registered. Pending timers are
 * dropped without running; watches are dropped without closing their fds
 * (the fds belong to whoever added them). Threads of yours that drive the
 * engine must have returned from lc__engine_run (stop, then join them), and
 * no other call on the engine may be in progress. Must not be called from
 * one of the engine's callbacks.
 */
void lc__engine_free(lc_engine *e);

/*
 * The process-wide engine, created on first use with one dedicated thread.
 * NULL only when it cannot be created (out of memory or fds). Thread-safe.
 */
lc_engine *lc__engine_default(void);

/*
 * Frees the default engine (lc__engine_free) if it exists; the next
 * lc__engine_default creates a new one. Also registered with atexit so a
 * process exits with no thread or memory left (ASan/TSan clean). Call only
 * when nothing uses the default engine any more.
 */
void lc__engine_shutdown(void);

/*
 * One round: one epoll_wait of at most timeout_ms (-1 = until something
 * happens, 0 = poll; a timer coming due is something), then runs the
 * callbacks of the ready watches and of the expired timers. Several threads may call it at once on one engine. Returns
 * the number of callbacks run (0 when woken or timed out), LC_ECLOSED when the
 * engine is being freed, or a negative errno from epoll_wait (never -EINTR:
 * an interrupted wait returns 0).
 */
int lc__engine_run(lc_engine *e, int timeout_ms);

/* True on an engine's own thread, which blocks every signal for good: a
 * write there cannot raise SIGPIPE in the application. */
extern _Thread_local bool lc__signals_blocked;

/* Interrupts lc__engine_run calls sleeping in epoll_wait (at least one wakes
 * and returns). Async-signal-safe. */
void lc__engine_wake(lc_engine *e);

/* ---- watches ------------------------------------------------------------- */

/*
 * Registers fd with the engine. The watch starts disarmed unless events != 0,
 * in which case it is armed as by lc__engine_arm. The fd stays the caller's;
 * it must stay open until lc__engine_del returns (close it after del, never
 * before: epoll registers the open file, not the number). One watch per fd
 * per engine: a carrier wanting both directions arms IN and OUT on one
 * watch. An fd with no readiness to wait for (a regular file; with epoll
 * also a device without a poll method, such as /dev/null) is always ready:
 * each arming runs the callback at the next round, reporting the armed
 * EPOLLIN/EPOLLOUT/EPOLLPRI (a hang-up never comes). Returns 0 or a negative
 * code (-EBADF, -EPERM for a directory, -EEXIST if fd is already in this
 * engine, LC_ENOMEM, LC_ECLOSED).
 */
int lc__engine_add(lc_engine *e, int fd, uint32_t events, lc_watch_cb cb, void *ctx,
                   lc_watch **out);

/*
 * Asks for one notification of each of `events` (EPOLLIN, EPOLLOUT,
 * EPOLLRDHUP; EPOLLERR and EPOLLHUP are always reported). Interest
 * accumulates: arming EPOLLOUT while EPOLLIN is armed waits for either. An
 * interest is consumed when it is reported: after the callback runs, the
 * interests that were not reported stay armed, the reported ones are dropped
 * until armed again (EPOLLERR/EPOLLHUP consume everything). So, e.g., the
 * engine's reader re-arms EPOLLIN at the end of each callback, and a writer
 * that met EAGAIN arms EPOLLOUT from its own thread, without either losing the
 * other's interest. Arming while the callback runs (from inside it or from any
 * other thread) takes effect when it returns, so the callback never runs on
 * two threads at once. Returns 0, or a negative errno from epoll_ctl.
 */
int lc__engine_arm(lc_watch *w, uint32_t events);

/* lc__engine_arm of `events` that also withdraws `drop` (not in events), in
 * one change to the kernel's interest: a watch that moves from one interest
 * to another (a session's carrier from the hang-up alone, while reading is
 * paused, back to EPOLLIN) leaves nothing of the old one armed. */
int lc__engine_arm_instead(lc_watch *w, uint32_t events, uint32_t drop);

/* The interests armed on w now (tests). */
uint32_t lc__engine_armed(lc_watch *w);

/* Withdraws interest in `events` (others stay armed). Returns 1 when some
 * was armed, 0 when none was, or a negative errno. An event already on its
 * way may still run the callback once. */
int lc__engine_disarm(lc_watch *w, uint32_t events);

/*
 * Removes the watch and frees it. When it returns, the callback is not
 * running and will never run again, and the fd may be closed. If the callback
 * is running on another thread, waits for it to return. Called from inside the
 * watch's own callback, it does not wait (the callback is the caller): the
 * callback may go on using its ctx until it returns, and it is never called
 * again. Deadlock warning: do not call it from a callback for a watch whose
 * callback may itself be waiting (in lc__engine_del or lc__engine_timer_cancel)
 * on that callback. w must not be used afterwards.
 */
void lc__engine_del(lc_watch *w);

/* The fd a watch was added with. */
int lc__watch_fd(const lc_watch *w);

/* ---- timers -------------------------------------------------------------- */

/*
 * Calls cb(ctx) once, on a thread driving the engine, at or soon after
 * deadline_ns (lc__now_ns clock; a past deadline fires at the next round, so
 * deadline 0 is "run this on the engine thread soon"). Timers with equal
 * deadlines fire in the order they were added. Returns the id (never 0) in
 * *out, or LC_ENOMEM / LC_ECLOSED.
 */
int lc__engine_timer_add(lc_engine *e, int64_t deadline_ns, lc_timer_cb cb, void *ctx,
                         lc_timer_id *out);

/*
 * Cancels a timer. Returns true when this call prevented the callback (it had
 * not started and never will). Returns false when the callback already ran, or
 * is running, or id is unknown/0: then, if it is running on another thread,
 * cancel first waits until it has returned, so after any cancel the callback
 * is not running and ctx may be freed. Called from inside that timer's own
 * callback it returns false at once (no wait). Same deadlock warning as
 * lc__engine_del.
 */
bool lc__engine_timer_cancel(lc_engine *e, lc_timer_id id);

/* ---- introspection for tests ------------------------------------------- */

/* Number of live watches and of pending timers. */
void lc__engine_stats(lc_engine *e, size_t *watches, size_t *timers);

/* Number of watches in the poll backend's list (armed, not running); 0 with epoll. */
size_t lc__engine_polled(lc_engine *e);

#endif

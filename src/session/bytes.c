/*
 * bytes.c - byte streams on a session (src/session): the library pumps an
 * fd the application gave to and from a sub-stream's DATA frames, EOF and
 * FIN mapped both ways.
 */
#include "session_internal.h"

#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

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
 * up to this (lc__bytes_open_received says why not more). */
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

/* Appends inbound bytes for st's fd (written by lc__bytes_kick). mu held. */
int lc__bytes_inbound_locked(lc_session *s, lc_stream *st, const uint8_t *p, size_t n)
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
    lc__bytes_over_note_locked(s, st);
    return rc;
}

/*
 * Counts st among the byte streams whose fd is behind by more than
 * BYTES_BUF; toward a peer without windows, reading the carrier pauses
 * while any is (a peer with windows stops by itself), and resumes only once
 * none is: lc__resume_reading looks at the count. It used to look only at
 * full queues, so every delivery on another channel resumed reading, and an
 * fd nobody read took gigabytes
 * (test_paused_byte_stream_stays_paused_beside_other_channels). mu held.
 */
void lc__bytes_over_note_locked(lc_session *s, lc_stream *st)
{
    bool over = fd_queued(st) > BYTES_BUF;
    if (over == st->fd_over)
        return;
    st->fd_over = over;
    s->fds_over += over ? 1 : (size_t)-1;
    if (over && !atomic_load(&s->peer_fc) && !atomic_load(&s->peer_gone)) {
        s->paused = true;
        lc__close_progress_locked(s);
    }
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
void lc__pipe_grown_release(lc_stream *st)
{
    if (st->fd_pipe_grown) {
        st->fd_pipe_grown = false;
        atomic_fetch_sub(&pipes_grown, 1);
    }
}

/*
 * Registers fd for st's pump, disarmed (nothing runs until lc__bytes_start
 * has stored fd and watch), before a message's frames are queued: a byte
 * stream whose fd the engine refuses then fails the send, the message left
 * to the caller. LC_ENOTSUP for a directory, LC_EINVAL for an fd already
 * watched (the same fd twice in a message), LC_EBADF for no open fd. A
 * regular file is taken (the engine runs its watch whenever it is armed:
 * reads and writes of a file never wait), and pumped like a pipe from its
 * current offset: reading stops at its end (FIN), writing appends what the
 * peer sends. (It used to be refused, as epoll refuses it: a program had to
 * copy a file into a pipe to send it over TCP.)
 */
int lc__bytes_watch(lc_stream *st, int fd, lc_watch **w)
{
    int rc = lc__engine_add(st->s->eng, fd, 0, bytes_cb, st, w);
    return rc == -EPERM ? LC_ENOTSUP : rc == -EEXIST ? LC_EINVAL : rc;
}

/* Starts pumping fd for st; pre: its watch from lc__bytes_watch, or NULL
 * (added here). On failure fd is closed and the watch deleted. */
int lc__bytes_start(lc_stream *st, int fd, bool we_read, bool we_write, bool mu_held, lc_watch *pre)
{
    lc_session *s = st->s;
    int fl = fcntl(fd, F_GETFL);
    int rc = 0;
    lc_watch *w = pre;
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        rc = -errno;
    /* added disarmed: nothing runs before fd and fdw are stored */
    if (rc == 0 && w == NULL)
        rc = lc__engine_add(s->eng, fd, 0, bytes_cb, st, &w);
    if (!mu_held)
        pthread_mutex_lock(&s->mu);
    lc_watch *unused = rc != 0 ? pre : NULL;
    if (rc == 0 && (s->dead || !st->in_table)) {
        /* the session ended (or the stream did) since the frames were
         * queued: lc__session_fail will not see this watch, and no FIN or RST can
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
        st->no_inbound = !we_write;
        stream_ref(st); /* the watch's reference, dropped in lc__bytes_close */
    } else {
        /* the session or the stream ended meanwhile, or fd took no
         * O_NONBLOCK: not a stream (an fd epoll refuses fails the send
         * before, lc__bytes_watch) */
        st->out_open = st->in_open = false;
    }
    if (rc == 0 && we_read)
        lc__engine_arm(w, EPOLLIN); /* under mu, as in bytes_pump */
    if (!mu_held)
        pthread_mutex_unlock(&s->mu);
    if (unused != NULL)
        lc__engine_del(unused); /* added disarmed: it never ran */
    if (rc != 0) {
        close(fd);
        return rc;
    }
    return 0;
}

/*
 * A byte stream a message of the peer names (ext 1 duplex, 2 the holder
 * writes, 3 the holder reads): the application gets one end of a
 * socketpair, *app_fd, and we pump the other to and from the sub-stream.
 * mu held.
 */
int lc__bytes_open_received(lc_stream *sub, int ext, int *app_fd)
{
    lc_session *s = sub->s;
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
    int rc = lc__bytes_start(sub, sv[1], ext != 3, ext != 2, true, NULL);
    if (rc != 0) {
        close(sv[0]);
        return rc;
    }
    *app_fd = sv[0];
    return 0;
}

/* Both directions are over: stop watching, close, leave the table. Called
 * with no lock; from the watch's own callback or any thread. */
void lc__bytes_close(lc_stream *st)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->mu);
    lc_watch *w = st->fdw;
    int fd = st->fd;
    lc__pipe_grown_release(st); /* (once: a second lc__bytes_close finds the flag clear) */
    st->fdw = NULL;
    st->fd = -1;
    st->local_fin = true;
    /* what was still queued for the fd can go nowhere now */
    st->fd_out.len = st->fd_out_off = 0;
    bool was_over = st->fd_over;
    lc__bytes_over_note_locked(s, st);
    lc__close_progress_locked(s);
    if (w != NULL)
        atomic_fetch_add(&s->fd_closers, 1); /* lc_session_free waits for the close */
    lc__stream_maybe_done_locked(s, st);
    pthread_mutex_unlock(&s->mu);
    if (was_over)
        lc__resume_reading(s);
    if (w == NULL)
        return;
    lc__engine_del(w);
    close(fd);
    atomic_fetch_sub(&s->fd_closers, 1);
    lc__stream_unref(st); /* the watch's reference */
}

/* Queues a DATA frame of a byte stream; flush says whether to write now
 * (the pump batches several reads into one write). */
static void bytes_send(lc_stream *st, const uint8_t *p, size_t n, uint8_t flags, bool flush)
{
    lc_session *s = st->s;
    pthread_mutex_lock(&s->wmu);
    if (!s->dead && !st->reset && lc__spdy_put_data(&s->out, st->id, flags, p, n) == 0) {
        if (n > 0)
            lc__note_data_wmu_locked(s, st);
        st->sent += n;
        if (flush)
            lc__flush_locked(s);
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
    lc__note_data_wmu_locked(s, st);
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
        lc__session_fail(s, w == -EPIPE ? -ECONNRESET : (int)w);
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
            lc__session_fail(s, arc); /* half a frame out: the stream of frames is broken */
            return 0;
        }
    }
    s->writing = false;
    if (pending_out(s) > 0)
        lc__flush_locked(s); /* our rest, and what others appended meanwhile */
    else
        /* all written: a sender that found the output full because of our
         * frame (direct_out) and blocked is woken as after any flush; else
         * it slept until some later write (test_direct_write_wakes_blocked_senders) */
        lc__wake_after_flush_locked(s);
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
        uint8_t *big = lc__pump_buf();
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
                atomic_store(&s->senders_blocked, true); /* re-armed by lc__wake_blocked_senders */
            pthread_mutex_unlock(&s->wmu);
            if (full || win <= 0) {
                if (win <= 0)
                    /* The window opens by reading. Arming once was not
                     * enough: another thread's drive disarmed the carrier
                     * and left it lazily unwatched, and the WINDOW_UPDATE
                     * waited for the backstop (test_byte_stream_out_of_
                     * window_resumes_at_once). No lazy re-arming for this
                     * session from now on: it moves bulk data, which the
                     * engine reads anyway. */
                    lc__feeder_passive(s);
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
            if (n < 0) {
                /* A read error (ECONNRESET from a socket whose other end
                 * was reset, EIO): the stream was cut, which a FIN would
                 * give the peer as its clean end. It is reset instead
                 * (RST_STREAM CANCEL: a Go reader gets an error), both
                 * ways, as SPDY ends a reset stream. */
                pthread_mutex_lock(&s->mu);
                st->out_open = false;
                st->in_open = false;
                st->fd_out.len = st->fd_out_off = 0;
                /* (also after the peer's FIN: our half is still open,
                 * and without a RST or FIN the peer's reader waited for
                 * ever, a review helper) */
                bool rst = !st->reset;
                st->reset = true;
                lc__close_progress_locked(s);
                pthread_mutex_unlock(&s->mu);
                if (rst) {
                    ctl_arg ra = { st->id, LC_SPDY_CANCEL };
                    lc__send_control(s, lc__ctl_rst, &ra);
                }
                break;
            }
            /* EOF: FIN */
            bytes_send(st, NULL, 0, LC_SPDY_FLAG_FIN, true);
            pthread_mutex_lock(&s->mu);
            st->out_open = false;
            lc__close_progress_locked(s);
            pthread_mutex_unlock(&s->mu);
            break;
        }
    }

    if (batched > 0)
        lc__flush_now(s); /* what the batch left queued */

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
    lc__bytes_over_note_locked(s, st);
    if (!st->fd_over && s->paused)
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
    /* Armed under mu, while st->fdw is still the watch: after it, a
     * lc__bytes_close on another thread (this pump may run from a kick, not
     * the watch's callback, which lc__engine_del would wait for) could have
     * deleted the watch, and its slot could be another fd's by now. */
    if (!done && want && st->fdw != NULL)
        lc__engine_arm(st->fdw, want);
    pthread_mutex_unlock(&s->mu);
    if (cancel) {
        ctl_arg rst = { sid, LC_SPDY_CANCEL };
        lc__send_control(s, lc__ctl_rst, &rst);
    }
    if (grant > 0) {
        ctl_arg wa = { sid, (uint32_t)(grant > 0x7fffffffu ? 0x7fffffffu : grant) };
        lc__send_control(s, lc__ctl_window, &wa);
    }
    if (resume)
        lc__resume_reading(s);
    if (done)
        lc__bytes_close(st);
}

static void bytes_cb(void *ctx, uint32_t ev)
{
    lc_stream *st = ctx;
    stream_ref(st);
    bytes_pump(st, ev);
    lc__stream_unref(st);
}

/* Something arrived for the fd (or its end): write it out from here. */
void lc__bytes_kick(lc_stream *st)
{
    stream_ref(st);
    bytes_pump(st, 0);
    lc__stream_unref(st);
}


/*
 * fuzz_session.c - fuzz target of the session layer (src/session, with
 * everything under it): a server session (lc__session_from_fd on one end of
 * a socketpair) is fed the input as the bytes of a peer, written into the
 * other end, which is then half-closed; a helper thread drains (and parses)
 * what the session writes back, while this thread accepts the channels the
 * peer opens and receives, inspects and frees their messages, until the
 * session ends (LC_ESESSION / LC_EPROTO: the input is finite, EOF ends it).
 *
 * Two input forms:
 *  - raw: the bytes go to the session as they are (the Go vectors are seeds);
 *  - script: an input starting with "LCS1" is a list of operations that the
 *    harness turns into frames with our SPDY encoder, so header blocks are
 *    valid compressed blocks in the peer's zlib stream (the fuzzer could not
 *    produce those) and messages can name references; see build_script().
 *    The script may also pass fds (SCM_RIGHTS) and pause between writes, and
 *    its first byte after the magic chooses how this side consumes.
 *
 * Checks beyond "no crash, no leak, no UB": every run ends within a deadline
 * (abort otherwise), no fd is left open (count before == count after), and
 * what the session writes is valid SPDY/3 (our decoder accepts all of it, the
 * first frame is SETTINGS).
 *
 * The engine thread is process-wide: LLVMFuzzerInitialize starts it, so its
 * fds are part of the baseline. Built with LC_FUZZ_LIBFUZZER (clang
 * -fsanitize=fuzzer) it is a libFuzzer target; otherwise its main() runs the
 * files named on the command line (ctest replays the seed corpus that way).
 */
#include "session/session_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHECK(c)                                                               \
    do {                                                                       \
        if (!(c)) {                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* A run that takes longer than this is a hang: the session did not end
 * (LC_FUZZ_DEADLINE_MS overrides it). */
static int64_t run_deadline_ms = 20000;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;
}

/* ---- what the peer writes -------------------------------------------------- */

/* Consumer behaviour (script byte 4; raw inputs use RAW_FLAGS). */
enum {
    C_REPLY       = 0x01, /* send a message on every Sender received, then release it */
    C_NESTED      = 0x02, /* receive from the Receivers received (else release at once) */
    C_DROP        = 0x04, /* release every top-level channel at once, unread */
    C_CLOSE       = 0x08, /* lc_session_close (short timeout) after the first channel */
    C_STREAMS     = 0x10, /* write into received byte streams before closing them */
    C_OPEN        = 0x20, /* open a channel of our own and send on it */
    C_SMALLQ      = 0x40, /* recv_queue 2, accept_queue 2, stream_window 1024:
                             backpressure, dropped channels */
    C_LATE        = 0x80  /* touch nothing until the peer has written everything
                             (or is stuck for 20 ms), and 5 ms more: the
                             session meets full queues */
};
#define RAW_FLAGS (C_REPLY | C_NESTED | C_STREAMS)

/* A piece of the peer's output, written after pause_us, with fd (if >= 0)
 * passed along its first byte. */
typedef struct seg {
    size_t off, len;
    int fd;
    unsigned pause_us;
} seg;

#define MAX_SEGS 64

typedef struct script {
    lc_buf out;
    seg segs[MAX_SEGS];
    size_t nsegs;
    unsigned flags;
} script;

typedef struct reader {
    const uint8_t *p;
    size_t n, at;
} reader;

static int u8(reader *r)
{
    return r->at < r->n ? r->p[r->at++] : -1;
}

static uint32_t u32(reader *r)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int b = u8(r);
        v = v << 8 | (uint32_t)(b < 0 ? 0 : b);
    }
    return v;
}

/* Stream id from a selector byte: mostly odd ids (a client's), so that the
 * fuzzer finds valid streams; with the top bit the low 7 bits as they are. */
static uint32_t sel_id(int b)
{
    if (b < 0)
        return 1;
    return (b & 0x80) ? (uint32_t)(b & 0x7f) : (uint32_t)(b & 0x7f) * 2u + 1u;
}

static void seg_close(script *sc)
{
    seg *s = &sc->segs[sc->nsegs - 1];
    s->len = sc->out.len - s->off;
}

/* Starts a new segment (at most MAX_SEGS: then the bytes join the last). */
static seg *seg_new(script *sc)
{
    if (sc->nsegs == MAX_SEGS)
        return NULL;
    if (sc->nsegs > 0)
        seg_close(sc);
    seg *s = &sc->segs[sc->nsegs++];
    s->off = sc->out.len;
    s->len = 0;
    s->fd = -1;
    s->pause_us = 0;
    return s;
}

/* A message payload from a template: kind 0 an int, 1..5 a reference of that
 * ext type, 6 an opaque body with a reference, 7 a time, 8 three references
 * (a Sender r, a Receiver r+1, a byte stream r+2), 9 a passed fd (ext 1,
 * LC_REF_PASSED_FD | r). */
static void template_msg(lc_buf *b, int kind, int ref)
{
    uint8_t m[64];
    size_t n = 0;
    uint8_t r = (uint8_t)(ref < 0 ? 0 : ref);
    switch (kind) {
    case 0:
        memcpy(m, "\x81\xa5Value", 7);
        n = 7;
        m[n++] = r & 0x7f;
        break;
    case 1: case 2: case 3: case 4: case 5:
        memcpy(m, "\x81\xa3Ref\xd6", 6);
        n = 6;
        m[n++] = (uint8_t)kind;
        m[n++] = 0; m[n++] = 0; m[n++] = 0; m[n++] = r;
        break;
    case 6:
        /* ext 7: [content-type, body, [ext 4 ref]] */
        memcpy(m, "\xc7\x0e\x07\x93\xa3x/y\xc4\x00\x91\xd6\x04\x00\x00\x00", 16);
        n = 16;
        m[n++] = r;
        break;
    case 7:
        memcpy(m, "\xc7\x0c\x06\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00", 14);
        n = 14;
        m[n++] = r;
        break;
    case 9:
        memcpy(m, "\x81\xa2" "Fd" "\xd7\x01\x80\x00\x00\x00\x00\x00\x00", 13);
        n = 13;
        m[n++] = r;
        break;
    default:
        /* {"Ret": ext 4 r, "In": ext 5 r+1, "S": ext 1 r+2} */
        memcpy(m, "\x83\xa3Ret\xd6\x04\x00\x00\x00", 9);
        n = 9;
        m[n++] = r;
        memcpy(m + n, "\xa2In\xd6\x05\x00\x00\x00", 8);
        n += 8;
        m[n++] = (uint8_t)(r + 1);
        memcpy(m + n, "\xa1S\xd6\x01\x00\x00\x00", 7);
        n += 7;
        m[n++] = (uint8_t)(r + 2);
        break;
    }
    lc__buf_append(b, m, n);
}

static int pass_fd_of(int kind)
{
    int sv[2], fd = -1;
    switch (kind & 3) {
    case 0:
    case 1:
        if (pipe2(sv, O_CLOEXEC) == 0) {
            fd = sv[kind & 1];
            close(sv[!(kind & 1)]);
        }
        break;
    case 2:
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
            fd = sv[0];
            close(sv[1]);
        }
        break;
    default:
        fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        break;
    }
    return fd;
}

/*
 * Script: "LCS1", a flags byte (C_*), then operations until the input ends,
 * each an opcode byte (mod 12) and its argument bytes:
 *   0 SYN_STREAM  id-sel, flags (1 FIN, 2 UNIDIRECTIONAL, 4 libchan-ref,
 *                 8 libchan-parent-ref, 0x10 ref as raw text, 0x20 an extra
 *                 header, 0xc0 priority/2), ref, parent [, text-len, text]
 *                 [, extra-len, extra value]
 *   1 DATA        id-sel, flags (1 FIN, 0x80 long), len [, len-hi], payload
 *   2 DATA msg    id-sel, flags (1 FIN), kind, ref: a message from template_msg
 *   3 RST_STREAM  id-sel, status
 *   4 SETTINGS    count (mod 4), per entry: which (window, libchan marker,
 *                 raw id, max streams), value (4 bytes)
 *   5 PING        id (4 bytes)
 *   6 GOAWAY      id-sel, status
 *   7 WINDOW_UPDATE id-sel, delta (4 bytes)
 *   8 SYN_REPLY / HEADERS  id-sel, flags
 *   9 raw bytes   len, bytes
 *  10 pass an fd  kind (pipe read end, write end, socket, /dev/null): it
 *                 travels with the next byte written
 *  11 pause       (n mod 8) * 250 us before the next write
 */
static void build_script(const uint8_t *p, size_t n, script *sc)
{
    reader r = { p, n, 4 };
    lc_spdy_deflater z;
    lc__spdy_deflater_init(&z, 6);
    int f = u8(&r);
    sc->flags = f < 0 ? 0 : (unsigned)f;
    seg_new(sc);
    int pending_fd = -1;
    unsigned pending_pause = 0;
    for (;;) {
        int op = u8(&r);
        if (op < 0)
            break;
        seg *cur = &sc->segs[sc->nsegs - 1];
        if ((pending_fd >= 0 || pending_pause) && (op % 12) < 10) {
            /* the next frame starts a segment carrying the fd / pause */
            seg *s = cur->len == 0 && sc->out.len == cur->off ? cur : seg_new(sc);
            if (s != NULL) {
                if (pending_fd >= 0) {
                    if (s->fd >= 0)
                        close(s->fd);
                    s->fd = pending_fd;
                }
                s->pause_us = pending_pause;
            } else if (pending_fd >= 0) {
                close(pending_fd);
            }
            pending_fd = -1;
            pending_pause = 0;
        }
        switch (op % 12) {
        case 0: {
            uint32_t id = sel_id(u8(&r));
            int fl = u8(&r);
            if (fl < 0)
                fl = 4;
            int ref = u8(&r), parent = u8(&r);
            char refs[32], pars[32], text[32], extra[64];
            lc_spdy_header h[3];
            size_t nh = 0;
            if (fl & 4) {
                if (fl & 0x10) {
                    int len = u8(&r);
                    size_t l = 0;
                    for (int i = 0; i < (len < 0 ? 0 : len % 24); i++) {
                        int c = u8(&r);
                        if (c < 0)
                            break;
                        text[l++] = (char)c;
                    }
                    h[nh++] = (lc_spdy_header){ "libchan-ref", 11, text, l };
                } else {
                    int l = snprintf(refs, sizeof refs, "%d", ref < 0 ? 2 : ref);
                    h[nh++] = (lc_spdy_header){ "libchan-ref", 11, refs, (size_t)l };
                }
            }
            if (fl & 8) {
                int l = snprintf(pars, sizeof pars, "%d", parent < 0 ? 2 : parent);
                h[nh++] = (lc_spdy_header){ "libchan-parent-ref", 18, pars, (size_t)l };
            }
            if (fl & 0x20) {
                int len = u8(&r);
                size_t l = 0;
                for (int i = 0; i < (len < 0 ? 0 : len % 64); i++) {
                    int c = u8(&r);
                    if (c < 0)
                        break;
                    extra[l++] = (char)c;
                }
                h[nh++] = (lc_spdy_header){ ":status", 7, extra, l };
            }
            lc__spdy_put_syn_stream(&sc->out, &z, id, 0, (uint8_t)((fl >> 6) * 2), 0,
                                    (uint8_t)(fl & 3), h, nh);
            break;
        }
        case 1: {
            uint32_t id = sel_id(u8(&r));
            int fl = u8(&r);
            int len = u8(&r);
            if (fl < 0 || len < 0)
                break;
            size_t l = (size_t)len;
            if (fl & 0x80) {
                int hi = u8(&r);
                l |= (size_t)(hi < 0 ? 0 : hi) << 8;
            }
            if (l > r.n - r.at)
                l = r.n - r.at;
            lc__spdy_put_data(&sc->out, id, (uint8_t)(fl & 0x7f), r.p + r.at, l);
            r.at += l;
            break;
        }
        case 2: {
            uint32_t id = sel_id(u8(&r));
            int fl = u8(&r), kind = u8(&r), ref = u8(&r);
            lc_buf m;
            lc__buf_init(&m);
            template_msg(&m, kind < 0 ? 0 : kind % 10, ref);
            lc__spdy_put_data(&sc->out, id, (uint8_t)(fl < 0 ? 0 : fl & 1), m.data, m.len);
            lc__buf_free(&m);
            break;
        }
        case 3: {
            uint32_t id = sel_id(u8(&r));
            int st = u8(&r);
            lc__spdy_put_rst_stream(&sc->out, id, st < 0 ? 5 : (uint32_t)st % 12);
            break;
        }
        case 4: {
            int cnt = u8(&r);
            lc_spdy_setting s[3];
            size_t ns = 0;
            for (int i = 0; i < (cnt < 0 ? 0 : cnt % 4); i++) {
                int which = u8(&r);
                uint32_t v = u32(&r);
                switch (which < 0 ? 0 : which % 4) {
                case 0: s[ns] = (lc_spdy_setting){ 0, LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE, v }; break;
                case 1: s[ns] = (lc_spdy_setting){ 0, LC_SETTINGS_LIBCHAN, v }; break;
                case 2: s[ns] = (lc_spdy_setting){ 0, (uint32_t)(which >> 2), v }; break;
                default: s[ns] = (lc_spdy_setting){ 0, LC_SPDY_SETTINGS_MAX_CONCURRENT_STREAMS, v }; break;
                }
                ns++;
            }
            lc__spdy_put_settings(&sc->out, 0, s, ns);
            break;
        }
        case 5:
            lc__spdy_put_ping(&sc->out, u32(&r));
            break;
        case 6: {
            uint32_t id = sel_id(u8(&r));
            int st = u8(&r);
            lc__spdy_put_goaway(&sc->out, id, st < 0 ? 0 : (uint32_t)st % 3);
            break;
        }
        case 7: {
            uint32_t id = sel_id(u8(&r));
            uint32_t d = u32(&r) & 0x7fffffffu;
            lc__spdy_put_window_update(&sc->out, id, d ? d : 1);
            break;
        }
        case 8: {
            uint32_t id = sel_id(u8(&r));
            int fl = u8(&r);
            lc_spdy_header h = { ":status", 7, "200", 3 };
            if (fl >= 0 && (fl & 2))
                lc__spdy_put_headers(&sc->out, &z, id, (uint8_t)(fl & 1), &h, 1);
            else
                lc__spdy_put_syn_reply(&sc->out, &z, id, (uint8_t)(fl < 0 ? 0 : fl & 1), &h, 1);
            break;
        }
        case 9: {
            int len = u8(&r);
            size_t l = len < 0 ? 0 : (size_t)len;
            if (l > r.n - r.at)
                l = r.n - r.at;
            lc__buf_append(&sc->out, r.p + r.at, l);
            r.at += l;
            break;
        }
        case 10: {
            int kind = u8(&r);
            if (pending_fd >= 0)
                close(pending_fd);
            pending_fd = pass_fd_of(kind < 0 ? 3 : kind);
            break;
        }
        default: {
            int k = u8(&r);
            pending_pause = (unsigned)(k < 0 ? 1 : k % 8) * 250u;
            break;
        }
        }
    }
    if (pending_fd >= 0)
        close(pending_fd); /* nothing left to carry it */
    seg_close(sc);
    lc__spdy_deflater_free(&z);
}

/* ---- the peer's end: write the script, drain and parse the replies --------- */

typedef struct peer {
    int fd;
    script *sc;
    _Atomic size_t got;   /* bytes the session wrote */
    _Atomic size_t sent;  /* bytes of the script written */
    int frames;
    int first_type;
    int64_t deadline;
    _Atomic int wdone, rdone; /* for C_LATE and the hang report */
    _Atomic size_t seg;
} peer;

static void *peer_main(void *x)
{
    peer *pr = x;
    script *sc = pr->sc;
    lc_spdy_decoder dec;
    lc__spdy_decoder_init(&dec, NULL);
    uint8_t buf[16384];
    size_t si = 0, pos = 0;
    int wdone = 0, rdone = 0, paused = 0;
    while (si < sc->nsegs && sc->segs[si].len == 0) {
        if (sc->segs[si].fd >= 0)
            close(sc->segs[si].fd);
        sc->segs[si].fd = -1;
        si++;
    }
    if (si == sc->nsegs) {
        shutdown(pr->fd, SHUT_WR);
        wdone = 1;
    }
    while (!(wdone && rdone)) {
        pr->wdone = wdone;
        pr->rdone = rdone;
        pr->seg = si;
        if (now_ms() > pr->deadline + 5000)
            break; /* the main thread reports the hang */
        struct pollfd pfd = { pr->fd, (short)(POLLIN | (wdone ? 0 : POLLOUT)), 0 };
        if (poll(&pfd, 1, 100) < 0 && errno != EINTR)
            break;
        if (!rdone && (pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = read(pr->fd, buf, sizeof buf);
            if (n > 0) {
                pr->got += (size_t)n;
                size_t off = 0;
                while (off < (size_t)n) {
                    lc_spdy_frame f;
                    size_t used = 0;
                    int rc = lc__spdy_decode(&dec, buf + off, (size_t)n - off, &used, &f);
                    if (rc < 0)
                        fprintf(stderr, "the session wrote invalid SPDY: %d (%s)\n", rc,
                                lc__spdy_strerror(rc));
                    CHECK(rc >= 0);
                    off += used;
                    if (rc == 0)
                        break;
                    if (pr->frames++ == 0)
                        pr->first_type = f.type;
                }
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                rdone = 1;
            }
        }
        if (!wdone && (pfd.revents & (POLLOUT | POLLHUP | POLLERR))) {
            seg *s = &sc->segs[si];
            if (pos == 0 && s->pause_us && !paused) {
                usleep(s->pause_us);
                paused = 1;
            }
            ssize_t n;
            if (pos == 0 && s->fd >= 0) {
                struct iovec iov = { (void *)(sc->out.data + s->off), 1 };
                union {
                    struct cmsghdr h;
                    char b[CMSG_SPACE(sizeof(int))];
                } cm;
                memset(&cm, 0, sizeof cm);
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                                     .msg_control = cm.b, .msg_controllen = sizeof cm.b };
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(c), &s->fd, sizeof(int));
                n = sendmsg(pr->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0) {
                    close(s->fd); /* in flight now: the kernel holds it */
                    s->fd = -1;
                }
            } else {
                n = send(pr->fd, sc->out.data + s->off + pos, s->len - pos,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
            }
            if (n > 0) {
                pr->sent += (size_t)n;
                pos += (size_t)n;
                while (si < sc->nsegs && pos == sc->segs[si].len) {
                    si++;
                    pos = 0;
                    paused = 0;
                    if (si < sc->nsegs && sc->segs[si].len == 0 && sc->segs[si].fd >= 0) {
                        close(sc->segs[si].fd);
                        sc->segs[si].fd = -1;
                    }
                }
                if (si == sc->nsegs) {
                    shutdown(pr->fd, SHUT_WR);
                    wdone = 1;
                }
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                wdone = 1; /* the session hung up (EPIPE): the rest is not read */
            }
        }
    }
    pr->wdone = 1;
    pr->rdone = rdone;
    for (size_t i = 0; i < sc->nsegs; i++)
        if (sc->segs[i].fd >= 0) {
            close(sc->segs[i].fd);
            sc->segs[i].fd = -1;
        }
    lc__spdy_decoder_free(&dec);
    return NULL;
}

/* ---- this side: accept channels, receive, inspect, free --------------------- */

#define MAX_RECV 64

typedef struct consumer {
    unsigned flags;
    lc_receiver *r[MAX_RECV];
    size_t n;
    long msgs, channels;
} consumer;

static void add_receiver(consumer *c, lc_receiver *r)
{
    if (c->n < MAX_RECV)
        c->r[c->n++] = r;
    else
        lc_receiver_release(r);
}

static void on_attachment(consumer *c, lc_value *v)
{
    int err;
    switch (lc_value_type(v)) {
    case LC_SENDER:
        if (c->flags & C_REPLY) {
            lc_sender *s = lc_value_take_sender(v, &err);
            CHECK(s != NULL);
            lc_msg *m = lc_pack("{s:i}", "Echo", 1);
            if (m != NULL && lc_send(s, m, 0) != 0)
                lc_msg_free(m);
            if (c->msgs & 1)
                lc_close(s);
            lc_sender_release(s);
        }
        break;
    case LC_RECEIVER:
        if (c->flags & C_NESTED) {
            lc_receiver *r = lc_value_take_receiver(v, &err);
            CHECK(r != NULL);
            add_receiver(c, r);
        }
        break;
    case LC_STREAM:
        if (c->flags & C_STREAMS) {
            lc_stream_mode mode = lc_value_stream_mode(v);
            int fd = lc_value_take_fd(v, &err);
            CHECK(fd >= 0);
            if (mode != LC_STREAM_READ) {
                ssize_t w = send(fd, "bytes", 5, MSG_NOSIGNAL | MSG_DONTWAIT);
                (void)w;
            }
            if (mode != LC_STREAM_WRITE) {
                char b[64];
                ssize_t rd = recv(fd, b, sizeof b, MSG_DONTWAIT);
                (void)rd;
            }
            close(fd);
        }
        break;
    default:
        break;
    }
}

static void walk(consumer *c, lc_value *v, int depth)
{
    if (v == NULL || depth > 100)
        return;
    switch (lc_value_type(v)) {
    case LC_ARRAY:
        for (size_t i = 0; i < lc_value_len(v); i++)
            walk(c, lc_array_get(v, i), depth + 1);
        break;
    case LC_MAP:
        for (size_t i = 0; i < lc_value_len(v); i++) {
            walk(c, lc_map_key(v, i), depth + 1);
            walk(c, lc_map_value(v, i), depth + 1);
        }
        break;
    default:
        on_attachment(c, v);
        break;
    }
}

static void on_msg(consumer *c, lc_msg *m)
{
    c->msgs++;
    if (lc_msg_body(m, NULL, NULL) != NULL) {
        for (size_t i = 0; i < lc_msg_attachment_count(m); i++)
            on_attachment(c, lc_msg_attachment(m, i));
    } else {
        walk(c, lc_msg_root(m), 0);
    }
    lc_msg_free(m);
}

/* Receives what is there on every receiver; drops the ended ones. Returns
 * whether anything happened. */
static int drain(consumer *c)
{
    int progress = 0;
    for (size_t i = 0; i < c->n;) {
        lc_msg *m = NULL;
        int rc = 0;
        int k = 0;
        while (k++ < 64 && (rc = lc_recv(c->r[i], &m, 0)) == 0) {
            on_msg(c, m);
            progress = 1;
        }
        if (k > 64 || rc == LC_ETIMEDOUT) {
            i++;
            continue;
        }
        /* the channel ended: LC_EOF, LC_ESESSION, LC_EPROTO, LC_ECLOSED */
        if (!(rc == LC_EOF || rc == LC_ESESSION || rc == LC_EPROTO || rc == LC_ECLOSED))
            fprintf(stderr, "fuzz_session: a channel ended with %d (%s)\n", rc, lc_strerror(rc));
        CHECK(rc == LC_EOF || rc == LC_ESESSION || rc == LC_EPROTO || rc == LC_ECLOSED);
        lc_receiver_release(c->r[i]);
        c->r[i] = c->r[--c->n];
        progress = 1;
    }
    return progress;
}

/* ---- one run ---------------------------------------------------------------- */

static void run(const uint8_t *data, size_t size)
{
    int64_t t0 = now_ms();
    script sc;
    memset(&sc, 0, sizeof sc);
    lc__buf_init(&sc.out);
    if (size >= 4 && memcmp(data, "LCS1", 4) == 0) {
        build_script(data, size, &sc);
    } else {
        sc.flags = RAW_FLAGS;
        seg_new(&sc);
        lc__buf_append(&sc.out, data, size);
        seg_close(&sc);
    }

    lc_options o;
    lc_options_default(&o);
    o.ref_timeout_ms = 20;
    if (sc.flags & C_SMALLQ) {
        o.recv_queue = 2;
        o.accept_queue = 2;
        o.stream_window = 1024;
    }

    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);
    lc_session *s = NULL;
    CHECK(lc__session_from_fd(sv[1], false, &o, &s) == 0);

    peer pr = { .fd = sv[0], .sc = &sc, .first_type = -1, .deadline = t0 + run_deadline_ms };
    pthread_t th;
    CHECK(pthread_create(&th, NULL, peer_main, &pr) == 0);

    consumer c = { .flags = sc.flags };
    if (sc.flags & C_LATE) {
        /* until the peer is done, or stuck (the session stopped reading) */
        size_t last = 0;
        int64_t since = now_ms();
        while (!atomic_load(&pr.wdone) && now_ms() - since < 20) {
            usleep(200);
            if (atomic_load(&pr.sent) != last) {
                last = atomic_load(&pr.sent);
                since = now_ms();
            }
        }
        usleep(5000);
    }
    if (sc.flags & C_OPEN) {
        lc_sender *mine = NULL;
        if (lc_session_sender(s, &mine) == 0) {
            lc_msg *m = lc_pack("{s:s}", "Hello", "peer");
            if (m != NULL && lc_send(mine, m, 0) != 0)
                lc_msg_free(m);
            lc_close(mine);
            lc_sender_release(mine);
        }
    }
    int ended = 0, closed = 0;
    unsigned turn = 0;
    while (!ended || c.n > 0) {
        if (now_ms() - t0 > run_deadline_ms) {
            pthread_mutex_lock(&s->mu);
            int paused = s->paused;
            size_t nstreams = s->streams.len;
            pthread_mutex_unlock(&s->mu);
            fprintf(stderr, "fuzz_session: the run did not end in %lld ms (session error %d, "
                    "dead %d, paused %d, reader %d, %zu streams; %zu receivers open, "
                    "%ld channels, %ld messages; peer wrote %zu/%zu segments, write side "
                    "%s, read side %s, got %zu bytes)\n",
                    (long long)run_deadline_ms, lc_session_error(s), (int)atomic_load(&s->dead), paused,
                    atomic_load(&s->reader), nstreams, c.n, c.channels, c.msgs, pr.seg,
                    sc.nsegs, pr.wdone ? "done" : "open", pr.rdone ? "at EOF" : "open",
                    (size_t)pr.got);
            abort();
        }
        int progress = 0;
        if (!ended) {
            lc_receiver *r = NULL;
            int rc = lc_session_receiver(s, &r, c.n > 0 ? 0 : (turn & 1) ? 2 : 0);
            if (rc == 0) {
                CHECK(r != NULL);
                c.channels++;
                progress = 1;
                if (sc.flags & C_DROP)
                    lc_receiver_release(r);
                else
                    add_receiver(&c, r);
                if ((sc.flags & C_CLOSE) && !closed) {
                    closed = 1;
                    lc_session_close(s, 20);
                }
            } else if (rc != LC_ETIMEDOUT) {
                CHECK(rc == LC_ESESSION);
                ended = 1;
                progress = 1;
            }
        }
        progress |= drain(&c);
        if (!progress && c.n > 0) {
            /* block a little on one of them (a network Receiver may read the
             * carrier itself while it waits) */
            lc_msg *m = NULL;
            size_t i = turn % c.n;
            int rc = lc_recv(c.r[i], &m, 1);
            if (rc == 0)
                on_msg(&c, m);
        }
        turn++;
    }
    int err = lc_session_error(s);
    CHECK(err < 0); /* LC_ESESSION, LC_EPROTO, or a carrier errno */
    lc_session_free(s);
    CHECK(pthread_join(th, NULL) == 0);
    close(sv[0]);
    if (pr.frames > 0)
        CHECK(pr.first_type == LC_SPDY_SETTINGS);
    lc__buf_free(&sc.out);
}

/* ---- entry points ----------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int base_fds;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* the process-wide engine (thread, epoll and eventfd) lives for good */
    CHECK(lc__engine_default() != NULL);
    const char *dl = getenv("LC_FUZZ_DEADLINE_MS");
    if (dl != NULL && atoi(dl) > 0)
        run_deadline_ms = atoi(dl);
    base_fds = count_fds();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int before = count_fds();
    run(data, size);
    /* A byte stream's end may be closed by the engine thread a moment after
     * the session is freed (it sees the EOF of the end the application
     * closed): allow that, not more. */
    int after = count_fds();
    for (int i = 0; i < 1000 && after != before; i++) {
        usleep(1000);
        after = count_fds();
    }
    if (after != before) {
        fprintf(stderr, "fuzz_session: %d fd(s) open before the run, %d after\n", before, after);
        char path[300], target[256];
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
            ssize_t n = readlink(path, target, sizeof target - 1);
            target[n < 0 ? 0 : n] = '\0';
            fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
        }
        if (d != NULL)
            closedir(d);
    }
    CHECK(after == before);
    return 0;
}

#ifndef LC_FUZZ_LIBFUZZER
#include "replay.h"

/* Plain driver: runs every file named on the command line once. */
int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    int n = lc_fuzz_replay(argc, argv);
    if (n < 0)
        return 1;
    CHECK(count_fds() == base_fds);
    printf("fuzz_session: %d input(s) ran clean\n", n);
    return 0;
}
#endif

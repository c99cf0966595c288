/*
 * pack.c - lc_pack()/lc_unpack(): jansson-style format strings over the value
 * tree (src/msg). Packing drives the builder of value.c; unpacking reads the
 * tree in one walk that checks the format and the data and records the
 * outputs, which are stored (and attachments taken) only once all passed.
 */
#include "msg_internal.h"
#include "../core/chan_internal.h"
#include "codec/mpack.h"
#include "codec/wire.h"

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Nesting of '[' / '{' a format may have. Deeper formats are LC_EFORMAT, so the
 * recursion below is bounded. */
#define LC_FMT_MAX_DEPTH 64

/* Largest string/binary the value tree can hold (lc_value.len is 32-bit). */
#define LC_MAX_BYTES ((size_t)UINT32_MAX - 1)

/* One step of the path to the value being worked on. Kept as pointers so the
 * path text is only rendered when something fails: the success path of a pack
 * costs nothing for it. */
typedef struct lc_seg {
    const char *key; /* map key (not NUL-terminated), or NULL for an array index */
    size_t klen;
    size_t idx;
} lc_seg;

/* Outputs an unpack records while it checks (on the stack). A format with
 * more outputs is walked a second time to store them. */
#define LC_UNPACK_OUTS 32

/* An unpack output whose value passed its check, to be stored by store(). */
typedef struct lc_out {
    char c;         /* format character */
    void *o, *o2;   /* output pointers; o2: the length of s#/b, the nsec of t */
    lc_value *v;
} lc_out;

typedef struct lc_walk {
    const char *fmt;
    size_t pos;
    va_list *ap;    /* the arguments (see pack_args) */
    bool store;     /* unpack: the store walk (only when outputs overflow outs) */
    int nseg;       /* current path length */
    int code;       /* first error (pack keeps walking after a data error) */
    unsigned marks; /* unpack: attachments flagged LC_VF_MARK in the check walk */
    lc_out *outs;   /* unpack: outputs recorded by the check walk */
    size_t nouts;   /* how many it met (only LC_UNPACK_OUTS fit in outs) */
    lc_error *err;
    lc_seg path[LC_FMT_MAX_DEPTH + 1];
} lc_walk;

/* ---- errors -------------------------------------------------------------- */

static void append(char *buf, size_t *len, size_t cap, const char *s, size_t n)
{
    if (*len + 1 >= cap)
        return;
    if (n > cap - 1 - *len)
        n = cap - 1 - *len;
    memcpy(buf + *len, s, n);
    *len += n;
    buf[*len] = '\0';
}

/* A map key as it may be shown: control bytes and NUL as \xNN (a NUL used
 * to end the whole error text there), other bytes (UTF-8 too) as they are. */
static void append_key(char *buf, size_t *len, size_t cap, const char *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (c >= 0x20 && c != 0x7f) {
            append(buf, len, cap, &k[i], 1);
        } else {
            char esc[8];
            snprintf(esc, sizeof esc, "\\x%02x", c);
            append(buf, len, cap, esc, 4);
        }
    }
}

/* Writes "Req.Args[2]: " (nothing for the root) into err->text. */
static size_t render_path(const lc_walk *w)
{
    char *t = w->err->text;
    size_t cap = sizeof w->err->text, len = 0;
    t[0] = '\0';
    for (int i = 0; i < w->nseg; i++) {
        const lc_seg *s = &w->path[i];
        if (s->key != NULL) {
            if (i > 0)
                append(t, &len, cap, ".", 1);
            append_key(t, &len, cap, s->key, s->klen);
        } else {
            char num[32];
            int n = snprintf(num, sizeof num, "[%zu]", s->idx);
            append(t, &len, cap, num, (size_t)n);
        }
    }
    if (len > 0)
        append(t, &len, cap, ": ", 2);
    return len;
}

/* Records a data error at the current path (the first one wins). */
__attribute__((format(printf, 3, 4)))
static int fail(lc_walk *w, int code, const char *fmt, ...)
{
    if (w->code != 0)
        return w->code;
    w->code = code;
    w->err->code = code;
    size_t len = render_path(w);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err->text + len, sizeof w->err->text - len, fmt, ap);
    va_end(ap);
    return code;
}

/* Records a format error; it replaces an earlier data error, because it is the
 * bug to fix first (and it explains attachments left unreleased, see lc_pack). */
__attribute__((format(printf, 3, 4)))
static int fmt_fail(lc_walk *w, size_t at, const char *fmt, ...)
{
    if (w->code == LC_EFORMAT)
        return LC_EFORMAT;
    w->code = LC_EFORMAT;
    w->err->code = LC_EFORMAT;
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(w->err->text, sizeof w->err->text, "format: %s at offset %zu", msg, at);
    return LC_EFORMAT;
}

/* A format character for an error text: 'x', or \xNN when not printable. */
static const char *show(char c, char buf[8])
{
    unsigned char u = (unsigned char)c;
    if (u == '\0')
        snprintf(buf, 8, "end");
    else if (u >= 0x20 && u < 0x7f)
        snprintf(buf, 8, "'%c'", c);
    else
        snprintf(buf, 8, "\\x%02x", u);
    return buf;
}

static int unexpected(lc_walk *w, size_t at, bool packing)
{
    char b[8];
    char c = w->fmt[at];
    if (packing && (c == 'v' || c == '?' || c == '*'))
        return fmt_fail(w, at, "%s is only valid in lc_unpack", show(c, b));
    return fmt_fail(w, at, "unexpected %s", show(c, b));
}

static int type_fail(lc_walk *w, const char *want, const lc_value *v)
{
    return fail(w, LC_ETYPE, "expected %s, got %s", want, lc_type_name((lc_type)v->type));
}

/* ---- format scanning ----------------------------------------------------- */

/* Skips the separators (whitespace, ',' and ':') and returns the next format
 * character without consuming it ('\0' at the end). */
static char peek(lc_walk *w)
{
    for (;;) {
        char c = w->fmt[w->pos];
        if ((unsigned char)c > ':')
            return c; /* every value and bracket character: no separator */
        switch (c) {
        case ' ': case '\t': case '\n': case '\r': case '\f': case '\v':
        case ',': case ':':
            w->pos++;
            continue;
        default:
            return c;
        }
    }
}

static bool take_char(lc_walk *w, char c)
{
    if (w->fmt[w->pos] == c) {
        w->pos++;
        return true;
    }
    return false;
}

/* The arguments of a string (a map key in all four walks, pack and unpack,
 * tree and bytes; an 's' or 'b' to pack): the pointer, then its length if
 * the format gave one ('#' after the 's', or a 'b': has_len), else its
 * strlen; 0 for NULL, which each caller reports. */
static const char *str_arg(lc_walk *w, bool has_len, size_t *len)
{
    const char *p = va_arg(*w->ap, const char *);
    if (has_len)
        *len = va_arg(*w->ap, size_t);
    else
        *len = p != NULL ? strlen(p) : 0;
    return p;
}

static void enter(lc_walk *w, int depth, const char *key, size_t klen, size_t idx)
{
    w->path[depth].key = key;
    w->path[depth].klen = klen;
    w->path[depth].idx = idx;
    w->nseg = depth + 1;
}

/* ---- pack ---------------------------------------------------------------- */

/*
 * Builds the value the format describes at w->pos into *out. Once any error
 * is recorded (w->code), nothing more is built: the rest of the format is only
 * walked to consume the arguments and release the attachments among them.
 * Returns LC_EFORMAT when the format is malformed (the walk stops there), else 0.
 */
static int pack_value(lc_walk *w, lc_msg *m, int depth, lc_value **out)
{
    lc_value *v = NULL;
    *out = NULL;
    char c = peek(w);
    size_t at = w->pos;
    if (c == '\0')
        return fmt_fail(w, at, "unexpected end");
    w->pos++;

    switch (c) {
    case 'n':
        if (w->code == 0)
            v = lc_new_nil(m);
        break;
    case 'B': {
        int b = va_arg(*w->ap, int);
        if (w->code == 0)
            v = lc_new_bool(m, b != 0);
        break;
    }
    case 'i': {
        int i = va_arg(*w->ap, int);
        if (w->code == 0)
            v = lc_new_int(m, i);
        break;
    }
    case 'I': {
        int64_t i = va_arg(*w->ap, int64_t);
        if (w->code == 0)
            v = lc_new_int(m, i);
        break;
    }
    case 'U': {
        uint64_t u = va_arg(*w->ap, uint64_t);
        if (w->code == 0)
            v = lc_new_uint(m, u);
        break;
    }
    case 'f': {
        double d = va_arg(*w->ap, double);
        if (w->code == 0)
            v = lc_new_double(m, d);
        break;
    }
    case 's':
    case 'b': {
        bool has_len = c == 'b' || take_char(w, '#');
        size_t len;
        const void *p = str_arg(w, has_len, &len);
        if (p == NULL && has_len && len > 0) {
            fail(w, LC_EINVAL, "NULL %s with length %zu", c == 's' ? "string" : "binary", len);
            break;
        }
        if (p == NULL && !has_len) {
            fail(w, LC_EINVAL, "NULL string");
            break;
        }
        if (len > LC_MAX_BYTES) {
            fail(w, LC_ETOOBIG, "%zu bytes is over the limit", len);
            break;
        }
        if (w->code == 0)
            v = c == 's' ? lc_new_stringn(m, p, len) : lc_new_binary(m, p, len);
        break;
    }
    case 't': {
        int64_t sec = va_arg(*w->ap, int64_t);
        int nsec = va_arg(*w->ap, int);
        if (nsec < 0 || nsec >= 1000000000)
            fail(w, LC_ERANGE, "nanoseconds %d out of range", nsec);
        else if (w->code == 0)
            v = lc_new_time(m, sec, (uint32_t)nsec);
        break;
    }
    case 'S': {
        lc_sender *s = va_arg(*w->ap, lc_sender *);
        if (s == NULL)
            fail(w, LC_EINVAL, "NULL sender");
        else if (w->code != 0)
            lc__sender_drop(s);
        else
            v = lc_new_sender(m, s); /* takes s even when it fails */
        break;
    }
    case 'R': {
        lc_receiver *r = va_arg(*w->ap, lc_receiver *);
        if (r == NULL)
            fail(w, LC_EINVAL, "NULL receiver");
        else if (w->code != 0)
            lc__receiver_drop(r);
        else
            v = lc_new_receiver(m, r);
        break;
    }
    case 'F': {
        int fd = va_arg(*w->ap, int);
        /* An invalid number is never closed: it may be another thread's fd
         * by the time we would close it. */
        if (fd < 0 || fcntl(fd, F_GETFD) == -1)
            fail(w, LC_EBADF, "invalid fd %d", fd);
        else if (w->code != 0)
            close(fd);
        else
            v = lc_new_stream(m, fd, LC_STREAM_DUPLEX); /* takes fd even when it fails */
        break;
    }
    case '[': {
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        if (w->code == 0 && (v = lc_new_array(m)) == NULL)
            fail(w, LC_ENOMEM, "out of memory");
        for (size_t i = 0;; i++) {
            char d = peek(w);
            if (d == ']') {
                w->pos++;
                break;
            }
            if (d == '\0')
                return fmt_fail(w, w->pos, "missing ']'");
            lc_value *e;
            enter(w, depth, NULL, 0, i);
            int rc = pack_value(w, m, depth + 1, &e);
            if (rc == 0 && w->code == 0 && lc_array_append(m, v, e) != 0)
                fail(w, LC_ENOMEM, "out of memory");
            w->nseg = depth;
            if (rc != 0)
                return rc;
        }
        break;
    }
    case '{': {
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        if (w->code == 0 && (v = lc_new_map(m)) == NULL)
            fail(w, LC_ENOMEM, "out of memory");
        for (;;) {
            char d = peek(w);
            if (d == '}') {
                w->pos++;
                break;
            }
            if (d == '\0')
                return fmt_fail(w, w->pos, "missing '}'");
            if (d != 's') {
                char b[8];
                return fmt_fail(w, w->pos, "expected 's' for a map key, got %s", show(d, b));
            }
            w->pos++;
            size_t klen;
            bool key_has_len = take_char(w, '#');
            const char *key = str_arg(w, key_has_len, &klen);
            if (key == NULL && key_has_len && klen == 0)
                key = ""; /* (NULL, 0): empty, as for a value's s# and b */
            if (key == NULL)
                fail(w, LC_EINVAL, "NULL map key");
            else if (klen > LC_MAX_BYTES)
                fail(w, LC_ETOOBIG, "map key of %zu bytes is over the limit", klen);
            lc_value *e;
            enter(w, depth, key != NULL ? key : "(null)", key != NULL ? klen : 6, 0);
            int rc = pack_value(w, m, depth + 1, &e);
            if (rc == 0 && w->code == 0 && lc__map_append_key(m, v, key, klen, e) != 0)
                fail(w, LC_ENOMEM, "out of memory");
            w->nseg = depth;
            if (rc != 0)
                return rc;
        }
        break;
    }
    default:
        return unexpected(w, at, true);
    }
    if (v == NULL && w->code == 0)
        fail(w, LC_ENOMEM, "out of memory");
    *out = v;
    return 0;
}

/* ---- pack: wire form ----------------------------------------------------- */

/*
 * lc_pack first tries to write the message's msgpack bytes straight from
 * the format (a wire-form message, see msg_internal.h), with the same
 * msgpack-c primitives the tree encoder uses, so the bytes are the ones
 * encoding the tree would give. It handles the formats without attachments
 * (n B i I U f s s# b t, arrays, maps) that cannot fail; for
 * any other format, and at any error, it gives up and the tree builder runs
 * over the arguments from the start, reporting what there is to report.
 * Callgrind, bench_session unix lc-rt-reused, the server per round trip:
 * lc_pack 481 -> 378 instructions, lc_send 1047 -> 876 (lc__encode copies
 * the bytes instead of walking a tree), the decoder 409 -> ~270.
 */
#define WIRE_GIVE_UP 1

typedef struct wpack {
    lc_walk w;     /* only fmt, pos and ap are used */
    lc_msg *m;
    lc_buf b;      /* the bytes: at first in the arena's free tail */
    bool in_tail;  /* b.data is that tail, not yet claimed from the arena */
} wpack;

/* Room for n more bytes in p->b, from the arena (nothing else is allocated
 * in the message while the bytes are written). */
static bool wroom(wpack *p, size_t n)
{
    if (p->b.cap - p->b.len >= n)
        return true;
    if (n > SIZE_MAX / 4 || p->b.len > SIZE_MAX / 4)
        return false;
    size_t ncap = p->b.cap * 2;
    if (ncap < p->b.len + n + 64)
        ncap = p->b.len + n + 64;
    uint8_t *d = lc__arena_alloc(p->m, ncap);
    if (d == NULL)
        return false;
    if (p->b.len > 0)
        memcpy(d, p->b.data, p->b.len);
    p->b.data = d;
    p->b.cap = ncap;
    p->in_tail = false;
    return true;
}

/* The container whose header byte is at b.data[at] has n entries: its final
 * header, the fix form in place or a 16/32-bit form with its body moved up. */
static bool wcount(wpack *p, size_t at, uint64_t n, uint8_t fix, uint8_t b16)
{
    if (n < 16) {
        p->b.data[at] = (uint8_t)(fix | n);
        return true;
    }
    if (n >= UINT32_MAX / 2) /* the tree's limit */
        return false;
    size_t extra = n < 65536 ? 2 : 4;
    if (!wroom(p, extra))
        return false;
    uint8_t *h = p->b.data + at;
    memmove(h + 1 + extra, h + 1, p->b.len - at - 1);
    p->b.len += extra;
    if (extra == 2) {
        h[0] = b16;
        h[1] = (uint8_t)(n >> 8);
        h[2] = (uint8_t)n;
    } else {
        uint32_t be = __builtin_bswap32((uint32_t)n);
        h[0] = (uint8_t)(b16 + 1);
        memcpy(h + 1, &be, 4);
    }
    return true;
}

/* A string or binary: its header and its bytes. */
static bool wbytes(wpack *p, bool str, const void *s, size_t len)
{
    if (len > LC_MAX_BYTES || !wroom(p, 5 + len))
        return false;
    if (str)
        lc__mp_str(&p->b, len);
    else
        lc__mp_bin(&p->b, len);
    if (len > 0)
        lc__mp_str_body(&p->b, s, len);
    return true;
}

/* Writes the value the format describes at p->w.pos; 0 or WIRE_GIVE_UP. */
static int wpack_value(wpack *p, int depth)
{
    lc_walk *w = &p->w;
    char c = peek(w);
    w->pos++;
    if (!wroom(p, 9)) /* any header or number */
        return WIRE_GIVE_UP;
    lc_buf *b = &p->b;
    switch (c) {
    case 'n':
        lc__mp_nil(b);
        return 0;
    case 'B':
        if (va_arg(*w->ap, int) != 0)
            lc__mp_true(b);
        else
            lc__mp_false(b);
        return 0;
    case 'i':
        lc__mp_int64(b, va_arg(*w->ap, int));
        return 0;
    case 'I':
        lc__mp_int64(b, va_arg(*w->ap, int64_t));
        return 0;
    case 'U': {
        uint64_t u = va_arg(*w->ap, uint64_t);
        if (u <= (uint64_t)INT64_MAX) /* as lc_new_uint: an LC_INT then */
            lc__mp_int64(b, (int64_t)u);
        else
            lc__mp_uint64(b, u);
        return 0;
    }
    case 'f':
        lc__mp_double(b, va_arg(*w->ap, double));
        return 0;
    case 't': {
        /* as the tree encoder writes a time: c7 0c 06, seconds, nanoseconds */
        int64_t sec = va_arg(*w->ap, int64_t);
        int nsec = va_arg(*w->ap, int);
        if (nsec < 0 || nsec >= 1000000000 || !wroom(p, 15))
            return WIRE_GIVE_UP; /* (the tree builder reports the range) */
        lc__mp_time(b, sec, (uint32_t)nsec);
        return 0;
    }
    case 's':
    case 'b': {
        size_t len;
        const void *s = str_arg(w, c == 'b' || take_char(w, '#'), &len);
        if (s == NULL && (len > 0 || c == 's'))
            return WIRE_GIVE_UP;
        return wbytes(p, c == 's', s, len) ? 0 : WIRE_GIVE_UP;
    }
    case '[':
    case '{': {
        if (depth >= LC_FMT_MAX_DEPTH)
            return WIRE_GIVE_UP;
        bool map = c == '{';
        size_t at = b->len;
        b->data[b->len++] = 0; /* the header, once the entries are counted */
        uint64_t n = 0;
        for (;; n++) {
            char d = peek(w);
            if (d == (map ? '}' : ']')) {
                w->pos++;
                break;
            }
            if (map) {
                if (d != 's')
                    return WIRE_GIVE_UP;
                w->pos++;
                size_t klen;
                const char *key = str_arg(w, take_char(w, '#'), &klen);
                if (key == NULL || !wbytes(p, true, key, klen))
                    return WIRE_GIVE_UP;
            } else if (d == '\0') {
                return WIRE_GIVE_UP;
            }
            if (wpack_value(p, depth + 1) != 0)
                return WIRE_GIVE_UP;
        }
        return wcount(p, at, n, map ? 0x80 : 0x90, map ? 0xde : 0xdc) ? 0 : WIRE_GIVE_UP;
    }
    default: /* attachments, the end, anything malformed */
        return WIRE_GIVE_UP;
    }
}

/* lc_pack of fmt as a wire-form message, or NULL: give up and build the
 * tree (in *m, a fresh message kept for it, or NULL without memory). */
static lc_msg *pack_wire(const char *fmt, va_list *ap, lc_msg **m)
{
    *m = NULL;
    if (fmt == NULL)
        return NULL;
    wpack p;
    p.w.fmt = fmt;
    p.w.pos = 0;
    p.w.ap = ap;
    p.m = lc_msg_new();
    if (p.m == NULL)
        return NULL;
    p.b.data = (uint8_t *)p.m->arena_ptr;
    p.b.len = 0;
    p.b.cap = (size_t)(p.m->arena_end - p.m->arena_ptr) & ~(size_t)7u;
    p.in_tail = true;
    if (wpack_value(&p, 0) != 0 || peek(&p.w) != '\0') {
        *m = p.m; /* its arena may hold some of the bytes: harmless */
        return NULL;
    }
    if (p.in_tail) {
        /* claim the bytes: the bump allocator hands out that very tail */
        uint8_t *claimed = lc__arena_alloc(p.m, p.b.len);
        (void)claimed;
        assert(claimed == p.b.data);
    }
    p.m->wire = p.b.data;
    p.m->wire_len = p.b.len;
    return p.m;
}

/* Starts a walk of fmt over the arguments *ap, reporting to err (or local). */
static void walk_init(lc_walk *w, lc_error *err, lc_error *local, const char *fmt, va_list *ap)
{
    w->err = err != NULL ? err : local;
    w->err->code = 0;
    w->err->text[0] = '\0';
    w->fmt = fmt;
    w->pos = 0;
    w->ap = ap;
    w->store = false;
    w->nseg = 0;
    w->code = 0;
    w->marks = 0;
    w->outs = NULL;
    w->nouts = 0;
}

/*
 * lc_pack over the arguments *ap. lc_pack and lc_pack_ex pass their own
 * va_list by address rather than calling lc_vpack_ex: its va_copy reads the
 * list va_start has just written in one wide load, which the CPU cannot
 * forward from the narrower stores (a stall of several ns on a ~30 ns call).
 */
static lc_msg *pack_args(lc_error *err, const char *fmt, va_list *ap, lc_msg *m)
{
    lc_error local;
    lc_walk w;
    walk_init(&w, err, &local, fmt, ap);
    if (fmt == NULL) {
        fail(&w, LC_EINVAL, "NULL format");
        return NULL;
    }
    if (m == NULL)
        m = lc_msg_new();
    if (m == NULL)
        fail(&w, LC_ENOMEM, "out of memory"); /* still walk: release attachments */

    lc_value *root = NULL;
    int rc = pack_value(&w, m, 0, &root);
    /* Whatever follows a complete value is a format error. Trailing values
     * are still walked so the attachments among them are released (a common
     * slip: "s:i, s:F" without the braces). */
    while (rc == 0 && peek(&w) != '\0') {
        if (w.code != LC_EFORMAT)
            fmt_fail(&w, w.pos, "more than one value at the top level");
        lc_value *ignored;
        rc = pack_value(&w, m, 0, &ignored);
    }

    if (w.code == 0 && lc_msg_set_root(m, root) != 0)
        fail(&w, LC_ENOMEM, "out of memory"); /* cannot happen: root is fresh */
    if (w.code != 0) {
        /* Releases the attachments already placed in m. With a malformed
         * format, the arguments after the point of the error cannot be
         * decoded, so attachments among them are not released. */
        lc_msg_free(m);
        return NULL;
    }
    return m;
}

/* A successful pack_wire as lc_pack_ex reports it. */
static void pack_ok(lc_error *err)
{
    if (err != NULL) {
        err->code = 0;
        err->text[0] = '\0';
    }
}

/* lc_pack: the wire writer over *ap, else the tree builder over *again
 * (the same arguments, started afresh by the caller, as lc_unpack does). */
static lc_msg *pack_either(lc_error *err, const char *fmt, va_list *ap, va_list *again)
{
    lc_msg *m;
    lc_msg *done = pack_wire(fmt, ap, &m);
    if (done != NULL) {
        pack_ok(err);
        return done;
    }
    return pack_args(err, fmt, again, m);
}

LC_API lc_msg *lc_vpack_ex(lc_error *err, const char *fmt, va_list ap)
{
    va_list copy, again;
    va_copy(copy, ap);
    va_copy(again, ap);
    lc_msg *m = pack_either(err, fmt, &copy, &again);
    va_end(again);
    va_end(copy);
    return m;
}

LC_API lc_msg *lc_pack_ex(lc_error *err, const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_start(again, fmt);
    lc_msg *m = pack_either(err, fmt, &ap, &again);
    va_end(again);
    va_end(ap);
    return m;
}

LC_API lc_msg *lc_pack(const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_start(again, fmt);
    lc_msg *m = pack_either(NULL, fmt, &ap, &again);
    va_end(again);
    va_end(ap);
    return m;
}

/* ---- unpack: format syntax ----------------------------------------------- */

/*
 * In an unpack container closed by `close`, before the next member: consumes
 * the end (`close`, or '*' then `close`) and returns 1, with *star telling
 * which; returns 0 when a member follows, LC_EFORMAT when the format ends
 * there or the '*' is misplaced.
 */
static inline int member_end(lc_walk *w, char close, bool *star)
{
    char d = peek(w);
    *star = d == '*';
    if (d == '*') {
        w->pos++;
        if (peek(w) != close)
            return fmt_fail(w, w->pos, "'*' must come just before '%c'", close);
    } else if (d == '\0') {
        return fmt_fail(w, w->pos, "missing '%c'", close);
    } else if (d != close) {
        return 0;
    }
    w->pos++;
    return 1;
}

/* In an unpack map, at a member (after member_end): consumes the key's 's'
 * and the '#' and '?' that may follow it. */
static inline int map_key(lc_walk *w, bool *hash, bool *optional)
{
    char d = w->fmt[w->pos];
    if (d != 's') {
        char b[8];
        return fmt_fail(w, w->pos, "expected 's' for a map key, got %s", show(d, b));
    }
    w->pos++;
    *hash = take_char(w, '#');
    *optional = take_char(w, '?');
    return 0;
}

/* The format error of a character at `at` that does not start a value. */
static int not_a_value(lc_walk *w, size_t at)
{
    if (w->fmt[at] == '?')
        return fmt_fail(w, at, "'?' must follow a map key 's'");
    return unexpected(w, at, false);
}

/*
 * Checks the syntax of an unpack format without reading any argument. The
 * check walk (unpack_value) checks the syntax of all it reads, so this only
 * runs when that walk stopped early at a data error: a format error in the
 * rest of the format is then reported instead, whatever the message holds.
 */
static int syntax_value(lc_walk *w, int depth)
{
    char c = peek(w);
    size_t at = w->pos++;
    switch (c) {
    case 'n': case 'B': case 'i': case 'I': case 'U': case 'f': case 'b': case 't':
    case 'S': case 'R': case 'F': case 'v':
        return 0;
    case 's':
        take_char(w, '#');
        return 0;
    case '[':
    case '{':
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        for (;;) {
            bool star, hash = false, optional = false;
            int end = member_end(w, c == '[' ? ']' : '}', &star);
            if (end != 0)
                return end < 0 ? end : 0;
            int rc = c == '{' ? map_key(w, &hash, &optional) : 0;
            if (rc == 0)
                rc = syntax_value(w, depth + 1);
            if (rc != 0)
                return rc;
        }
    default:
        return not_a_value(w, at);
    }
}

/* Whatever follows the top-level value is a format error. */
static int top_level_end(lc_walk *w)
{
    if (peek(w) != '\0')
        return fmt_fail(w, w->pos, "more than one value at the top level");
    return 0;
}

/* ---- unpack: check, then store ------------------------------------------- */

/* First pair of map whose key is the string key[0..klen); NULL if none. */
static lc_value *map_find(const lc_value *map, const char *key, size_t klen)
{
    for (uint32_t i = 0; i < map->len; i++) {
        const lc_value *k = map->u.items[2 * i];
        if (k->type == LC_STRING && k->len == klen && (klen == 0 || memcmp(k->u.bytes, key, klen) == 0))
            return map->u.items[2 * i + 1];
    }
    return NULL;
}

/* Check walk: an attachment may be taken only once per format (a map key
 * repeated in the format would otherwise pass the check and fail the store). */
static int check_take(lc_walk *w, lc_value *v, const char *what)
{
    if (v->flags & LC_VF_TAKEN)
        return fail(w, LC_ETAKEN, "%s already taken", what);
    if (w->store)
        return 0;
    if (v->flags & LC_VF_MARK)
        return fail(w, LC_ETAKEN, "%s taken twice by the format", what);
    v->flags |= LC_VF_MARK;
    w->marks++;
    return 0;
}

/*
 * Writes one output from its value, which passed its check (so none of these
 * conversions can fail), and takes an attachment. The only place where
 * lc_unpack writes to the caller's outputs.
 */
static void store(const lc_out *out)
{
    lc_value *v = out->v;
    switch (out->c) {
    case 'B':
        *(bool *)out->o = v->u.b;
        break;
    case 'i':
        *(int *)out->o = (int)v->u.i;
        break;
    case 'I':
        *(int64_t *)out->o = v->type == LC_INT ? v->u.i : (int64_t)v->u.u;
        break;
    case 'U':
        *(uint64_t *)out->o = v->type == LC_UINT ? v->u.u : (uint64_t)v->u.i;
        break;
    case 'f':
        *(double *)out->o = v->type == LC_DOUBLE ? v->u.d
                            : v->type == LC_INT  ? (double)v->u.i
                                                 : (double)v->u.u;
        break;
    case 's':
    case 'b':
        if (out->o != NULL) {
            if (out->c == 's')
                *(const char **)out->o = v->u.bytes;
            else
                *(const void **)out->o = v->u.bytes;
        }
        if (out->o2 != NULL)
            *(size_t *)out->o2 = v->len;
        break;
    case 't':
        if (out->o != NULL)
            *(int64_t *)out->o = v->u.t.sec;
        if (out->o2 != NULL)
            *(int *)out->o2 = (int)v->u.t.nsec;
        break;
    case 'S':
        *(lc_sender **)out->o = lc_value_take_sender(v, NULL);
        break;
    case 'R':
        *(lc_receiver **)out->o = lc_value_take_receiver(v, NULL);
        break;
    case 'F':
        *(int *)out->o = lc_value_take_fd(v, NULL);
        break;
    case 'v':
        *(lc_value **)out->o = v;
        break;
    }
}

/* An output whose value passed its check: recorded by the check walk, to be
 * stored once the whole format has passed; stored at once by the store walk.
 * Counted past LC_UNPACK_OUTS, so an overflow is seen (see unpack_args). */
static void output(lc_walk *w, char c, void *o, void *o2, lc_value *v)
{
    if (o == NULL && o2 == NULL)
        return; /* checked, not stored */
    lc_out out = { .c = c, .o = o, .o2 = o2, .v = v };
    if (w->store) {
        store(&out);
        return;
    }
    if (w->nouts < LC_UNPACK_OUTS)
        w->outs[w->nouts] = out;
    w->nouts++;
}

/*
 * Matches the format at w->pos against v, checking the format's syntax on
 * the way: a malformed format is LC_EFORMAT and no argument past the error is
 * read. v is NULL for an absent optional key: the format is then only walked
 * to consume its arguments. The check walk (!w->store) writes nothing and
 * records the outputs; the store walk (only when they overflowed the record,
 * and after a successful check walk on the same message) stores them as it
 * goes. A NULL output pointer means "check, do not store (nor take)".
 */
static int unpack_value(lc_walk *w, lc_value *v, int depth)
{
    void *o = NULL, *o2 = NULL;
    char c = peek(w);
    size_t at = w->pos++;
    switch (c) {
    case 'n':
        if (v != NULL && v->type != LC_NIL)
            return type_fail(w, "nil", v);
        return 0;
    case 'B':
        o = va_arg(*w->ap, bool *);
        if (v == NULL)
            return 0;
        if (v->type != LC_BOOL)
            return type_fail(w, "bool", v);
        break;
    case 'i':
        o = va_arg(*w->ap, int *);
        if (v == NULL)
            return 0;
        if (v->type == LC_UINT)
            return fail(w, LC_ERANGE, "%" PRIu64 " does not fit in int", v->u.u);
        if (v->type != LC_INT)
            return type_fail(w, "int", v);
        if (v->u.i < INT_MIN || v->u.i > INT_MAX)
            return fail(w, LC_ERANGE, "%" PRId64 " does not fit in int", v->u.i);
        break;
    case 'I':
        o = va_arg(*w->ap, int64_t *);
        if (v == NULL)
            return 0;
        if (v->type == LC_UINT && v->u.u > (uint64_t)INT64_MAX)
            return fail(w, LC_ERANGE, "%" PRIu64 " does not fit in int64", v->u.u);
        if (v->type != LC_INT && v->type != LC_UINT)
            return type_fail(w, "int", v);
        break;
    case 'U':
        o = va_arg(*w->ap, uint64_t *);
        if (v == NULL)
            return 0;
        if (v->type == LC_INT && v->u.i < 0)
            return fail(w, LC_ERANGE, "%" PRId64 " does not fit in uint64", v->u.i);
        if (v->type != LC_INT && v->type != LC_UINT)
            return type_fail(w, "uint", v);
        break;
    case 'f':
        o = va_arg(*w->ap, double *);
        if (v == NULL)
            return 0;
        if (v->type != LC_DOUBLE && v->type != LC_INT && v->type != LC_UINT)
            return type_fail(w, "double", v);
        break;
    case 's':
    case 'b': {
        if (c == 's')
            o = va_arg(*w->ap, const char **);
        else
            o = va_arg(*w->ap, const void **);
        if (c == 'b' || take_char(w, '#'))
            o2 = va_arg(*w->ap, size_t *);
        if (v == NULL)
            return 0;
        lc_type t = c == 's' ? LC_STRING : LC_BINARY;
        if (v->type != t)
            return type_fail(w, lc_type_name(t), v);
        break;
    }
    case 't':
        o = va_arg(*w->ap, int64_t *);
        o2 = va_arg(*w->ap, int *);
        if (v == NULL)
            return 0;
        if (v->type != LC_TIME)
            return type_fail(w, "time", v);
        break;
    case 'S':
    case 'R':
    case 'F': {
        if (c == 'S')
            o = va_arg(*w->ap, lc_sender **);
        else if (c == 'R')
            o = va_arg(*w->ap, lc_receiver **);
        else
            o = va_arg(*w->ap, int *);
        if (v == NULL)
            return 0;
        lc_type t = c == 'S' ? LC_SENDER : c == 'R' ? LC_RECEIVER : LC_STREAM;
        if (v->type != t)
            return type_fail(w, lc_type_name(t), v);
        if (o == NULL)
            return 0;
        int rc = check_take(w, v, lc_type_name(t));
        if (rc != 0)
            return rc;
        break;
    }
    case 'v':
        o = va_arg(*w->ap, lc_value **);
        if (v == NULL)
            return 0;
        break;
    case '[':
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        if (v != NULL && v->type != LC_ARRAY)
            return type_fail(w, "array", v);
        for (size_t i = 0;; i++) {
            bool star;
            int end = member_end(w, ']', &star);
            if (end < 0)
                return end;
            if (end > 0) {
                /* '*' accepts extra elements */
                if (!star && v != NULL && i < v->len)
                    return fail(w, LC_ETYPE, "array has %" PRIu32 " elements, the format %zu", v->len, i);
                return 0;
            }
            lc_value *e = NULL;
            enter(w, depth, NULL, 0, i);
            if (v != NULL) {
                if (i >= v->len)
                    return fail(w, LC_ENOKEY, "missing array element");
                e = v->u.items[i];
            }
            int rc = unpack_value(w, e, depth + 1);
            if (rc != 0)
                return rc;
            w->nseg = depth;
        }
    case '{':
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        if (v != NULL && v->type != LC_MAP)
            return type_fail(w, "map", v);
        for (;;) {
            bool star, hash = false, optional = false;
            int end = member_end(w, '}', &star);
            if (end != 0) /* extra keys are ignored, '*' or not */
                return end < 0 ? end : 0;
            int rc = map_key(w, &hash, &optional);
            if (rc != 0)
                return rc;
            size_t klen;
            const char *key = str_arg(w, hash, &klen);
            if (key == NULL)
                return fail(w, LC_EINVAL, "NULL map key");
            enter(w, depth, key, klen, 0);
            lc_value *e = v != NULL ? map_find(v, key, klen) : NULL;
            if (v != NULL && e == NULL && !optional)
                return fail(w, LC_ENOKEY, "missing required key");
            rc = unpack_value(w, e, depth + 1);
            if (rc != 0)
                return rc;
            w->nseg = depth;
        }
    default:
        return not_a_value(w, at);
    }
    output(w, c, o, o2, v);
    return 0;
}

/* ---- unpack: wire form --------------------------------------------------- */

/*
 * lc_unpack of a wire-form message reads its bytes where it can: the same
 * walk as unpack_value, over msgpack headers instead of values, for the
 * formats of pack_wire (times included; no attachments, no 'v'). It only ever
 * succeeds: at anything it does not handle, and at any error (a missing
 * key, a wrong type, a number out of range, a malformed format), it gives
 * up having stored nothing, and the tree is built from the bytes for the
 * tree walk, which gives the error with its path. Strings are copied into
 * the arena to be NUL-terminated, as the tree's are.
 */
typedef struct wunpack {
    lc_walk w;          /* fmt, pos, ap, and err pointing at a scratch */
    lc_msg *m;
    const uint8_t *end; /* of the message's bytes */
    lc_out outs[LC_UNPACK_OUTS];
    lc_value vals[LC_UNPACK_OUTS]; /* outs[i].v: the value read, for store() */
    size_t nouts;
} wunpack;

/* The value after the one at q (bytes we wrote or checked: well formed). */
static const uint8_t *wskip(const uint8_t *q, const uint8_t *end)
{
    uint64_t pending = 1;
    while (pending > 0) {
        struct lc_whdr h;
        if (lc__whdr_read(q, (size_t)(end - q), &h) != 0)
            return end;
        q += h.hlen;
        pending--;
        if (h.kind == LC_WK_ARRAY)
            pending += h.len;
        else if (h.kind == LC_WK_MAP)
            pending += 2 * h.len;
        else if (h.kind == LC_WK_STR || h.kind == LC_WK_BIN || h.kind == LC_WK_EXT)
            q += h.len;
    }
    return q;
}

/* Matches the format at u->w.pos against the value at q (NULL: an absent
 * optional key, the format only walked for its arguments). 0 or
 * WIRE_GIVE_UP. */
static int wunpack_value(wunpack *u, const uint8_t *q, int depth)
{
    lc_walk *w = &u->w;
    struct lc_whdr h;
    void *o = NULL, *o2 = NULL;
    const void *bytes = NULL;
    if (q == NULL) {
        h.kind = LC_WK_NIL; /* never looked at */
        h.hlen = 0;
        h.len = 0;
    } else if (lc__whdr_read(q, (size_t)(u->end - q), &h) != 0)
        return WIRE_GIVE_UP;
    char c = peek(w);
    w->pos++;
    switch (c) {
    case 'n':
        return q == NULL || h.kind == LC_WK_NIL ? 0 : WIRE_GIVE_UP;
    case 'B':
        o = va_arg(*w->ap, bool *);
        if (q != NULL && h.kind != LC_WK_BOOL)
            return WIRE_GIVE_UP;
        break;
    case 'i':
        o = va_arg(*w->ap, int *);
        if (q != NULL && (h.kind != LC_WK_INT || h.v.i < INT_MIN || h.v.i > INT_MAX))
            return WIRE_GIVE_UP;
        break;
    case 'I':
        o = va_arg(*w->ap, int64_t *);
        if (q != NULL && h.kind != LC_WK_INT)
            return WIRE_GIVE_UP;
        break;
    case 'U':
        o = va_arg(*w->ap, uint64_t *);
        if (q != NULL && !(h.kind == LC_WK_UINT || (h.kind == LC_WK_INT && h.v.i >= 0)))
            return WIRE_GIVE_UP;
        break;
    case 'f':
        o = va_arg(*w->ap, double *);
        if (q != NULL && h.kind != LC_WK_F32 && h.kind != LC_WK_F64 && h.kind != LC_WK_INT &&
            h.kind != LC_WK_UINT)
            return WIRE_GIVE_UP;
        break;
    case 's':
    case 'b':
        o = va_arg(*w->ap, void *);
        if (c == 'b' || take_char(w, '#'))
            o2 = va_arg(*w->ap, size_t *);
        if (q == NULL)
            return 0;
        if (h.kind != (c == 's' ? LC_WK_STR : LC_WK_BIN))
            return WIRE_GIVE_UP;
        bytes = q + h.hlen;
        if (c == 's' && o != NULL) {
            /* A copy for its NUL, in the arena until the message is freed:
             * unpacking one message again and again grew it without end
             * (4 KiB per call; found by a review helper). Past twice the
             * message's size and 64 KiB of copies, strings come from the
             * tree, built once. */
            size_t copied = (size_t)u->m->wire_copied + h.len + 1;
            if (copied > 2 * u->m->wire_len + (64u << 10) || copied > UINT32_MAX)
                return WIRE_GIVE_UP;
            u->m->wire_copied = (uint32_t)copied;
            char *t = lc__arena_alloc(u->m, (size_t)h.len + 1);
            if (t == NULL)
                return WIRE_GIVE_UP;
            memcpy(t, bytes, (size_t)h.len);
            t[h.len] = '\0';
            bytes = t;
        }
        break;
    case 't':
        o = va_arg(*w->ap, int64_t *);
        o2 = va_arg(*w->ap, int *);
        if (q != NULL && (h.kind != LC_WK_EXT || h.ext != LC_EXT_TIME))
            return WIRE_GIVE_UP;
        break;
    case '[': {
        if (depth >= LC_FMT_MAX_DEPTH || (q != NULL && h.kind != LC_WK_ARRAY))
            return WIRE_GIVE_UP;
        const uint8_t *e = q != NULL ? q + h.hlen : NULL;
        for (uint64_t i = 0;; i++) {
            bool star;
            int end = member_end(w, ']', &star);
            if (end < 0)
                return WIRE_GIVE_UP;
            if (end > 0)
                return !star && q != NULL && i < h.len ? WIRE_GIVE_UP : 0;
            if (q != NULL && i >= h.len)
                return WIRE_GIVE_UP;
            if (wunpack_value(u, e, depth + 1) != 0)
                return WIRE_GIVE_UP;
            if (e != NULL)
                e = wskip(e, u->end);
        }
    }
    case '{': {
        if (depth >= LC_FMT_MAX_DEPTH || (q != NULL && h.kind != LC_WK_MAP))
            return WIRE_GIVE_UP;
        for (;;) {
            bool star, hash = false, optional = false;
            int end = member_end(w, '}', &star);
            if (end != 0) /* extra keys are ignored, '*' or not */
                return end < 0 ? WIRE_GIVE_UP : 0;
            if (map_key(w, &hash, &optional) != 0)
                return WIRE_GIVE_UP;
            size_t klen;
            const char *key = str_arg(w, hash, &klen);
            if (key == NULL)
                return WIRE_GIVE_UP;
            /* the first pair with that string key, as map_find */
            const uint8_t *e = NULL;
            if (q != NULL) {
                const uint8_t *k = q + h.hlen;
                for (uint64_t i = 0; i < h.len; i++) {
                    struct lc_whdr kh;
                    if (lc__whdr_read(k, (size_t)(u->end - k), &kh) != 0)
                        return WIRE_GIVE_UP;
                    if (kh.kind == LC_WK_STR && kh.len == klen &&
                        (klen == 0 || memcmp(k + kh.hlen, key, klen) == 0)) {
                        e = k + kh.hlen + klen;
                        break;
                    }
                    k = wskip(wskip(k, u->end), u->end);
                }
                if (e == NULL && !optional)
                    return WIRE_GIVE_UP;
            }
            if (wunpack_value(u, e, depth + 1) != 0)
                return WIRE_GIVE_UP;
        }
    }
    default: /* attachments, 'v', anything malformed */
        return WIRE_GIVE_UP;
    }
    if (q == NULL || (o == NULL && o2 == NULL))
        return 0;
    if (u->nouts == LC_UNPACK_OUTS)
        return WIRE_GIVE_UP;
    lc_value *v = &u->vals[u->nouts];
    switch (h.kind) {
    case LC_WK_BOOL:
        v->type = LC_BOOL;
        v->u.b = h.v.b;
        break;
    case LC_WK_INT:
        v->type = LC_INT;
        v->u.i = h.v.i;
        break;
    case LC_WK_UINT:
        v->type = LC_UINT;
        v->u.u = h.v.u;
        break;
    case LC_WK_F32:
    case LC_WK_F64:
        v->type = LC_DOUBLE;
        v->u.d = h.v.d;
        break;
    case LC_WK_EXT: /* a time (the only ext a wire-form message holds;
                       * its nanoseconds were checked on the way in) */
        v->type = LC_TIME;
        lc__wtime(q + h.hlen, &v->u.t.sec, &v->u.t.nsec);
        break;
    default: /* LC_WK_STR, LC_WK_BIN: at most LC_MAX_BYTES */
        v->type = h.kind == LC_WK_STR ? LC_STRING : LC_BINARY;
        v->u.bytes = bytes;
        v->len = (uint32_t)h.len;
        break;
    }
    u->outs[u->nouts++] = (lc_out){ .c = c, .o = o, .o2 = o2, .v = v };
    return 0;
}

/* lc_unpack of a wire-form message m: 0 with every output stored, or
 * WIRE_GIVE_UP having stored nothing. */
static int unpack_wire(lc_msg *m, const char *fmt, va_list *ap)
{
    lc_error scratch;
    wunpack u;
    u.w.fmt = fmt;
    u.w.pos = 0;
    u.w.ap = ap;
    u.w.code = 0;
    u.w.err = &scratch; /* member_end's format errors: given up on anyway */
    u.m = m;
    u.end = m->wire + m->wire_len;
    u.nouts = 0;
    if (wunpack_value(&u, m->wire, 0) != 0 || peek(&u.w) != '\0')
        return WIRE_GIVE_UP;
    for (size_t i = 0; i < u.nouts; i++)
        store(&u.outs[i]);
    return 0;
}

/* Clears the check walk's marks: every attachment value is in m->att. */
static void clear_marks(lc_msg *m)
{
    for (uint32_t i = 0; i < m->att_len; i++)
        m->att[i]->flags &= (uint8_t)~LC_VF_MARK;
}

/*
 * lc_unpack over the arguments *ap. *again holds the same arguments and is
 * read only when the outputs overflow the record (the store walk); *wire
 * too, read by the walk over a wire-form message's bytes. The
 * variadic entry points pass their own va_lists, as in pack_args.
 */
static int unpack_args(lc_msg *m, lc_error *err, const char *fmt, va_list *ap, va_list *again,
                       va_list *wire)
{
    lc_error local;
    lc_out outs[LC_UNPACK_OUTS];
    lc_walk w;
    walk_init(&w, err, &local, fmt, ap);
    w.outs = outs;
    if (m == NULL)
        return fail(&w, LC_EINVAL, "NULL message");
    if (fmt == NULL)
        return fail(&w, LC_EINVAL, "NULL format");
    if (m->wire != NULL && unpack_wire(m, fmt, wire) == 0)
        return 0; /* read from the bytes; w.err was reset by walk_init */

    /* The check walk: the format's syntax and the data, storing nothing. */
    int rc;
    if (m->body != NULL) {
        rc = fail(&w, LC_ETYPE, "message has an opaque body (%s)",
                  m->content_type != NULL ? m->content_type : "?");
    } else if (m->wire != NULL && (rc = lc__msg_materialize(m)) != 0) {
        /* here, not in lc_msg_root: its stand-in nil would read as LC_ETYPE */
        rc = fail(&w, rc, "building the value tree: %s", lc_strerror(rc));
    } else {
        rc = unpack_value(&w, lc_msg_root(m), 0);
        if (w.marks != 0)
            clear_marks(m);
        if (rc == 0)
            rc = top_level_end(&w);
    }
    if (rc != 0) {
        /* Stopped at a data error: a format error in the rest of the format
         * wins (it is the bug to fix first), and replaces it in w.err. */
        if (rc != LC_EFORMAT) {
            w.pos = 0;
            if (syntax_value(&w, 0) == 0)
                top_level_end(&w);
        }
        return w.code;
    }

    if (w.nouts <= LC_UNPACK_OUTS) {
        for (size_t i = 0; i < w.nouts; i++)
            store(&outs[i]);
        return 0;
    }
    /* More outputs than the record holds: the same walk over the same
     * arguments again, now storing as it goes. */
    w.pos = 0;
    w.nseg = 0;
    w.store = true;
    w.ap = again;
    return unpack_value(&w, lc_msg_root(m), 0);
}

LC_API int lc_vunpack_ex(lc_msg *m, lc_error *err, const char *fmt, va_list ap)
{
    va_list copy, again, wire;
    va_copy(copy, ap);
    va_copy(again, ap);
    va_copy(wire, ap);
    int rc = unpack_args(m, err, fmt, &copy, &again, &wire);
    va_end(wire);
    va_end(again);
    va_end(copy);
    return rc;
}

LC_API int lc_unpack_ex(lc_msg *m, lc_error *err, const char *fmt, ...)
{
    va_list ap, again, wire;
    va_start(ap, fmt);
    va_start(again, fmt);
    va_start(wire, fmt);
    int rc = unpack_args(m, err, fmt, &ap, &again, &wire);
    va_end(wire);
    va_end(again);
    va_end(ap);
    return rc;
}

LC_API int lc_unpack(lc_msg *m, const char *fmt, ...)
{
    va_list ap, again, wire;
    va_start(ap, fmt);
    va_start(again, fmt);
    va_start(wire, fmt);
    int rc = unpack_args(m, NULL, fmt, &ap, &again, &wire);
    va_end(wire);
    va_end(again);
    va_end(ap);
    return rc;
}

/*
 * pack.c - lc_pack()/lc_unpack(): jansson-style format strings over the value
 * tree (src/msg). Packing drives the builder of value.c; unpacking reads the
 * tree in one walk that checks the format and the data and records the
 * outputs, which are stored (and attachments taken) only once all passed.
 */
#include "msg_internal.h"
#include "../core/chan_internal.h"

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
            append(t, &len, cap, s->key, s->klen);
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
        const void *p = va_arg(*w->ap, const void *);
        size_t len;
        if (c == 'b' || take_char(w, '#')) {
            len = va_arg(*w->ap, size_t);
            if (p == NULL && len > 0) {
                fail(w, LC_EINVAL, "NULL %s with length %zu", c == 's' ? "string" : "binary", len);
                break;
            }
        } else if (p == NULL) {
            fail(w, LC_EINVAL, "NULL string");
            break;
        } else {
            len = strlen(p);
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
            const char *key = va_arg(*w->ap, const char *);
            size_t klen;
            if (take_char(w, '#'))
                klen = va_arg(*w->ap, size_t);
            else
                klen = key != NULL ? strlen(key) : 0;
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
static lc_msg *pack_args(lc_error *err, const char *fmt, va_list *ap)
{
    lc_error local;
    lc_walk w;
    walk_init(&w, err, &local, fmt, ap);
    if (fmt == NULL) {
        fail(&w, LC_EINVAL, "NULL format");
        return NULL;
    }
    lc_msg *m = lc_msg_new();
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

LC_API lc_msg *lc_vpack_ex(lc_error *err, const char *fmt, va_list ap)
{
    va_list copy;
    va_copy(copy, ap);
    lc_msg *m = pack_args(err, fmt, &copy);
    va_end(copy);
    return m;
}

LC_API lc_msg *lc_pack_ex(lc_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lc_msg *m = pack_args(err, fmt, &ap);
    va_end(ap);
    return m;
}

LC_API lc_msg *lc_pack(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lc_msg *m = pack_args(NULL, fmt, &ap);
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
            const char *key = va_arg(*w->ap, const char *);
            size_t klen;
            if (hash)
                klen = va_arg(*w->ap, size_t);
            else
                klen = key != NULL ? strlen(key) : 0;
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

/* Clears the check walk's marks: every attachment value is in m->att. */
static void clear_marks(lc_msg *m)
{
    for (uint32_t i = 0; i < m->att_len; i++)
        m->att[i]->flags &= (uint8_t)~LC_VF_MARK;
}

/*
 * lc_unpack over the arguments *ap. *again holds the same arguments and is
 * read only when the outputs overflow the record (the store walk). The
 * variadic entry points pass their own va_lists, as in pack_args.
 */
static int unpack_args(lc_msg *m, lc_error *err, const char *fmt, va_list *ap, va_list *again)
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

    /* The check walk: the format's syntax and the data, storing nothing. */
    int rc;
    if (m->body != NULL) {
        rc = fail(&w, LC_ETYPE, "message has an opaque body (%s)",
                  m->content_type != NULL ? m->content_type : "?");
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
    va_list copy, again;
    va_copy(copy, ap);
    va_copy(again, ap);
    int rc = unpack_args(m, err, fmt, &copy, &again);
    va_end(again);
    va_end(copy);
    return rc;
}

LC_API int lc_unpack_ex(lc_msg *m, lc_error *err, const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_start(again, fmt);
    int rc = unpack_args(m, err, fmt, &ap, &again);
    va_end(again);
    va_end(ap);
    return rc;
}

LC_API int lc_unpack(lc_msg *m, const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_start(again, fmt);
    int rc = unpack_args(m, NULL, fmt, &ap, &again);
    va_end(again);
    va_end(ap);
    return rc;
}

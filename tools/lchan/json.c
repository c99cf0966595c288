/*
 * json.c - the JSON <-> message mapping of `lchan send` (docs/json-mapping.md):
 * JSON text in (jansson), a libchan value tree out, with the special values
 * that ask for a reply channel or a byte stream; and a received value back to
 * JSON for printing.
 */
#include "lchan.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- base64 (RFC 4648, with padding) ---------------------------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const uint8_t *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *o++ = b64[v >> 18 & 63];
        *o++ = b64[v >> 12 & 63];
        *o++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Decodes into a malloc'ed buffer; -1 on bad input. */
static int b64_decode(const char *s, uint8_t **out, size_t *outlen)
{
    size_t n = strlen(s);
    if (n % 4 != 0)
        return -1;
    uint8_t *buf = malloc(n / 4 * 3 + 1);
    if (buf == NULL)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = s[i + k];
            const char *at = c ? strchr(b64, c) : NULL;
            if (c == '=' && i + 4 == n && k >= 2 && (k == 3 || s[i + 3] == '=')) {
                pad++;
                v <<= 6;
            } else if (at != NULL && pad == 0) {
                v = v << 6 | (uint32_t)(at - b64);
            } else {
                free(buf);
                return -1;
            }
        }
        buf[o++] = (uint8_t)(v >> 16);
        if (pad < 2)
            buf[o++] = (uint8_t)(v >> 8);
        if (pad < 1)
            buf[o++] = (uint8_t)v;
    }
    *out = buf;
    *outlen = o;
    return 0;
}

/* ---- RFC 3339 time ------------------------------------------------------------ */

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* n digits at s, as a number; -1 if they are not all digits */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm). Each field
 * must be in range (timegm would carry month 13 into the next year); second
 * 60 is refused: a leap second has no Unix time (Go refuses it too). -1 with
 * the reason in why when s is not such a time. */
static int parse_time(const char *s, int64_t *sec, uint32_t *nsec, char *why, size_t whylen)
{
    snprintf(why, whylen, "not RFC 3339 (2006-01-02T15:04:05.999Z)");
    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return -1;
    int year = digits(s, 4), mon = digits(s + 5, 2), day = digits(s + 8, 2), hour = digits(s + 11, 2),
        min = digits(s + 14, 2), secs = digits(s + 17, 2);
    if (year < 0 || mon < 0 || day < 0 || hour < 0 || min < 0 || secs < 0)
        return -1;
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (mon < 1 || mon > 12) {
        snprintf(why, whylen, "month %02d is out of range (01-12)", mon);
        return -1;
    }
    int dmax = mdays[mon - 1] + (mon == 2 && is_leap(year));
    if (day < 1 || day > dmax) {
        snprintf(why, whylen, "day %02d is out of range for %04d-%02d (01-%02d)", day, year, mon, dmax);
        return -1;
    }
    if (hour > 23) {
        snprintf(why, whylen, "hour %02d is out of range (00-23)", hour);
        return -1;
    }
    if (min > 59) {
        snprintf(why, whylen, "minute %02d is out of range (00-59)", min);
        return -1;
    }
    if (secs > 59) {
        snprintf(why, whylen, "second %02d is out of range (00-59; a leap second has no Unix time)", secs);
        return -1;
    }
    struct tm tm = { .tm_year = year - 1900, .tm_mon = mon - 1, .tm_mday = day, .tm_hour = hour,
                     .tm_min = min, .tm_sec = secs };
    const char *p = s + 19;
    uint32_t ns = 0;
    if (*p == '.') {
        int nd = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, nd++)
            if (nd < 9)
                ns = ns * 10 + (uint32_t)(*p - '0');
        if (nd == 0)
            return -1;
        for (; nd < 9; nd++)
            ns *= 10;
    }
    long off = 0;
    if (*p == 'Z' && p[1] == '\0') {
        off = 0;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int hh = digits(p + 1, 2), mm = digits(p + 4, 2);
        if (hh < 0 || mm < 0)
            return -1;
        if (hh > 23 || mm > 59) {
            snprintf(why, whylen, "offset %.6s is out of range (-23:59 to +23:59)", p);
            return -1;
        }
        off = (hh * 60L + mm) * 60L * (*p == '-' ? -1 : 1);
    } else {
        return -1;
    }
    time_t t = timegm(&tm);
    *sec = (int64_t)t - off;
    *nsec = ns;
    return 0;
}

/* A time as RFC 3339 in UTC ("2006-01-02T15:04:05.999999999Z", the fraction
 * only when not whole seconds) into buf (40 bytes are enough). false when it
 * has no such form: a year outside 0000-9999 (RFC 3339 has four digits, and
 * gmtime_r fails far out), or a fraction of a second that is not below one. */
static bool format_time(int64_t sec, uint32_t nsec, char *buf, size_t len)
{
    time_t t = (time_t)sec;
    struct tm tm;
    if (nsec >= 1000000000u || (int64_t)t != sec || gmtime_r(&t, &tm) == NULL)
        return false;
    long long year = (long long)tm.tm_year + 1900;
    if (year < 0 || year > 9999)
        return false;
    int n = snprintf(buf, len, "%04lld-%02d-%02dT%02d:%02d:%02d", year, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
    if (n < 0 || (size_t)n >= len)
        return false;
    if (nsec != 0)
        n += snprintf(buf + n, len - (size_t)n, ".%09" PRIu32, nsec);
    if (n < 0 || (size_t)n >= len)
        return false;
    snprintf(buf + n, len - (size_t)n, "Z");
    return true;
}

/* ---- JSON -> message ------------------------------------------------------------- */

typedef struct build_ctx {
    lx_reqplan *plan;
    char *err;
    size_t errlen;
    char path[256]; /* where we are, for error messages: "Args[2]" */
} build_ctx;

__attribute__((format(printf, 2, 3))) static lc_value *fail_at(build_ctx *c, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s%s%s", c->path[0] ? "at " : "", c->path, c->path[0] ? ": " : "");
    size_t n = strlen(c->err);
    snprintf(c->err + n, c->errlen - n, "%s", msg);
    return NULL;
}

/* A stream for the tool's stdin (the receiver reads), stdout or stderr (the
 * receiver writes), or stdin+stdout as one duplex stream. */
static lc_value *make_stream(build_ctx *c, lc_msg *m, const char *which)
{
    lx_reqplan *p = c->plan;
    bool want_in = strcmp(which, "stdin") == 0 || strcmp(which, "stdio") == 0;
    bool want_out = strcmp(which, "stdout") == 0 || strcmp(which, "stdio") == 0;
    bool want_err = strcmp(which, "stderr") == 0;
    if (!want_in && !want_out && !want_err)
        return fail_at(c, "unknown stream \"%s\" (use stdin, stdout, stderr or stdio)", which);
    if ((want_in && p->stdin_fd >= 0) || (want_out && p->stdout_fd >= 0) || (want_err && p->stderr_fd >= 0))
        return fail_at(c, "%s is used twice (each of stdin, stdout, stderr can back one stream)", which);
    int sv[2];
    if (want_in && want_out) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            return fail_at(c, "socketpair: %s", strerror(errno));
        p->stdin_fd = p->stdout_fd = sv[0];
        p->stdio_duplex = true;
        return lc_new_stream(m, sv[1], LC_STREAM_DUPLEX);
    }
    if (pipe2(sv, O_CLOEXEC) != 0)
        return fail_at(c, "pipe: %s", strerror(errno));
    if (want_in) { /* we write stdin into sv[1]; the session reads sv[0] */
        p->stdin_fd = sv[1];
        return lc_new_stream(m, sv[0], LC_STREAM_READ);
    }
    /* the session writes what arrives into sv[1]; we copy sv[0] out */
    if (want_out)
        p->stdout_fd = sv[0];
    else
        p->stderr_fd = sv[0];
    return lc_new_stream(m, sv[1], LC_STREAM_WRITE);
}

static lc_value *make_reply(build_ctx *c, lc_msg *m)
{
    lx_reqplan *p = c->plan;
    if (p->nreplies == (int)(sizeof p->replies / sizeof p->replies[0]))
        return fail_at(c, "too many reply channels (at most %d)", 16);
    lc_receiver *r;
    lc_sender *s;
    /* buffered: replies queue here while we print the previous one */
    int rc = lc_pipe(&r, &s, 64);
    if (rc != 0)
        return fail_at(c, "lc_pipe: %s", lc_strerror(rc));
    p->replies[p->nreplies++] = r;
    return lc_new_sender(m, s);
}

/* {"$time": {"sec": S, "nsec": N}}: seconds since 1970-01-01T00:00:00Z and
 * nanoseconds (0 to 999999999), the form times outside years 0000-9999 are
 * printed in. */
static lc_value *unix_time(build_ctx *c, lc_msg *m, json_t *v)
{
    json_t *sec = json_object_get(v, "sec"), *nsec = json_object_get(v, "nsec");
    size_t want = 1 + (nsec != NULL);
    if (!json_is_integer(sec) || (nsec != NULL && !json_is_integer(nsec)) || json_object_size(v) != want)
        return fail_at(c, "$time: an object must be {\"sec\": N, \"nsec\": N} (or write an RFC 3339 string)");
    json_int_t ns = nsec ? json_integer_value(nsec) : 0;
    if (ns < 0 || ns > 999999999)
        return fail_at(c, "$time: nsec %lld is out of range (0-999999999)", (long long)ns);
    return lc_new_time(m, (int64_t)json_integer_value(sec), (uint32_t)ns);
}

/* The special single-key objects; NULL with *handled false when o is a plain map. */
static lc_value *special(build_ctx *c, lc_msg *m, json_t *o, bool *handled)
{
    *handled = false;
    if (json_object_size(o) != 1)
        return NULL;
    const char *key = json_object_iter_key(json_object_iter(o));
    json_t *v = json_object_iter_value(json_object_iter(o));
    static const char *const names[] = { "$chan", "$stream", "$binary", "$time", "$uint", "$string" };
    size_t k;
    for (k = 0; k < sizeof names / sizeof names[0]; k++)
        if (strcmp(key, names[k]) == 0)
            break;
    if (k == sizeof names / sizeof names[0])
        return NULL;
    *handled = true;
    if (k == 3 && json_is_object(v)) /* a time RFC 3339 cannot write (as printed) */
        return unix_time(c, m, v);
    if (!json_is_string(v))
        return fail_at(c, "the value of %s must be a string", key);
    const char *s = json_string_value(v);
    switch (k) {
    case 0:
        if (strcmp(s, "reply") != 0)
            return fail_at(c, "unknown channel \"%s\" (only {\"$chan\": \"reply\"} can be sent)", s);
        return make_reply(c, m);
    case 1:
        return make_stream(c, m, s);
    case 2: {
        uint8_t *bin;
        size_t n;
        if (b64_decode(s, &bin, &n) != 0)
            return fail_at(c, "$binary: \"%s\" is not base64", s);
        lc_value *r = lc_new_binary(m, bin, n);
        free(bin);
        return r;
    }
    case 3: {
        int64_t sec;
        uint32_t ns;
        char why[128];
        if (parse_time(s, &sec, &ns, why, sizeof why) != 0)
            return fail_at(c, "$time: \"%s\": %s", s, why);
        return lc_new_time(m, sec, ns);
    }
    case 4: {
        char *end;
        errno = 0;
        unsigned long long u = strtoull(s, &end, 10);
        if (errno != 0 || *end != '\0' || s[0] < '0' || s[0] > '9')
            return fail_at(c, "$uint: \"%s\" is not an unsigned 64-bit number", s);
        return lc_new_uint(m, (uint64_t)u);
    }
    default:
        return lc_new_stringn(m, s, json_string_length(v));
    }
}

static lc_value *build(build_ctx *c, lc_msg *m, json_t *j, int depth)
{
    if (depth > 60)
        return fail_at(c, "nesting deeper than %d levels", 60);
    switch (json_typeof(j)) {
    case JSON_NULL:
        return lc_new_nil(m);
    case JSON_TRUE:
        return lc_new_bool(m, true);
    case JSON_FALSE:
        return lc_new_bool(m, false);
    case JSON_INTEGER:
        return lc_new_int(m, (int64_t)json_integer_value(j));
    case JSON_REAL:
        return lc_new_double(m, json_real_value(j));
    case JSON_STRING: {
        const char *s = json_string_value(j);
        if (strcmp(s, "@reply") == 0)
            return make_reply(c, m);
        if (strcmp(s, "@stdin") == 0 || strcmp(s, "@stdout") == 0 || strcmp(s, "@stderr") == 0 ||
            strcmp(s, "@stdio") == 0)
            return make_stream(c, m, s + 1);
        return lc_new_stringn(m, s, json_string_length(j));
    }
    case JSON_ARRAY: {
        lc_value *arr = lc_new_array(m);
        size_t plen = strlen(c->path);
        for (size_t i = 0; arr != NULL && i < json_array_size(j); i++) {
            snprintf(c->path + plen, sizeof c->path - plen, "[%zu]", i);
            lc_value *e = build(c, m, json_array_get(j, i), depth + 1);
            if (e == NULL || lc_array_append(m, arr, e) != 0)
                return NULL;
        }
        c->path[plen] = '\0';
        return arr;
    }
    case JSON_OBJECT: {
        bool handled;
        lc_value *sp = special(c, m, j, &handled);
        if (handled)
            return sp;
        lc_value *map = lc_new_map(m);
        size_t plen = strlen(c->path);
        const char *key;
        json_t *val;
        json_object_foreach(j, key, val) {
            if (map == NULL)
                return NULL;
            snprintf(c->path + plen, sizeof c->path - plen, "%s%s", plen ? "." : "", key);
            lc_value *e = build(c, m, val, depth + 1);
            if (e == NULL || lc_map_set(m, map, key, e) != 0)
                return NULL;
        }
        c->path[plen] = '\0';
        return map;
    }
    }
    return NULL;
}

void lx_plan_free(lx_reqplan *p)
{
    for (int i = 0; i < p->nreplies; i++)
        lc_receiver_release(p->replies[i]);
    p->nreplies = 0;
    if (p->stdin_fd >= 0)
        close(p->stdin_fd);
    if (p->stdout_fd >= 0 && !p->stdio_duplex)
        close(p->stdout_fd);
    if (p->stderr_fd >= 0)
        close(p->stderr_fd);
    p->stdin_fd = p->stdout_fd = p->stderr_fd = -1;
}

lc_msg *lx_json_to_msg(const char *text, lx_reqplan *plan, char *err, size_t errlen)
{
    memset(plan, 0, sizeof *plan);
    plan->stdin_fd = plan->stdout_fd = plan->stderr_fd = -1;
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &je);
    if (j == NULL) {
        if (strstr(je.text, "too big integer") != NULL)
            snprintf(err, errlen, "line %d, column %d: integer does not fit in 64 bits "
                     "(write {\"$uint\": \"...\"} for an unsigned one)", je.line, je.column);
        else
            snprintf(err, errlen, "line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    lc_msg *m = lc_msg_new();
    build_ctx c = { .plan = plan, .err = err, .errlen = errlen };
    err[0] = '\0';
    lc_value *root = m ? build(&c, m, j, 0) : NULL;
    json_decref(j);
    if (root == NULL || lc_msg_set_root(m, root) != 0) {
        if (err[0] == '\0')
            snprintf(err, errlen, "out of memory");
        lc_msg_free(m);
        lx_plan_free(plan);
        return NULL;
    }
    return m;
}

/* ---- value -> JSON ------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at p (of at most n bytes), 0 if none. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len = (p[0] & 0xE0) == 0xC0 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3 : (p[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    uint32_t cp = p[0] & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0; /* overlong, out of range, or a surrogate */
    return len;
}

/* s (n bytes) as valid UTF-8, malloc'ed, its length in *outlen: each byte
 * that is not part of valid UTF-8 replaced with U+FFFD. */
static char *utf8_fix(const char *s, size_t n, size_t *outlen)
{
    char *buf = malloc(n * 3 + 1);
    if (buf == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_seq((const unsigned char *)s + i, n - i);
        if (len > 0) {
            memcpy(buf + o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    buf[o] = '\0';
    *outlen = o;
    return buf;
}

/* A JSON string for s, each byte that is not part of valid UTF-8 replaced
 * with U+FFFD (jansson only holds valid UTF-8). */
static json_t *utf8_string(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j != NULL)
        return j;
    size_t o;
    char *buf = utf8_fix(s, n, &o);
    if (buf == NULL)
        return NULL;
    j = json_stringn(buf, o);
    free(buf);
    return j;
}

/* Sets o[key] = val (taking val), key being n bytes of valid UTF-8. Two keys
 * of a map can print the same: the int 7 and the string "7", or strings that
 * differ only in bytes replaced with U+FFFD. The later one then gets the
 * first free suffix of "#2", "#3", ... ("7#2"), so that no value is lost
 * (docs/json-mapping.md). -1 when out of memory. */
static int set_key(json_t *o, const char *key, size_t n, json_t *val)
{
    if (json_object_getn(o, key, n) == NULL)
        return json_object_setn_new(o, key, n, val);
    char *k = malloc(n + 24);
    if (k == NULL) {
        json_decref(val);
        return -1;
    }
    memcpy(k, key, n);
    int rc = -1;
    for (unsigned long i = 2; rc != 0; i++) {
        size_t kn = n + (size_t)sprintf(k + n, "#%lu", i);
        if (json_object_getn(o, k, kn) == NULL) {
            rc = json_object_setn_new(o, k, kn, val);
            break;
        }
    }
    free(k);
    return rc;
}

static json_t *tag(const char *key, const char *val)
{
    return json_pack("{s:s}", key, val);
}

static json_t *to_json(const lc_value *v, int depth)
{
    if (v == NULL || depth > 100)
        return json_null();
    switch (lc_value_type(v)) {
    case LC_NIL:
        return json_null();
    case LC_BOOL:
        return json_boolean(lc_value_bool(v));
    case LC_INT:
        return json_integer((json_int_t)lc_value_int(v));
    case LC_UINT: {
        char buf[32];
        snprintf(buf, sizeof buf, "%" PRIu64, lc_value_uint(v));
        return tag("$uint", buf);
    }
    case LC_DOUBLE: {
        json_t *r = json_real(lc_value_double(v));
        return r ? r : json_null(); /* NaN and infinities have no JSON form */
    }
    case LC_STRING: {
        size_t n;
        const char *s = lc_value_string(v, &n);
        return utf8_string(s, n);
    }
    case LC_BINARY: {
        size_t n;
        const void *p = lc_value_binary(v, &n);
        char *e = b64_encode(p, n);
        json_t *r = e ? tag("$binary", e) : NULL;
        free(e);
        return r;
    }
    case LC_TIME: {
        int64_t sec;
        uint32_t ns;
        char buf[64];
        lc_value_time(v, &sec, &ns);
        if (format_time(sec, ns, buf, sizeof buf))
            return tag("$time", buf);
        return json_pack("{s:{s:I,s:I}}", "$time", "sec", (json_int_t)sec, "nsec", (json_int_t)ns);
    }
    case LC_ARRAY: {
        json_t *a = json_array();
        for (size_t i = 0; a != NULL && i < lc_value_len(v); i++)
            json_array_append_new(a, to_json(lc_array_get(v, i), depth + 1));
        return a;
    }
    case LC_MAP: {
        json_t *o = json_object();
        for (size_t i = 0; o != NULL && i < lc_value_len(v); i++) {
            const lc_value *k = lc_map_key(v, i);
            json_t *val = to_json(lc_map_value(v, i), depth + 1);
            char *kt;
            size_t kn = 0;
            if (lc_value_type(k) == LC_STRING) {
                size_t n;
                const char *s = lc_value_string(k, &n);
                kt = utf8_fix(s, n, &kn);
            } else {
                /* a non-string key (Go maps may have them): its JSON text */
                kt = lx_value_to_json(k);
                kn = kt ? strlen(kt) : 0;
            }
            if (kt == NULL || val == NULL || set_key(o, kt, kn, val) != 0) {
                if (kt == NULL) /* (set_key takes val in every case) */
                    json_decref(val);
                free(kt);
                json_decref(o);
                return NULL;
            }
            free(kt);
        }
        return o;
    }
    case LC_SENDER:
        return tag("$chan", "sender");
    case LC_RECEIVER:
        return tag("$chan", "receiver");
    case LC_STREAM: {
        lc_stream_mode md = lc_value_stream_mode(v);
        return tag("$stream", md == LC_STREAM_READ ? "read" : md == LC_STREAM_WRITE ? "write" : "duplex");
    }
    }
    return json_null();
}

char *lx_value_to_json(const lc_value *v)
{
    json_t *j = to_json(v, 0);
    if (j == NULL)
        return NULL;
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
    json_decref(j);
    return s;
}

char *lx_body_to_json(const char *ctype, size_t bytes)
{
    json_t *t = utf8_string(ctype ? ctype : "", ctype ? strlen(ctype) : 0);
    json_t *j = t ? json_pack("{s:{s:o,s:I}}", "$body", "type", t, "bytes", (json_int_t)bytes) : NULL;
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

/*
 * url.c - the URL table of the transports (src/transport) and the lc__dial /
 * lc__listen / lc__conn_* entry points that dispatch through it. Adding a
 * transport means one row here and one file with its lc_transport_ops.
 */
#include "transport.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct scheme_row {
    const char *scheme;
    const lc_transport_ops *ops; /* NULL: known, not built yet */
} schemes[] = {
    {"unix", &lc__unix_ops},
    {"tcp", &lc__tcp_ops},
    {"tls", NULL},
    {"ws", NULL},
    {"wss", NULL},
    {"h2", NULL},
    {"inproc", NULL},
};

int lc__url_error(lc_error *err, int code, const char *fmt, ...)
{
    if (err != NULL) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->text, sizeof err->text, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int parse_unix(const char *url, const char *rest, lc_url *out, lc_error *err)
{
    size_t n = strlen(rest);
    if (n == 0)
        return lc__url_error(err, LC_EINVAL, "%s: missing path", url);
    if (rest[0] == '@' && n == 1)
        return lc__url_error(err, LC_EINVAL, "%s: missing abstract socket name after '@'", url);
    if (n > LC_UNIX_PATH_MAX)
        return lc__url_error(err, LC_EINVAL, "%s: unix socket path too long (%zu bytes, at most %d)",
                             url, n, LC_UNIX_PATH_MAX);
    memcpy(out->path, rest, n + 1);
    return 0;
}

static int parse_tcp(const char *url, const char *rest, lc_url *out, lc_error *err)
{
    const char *bad = strpbrk(rest, "/?#@");
    if (bad != NULL)
        return lc__url_error(err, LC_EINVAL, "%s: unexpected '%c' (tcp URLs are tcp://host:port)",
                             url, *bad);
    const char *host = rest, *host_end, *colon;
    if (rest[0] == '[') {
        host = rest + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL)
            return lc__url_error(err, LC_EINVAL, "%s: missing ']' after IPv6 address", url);
        if (host_end == host)
            return lc__url_error(err, LC_EINVAL, "%s: empty IPv6 address", url);
        colon = host_end + 1;
        if (*colon == '\0')
            return lc__url_error(err, LC_EINVAL, "%s: missing port", url);
        if (*colon != ':')
            return lc__url_error(err, LC_EINVAL, "%s: unexpected text after ']'", url);
    } else {
        colon = strrchr(rest, ':');
        if (colon == NULL)
            return lc__url_error(err, LC_EINVAL, "%s: missing port", url);
        host_end = colon;
        if (memchr(rest, ':', (size_t)(colon - rest)) != NULL)
            return lc__url_error(err, LC_EINVAL, "%s: IPv6 addresses go in brackets: tcp://[::1]:port",
                                 url);
    }
    size_t hn = (size_t)(host_end - host);
    if (hn >= sizeof out->host)
        return lc__url_error(err, LC_EINVAL, "%s: host name too long", url);
    memcpy(out->host, host, hn);
    out->host[hn] = '\0';

    const char *p = colon + 1;
    if (*p == '\0')
        return lc__url_error(err, LC_EINVAL, "%s: missing port", url);
    unsigned long port = 0;
    size_t digits = 0;
    for (; *p; p++, digits++) {
        if (!isdigit((unsigned char)*p) || digits >= 5)
            return lc__url_error(err, LC_EINVAL, "%s: bad port (a number 0-65535)", url);
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port > 65535)
        return lc__url_error(err, LC_EINVAL, "%s: bad port (a number 0-65535)", url);
    out->port = (uint16_t)port;
    return 0;
}

int lc__url_parse(const char *url, lc_url *out, lc_error *err)
{
    if (url == NULL || out == NULL)
        return lc__url_error(err, LC_EINVAL, "no URL");
    memset(out, 0, sizeof *out);
    const char *sep = strstr(url, "://");
    if (sep == NULL)
        return lc__url_error(err, LC_EINVAL, "%s: not a URL (expected scheme://address)", url);
    size_t sn = (size_t)(sep - url);
    if (sn == 0 || sn >= sizeof out->scheme)
        return lc__url_error(err, LC_EINVAL, "%s: bad scheme", url);
    for (size_t i = 0; i < sn; i++)
        out->scheme[i] = (char)tolower((unsigned char)url[i]);
    const struct scheme_row *row = NULL;
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (strcmp(schemes[i].scheme, out->scheme) == 0)
            row = &schemes[i];
    if (row == NULL)
        return lc__url_error(err, LC_EINVAL, "%s: unknown scheme '%s'", url, out->scheme);
    if (row->ops == NULL)
        return lc__url_error(err, LC_ENOTSUP, "%s: the %s:// transport is not built yet", url,
                             row->scheme);
    out->ops = row->ops;
    const char *rest = sep + 3;
    if (row->ops == &lc__unix_ops)
        return parse_unix(url, rest, out, err);
    return parse_tcp(url, rest, out, err);
}

/* ---- entry points --------------------------------------------------------- */

/* err's text for a failed dial or listen; a host name that did not resolve
 * is named (it said "No route to host" before, as if a route had failed) */
static void dial_listen_error(lc_error *err, int rc, const char *url, const char *what, const lc_url *u)
{
    if (rc == LC_ENOHOST)
        lc__url_error(err, rc, "%s: %s: host name %s not found", url, what, u->host);
    else if (rc == -EAGAIN && u->ops == &lc__tcp_ops)
        lc__url_error(err, rc, "%s: %s: resolving host name %s failed for now (try again)", url, what, u->host);
    else
        lc__url_error(err, rc, "%s: %s: %s", url, what, lc_strerror(rc));
}

int lc__dial(const char *url, int64_t timeout_ms, lc_conn **out, lc_error *err)
{
    lc_url u;
    if (out == NULL)
        return lc__url_error(err, LC_EINVAL, "no output pointer");
    int rc = lc__url_parse(url, &u, err);
    if (rc != 0)
        return rc;
    rc = u.ops->dial(&u, timeout_ms, out);
    if (rc != 0)
        dial_listen_error(err, rc, url, "dial", &u);
    return rc;
}

int lc__listen(const char *url, lc_tlistener **out, lc_error *err)
{
    lc_url u;
    if (out == NULL)
        return lc__url_error(err, LC_EINVAL, "no output pointer");
    int rc = lc__url_parse(url, &u, err);
    if (rc != 0)
        return rc;
    rc = u.ops->listen(&u, out);
    if (rc == -ENOTSOCK && u.ops == &lc__unix_ops)
        lc__url_error(err, rc, "%s: listen: %s exists and is not a socket", url, u.path);
    else if (rc != 0)
        dial_listen_error(err, rc, url, "listen", &u);
    return rc;
}

int lc__accept(lc_tlistener *l, int64_t timeout_ms, lc_conn **out)
{
    if (l == NULL || out == NULL)
        return LC_EINVAL;
    return l->ops->accept(l, timeout_ms, out);
}

int lc__listener_url(lc_tlistener *l, char *buf, size_t len)
{
    if (l == NULL || buf == NULL)
        return LC_EINVAL;
    return l->ops->listener_url(l, buf, len);
}

int lc__listener_fd(const lc_tlistener *l)
{
    return l->fd;
}

void lc__listener_close(lc_tlistener *l)
{
    if (l != NULL)
        l->ops->listener_close(l);
}

int lc__conn_fd(const lc_conn *c)
{
    return c->fd;
}

const char *lc__conn_scheme(const lc_conn *c)
{
    return c->ops->scheme;
}

ssize_t lc__conn_readv(lc_conn *c, const struct iovec *iov, int iovcnt)
{
    return c->ops->readv(c, iov, iovcnt);
}

ssize_t lc__conn_writev(lc_conn *c, const struct iovec *iov, int iovcnt)
{
    return c->ops->writev(c, iov, iovcnt);
}

ssize_t lc__conn_sendfds(lc_conn *c, const struct iovec *iov, int iovcnt, const int *fds,
                         size_t nfds)
{
    if (c->ops->sendfds == NULL)
        return LC_ENOTSUP;
    return c->ops->sendfds(c, iov, iovcnt, fds, nfds);
}

ssize_t lc__conn_recvfds(lc_conn *c, const struct iovec *iov, int iovcnt, int *fds,
                         size_t *nfds)
{
    if (c->ops->recvfds == NULL)
        return LC_ENOTSUP;
    return c->ops->recvfds(c, iov, iovcnt, fds, nfds);
}

int lc__conn_shutdown_write(lc_conn *c)
{
    return c->ops->shutdown_write(c);
}

void lc__conn_close(lc_conn *c)
{
    if (c != NULL)
        c->ops->close(c);
}

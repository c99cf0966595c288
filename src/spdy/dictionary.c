/*
 * dictionary.c - the zlib preset dictionary of SPDY/3 header blocks
 * (src/spdy): protocol data, published in the SPDY/3 draft,
 * draft-mbelshe-httpbis-spdy-00 section 2.6.10.1 "Compression" (the same
 * bytes as chromium's spdy_framer and Go's spdystream headerDictionary).
 * 1423 bytes, adler32 0xe3c6a7c2; tests/spdy checks both.
 *
 * Layout: 65 words, each as a 32-bit big-endian length and the text (the
 * uncompressed header-block encoding of a string), then a run of plain text
 * (status codes, reason phrases, date parts, content types, ...).
 */
#include "spdy/spdy.h"

/* A length-prefixed word: three zero bytes, the length byte, the text. */
#define W(len, text) "\0\0\0" len text

/* The string literal's terminating NUL is stored but not counted. */
const uint8_t lc__spdy_dictionary[] =
    W("\x07", "options") W("\x04", "head") W("\x04", "post") W("\x03", "put")
    W("\x06", "delete") W("\x05", "trace") W("\x06", "accept")
    W("\x0e", "accept-charset") W("\x0f", "accept-encoding")
    W("\x0f", "accept-language") W("\x0d", "accept-ranges") W("\x03", "age")
    W("\x05", "allow") W("\x0d", "authorization") W("\x0d", "cache-control")
    W("\x0a", "connection") W("\x0c", "content-base") W("\x10", "content-encoding")
    W("\x10", "content-language") W("\x0e", "content-length")
    W("\x10", "content-location") W("\x0b", "content-md5")
    W("\x0d", "content-range") W("\x0c", "content-type") W("\x04", "date")
    W("\x04", "etag") W("\x06", "expect") W("\x07", "expires") W("\x04", "from")
    W("\x04", "host") W("\x08", "if-match") W("\x11", "if-modified-since")
    W("\x0d", "if-none-match") W("\x08", "if-range")
    W("\x13", "if-unmodified-since") W("\x0d", "last-modified")
    W("\x08", "location") W("\x0c", "max-forwards") W("\x06", "pragma")
    W("\x12", "proxy-authenticate") W("\x13", "proxy-authorization")
    W("\x05", "range") W("\x07", "referer") W("\x0b", "retry-after")
    W("\x06", "server") W("\x02", "te") W("\x07", "trailer")
    W("\x11", "transfer-encoding") W("\x07", "upgrade") W("\x0a", "user-agent")
    W("\x04", "vary") W("\x03", "via") W("\x07", "warning")
    W("\x10", "www-authenticate") W("\x06", "method") W("\x03", "get")
    W("\x06", "status") W("\x06", "200 OK") W("\x07", "version")
    W("\x08", "HTTP/1.1") W("\x03", "url") W("\x06", "public")
    W("\x0a", "set-cookie") W("\x0a", "keep-alive") W("\x06", "origin")
    /* status codes */
    "100101201202205206300302303304305306307"
    "402405406407408409410411412413414415416417502504505"
    /* status lines */
    "203 Non-Authoritative Information" "204 No Content" "301 Moved Permanently"
    "400 Bad Request" "401 Unauthorized" "403 Forbidden" "404 Not Found"
    "500 Internal Server Error" "501 Not Implemented" "503 Service Unavailable"
    /* dates */
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    /* values */
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    "application/xhtml+xml,text/plain,text/javascript,"
    "public" "private" "max-age=" "gzip,deflate,sdch" "charset=utf-8"
    "charset=iso-8859-1,utf-,*,enq=0.";

#undef W

const size_t lc__spdy_dictionary_len = sizeof lc__spdy_dictionary - 1;

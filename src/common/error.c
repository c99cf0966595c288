/*
 * error.c - lc_strerror(): one line of text per LC_E* code.
 */
#include "libchan.h"

#include <string.h>

LC_API const char *lc_strerror(int code)
{
    switch (code) {
    case LC_OK:         return "success";
    case LC_EINVAL:     return "invalid argument";
    case LC_ENOMEM:     return "out of memory";
    case LC_ETIMEDOUT:  return "timed out";
    case LC_ECLOSED:    return "channel closed";
    case LC_EBADF:      return "bad file descriptor";
    case LC_EOF:        return "end of channel";
    case LC_ETRUNCATED: return "msgpack: input truncated inside a value";
    case LC_ETRAILING:  return "msgpack: trailing bytes after the message";
    case LC_EDEPTH:     return "msgpack: nesting deeper than the limit";
    case LC_ETOOBIG:    return "msgpack: size over the limit";
    case LC_EBADMSG:    return "msgpack: malformed input";
    case LC_ETYPE:      return "value has the wrong type";
    case LC_ENOKEY:     return "required key missing";
    case LC_EFORMAT:    return "invalid format string";
    case LC_ETAKEN:     return "attachment already taken";
    case LC_ERANGE:     return "number out of range (or a session's stream ids used up)";
    case LC_ENOTSUP:    return "operation not supported";
    case LC_EPROTO:     return "protocol error from the peer";
    case LC_ESESSION:   return "session ended";
    case LC_ENOHOST:    return "host name not found";
    default:
        break;
    }
    if (code < 0 && code > -1000) {
        /* other -errno values from the system */
        return strerror(-code);
    }
    return "unknown error";
}

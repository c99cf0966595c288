/*
 * main.c - the lchan command-line tool: subcommand dispatch, the help texts
 * (kept in step with docs/lchan.1) and the small option parser they share.
 */
#include "lchan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char help_main[] =
    "usage: lchan [--trace] COMMAND [OPTIONS] ARGS...\n"
    "\n"
    "Channels over unix sockets and TCP, speaking docker/libchan's wire protocol\n"
    "(SPDY/3 streams carrying msgpack messages).\n"
    "\n"
    "Commands:\n"
    "  serve URL --echo|--exec|--gateway  host a built-in service; prints its URL first\n"
    "  send URL JSON                      send JSON as a message; print each reply\n"
    "  exec URL -- CMD [ARGS...]          run CMD on an `lchan serve --exec` host\n"
    "  connect URL LOCAL_PORT HOST:PORT   tunnel a local TCP port through a gateway\n"
    "  bench URL                          throughput and latency against serve --echo\n"
    "\n"
    "URLs: unix:///absolute/path or tcp://host:port (port 0 with serve: any free port).\n"
    "Every command takes --trace (print each SPDY frame and each message sent and\n"
    "received, and the bytes of each stream, on stderr) and --help. `lchan help COMMAND` is the same\n"
    "as `lchan COMMAND --help`; `lchan --version` prints the version. Manual:\n"
    "man lchan (docs/lchan.1).\n"
    "\n"
    "Exit status:\n"
    "  0   success (exec: the remote command's status instead)\n"
    "  64  usage error          65  bad JSON            66  bad URL\n"
    "  69  cannot connect       70  internal error      71  cannot listen\n"
    "  75  timed out            76  session ended early or protocol error\n"
    "  130, 143  send, exec, bench stopped by SIGINT, SIGTERM (128+signal; the session\n"
    "            is closed first). serve and connect stop cleanly with 0 instead.\n";

const char *const lx_help_serve =
    "usage: lchan serve URL (--echo | --exec | --gateway) [-v] [--allow-remote] [--trace]\n"
    "\n"
    "Listens on URL and answers every session with one built-in service. The first\n"
    "line on stdout is the URL actually bound (the real port for tcp://HOST:0), so a\n"
    "script can start it and read where to connect. SIGINT or SIGTERM stops it\n"
    "cleanly (sessions closed gracefully, a unix socket file removed) with status 0.\n"
    "\n"
    "  --echo        a message carrying Senders is answered on each of them with a\n"
    "                copy of its plain data (channel ends and streams left out); a\n"
    "                duplex stream is echoed back; the bytes of the i-th readable\n"
    "                stream are copied into the i-th writable one. Other messages\n"
    "                are consumed (bench's one-way test).\n"
    "  --exec        runs commands, as in docker/libchan's rexec example: a request\n"
    "                {Cmd, Args, Stdin, Stdout, Stderr, StatusChan}; the streams\n"
    "                become the command's fds 0, 1, 2; the reply on StatusChan is\n"
    "                {\"Status\": N} (127: could not run it; 128+N: killed by signal N).\n"
    "  --gateway     tunnels TCP: a request {\"Dial\": \"host:port\", \"Conn\": <duplex\n"
    "                stream>, \"Reply\": <Sender, optional>} makes it dial host:port and\n"
    "                copy bytes both ways; the reply is {\"Connected\": \"host:port\"}\n"
    "                or {\"Error\": \"...\"}.\n"
    "  -v, --verbose     one line on stderr per session and request\n"
    "  --allow-remote    --exec and --gateway refuse a tcp:// address that is not\n"
    "                    loopback unless given this: whoever can connect runs commands\n"
    "  --trace           print every frame and message received and sent on stderr\n";

const char *const lx_help_send =
    "usage: lchan send URL JSON [--timeout MS] [--trace]\n"
    "\n"
    "Opens a channel on a session to URL, sends JSON as one message, closes the\n"
    "channel, and prints each reply as one line of JSON until every reply channel\n"
    "has been closed by the other side and every stream has ended.\n"
    "\n"
    "JSON mapping (docs/json-mapping.md): objects are maps with string keys; arrays,\n"
    "integers (int64), floats, strings, true, false and null map to their kinds;\n"
    "  \"@reply\" or {\"$chan\": \"reply\"}   a fresh Sender; what arrives on it is printed\n"
    "  \"@stdin\"                         a stream the receiver reads, fed from stdin\n"
    "  \"@stdout\", \"@stderr\"             a stream the receiver writes, copied to stdout/stderr\n"
    "  \"@stdio\"                         one duplex stream: stdin in, stdout out\n"
    "  {\"$stream\": \"stdin\"} (etc.), {\"$binary\": \"BASE64\"}, {\"$time\": \"RFC 3339\"},\n"
    "  {\"$uint\": \"DIGITS\"}, {\"$string\": \"@reply\"} (a literal string)\n"
    "Replies print the same way; channel ends in them show as {\"$chan\": \"sender\"}.\n"
    "\n"
    "  --timeout MS   give up with status 75 when the replies and streams are not\n"
    "                 finished after MS milliseconds (default 30000; 0: wait forever)\n"
    "  --trace        print the message sent, each reply and the streams on stderr\n"
    "\n"
    "Replies wait while an @stdout stream is being copied, and print after it.\n"
    "Status 76 when the session ends before the replies and streams are done (e.g.\n"
    "the server died while stdin was being sent), or when, with only @stdin, the\n"
    "receiver stops reading it before it is all sent; 130/143 on SIGINT/SIGTERM.\n";

const char *const lx_help_exec =
    "usage: lchan exec URL [--timeout MS] [--trace] [--] CMD [ARGS...]\n"
    "\n"
    "Runs CMD with ARGS on the host of `lchan serve --exec URL`, like docker/libchan's\n"
    "rexec example: the request carries Cmd, Args, Stdin, Stdout, Stderr (byte\n"
    "streams) and StatusChan (a reply Sender). This process's stdin is streamed to\n"
    "the command, the command's stdout and stderr come back here as they are\n"
    "written, and lchan exits with the command's status (127 if the host could not\n"
    "run it, 128+N if signal N killed it). Use -- before a CMD that takes options.\n"
    "A server that accepts the session but sends nothing within 10 s of the request\n"
    "is given up on (status 75). SIGINT/SIGTERM stop lchan exec (130/143); the\n"
    "remote command is not signalled.\n"
    "\n"
    "  --timeout MS   give up with status 75 when the command has not finished (its\n"
    "                 status has not come) after MS milliseconds (default 0: no\n"
    "                 limit, a remote command may run as long as it likes)\n"
    "  --trace        print the request, the status reply and the streams on stderr\n";

const char *const lx_help_connect =
    "usage: lchan connect URL LOCAL_PORT HOST:PORT [--trace]\n"
    "\n"
    "Listens on 127.0.0.1:LOCAL_PORT (0: any free port) and tunnels each TCP\n"
    "connection made to it through the session to `lchan serve --gateway URL`, which\n"
    "dials HOST:PORT from its side and copies bytes both ways (each connection is\n"
    "one duplex byte stream in a message {\"Dial\": \"HOST:PORT\", \"Conn\": <stream>}).\n"
    "The first line on stdout is the local address, tcp://127.0.0.1:PORT. Runs until\n"
    "SIGINT or SIGTERM (status 0) or until the session ends (status 76).\n"
    "\n"
    "  --trace   print each tunnel request and the gateway's answer on stderr\n";

const char *const lx_help_bench =
    "usage: lchan bench URL [--messages N] [--roundtrips N] [--size BYTES] [--trace]\n"
    "\n"
    "The client side of the benchmarks, against `lchan serve --echo URL`:\n"
    "  one-way     N messages {\"Seq\": i, \"Data\": <BYTES of binary>} on one channel,\n"
    "              then a request with a reply Sender, whose answer proves they all\n"
    "              arrived: prints messages/s and MB/s\n"
    "  round trip  N requests {\"Seq\": i, \"Reply\": <fresh Sender>}, one at a time,\n"
    "              each waiting for its reply: prints requests/s and the p50, p99\n"
    "              and max latency\n"
    "\n"
    "  --messages N     one-way messages (default 100000)\n"
    "  --roundtrips N   round trips (default 2000)\n"
    "  --size BYTES     binary payload of each one-way message (default 64)\n"
    "  --trace          print every message (slow: for debugging only)\n"
    "\n"
    "SIGINT/SIGTERM stop it (130/143).\n";


void lx_usage(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (lx_cmd != NULL)
        lx_die(LX_USAGE, "%s: %s (see lchan %s --help)", lx_cmd, buf, lx_cmd);
    lx_die(LX_USAGE, "%s (see lchan --help)", buf);
}

bool lx_common_opt(const char *arg, const char *help)
{
    if (strcmp(arg, "--trace") == 0) {
        lx_trace_on = true;
        return true;
    }
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
        fputs(help, stdout);
        exit(fflush(stdout) == 0 ? LX_OK : LX_INTERNAL);
    }
    return false;
}

bool lx_opt_long(int argc, char **argv, int *i, const char *name, long long min, long long max,
                 long long *out)
{
    const char *a = argv[*i], *val;
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return false;
    if (a[n] == '=') {
        val = a + n + 1;
    } else if (a[n] == '\0') {
        if (*i + 1 >= argc)
            lx_usage("%s needs a value", name);
        val = argv[++*i];
    } else {
        return false;
    }
    char *end;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (errno != 0 || end == val || *end != '\0' || v < min || v > max)
        lx_usage("%s: '%s' is not a number from %lld to %lld", name, val, min, max);
    *out = v;
    return true;
}

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *const *help;
} commands[] = {
    { "serve", lx_serve, &lx_help_serve },       { "send", lx_send, &lx_help_send },
    { "exec", lx_exec, &lx_help_exec },          { "connect", lx_connect, &lx_help_connect },
    { "bench", lx_bench, &lx_help_bench },
};

/* Started with stdin, stdout or stderr closed (`<&-`), the next fd opened
 * would be taken for it: exec and send would stream their own stop pipe as
 * stdin, a trace could go into a session's socket. /dev/null takes each
 * such slot first, before any other fd is opened. */
static void fill_std_fds(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
            continue;
        int n = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (n < 0)
            _exit(LX_INTERNAL); /* (nowhere to say it, perhaps) */
        if (n != fd) { /* (cannot happen: the lowest free fd is fd) */
            dup2(n, fd);
            close(n);
        }
    }
}

int main(int argc, char **argv)
{
    fill_std_fds();
    lx_signals_init();
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("lchan (libchan %d.%d.%d)\n", LIBCHAN_VERSION_MAJOR, LIBCHAN_VERSION_MINOR,
                   LIBCHAN_VERSION_PATCH);
            return LX_OK;
        }
        if (!lx_common_opt(argv[i], help_main))
            lx_usage("unknown option '%s'", argv[i]);
    }
    if (i == argc) {
        fputs(help_main, stderr);
        return LX_USAGE;
    }
    const char *name = argv[i];
    if (strcmp(name, "help") == 0) {
        if (i + 1 == argc) {
            fputs(help_main, stdout);
            return LX_OK;
        }
        name = argv[i + 1];
        for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
            if (strcmp(commands[k].name, name) == 0) {
                fputs(*commands[k].help, stdout);
                return LX_OK;
            }
        lx_usage("no command '%s' (commands: serve, send, exec, connect, bench)", name);
    }
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
        if (strcmp(commands[k].name, name) == 0) {
            lx_cmd = commands[k].name;
            /* the subcommand sees its own arguments only */
            return commands[k].run(argc - i - 1, argv + i + 1);
        }
    lx_usage("no command '%s' (commands: serve, send, exec, connect, bench)", name);
}

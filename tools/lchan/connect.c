/*
 * connect.c - `lchan connect URL LOCAL_PORT HOST:PORT`: a local TCP port
 * whose connections are each handed to the session as a duplex byte stream
 * in {"Dial": "HOST:PORT", "Conn": <stream>, "Reply": <Sender>}; the gateway
 * (`lchan serve --gateway`) dials HOST:PORT and copies bytes both ways. The
 * session pumps the accepted socket itself, so no copy thread is needed here.
 */
#include "lchan.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_bool stopping;

/* Prints what the gateway says about each tunnel (errors always, the rest
 * with --trace). Every request's Reply Sender points at this one channel. */
static void *replies_main(void *arg)
{
    lc_receiver *r = arg;
    while (!atomic_load(&stopping)) {
        lc_msg *m;
        int rc = lc_recv(r, &m, 200);
        if (rc == LC_ETIMEDOUT)
            continue;
        if (rc != 0)
            break;
        lx_trace_msg("gateway", "<<", m);
        const char *e = NULL;
        if (lc_unpack(m, "{s:s}", "Error", &e) == 0)
            lx_warn("connect: the gateway says: %s", e);
        lc_msg_free(m);
    }
    lc_receiver_release(r);
    return NULL;
}

int lx_connect(int argc, char **argv)
{
    const char *pos[3];
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] != '\0') {
            if (!lx_common_opt(a, lx_help_connect))
                lx_usage("unknown option '%s'", a);
        } else if (npos < 3) {
            pos[npos++] = a;
        } else {
            lx_usage("unexpected argument '%s'", a);
        }
    }
    if (npos < 3)
        lx_usage("needs URL LOCAL_PORT HOST:PORT");
    const char *url = pos[0], *target = pos[2];
    char *end;
    long port = strtol(pos[1], &end, 10);
    if (*pos[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
        lx_usage("LOCAL_PORT '%s' is not a port number (0-65535; 0: any free port)", pos[1]);
    const char *colon = strrchr(target, ':');
    if (colon == NULL || colon == target || colon[1] == '\0')
        lx_usage("'%s' is not HOST:PORT", target);

    lc_session *s = lx_dial(url);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    socklen_t sl = sizeof sa;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) {
        char t[96];
        lx_die(LX_LISTEN, "cannot listen on 127.0.0.1:%ld: %s", port, lx_errtext(-errno, t, sizeof t));
    }
    printf("tcp://127.0.0.1:%u\n", (unsigned)ntohs(sa.sin_port));
    fflush(stdout);

    lc_sender *chan;
    int rc = lc_session_sender(s, &chan);
    if (rc != 0)
        lx_die(lx_session_exit(rc), "cannot open a channel to %s: %s", url, lc_strerror(rc));
    lc_receiver *rr;
    lc_sender *rs;
    if ((rc = lc_pipe(&rr, &rs, 64)) != 0)
        lx_die(LX_INTERNAL, "lc_pipe: %s", lc_strerror(rc));
    pthread_t rt;
    if (pthread_create(&rt, NULL, replies_main, rr) != 0)
        lx_die(LX_INTERNAL, "cannot start a thread");

    int code = LX_OK, n = 0;
    while (!lx_stop) {
        struct pollfd p[2] = { { lfd, POLLIN, 0 }, { lx_stop_fd(), POLLIN, 0 } };
        int pr = poll(p, 2, 1000);
        if (lc_session_error(s) != 0) {
            char t[96];
            lx_warn("connect: the session to %s ended (%s)", url, lx_session_why(lc_session_error(s), t, sizeof t));
            code = LX_SESSION;
            break;
        }
        if (pr <= 0 || !(p[0].revents & POLLIN))
            continue;
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        int nd = 1; /* the tunnel carries requests and replies: no Nagle delay */
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &nd, sizeof nd);
        lc_msg *m = lc_pack("{s:s, s:F, s:S}", "Dial", target, "Conn", c, "Reply", lc_sender_retain(rs));
        if (m == NULL) {
            lx_warn("connect: cannot build the tunnel request");
            continue;
        }
        char where[32];
        snprintf(where, sizeof where, "tunnel#%d", ++n);
        lx_trace_msg(where, ">>", m);
        if ((rc = lc_send(chan, m, 10000)) != 0) {
            lc_msg_free(m); /* closes the connection */
            lx_warn("connect: cannot send the tunnel request: %s", lc_strerror(rc));
            if (lc_session_error(s) != 0) {
                code = LX_SESSION;
                break;
            }
        }
    }
    close(lfd);
    lc_close(chan);
    lc_sender_release(chan);
    lc_sender_release(rs);
    lc_session_close(s, 2000);
    atomic_store(&stopping, true);
    pthread_join(rt, NULL);
    lc_session_free(s);
    return code;
}

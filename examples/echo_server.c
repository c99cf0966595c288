/*
 * echo_server.c - a network echo service: each request names the channel its
 * answer goes to.
 *
 *   request  {"Text": "hi", "Reply": <Sender>}
 *   answer   {"Echo": "hi", "Length": 2}          (sent on Reply)
 *
 * Usage: echo_server URL [SESSIONS]
 *   URL is unix:///path or tcp://host:port (port 0: any free port). The first
 *   line printed is the URL actually bound, so a client (echo_client) knows
 *   where to go. It serves SESSIONS client sessions one after the other
 *   (default: until killed), then exits 0.
 */
#include <libchan.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Answers every request on one channel until the client closes it. */
static void serve_channel(lc_receiver *requests)
{
    lc_msg *req;
    while (lc_recv(requests, &req, -1) == 0) {
        const char *text;
        lc_sender *reply;
        /* "S" takes the Sender out of the message: we release it below */
        if (lc_unpack(req, "{s:s, s:S}", "Text", &text, "Reply", &reply) == 0) {
            lc_msg *ans = lc_pack("{s:s, s:I}", "Echo", text, "Length", (int64_t)strlen(text));
            /* the answer is the reply channel's last message: it and the
             * channel's end go in one frame (one write) */
            if (lc_send_last(reply, ans, 5000) != 0)
                lc_msg_free(ans); /* a failed send leaves the message with us */
            lc_sender_release(reply); /* (released either way: the channel ends) */
        } else {
            fprintf(stderr, "echo_server: ignoring a request without Text and Reply\n");
        }
        lc_msg_free(req);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: echo_server URL [SESSIONS]\n");
        return 2;
    }
    int sessions = argc == 3 ? atoi(argv[2]) : -1;
    lc_listener *l;
    lc_error err;
    if (lc_listen(argv[1], NULL, &l, &err) != 0) {
        fprintf(stderr, "echo_server: %s\n", err.text);
        return 1;
    }
    char url[256];
    lc_listener_url(l, url, sizeof url);
    printf("%s\n", url);
    fflush(stdout);

    for (int n = 0; sessions < 0 || n < sessions; n++) {
        lc_session *s;
        if (lc_accept(l, &s, -1) != 0)
            break;
        /* each channel the client opens arrives as a Receiver */
        lc_receiver *requests;
        while (lc_session_receiver(s, &requests, -1) == 0) {
            serve_channel(requests);
            lc_receiver_release(requests);
        }
        lc_session_free(s); /* lc_session_receiver failed: the client has gone */
    }
    lc_listener_close(l);
    return 0;
}

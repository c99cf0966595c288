/*
 * echo_client.c - the client of echo_server.c: sends each word as a request
 * carrying a fresh reply channel, and prints the answer that comes back on it.
 *
 * Usage: echo_client URL WORD...
 * Exit status 0 when every word came back.
 */
#include <libchan.h>

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: echo_client URL WORD...\n");
        return 2;
    }
    lc_session *s;
    lc_error err;
    if (lc_dial(argv[1], NULL, &s, &err) != 0) {
        fprintf(stderr, "echo_client: %s\n", err.text);
        return 1;
    }
    lc_sender *requests; /* a new channel on the session; the server gets its Receiver */
    if (lc_session_sender(s, &requests) != 0)
        return 1;

    int ok = 0, words = argc - 2;
    for (int i = 2; i < argc; i++) {
        /* the reply channel: we keep the Receiver, the request carries the Sender */
        lc_receiver *reply_r;
        lc_sender *reply_s;
        if (lc_pipe(&reply_r, &reply_s, 1) != 0)
            return 1;
        lc_msg *req = lc_pack("{s:s, s:S}", "Text", argv[i], "Reply", reply_s);
        int rc = lc_send(requests, req, 5000);
        if (rc != 0) {
            fprintf(stderr, "echo_client: send: %s\n", lc_strerror(rc));
            lc_msg_free(req);
        } else {
            lc_msg *ans = NULL;
            const char *echo;
            int64_t len;
            if ((rc = lc_recv(reply_r, &ans, 5000)) == 0 &&
                (rc = lc_unpack(ans, "{s:s, s:I}", "Echo", &echo, "Length", &len)) == 0) {
                printf("%s -> %s (%lld bytes)\n", argv[i], echo, (long long)len);
                ok += strcmp(echo, argv[i]) == 0;
            } else {
                fprintf(stderr, "echo_client: reply: %s\n", lc_strerror(rc));
            }
            lc_msg_free(ans); /* NULL (a no-op) when nothing came */
        }
        lc_receiver_release(reply_r);
    }

    lc_close(requests); /* the server's lc_recv returns LC_EOF */
    lc_sender_release(requests);
    lc_session_close(s, 5000); /* flush, then hang up */
    lc_session_free(s);
    printf("echo_client: %s, %d/%d words echoed\n", ok == words ? "OK" : "FAILED", ok, words);
    return ok == words ? 0 : 1;
}

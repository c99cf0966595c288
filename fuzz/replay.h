/*
 * replay.h - the plain (non-libFuzzer) driver shared by the fuzz targets:
 * runs LLVMFuzzerTestOneInput once on every file named on the command line,
 * so ctest replays each corpus in every build. Include after declaring
 * LLVMFuzzerTestOneInput.
 */
#ifndef LC_FUZZ_REPLAY_H
#define LC_FUZZ_REPLAY_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Returns how many inputs ran, or -1 when a file cannot be read. */
static int lc_fuzz_replay(int argc, char **argv)
{
    int n = 0;
    for (int i = 1; i < argc; i++) {
        FILE *fp = fopen(argv[i], "rb");
        if (fp == NULL) {
            perror(argv[i]);
            return -1;
        }
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0;
        for (;;) {
            if (len == cap) {
                cap = cap ? cap * 2 : 4096;
                uint8_t *nb = realloc(buf, cap);
                if (nb == NULL) {
                    fclose(fp);
                    free(buf);
                    return -1;
                }
                buf = nb;
            }
            size_t got = fread(buf + len, 1, cap - len, fp);
            if (got == 0)
                break;
            len += got;
        }
        fclose(fp);
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        n++;
    }
    return n;
}

#endif

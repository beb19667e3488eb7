/*
 * sg_host.c: a host program around sneakgate_proto.c for examples/esp32/esp32_test.go
 * (not part of the firmware). It prints what the device code writes and reads:
 *
 *   sg_host topics PREFIX APP DEVICE      request topic, reply topic (one a line)
 *   sg_host u8|f32 ID DEADLINE_MS SENT_AT_MS N [CAP]
 *                                         a request payload for N test values
 *                                         (value i: byte (37i+11) mod 256, or
 *                                         that byte / 255 as float32), built in a
 *                                         CAP-byte buffer (default SG_REQUEST_CAP)
 *   sg_host b64                           standard base64 of stdin
 *   sg_host reply                         the fields sg_parse_reply reads from
 *                                         stdin, one "name=value" a line
 *
 * Exit status 0, 1 when the library refuses (printing "refused"), 2 for usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sneakgate_proto.h"

static unsigned char stdin_buf[1 << 20];

static size_t read_stdin(void)
{
    size_t n = 0, r;
    while ((r = fread(stdin_buf + n, 1, sizeof stdin_buf - n, stdin)) > 0)
        n += r;
    return n;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "topics") == 0) {
        char req[256], res[256];
        if (sg_request_topic(req, sizeof req, argv[2], argv[3], argv[4]) < 0 ||
            sg_reply_topic(res, sizeof res, argv[2], argv[3], argv[4]) < 0) {
            puts("refused");
            return 1;
        }
        printf("%s\n%s\n", req, res);
        return 0;
    }
    if ((argc == 6 || argc == 7) && (strcmp(argv[1], "u8") == 0 || strcmp(argv[1], "f32") == 0)) {
        int f32 = strcmp(argv[1], "f32") == 0;
        sg_request_t req;
        size_t n = strtoul(argv[5], NULL, 10), i, cap;
        uint8_t *u8 = malloc(n + 1);
        float *f = malloc(sizeof(float) * (n + 1));
        char *buf;
        int len;
        req.id = argv[2];
        req.deadline_ms = (uint32_t)strtoul(argv[3], NULL, 10);
        req.sent_at_ms = strtoull(argv[4], NULL, 10);
        for (i = 0; i < n; i++) {
            u8[i] = (uint8_t)((37 * i + 11) % 256);
            f[i] = (float)u8[i] / 255.0f;
        }
        cap = argc == 7 ? strtoul(argv[6], NULL, 10) : SG_REQUEST_CAP(f32 ? 4 * n : n, strlen(req.id));
        buf = malloc(cap + 1);
        len = f32 ? sg_build_request_f32(buf, cap, &req, f, n) : sg_build_request_u8(buf, cap, &req, u8, n);
        int status = 1;
        if (len < 0)
            puts("refused");
        else if ((size_t)len != strlen(buf) || (size_t)len >= cap)
            printf("length %d does not match the string's %zu (cap %zu)\n", len, strlen(buf), cap);
        else
            fwrite(buf, 1, (size_t)len, stdout), status = 0;
        free(buf);
        free(u8);
        free(f);
        return status;
    }
    if (argc == 2 && strcmp(argv[1], "b64") == 0) {
        size_t n = read_stdin(), cap = SG_B64_LEN(n) + 1;
        char *out = malloc(cap);
        int ok = sg_b64_encode(stdin_buf, n, out, cap - 1) == 0 && sg_b64_encode(stdin_buf, n, out, cap) == SG_B64_LEN(n);
        fputs(ok ? out : "refused\n", stdout);
        free(out);
        return ok ? 0 : 1;
    }
    if (argc == 2 && strcmp(argv[1], "reply") == 0) {
        sg_reply_t r;
        size_t n = read_stdin();
        if (sg_parse_reply((const char *)stdin_buf, n, &r) != 0) {
            puts("refused");
            return 1;
        }
        printf("id=%s\nstatus=%s\nstatus_code=%d\nanswered=%d\nreason=%s\nretryable=%d\nlabel=%s\nmodel=%s\nerror=%s\n",
               r.id, r.status_text, (int)r.status, sg_status_answered(r.status), r.reason,
               sg_reason_retryable(r.reason), r.label, r.model, r.error);
        if (r.has_class)
            printf("class=%ld\n", (long)r.class_index);
        if (r.has_confidence)
            printf("confidence=%.17g\n", r.confidence);
        if (r.has_est_accuracy)
            printf("est_accuracy=%.17g\n", r.est_accuracy);
        if (r.has_deadline_met)
            printf("deadline_met=%d\n", r.deadline_met);
        if (r.has_retry_after)
            printf("retry_after_ms=%lld\n", (long long)r.retry_after_ms);
        if (r.has_total_ms)
            printf("total_ms=%.17g\n", r.total_ms);
        return 0;
    }
    fputs("usage: sg_host topics|u8|f32|b64|reply ...\n", stderr);
    return 2;
}

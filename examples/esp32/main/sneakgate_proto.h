/*
 * sneakgate_proto.h: the sneakgate MQTT protocol (docs/protocol.md, version 1) for a
 * device written in C: topics, request payloads (input_u8_b64 or input_b64, with id,
 * deadline_ms and sent_at), base64, and the fields of a reply a device acts on.
 *
 * Portable C99 with no ESP-IDF, MQTT or heap dependency: app_main.c uses it on the
 * ESP32, and examples/esp32/esp32_test.go compiles it with the host's C compiler and
 * checks what it writes with the gateway's own request parser and JSON Schema, and
 * what it reads from replies the gateway's encoder wrote.
 *
 * Copyright the sneakgate authors. Licensed under the Apache License 2.0.
 */
#ifndef SNEAKGATE_PROTO_H
#define SNEAKGATE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Limits of the protocol (docs/protocol.md, "Topics" and "Request"). */
#define SG_DEVICE_MAX 64 /* device name: 1-64 of [A-Za-z0-9_.-] */
#define SG_APP_MAX 32    /* application name: [a-z][a-z0-9_-]{0,31} */
#define SG_ID_MAX 128    /* request id: 1-128 characters, no control characters */

/* SG_B64_LEN(n): characters of the padded standard base64 of n bytes. */
#define SG_B64_LEN(n) (4u * (((size_t)(n) + 2u) / 3u))

/*
 * SG_REQUEST_CAP(n_bytes, id_len): a buffer that always holds a request payload
 * (and its terminating NUL) whose input encodes to n_bytes bytes (n values for
 * input_u8_b64, 4n for input_b64) and whose id has id_len bytes. The fixed part is
 *   {"id":"...","deadline_ms":4294967295,"sent_at":18446744073709551615,"input_u8_b64":"..."}
 * with the id escaped (at most 2 bytes per byte: \" and \\).
 */
#define SG_REQUEST_FIXED 96u
#define SG_REQUEST_CAP(n_bytes, id_len) (SG_B64_LEN(n_bytes) + 2u * (size_t)(id_len) + SG_REQUEST_FIXED)

/*
 * sg_b64_encode writes the standard, padded base64 (RFC 4648 section 4: A-Z a-z 0-9
 * + /, '=' padding, no line breaks) of in[0..n) to out and a terminating NUL.
 * Returns the number of characters (SG_B64_LEN(n)), or 0 when out_cap is smaller
 * than SG_B64_LEN(n) + 1 (then out holds an empty string if out_cap > 0).
 */
size_t sg_b64_encode(const uint8_t *in, size_t n, char *out, size_t out_cap);

/*
 * Topics. sg_request_topic: {prefix}/req/{app}/{device}, where the device publishes
 * (QoS 1, not retained). sg_reply_topic: {prefix}/res/{app}/{device}, where the
 * gateway answers (QoS 1); subscribe to it before the first request. Each returns
 * the length written (NUL-terminated), or -1 when a name is invalid (device not
 * 1-64 of [A-Za-z0-9_.-], app not [a-z][a-z0-9_-]{0,31}, empty prefix or one with
 * a wildcard) or buf is too small.
 */
int sg_request_topic(char *buf, size_t cap, const char *prefix, const char *app, const char *device);
int sg_reply_topic(char *buf, size_t cap, const char *prefix, const char *app, const char *device);

/* sg_valid_device and sg_valid_app check a device or an application name. */
int sg_valid_device(const char *device);
int sg_valid_app(const char *app);

/*
 * The request's header. id is required (1-SG_ID_MAX bytes of UTF-8 without control
 * characters, which are refused; " and \ are escaped; other bytes go as they are,
 * so keep ids ASCII or valid UTF-8). It is written first, so that even a
 * payload the gateway cannot read is answered with it). deadline_ms is the budget
 * in milliseconds (0: the application's default). sent_at_ms is when the device
 * publishes, Unix time in milliseconds, or 0 to leave sent_at out: set it only when
 * the clock is synchronised (SNTP), as a clock behind the gateway's by more than the
 * budget gets every request answered expired.
 */
typedef struct {
    const char *id;
    uint32_t deadline_ms;
    uint64_t sent_at_ms;
} sg_request_t;

/*
 * sg_build_request_u8 writes a request with input_u8_b64: one byte per value, for
 * an application with an input_range [lo, hi] (byte b stands for lo + b*(hi-lo)/255;
 * fashion: [0, 1], so an 8-bit grey pixel as it is). sg_build_request_f32 writes one
 * with input_b64: the values as little-endian IEEE-754 float32, whatever the CPU's
 * byte order. n must be the application's input size (fashion: 784, 28x28,
 * row-major). Each returns the payload's length (NUL-terminated in buf), or -1 when
 * the id is invalid or buf is smaller than SG_REQUEST_CAP.
 */
int sg_build_request_u8(char *buf, size_t cap, const sg_request_t *req, const uint8_t *values, size_t n);
int sg_build_request_f32(char *buf, size_t cap, const sg_request_t *req, const float *values, size_t n);

/* sg_quantize_u8 maps x in [lo, hi] to its byte for input_u8_b64 (rounded, clamped). */
uint8_t sg_quantize_u8(float x, float lo, float hi);

/* Reply statuses (docs/protocol.md, "Statuses"). */
typedef enum {
    SG_STATUS_UNKNOWN = 0, /* absent or one this code does not know */
    SG_STATUS_OK,          /* answered by the deadline */
    SG_STATUS_LATE,        /* answered after the deadline */
    SG_STATUS_DEGRADED,    /* the cheap estimate answered: see est_accuracy */
    SG_STATUS_EXPIRED,     /* no answer: the deadline passed */
    SG_STATUS_REJECTED,    /* not admitted: reason says why */
    SG_STATUS_ERROR        /* internal failure; retry with a new id */
} sg_status_t;

/*
 * The fields of a reply a device acts on. Strings are NUL-terminated and cut to
 * their buffers (a reply's id is the request's, so SG_ID_MAX + 1 holds it); a field
 * that is absent is empty, and its has_ flag 0. Other fields (probs, timings, model
 * batch, ...) are skipped: replies may grow, and a device must ignore what it does
 * not know.
 */
typedef struct {
    char id[SG_ID_MAX + 1];
    char status_text[16];
    sg_status_t status;
    char reason[40];
    char label[64];
    char model[40];
    char error[128];
    int has_class;
    int32_t class_index;
    int has_confidence;
    double confidence;
    int has_est_accuracy;
    double est_accuracy;
    int has_deadline_met;
    int deadline_met;
    int has_retry_after;
    int64_t retry_after_ms;
    int has_total_ms;
    double total_ms;
} sg_reply_t;

/*
 * sg_parse_reply reads a reply (a JSON object, len bytes, no NUL needed). Returns 0
 * when it is a JSON object with a string id or none, -1 when it is not valid JSON
 * as far as this scanner checks (it checks the structure, strings and escapes, not
 * every number's grammar).
 */
int sg_parse_reply(const char *json, size_t len, sg_reply_t *out);

/* sg_status_answered: ok, late and degraded carry a class and label. */
int sg_status_answered(sg_status_t s);

/* sg_reason_retryable: overload, shutting_down and internal are worth retrying
 * (after retry_after_ms when given); wire reasons fail again if resent. */
int sg_reason_retryable(const char *reason);

#ifdef __cplusplus
}
#endif

#endif /* SNEAKGATE_PROTO_H */

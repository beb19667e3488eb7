/*
 * sneakgate_proto.c: see sneakgate_proto.h. Portable C99: no ESP-IDF, no MQTT
 * client, no heap, no locale-dependent number formatting.
 *
 * Copyright the sneakgate authors. Licensed under the Apache License 2.0.
 */
#include "sneakgate_proto.h"

#include <string.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* ---- base64 ---------------------------------------------------------------- */

/* A byte source: the input's i-th byte (u8 values, or float32 little-endian). */
typedef uint8_t (*byte_at_fn)(const void *src, size_t i);

static uint8_t u8_at(const void *src, size_t i) { return ((const uint8_t *)src)[i]; }

static uint8_t f32le_at(const void *src, size_t i)
{
    float f = ((const float *)src)[i / 4];
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits); /* IEEE-754 single on every target this is for */
    return (uint8_t)(bits >> (8u * (i % 4)));
}

/* b64_write encodes n bytes of src into out (exactly SG_B64_LEN(n) characters, no NUL). */
static void b64_write(const void *src, byte_at_fn at, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)at(src, i) << 16) | ((uint32_t)at(src, i + 1) << 8) | at(src, i + 2);
        *out++ = b64_alphabet[(v >> 18) & 63];
        *out++ = b64_alphabet[(v >> 12) & 63];
        *out++ = b64_alphabet[(v >> 6) & 63];
        *out++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)at(src, i) << 16;
        *out++ = b64_alphabet[(v >> 18) & 63];
        *out++ = b64_alphabet[(v >> 12) & 63];
        *out++ = '=';
        *out++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)at(src, i) << 16) | ((uint32_t)at(src, i + 1) << 8);
        *out++ = b64_alphabet[(v >> 18) & 63];
        *out++ = b64_alphabet[(v >> 12) & 63];
        *out++ = b64_alphabet[(v >> 6) & 63];
        *out++ = '=';
    }
}

size_t sg_b64_encode(const uint8_t *in, size_t n, char *out, size_t out_cap)
{
    size_t len = SG_B64_LEN(n);
    if (out_cap < len + 1) {
        if (out_cap > 0)
            out[0] = '\0';
        return 0;
    }
    b64_write(in, u8_at, n, out);
    out[len] = '\0';
    return len;
}

/* ---- names and topics -------------------------------------------------------- */

int sg_valid_device(const char *d)
{
    size_t n = 0;
    for (; d[n] != '\0'; n++) {
        char c = d[n];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= SG_DEVICE_MAX;
}

int sg_valid_app(const char *a)
{
    size_t n = 0;
    if (!(a[0] >= 'a' && a[0] <= 'z'))
        return 0;
    for (; a[n] != '\0'; n++) {
        char c = a[n];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return n <= SG_APP_MAX;
}

static int valid_prefix(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || p[0] == '$' || p[0] == '/' || p[n - 1] == '/' || strstr(p, "//") != NULL)
        return 0;
    return strpbrk(p, "+#") == NULL;
}

static int topic(char *buf, size_t cap, const char *prefix, const char *kind, const char *app, const char *device)
{
    size_t np, nk, na, nd, total;
    if (!valid_prefix(prefix) || !sg_valid_app(app) || !sg_valid_device(device))
        return -1;
    np = strlen(prefix), nk = strlen(kind), na = strlen(app), nd = strlen(device);
    total = np + 1 + nk + 1 + na + 1 + nd;
    if (cap < total + 1)
        return -1;
    memcpy(buf, prefix, np);
    buf[np] = '/';
    memcpy(buf + np + 1, kind, nk);
    buf[np + 1 + nk] = '/';
    memcpy(buf + np + nk + 2, app, na);
    buf[np + nk + na + 2] = '/';
    memcpy(buf + np + nk + na + 3, device, nd);
    buf[total] = '\0';
    return (int)total;
}

int sg_request_topic(char *buf, size_t cap, const char *prefix, const char *app, const char *device)
{
    return topic(buf, cap, prefix, "req", app, device);
}

int sg_reply_topic(char *buf, size_t cap, const char *prefix, const char *app, const char *device)
{
    return topic(buf, cap, prefix, "res", app, device);
}

/* ---- requests ---------------------------------------------------------------- */

/* A bounded writer: ok turns 0 at the first write that does not fit. */
typedef struct {
    char *buf;
    size_t cap, len;
    int ok;
} writer_t;

static void put(writer_t *w, const char *s, size_t n)
{
    if (!w->ok || w->cap - w->len < n + 1) {
        w->ok = 0;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

static void puts_(writer_t *w, const char *s) { put(w, s, strlen(s)); }

static void put_u64(writer_t *w, uint64_t v)
{
    char d[21];
    size_t i = sizeof d;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    put(w, d + i, sizeof d - i);
}

/* valid_id: 1-SG_ID_MAX bytes, no C0 control, DEL or C1 control (UTF-8 C2 80-9F). */
static int valid_id(const char *id)
{
    size_t n;
    if (id == NULL)
        return 0;
    for (n = 0; id[n] != '\0'; n++) {
        unsigned char c = (unsigned char)id[n];
        if (c < 0x20 || c == 0x7f)
            return 0;
        if (c == 0xc2 && (unsigned char)id[n + 1] >= 0x80 && (unsigned char)id[n + 1] <= 0x9f)
            return 0;
    }
    return n >= 1 && n <= SG_ID_MAX;
}

static void put_id(writer_t *w, const char *id)
{
    for (; *id != '\0'; id++) {
        if (*id == '"' || *id == '\\')
            put(w, "\\", 1);
        put(w, id, 1);
    }
}

static int build(char *buf, size_t cap, const sg_request_t *req, const char *field, const void *src,
                 byte_at_fn at, size_t n_bytes)
{
    writer_t w = {buf, cap, 0, 1};
    size_t b64;
    if (req == NULL || !valid_id(req->id) || cap == 0)
        return -1;
    buf[0] = '\0';
    puts_(&w, "{\"id\":\""); /* the id first: a payload the gateway cannot read is still answered with it */
    put_id(&w, req->id);
    puts_(&w, "\"");
    if (req->deadline_ms > 0) {
        puts_(&w, ",\"deadline_ms\":");
        put_u64(&w, req->deadline_ms);
    }
    if (req->sent_at_ms > 0) {
        puts_(&w, ",\"sent_at\":");
        put_u64(&w, req->sent_at_ms);
    }
    puts_(&w, ",\"");
    puts_(&w, field);
    puts_(&w, "\":\"");
    b64 = SG_B64_LEN(n_bytes);
    if (!w.ok || w.cap - w.len < b64 + 3) /* the base64, "}, NUL */
        return -1;
    b64_write(src, at, n_bytes, w.buf + w.len);
    w.len += b64;
    w.buf[w.len] = '\0';
    puts_(&w, "\"}");
    return w.ok ? (int)w.len : -1;
}

int sg_build_request_u8(char *buf, size_t cap, const sg_request_t *req, const uint8_t *values, size_t n)
{
    return build(buf, cap, req, "input_u8_b64", values, u8_at, n);
}

int sg_build_request_f32(char *buf, size_t cap, const sg_request_t *req, const float *values, size_t n)
{
    return build(buf, cap, req, "input_b64", values, f32le_at, 4 * n);
}

uint8_t sg_quantize_u8(float x, float lo, float hi)
{
    float b = (x - lo) * 255.0f / (hi - lo);
    if (!(b > 0.0f)) /* also NaN */
        return 0;
    if (b >= 255.0f)
        return 255;
    return (uint8_t)(b + 0.5f);
}

/* ---- replies ----------------------------------------------------------------- */

typedef struct {
    const char *p, *end;
} scan_t;

static void skip_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(scan_t *s, uint32_t *v)
{
    int i;
    *v = 0;
    if (s->end - s->p < 4)
        return -1;
    for (i = 0; i < 4; i++) {
        int h = hexval(s->p[i]);
        if (h < 0)
            return -1;
        *v = (*v << 4) | (uint32_t)h;
    }
    s->p += 4;
    return 0;
}

/* out_byte appends a byte to out (cap including the NUL), dropping what does not fit. */
static void out_byte(char *out, size_t cap, size_t *n, char c)
{
    if (out != NULL && *n + 1 < cap)
        out[*n] = c;
    (*n)++;
}

/*
 * read_string reads a JSON string at s->p (on its opening quote) into out (UTF-8,
 * escapes decoded, cut to cap - 1 bytes and NUL-terminated); out may be NULL to
 * skip it. Returns 0, or -1 on a malformed string.
 */
static int read_string(scan_t *s, char *out, size_t cap)
{
    size_t n = 0;
    if (s->p >= s->end || *s->p != '"')
        return -1;
    s->p++;
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p++;
        if (c == '"') {
            if (out != NULL && cap > 0)
                out[n < cap ? n : cap - 1] = '\0';
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            out_byte(out, cap, &n, (char)c);
            continue;
        }
        if (s->p >= s->end)
            return -1;
        c = (unsigned char)*s->p++;
        switch (c) {
        case '"': case '\\': case '/':
            out_byte(out, cap, &n, (char)c);
            break;
        case 'b': out_byte(out, cap, &n, '\b'); break;
        case 'f': out_byte(out, cap, &n, '\f'); break;
        case 'n': out_byte(out, cap, &n, '\n'); break;
        case 'r': out_byte(out, cap, &n, '\r'); break;
        case 't': out_byte(out, cap, &n, '\t'); break;
        case 'u': {
            uint32_t cp, lo;
            if (read_hex4(s, &cp) != 0)
                return -1;
            if (cp >= 0xd800 && cp <= 0xdbff && s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u') {
                scan_t t = {s->p + 2, s->end};
                if (read_hex4(&t, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    s->p = t.p;
                }
            }
            if (cp >= 0xd800 && cp <= 0xdfff)
                cp = 0xfffd; /* a lone surrogate */
            if (cp < 0x80) {
                out_byte(out, cap, &n, (char)cp);
            } else if (cp < 0x800) {
                out_byte(out, cap, &n, (char)(0xc0 | (cp >> 6)));
                out_byte(out, cap, &n, (char)(0x80 | (cp & 0x3f)));
            } else if (cp < 0x10000) {
                out_byte(out, cap, &n, (char)(0xe0 | (cp >> 12)));
                out_byte(out, cap, &n, (char)(0x80 | ((cp >> 6) & 0x3f)));
                out_byte(out, cap, &n, (char)(0x80 | (cp & 0x3f)));
            } else {
                out_byte(out, cap, &n, (char)(0xf0 | (cp >> 18)));
                out_byte(out, cap, &n, (char)(0x80 | ((cp >> 12) & 0x3f)));
                out_byte(out, cap, &n, (char)(0x80 | ((cp >> 6) & 0x3f)));
                out_byte(out, cap, &n, (char)(0x80 | (cp & 0x3f)));
            }
            break;
        }
        default:
            return -1;
        }
    }
    return -1;
}

/* read_number copies a JSON number's text at s->p into num (NUL-terminated). */
static int read_number(scan_t *s, char *num, size_t cap)
{
    size_t n = 0;
    while (s->p < s->end) {
        char c = *s->p;
        if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'))
            break;
        if (n + 1 >= cap)
            return -1;
        num[n++] = c;
        s->p++;
    }
    num[n] = '\0';
    return n > 0 ? 0 : -1;
}

/* parse_double reads a JSON number without strtod, so the C locale does not matter. */
static double parse_double(const char *t)
{
    double v = 0.0, scale = 1.0;
    int neg = 0, e10 = 0, eneg = 0;
    if (*t == '-')
        neg = 1, t++;
    for (; *t >= '0' && *t <= '9'; t++)
        v = v * 10.0 + (*t - '0');
    if (*t == '.')
        for (t++; *t >= '0' && *t <= '9'; t++) {
            scale /= 10.0;
            v += (*t - '0') * scale;
        }
    if (*t == 'e' || *t == 'E') {
        t++;
        if (*t == '-' || *t == '+')
            eneg = *t++ == '-';
        for (; *t >= '0' && *t <= '9' && e10 < 400; t++)
            e10 = e10 * 10 + (*t - '0');
        while (e10-- > 0)
            v = eneg ? v / 10.0 : v * 10.0;
    }
    return neg ? -v : v;
}

/* skip_value skips any JSON value (nested arrays and objects too). */
static int skip_value(scan_t *s, int depth)
{
    char num[64];
    skip_ws(s);
    if (s->p >= s->end || depth > 16)
        return -1;
    switch (*s->p) {
    case '"':
        return read_string(s, NULL, 0);
    case '[':
    case '{': {
        char close = *s->p == '[' ? ']' : '}';
        int object = close == '}';
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return 0;
        }
        for (;;) {
            if (object) {
                skip_ws(s);
                if (read_string(s, NULL, 0) != 0)
                    return -1;
                skip_ws(s);
                if (s->p >= s->end || *s->p++ != ':')
                    return -1;
            }
            if (skip_value(s, depth + 1) != 0)
                return -1;
            skip_ws(s);
            if (s->p >= s->end)
                return -1;
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            if (*s->p++ != close)
                return -1;
            return 0;
        }
    }
    case 't':
        if (s->end - s->p >= 4 && memcmp(s->p, "true", 4) == 0)
            return s->p += 4, 0;
        return -1;
    case 'f':
        if (s->end - s->p >= 5 && memcmp(s->p, "false", 5) == 0)
            return s->p += 5, 0;
        return -1;
    case 'n':
        if (s->end - s->p >= 4 && memcmp(s->p, "null", 4) == 0)
            return s->p += 4, 0;
        return -1;
    default:
        return read_number(s, num, sizeof num);
    }
}

static sg_status_t status_of(const char *t)
{
    static const struct {
        const char *name;
        sg_status_t status;
    } statuses[] = {{"ok", SG_STATUS_OK},           {"late", SG_STATUS_LATE},
                    {"degraded", SG_STATUS_DEGRADED}, {"expired", SG_STATUS_EXPIRED},
                    {"rejected", SG_STATUS_REJECTED}, {"error", SG_STATUS_ERROR}};
    size_t i;
    for (i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
        if (strcmp(t, statuses[i].name) == 0)
            return statuses[i].status;
    return SG_STATUS_UNKNOWN;
}

int sg_parse_reply(const char *json, size_t len, sg_reply_t *r)
{
    scan_t s = {json, json + len};
    memset(r, 0, sizeof *r);
    skip_ws(&s);
    if (s.p >= s.end || *s.p++ != '{')
        return -1;
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}') {
        s.p++;
    } else {
        for (;;) {
            char key[24], num[64];
            char *str = NULL;
            size_t str_cap = 0;
            skip_ws(&s);
            if (read_string(&s, key, sizeof key) != 0)
                return -1;
            skip_ws(&s);
            if (s.p >= s.end || *s.p++ != ':')
                return -1;
            skip_ws(&s);
            if (s.p >= s.end)
                return -1;
            if (strcmp(key, "id") == 0)
                str = r->id, str_cap = sizeof r->id;
            else if (strcmp(key, "status") == 0)
                str = r->status_text, str_cap = sizeof r->status_text;
            else if (strcmp(key, "reason") == 0)
                str = r->reason, str_cap = sizeof r->reason;
            else if (strcmp(key, "label") == 0)
                str = r->label, str_cap = sizeof r->label;
            else if (strcmp(key, "model") == 0)
                str = r->model, str_cap = sizeof r->model;
            else if (strcmp(key, "error") == 0)
                str = r->error, str_cap = sizeof r->error;

            if (str != NULL && *s.p == '"') {
                if (read_string(&s, str, str_cap) != 0)
                    return -1;
            } else if (*s.p == '-' || (*s.p >= '0' && *s.p <= '9')) {
                if (read_number(&s, num, sizeof num) != 0)
                    return -1;
                if (strcmp(key, "class") == 0)
                    r->has_class = 1, r->class_index = (int32_t)parse_double(num);
                else if (strcmp(key, "confidence") == 0)
                    r->has_confidence = 1, r->confidence = parse_double(num);
                else if (strcmp(key, "est_accuracy") == 0)
                    r->has_est_accuracy = 1, r->est_accuracy = parse_double(num);
                else if (strcmp(key, "retry_after_ms") == 0)
                    r->has_retry_after = 1, r->retry_after_ms = (int64_t)parse_double(num);
                else if (strcmp(key, "total_ms") == 0)
                    r->has_total_ms = 1, r->total_ms = parse_double(num);
            } else if (strcmp(key, "deadline_met") == 0 && (*s.p == 't' || *s.p == 'f')) {
                r->has_deadline_met = 1;
                r->deadline_met = *s.p == 't';
                if (skip_value(&s, 0) != 0)
                    return -1;
            } else if (skip_value(&s, 0) != 0) {
                return -1;
            }
            skip_ws(&s);
            if (s.p >= s.end)
                return -1;
            if (*s.p == ',') {
                s.p++;
                continue;
            }
            if (*s.p++ != '}')
                return -1;
            break;
        }
    }
    skip_ws(&s);
    if (s.p != s.end)
        return -1; /* trailing data */
    r->status = status_of(r->status_text);
    return 0;
}

int sg_status_answered(sg_status_t s)
{
    return s == SG_STATUS_OK || s == SG_STATUS_LATE || s == SG_STATUS_DEGRADED;
}

int sg_reason_retryable(const char *reason)
{
    return strcmp(reason, "overload") == 0 || strcmp(reason, "shutting_down") == 0 ||
           strcmp(reason, "internal") == 0;
}

/*
 * A sneakgate device on an ESP32 (ESP-IDF v5.1 or later, esp-mqtt): joins Wi-Fi,
 * synchronises the clock by SNTP, connects to the broker (mqtt:// or mqtts://),
 * subscribes to its reply topic, then every CONFIG_SG_PERIOD_MS publishes a
 * fashion request (a 28x28 grey image: input_u8_b64, or input_b64 as float32) with
 * an id, deadline_ms and, once the clock is synchronised, sent_at, and logs the
 * reply: status, label, confidence, round trip. README.md beside this directory
 * explains each choice; docs/protocol.md is the whole protocol.
 *
 * The protocol itself (topics, payloads, base64, reply fields) is in
 * sneakgate_proto.c, portable C that esp32_test.go checks on the host against the
 * gateway's parser. This file is the ESP-IDF part; it is not built by the
 * repository's tests (no ESP-IDF there).
 *
 * Copyright the sneakgate authors. Licensed under the Apache License 2.0.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "esp_netif_sntp.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "esp_wifi.h"
#include "freertos/FreeRTOS.h"
#include "freertos/event_groups.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#include "nvs_flash.h"

#include "sneakgate_proto.h"

static const char *TAG = "sneakgate";

/* ---- sizes ------------------------------------------------------------------
 *
 * Request: SG_REQUEST_CAP of the encoded input. fashion (784 values):
 * input_u8_b64 is 1,048 base64 characters, a payload of 1,135 bytes with an
 * 18-character id, deadline_ms and sent_at; input_b64 4,184 characters, 4,268
 * bytes (esp32_test.go logs both). REQUEST_CAP is 1,312 and 4,448 bytes,
 * MQTT_OUT_BUFFER 1,520 and 4,656.
 *
 * MQTT output buffer (buffer.out_size): esp-mqtt builds the whole PUBLISH packet
 * there (fixed header up to 5 bytes, 2 + topic, packet id 2, payload). A payload
 * that does not fit is written in several pieces, and with Nagle's algorithm on
 * (esp-mqtt does not turn it off) a piece can wait for the broker's ACK of the one
 * before: size it to hold the largest request, as MQTT_OUT_BUFFER does.
 *
 * MQTT input buffer (buffer.size): a reply is about 250-400 bytes (more with the
 * gateway's probs option); a larger message arrives in pieces, which
 * mqtt_event_handler puts back together in s_reply_buf (REPLY_MAX).
 */
#define INPUT_SIZE CONFIG_SG_INPUT_SIZE
#if CONFIG_SG_ENCODING_F32
#define INPUT_BYTES (4 * INPUT_SIZE)
#else
#define INPUT_BYTES INPUT_SIZE
#endif
#define ID_MAX (SG_DEVICE_MAX + 20) /* "{device}-{boot nonce, 8 hex}-{sequence}" */
#define REQUEST_CAP SG_REQUEST_CAP(INPUT_BYTES, ID_MAX)
#define TOPIC_MAX 192
#define MQTT_OUT_BUFFER (REQUEST_CAP + TOPIC_MAX + 16)
#define MQTT_IN_BUFFER 1024
#define REPLY_MAX 2048

#define WIFI_UP BIT0
#define MQTT_READY BIT1 /* connected, and the reply subscription granted */

static EventGroupHandle_t s_events;
static QueueHandle_t s_replies; /* sg_reply_t for the request being waited on */
static esp_mqtt_client_handle_t s_client;
static volatile int s_time_synced;
static int s_sub_msg_id = -1;

static char s_request_topic[TOPIC_MAX];
static char s_reply_topic[TOPIC_MAX];
static char s_payload[REQUEST_CAP];
#if CONFIG_SG_ENCODING_F32
static float s_input[INPUT_SIZE];
#else
static uint8_t s_input[INPUT_SIZE];
#endif

/* The id of the request being waited on ("" when none), shared with the MQTT task. */
static char s_pending_id[ID_MAX + 1];
static portMUX_TYPE s_pending_lock = portMUX_INITIALIZER_UNLOCKED;

/* Reply reassembly, on the MQTT task only. */
static char s_reply_buf[REPLY_MAX];
static int s_reply_skip;
static sg_reply_t s_reply;

/* ---- Wi-Fi --------------------------------------------------------------------- */

static void wifi_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    if (base == WIFI_EVENT && id == WIFI_EVENT_STA_START) {
        esp_wifi_connect();
    } else if (base == WIFI_EVENT && id == WIFI_EVENT_STA_DISCONNECTED) {
        xEventGroupClearBits(s_events, WIFI_UP);
        ESP_LOGW(TAG, "Wi-Fi lost; reconnecting");
        esp_wifi_connect();
    } else if (base == IP_EVENT && id == IP_EVENT_STA_GOT_IP) {
        xEventGroupSetBits(s_events, WIFI_UP);
    }
}

static void wifi_start(void)
{
    wifi_init_config_t init = WIFI_INIT_CONFIG_DEFAULT();
    wifi_config_t wc = {0};

    esp_netif_create_default_wifi_sta();
    ESP_ERROR_CHECK(esp_wifi_init(&init));
    ESP_ERROR_CHECK(esp_event_handler_instance_register(WIFI_EVENT, ESP_EVENT_ANY_ID, wifi_event, NULL, NULL));
    ESP_ERROR_CHECK(esp_event_handler_instance_register(IP_EVENT, IP_EVENT_STA_GOT_IP, wifi_event, NULL, NULL));
    strlcpy((char *)wc.sta.ssid, CONFIG_SG_WIFI_SSID, sizeof wc.sta.ssid);
    strlcpy((char *)wc.sta.password, CONFIG_SG_WIFI_PASSWORD, sizeof wc.sta.password);
    ESP_ERROR_CHECK(esp_wifi_set_mode(WIFI_MODE_STA));
    ESP_ERROR_CHECK(esp_wifi_set_config(WIFI_IF_STA, &wc));
    ESP_ERROR_CHECK(esp_wifi_start());
    /* Modem sleep (the default) holds frames to the device until the next DTIM
     * beacon, typically 100-300 ms: more than a 32-200 ms budget. Keep the radio
     * awake while waiting for replies (at the cost of power). */
    ESP_ERROR_CHECK(esp_wifi_set_ps(WIFI_PS_NONE));
}

/* ---- clock ------------------------------------------------------------------- */

static void time_synced(struct timeval *tv)
{
    (void)tv;
    if (!s_time_synced)
        ESP_LOGI(TAG, "clock synchronised by SNTP: requests now carry sent_at");
    s_time_synced = 1;
}

static void sntp_start(void)
{
    esp_sntp_config_t c = ESP_NETIF_SNTP_DEFAULT_CONFIG(CONFIG_SG_SNTP_SERVER);
    c.sync_cb = time_synced;
    ESP_ERROR_CHECK(esp_netif_sntp_init(&c));
}

/* now_ms: Unix time in milliseconds, for sent_at. */
static uint64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/* ---- MQTT -------------------------------------------------------------------- */

static void on_reply(const char *data, int len)
{
    int waiting;
    if (sg_parse_reply(data, (size_t)len, &s_reply) != 0) {
        ESP_LOGW(TAG, "a message on %s that is not a reply (%d bytes)", s_reply_topic, len);
        return;
    }
    taskENTER_CRITICAL(&s_pending_lock);
    waiting = s_pending_id[0] != '\0' && strcmp(s_pending_id, s_reply.id) == 0;
    if (waiting)
        s_pending_id[0] = '\0'; /* a second copy (QoS 1 is at least once) is ignored */
    taskEXIT_CRITICAL(&s_pending_lock);
    if (waiting)
        xQueueSend(s_replies, &s_reply, 0);
    else
        ESP_LOGI(TAG, "reply to %s, not awaited (a repeat, or after the wait gave up): %s", s_reply.id,
                 s_reply.status_text);
}

static void mqtt_event_handler(void *arg, esp_event_base_t base, int32_t event_id, void *event_data)
{
    esp_mqtt_event_handle_t ev = event_data;
    switch ((esp_mqtt_event_id_t)event_id) {
    case MQTT_EVENT_CONNECTED:
        /* Subscribe before the first request, on every connection (a clean
         * session forgets subscriptions), or a fast reply is missed. */
        ESP_LOGI(TAG, "connected to %s; subscribing to %s", CONFIG_SG_BROKER_URI, s_reply_topic);
        s_sub_msg_id = esp_mqtt_client_subscribe(s_client, s_reply_topic, 1);
        break;
    case MQTT_EVENT_SUBSCRIBED:
        if (ev->msg_id != s_sub_msg_id)
            break;
        /* The SUBACK's return code: 0x80 is a refusal (an ACL), not a grant. */
        if (ev->data_len < 1 || (uint8_t)ev->data[0] >= 0x80) {
            ESP_LOGE(TAG, "the broker refused the subscription to %s (its ACL?): no replies can arrive", s_reply_topic);
            break;
        }
        ESP_LOGI(TAG, "subscribed (QoS %d granted)", ev->data[0]);
        xEventGroupSetBits(s_events, MQTT_READY);
        break;
    case MQTT_EVENT_DISCONNECTED:
        xEventGroupClearBits(s_events, MQTT_READY);
        ESP_LOGW(TAG, "disconnected from the broker; esp-mqtt reconnects");
        break;
    case MQTT_EVENT_DATA:
        /* A message longer than the input buffer arrives in pieces. */
        if (ev->current_data_offset == 0)
            s_reply_skip = ev->total_data_len > REPLY_MAX;
        if (s_reply_skip) {
            if (ev->current_data_offset == 0)
                ESP_LOGW(TAG, "a %d-byte message on the reply topic is over REPLY_MAX; skipped", ev->total_data_len);
            break;
        }
        memcpy(s_reply_buf + ev->current_data_offset, ev->data, (size_t)ev->data_len);
        if (ev->current_data_offset + ev->data_len == ev->total_data_len)
            on_reply(s_reply_buf, ev->total_data_len);
        break;
    case MQTT_EVENT_ERROR:
        if (ev->error_handle->error_type == MQTT_ERROR_TYPE_TCP_TRANSPORT)
            ESP_LOGE(TAG, "transport error: esp-tls 0x%x, TLS stack 0x%x, socket errno %d",
                     ev->error_handle->esp_tls_last_esp_err, ev->error_handle->esp_tls_stack_err,
                     ev->error_handle->esp_transport_sock_errno);
        else if (ev->error_handle->error_type == MQTT_ERROR_TYPE_CONNECTION_REFUSED)
            ESP_LOGE(TAG, "the broker refused the connection (code 0x%x: user name, password or client id?)",
                     ev->error_handle->connect_return_code);
        break;
    default:
        break;
    }
}

#if SG_HAVE_CA_PEM
extern const char ca_pem_start[] asm("_binary_ca_pem_start");
#endif
#if SG_HAVE_CLIENT_CERT
extern const char client_crt_start[] asm("_binary_client_crt_start");
extern const char client_key_start[] asm("_binary_client_key_start");
#endif

static void mqtt_start(void)
{
    esp_mqtt_client_config_t cfg = {
        .broker.address.uri = CONFIG_SG_BROKER_URI,
        .credentials.client_id = CONFIG_SG_DEVICE,
        .session.keepalive = 30,
        /* esp-mqtt reconnects by itself after this pause; requests wait meanwhile
         * (request_task waits for MQTT_READY). */
        .network.reconnect_timeout_ms = 2000,
        .network.timeout_ms = 5000,
        .buffer.size = MQTT_IN_BUFFER,
        .buffer.out_size = MQTT_OUT_BUFFER,
        .task.stack_size = 6144,
    };
    if (CONFIG_SG_MQTT_USERNAME[0] != '\0')
        cfg.credentials.username = CONFIG_SG_MQTT_USERNAME;
    if (CONFIG_SG_MQTT_PASSWORD[0] != '\0')
        cfg.credentials.authentication.password = CONFIG_SG_MQTT_PASSWORD;
#if SG_HAVE_CA_PEM
    cfg.broker.verification.certificate = ca_pem_start; /* PEM, NUL-terminated by EMBED_TXTFILES */
#endif
#if SG_HAVE_CLIENT_CERT
    cfg.credentials.authentication.certificate = client_crt_start;
    cfg.credentials.authentication.key = client_key_start;
#endif
    s_client = esp_mqtt_client_init(&cfg);
    ESP_ERROR_CHECK(esp_mqtt_client_register_event(s_client, ESP_EVENT_ANY_ID, mqtt_event_handler, NULL));
    ESP_ERROR_CHECK(esp_mqtt_client_start(s_client));
}

/* ---- requests ---------------------------------------------------------------- */

/*
 * read_input fills s_input with the next image: replace it with your camera or
 * sensor (fashion: 28x28 grey, row-major, 0 = black; as bytes for input_u8_b64,
 * byte / 255 as floats for input_b64). Here: a moving test pattern.
 */
static void read_input(uint32_t seq)
{
    for (int i = 0; i < INPUT_SIZE; i++) {
        uint8_t grey = (uint8_t)((i % 28 + i / 28 + seq) * 9);
#if CONFIG_SG_ENCODING_F32
        s_input[i] = (float)grey / 255.0f;
#else
        s_input[i] = grey;
#endif
    }
}

static void request_task(void *arg)
{
    /* Ids must be unique per (app, device) for the gateway's store.retention (10
     * minutes): a repeated id is answered with the first reply, never run again.
     * A counter alone restarts at every boot, so a random boot nonce goes in too. */
    uint32_t nonce = esp_random(), seq = 0;
    char id[ID_MAX + 1];
    sg_reply_t reply;

    for (;;) {
        uint32_t retry_ms = 0;
        xEventGroupWaitBits(s_events, MQTT_READY, pdFALSE, pdTRUE, portMAX_DELAY);
        read_input(seq);
        snprintf(id, sizeof id, "%s-%08" PRIx32 "-%" PRIu32, CONFIG_SG_DEVICE, nonce, seq++);

        /* sent_at only with a synchronised clock: one behind the gateway's by more
         * than the budget gets every request answered expired. */
        sg_request_t req = {.id = id, .deadline_ms = CONFIG_SG_DEADLINE_MS,
                            .sent_at_ms = s_time_synced ? now_ms() : 0};
#if CONFIG_SG_ENCODING_F32
        int len = sg_build_request_f32(s_payload, sizeof s_payload, &req, s_input, INPUT_SIZE);
#else
        int len = sg_build_request_u8(s_payload, sizeof s_payload, &req, s_input, INPUT_SIZE);
#endif
        if (len < 0) {
            ESP_LOGE(TAG, "request %s does not fit %u bytes", id, (unsigned)sizeof s_payload);
            vTaskDelay(pdMS_TO_TICKS(CONFIG_SG_PERIOD_MS));
            continue;
        }

        xQueueReset(s_replies);
        taskENTER_CRITICAL(&s_pending_lock);
        strlcpy(s_pending_id, id, sizeof s_pending_id);
        taskEXIT_CRITICAL(&s_pending_lock);

        int64_t t0 = esp_timer_get_time();
        /* QoS 1, not retained (the gateway ignores retained requests). While the
         * connection is down esp-mqtt keeps a QoS 1 message in its outbox and sends
         * it after the reconnect: with sent_at, one that waited past its deadline is
         * answered expired at once instead of being run. */
        if (esp_mqtt_client_publish(s_client, s_request_topic, s_payload, len, 1, 0) < 0) {
            ESP_LOGW(TAG, "publish %s failed", id);
        } else if (xQueueReceive(s_replies, &reply, pdMS_TO_TICKS(CONFIG_SG_DEADLINE_MS + 2000)) != pdTRUE) {
            ESP_LOGW(TAG, "%s: no reply within the deadline + 2 s", id);
        } else {
            double rtt_ms = (double)(esp_timer_get_time() - t0) / 1000.0;
            if (sg_status_answered(reply.status)) {
                ESP_LOGI(TAG, "%s: %s class %d \"%s\" confidence %.3f (est. accuracy %.3f) by %s, "
                         "round trip %.1f ms (gateway %.1f ms)",
                         id, reply.status_text, (int)reply.class_index, reply.label, reply.confidence,
                         reply.has_est_accuracy ? reply.est_accuracy : -1.0, reply.model, rtt_ms,
                         reply.has_total_ms ? reply.total_ms : -1.0);
            } else {
                ESP_LOGW(TAG, "%s: %s %s: %s (round trip %.1f ms)", id, reply.status_text, reply.reason,
                         reply.error, rtt_ms);
                /* overload, shutting_down, internal: worth retrying (with a new id),
                 * after retry_after_ms; a wire reason fails again: fix the request. */
                if (reply.status == SG_STATUS_REJECTED && sg_reason_retryable(reply.reason) && reply.has_retry_after)
                    retry_ms = (uint32_t)reply.retry_after_ms;
            }
        }
        taskENTER_CRITICAL(&s_pending_lock);
        s_pending_id[0] = '\0';
        taskEXIT_CRITICAL(&s_pending_lock);
        vTaskDelay(pdMS_TO_TICKS(retry_ms > CONFIG_SG_PERIOD_MS ? retry_ms : CONFIG_SG_PERIOD_MS));
    }
}

void app_main(void)
{
    esp_err_t err = nvs_flash_init(); /* Wi-Fi keeps calibration data in NVS */
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        ESP_ERROR_CHECK(nvs_flash_erase());
        err = nvs_flash_init();
    }
    ESP_ERROR_CHECK(err);
    ESP_ERROR_CHECK(esp_netif_init());
    ESP_ERROR_CHECK(esp_event_loop_create_default());

    if (sg_request_topic(s_request_topic, sizeof s_request_topic, CONFIG_SG_TOPIC_PREFIX, CONFIG_SG_APP,
                         CONFIG_SG_DEVICE) < 0 ||
        sg_reply_topic(s_reply_topic, sizeof s_reply_topic, CONFIG_SG_TOPIC_PREFIX, CONFIG_SG_APP,
                       CONFIG_SG_DEVICE) < 0) {
        ESP_LOGE(TAG, "invalid topic prefix, application or device name (menuconfig, \"sneakgate device\")");
        return;
    }
    ESP_LOGI(TAG, "requests to %s, replies on %s; request buffer %u bytes, MQTT out buffer %u bytes",
             s_request_topic, s_reply_topic, (unsigned)REQUEST_CAP, (unsigned)MQTT_OUT_BUFFER);

    s_events = xEventGroupCreate();
    s_replies = xQueueCreate(1, sizeof(sg_reply_t));
    wifi_start();
    xEventGroupWaitBits(s_events, WIFI_UP, pdFALSE, pdTRUE, portMAX_DELAY);
    sntp_start();
    mqtt_start();
    xTaskCreate(request_task, "sneakgate_req", 6144, NULL, 5, NULL);
}

#!/usr/bin/env python3
"""A sneakgate device in Python: send inputs, print the replies.

Standard library plus paho-mqtt (Debian: apt install python3-paho-mqtt; works
with paho-mqtt 1.x and 2.x). See README.md beside this file for the protocol
points, and docs/protocol.md for the whole reference.

    python3 sneakgate_client.py --app fashion --device cam-1 --input-f32 sample.f32
    python3 sneakgate_client.py --app fashion --device cam-1 --pgm boot.pgm --deadline-ms 150

Each request is published at QoS 1 to {prefix}/req/{app}/{device} with the input
as input_b64 (little-endian float32, standard base64); the replies arrive on
{prefix}/res/{app}/{device} and are matched to their requests by id. Every reply
is printed on stdout as one line of JSON, exactly as received; progress and
round-trip times go to stderr.

Exit status: 0 when every request was answered (ok, late or degraded), 1 when
some reply was not an answer (expired, rejected, error), 3 when a reply did not
arrive within --timeout, 2 for usage errors.
"""

import argparse
import base64
import json
import os
import socket
import struct
import sys
import threading
import time

try:
    import paho.mqtt.client as mqtt
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("paho-mqtt is missing: apt install python3-paho-mqtt (or pip install paho-mqtt)")

ANSWERED = ("ok", "late", "degraded")


def encode_input(values):
    """input_b64: the values as little-endian float32, standard padded base64."""
    return base64.b64encode(struct.pack("<%df" % len(values), *values)).decode("ascii")


def read_f32(path, size):
    """Raw little-endian float32 values, size per request (one or more requests)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) == 0 or len(data) % (4 * size):
        raise ValueError("%s: %d bytes is not a whole number of %d-value inputs" % (path, len(data), size))
    values = struct.unpack("<%df" % (len(data) // 4), data)
    return [list(values[i:i + size]) for i in range(0, len(values), size)]


def read_pgm(path):
    """A binary 8-bit PGM (P5) image as values in [0, 1], row-major."""
    with open(path, "rb") as f:
        data = f.read()
    fields, pos = [], 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' starts a comment
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b"P5" or int(fields[3]) > 255:
        raise ValueError("%s: not an 8-bit binary PGM (P5)" % path)
    n = int(fields[1]) * int(fields[2])
    pixels = data[pos + 1:pos + 1 + n]
    if len(pixels) != n:
        raise ValueError("%s: truncated" % path)
    maxval = float(fields[3])
    return [p / maxval for p in pixels]


def set_nodelay(sock):
    """Turn Nagle's algorithm off: replies are small and round trips matter
    (measured: 26.5 ms with paho's defaults, 4.5 ms with TCP_NODELAY)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    except (AttributeError, OSError):  # a WebSocket transport has no TCP socket option
        return False


class Device:
    """One MQTT connection for one device name, with requests in flight by id."""

    def __init__(self, host, port, prefix, app, device, client_id=None, persistent=False, reply_to=None):
        self.prefix, self.app, self.device = prefix, app, device
        self.reply_topic = "%s/res/%s/%s" % (prefix, app, device)
        # Replies go to an allowed reply_to, and rejections of a refused one to
        # the device's own topic: listen on both.
        self.topics = [self.reply_topic] + ([reply_to] if reply_to else [])
        self.request_topic = "%s/req/%s/%s" % (prefix, app, device)
        self.lock = threading.Lock()
        self.pending = {}  # id -> [sent time, threading.Event, raw reply]
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        client_id = client_id or device
        # A persistent session (clean_session off, stable client id) makes the broker
        # keep the device's QoS 1 replies while it is disconnected.
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                      clean_session=not persistent)
        else:  # paho-mqtt 1.x (Debian 12)
            self.client = mqtt.Client(client_id=client_id, clean_session=not persistent)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        # connect() opened the socket; reconnects open new ones (_on_connect).
        self.nodelay = set_nodelay(self.client.socket())
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, rc, properties=None):
        if getattr(rc, "value", rc) != 0:
            print("connect refused: %s" % rc, file=sys.stderr)
            return
        set_nodelay(client.socket())
        # Subscribe on every connect: a clean session forgets subscriptions.
        client.subscribe([(t, 1) for t in self.topics])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, *granted):
        # paho 1.x passes the granted QoS, 2.x reason codes (>= 0x80 is a refusal).
        codes = granted[0] if granted else []
        for c in codes:
            value = getattr(c, "value", c)
            if value >= 0x80:
                print("subscription to %s refused (ACL?)" % self.topics, file=sys.stderr)
                return
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            print("not JSON on %s: %r" % (msg.topic, msg.payload[:80]), file=sys.stderr)
            return
        with self.lock:
            entry = self.pending.get(reply.get("id"))
            if entry is None or entry[2] is not None:
                return  # not ours, or a repeat (delivery is at least once)
            entry[2] = msg.payload
        entry[1].set()

    def send(self, req_id, values, deadline_ms=None, sent_at=False, reply_to=None):
        """Publish one request; returns immediately. "id" goes first, so even a
        rejected oversized payload can be matched."""
        payload = {"id": req_id}
        if deadline_ms:
            payload["deadline_ms"] = int(deadline_ms)  # an integer, never 50.0
        if sent_at:
            payload["sent_at"] = int(time.time() * 1000)  # Unix milliseconds
        if reply_to:
            payload["reply_to"] = reply_to
        payload["input_b64"] = encode_input(values)
        body = json.dumps(payload, separators=(",", ":"))
        with self.lock:
            self.pending[req_id] = [time.monotonic(), threading.Event(), None]
        info = self.client.publish(self.request_topic, body, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError("publish failed: %s" % mqtt.error_string(info.rc))

    def wait(self, req_id, timeout):
        """The raw reply to req_id and the round trip in ms, or (None, None)."""
        with self.lock:
            sent, done, _ = self.pending[req_id]
        if not done.wait(timeout):
            return None, None
        rtt = (time.monotonic() - sent) * 1000
        with self.lock:
            raw = self.pending.pop(req_id)[2]
        return raw, rtt

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def main():
    ap = argparse.ArgumentParser(description="Send inputs to a sneakgate gateway and print the replies.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--prefix", default="sneakgate", help="topic prefix (mqtt.topic_prefix)")
    ap.add_argument("--app", default="fashion")
    ap.add_argument("--device", default="py-1", help="device name: 1-64 of [A-Za-z0-9_.-]")
    ap.add_argument("--client-id", help="MQTT client id (default: the device name)")
    ap.add_argument("--persistent", action="store_true", help="persistent session (clean session off)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input-f32", metavar="FILE", help="raw little-endian float32 values, --size per request")
    src.add_argument("--pgm", metavar="FILE", help="an 8-bit binary PGM image, scaled to [0, 1]")
    src.add_argument("--blank", action="store_true", help="one input of --size zeros")
    ap.add_argument("--size", type=int, default=784, help="the application's input size (fashion: 784)")
    ap.add_argument("--deadline-ms", type=int, help="budget in ms (default: the application's)")
    ap.add_argument("--sent-at", action="store_true",
                    help="send sent_at, making the deadline end to end (needs a synchronised clock)")
    ap.add_argument("--reply-to", help="reply topic, if the gateway's allow-list permits it")
    ap.add_argument("--id-prefix", default="%s-%d" % (socket.gethostname().split(".")[0], os.getpid()),
                    help="request ids are PREFIX-0, PREFIX-1, ... (unique per device within 10 minutes)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
    args = ap.parse_args()

    if args.input_f32:
        inputs = read_f32(args.input_f32, args.size)
    elif args.pgm:
        inputs = [read_pgm(args.pgm)]
    else:
        inputs = [[0.0] * args.size]

    dev = Device(args.host, args.port, args.prefix, args.app, args.device, args.client_id, args.persistent,
                 args.reply_to)
    print("tcp_nodelay=%d" % dev.nodelay, file=sys.stderr)
    if not dev.subscribed.wait(args.timeout):
        # Without the subscription a fast reply would be missed.
        print("not subscribed to %s within %.0fs" % (dev.reply_topic, args.timeout), file=sys.stderr)
        return 3
    ids = ["%s-%d" % (args.id_prefix, i) for i in range(len(inputs))]
    for req_id, values in zip(ids, inputs):
        dev.send(req_id, values, args.deadline_ms, args.sent_at, args.reply_to)
    status = 0
    for req_id in ids:
        raw, rtt = dev.wait(req_id, args.timeout)
        if raw is None:
            print("%s: no reply within %.1fs" % (req_id, args.timeout), file=sys.stderr)
            status = 3
            continue
        reply = json.loads(raw)
        sys.stdout.write(raw.decode("utf-8") + "\n")
        sys.stdout.flush()
        st = reply.get("status")
        if st in ANSWERED:
            print("%s: %s %s (%.2f) by %s, round trip %.1f ms" % (
                req_id, st, reply.get("label"), reply.get("confidence", 0), reply.get("model"), rtt), file=sys.stderr)
        else:
            extra = ""
            if "retry_after_ms" in reply:
                extra = ", retry after %d ms" % reply["retry_after_ms"]
            print("%s: %s %s: %s%s" % (req_id, st, reply.get("reason"), reply.get("error"), extra), file=sys.stderr)
            status = max(status, 1)
    dev.close()
    return status


if __name__ == "__main__":
    sys.exit(main())

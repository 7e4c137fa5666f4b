"""The original design's receiver stack, the baseline of bench/receiver.sh: aiohttp takes
GitHub webhooks, verifies them and aiokafka publishes each one as a CloudEvent in Kafka
binary mode, answering 200 only after Kafka acknowledged it.

What it keeps of hook-receiver's hot path for a `github` route:
- verify: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 over the raw body, compared in
  constant time (hmac.compare_digest); 401 when missing or wrong;
- wrap: `ce_specversion`, `ce_id` (the X-GitHub-Delivery header, else a UUID),
  `ce_source`, `ce_type` (`com.github.` + X-GitHub-Event), `ce_time`, `ce_correlationid`
  (the delivery id), `ce_traceparent` (carried from the request when valid, else a new
  trace), `content-type`; the correlation id is the record key, the body the value;
- produce: one producer, `acks=all`, idempotence on, aiokafka's default partitioner
  (murmur2, as the Java client); 200 `{"id", "status": "published"}` after the
  acknowledgement, 503 when the send fails.
Not kept: the spool, the circuit breaker, dedupe, audit events, metrics.

Usage: receiver.py BOOTSTRAP_SERVERS TOPIC SECRET_FILE LISTEN_PORT
Serves POST /github on 127.0.0.1:LISTEN_PORT until SIGTERM.
"""

import asyncio
import datetime
import hashlib
import hmac
import json
import re
import secrets
import signal
import sys
import uuid

import uvloop
from aiohttp import web
from aiokafka import AIOKafkaProducer

SOURCE = "/bench/hook-receiver/github"
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def traceparent(given):
    if given and TRACEPARENT.match(given.strip()):
        return given.strip()
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def make_app(producer, topic, secret):
    async def github(request):
        body = await request.read()
        given = request.headers.get("X-Hub-Signature-256", "")
        if not given.startswith("sha256="):
            return web.json_response({"error": "signature missing"}, status=401)
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given[len("sha256="):].encode(), expected.encode()):
            return web.json_response({"error": "signature mismatch"}, status=401)
        event_type = request.headers.get("X-GitHub-Event")
        if not event_type:
            return web.json_response({"error": "X-GitHub-Event missing"}, status=400)
        delivery = request.headers.get("X-GitHub-Delivery") or str(uuid.uuid4())
        now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", delivery.encode()),
            ("ce_source", SOURCE.encode()),
            ("ce_type", f"com.github.{event_type}".encode()),
            ("ce_time", now.encode()),
            ("ce_correlationid", delivery.encode()),
            ("ce_traceparent", traceparent(request.headers.get("traceparent")).encode()),
            ("content-type", request.headers.get("Content-Type", "application/json").encode()),
        ]
        try:
            await producer.send_and_wait(topic, body, key=delivery.encode(), headers=headers)
        except Exception as error:  # noqa: BLE001 - any failure is a 503 to the sender
            return web.json_response({"error": f"not published: {error}"}, status=503)
        return web.json_response({"id": delivery, "status": "published"})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/github", github)
    return app


async def main(bootstrap, topic, secret_file, port):
    with open(secret_file, "rb") as f:
        secret = f.read().strip()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    runner = web.AppRunner(make_app(producer, topic, secret), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(json.dumps({"listening": f"127.0.0.1:{port}"}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await producer.stop()


if __name__ == "__main__":
    bootstrap, topic, secret_file, port = sys.argv[1:5]
    uvloop.run(main(bootstrap, topic, secret_file, int(port)))

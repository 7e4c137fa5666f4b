"""The original design's consumer stack, the baseline of bench/consumer.sh: aiokafka reads
CloudEvents written in Kafka binary mode and aiohttp POSTs each one to the sink in HTTP
binary mode (`ce-*` headers, `traceparent` carried on, the data as the body).

What it keeps of event-consumer's semantics (`ordering: key`, `maxInFlight: 64`):
- records of one key (in one partition) are POSTed one after another, different keys side
  by side, at most 64 requests in flight;
- offsets are committed only after the sink took every record of a fetched batch
  (getmany, deliver, commit), so delivery is at least once;
- retried: connection errors, timeouts, 408, 429 and 5xx, five attempts with exponential
  backoff and jitter; any other answer, and a record that is not a CloudEvent, is logged
  and skipped (no dead-letter topic, no circuit breaker).
Where it differs: a batch is a barrier (the next fetch waits for the slowest key of the
batch), and it commits after every batch rather than every second.

Usage: dispatcher.py BOOTSTRAP_SERVERS TOPIC GROUP SINK_URL
Reads from the earliest offset when the group has none; runs until SIGTERM, then commits
what the sink took and exits 0.
"""

import asyncio
import logging
import random
import signal
import sys
from collections import defaultdict
from urllib.parse import quote

import aiohttp
from aiokafka import AIOKafkaConsumer

MAX_IN_FLIGHT = 64
ATTEMPTS = 5
INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 30.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
REQUIRED = ("specversion", "id", "source", "type")
# The CloudEvents HTTP binding percent-encodes space, '"', '%' and what is not printable
# ASCII in header values; everything else passes as it is.
HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
# W3C trace context travels in its own headers, not as ce-traceparent.
TRACE_HEADERS = ("traceparent", "tracestate")

log = logging.getLogger("dispatcher")


class NotACloudEvent(Exception):
    pass


def http_headers(record):
    """The HTTP binary-mode headers of a record written in Kafka binary mode."""
    headers = {}
    for name, value in record.headers:
        lower = name.lower()
        text = value.decode("utf-8") if value is not None else ""
        if lower == "content-type":
            headers["content-type"] = text
        elif lower.startswith("ce_"):
            attribute = lower[3:]
            header = attribute if attribute in TRACE_HEADERS else "ce-" + attribute
            headers[header] = quote(text, safe=HEADER_SAFE)
    missing = [a for a in REQUIRED if "ce-" + a not in headers]
    if missing:
        raise NotACloudEvent(f"no `{missing[0]}` attribute")
    if headers["ce-specversion"] != "1.0":
        raise NotACloudEvent(f"specversion `{headers['ce-specversion']}`")
    return headers


def retryable(status):
    return status is None or status in (408, 429) or status >= 500


class Dispatcher:
    def __init__(self, session, url):
        self.session = session
        self.url = url
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.delivered = 0
        self.skipped = 0

    async def post(self, record, headers):
        """POSTs until the sink takes it, refuses it, or the attempts are used up."""
        for attempt in range(1, ATTEMPTS + 1):
            status, problem = None, None
            async with self.slots:
                try:
                    async with self.session.post(self.url, data=record.value, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    problem = repr(error)
            if status is not None and 200 <= status < 300:
                self.delivered += 1
                return
            if not retryable(status) or attempt == ATTEMPTS:
                break
            wait = min(INITIAL_BACKOFF * 2 ** (attempt - 1), MAX_BACKOFF)
            await asyncio.sleep(random.uniform(wait / 2, wait))
        self.skipped += 1
        log.error("%s-%d@%d not delivered: status %s %s", record.topic, record.partition, record.offset, status, problem or "")

    async def deliver_lane(self, records):
        for record in records:
            try:
                headers = http_headers(record)
            except (NotACloudEvent, UnicodeDecodeError) as error:
                self.skipped += 1
                log.error("%s-%d@%d skipped: not a CloudEvent: %s", record.topic, record.partition, record.offset, error)
                continue
            await self.post(record, headers)

    async def deliver_batch(self, batches):
        """Delivers one fetched batch, a lane per (partition, key); the offsets to commit."""
        lanes = defaultdict(list)
        offsets = {}
        for tp, records in batches.items():
            for record in records:
                # A record without a key is ordered with nothing: a lane of its own.
                lane = (tp.partition, record.key if record.key is not None else ("offset", record.offset))
                lanes[lane].append(record)
            offsets[tp] = records[-1].offset + 1
        await asyncio.gather(*(self.deliver_lane(records) for records in lanes.values()))
        return offsets


async def main(bootstrap, topic, group, url):
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        dispatcher = Dispatcher(session, url)
        try:
            while not stopping.is_set():
                batches = await consumer.getmany(timeout_ms=500)
                if batches:
                    offsets = await dispatcher.deliver_batch(batches)
                    await consumer.commit(offsets)
        finally:
            await consumer.stop()
    log.info("stopped: %d delivered, %d skipped", dispatcher.delivered, dispatcher.skipped)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: dispatcher.py BOOTSTRAP_SERVERS TOPIC GROUP SINK_URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(main(*sys.argv[1:]))

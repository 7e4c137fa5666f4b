#!/usr/bin/env python3
"""The demo's HTTP sink: prints each CloudEvent an event-consumer delivers (binary mode,
ce-* headers) as one line, appends it as JSON to --out, and answers 204.

    e2e/event-printer.py --listen 127.0.0.1:18088 --out target/stack/demo/events.jsonl
"""
import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        attributes = {k[3:].lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        try:
            data = json.loads(body)
        except ValueError:
            data = body.decode("utf-8", "replace")
        event = {"attributes": attributes, "traceparent": self.headers.get("traceparent"), "data": data}
        summary = json.dumps(data, separators=(",", ":"))[:100] if not isinstance(data, str) else data[:100]
        with lock:
            print(f"event {attributes.get('type', '?')} id={attributes.get('id', '?')} "
                  f"correlationid={attributes.get('correlationid', '-')} data={summary}", flush=True)
            with open(self.server.out, "a", encoding="utf-8") as out:
                out.write(json.dumps(event) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:18088")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.out = args.out
    print(f"event-printer listening on http://{args.listen}/", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

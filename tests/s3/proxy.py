#!/usr/bin/env python3
"""A counting, fault-injecting HTTP proxy in front of a real S3 server (moto) for
backuphub's tests (stdlib only).

Every request is forwarded as it came (method, path, headers, body) and logged as
`METHOD path status` to --log. Faults, per object path (/bucket/key as sent):
  --fail PATH:N      the first N GETs of PATH answer 500 InternalError (S3's XML body)
  --truncate PATH:N  the first N GETs of PATH send half the body, then close the
                     connection (Content-Length still says the whole)
  --die-after N      after N object GETs the proxy exits at once, as a server that
                     stops mid-run
Prints its port (127.0.0.1) as its first line.
"""
import argparse, http.client, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlsplit, unquote

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True, help="host:port of the S3 server")
    p.add_argument("--log", required=True)
    p.add_argument("--fail", action="append", default=[])
    p.add_argument("--truncate", action="append", default=[])
    p.add_argument("--die-after", type=int, default=0)
    args = p.parse_args()
    lock = threading.Lock()
    faults = {}
    for kind in ("fail", "truncate"):
        for spec in getattr(args, kind):
            path, _, n = spec.rpartition(":")
            faults[(kind, path)] = int(n)
    log = open(args.log, "a", buffering=1)
    served = [0]

    def take(kind, path):
        with lock:
            n = faults.get((kind, path), 0)
            if n > 0:
                faults[(kind, path)] = n - 1
                return True
            return False

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            path = unquote(urlsplit(self.path).path)
            if args.die_after and self.command == "GET" and "x-id=GetObject" in self.path:
                with lock:
                    served[0] += 1
                    if served[0] > args.die_after:
                        log.write("DIED\n")
                        import os
                        os._exit(0)
            if self.command == "GET" and take("fail", path):
                data = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>'
                self.send_response(500)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                log.write(f"{self.command} {self.path} 500\n")
                return
            conn = http.client.HTTPConnection(args.upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            truncate = self.command == "GET" and resp.status in (200, 206) and len(data) > 1 and take("truncate", path)
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            log.write(f"{self.command} {self.path} {resp.status}{' truncated' if truncate else ''}\n")
            if self.command != "HEAD":
                self.wfile.write(data[: len(data) // 2] if truncate else data)
            if truncate:
                self.wfile.flush()
                self.close_connection = True
                try:
                    import socket
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()

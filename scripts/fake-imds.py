#!/usr/bin/env python3
"""A stand-in for EC2 instance metadata (IMDSv2), for efaprobe's tests and lab.

Serves the paths efaprobe reads, token first:

    PUT /latest/api/token                      (needs X-aws-ec2-metadata-token-ttl-seconds)
    GET /latest/meta-data/instance-id          (needs X-aws-ec2-metadata-token, else 401)
    GET /latest/meta-data/instance-type
    GET /latest/meta-data/mac
    GET /latest/meta-data/placement/availability-zone
    GET /latest/meta-data/placement/availability-zone-id
    GET /latest/meta-data/placement/group-name (404 without --placement-group)
    GET /latest/meta-data/network/interfaces/macs/
    GET /latest/meta-data/network/interfaces/macs/MAC/{subnet-id,vpc-id,
        security-group-ids,subnet-ipv4-cidr-block}

Each interface (ENI) has its own subnet, VPC and security groups: the primary's from --mac,
--subnet, --vpc, --security-groups; every --extra-interface's from its own fields (a multi-rail
node lists one per rail, under the MAC of the interface holding the rail's address, which is
what the agent looks up). A MAC must be written as IMDS writes it (lower-case hex pairs), once.

Anything else is 404. Faults to test against:
    --delay SECONDS   every answer comes this late (a slow IMDS)
    --no-token        the token PUT is never answered (the IMDSv2 hop-limit symptom:
                      the PUT response dies one hop short of a pod not on hostNetwork)
    --refuse-tokens   tokens are issued but every GET is answered 401

Prints "listening on IP:PORT" once it accepts connections (--listen IP:0 picks a port).
Python 3 standard library only; stop it with SIGTERM or SIGINT.
"""

import argparse
import http.server
import re
import secrets
import sys
import threading
import time

TOKEN_PATH = "/latest/api/token"
META = "/latest/meta-data/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TOKENS = 1000  # issued tokens remembered; a long-running lab server forgets the oldest
NO_TOKEN_HOLD_SECONDS = 3600  # how long an unanswered token PUT keeps its connection
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, metavar="IP:PORT")
    p.add_argument("--instance-id", default="i-0123456789abcdef0")
    p.add_argument("--instance-type", default="p5.48xlarge")
    p.add_argument("--az", default="us-east-1a")
    p.add_argument("--az-id", help="omit for a 404 (older regions have none)")
    p.add_argument("--placement-group", help="omit for a 404: no placement group")
    p.add_argument("--mac", default="0e:00:00:00:00:01", help="primary interface")
    p.add_argument("--subnet", default="subnet-0000000000000000a")
    p.add_argument("--vpc", default="vpc-0000000000000000a")
    p.add_argument("--security-groups", default="sg-0000000000000000a", metavar="SG,SG")
    p.add_argument("--subnet-cidr", help="omit for a 404")
    p.add_argument(
        "--extra-interface",
        action="append",
        default=[],
        metavar="MAC,SUBNET,VPC,SG+SG[,CIDR]",
        help="another interface (repeatable)",
    )
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--no-token", action="store_true")
    p.add_argument("--refuse-tokens", action="store_true")
    return p.parse_args()


def metadata(args):
    """Path under /latest/meta-data/ -> answer body."""
    items = {
        "instance-id": args.instance_id,
        "instance-type": args.instance_type,
        "mac": args.mac,
        "placement/availability-zone": args.az,
        "placement/availability-zone-id": args.az_id,
        "placement/group-name": args.placement_group,
    }
    groups = args.security_groups.split(",")
    interfaces = [(args.mac, args.subnet, args.vpc, groups, args.subnet_cidr)]
    for spec in args.extra_interface:
        fields = spec.split(",")
        if len(fields) not in (4, 5):
            sys.exit(f"--extra-interface {spec!r}: want MAC,SUBNET,VPC,SG+SG[,CIDR]")
        mac, subnet, vpc, groups = fields[:4]
        cidr = fields[4] if len(fields) == 5 else None
        interfaces.append((mac, subnet, vpc, groups.split("+"), cidr))
    # A MAC the agent cannot match (its own are lower case) or listed twice would serve a
    # topology no instance has; say so rather than answer it.
    macs = [i[0] for i in interfaces]
    for mac in macs:
        if not MAC.fullmatch(mac):
            sys.exit(f"MAC {mac!r}: want six lower-case hex pairs joined by colons")
        if macs.count(mac) > 1:
            sys.exit(f"MAC {mac} is listed more than once")
    # Like IMDS: one "MAC/" per line, no newline after the last.
    items["network/interfaces/macs/"] = "\n".join(f"{i[0]}/" for i in interfaces)
    for mac, subnet, vpc, groups, cidr in interfaces:
        base = f"network/interfaces/macs/{mac}/"
        items[base + "subnet-id"] = subnet
        items[base + "vpc-id"] = vpc
        items[base + "security-group-ids"] = "\n".join(groups)
        items[base + "subnet-ipv4-cidr-block"] = cidr
    return {path: body for path, body in items.items() if body is not None}


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # an unanswered --no-token PUT must not block exit
    request_queue_size = 64  # clients read concurrently; the default 5 drops their SYNs


class Imds(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""

    def answer(self, status, body=""):
        time.sleep(self.server.args.delay)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path != TOKEN_PATH:
            return self.answer(404)
        if self.server.args.no_token:
            # Read, never answer: what a pod sees when the response's hop limit runs out.
            time.sleep(NO_TOKEN_HOLD_SECONDS)
            self.close_connection = True
            return None
        try:
            ttl = int(self.headers.get(TTL_HEADER, ""))
        except ValueError:
            return self.answer(400)
        if not 1 <= ttl <= 21600:
            return self.answer(400)
        token = secrets.token_urlsafe(32)
        with self.server.lock:
            if len(self.server.tokens) >= MAX_TOKENS:
                self.server.tokens.clear()
            self.server.tokens.add(token)
        self.answer(200, token)

    def do_GET(self):
        token = self.headers.get(TOKEN_HEADER)
        with self.server.lock:
            known = token in self.server.tokens
        if not known or self.server.args.refuse_tokens:
            return self.answer(401)
        body = self.server.items.get(self.path[len(META):]) if self.path.startswith(META) else None
        if body is None:
            return self.answer(404)
        self.answer(200, body)

    def log_message(self, format, *args):  # quiet: tests read stdout for the port
        pass


def main():
    args = parse_args()
    host, _, port = args.listen.rpartition(":")
    server = Server((host, int(port)), Imds)
    server.args = args
    server.items = metadata(args)
    server.tokens = set()
    server.lock = threading.Lock()
    bound_host, bound_port = server.server_address[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

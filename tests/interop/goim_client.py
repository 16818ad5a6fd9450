#!/usr/bin/env python3
"""An independent goim v2 TCP client, written from goim's published protocol
description (api/protocol/protocol.proto and the JS example's framing), not from
volley's code. Usage: goim_client.py TCP_PORT HTTP_PORT

Frame: packLen u32 | headerLen u16 (=16) | ver u16 | op u32 | seq u32 | body,
all big-endian. Ops: 2/3 heartbeat, 7/8 auth, 1000+ business pushes.
"""
import json, socket, struct, sys, urllib.request

HEADER = struct.Struct(">IHHII")


def pack(op, body=b"", seq=0, ver=1):
    return HEADER.pack(HEADER.size + len(body), HEADER.size, ver, op, seq) + body


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, op, body=b"", seq=0, ver=1):
        self.sock.sendall(pack(op, body, seq, ver))

    def recv_proto(self):
        while True:
            if len(self.buf) >= HEADER.size:
                pack_len, header_len, ver, op, seq = HEADER.unpack_from(self.buf)
                assert header_len == 16, header_len
                if len(self.buf) >= pack_len:
                    body = self.buf[header_len:pack_len]
                    self.buf = self.buf[pack_len:]
                    return ver, op, seq, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed")
            self.buf += chunk


def post(http_port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        reply = json.loads(r.read())
    assert reply["code"] == 0, reply


def main():
    tcp_port, http_port = int(sys.argv[1]), int(sys.argv[2])
    c = Conn(tcp_port)
    token = {"mid": 123, "key": "", "room_id": "live://1000", "platform": "web", "accepts": [1000, 1001, 1002]}
    c.send(7, json.dumps(token).encode(), seq=1)
    ver, op, seq, body = c.recv_proto()
    assert (op, seq) == (8, 1), (op, seq, body)

    c.send(2, seq=2)
    ver, op, seq, body = c.recv_proto()
    assert (op, seq, len(body)) == (3, 2, 4), (op, seq, body)
    (online,) = struct.unpack(">I", body)
    assert online >= 1, online

    # goim's own benchmark client (benchmarks/client) never sets the version
    # of its heartbeats, so they go out as version 0; goim serves them.
    c.send(2, seq=3, ver=0)
    ver, op, seq, body = c.recv_proto()
    assert (ver, op, seq, len(body)) == (0, 3, 3, 4), (ver, op, seq, body)
    c.send(4, b"upstream", seq=4, ver=0)
    ver, op, seq, body = c.recv_proto()
    assert (op, seq) == (5, 4), (op, seq, body)

    post(http_port, "/goim/push/room?operation=1000&type=live&room=1000", b"room message")
    post(http_port, "/goim/push/mids?operation=1001&mids=123", b"user message")
    post(http_port, "/goim/push/all?operation=1002", b"broadcast")
    got = []
    while len(got) < 3:
        ver, op, seq, body = c.recv_proto()
        if op == 3:
            continue
        assert ver == 1 and seq == 0, (ver, seq)
        got.append((op, body.decode()))
    assert sorted(got) == [(1000, "room message"), (1001, "user message"), (1002, "broadcast")], got
    print("goim interop ok:", got)


if __name__ == "__main__":
    main()

"""A misbehaving Open Inference Protocol server for tests: raw HTTP/1.1 on 127.0.0.1, one thread per connection.

It answers `GET /v2` and `GET /v2/models/model` properly and plays a script on `POST .../infer`: one action
per infer request, the last action repeating. Every infer request whose body arrives in full is parsed
(JSON or binary tensors) and its batch size added to `seen` *before* the action runs, so `seen` is the
number of inputs the server saw, whatever it answers. Actions:

- `ok`: 200 with FP32 outputs [batch, outputs] (0.5 everywhere), JSON or binary as asked
- `500`, `503`: that status with a JSON error that echoes the request's Authorization header (a careless
  server), cut to 12 characters after the `Bearer ` prefix, and whole
- `429:N`: 429 with `Retry-After: N`
- `drop`: close the connection without answering (after processing)
- `cut`: send the headers and half the body, then close
- `trickle`: send the headers, then the body one byte every 0.5 s
- `garbage`: 200 with an HTML body

Stop it with `close()` (used as a context manager). All sockets have timeouts, so no thread waits forever.
"""

from __future__ import annotations

import json
import socket
import threading
import time


class FaultServer:
    def __init__(self, script: list[str], *, binary: bool = False, input_shape: tuple[int, ...] = (2,),
                 outputs: int = 3):
        self.script = list(script)
        self.binary = binary
        self.outputs = outputs
        self.meta = {"name": "model", "versions": ["1"], "platform": "fault",
                     "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *input_shape]}],
                     "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, outputs]}]}
        self.seen = 0
        self.requests = 0
        self.auth_seen: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.url = self.base + "/v2/models/model"
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accept = threading.Thread(target=self._loop, daemon=True, name="fault-server")
        self._accept.start()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(timeout=5)
        for c in self._conns:  # wakes connection threads blocked in recv
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        self._sock.close()

    # ------------------------------------------------------------------ serving
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        # Idle keep-alive connections stay open well past any client wait here, so a client never sends into a
        # connection the server is closing at that moment (which HTTP/1.1 cannot tell from a lost request).
        conn.settimeout(10.0)
        buf = b""
        deadline = time.monotonic() + 30  # no connection lives longer than this
        with conn:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    method, path, _ = lines[0].split(" ", 2)
                    headers = {k.strip().lower(): v.strip() for k, v in
                               (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                    length = int(headers.get("content-length", "0"))
                    while len(buf) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    body, buf = buf[:length], buf[length:]
                except (OSError, ValueError):
                    return
                if not self._answer(conn, method, path, headers, body):
                    return

    def _answer(self, conn: socket.socket, method: str, path: str, headers: dict, body: bytes) -> bool:
        """Handle one request; False when the connection must end."""
        if method == "GET" and path == "/v2":
            return _send(conn, 200, {"name": "fault", "version": "0",
                                     "extensions": ["binary_tensor_data"] if self.binary else []})
        if method == "GET" and path in ("/v2/models/model", "/v2/models/model/versions/1"):
            return _send(conn, 200, self.meta)
        if method != "POST" or not path.endswith("/infer"):
            return _send(conn, 404, {"error": f"no route {path}"})
        hlen = headers.get("inference-header-content-length")
        req = json.loads(body[: int(hlen)] if hlen else body)
        n = int(req["inputs"][0]["shape"][0])
        with self._lock:
            self.seen += n
            self.requests += 1
            action = self.script[min(self.requests - 1, len(self.script) - 1)]
            self.auth_seen.append(headers.get("authorization", ""))
        auth = headers.get("authorization", "")
        k = self.outputs
        if action == "ok":
            data = [0.5] * (k * n)
            if hlen:
                raw = b"".join(int(0x3F000000).to_bytes(4, "little") for _ in data)  # 0.5 as float32
                doc = {"outputs": [{"name": "output", "datatype": "FP32", "shape": [n, k],
                                    "parameters": {"binary_data_size": len(raw)}}]}
                head = json.dumps(doc).encode()
                return _send_raw(conn, 200, head + raw, "application/octet-stream",
                                 extra={"Inference-Header-Content-Length": str(len(head))})
            return _send(conn, 200, {"outputs": [{"name": "output", "datatype": "FP32", "shape": [n, k],
                                                  "data": data}]})
        if action in ("500", "503"):
            cut = auth[: len("Bearer ") + 12]
            return _send(conn, int(action), {"error": f"overloaded; auth was {cut!r} ({auth})"})
        if action.startswith("429:"):
            return _send(conn, 429, {"error": "slow down"}, extra={"Retry-After": action[4:]})
        if action == "drop":
            return False
        if action == "cut":
            payload = json.dumps({"outputs": [{"name": "output", "datatype": "FP32", "shape": [n, k],
                                               "data": [0.5] * (k * n)}]}).encode()
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
            try:
                conn.sendall(head.encode() + payload[: len(payload) // 2])
            except OSError:
                pass
            return False
        if action == "trickle":
            payload = json.dumps({"outputs": [{"name": "output", "datatype": "FP32", "shape": [n, k],
                                               "data": [0.5] * (k * n)}]}).encode()
            try:
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode())
                for i in range(min(len(payload), 120)):  # at most 60 s, and the client gives up far sooner
                    if self._stop.is_set():
                        break
                    conn.sendall(payload[i : i + 1])
                    time.sleep(0.5)
            except OSError:
                pass
            return False
        if action == "garbage":
            return _send_raw(conn, 200, b"<html><body>Service Unavailable</body></html>", "text/html")
        raise AssertionError(f"unknown action {action!r}")


def _send(conn: socket.socket, status: int, doc: dict, extra: dict | None = None) -> bool:
    return _send_raw(conn, status, json.dumps(doc).encode(), "application/json", extra=extra)


def _send_raw(conn: socket.socket, status: int, payload: bytes, ctype: str, extra: dict | None = None) -> bool:
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(status, "Status")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
    for k, v in (extra or {}).items():
        head += f"{k}: {v}\r\n"
    try:
        conn.sendall(head.encode() + b"\r\n" + payload)
    except OSError:
        return False
    return True

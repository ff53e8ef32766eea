// libFuzzer target over the HTTP/2 guard, the first code to read a hostile peer's bytes: after a
// valid preface and SETTINGS, arbitrary bytes from the client. Two guards get the same bytes: one
// in a single read, the other in reads of fuzzer-chosen sizes with the runs of judged message
// body it offers spliced past it at fuzzer-chosen points. No crash, no hang, never a splice of
// more than the guard judged - and both must mean the same to gRPC: the same verdict, the same
// non-DATA frames, the same DATA bytes per stream (however the guard framed them) and the same
// flow-control credit handed back to the client.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "server/http2_guard.h"

namespace {

uint32_t Be(const uint8_t* p, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | p[i];
  return v;
}

// What gRPC makes of the bytes the guard passed on (see Semantics in http2_guard_test.cc): the
// non-DATA frames (sorted: the guard's own RST_STREAM goes out at the first frame boundary, which
// depends on the reads), each stream's DATA bytes with END_STREAM marks, and what is left over.
struct Meaning {
  std::vector<std::string> frames;
  std::map<uint32_t, std::string> data;
  size_t tail = 0;
  bool operator==(const Meaning& o) const {
    return frames == o.frames && data == o.data && tail == o.tail;
  }
};

Meaning Parse(std::string_view b) {
  Meaning m;
  constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  if (b.substr(0, kPreface.size()) == kPreface) b.remove_prefix(kPreface.size());
  while (b.size() >= 9) {
    const auto* h = reinterpret_cast<const uint8_t*>(b.data());
    const uint32_t len = Be(h, 3);
    if (b.size() < 9 + size_t{len}) break;
    if (h[3] != 0) {
      m.frames.emplace_back(b.substr(0, 9 + len));
    } else {
      std::string_view payload = b.substr(9, len);
      if ((h[4] & 0x8) && !payload.empty()) {
        const size_t pad = static_cast<uint8_t>(payload[0]);
        payload = payload.size() > pad ? payload.substr(1, payload.size() - 1 - pad) : "";
      }
      std::string& d = m.data[Be(h + 5, 4) & 0x7fffffffu];
      d.append(payload);
      if (h[4] & 0x1) d.append("|END");
    }
    b.remove_prefix(9 + len);
  }
  m.tail = b.size();
  std::sort(m.frames.begin(), m.frames.end());
  return m;
}

// WINDOW_UPDATE increments per stream in what the guard sent the client.
std::map<uint32_t, uint64_t> Credits(std::string_view b) {
  std::map<uint32_t, uint64_t> out;
  while (b.size() >= 9) {
    const auto* h = reinterpret_cast<const uint8_t*>(b.data());
    const uint32_t len = Be(h, 3);
    if (b.size() < 9 + size_t{len}) break;
    if (h[3] == 8 && len == 4) out[Be(h + 5, 4) & 0x7fffffffu] += Be(h + 9, 4);
    b.remove_prefix(9 + len);
  }
  return out;
}

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "http2_guard_fuzzer: %s\n", what);
  std::abort();
}

std::string Join(const framepipe::Http2Out& out) {
  std::string s;
  for (auto p : out.parts()) s.append(p);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  framepipe::Http2Limits limits;
  limits.max_message_bytes = 1 << 20;
  limits.max_tracked_streams = 64;
  const framepipe::TimePoint now{};
  const std::string settings(std::string_view("\0\0\0\4\0\0\0\0\0", 9));
  std::string client = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings;
  const uint8_t chunking = data[0], splicing = data[1];
  client.append(reinterpret_cast<const char*>(data + 2), size - 2);

  framepipe::Http2Guard whole(limits), pieces(limits);
  std::string whole_server, whole_client, pieces_server, pieces_client;
  for (framepipe::Http2Guard* g : {&whole, &pieces}) {  // gRPC's preface
    framepipe::Http2Out s, c;
    (void)g->FromServer(settings, now, &s, &c);
  }
  framepipe::Http2Out s, c;
  const bool whole_ok = whole.FromClient(client, now, &s, &c);
  whole_server = Join(s);
  whole_client = Join(c);

  bool pieces_ok = true;
  for (size_t pos = 0, step = 0; pos < client.size() && pieces_ok; ++step) {
    s.Clear();
    c.Clear();
    const size_t judged = pieces.PassThroughBytes();
    if (judged > 0 && ((splicing >> (step % 8)) & 1)) {
      const size_t n = std::min(judged, client.size() - pos);
      pieces_server.append(client, pos, n);  // what the kernel would have moved
      pieces_ok = pieces.Spliced(n, now, &s, &c);
      pos += n;
    } else {
      const size_t n = std::min<size_t>(client.size() - pos, 1 + ((chunking * (step + 1)) % 97));
      pieces_ok = pieces.FromClient(std::string_view(client).substr(pos, n), now, &s, &c);
      pos += n;
    }
    pieces_server += Join(s);
    pieces_client += Join(c);
  }
  if (whole_ok != pieces_ok || whole.violation() != pieces.violation()) {
    Fail("one read and many reads disagree on the verdict");
  }
  if (!whole_ok) return 0;  // closed: what was passed before depends on where the reads ended
  if (!(Parse(whole_server) == Parse(pieces_server))) {
    if (std::getenv("H2_FUZZ_VERBOSE")) {  // what differs, for a crash file run by hand
      for (const std::string* out : {&whole_server, &pieces_server}) {
        const Meaning m = Parse(*out);
        std::fprintf(stderr, "%zu frames, tail %zu:", m.frames.size(), m.tail);
        for (const auto& f : m.frames) std::fprintf(stderr, " type %d len %zu", f[3], f.size() - 9);
        for (const auto& [sid, d] : m.data)
          std::fprintf(stderr, " | stream %u: %zu bytes", sid, d.size());
        std::fprintf(stderr, "\n");
      }
    }
    Fail("gRPC would get different bytes");
  }
  if (Credits(whole_client) != Credits(pieces_client)) Fail("different flow-control credit");
  return 0;
}

// libFuzzer target over the HTTP/2 guard, the first code to read a hostile peer's bytes: after a
// valid preface and SETTINGS, arbitrary bytes from the client. Two guards get the same bytes: one
// in a single read, the other in reads of fuzzer-chosen sizes with the runs of judged message
// body it offers spliced past it at fuzzer-chosen points. No crash, no hang, never a splice of
// more than the guard judged - and both must mean the same to gRPC: the same verdict, the same
// non-DATA frames, the same DATA bytes per stream (however the guard framed them) and the same
// flow-control credit handed back to the client. A third guard, in inline mode (as in gRPC's own
// reads: frames passed as they came where it can judge them), gets fuzzer-chosen reads, each in
// two buffers with the rest of the read as lookahead: the same verdict and meaning, except that
// inline passes the bytes of an incomplete length prefix (up to four) in the frame they came in,
// where the relay holds them until the prefix is whole, and where the bytes end inside a DATA
// frame the relay has passed what it judged in frames of its own.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "http2_meaning.h"
#include "server/http2_guard.h"

namespace {

using framepipe::testing::Http2Meaning;
using framepipe::testing::ParseHttp2;
using framepipe::testing::WindowCredits;

// The guard's own RST_STREAM goes out at the first frame boundary, which depends on the reads:
// the non-DATA frames are compared as a set.
Http2Meaning Parse(std::string_view b) {
  Http2Meaning m = ParseHttp2(b);
  std::sort(m.frames.begin(), m.frames.end());
  return m;
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
  // Header blocks are HPACK-decoded (method limits): fuzzed bytes reach nghttp2's decoder too.
  limits.max_messages_by_path = {{"/a", 1}, {"/b", 2}};
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
      pieces_ok = pieces.Spliced(n, &s, &c);
      pos += n;
    } else {
      const size_t n = std::min<size_t>(client.size() - pos, 1 + ((chunking * (step + 1)) % 97));
      pieces_ok = pieces.FromClient(std::string_view(client).substr(pos, n), now, &s, &c);
      pos += n;
    }
    pieces_server += Join(s);
    pieces_client += Join(c);
  }
  framepipe::Http2Limits inline_limits = limits;
  inline_limits.inline_mode = true;
  framepipe::Http2Guard inl(inline_limits);
  std::string inline_server;
  {
    framepipe::Http2Out s0, c0;
    (void)inl.FromServer(settings, now, &s0, &c0);
  }
  bool inline_ok = true;
  for (size_t pos = 0, step = 0; pos < client.size() && inline_ok; ++step) {
    s.Clear();
    c.Clear();
    const size_t n = std::min<size_t>(client.size() - pos, 1 + ((chunking * (step + 3)) % 211));
    const std::string_view read = std::string_view(client).substr(pos, n);
    const size_t cut = (splicing * (step + 1)) % (n + 1);
    const std::string_view segs[2] = {read.substr(0, cut), read.substr(cut)};
    for (int i = 0; i < 2 && inline_ok; ++i) {
      inl.SetReadAhead(segs + i + 1, 1 - i);
      inline_ok = inl.FromClient(segs[i], now, &s, &c);
    }
    inl.SetReadAhead(nullptr, 0);
    inline_server += Join(s);
    pos += n;
  }
  if (whole_ok != inline_ok || whole.violation() != inl.violation()) {
    Fail("inline and relayed disagree on the verdict");
  }
  if (whole_ok) {
    const Http2Meaning a = Parse(whole_server), b = Parse(inline_server);
    if (a.frames != b.frames) {
      if (std::getenv("H2_FUZZ_VERBOSE")) {
        for (const Http2Meaning* m : {&a, &b}) {
          std::fprintf(stderr, "%zu frames, tail %zu:", m->frames.size(), m->tail);
          for (const auto& f : m->frames) {
            std::fprintf(stderr, " [type %d flags %d sid %u len %zu]", f[3], f[4],
                         framepipe::testing::Http2Be(f.data() + 5, 4), f.size() - 9);
          }
          std::fprintf(stderr, "\n");
        }
      }
      Fail("inline: gRPC would get other frames");
    }
    std::map<uint32_t, std::pair<std::string, std::string>> by_stream;
    for (const auto& [sid, d] : a.data) by_stream[sid].first = d;
    for (const auto& [sid, d] : b.data) by_stream[sid].second = d;
    for (const auto& [sid, d] : by_stream) {
      const std::string& relayed = d.first;
      const std::string& inlined = d.second;
      // Where the bytes end inside a DATA frame, the relay has passed what it judged in frames of
      // its own while inline the frame is still incomplete (the tail): the relay may be ahead by
      // at most that. Inline may be ahead by the bytes of an incomplete length prefix (at most
      // four), which the relay holds until the prefix is whole and inline passes in the frame
      // they came in: gRPC holds them too, and acts on none until the prefix is whole.
      const size_t common = std::min(relayed.size(), inlined.size());
      if (relayed.compare(0, common, inlined, 0, common) != 0 ||
          relayed.size() > inlined.size() + b.tail || inlined.size() > relayed.size() + 4) {
        if (std::getenv("H2_FUZZ_VERBOSE")) {
          std::fprintf(stderr, "stream %u: relayed %zu bytes, inline %zu (tail %zu)\n", sid,
                       relayed.size(), inlined.size(), b.tail);
          for (const std::string* x : {&relayed, &inlined}) {
            for (size_t i = 0; i < x->size() && i < 64; ++i) {
              std::fprintf(stderr, "%02x", static_cast<uint8_t>((*x)[i]));
            }
            std::fprintf(stderr, "\n");
          }
        }
        Fail("inline: gRPC would get different bytes");
      }
    }
  }
  if (whole_ok != pieces_ok || whole.violation() != pieces.violation()) {
    Fail("one read and many reads disagree on the verdict");
  }
  if (!whole_ok) return 0;  // closed: what was passed before depends on where the reads ended
  if (!(Parse(whole_server) == Parse(pieces_server))) {
    if (std::getenv("H2_FUZZ_VERBOSE")) {  // what differs, for a crash file run by hand
      for (const std::string* out : {&whole_server, &pieces_server}) {
        const Http2Meaning m = Parse(*out);
        std::fprintf(stderr, "%zu frames, tail %zu:", m.frames.size(), m.tail);
        for (const auto& f : m.frames) std::fprintf(stderr, " type %d len %zu", f[3], f.size() - 9);
        for (const auto& [sid, d] : m.data)
          std::fprintf(stderr, " | stream %u: %zu bytes", sid, d.size());
        std::fprintf(stderr, "\n");
      }
    }
    Fail("gRPC would get different bytes");
  }
  if (WindowCredits(whole_client) != WindowCredits(pieces_client))
    Fail("different flow-control credit");
  return 0;
}

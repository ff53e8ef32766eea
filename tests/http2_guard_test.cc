// Http2Guard with crafted HTTP/2 bytes: what passes untouched, what closes a connection (header
// floods, rapid reset, control floods, oversized frames, bad prefaces) and what ends a single
// stream at a gRPC message's length prefix - and that the guard's own frames land only between
// gRPC's.
#include "server/http2_guard.h"

#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "http2_meaning.h"

#include <random>
#include <string>
#include <vector>

namespace framepipe {
namespace {

constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, std::string_view payload) {
  std::string f;
  const uint32_t n = static_cast<uint32_t>(payload.size());
  f.push_back(static_cast<char>(n >> 16));
  f.push_back(static_cast<char>(n >> 8));
  f.push_back(static_cast<char>(n));
  f.push_back(static_cast<char>(type));
  f.push_back(static_cast<char>(flags));
  for (int s = 24; s >= 0; s -= 8) f.push_back(static_cast<char>(stream >> s));
  f.append(payload);
  return f;
}
std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}
std::string Settings() { return Frame(4, 0, 0, ""); }
std::string Headers(uint32_t id, uint8_t flags, size_t bytes = 20) {
  return Frame(1, flags, id, std::string(bytes, 'h'));
}
std::string Continuation(uint32_t id, uint8_t flags, size_t bytes) {
  return Frame(9, flags, id, std::string(bytes, 'c'));
}
std::string Rst(uint32_t id, uint32_t code) { return Frame(3, 0, id, Be32(code)); }
std::string GrpcMessage(uint32_t length, uint8_t flag = 0, std::string body = "") {
  return std::string(1, static_cast<char>(flag)) + Be32(length) + body;
}
std::string Data(uint32_t id, std::string_view payload, uint8_t flags = 0) {
  return Frame(0, flags, id, payload);
}
std::string Join(const Http2Out& out) {
  std::string s;
  for (auto p : out.parts()) s.append(p);
  return s;
}

constexpr uint8_t kEndStream = 1, kEndHeaders = 4, kPadded = 8;

// ParseHttp2 as a list, for comparisons with readable failure messages: the preface, the non-DATA
// frames in order, then each stream's DATA, and what is left incomplete.
std::vector<std::string> Semantics(std::string_view bytes) {
  const testing::Http2Meaning m = testing::ParseHttp2(bytes);
  std::vector<std::string> out;
  if (m.preface) out.emplace_back(kPreface);
  out.insert(out.end(), m.frames.begin(), m.frames.end());
  for (const auto& [sid, d] : m.data) out.push_back(absl::StrCat("DATA ", sid, ": ", d));
  if (m.tail > 0) out.emplace_back(absl::StrCat("incomplete: ", m.tail, " bytes"));
  return out;
}

// A short account of Semantics() for failure messages: each item's size and first bytes.
std::string Summary(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) {
    absl::StrAppend(&out, "[", i.size(), " ", absl::CHexEscape(i.substr(0, 12)), "] ");
  }
  return out;
}
#define EXPECT_SAME_MEANING(a, b)                                      \
  do {                                                                 \
    const auto sa = Semantics(a), sb = Semantics(b);                   \
    EXPECT_TRUE(sa == sb) << Summary(sa) << "\n  vs\n" << Summary(sb); \
  } while (0)

using testing::WindowCredits;

class GuardTest : public ::testing::Test {
 protected:
  explicit GuardTest(Http2Limits limits = {}, std::shared_ptr<StreamQuota> quota = nullptr)
      : guard_(limits, std::move(quota)) {}
  // Feeds client bytes; returns false when the guard closes the connection.
  bool Client(const std::string& bytes, double at_s = 0) {
    Http2Out s, c;
    const bool ok = guard_.FromClient(bytes, T(at_s), &s, &c);
    to_server_ += Join(s);
    to_client_ += Join(c);
    return ok;
  }
  bool Server(const std::string& bytes, double at_s = 0) {
    Http2Out s, c;
    const bool ok = guard_.FromServer(bytes, T(at_s), &s, &c);
    to_server_ += Join(s);
    to_client_ += Join(c);
    return ok;
  }
  static TimePoint T(double s) {
    return TimePoint{} + std::chrono::hours(1) +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }
  void Open() {
    ASSERT_TRUE(Client(std::string(kPreface) + Settings()));
    ASSERT_TRUE(Server(Settings()));  // gRPC's preface: after it the guard may inject frames
    to_server_.clear();
    to_client_.clear();
  }

  Http2Guard guard_;
  std::string to_server_, to_client_;
};

// A GuardTest whose limits are the defaults changed by `Tweak`.
template <void (*Tweak)(Http2Limits*)>
class TweakedGuardTest : public GuardTest {
 protected:
  TweakedGuardTest() : GuardTest(Limits()) {}
  static Http2Limits Limits() {
    Http2Limits l;
    Tweak(&l);
    return l;
  }
};

TEST_F(GuardTest, HonestTrafficPassesUnchangedEvenOneByteAtATime) {
  std::string all = std::string(kPreface) + Settings() + Headers(1, kEndHeaders) +
                    Data(1, GrpcMessage(3, 0, "abc")) + Data(1, GrpcMessage(0), kEndStream) +
                    Headers(3, kEndHeaders) + Frame(6, 0, 0, std::string(8, 'p')) +
                    Data(3, GrpcMessage(5000, 0, std::string(5000, 'x'))) +
                    Data(7, "not open: passed on as it came");
  for (char ch : all) ASSERT_TRUE(Client(std::string(1, ch)));
  EXPECT_SAME_MEANING(to_server_, all);
  EXPECT_NE(to_server_.find(Data(7, "not open: passed on as it came")), std::string::npos);
  EXPECT_TRUE(to_client_.empty());
  EXPECT_EQ(guard_.violation(), Http2Violation::kNone);
}

TEST_F(GuardTest, NotHttp2IsRefused) {
  EXPECT_FALSE(Client("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(guard_.violation(), Http2Violation::kBadPreface);
  EXPECT_TRUE(to_server_.empty());
  EXPECT_NE(to_client_.find("not an HTTP/2 client preface"), std::string::npos);  // GOAWAY text
}

TEST_F(GuardTest, FirstFrameMustBeSettings) {
  EXPECT_FALSE(Client(std::string(kPreface) + Headers(1, kEndHeaders)));
  EXPECT_EQ(guard_.violation(), Http2Violation::kProtocol);
}

TEST_F(GuardTest, HeaderFloodClosesBeforeGrpcBuffersIt) {
  Open();
  ASSERT_TRUE(Client(Headers(1, 0, 16000)));
  ASSERT_TRUE(Client(Continuation(1, 0, 16000)));
  ASSERT_TRUE(Client(Continuation(1, 0, 16000)));
  ASSERT_TRUE(Client(Continuation(1, 0, 16000)));  // 64,000 bytes: at the 65,536 limit
  EXPECT_FALSE(Client(Continuation(1, 0, 16000)));
  EXPECT_EQ(guard_.violation(), Http2Violation::kHeaderBlockTooLarge);
  EXPECT_LE(to_server_.size(), 4 * (16000 + 9u)) << "the block over the limit never reaches gRPC";
  EXPECT_NE(to_client_.find("header block over 65536 bytes"), std::string::npos);
  EXPECT_FALSE(Client(Continuation(1, 0, 10))) << "nothing more is accepted";
}

TEST_F(GuardTest, ManyTinyContinuationsClose) {
  Open();
  ASSERT_TRUE(Client(Headers(1, 0, 1)));
  bool ok = true;
  for (int i = 0; i < 40 && ok; ++i) ok = Client(Continuation(1, 0, 0));
  EXPECT_FALSE(ok);
  EXPECT_EQ(guard_.violation(), Http2Violation::kTooManyHeaderFrames);
}

TEST_F(GuardTest, InterruptedHeaderBlockIsAProtocolError) {
  Open();
  ASSERT_TRUE(Client(Headers(1, 0, 10)));
  EXPECT_FALSE(Client(Data(1, "x")));
  EXPECT_EQ(guard_.violation(), Http2Violation::kProtocol);
}

TEST_F(GuardTest, RapidResetClosesTheConnection) {
  Open();
  bool ok = true;
  int pairs = 0;
  for (uint32_t id = 1; ok && id < 2000; id += 2, ++pairs) {
    ok = Client(Headers(id, kEndHeaders) + Rst(id, 8), 0.001 * pairs);  // 1,000 a second
  }
  EXPECT_FALSE(ok);
  EXPECT_EQ(guard_.violation(), Http2Violation::kResetFlood);
  EXPECT_GT(pairs, 200);  // the burst
  EXPECT_LT(pairs, 300);
  EXPECT_NE(to_client_.find("rapid reset"), std::string::npos);
}

TEST_F(GuardTest, ResetsAtAnHonestRateAreFine) {
  Open();
  for (uint32_t i = 0; i < 1000; ++i) {
    const uint32_t id = 1 + 2 * i;
    ASSERT_TRUE(Client(Headers(id, kEndHeaders) + Rst(id, 8), 0.02 * i)) << i;  // 50 a second
  }
}

TEST_F(GuardTest, StreamsTheServerRefusesCountAsResets) {
  Open();
  bool ok = true;
  int n = 0;
  for (uint32_t id = 1; ok && id < 2000; id += 2, ++n) {
    ASSERT_TRUE(Client(Headers(id, kEndHeaders)));
    ok = Server(Rst(id, 7));  // REFUSED_STREAM
  }
  EXPECT_FALSE(ok);
  EXPECT_EQ(guard_.violation(), Http2Violation::kResetFlood);
  EXPECT_GT(n, 200);
}

TEST_F(GuardTest, PingFloodCloses) {
  Open();
  bool ok = true;
  int n = 0;
  for (; ok && n < 2000; ++n) ok = Client(Frame(6, 0, 0, std::string(8, 'p')));
  EXPECT_FALSE(ok);
  EXPECT_EQ(guard_.violation(), Http2Violation::kControlFlood);
  EXPECT_GE(n, 490);  // the burst (the SETTINGS frames took a token)
  EXPECT_LE(n, 500);
}

// Frames that cost the client no flow-control window, sent as fast as it can: each kind closes
// the connection at its bucket's burst (gRPC 1.51 aborts on the WINDOW_UPDATEs and grows on the
// empty DATA frames), before gRPC sees more than the burst.
TEST_F(GuardTest, FloodsOfFramesThatCostNoWindowClose) {
  const struct {
    std::string frame;
    Http2Violation violation;
    int burst;
  } kinds[] = {
      {Frame(8, 0, 0, Be32(1)), Http2Violation::kWindowUpdateFlood, 10000},  // the connection's
      {Frame(8, 0, 1, Be32(1)), Http2Violation::kWindowUpdateFlood, 10000},  // a stream's
      {Data(1, ""), Http2Violation::kControlFlood, 499},  // empty, not ending the stream
      {Frame(7, 0, 0, Be32(1) + Be32(0)), Http2Violation::kControlFlood, 499},  // GOAWAY
  };
  for (const auto& k : kinds) {
    SCOPED_TRACE(absl::CHexEscape(k.frame));
    Http2Guard guard{Http2Limits{}};
    Http2Out s, c;
    ASSERT_TRUE(guard.FromClient(std::string(kPreface) + Settings() + Headers(1, kEndHeaders), T(0),
                                 &s, &c));
    int n = 0;
    bool ok = true;
    for (; ok && n < 50000; ++n) {
      s.Clear();
      ok = guard.FromClient(k.frame, T(0), &s, &c);
      // Passed on as it came (an empty DATA frame of a tracked stream: not at all).
      if (ok) {
        EXPECT_EQ(Join(s), k.frame[3] == 0 ? "" : k.frame);
      }
    }
    EXPECT_FALSE(ok);
    EXPECT_EQ(guard.violation(), k.violation);
    EXPECT_EQ(n, k.burst + 1);
    EXPECT_NE(Join(c).find(k.violation == Http2Violation::kWindowUpdateFlood ? "WINDOW_UPDATE"
                                                                             : "empty DATA"),
              std::string::npos);
  }
}

TEST_F(GuardTest, EmptyDataEndingAStreamIsNotAControlFrame) {
  Open();
  for (uint32_t i = 0; i < 2000; ++i) {
    const uint32_t id = 1 + 2 * i;
    ASSERT_TRUE(Client(Headers(id, kEndHeaders) + Data(id, "", kEndStream), 0.02 * i)) << i;
    ASSERT_TRUE(Server(Headers(id, kEndHeaders | kEndStream, 5), 0.02 * i)) << i;
  }
}

// An honest client answers what gRPC sends with WINDOW_UPDATEs - gRPC's client about three per
// result message - however many DATA frames gRPC sends; several messages in one frame earn by
// their bytes. Beyond what they earn, the bucket's burst, then the connection closes.
TEST_F(GuardTest, WindowUpdatesAreEarnedByTheDataGrpcSends) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  ASSERT_TRUE(Server(Headers(1, kEndHeaders, 5)));
  const std::string update = Frame(8, 0, 0, Be32(100)) + Frame(8, 0, 1, Be32(95)) +
                             Frame(8, 0, 1, Be32(5)) + Frame(8, 0, 1, Be32(5));
  for (int i = 0; i < 20000; ++i) {  // all at one instant: the bucket never refills
    ASSERT_TRUE(Server(Data(1, std::string(63, 'r')))) << i;  // earns 4
    ASSERT_TRUE(Client(update)) << i;
  }
  // Ten 640-byte messages in one frame: 4 + 100 earned, 30 answers.
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(Server(Data(1, std::string(6400, 'r')))) << i;
    for (int m = 0; m < 10; ++m) ASSERT_TRUE(Client(update.substr(13))) << i;
  }
  // 74,000 earned and not spent are banked, up to 65,536 (less the last frame's answers); then
  // the burst.
  int n = 0;
  while (n < 100000 && Client(Frame(8, 0, 0, Be32(1)))) ++n;
  EXPECT_EQ(n, 65536 - 30 + 10000);
  EXPECT_EQ(guard_.violation(), Http2Violation::kWindowUpdateFlood);
}

TEST_F(GuardTest, WindowUpdatesNotExplainedByDataCloseAtTheBurst) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  int n = 0;
  while (n < 100000 && Client(Frame(8, 0, 1, Be32(1)), 0.0001 * n)) ++n;  // 10,000 a second
  EXPECT_EQ(guard_.violation(), Http2Violation::kWindowUpdateFlood);
  EXPECT_GT(n, 10000 + 1000);  // the burst, and a second's refill while it was spent
  EXPECT_LT(n, 10000 + 1500);
  // At the sustained rate, never.
  Http2Guard honest{Http2Limits{}};
  Http2Out s, c;
  ASSERT_TRUE(honest.FromClient(std::string(kPreface) + Settings() + Headers(1, kEndHeaders), T(0),
                                &s, &c));
  for (int i = 0; i < 50000; ++i) {
    ASSERT_TRUE(honest.FromClient(Frame(8, 0, 1, Be32(1)), T(0.001 * i), &s, &c)) << i;
  }
}

TEST_F(GuardTest, OtherFramesOverTheControlLimitCloseBeforeTheyAreHeld) {
  Open();
  EXPECT_FALSE(Client(Frame(6, 0, 0, std::string(16385, 'p')).substr(0, 9)));  // a huge PING
  EXPECT_EQ(guard_.violation(), Http2Violation::kFrameTooLarge);
  EXPECT_NE(to_client_.find("maximum frame size of 16384"), std::string::npos);
}

TEST_F(GuardTest, AHeaderFrameOverTheBlockLimitClosesAtItsHeader) {
  Open();
  EXPECT_FALSE(Client(Headers(1, kEndHeaders, 70000).substr(0, 9)));
  EXPECT_EQ(guard_.violation(), Http2Violation::kHeaderBlockTooLarge);
  EXPECT_TRUE(to_server_.empty());
}

TEST_F(GuardTest, LargeDataFramesStreamThroughWithoutBeingHeld) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  to_server_.clear();
  const std::string body(900000, 'b');
  const std::string frame = Data(1, GrpcMessage(900000, 0, body));
  ASSERT_TRUE(Client(frame.substr(0, 9 + 5 + 1000)));
  // The prefix is checked and passed on, the body so far follows in a frame of the guard's own.
  EXPECT_EQ(to_server_.substr(0, 14), Data(1, GrpcMessage(900000)));
  EXPECT_EQ(to_server_.size(), 14 + 9 + 1000u);
  EXPECT_EQ(to_server_.substr(14 + 9), body.substr(0, 1000));
  EXPECT_EQ(guard_.PassThroughBytes(), 900000u - 1000u) << "the rest of the body is judged";
  ASSERT_TRUE(Client(frame.substr(9 + 5 + 1000, 400000)));
  EXPECT_EQ(guard_.PassThroughBytes(), 900000u - 401000u);
  ASSERT_TRUE(Client(frame.substr(9 + 5 + 401000)));
  EXPECT_EQ(guard_.PassThroughBytes(), 0u);
  EXPECT_SAME_MEANING(to_server_, frame);
}

TEST_F(GuardTest, PaddingIsDroppedAndItsWindowCreditedBack) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  to_server_.clear();
  const std::string msg = GrpcMessage(4, 0, "abcd");
  const std::string padded = Frame(0, kPadded, 1, std::string(1, '\x07') + msg + std::string(7, 0));
  ASSERT_TRUE(Client(padded));
  EXPECT_SAME_MEANING(to_server_, Data(1, msg));
  const auto credits = WindowCredits(to_client_);
  EXPECT_EQ(credits.at(0), 8u) << "the pad length byte and 7 bytes of padding, connection";
  EXPECT_EQ(credits.at(1), 8u) << "and stream";
  EXPECT_FALSE(Client(Frame(0, kPadded, 1, std::string(1, '\x09') + "abc")));
  EXPECT_EQ(guard_.violation(), Http2Violation::kProtocol);
}

TEST_F(GuardTest, OversizedPrefixAfterABodyInTheSameFrameNeverReachesGrpc) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  to_server_.clear();
  const std::string good = GrpcMessage(3, 0, "abc");
  ASSERT_TRUE(Client(Data(1, good + GrpcMessage(1u << 30, 0, std::string(100, 'z')))));
  EXPECT_SAME_MEANING(to_server_, Data(1, good) + Rst(1, 8));
  EXPECT_EQ(WindowCredits(to_client_).at(0), 105u) << "the prefix and the 100 bytes after it";
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kMessageTooLarge), 1u);
}

TEST_F(GuardTest, GrpcResettingAStreamMidFrameLeavesTheFrameWhole) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  to_server_.clear();
  const std::string frame = Data(1, GrpcMessage(2000, 0, std::string(2000, 'q')));
  ASSERT_TRUE(Client(frame.substr(0, 500)));
  ASSERT_TRUE(Server(Rst(1, 8)));
  ASSERT_TRUE(Client(frame.substr(500)));
  EXPECT_SAME_MEANING(to_server_, frame);
  to_server_.clear();
  ASSERT_TRUE(Client(Data(1, "after")));  // the stream is no longer tracked: passed on as is
  EXPECT_EQ(to_server_, Data(1, "after"));
}

// Random honest client traffic: five streams of 1-4 gRPC messages (0-40 or 1,000-300,000 bytes)
// in DATA frames of random sizes (1 byte to 1 MiB, a quarter of them 1-7 bytes), the streams
// interleaved; with `padded`, a fifth of the frames padded.
struct RandomTraffic {
  std::string all;       // what the client sends
  std::string expected;  // the same without padding: what gRPC should make of it
  uint64_t padding = 0;  // padding bytes (with their length bytes): credit the guard owes back
};
RandomTraffic MakeRandomTraffic(std::mt19937* rng, bool padded) {
  auto uni = [&](uint32_t lo, uint32_t hi) {
    return std::uniform_int_distribution<uint32_t>(lo, hi)(*rng);
  };
  RandomTraffic t;
  t.all = std::string(kPreface) + Settings();
  t.expected = t.all;
  std::vector<std::pair<uint32_t, std::string>> pending;  // stream, its unsent gRPC bytes
  for (uint32_t id = 1; id <= 9; id += 2) {
    std::string msgs;
    for (uint32_t m = uni(1, 4); m > 0; --m) {
      const uint32_t size = uni(0, 1) ? uni(0, 40) : uni(1000, 300000);
      msgs += GrpcMessage(size, 0, std::string(size, static_cast<char>('a' + m)));
    }
    t.all += Headers(id, kEndHeaders);
    t.expected += Headers(id, kEndHeaders);
    pending.push_back({id, msgs});
  }
  while (!pending.empty()) {  // frames of random sizes, streams interleaved
    const size_t k = uni(0, static_cast<uint32_t>(pending.size() - 1));
    auto& [id, rest] = pending[k];
    const size_t n = std::min<size_t>(rest.size(), uni(0, 3) ? uni(1, (1 << 20) - 256) : uni(1, 7));
    const bool last = n == rest.size();
    const std::string chunk = rest.substr(0, n);
    rest.erase(0, n);
    const uint8_t end = last ? kEndStream : 0;
    if (uni(0, 4) == 0 && padded) {
      const uint32_t pad = uni(0, 255);
      t.padding += pad + 1;
      t.all += Frame(0, end | kPadded, id,
                     std::string(1, static_cast<char>(pad)) + chunk + std::string(pad, 0));
    } else {
      t.all += Data(id, chunk, end);
    }
    t.expected += Data(id, chunk, end);
    if (last) pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(k));
  }
  return t;
}

// Whatever the client's framing and however its bytes are split between reads and splices, gRPC
// gets the same bytes, meaning the same as what the client sent, and every byte it does not get
// (padding) is credited back.
TEST(GuardSpliceTest, SplicedBytesEqualReadBytesAndMeanWhatTheClientSent) {
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    auto uni = [&](uint32_t lo, uint32_t hi) {
      return std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    };
    const RandomTraffic t = MakeRandomTraffic(&rng, true);
    const std::string& all = t.all;
    const std::string& expected = t.expected;
    const uint64_t padding = t.padding;
    Http2Guard read_all({}), spliced({});
    std::string out_read, out_spliced, credit_read, credit_spliced;
    const TimePoint now{};
    for (Http2Guard* g : {&read_all, &spliced}) {  // gRPC's preface: the guard may answer now
      Http2Out s, c;
      ASSERT_TRUE(g->FromServer(Settings(), now, &s, &c));
    }
    for (size_t pos = 0; pos < all.size();) {
      const size_t n = std::min<size_t>(all.size() - pos, uni(0, 1) ? uni(1, 300) : uni(1, 300000));
      Http2Out s, c;
      ASSERT_TRUE(read_all.FromClient(std::string_view(all).substr(pos, n), now, &s, &c));
      out_read += Join(s);
      credit_read += Join(c);
      pos += n;
    }
    for (size_t pos = 0; pos < all.size();) {
      Http2Out s, c;
      const size_t judged = spliced.PassThroughBytes();
      if (judged > 0 && uni(0, 1)) {
        const size_t n = std::min<size_t>({judged, all.size() - pos, uni(1, 1 << 20)});
        out_spliced.append(all, pos, n);  // what the kernel would have moved
        ASSERT_TRUE(spliced.Spliced(n, &s, &c));
        pos += n;
      } else {
        const size_t n =
            std::min<size_t>(all.size() - pos, uni(0, 1) ? uni(1, 300) : uni(1, 300000));
        ASSERT_TRUE(spliced.FromClient(std::string_view(all).substr(pos, n), now, &s, &c));
        pos += n;
      }
      out_spliced += Join(s);
      credit_spliced += Join(c);
    }
    ASSERT_TRUE(out_read == out_spliced) << "seed " << seed;
    ASSERT_TRUE(credit_read == credit_spliced) << "seed " << seed;
    const auto got = Semantics(out_read), want = Semantics(expected);
    ASSERT_TRUE(got == want) << "seed " << seed << ": " << Summary(got) << "\n  vs\n"
                             << Summary(want);
    uint64_t credited = 0;
    for (const auto& [sid, k] : WindowCredits(credit_read)) {
      if (sid == 0) credited = k;
    }
    ASSERT_EQ(credited, padding) << "seed " << seed;
  }
}

// Decodes the HPACK literals the guard writes (literal without indexing, no Huffman).
std::string TrailerValue(const std::string& frames, const std::string& name) {
  const size_t at = frames.find(name);
  if (at == std::string::npos) return "";
  const size_t len = static_cast<unsigned char>(frames[at + name.size()]);
  if (len < 127) return frames.substr(at + name.size() + 1, len);
  // Multi-byte length (7-bit prefix continued).
  size_t v = 127, shift = 0, i = at + name.size() + 1;
  unsigned char b;
  do {
    b = static_cast<unsigned char>(frames[++i]);
    v += (b & 0x7f) << shift;
    shift += 7;
  } while (b & 0x80);
  return frames.substr(i + 1, v);
}

TEST_F(GuardTest, OversizedMessageEndsItsStreamAtThePrefix) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  ASSERT_TRUE(Client(Headers(3, kEndHeaders)));
  ASSERT_TRUE(Client(Data(3, GrpcMessage(2, 0, "ok"))));
  to_server_.clear();
  // Stream 1 declares 4 GiB - 1: ended at once, its data never reaches gRPC.
  ASSERT_TRUE(Client(Data(1, GrpcMessage(0xffffffffu, 0, std::string(1000, 'z')))));
  EXPECT_EQ(to_server_, Rst(1, 8)) << "gRPC only hears that the stream was cancelled";
  EXPECT_NE(to_client_.find(Frame(8, 0, 0, Be32(1005))), std::string::npos)
      << "the connection window the dropped frame used is given back";
  EXPECT_EQ(TrailerValue(to_client_, "grpc-status"), "8");
  EXPECT_NE(TrailerValue(to_client_, "grpc-message").find("message of 4294967295 bytes"),
            std::string::npos)
      << TrailerValue(to_client_, "grpc-message");
  EXPECT_NE(to_client_.find(Rst(1, 0)), std::string::npos) << "and asked to stop sending";
  EXPECT_NE(to_client_.find(std::string("\x88", 1)), std::string::npos) << ":status 200 first";
  // More data on stream 1 is dropped (credited back); stream 3 goes on untouched.
  to_server_.clear();
  to_client_.clear();
  ASSERT_TRUE(Client(Data(1, std::string(500, 'z'))));
  EXPECT_TRUE(to_server_.empty());
  EXPECT_EQ(to_client_, Frame(8, 0, 0, Be32(500)));
  ASSERT_TRUE(Client(Data(3, GrpcMessage(1, 0, "!"))));
  EXPECT_SAME_MEANING(to_server_, Data(3, GrpcMessage(1, 0, "!")));
  // gRPC's data for the ended stream is dropped too, its send window credited back to gRPC.
  to_server_.clear();
  to_client_.clear();
  ASSERT_TRUE(Server(Data(1, "late result")));
  EXPECT_TRUE(to_client_.empty());
  EXPECT_EQ(to_server_, Frame(8, 0, 0, Be32(11)));
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kMessageTooLarge), 1u);
}

TEST_F(GuardTest, PrefixSplitAcrossFramesIsStillSeen) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  const std::string prefix = GrpcMessage(40u << 20);  // 40 MiB, over the default 32 MiB
  ASSERT_TRUE(Client(Data(1, prefix.substr(0, 2))));
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kMessageTooLarge), 0u);
  ASSERT_TRUE(Client(Data(1, prefix.substr(2))));
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kMessageTooLarge), 1u);
}

TEST_F(GuardTest, MessagesAfterEachOtherAreEachChecked) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  // Two small messages and the prefix of a big one in one DATA frame.
  ASSERT_TRUE(Client(Data(1, GrpcMessage(1, 0, "a") + GrpcMessage(2, 0, "bc"))));
  ASSERT_TRUE(Client(Data(1, GrpcMessage(33u << 20))));
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kMessageTooLarge), 1u);
}

TEST_F(GuardTest, CompressedMessageIsRejectedWhileCompressionIsOff) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  ASSERT_TRUE(Client(Data(1, GrpcMessage(10, 1, std::string(10, 'g')))));
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kCompressed), 1u);
  EXPECT_EQ(TrailerValue(to_client_, "grpc-status"), "3");
  // Once gRPC already answered with headers, the guard sends trailers only.
  ASSERT_TRUE(Client(Headers(3, kEndHeaders)));
  ASSERT_TRUE(Server(Headers(3, kEndHeaders, 5)));
  to_client_.clear();
  ASSERT_TRUE(Client(Data(3, GrpcMessage(10, 1, std::string(10, 'g')))));
  EXPECT_EQ(to_client_.find(std::string("\x88", 1)), std::string::npos) << "no second :status";
  EXPECT_EQ(TrailerValue(to_client_, "grpc-status"), "3");
}

TEST_F(GuardTest, InjectedFramesWaitForABoundaryInGrpcsOutput) {
  Open();
  ASSERT_TRUE(Client(Headers(1, kEndHeaders)));
  const std::string big = Data(5, std::string(1000, 'r'));
  ASSERT_TRUE(Server(big.substr(0, 400)));  // gRPC is half-way through a frame
  to_client_.clear();
  ASSERT_TRUE(Client(Data(1, GrpcMessage(0xfffffff0u))));
  EXPECT_EQ(to_client_.find("grpc-status"), std::string::npos) << "not inside gRPC's frame";
  ASSERT_TRUE(Server(big.substr(400)));
  const size_t rest = to_client_.find(big.substr(400));
  const size_t trailers = to_client_.find("grpc-status");
  ASSERT_NE(rest, std::string::npos);
  ASSERT_NE(trailers, std::string::npos);
  EXPECT_GT(trailers, rest) << "after the frame completed";
}

// gRPC's BDP probing raises the stream window it announces; the guard tells the client at most
// max_initial_window (Http2Limits), entry by entry, whatever the read boundaries: the other
// settings, SETTINGS ACKs and smaller windows pass as they are.
void WindowOf64KiB(Http2Limits* l) { l->max_initial_window = 65536; }
using WindowGuardTest = TweakedGuardTest<WindowOf64KiB>;

std::string Setting(uint16_t id, uint32_t value) {
  return std::string{static_cast<char>(id >> 8), static_cast<char>(id)} + Be32(value);
}

TEST_F(WindowGuardTest, ServerSettingsOfferAtMostTheFixedStreamWindow) {
  Open();
  const std::string grpc_says = Frame(
      4, 0, 0, Setting(3, 100) + Setting(4, 4194205) + Setting(5, 16777215) + Setting(4, 8 << 20));
  const std::string client_sees = Frame(
      4, 0, 0, Setting(3, 100) + Setting(4, 65536) + Setting(5, 16777215) + Setting(4, 65536));
  const std::string small = Frame(4, 0, 0, Setting(4, 1000));
  const std::string ack = Frame(4, 1, 0, "");
  const std::string data = Data(1, std::string(30, 'd'));
  const std::string all = grpc_says + data + small + ack + grpc_says;
  const std::string want = client_sees + data + small + ack + client_sees;
  for (size_t piece : {all.size(), size_t{1}, size_t{4}, size_t{7}}) {
    to_client_.clear();
    for (size_t i = 0; i < all.size(); i += piece) ASSERT_TRUE(Server(all.substr(i, piece)));
    EXPECT_EQ(absl::CHexEscape(to_client_), absl::CHexEscape(want)) << "pieces of " << piece;
  }
  EXPECT_TRUE(to_server_.empty());
}

TEST_F(GuardTest, WithoutAWindowLimitServerSettingsPassUnchanged) {
  Open();
  const std::string grpc_says = Frame(4, 0, 0, Setting(4, 4194205));
  ASSERT_TRUE(Server(grpc_says));
  EXPECT_EQ(to_client_, grpc_says);
}

// Methods that take one message (a health Watch, a unary call) and gRPC 1.51 holds whatever else
// they are sent: the guard decodes each header block (HPACK, mirroring gRPC's table) and ends a
// call at its first message over its method's limit - RST_STREAM CANCEL to gRPC before that
// message, ENHANCE_YOUR_CALM to the client. Other methods are not limited.
class MethodGuardTest : public GuardTest {
 protected:
  static Http2Limits Limits() {
    Http2Limits l;
    l.max_messages_by_path = {{"/grpc.health.v1.Health/Watch", 1}, {"/svc/Few", 3}};
    return l;
  }
  MethodGuardTest() : GuardTest(Limits()) { nghttp2_hd_deflate_new(&deflater_, 4096); }
  ~MethodGuardTest() override { nghttp2_hd_deflate_del(deflater_); }
  // A request's header block for `path`, HPACK-encoded by nghttp2 with this connection's table
  // (the second request for a path refers to the first one's entry).
  std::string Block(const std::string& path) {
    const std::string fields[][2] = {{":method", "POST"},
                                     {":scheme", "http"},
                                     {":path", path},
                                     {":authority", "framepipe"},
                                     {"content-type", "application/grpc"},
                                     {"te", "trailers"}};
    std::vector<nghttp2_nv> nv;
    for (const auto& f : fields) {
      nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(f[0].data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(f[1].data())), f[0].size(),
                    f[1].size(), NGHTTP2_NV_FLAG_NONE});
    }
    std::string out(nghttp2_hd_deflate_bound(deflater_, nv.data(), nv.size()), '\0');
    const ssize_t n = nghttp2_hd_deflate_hd(deflater_, reinterpret_cast<uint8_t*>(out.data()),
                                            out.size(), nv.data(), nv.size());
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  }
  std::string Messages(int n) {
    std::string body;
    for (int i = 0; i < n; ++i) body += GrpcMessage(0);  // empty: what the flood sends
    return body;
  }
  nghttp2_hd_deflater* deflater_ = nullptr;
};

TEST_F(MethodGuardTest, ACallIsEndedAtTheFirstMessageItsMethodDoesNotTake) {
  Open();
  ASSERT_TRUE(Client(Frame(1, kEndHeaders, 1, Block("/grpc.health.v1.Health/Watch"))));
  ASSERT_TRUE(Client(Frame(1, kEndHeaders, 3, Block("/framepipe.v1.FramePipeline/Process"))));
  // The second Watch, its block split over HEADERS + CONTINUATION, its :path from the table.
  const std::string again = Block("/grpc.health.v1.Health/Watch");
  ASSERT_TRUE(
      Client(Frame(1, 0, 5, again.substr(0, 2)) + Frame(9, kEndHeaders, 5, again.substr(2))));
  ASSERT_TRUE(Client(Frame(1, kEndHeaders, 7, Block("/svc/Few"))));
  to_server_.clear();
  to_client_.clear();
  ASSERT_TRUE(Client(Data(1, Messages(1))));  // the Watch request: passes
  EXPECT_EQ(Semantics(to_server_), Semantics(Data(1, Messages(1))));
  EXPECT_TRUE(to_client_.empty());
  ASSERT_TRUE(Client(Data(3, Messages(50))));  // Process: any number
  ASSERT_TRUE(Client(Data(7, Messages(3))));   // its limit exactly
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kTooManyMessages), 0u);
  to_server_.clear();
  ASSERT_TRUE(Client(Data(1, Messages(20)) + Data(5, Messages(2)) + Data(7, Messages(1))));
  EXPECT_EQ(guard_.TakeRejections(StreamRejection::kTooManyMessages), 3u);
  const std::vector<std::string> want = {Rst(1, 8), Rst(5, 8), Rst(7, 8), "DATA 5: " + Messages(1)};
  auto got = Semantics(to_server_);
  std::sort(got.begin(), got.end());
  auto sorted = want;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(got, sorted) << Summary(got);
  ASSERT_TRUE(Server(Settings()));  // a boundary in gRPC's output: the resets go to the client
  for (uint32_t id : {1u, 5u, 7u}) {
    EXPECT_NE(to_client_.find(Rst(id, 0xb)), std::string::npos) << id;
  }
  // What follows on an ended call is dropped, its window handed back; the rest flows.
  to_server_.clear();
  ASSERT_TRUE(Client(Data(1, Messages(10)) + Data(3, Messages(2))));
  EXPECT_EQ(Semantics(to_server_), Semantics(Data(3, Messages(2))));
}

TEST_F(MethodGuardTest, AHeaderBlockThatIsNotHpackClosesTheConnection) {
  Open();
  EXPECT_FALSE(Client(Frame(1, kEndHeaders, 1, std::string("\xff\xff\xff\xff\xff", 5))));
  EXPECT_EQ(guard_.violation(), Http2Violation::kProtocol);
  EXPECT_NE(guard_.violation_detail().find("not valid HPACK"), std::string::npos);
}

TEST_F(GuardTest, RefusalFramesAreSettingsThenGoAway) {
  const std::string f = Http2Guard::RefusalFrames("too many");
  EXPECT_EQ(f.substr(0, 9), Settings());
  EXPECT_EQ(static_cast<uint8_t>(f[9 + 3]), 7);  // GOAWAY
  EXPECT_NE(f.find("too many"), std::string::npos);
}

// Many small padded frames, read in pieces of every size from 1 to 300 bytes: each read boundary
// falls somewhere new in the frames (in a header, on the pad length byte, in a prefix, in the
// padding).
TEST(GuardReadBoundaryTest, PaddedSmallFramesReadInPiecesOfEverySize) {
  std::string body = GrpcMessage(9, 0, "configure");
  for (int m = 0; m < 3; ++m)
    body += GrpcMessage(5000, 0, std::string(5000, static_cast<char>('a' + m)));
  std::string all = std::string(kPreface) + Settings() + Headers(1, kEndHeaders);
  std::string expected = all;
  for (size_t off = 0; off < body.size(); off += 1000) {
    const std::string chunk = body.substr(off, 1000);
    const uint8_t end = off + 1000 >= body.size() ? kEndStream : 0;
    all += Frame(0, end | kPadded, 1, std::string(1, '\xff') + chunk + std::string(255, 0));
    expected += Data(1, chunk, end);
  }
  for (size_t piece = 1; piece <= 300; ++piece) {
    Http2Guard guard({});
    Http2Out s0, c0;
    ASSERT_TRUE(guard.FromServer(Settings(), TimePoint{}, &s0, &c0));
    std::string out;
    for (size_t pos = 0; pos < all.size(); pos += piece) {
      Http2Out s, c;
      ASSERT_TRUE(guard.FromClient(std::string_view(all).substr(pos, piece), TimePoint{}, &s, &c))
          << "piece " << piece << " at " << pos;
      out += Join(s);
    }
    const auto got = Semantics(out), want = Semantics(expected);
    ASSERT_TRUE(got == want) << "piece " << piece << ": " << Summary(got) << "\n  vs\n"
                             << Summary(want);
  }
}

void FourStreams(Http2Limits* l) { l->max_tracked_streams = 4; }
using SmallGuardTest = TweakedGuardTest<FourStreams>;

TEST_F(SmallGuardTest, OpenStreamsAreBounded) {
  Open();
  for (uint32_t id = 1; id <= 7; id += 2) ASSERT_TRUE(Client(Headers(id, kEndHeaders)));
  EXPECT_FALSE(Client(Headers(9, kEndHeaders)));
  EXPECT_EQ(guard_.violation(), Http2Violation::kTooManyStreams);
}

}  // namespace
}  // namespace framepipe

namespace framepipe {
namespace {

// Streams open at gRPC, per client address: a quota shared by the guards of the address's
// connections. A stream over it still reaches gRPC (HPACK state) and is ended right behind its
// headers; ended streams (trailers from gRPC, a reset either way) and closed connections give
// their units back.
class QuotaGuardTest : public ::testing::Test {
 protected:
  // One connection of the address.
  struct Conn : GuardTest {
    explicit Conn(std::shared_ptr<StreamQuota> q) : GuardTest({}, std::move(q)) {}
    void TestBody() override {}
    using GuardTest::Client;
    using GuardTest::guard_;
    using GuardTest::Open;
    using GuardTest::Server;
    using GuardTest::to_client_;
    using GuardTest::to_server_;
  };
  std::shared_ptr<StreamQuota> quota_ = std::make_shared<StreamQuota>(2);
};

TEST_F(QuotaGuardTest, StreamsOverTheAddresssLimitAreEndedAtTheirHeaders) {
  Conn a(quota_), b(quota_);
  a.Open();
  b.Open();
  ASSERT_TRUE(a.Client(Headers(1, kEndHeaders)));
  ASSERT_TRUE(b.Client(Headers(1, kEndHeaders | kEndStream)));  // half-closed: still open at gRPC
  EXPECT_EQ(quota_->open(), 2u);
  a.to_server_.clear();
  // The third stream of the address, on either connection: its headers reach gRPC, then a reset.
  ASSERT_TRUE(a.Client(Headers(3, kEndHeaders)));
  EXPECT_EQ(a.to_server_, Headers(3, kEndHeaders) + Rst(3, 8));
  // To the client: ENHANCE_YOUR_CALM (gRPC clients: RESOURCE_EXHAUSTED), no trailers: gRPC may
  // answer the stream itself before it reads the reset, and two ends of one stream are a
  // connection error to the client.
  EXPECT_EQ(a.to_client_, Rst(3, 0xb));
  EXPECT_EQ(a.guard_.TakeRejections(StreamRejection::kPeerStreams), 1u);
  // gRPC's own answer to it: header frames pass (HPACK), data and resets do not.
  a.to_client_.clear();
  ASSERT_TRUE(a.Server(Headers(3, kEndHeaders) + Data(3, "x") + Rst(3, 8)));
  EXPECT_EQ(a.to_client_, Headers(3, kEndHeaders));
  // Its data never reaches gRPC.
  a.to_server_.clear();
  ASSERT_TRUE(a.Client(Data(3, GrpcMessage(2, 0, "no"))));
  EXPECT_TRUE(a.to_server_.empty());
  EXPECT_EQ(quota_->open(), 2u);
  // gRPC ends b's stream (trailers): a unit comes back, and a's next stream is admitted.
  ASSERT_TRUE(b.Server(Headers(1, kEndHeaders | kEndStream)));
  EXPECT_EQ(quota_->open(), 1u);
  a.to_server_.clear();
  ASSERT_TRUE(a.Client(Headers(5, kEndHeaders)));
  EXPECT_EQ(a.to_server_, Headers(5, kEndHeaders));
  EXPECT_EQ(quota_->open(), 2u);
  // A reset by the client, and one by gRPC, give theirs back.
  ASSERT_TRUE(a.Client(Rst(1, 8)));
  EXPECT_EQ(quota_->open(), 1u);
  ASSERT_TRUE(a.Server(Rst(5, 8)));
  EXPECT_EQ(quota_->open(), 0u);
}

TEST_F(QuotaGuardTest, AClosedConnectionGivesItsStreamsBack) {
  {
    Conn a(quota_);
    a.Open();
    ASSERT_TRUE(a.Client(Headers(1, kEndHeaders) + Headers(3, kEndHeaders)));
    EXPECT_EQ(quota_->open(), 2u);
  }
  EXPECT_EQ(quota_->open(), 0u);
}

// Refusals count as resets: opening streams over the limit again and again is a rapid reset.
TEST_F(QuotaGuardTest, RefusingStreamsInAFloodClosesTheConnection) {
  Conn a(quota_);
  a.Open();
  ASSERT_TRUE(a.Client(Headers(1, kEndHeaders) + Headers(3, kEndHeaders)));
  bool open = true;
  for (uint32_t id = 5; id < 5 + 2 * 400 && open; id += 2)
    open = a.Client(Headers(id, kEndHeaders));
  EXPECT_FALSE(open);
  EXPECT_EQ(a.guard_.violation(), Http2Violation::kResetFlood);
}

// ---- Inline mode: the guard inside gRPC's own reads and writes (front_door_inline.cc).

// A client's bytes as gRPC's reads deliver them: reads of random sizes, each landing in up to
// four buffers; the guard gets each buffer with the rest of its read as lookahead.
struct InlineRun {
  std::string out;             // what gRPC gets
  std::string to_client;       // what the guard answers the client
  size_t identical_reads = 0;  // reads gRPC could keep as they were (not one byte copied)
  size_t reads = 0;
};

// The guard's output is exactly the input's buffers, where they lie.
bool SameBytes(const Http2Out& out, const std::vector<std::string_view>& segs) {
  size_t si = 0, off = 0;
  for (std::string_view p : out.parts()) {
    while (!p.empty()) {
      while (si < segs.size() && off == segs[si].size()) ++si, off = 0;
      if (si == segs.size() || p.data() != segs[si].data() + off) return false;
      const size_t k = std::min(p.size(), segs[si].size() - off);
      p.remove_prefix(k);
      off += k;
    }
  }
  while (si < segs.size() && off == segs[si].size()) ++si, off = 0;
  return si == segs.size();
}

InlineRun FeedInline(Http2Guard* g, const std::string& all, std::mt19937* rng, size_t max_read,
                     size_t min_read = 1) {
  auto uni = [&](size_t lo, size_t hi) {
    return std::uniform_int_distribution<size_t>(lo, hi)(*rng);
  };
  InlineRun r;
  for (size_t pos = 0; pos < all.size();) {
    const size_t n = std::min(all.size() - pos, uni(min_read, max_read));
    std::vector<std::string_view> segs;
    for (size_t at = pos; at < pos + n;) {
      const size_t k = segs.size() == 3 ? pos + n - at : std::min(pos + n - at, uni(1, n));
      segs.emplace_back(all.data() + at, k);
      at += k;
    }
    Http2Out s, c;
    for (size_t i = 0; i < segs.size(); ++i) {
      g->SetReadAhead(segs.data() + i + 1, segs.size() - i - 1);
      EXPECT_TRUE(g->FromClient(segs[i], TimePoint{}, &s, &c));
    }
    g->SetReadAhead(nullptr, 0);
    ++r.reads;
    if (SameBytes(s, segs)) ++r.identical_reads;
    r.out += Join(s);
    r.to_client += Join(c);
    pos += n;
  }
  return r;
}

Http2Limits InlineLimits() {
  Http2Limits l;
  l.inline_mode = true;
  return l;
}

// Random honest traffic - five streams, messages of 0 to 300,000 bytes, DATA frames of 1 byte to
// 1 MiB interleaved, some padded - read in random pieces: gRPC gets what the client sent (padding
// removed and credited back, as relayed), and without padding every read whole enough to judge
// its frames goes on as it came.
TEST(InlineGuardTest, HonestFramesPassAsTheyCameAndMeanWhatTheClientSent) {
  size_t identical_reads = 0;
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    auto uni = [&](uint32_t lo, uint32_t hi) {
      return std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    };
    const bool padding_allowed = seed % 2 == 0;
    const RandomTraffic t = MakeRandomTraffic(&rng, padding_allowed);
    const std::string& all = t.all;
    const std::string& expected = t.expected;
    const uint64_t padding = t.padding;
    // All of it in one read (in up to four buffers): every frame can be judged, nothing copied.
    if (!padding_allowed) {
      Http2Guard g(InlineLimits());
      Http2Out s0, c0;
      ASSERT_TRUE(g.FromServer(Settings(), TimePoint{}, &s0, &c0));
      const InlineRun whole = FeedInline(&g, all, &rng, all.size(), all.size());
      ASSERT_EQ(whole.reads, 1u);
      EXPECT_EQ(whole.identical_reads, 1u) << "seed " << seed;
      EXPECT_TRUE(whole.out == all) << "seed " << seed;
      EXPECT_TRUE(whole.to_client.empty()) << "seed " << seed;
    }
    // Reads of random sizes: the same meaning, and the padding's window credited back.
    Http2Guard g(InlineLimits());
    Http2Out s0, c0;
    ASSERT_TRUE(g.FromServer(Settings(), TimePoint{}, &s0, &c0));
    const InlineRun run = FeedInline(&g, all, &rng, uni(0, 1) ? 300 : 300000);
    const auto got = Semantics(run.out), want = Semantics(expected);
    ASSERT_TRUE(got == want) << "seed " << seed << ": " << Summary(got) << "\n  vs\n"
                             << Summary(want);
    uint64_t credited = 0;
    for (const auto& [sid, k] : WindowCredits(run.to_client)) {
      if (sid == 0) credited = k;
    }
    ASSERT_EQ(credited, padding) << "seed " << seed;
    if (!padding_allowed) identical_reads += run.identical_reads;
    EXPECT_EQ(g.violation(), Http2Violation::kNone);
  }
  EXPECT_GT(identical_reads, 0u) << "random reads: the ones inside frames passed as they came";
}

// A message over the limit, its prefix anywhere - split over frames of a few bytes, after a body
// in the same frame, in a frame passed as it came or one re-framed: inline as relayed, gRPC never
// gets the whole prefix, gets everything the stream sent before it, hears the stream was
// cancelled; the other stream is untouched.
TEST(InlineGuardTest, APrefixOverTheLimitNeverReachesGrpcWhateverTheFraming) {
  for (uint32_t seed = 1; seed <= 60; ++seed) {
    std::mt19937 rng(seed);
    auto uni = [&](uint32_t lo, uint32_t hi) {
      return std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    };
    std::string good1;
    for (uint32_t m = uni(0, 3); m > 0; --m) {
      const uint32_t size = uni(0, 1) ? uni(0, 40) : uni(1000, 200000);
      good1 += GrpcMessage(size, 0, std::string(size, 'g'));
    }
    const std::string bad = GrpcMessage(40u << 20) + std::string(uni(0, 5000), 'z');
    std::string stream1 = good1 + bad;
    std::string stream3;
    for (uint32_t m = uni(1, 3); m > 0; --m) {
      const uint32_t size = uni(0, 100000);
      stream3 += GrpcMessage(size, 0, std::string(size, 'h'));
    }
    std::string all =
        std::string(kPreface) + Settings() + Headers(1, kEndHeaders) + Headers(3, kEndHeaders);
    std::string rest1 = stream1, rest3 = stream3;
    while (!rest1.empty() || !rest3.empty()) {
      const bool one = !rest1.empty() && (rest3.empty() || uni(0, 1));
      std::string& rest = one ? rest1 : rest3;
      const size_t n = std::min<size_t>(rest.size(), uni(0, 2) ? uni(1, 300000) : uni(1, 6));
      all += Data(one ? 1 : 3, rest.substr(0, n), n == rest.size() ? kEndStream : 0);
      rest.erase(0, n);
    }
    Http2Guard g(InlineLimits());
    Http2Out s0, c0;
    ASSERT_TRUE(g.FromServer(Settings(), TimePoint{}, &s0, &c0));
    const InlineRun run = FeedInline(&g, all, &rng, uni(0, 1) ? 64 : 400000);
    EXPECT_EQ(g.TakeRejections(StreamRejection::kMessageTooLarge), 1u) << "seed " << seed;
    const testing::Http2Meaning m = testing::ParseHttp2(run.out);
    EXPECT_EQ(m.tail, 0u) << "seed " << seed;
    EXPECT_EQ(m.data.at(3), stream3 + "|END") << "seed " << seed;
    const std::string got1 = m.data.count(1) ? m.data.at(1) : "";
    EXPECT_GE(got1.size(), good1.size()) << "seed " << seed << ": earlier messages delivered";
    EXPECT_LT(got1.size(), good1.size() + 5) << "seed " << seed << ": never the whole prefix";
    EXPECT_EQ(got1, stream1.substr(0, got1.size())) << "seed " << seed;
    EXPECT_NE(std::find(m.frames.begin(), m.frames.end(), Rst(1, 8)), m.frames.end())
        << "seed " << seed << ": gRPC hears the stream was cancelled";
    EXPECT_EQ(TrailerValue(run.to_client, "grpc-status"), "8") << "seed " << seed;
  }
}

// gRPC's frames pass as they came (views of its buffer, not copies) unless the guard changes them:
// a SETTINGS window over the limit, its own frames at a boundary. Inline, gRPC's data for a stream
// the guard ended goes on too (the client ignores frames after the reset it was sent), so no
// window ever has to be handed back to gRPC outside its reads.
TEST(InlineGuardTest, ServerFramesPassAsTheyCame) {
  Http2Limits l = InlineLimits();
  l.max_initial_window = 1 << 20;
  Http2Guard g(l);
  const std::string grpc_out = Frame(4, 0, 0, Setting(4, 65536) + Setting(5, 16384)) +
                               Frame(4, 1, 0, "") + Frame(8, 0, 0, Be32(5000)) +
                               Headers(1, kEndHeaders) + Data(1, GrpcMessage(3, 0, "res"));
  Http2Out s, c;
  ASSERT_TRUE(g.FromServer(grpc_out, TimePoint{}, &s, &c));
  EXPECT_TRUE(SameBytes(c, {grpc_out}));
  EXPECT_TRUE(s.empty());
  // A window over the limit is lowered: that SETTINGS frame is the guard's.
  Http2Out s2, c2;
  const std::string wide = Frame(4, 0, 0, Setting(4, 4 << 20));
  ASSERT_TRUE(g.FromServer(wide, TimePoint{}, &s2, &c2));
  EXPECT_FALSE(SameBytes(c2, {wide}));
  EXPECT_EQ(Join(c2), Frame(4, 0, 0, Setting(4, 1 << 20)));
  // A stream ended at its prefix: gRPC's late result passes, nothing is credited back to gRPC.
  Http2Out s3, c3;
  const std::string client = std::string(kPreface) + Settings() + Headers(3, kEndHeaders) +
                             Data(3, GrpcMessage(0xfffffff0u));
  ASSERT_TRUE(g.FromClient(client, TimePoint{}, &s3, &c3));
  EXPECT_EQ(g.TakeRejections(StreamRejection::kMessageTooLarge), 1u);
  Http2Out s4, c4;
  const std::string late = Data(3, "late result");
  ASSERT_TRUE(g.FromServer(late, TimePoint{}, &s4, &c4));
  EXPECT_NE(Join(c4).find(late), std::string::npos);
  EXPECT_TRUE(s4.empty());
}

}  // namespace
}  // namespace framepipe

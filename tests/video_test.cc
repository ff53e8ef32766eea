// VideoStream: compressed video packets in, one result per packet out, in send order.
//
// Model tests drive a scripted fake decoder (B-frame reordering, rejected packets, reported
// damage, dropped pictures, streams starting mid-GOP, image payloads mixed in) through a real
// Pipeline whose stages sleep for random times and fail at random, and compare the exact
// sequence of (seq, status, pts) with a sequential model of the contract. The FFmpeg tests run
// real libx264/libx265 streams through the real decoder and the standard stages.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "analysis/cpu/cpu_analyzer.h"
#include "analysis/video_decoder.h"
#include "gtest/gtest.h"
#include "pipeline/pipeline.h"
#include "pipeline/standard_stages.h"
#include "pipeline/video_stream.h"
#include "test_util.h"
#include "video_fixture.h"

namespace framepipe {
namespace {

using testing::Gate;

// ---- The fake decoder ------------------------------------------------------------------------
// A packet's bytes: [type 'K'|'P'|'B'] [flag '-'|'r' rejected|'d' damaged|'x' no picture].
// Pictures are held and leave in pts order once more than `delay` are held (as a decoder's
// reorder buffer bumps them); Flush empties it.
class FakeDecoder final : public VideoDecoder {
 public:
  explicit FakeDecoder(int delay, std::atomic<int>* held_now = nullptr)
      : delay_(delay), held_now_(held_now) {}
  bool IsKeyframe(std::string_view p) const override { return !p.empty() && p[0] == 'K'; }
  absl::Status Decode(const VideoPacket& p, std::vector<DecodedPicture>* out) override {
    const char flag = p.data.size() > 1 ? p.data[1] : '-';
    if (flag == 'r') return absl::InvalidArgumentError("fake: rejected");
    if (flag != 'x') {
      DecodedPicture d;
      d.packet_id = p.id;
      d.pts = p.pts;
      if (flag == 'd') {
        d.damage = absl::InvalidArgumentError("fake: damaged");
      } else {
        d.picture = std::make_shared<FakePicture>(p.pts);
      }
      held_.push_back(std::move(d));
    }
    while (static_cast<int>(held_.size()) > delay_) Bump(out);
    if (held_now_) held_now_->store(static_cast<int>(held_.size()));
    return absl::OkStatus();
  }
  void Flush(std::vector<DecodedPicture>* out) override {
    while (!held_.empty()) Bump(out);
  }
  int ReorderDelay() const override { return delay_; }
  VideoCodecId codec() const override { return VideoCodecId::kH264; }

 private:
  class FakePicture final : public Picture {
   public:
    explicit FakePicture(int64_t pts) : pts_(pts) {}
    int width() const override { return 8; }
    int height() const override { return 8; }
    uint64_t bytes() const override { return 96; }
    absl::Status ToBgr(Image* out) const override {
      *out = Image::Allocate(8, 8, PixelFormat::kBgr8);
      std::fill_n(out->mutable_data(), out->byte_size(), static_cast<uint8_t>(pts_ & 0xff));
      return absl::OkStatus();
    }

   private:
    int64_t pts_;
  };

  void Bump(std::vector<DecodedPicture>* out) {
    auto it = std::min_element(held_.begin(), held_.end(),
                               [](const auto& a, const auto& b) { return a.pts < b.pts; });
    out->push_back(std::move(*it));
    held_.erase(it);
  }

  const int delay_;
  std::atomic<int>* held_now_;
  std::vector<DecodedPicture> held_;
};

// ---- Random streams and the model -------------------------------------------------------------
struct Packet {
  uint64_t seq;
  int64_t pts;
  std::string data;  // "K-", "Pr", ... or, for an image payload, "JPEG"
  bool image = false;
};

// GOPs of mini-groups "P B B" in decode order (the P is shown after its B's); pts = 10 *
// display index. The stream may start mid-GOP; packets get random flags; a few image payloads
// are mixed in.
std::vector<Packet> RandomStream(std::mt19937& rng, int n, int max_b) {
  std::vector<Packet> out;
  int64_t display = 0;
  uint64_t seq = 3;
  auto flag = [&]() -> char {
    const int r = static_cast<int>(rng() % 100);
    return r < 4 ? 'r' : r < 7 ? 'd' : r < 10 ? 'x' : '-';
  };
  bool first = true;
  while (static_cast<int>(out.size()) < n) {
    const int gop = 4 + static_cast<int>(rng() % 10);
    // Mid-GOP start: the first "GOP" has no keyframe.
    const bool key = !(first && rng() % 2 == 0);
    first = false;
    out.push_back({seq++, 10 * display++, std::string(1, key ? 'K' : 'P') + flag()});
    int left = gop - 1;
    while (left > 0 && static_cast<int>(out.size()) < n) {
      const int b = std::min<int>(left - 1, static_cast<int>(rng() % (max_b + 1)));
      const int64_t p_display = display + b;
      out.push_back({seq++, 10 * p_display, std::string("P") + flag()});
      for (int k = 0; k < b; ++k)
        out.push_back({seq++, 10 * (display + k), std::string("B") + flag()});
      display += b + 1;
      left -= b + 1;
      if (rng() % 17 == 0) out.push_back({seq++, -1, "JPEG", true});
    }
  }
  out.resize(static_cast<size_t>(n));
  // seq strictly increasing, already; pts of image payloads are -1 (echoed anyway).
  return out;
}

struct Expected {
  uint64_t seq;
  FrameStatus status;
  int64_t pts;
};

// The contract, sequentially: what each packet must be answered, and the order in which OK
// pictures reach the temporal stage (display order).
void Model(const std::vector<Packet>& packets, int delay, std::vector<Expected>* expected,
           std::vector<int64_t>* display_order, const std::function<bool(int64_t)>& fails) {
  FakeDecoder dec(delay);
  std::map<uint64_t, FrameStatus> status;
  std::map<uint64_t, std::pair<size_t, uint64_t>> awaiting;  // id -> packet index, fed before
  uint64_t fed = 0;
  int max_lag = 0;
  bool need_key = true;
  auto emit = [&](std::vector<DecodedPicture>& pics) {
    for (auto& p : pics) {
      auto it = awaiting.find(p.packet_id);
      if (it == awaiting.end()) continue;
      const Packet& pk = packets[it->second.first];
      max_lag = std::max(max_lag, static_cast<int>(fed - 1 - it->second.second));
      awaiting.erase(it);
      if (!p.damage.ok()) {
        status[pk.seq] = FrameStatus::kInvalidArgument;
        need_key = true;
      } else if (fails(pk.pts)) {
        status[pk.seq] = FrameStatus::kInternal;
      } else {
        status[pk.seq] = FrameStatus::kOk;
        display_order->push_back(pk.pts);
      }
    }
  };
  for (size_t i = 0; i < packets.size(); ++i) {
    const Packet& p = packets[i];
    if (p.image || (need_key && p.data[0] != 'K')) {
      status[p.seq] = FrameStatus::kInvalidArgument;
      continue;
    }
    need_key = false;
    awaiting[i] = {i, fed++};
    std::vector<DecodedPicture> pics;
    if (!dec.Decode(VideoPacket{i, p.data, p.pts}, &pics).ok()) {
      awaiting.erase(i);
      status[p.seq] = FrameStatus::kInvalidArgument;
      need_key = true;
    }
    emit(pics);
    // No picture long after the reorder delay: the limit of video_stream.cc.
    const uint64_t limit = static_cast<uint64_t>(
        std::min(kMaxVideoReorderDelay + 1, std::max(2 * delay + 2, max_lag + 1)));
    while (!awaiting.empty() && fed - 1 - awaiting.begin()->second.second > limit) {
      status[packets[awaiting.begin()->second.first].seq] = FrameStatus::kInvalidArgument;
      awaiting.erase(awaiting.begin());
    }
  }
  std::vector<DecodedPicture> pics;
  dec.Flush(&pics);
  emit(pics);
  for (auto& [id, a] : awaiting) status[packets[a.first].seq] = FrameStatus::kInvalidArgument;
  for (const Packet& p : packets) expected->push_back({p.seq, status.at(p.seq), p.pts});
}

// ---- Fake stages: random delays, analysis failures chosen by pts ------------------------------
struct Recorder {
  std::mutex mu;
  std::vector<int64_t> temporal;  // pts of OK results, in the order the ordered stage saw them
};

Stages FakeStages(uint32_t seed, int max_us, std::function<bool(int64_t)> fails, Recorder* rec) {
  auto sleep_some = [seed, max_us](const FrameContext& ctx, int stage) {
    if (max_us <= 0) return;
    std::mt19937 r(seed ^ static_cast<uint32_t>(ctx.input.seq * 7919 + stage));
    std::this_thread::sleep_for(std::chrono::microseconds(r() % max_us));
  };
  Stages s;
  s.decode = [sleep_some](FrameContext& ctx) -> absl::Status {
    sleep_some(ctx, 0);
    if (ctx.input.kind != PayloadKind::kPicture) return absl::InvalidArgumentError("not a picture");
    return ctx.input.picture->ToBgr(&ctx.image);
  };
  s.analyse = [sleep_some, fails](FrameContext& ctx) -> absl::Status {
    sleep_some(ctx, 1);
    if (fails(ctx.input.pts)) return absl::InternalError("injected analysis failure");
    ctx.result->analysis.mean_luma = ctx.image.data()[0];
    return absl::OkStatus();
  };
  s.enrich = [sleep_some](FrameContext& ctx) -> absl::Status {
    sleep_some(ctx, 2);
    return absl::OkStatus();
  };
  s.ordered = [rec]() -> OrderedFn {
    return [rec](FrameResult& r) {
      if (r.status != FrameStatus::kOk) return;
      std::lock_guard<std::mutex> l(rec->mu);
      rec->temporal.push_back(r.pts);
    };
  };
  return s;
}

struct Collected {
  std::mutex mu;
  std::vector<FrameResult> results;
  Gate complete;
};

StreamOptions CollectingOptions(Collected* c, uint32_t window) {
  StreamOptions o;
  o.id = "video";
  o.max_in_flight = window;
  o.on_result = [c](Delivery d) {
    std::lock_guard<std::mutex> l(c->mu);
    c->results.push_back(*d.result);
  };
  o.on_complete = [c] { c->complete.Open(); };
  return o;
}

FrameInput ToInput(const Packet& p) {
  FrameInput in;
  in.seq = p.seq;
  in.pts = p.pts;
  in.kind = p.image ? PayloadKind::kEncoded : PayloadKind::kVideoPacket;
  in.data = p.data;
  return in;
}

// Feeds packets the way the gRPC reactor does: TryAdmit, and on kNoCredit wait for on_credit.
class Feeder {
 public:
  void OnCredit() {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++credits_;
    }
    cv_.notify_all();
  }
  bool Feed(StreamHandle& s, FrameInput in) {
    for (;;) {
      uint64_t seen;
      {
        std::lock_guard<std::mutex> l(mu_);
        seen = credits_;
      }
      const AdmitOutcome out = s.TryAdmit(in, 0);
      if (out == AdmitOutcome::kAdmitted) return true;
      if (out == AdmitOutcome::kClosed) return false;
      std::unique_lock<std::mutex> l(mu_);
      if (!cv_.wait_for(l, testing::kWaitBound, [&] { return credits_ != seen; })) return false;
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t credits_ = 0;
};

TEST(VideoStreamTest, RandomStreamsAnswerEveryPacketInSendOrder) {
  for (uint32_t seed = 1; seed <= 12; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937 rng(seed);
    const int max_b = 1 + static_cast<int>(seed % 3);
    const int delay = max_b + 1;
    const auto packets = RandomStream(rng, 150, max_b);
    auto fails = [seed](int64_t pts) { return pts >= 0 && (pts / 10 + seed) % 23 == 0; };
    std::vector<Expected> expected;
    std::vector<int64_t> display;
    Model(packets, delay, &expected, &display, fails);

    Recorder rec;
    PipelineOptions po;
    po.workers = 4;
    auto pipeline = Pipeline::Create(po, FakeStages(seed, 400, fails, &rec)).value();
    Collected got;
    Feeder feeder;
    StreamOptions o = CollectingOptions(&got, 1 + seed % 4);  // windows 1..4: below the delay
    o.on_credit = [&feeder] { feeder.OnCredit(); };
    auto vs = VideoStream::Open(*pipeline, o, std::make_unique<FakeDecoder>(delay)).value();
    for (const Packet& p : packets) ASSERT_TRUE(feeder.Feed(*vs, ToInput(p)));
    vs->Close();
    ASSERT_TRUE(got.complete.Wait());

    std::lock_guard<std::mutex> l(got.mu);
    ASSERT_EQ(got.results.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      const FrameResult& r = got.results[i];
      ASSERT_EQ(r.seq, expected[i].seq) << "result " << i;
      EXPECT_EQ(r.pts, expected[i].pts) << "seq " << r.seq;
      EXPECT_EQ(r.status, expected[i].status) << "seq " << r.seq << ": " << r.error;
      if (r.status == FrameStatus::kOk) {
        EXPECT_EQ(r.analysis.mean_luma, static_cast<double>(r.pts & 0xff)) << "seq " << r.seq;
      } else if (r.status == FrameStatus::kInvalidArgument) {
        EXPECT_NE(r.error.find(absl::StrCat("frame seq=", r.seq)), std::string::npos) << r.error;
      }
    }
    // Temporal fields compare pictures in display order.
    EXPECT_EQ(rec.temporal, display);
    EXPECT_EQ(pipeline->counters().in_flight, 0u);
  }
}

TEST(VideoStreamTest, WindowOfOneWithADeepReorderBufferNeverDeadlocks) {
  PipelineOptions po;
  po.workers = 2;
  Recorder rec;
  auto pipeline = Pipeline::Create(po, FakeStages(
                                           5, 200, [](int64_t) { return false; }, &rec))
                      .value();
  Collected got;
  Feeder feeder;
  StreamOptions o = CollectingOptions(&got, 1);
  o.on_credit = [&feeder] { feeder.OnCredit(); };
  constexpr int kDelay = 8;
  auto vs = VideoStream::Open(*pipeline, o, std::make_unique<FakeDecoder>(kDelay)).value();
  // A keyframe, then groups of a P shown after the 7 B's that follow it: every picture waits
  // behind up to 15 later packets, with one credit in the stream's window.
  std::vector<Packet> packets{{1, 0, "K-"}};
  for (int g = 0; g < 6; ++g) {
    const int base = 1 + 8 * g;
    packets.push_back({packets.size() + 1, 10 * (base + 7), "P-"});
    for (int k = 0; k < 7; ++k) packets.push_back({packets.size() + 1, 10 * (base + k), "B-"});
  }
  for (const Packet& p : packets) ASSERT_TRUE(feeder.Feed(*vs, ToInput(p)));
  vs->Close();
  ASSERT_TRUE(got.complete.Wait());
  std::lock_guard<std::mutex> l(got.mu);
  ASSERT_EQ(got.results.size(), packets.size());
  for (size_t i = 0; i < packets.size(); ++i) {
    EXPECT_EQ(got.results[i].seq, packets[i].seq);
    EXPECT_EQ(got.results[i].status, FrameStatus::kOk) << got.results[i].error;
    EXPECT_EQ(got.results[i].pts, packets[i].pts);
  }
  std::vector<int64_t> sorted = rec.temporal;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(rec.temporal, sorted);
}

TEST(VideoStreamTest, CancelWhileTheDecoderHoldsPicturesStopsEverything) {
  for (int round = 0; round < 20; ++round) {
    PipelineOptions po;
    po.workers = 2;
    Recorder rec;
    auto pipeline = Pipeline::Create(po, FakeStages(
                                             round, 300, [](int64_t) { return false; }, &rec))
                        .value();
    std::atomic<int> held{0};
    std::atomic<bool> cancelled{false};
    std::atomic<int> after_cancel{0};
    std::atomic<int> results{0};
    Feeder feeder;
    StreamOptions o;
    o.max_in_flight = 2;
    o.on_result = [&](Delivery) {
      if (cancelled.load()) after_cancel.fetch_add(1);
      results.fetch_add(1);
    };
    o.on_credit = [&] {
      if (cancelled.load()) after_cancel.fetch_add(1);
      feeder.OnCredit();
    };
    o.on_complete = [&] { after_cancel.fetch_add(100); };  // never: the stream is not closed
    auto vs = VideoStream::Open(*pipeline, o, std::make_unique<FakeDecoder>(6, &held)).value();
    std::vector<Packet> packets{{1, 0, "K-"}};
    for (int k = 1; k <= 40; ++k) {
      packets.push_back({static_cast<uint64_t>(1 + k), 10 * ((k * 7) % 41), k % 9 ? "B-" : "P-"});
    }
    const size_t stop_after = 5 + static_cast<size_t>(round);
    for (size_t i = 0; i < stop_after; ++i) ASSERT_TRUE(feeder.Feed(*vs, ToInput(packets[i])));
    vs->Cancel();
    cancelled.store(true);
    EXPECT_EQ(after_cancel.load(), 0);
    FrameInput late = ToInput(packets[stop_after]);
    EXPECT_EQ(vs->TryAdmit(late, 0), AdmitOutcome::kClosed);
    vs.reset();
    EXPECT_EQ(after_cancel.load(), 0);
    EXPECT_TRUE(pipeline->Stop(std::chrono::seconds(5)));
    EXPECT_EQ(pipeline->counters().in_flight, 0u);
  }
}

// ---- The FFmpeg decoder -----------------------------------------------------------------------
struct RealRun {
  std::vector<FrameResult> results;
};

RealRun RunReal(const testing::EncodedClip& clip, VideoCodecId codec,
                const std::vector<testing::EncodedPacket>& packets, DecodeLimits limits = {},
                uint32_t window = 2) {
  auto analyzer = std::make_shared<CpuAnalyzer>();
  StandardStageOptions so;
  so.limits = limits;
  PipelineOptions po;
  po.workers = 2;
  auto pipeline = Pipeline::Create(po, MakeStandardStages(analyzer, so)).value();
  Collected got;
  Feeder feeder;
  StreamOptions o = CollectingOptions(&got, window);
  o.on_credit = [&feeder] { feeder.OnCredit(); };
  VideoFormatSpec spec{codec, clip.extradata};
  VideoDecoderOptions vo;
  vo.limits = limits;
  auto vs = VideoStream::Open(*pipeline, o, CreateVideoDecoder(spec, vo).value()).value();
  uint64_t seq = 0;
  for (const auto& p : packets) {
    FrameInput in;
    in.seq = ++seq;
    in.pts = p.pts;
    in.kind = PayloadKind::kVideoPacket;
    in.data = p.data;
    EXPECT_TRUE(feeder.Feed(*vs, std::move(in)));
  }
  vs->Close();
  EXPECT_TRUE(got.complete.Wait());
  RealRun run;
  std::lock_guard<std::mutex> l(got.mu);
  run.results = got.results;
  return run;
}

// Mean luma of every picture of `packets`, by pts, from a decoder of our own.
std::map<int64_t, double> ReferenceLuma(const testing::EncodedClip& clip, VideoCodecId codec) {
  auto dec = CreateVideoDecoder(VideoFormatSpec{codec, clip.extradata}, {}).value();
  std::vector<DecodedPicture> pics;
  uint64_t id = 0;
  for (const auto& p : clip.packets) EXPECT_TRUE(dec->Decode({id++, p.data, p.pts}, &pics).ok());
  dec->Flush(&pics);
  CpuAnalyzer analyzer;
  std::map<int64_t, double> luma;
  for (const auto& p : pics) {
    Image bgr;
    EXPECT_TRUE(p.picture->ToBgr(&bgr).ok());
    Analysis a;
    Image y;
    EXPECT_TRUE(analyzer.Analyze(bgr, &a, &y).ok());
    luma[p.pts] = a.mean_luma;
  }
  return luma;
}

void ExpectAllOk(const testing::EncodedClip& clip, VideoCodecId codec) {
  ASSERT_GT(clip.packets.size(), 40u);
  // B-frames: decode order differs from display order.
  bool reordered = false;
  for (size_t i = 1; i < clip.packets.size(); ++i) {
    reordered |= clip.packets[i].pts < clip.packets[i - 1].pts;
  }
  EXPECT_TRUE(reordered);
  const auto luma = ReferenceLuma(clip, codec);
  RealRun run = RunReal(clip, codec, clip.packets);
  ASSERT_EQ(run.results.size(), clip.packets.size());
  for (size_t i = 0; i < run.results.size(); ++i) {
    const FrameResult& r = run.results[i];
    EXPECT_EQ(r.seq, i + 1);
    EXPECT_EQ(r.pts, clip.packets[i].pts);
    ASSERT_EQ(r.status, FrameStatus::kOk) << r.error;
    EXPECT_EQ(r.analysis.width, 320u);
    ASSERT_TRUE(luma.count(r.pts));
    EXPECT_DOUBLE_EQ(r.analysis.mean_luma, luma.at(r.pts)) << "pts " << r.pts;
  }
}

// H.264 with B-frames and in-band parameter sets, H.264 with Annex-B extradata, HEVC.
TEST(FfmpegVideoTest, EveryPacketDecodesToItsOwnPicture) {
  struct Case {
    const char* encoder;
    VideoCodecId codec;
    int frames, b_frames;
    bool global_header;
  };
  for (const Case& c : {Case{"libx264", VideoCodecId::kH264, 90, 3, false},
                        Case{"libx264", VideoCodecId::kH264, 60, 2, true},
                        Case{"libx265", VideoCodecId::kHevc, 60, 3, false}}) {
    SCOPED_TRACE(::testing::Message() << c.encoder << " global_header=" << c.global_header);
    auto clip = testing::EncodeClip(c.encoder, 320, 240, c.frames, 30, c.b_frames, c.global_header);
    ASSERT_TRUE(clip.error.empty()) << clip.error;
    ASSERT_EQ(clip.extradata.empty(), !c.global_header);
    ExpectAllOk(clip, c.codec);
  }
}

TEST(FfmpegVideoTest, PictureSizeOverTheLimitsIsRefusedFromTheParameterSets) {
  auto clip = testing::EncodeClip("libx264", 320, 240, 10, 30, 0, false);
  ASSERT_TRUE(clip.error.empty()) << clip.error;
  DecodeLimits limits;
  limits.max_width = 256;
  RealRun run = RunReal(clip, VideoCodecId::kH264, clip.packets, limits);
  ASSERT_EQ(run.results.size(), clip.packets.size());
  EXPECT_EQ(run.results[0].status, FrameStatus::kInvalidArgument);
  EXPECT_NE(run.results[0].error.find("320x240"), std::string::npos) << run.results[0].error;
  EXPECT_NE(run.results[0].error.find("256x8192"), std::string::npos) << run.results[0].error;
  for (const auto& r : run.results) EXPECT_EQ(r.status, FrameStatus::kInvalidArgument);
}

TEST(FfmpegVideoTest, UnusableExtradataIsRefusedAtConfig) {
  auto st = CreateVideoDecoder(VideoFormatSpec{VideoCodecId::kH264, "\x07garbage"}, {});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("neither an avcC record nor Annex-B"), std::string::npos);
  // An avcC header whose parameter sets are cut off.
  auto cut = CreateVideoDecoder(
      VideoFormatSpec{VideoCodecId::kH264, std::string("\x01\x64\x00\x1f\xff\xe1\x00\x40", 8)}, {});
  EXPECT_FALSE(cut.ok());
}

// Truncated packets, flipped bytes, a lost keyframe, a stream starting mid-GOP: every packet is
// answered, in order; what cannot be decoded is INVALID_ARGUMENT; everything from the next
// intact keyframe on decodes exactly as an undamaged stream does.
TEST(FfmpegVideoTest, CorruptionIsAnsweredPerPacketAndTheStreamRecoversAtTheNextKeyframe) {
  auto clip = testing::EncodeClip("libx264", 320, 240, 120, 30, 2, false);
  ASSERT_TRUE(clip.error.empty()) << clip.error;
  const auto luma = ReferenceLuma(clip, VideoCodecId::kH264);
  std::vector<size_t> keys;
  for (size_t i = 0; i < clip.packets.size(); ++i) {
    if (clip.packets[i].key) keys.push_back(i);
  }
  ASSERT_GE(keys.size(), 4u);
  std::mt19937 rng(42);
  struct Damage {
    const char* name;
    std::function<void(std::vector<testing::EncodedPacket>&)> apply;
    size_t intact_from;  // index of the first packet that must decode exactly
    // Whether the damage must be reported. A lost keyframe in mid-stream is not: the decoder
    // decodes the next GOP's packets against the previous GOP's pictures and conceals.
    bool reported = true;
  };
  const std::vector<Damage> damages = {
      {"mid-GOP start",
       [&](auto& v) { v.erase(v.begin(), v.begin() + static_cast<long>(keys[0] + 5)); },
       keys[1] - keys[0] - 5},
      {"lost first keyframe", [&](auto& v) { v.erase(v.begin() + static_cast<long>(keys[0])); },
       keys[1] - 1},
      {"lost keyframe", [&](auto& v) { v.erase(v.begin() + static_cast<long>(keys[1])); },
       keys[2] - 1, false},
      {"truncated packets",
       [&](auto& v) {
         for (size_t i = keys[1] + 1; i < keys[1] + 6; ++i) v[i].data.resize(v[i].data.size() / 3);
       },
       keys[2]},
      {"flipped bytes",
       [&](auto& v) {
         for (size_t i = keys[1]; i < keys[2]; ++i) {
           for (int k = 0; k < 40; ++k) {
             auto& d = v[i].data;
             d[8 + rng() % (d.size() - 8)] ^= static_cast<char>(1 + rng() % 255);
           }
         }
       },
       keys[2]},
  };
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.name);
    auto packets = clip.packets;
    d.apply(packets);
    RealRun run = RunReal(clip, VideoCodecId::kH264, packets);
    ASSERT_EQ(run.results.size(), packets.size());
    int invalid = 0;
    for (size_t i = 0; i < packets.size(); ++i) {
      const FrameResult& r = run.results[i];
      ASSERT_EQ(r.seq, i + 1);
      EXPECT_EQ(r.pts, packets[i].pts);
      EXPECT_TRUE(r.status == FrameStatus::kOk || r.status == FrameStatus::kInvalidArgument)
          << r.error;
      if (r.status == FrameStatus::kInvalidArgument) {
        ++invalid;
        EXPECT_NE(r.error.find("video packet pts="), std::string::npos) << r.error;
      }
      if (i >= d.intact_from) {
        ASSERT_EQ(r.status, FrameStatus::kOk) << "packet " << i << ": " << r.error;
        EXPECT_DOUBLE_EQ(r.analysis.mean_luma, luma.at(r.pts)) << "packet " << i;
      }
    }
    if (d.reported) {
      EXPECT_GT(invalid, 0);
    }
  }
}

}  // namespace
}  // namespace framepipe

namespace framepipe {
namespace {

// The decoder's reference pictures are charged to the memory budget from the parameter sets,
// before any is allocated, and given back when the decoder goes; without room, packets are
// refused with a message naming the budget.
TEST(FfmpegVideoTest, DecoderPicturesAreChargedToTheMemoryBudget) {
  for (const char* encoder : {"libx264", "libx265"}) {
    SCOPED_TRACE(encoder);
    auto clip = testing::EncodeClip(encoder, 320, 240, 30, 15, 2, false);
    ASSERT_TRUE(clip.error.empty()) << clip.error;
    const VideoCodecId codec =
        std::string(encoder) == "libx264" ? VideoCodecId::kH264 : VideoCodecId::kHevc;
    std::atomic<int64_t> used{0};
    std::atomic<int64_t> peak{0};
    auto options = [&](int64_t limit) {
      VideoDecoderOptions o;
      o.charge = [&used, &peak, limit](uint64_t b) {
        if (used.load() + static_cast<int64_t>(b) > limit) return false;
        peak.store(std::max(peak.load(),
                            used.fetch_add(static_cast<int64_t>(b)) + static_cast<int64_t>(b)));
        return true;
      };
      o.release = [&used](uint64_t b) { used.fetch_sub(static_cast<int64_t>(b)); };
      return o;
    };
    const int64_t picture = 320 * 240 * 3 / 2;
    {
      auto dec = CreateVideoDecoder({codec, clip.extradata}, options(int64_t{1} << 30)).value();
      std::vector<DecodedPicture> pics;
      uint64_t id = 0;
      for (const auto& p : clip.packets)
        ASSERT_TRUE(dec->Decode({id++, p.data, p.pts}, &pics).ok());
      dec->Flush(&pics);
      EXPECT_EQ(pics.size(), clip.packets.size());
      // At least the reference pictures and the one being decoded; at most the largest DPB.
      EXPECT_GE(used.load(), 2 * picture);
      EXPECT_LE(used.load(), 40 * picture);
    }
    EXPECT_EQ(used.load(), 0) << "given back with the decoder";
    peak = 0;
    {
      auto dec = CreateVideoDecoder({codec, clip.extradata}, options(picture)).value();
      std::vector<DecodedPicture> pics;
      absl::Status st = dec->Decode({0, clip.packets[0].data, clip.packets[0].pts}, &pics);
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(st.message().find("memory budget"), std::string::npos) << st;
      EXPECT_TRUE(pics.empty());
    }
    EXPECT_EQ(used.load(), 0);
  }
}

}  // namespace
}  // namespace framepipe

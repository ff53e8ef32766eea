// The gRPC service end to end: a real server on 127.0.0.1:0 and a real gRPC client. Every
// semantic of the contract in ARCHITECTURE.md: order, completeness, per-frame errors, protocol
// errors, config rules, cancel, slow readers, DROP_OLDEST, deadlines, health, limits, drain.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>
#include <set>

#include "analysis/video_decoder.h"
#include "client/health_probe.h"
#include "fake_clock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "test_server.h"
#include "video_fixture.h"

namespace framepipe {
namespace {

using namespace framepipe::testing;  // NOLINT

TEST(ServiceTest, ConcurrentStreamsWithRandomDelaysAreCompleteAndOrdered) {
  ServerOptions o;
  o.workers = 3;
  o.wrap_stages = WrapAnalyse(3000);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  constexpr int kStreams = 8, kFrames = 50;
  std::vector<std::thread> threads;
  std::vector<std::vector<pb::FrameResult>> got(kStreams);
  std::vector<grpc::Status> status(kStreams);
  for (int k = 0; k < kStreams; ++k) {
    threads.emplace_back([&, k] {
      Call call(Channel(*server));
      if (!call.Write(ConfigMsg(6, pb::OVERLOAD_POLICY_BLOCK, 0, "s" + std::to_string(k)))) {
        status[k] = call.Finish();
        ADD_FAILURE() << "stream " << k << ": first write failed: " << status[k].error_code() << " "
                      << status[k].error_message();
        return;
      }
      std::thread writer([&] {
        for (int i = 0; i < kFrames; ++i) {
          if (!call.Write(JpegFrame(10 + 7 * i, 1000 + i))) break;
        }
        call.WritesDone();
      });
      got[k] = call.ReadAll();
      writer.join();
      status[k] = call.Finish();
    });
  }
  for (auto& t : threads) t.join();
  for (int k = 0; k < kStreams; ++k) {
    ASSERT_TRUE(status[k].ok()) << status[k].error_message();
    ASSERT_EQ(got[k].size(), static_cast<size_t>(kFrames)) << "stream " << k;
    for (int i = 0; i < kFrames; ++i) {
      const pb::FrameResult& r = got[k][i];
      ASSERT_EQ(r.seq(), static_cast<uint64_t>(10 + 7 * i)) << "stream " << k << " position " << i;
      EXPECT_EQ(r.status(), pb::FRAME_STATUS_OK) << r.error();
      EXPECT_EQ(r.capture_time_us(), 1000 + i);
      EXPECT_EQ(TagOf(r, "seq"), std::to_string(r.seq()));
      EXPECT_EQ(r.analysis().width(), 160u);
      EXPECT_EQ(r.analysis().luma_histogram_size(), 256);
      EXPECT_EQ(r.analysis().backend(), "cpu");
      EXPECT_TRUE(r.analysis().thumbnail().empty()) << "thumbnails only on request";
      const auto& t = r.timings();
      EXPECT_GT(t.total_us(), 0u);
      EXPECT_GE(t.total_us(), t.decode_us() + t.analyse_us() + t.enrich_us());
    }
  }
  pb::Stats st = GetStats(*server);
  EXPECT_EQ(st.frames_in(), static_cast<uint64_t>(kStreams * kFrames));
  EXPECT_EQ(st.frames_out(), st.frames_in());
  EXPECT_EQ(st.frames_ok(), st.frames_in());
  EXPECT_EQ(st.in_flight(), 0u);
  EXPECT_LE(st.peak_in_flight(), static_cast<uint64_t>(kStreams * 6));
  EXPECT_EQ(st.streams_total(), static_cast<uint64_t>(kStreams));
}

TEST(ServiceTest, EveryBadInputKindGetsItsErrorAndTheStreamGoesOn) {
  ServerOptions o;
  o.limits = {4096, 4096};
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  struct Bad {
    std::function<void(pb::Frame*)> make;
    const char* message;
  };
  const std::string jpeg = TestJpegs()[0];
  std::vector<Bad> bads = {
      {[](pb::Frame* f) { f->set_encoded(""); }, "encoded payload is empty"},
      {[](pb::Frame*) {}, "no payload"},
      {[](pb::Frame* f) { f->set_encoded("definitely not an image"); }, "neither JPEG nor PNG"},
      {[&](pb::Frame* f) { f->set_encoded(jpeg.substr(0, jpeg.size() / 2)); }, "truncated JPEG"},
      {[](pb::Frame* f) {
         auto* r = f->mutable_raw();
         r->set_width(8), r->set_height(8), r->set_format(pb::PIXEL_FORMAT_BGR8);
         r->set_data(std::string(100, 'x'));
       },
       "needs 192 bytes, got 100"},
      {[](pb::Frame* f) {
         auto* r = f->mutable_raw();
         r->set_width(8), r->set_height(8), r->set_format(static_cast<pb::PixelFormat>(9));
         r->set_data(std::string(64, 'x'));
       },
       "unknown pixel format value 9"},
      {[](pb::Frame* f) {
         auto* r = f->mutable_raw();
         r->set_width(8), r->set_height(8);
         r->set_data(std::string(64, 'x'));
       },
       "PIXEL_FORMAT_UNSPECIFIED"},
      {[](pb::Frame* f) {
         auto* r = f->mutable_raw();
         r->set_width(5000), r->set_height(1), r->set_format(pb::PIXEL_FORMAT_GRAY8);
         r->set_data(std::string(5000, 'x'));
       },
       "5000x1, over the server's maximum of 4096x4096"},
      {[&](pb::Frame* f) {
         f->set_encoded(jpeg);
         for (int i = 0; i < 65; ++i) (*f->mutable_tags())["t" + std::to_string(i)] = "v";
       },
       "over the limit of 64"},
      {[&](pb::Frame* f) {
         f->set_encoded(jpeg);
         (*f->mutable_tags())["big"] = std::string(300 * 1024, 'b');
       },
       "over the limit of 262144"},
  };
  Call call(Channel(*server));
  uint64_t seq = 1;
  std::vector<std::pair<bool, std::string>> want;  // ok?, message
  for (auto& b : bads) {
    ASSERT_TRUE(call.Write(JpegFrame(seq++)));
    want.push_back({true, ""});
    pb::ProcessRequest req;
    req.mutable_frame()->set_seq(seq++);
    b.make(req.mutable_frame());
    ASSERT_TRUE(call.Write(req));
    want.push_back({false, b.message});
  }
  ASSERT_TRUE(call.Write(JpegFrame(seq++)));
  want.push_back({true, ""});
  call.WritesDone();
  auto got = call.ReadAll();
  grpc::Status st = call.Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq(), i + 1);
    if (want[i].first) {
      EXPECT_EQ(got[i].status(), pb::FRAME_STATUS_OK) << got[i].error();
    } else {
      EXPECT_EQ(got[i].status(), pb::FRAME_STATUS_INVALID_ARGUMENT);
      EXPECT_NE(got[i].error().find(want[i].second), std::string::npos) << got[i].error();
      EXPECT_NE(got[i].error().find("frame seq=" + std::to_string(i + 1)), std::string::npos)
          << got[i].error();
      EXPECT_FALSE(got[i].has_analysis());
    }
  }
  EXPECT_EQ(GetStats(*server).frames_invalid_argument(), bads.size());
}

TEST(ServiceTest, NonIncreasingSeqEndsTheCallAfterEarlierResults) {
  auto server = StartTestServer({});
  ASSERT_TRUE(server);
  for (uint64_t bad : {5u, 3u}) {
    Call call(Channel(*server));
    for (uint64_t s : {1u, 2u, 5u}) ASSERT_TRUE(call.Write(JpegFrame(s)));
    call.Write(JpegFrame(bad));
    call.Write(JpegFrame(9));  // never read by the server
    call.WritesDone();
    auto got = call.ReadAll();
    grpc::Status st = call.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("frame seq=" + std::to_string(bad) +
                                      " is not greater than the previous seq=5"),
              std::string::npos)
        << st.error_message();
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got[0].seq(), 1u);
    EXPECT_EQ(got[1].seq(), 2u);
    EXPECT_EQ(got[2].seq(), 5u);
    for (auto& r : got) EXPECT_EQ(r.status(), pb::FRAME_STATUS_OK);
  }
}

TEST(ServiceTest, ConfigRules) {
  ServerOptions o;
  o.max_stream_in_flight = 100;
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  auto run = [&](std::vector<pb::ProcessRequest> msgs, size_t want_results,
                 const std::string& want_message) {
    Call call(Channel(*server));
    for (auto& m : msgs) call.Write(m);
    call.WritesDone();
    auto got = call.ReadAll();
    grpc::Status st = call.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << want_message;
    EXPECT_NE(st.error_message().find(want_message), std::string::npos) << st.error_message();
    EXPECT_EQ(got.size(), want_results) << want_message;
  };
  run({ConfigMsg(4), ConfigMsg(4)}, 0, "a second StreamConfig");
  run({JpegFrame(1), JpegFrame(2), ConfigMsg(4)}, 2, "StreamConfig after frames");
  run({ConfigMsg(1000)}, 0, "max_in_flight=1000 is over the server's limit of 100");
  run({ConfigMsg(4, static_cast<pb::OverloadPolicy>(7))}, 0, "overload has unknown value 7");
  run({pb::ProcessRequest()}, 0, "neither a config nor a frame");
  pb::ProcessRequest long_id = ConfigMsg(4);
  long_id.mutable_config()->set_stream_id(std::string(300, 'x'));
  run({long_id}, 0, "stream_id is longer than 256 bytes");
  // A valid config with no frames at all: OK, no results.
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(ConfigMsg(4)));
  call.WritesDone();
  EXPECT_TRUE(call.ReadAll().empty());
  EXPECT_TRUE(call.Finish().ok());
}

TEST(ServiceTest, CancelMidStreamReturnsCreditsAndAFreshStreamWorks) {
  ServerOptions o;
  o.wrap_stages = WrapAnalyse(20000);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  {
    Call call(Channel(*server));
    ASSERT_TRUE(call.Write(ConfigMsg(8)));
    for (int i = 1; i <= 20; ++i) ASSERT_TRUE(call.Write(JpegFrame(i)));
    pb::FrameResult r;
    ASSERT_TRUE(call.Read(&r));
    EXPECT_EQ(r.seq(), 1u);
    call.Cancel();
    EXPECT_EQ(call.Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(WaitForStats(
      *server, [](const pb::Stats& s) { return s.in_flight() == 0 && s.active_streams() == 0; }));
  Call call(Channel(*server));
  for (int i = 1; i <= 10; ++i) ASSERT_TRUE(call.Write(JpegFrame(i)));
  call.WritesDone();
  auto got = call.ReadAll();
  EXPECT_TRUE(call.Finish().ok());
  ASSERT_EQ(got.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(got[i].seq(), static_cast<uint64_t>(i + 1));
}

// A client that sends raw 640x480 frames asking for thumbnails in its results (~6 KB each) and
// reads none of them, against a client window of 16 KB: it stops accepting results after a
// few, and the server then holds the stream's 4 credits and stops reading.
class NonReadingCall {
 public:
  static constexpr int kFrames = 60;
  explicit NonReadingCall(const Server& server) : call_(Channel(server, 16 * 1024)) {
    pb::ProcessRequest cfg = ConfigMsg(4);
    cfg.mutable_config()->set_include_thumbnail(true);
    EXPECT_TRUE(call_.Write(cfg));
    writer_ = std::thread([this] {
      const std::string raw =
          EncodeImage(SyntheticSource({640, 480, 30, 1}).Render(0), Encoding::kRaw).value();
      for (int i = 1; i <= kFrames; ++i) {
        pb::ProcessRequest req;
        auto* f = req.mutable_frame();
        f->set_seq(i);
        auto* r = f->mutable_raw();
        r->set_width(640), r->set_height(480), r->set_format(pb::PIXEL_FORMAT_BGR8);
        r->set_data(raw);
        if (!call_.Write(req)) break;
        sent_ = i;
      }
      call_.WritesDone();
    });
  }
  ~NonReadingCall() {
    if (writer_.joinable()) writer_.join();
  }
  // In flight moves while results are written into the client's window; once that is full the
  // server holds all 4 credits and stays there: the same frames_in twice, with in_flight 4.
  bool WaitStuck(const Server& server) {
    uint64_t stuck_at = 0;
    return WaitForStats(server, [&](const pb::Stats& s) {
      const bool again = s.in_flight() == 4 && s.frames_in() == stuck_at;
      stuck_at = s.in_flight() == 4 ? s.frames_in() : 0;
      return again;
    });
  }
  int sent() const { return sent_; }
  Call& call() { return call_; }
  // Reads what the server sends until the call ends, and waits for the writer.
  std::vector<pb::FrameResult> ReadAll() {
    auto got = call_.ReadAll();
    writer_.join();
    return got;
  }

 private:
  Call call_;
  std::atomic<int> sent_{0};
  std::thread writer_;
};

TEST(ServiceTest, SlowReaderIsBoundedByTheCreditWindow) {
  ServerOptions o;
  o.workers = 2;
  o.stream_window_bytes = 64 * 1024;
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  NonReadingCall reader(*server);
  ASSERT_TRUE(reader.WaitStuck(*server));
  // The server is stuck and reads nothing more: an unbounded path (the server reading ahead, or
  // buffering without flow control) would have let the writer finish by now.
  EXPECT_LT(reader.sent(), NonReadingCall::kFrames) << "the writer should be held back";
  pb::Stats st = GetStats(*server);
  EXPECT_LE(st.peak_in_flight(), 4u);
  EXPECT_LT(st.frames_in(), static_cast<uint64_t>(NonReadingCall::kFrames))
      << "the server stopped reading";
  // Now read everything: all results, in order.
  auto got = reader.ReadAll();
  EXPECT_TRUE(reader.call().Finish().ok());
  ASSERT_EQ(got.size(), static_cast<size_t>(NonReadingCall::kFrames));
  for (int i = 0; i < NonReadingCall::kFrames; ++i) {
    EXPECT_EQ(got[i].seq(), static_cast<uint64_t>(i + 1));
  }
  EXPECT_LE(GetStats(*server).peak_in_flight(), 4u);
}

// ...but not for ever: once its client has accepted no result for --write-timeout, the call is
// cancelled and its credits come back (a reader slower than that is not cut: each write that
// completes starts the timeout again).
TEST(ServiceTest, AReaderThatStopsIsCancelledAtTheWriteTimeout) {
  FakeClock clock;
  ServerOptions o;
  o.time = &clock;
  o.workers = 2;
  o.stream_window_bytes = 64 * 1024;
  o.write_timeout = std::chrono::seconds(30);
  o.idle_timeout = std::chrono::seconds(0);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  NonReadingCall reader(*server);
  ASSERT_TRUE(reader.WaitStuck(*server));
  clock.Advance(std::chrono::seconds(29));
  ASSERT_TRUE(reader.WaitStuck(*server)) << "cancelled before the write timeout";
  // On a slow machine (a sanitizer) the last writes may still have been completing when the
  // stream looked stuck, each starting the timeout again: move time on until the write the
  // client's window holds has waited a whole timeout.
  bool cancelled = false;
  for (int step = 0; step < 30 && !cancelled; ++step) {
    clock.Advance(std::chrono::seconds(31));
    cancelled = WaitForStats(
        *server, [](const pb::Stats& s) { return s.in_flight() == 0 && s.active_streams() == 0; },
        std::chrono::seconds(2));
  }
  EXPECT_TRUE(cancelled) << "the stream was not cancelled, its credits did not come back";
  auto got = reader.ReadAll();  // what the client window held before the cancel
  EXPECT_LT(got.size(), static_cast<size_t>(NonReadingCall::kFrames));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].seq(), i + 1);
  EXPECT_EQ(reader.call().Finish().error_code(), grpc::StatusCode::CANCELLED);
  auto honest = Call(Channel(*server));
  ASSERT_TRUE(honest.Write(JpegFrame(1)));
  honest.WritesDone();
  EXPECT_EQ(honest.ReadAll().size(), 1u);
  EXPECT_TRUE(honest.Finish().ok());
}

TEST(ServiceTest, DropOldestAnswersEverySeqInOrder) {
  ServerOptions o;
  o.workers = 1;
  o.wrap_stages = WrapAnalyse(
      0, [](FrameContext&) { std::this_thread::sleep_for(std::chrono::milliseconds(15)); });
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(ConfigMsg(2, pb::OVERLOAD_POLICY_DROP_OLDEST)));
  constexpr int kFrames = 40;
  for (int i = 1; i <= kFrames; ++i) ASSERT_TRUE(call.Write(JpegFrame(i)));
  call.WritesDone();
  auto got = call.ReadAll();
  EXPECT_TRUE(call.Finish().ok());
  ASSERT_EQ(got.size(), static_cast<size_t>(kFrames));
  int dropped = 0;
  for (int i = 0; i < kFrames; ++i) {
    EXPECT_EQ(got[i].seq(), static_cast<uint64_t>(i + 1));
    EXPECT_TRUE(got[i].status() == pb::FRAME_STATUS_OK ||
                got[i].status() == pb::FRAME_STATUS_DROPPED);
    if (got[i].status() == pb::FRAME_STATUS_DROPPED) {
      ++dropped;
      EXPECT_NE(got[i].error().find("DROP_OLDEST"), std::string::npos);
      EXPECT_EQ(TagOf(got[i], "seq"), std::to_string(i + 1)) << "dropped frames echo tags";
    }
  }
  EXPECT_GT(dropped, 0) << "15 ms per frame on one worker cannot keep up with a burst";
  EXPECT_EQ(got.back().status(), pb::FRAME_STATUS_OK) << "the newest frame is never dropped";
  EXPECT_EQ(GetStats(*server).frames_dropped(), static_cast<uint64_t>(dropped));
}

TEST(ServiceTest, FrameTimeoutGivesDeadlineExceededInPlace) {
  Gate release;
  Counter hung;
  FakeClock clock;  // deadlines move only when the test moves time
  ServerOptions o;
  o.workers = 2;
  o.time = &clock;
  o.wrap_stages = HoldFrame(4, &release, &hung);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(ConfigMsg(4, pb::OVERLOAD_POLICY_BLOCK, 1500)));
  // Frames 1-4 admitted at t0 (deadline t0 + 1.5 s): 1-3 come back, 4 hangs.
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(call.Write(JpegFrame(i)));
  std::vector<pb::FrameResult> got(3);
  for (auto& r : got) ASSERT_TRUE(call.Read(&r));
  ASSERT_TRUE(hung.WaitAtLeast(1));
  // The rest at t0 + 1 s (deadlines from t0 + 2.5 s on); then t0 + 1.5 s: frame 4's deadline.
  clock.Advance(std::chrono::seconds(1));
  for (int i = 5; i <= 10; ++i) ASSERT_TRUE(call.Write(JpegFrame(i)));
  call.WritesDone();
  clock.Advance(std::chrono::milliseconds(500));
  for (auto& r : call.ReadAll()) got.push_back(r);
  EXPECT_TRUE(call.Finish().ok());
  release.Open();
  ASSERT_EQ(got.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(got[i].seq(), static_cast<uint64_t>(i + 1));
    EXPECT_EQ(got[i].status(), i == 3 ? pb::FRAME_STATUS_DEADLINE_EXCEEDED : pb::FRAME_STATUS_OK)
        << i << ": " << got[i].error();
  }
  EXPECT_NE(got[3].error().find("deadline of 1500 ms"), std::string::npos) << got[3].error();
}

TEST(ServiceTest, DrainTimeoutEndsWhatDoesNotFinish) {
  Gate release;
  Counter hung;
  FakeClock clock;
  ServerOptions o;
  o.time = &clock;
  o.drain_timeout = std::chrono::seconds(10);
  o.wrap_stages = HoldFrame(2, &release, &hung);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  const std::string target = "127.0.0.1:" + std::to_string(server->port());
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(ConfigMsg(4)));
  for (int i = 1; i <= 2; ++i) ASSERT_TRUE(call.Write(JpegFrame(i)));
  pb::FrameResult first;
  ASSERT_TRUE(call.Read(&first));
  EXPECT_EQ(first.seq(), 1u);
  ASSERT_TRUE(hung.WaitAtLeast(1));
  bool drained = true;
  std::thread stopper([&] { drained = server->Shutdown(); });
  // The drain has begun (and read its deadline) once health says NOT_SERVING.
  bool not_serving = false;
  const auto bound = std::chrono::steady_clock::now() + kWaitBound;
  while (!not_serving && std::chrono::steady_clock::now() < bound) {
    absl::Status h = CheckHealth(target, "", 5);
    not_serving = !h.ok() && h.message().find("NOT_SERVING") != std::string::npos;
  }
  ASSERT_TRUE(not_serving);
  // Frame 2 never finishes: at the drain timeout the server stops waiting and ends the call.
  clock.Advance(std::chrono::seconds(10));
  EXPECT_TRUE(call.ReadAll().empty());
  const grpc::Status st = call.Finish();
  EXPECT_NE(st.error_code(), grpc::StatusCode::OK) << "the call was cut, not completed";
  release.Open();  // the pipeline's stop waits for the stuck stage body to return
  stopper.join();
  EXPECT_FALSE(drained) << "Shutdown reports that a stream did not finish in time";
}

TEST(ServiceTest, HealthGoesNotServingDuringDrainAndAdmittedFramesAreAnswered) {
  Gate release;
  Counter held;
  ServerOptions o;
  o.drain_timeout = std::chrono::seconds(30);
  o.wrap_stages = HoldFrame(5, &release, &held);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  const std::string target = "127.0.0.1:" + std::to_string(server->port());
  EXPECT_TRUE(CheckHealth(target, "", 5).ok());
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(ConfigMsg(8)));
  for (int i = 1; i <= 8; ++i) ASSERT_TRUE(call.Write(JpegFrame(i)));
  ASSERT_TRUE(held.WaitAtLeast(1));
  ASSERT_TRUE(WaitForStats(*server, [](const pb::Stats& s) { return s.frames_in() == 8; }));
  std::thread stopper([&] { EXPECT_TRUE(server->Shutdown()); });
  // Draining: health says NOT_SERVING and new streams are refused.
  bool not_serving = false;
  for (int i = 0; i < 2000 && !not_serving; ++i) {
    absl::Status h = CheckHealth(target, "", 5);
    not_serving = !h.ok() && h.message().find("NOT_SERVING") != std::string::npos;
    if (!not_serving) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(not_serving);
  {
    Call late(Channel(*server));
    late.Write(JpegFrame(1));
    late.WritesDone();
    EXPECT_TRUE(late.ReadAll().empty());
    grpc::Status st = late.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(st.error_message().find("shutting down"), std::string::npos) << st.error_message();
  }
  release.Open();
  auto got = call.ReadAll();
  grpc::Status st = call.Finish();
  stopper.join();
  ASSERT_EQ(got.size(), 8u) << "every admitted frame is answered";
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[i].seq(), static_cast<uint64_t>(i + 1));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("every admitted frame was answered"), std::string::npos)
      << st.error_message();
}

TEST(ServiceTest, StreamLimitIsResourceExhausted) {
  ServerOptions o;
  o.max_streams = 2;
  o.max_streams_per_peer = 2;  // the server-wide limit, not the per-address one
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  Call a(Channel(*server)), b(Channel(*server));
  pb::FrameResult r;
  ASSERT_TRUE(a.Write(JpegFrame(1)));
  ASSERT_TRUE(a.Read(&r));
  ASSERT_TRUE(b.Write(JpegFrame(1)));
  ASSERT_TRUE(b.Read(&r));
  Call c(Channel(*server));
  c.Write(JpegFrame(1));
  c.WritesDone();
  EXPECT_TRUE(c.ReadAll().empty());
  grpc::Status st = c.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("limit of 2 concurrent streams"), std::string::npos)
      << st.error_message();
  a.WritesDone();
  b.WritesDone();
  a.ReadAll();
  b.ReadAll();
  EXPECT_TRUE(a.Finish().ok());
  EXPECT_TRUE(b.Finish().ok());
  EXPECT_EQ(GetStats(*server).streams_rejected(), 1u);
}

bool Ipv6LoopbackWorks() {
  const int fd = socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

// An IPv6 host is usually given a whole /64: counted address by address, one such client would
// have 2^64 shares of every per-address limit. Through the front door and through gRPC's own
// listener (which write peers differently), an IPv6 client is its --peer-ipv6-prefix.
TEST(ServiceTest, Ipv6ClientsAreCountedByTheirPrefix) {
  if (!Ipv6LoopbackWorks()) GTEST_SKIP() << "no IPv6 loopback (::1) on this machine";
  for (const bool guard : {true, false}) {
    for (const int prefix : {64, 128}) {
      SCOPED_TRACE(std::string(guard ? "front door" : "gRPC's listener") + ", prefix /" +
                   std::to_string(prefix));
      ServerOptions o;
      o.listen = "[::1]:0";
      o.guard = guard;
      o.peer_ipv6_prefix = prefix;
      o.max_streams = 8;
      o.max_streams_per_peer = 1;
      auto server = StartTestServer(o);
      ASSERT_TRUE(server);
      Call a(Channel(*server, 0, "[::1]"));
      pb::FrameResult r;
      ASSERT_TRUE(a.Write(JpegFrame(1)));
      ASSERT_TRUE(a.Read(&r));
      Call b(Channel(*server, 0, "[::1]"));
      b.Write(JpegFrame(1));
      b.WritesDone();
      EXPECT_TRUE(b.ReadAll().empty());
      const grpc::Status st = b.Finish();
      EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
      const std::string who = prefix == 64 ? "(::/64)" : "(::1)";
      EXPECT_NE(st.error_message().find("this client address " + who), std::string::npos)
          << st.error_message();
      a.WritesDone();
      EXPECT_EQ(a.ReadAll().size(), 0u);
      EXPECT_TRUE(a.Finish().ok());
    }
  }
}

TEST(ServiceTest, OversizedMessageIsResourceExhausted) {
  ServerOptions o;
  o.max_receive_message_bytes = 1 << 20;
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  Call call(Channel(*server));
  pb::ProcessRequest req;
  req.mutable_frame()->set_seq(1);
  req.mutable_frame()->set_encoded(std::string(2 << 20, 'x'));
  call.Write(req);
  call.WritesDone();
  call.ReadAll();
  EXPECT_EQ(call.Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

// Inline, gRPC reads the client's socket itself and the guard judges the bytes where they lie
// (copying only what it changes); relayed, the front door splices the bodies of large messages
// past its guard (kernel to kernel) and reads the rest: whatever path a byte took, every frame
// arrives intact. The same frames - large raw ones between small JPEGs, three streams on one
// connection so their DATA frames interleave - through the front door inline, relayed, and
// through gRPC's own listener give the same analysis, exactly.
TEST(ServiceTest, LargeFramesThroughTheFrontDoorArriveIntactSplicedOrRead) {
  constexpr int kStreams = 3, kFrames = 12;
  auto frame = [](int stream, int i) {
    if (i % 3 == 2) return JpegFrame(static_cast<uint64_t>(i + 1));
    pb::ProcessRequest req;
    pb::Frame* f = req.mutable_frame();
    f->set_seq(static_cast<uint64_t>(i + 1));
    auto* raw = f->mutable_raw();
    raw->set_width(1280);
    raw->set_height(720);
    raw->set_format(pb::PIXEL_FORMAT_BGR8);
    std::string data(1280 * 720 * 3, '\0');
    std::mt19937 rng(static_cast<uint32_t>(1000 * stream + i));
    for (auto& b : data) b = static_cast<char>(rng() >> 24);
    raw->set_data(std::move(data));
    return req;
  };
  // [inline, relay, guard off]: stream-major, in order
  std::vector<std::string> analyses[3];
  uint64_t raw_bytes = 0;
  for (int guard = 0; guard < 3; ++guard) {
    ServerOptions o;
    o.guard = guard < 2;
    o.guard_relay = guard == 1;
    auto server = StartTestServer(o);
    ASSERT_TRUE(server);
    auto channel = Channel(*server);
    std::vector<std::vector<pb::FrameResult>> got(kStreams);
    std::vector<std::thread> threads;
    for (int k = 0; k < kStreams; ++k) {
      threads.emplace_back([&, k] {
        Call call(channel);
        ASSERT_TRUE(
            call.Write(ConfigMsg(4, pb::OVERLOAD_POLICY_BLOCK, 0, "big" + std::to_string(k))));
        std::thread writer([&] {
          for (int i = 0; i < kFrames; ++i) {
            if (!call.Write(frame(k, i))) break;
          }
          call.WritesDone();
        });
        got[k] = call.ReadAll();
        writer.join();
        EXPECT_TRUE(call.Finish().ok());
      });
    }
    for (auto& t : threads) t.join();
    for (int k = 0; k < kStreams; ++k) {
      ASSERT_EQ(got[k].size(), static_cast<size_t>(kFrames)) << "stream " << k;
      for (int i = 0; i < kFrames; ++i) {
        ASSERT_EQ(got[k][i].status(), pb::FRAME_STATUS_OK) << got[k][i].error();
        analyses[guard].push_back(got[k][i].analysis().SerializeAsString());
        if (guard == 0 && i % 3 != 2) raw_bytes += 1280 * 720 * 3;
      }
    }
    const FrontDoorCounters c = server->front_door_counters();
    if (guard == 0) {
      EXPECT_GE(c.bytes_inline + c.bytes_copied, raw_bytes);
      EXPECT_GE(c.bytes_inline, raw_bytes / 2)
          << "most of the raw pixels stay where gRPC read them (" << c.bytes_inline << " inline, "
          << c.bytes_copied << " copied)";
      EXPECT_EQ(c.bytes_spliced, 0u);
    }
    if (guard == 1) {
      EXPECT_EQ(c.bytes_inline, 0u);
      EXPECT_GE(c.bytes_spliced + c.bytes_copied, raw_bytes);
      EXPECT_GE(c.bytes_spliced, raw_bytes / 2)
          << "most of the raw pixels go kernel to kernel (" << c.bytes_spliced << " spliced, "
          << c.bytes_copied << " read)";
      // The relay threads' CPU time (framepipe_relay_cpu_seconds_total): counted, and a part of
      // this process's.
      EXPECT_GT(c.relay_cpu_ns, 0u);
      EXPECT_LE(static_cast<double>(c.relay_cpu_ns) / 1e9, ProcessCpuSeconds());
    }
  }
  for (int guard = 0; guard < 2; ++guard) {
    ASSERT_EQ(analyses[guard].size(), analyses[2].size());
    for (size_t i = 0; i < analyses[2].size(); ++i) {
      EXPECT_EQ(analyses[guard][i], analyses[2][i])
          << (guard == 0 ? "inline: " : "relayed: ") << "frame " << i % kFrames << " of stream "
          << i / kFrames;
    }
  }
}

// A raw TCP connection to 127.0.0.1:port.
int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

// Whether the server ends the connection (EOF or reset) within `seconds`; what it sent first
// (a SETTINGS frame, say) is read and dropped.
bool ClosedWithin(int fd, double seconds) {
  timeval tv{};
  tv.tv_usec = 100 * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  char buf[4096];
  while (std::chrono::steady_clock::now() < end) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      return true;
    }
  }
  return false;
}

// A client that connects and never finishes the HTTP/2 preface holds a connection slot (and, to
// gRPC, a transport) until the handshake deadline closes it - inline (gRPC reading the socket
// itself) as relayed; a client that sent its preface and SETTINGS is past the deadline for good,
// and honest calls go on.
TEST(ServiceTest, ConnectionsWithoutAPrefaceCloseAtTheHandshakeDeadline) {
  for (const bool relay : {false, true}) {
    SCOPED_TRACE(relay ? "relayed" : "inline");
    ServerOptions o;
    o.guard_relay = relay;
    o.handshake_timeout = std::chrono::milliseconds(300);
    auto server = StartTestServer(o);
    ASSERT_TRUE(server);
    const int silent = ConnectLoopback(server->port());
    const int half = ConnectLoopback(server->port());
    const int honest = ConnectLoopback(server->port());
    ASSERT_GE(silent, 0);
    ASSERT_GE(half, 0);
    ASSERT_GE(honest, 0);
    const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const std::string settings("\0\0\0\x04\0\0\0\0\0", 9);
    ASSERT_EQ(send(half, preface.data(), 10, MSG_NOSIGNAL), 10);
    const std::string hello = preface + settings;
    ASSERT_EQ(send(honest, hello.data(), hello.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(hello.size()));
    EXPECT_TRUE(ClosedWithin(silent, 5));
    EXPECT_TRUE(ClosedWithin(half, 5));
    EXPECT_FALSE(ClosedWithin(honest, 1)) << "past the handshake, the deadline is off";
    EXPECT_EQ(server->front_door_counters().handshake_timeouts, 2u);
    Call call(Channel(*server));
    ASSERT_TRUE(call.Write(ConfigMsg(1, pb::OVERLOAD_POLICY_BLOCK, 0, "after")));
    ASSERT_TRUE(call.Write(JpegFrame(1)));
    call.WritesDone();
    const auto got = call.ReadAll();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].status(), pb::FRAME_STATUS_OK);
    EXPECT_TRUE(call.Finish().ok());
    for (int fd : {silent, half, honest}) close(fd);
    // Every raw connection's slot comes back; the call's channel keeps its one.
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (server->front_door_counters().connections_active > 1 &&
           std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling, not a wait for luck
    }
    EXPECT_EQ(server->front_door_counters().connections_active, 1u);
  }
}

// One ServerReflectionInfo exchange (v1alpha, what grpcurl speaks to gRPC 1.51), raw bytes.
std::string ReflectionExchange(const Server& server, const std::string& request) {
  grpc::GenericStub stub(Channel(server));
  grpc::ClientContext ctx;
  grpc::CompletionQueue cq;
  auto rpc =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  rpc->StartCall(reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  std::string bytes;
  if (cq.Next(&tag, &ok) && ok) {
    grpc::Slice slice(request);
    grpc::ByteBuffer buf(&slice, 1);
    rpc->Write(buf, reinterpret_cast<void*>(2));
    grpc::ByteBuffer resp;
    if (cq.Next(&tag, &ok) && ok) {
      rpc->Read(&resp, reinterpret_cast<void*>(3));
      if (cq.Next(&tag, &ok) && ok) {
        std::vector<grpc::Slice> slices;
        (void)resp.Dump(&slices);
        for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
  }
  ctx.TryCancel();
  grpc::Status fin;
  rpc->Finish(&fin, reinterpret_cast<void*>(4));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return bytes;
}

TEST(ServiceTest, ThumbnailOnRequestAndReflectionListsTheService) {
  auto server = StartTestServer({});
  ASSERT_TRUE(server);
  Call call(Channel(*server));
  pb::ProcessRequest cfg = ConfigMsg(2);
  cfg.mutable_config()->set_include_thumbnail(true);
  ASSERT_TRUE(call.Write(cfg));
  ASSERT_TRUE(call.Write(JpegFrame(1)));
  call.WritesDone();
  auto got = call.ReadAll();
  ASSERT_TRUE(call.Finish().ok());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].analysis().thumbnail().size(), 4096u);
  // Server reflection: ServerReflectionInfo with list_services (field 7) names our service.
  const std::string bytes = ReflectionExchange(*server, std::string("\x3a\x00", 2));
  EXPECT_NE(bytes.find("framepipe.v1.FramePipeline"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
}

// What `grpcurl -plaintext HOST:PORT framepipe.v1.FramePipeline/GetStats` does: learn the
// contract from the server alone (file_containing_symbol), build the messages dynamically and
// make the call with them.
TEST(ServiceTest, ReflectionServesTheContractSoGrpcurlCanCallIt) {
  auto server = StartTestServer({});
  ASSERT_TRUE(server);
  namespace gp = google::protobuf;
  const std::string symbol = "framepipe.v1.FramePipeline";
  std::string req = "\x22";  // ServerReflectionRequest.file_containing_symbol (field 4)
  req += static_cast<char>(symbol.size());
  req += symbol;
  gp::UnknownFieldSet response;
  ASSERT_TRUE(response.ParseFromString(ReflectionExchange(*server, req)));
  gp::DescriptorPool pool;
  int files = 0;
  for (int i = 0; i < response.field_count(); ++i) {
    const auto& f = response.field(i);
    if (f.number() != 4 || f.type() != gp::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    gp::UnknownFieldSet fdr;  // FileDescriptorResponse { repeated bytes file_descriptor_proto = 1 }
    ASSERT_TRUE(fdr.ParseFromString(f.length_delimited()));
    for (int k = 0; k < fdr.field_count(); ++k) {
      gp::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(fdr.field(k).length_delimited()));
      ASSERT_NE(pool.BuildFile(file), nullptr) << file.name();
      ++files;
    }
  }
  ASSERT_GE(files, 1) << "reflection did not answer file_containing_symbol";
  const gp::ServiceDescriptor* svc = pool.FindServiceByName(symbol);
  ASSERT_NE(svc, nullptr);
  ASSERT_NE(svc->FindMethodByName("Process"), nullptr);
  EXPECT_TRUE(svc->FindMethodByName("Process")->client_streaming());
  const gp::MethodDescriptor* get_stats = svc->FindMethodByName("GetStats");
  ASSERT_NE(get_stats, nullptr);

  // Call GetStats with dynamic messages only (as grpcurl does), after one frame went through.
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(JpegFrame(1)));
  call.WritesDone();
  ASSERT_EQ(call.ReadAll().size(), 1u);
  ASSERT_TRUE(call.Finish().ok());
  gp::DynamicMessageFactory factory(&pool);
  std::unique_ptr<gp::Message> request(factory.GetPrototype(get_stats->input_type())->New());
  std::unique_ptr<gp::Message> reply(factory.GetPrototype(get_stats->output_type())->New());
  grpc::GenericStub stub(Channel(*server));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Slice slice(request->SerializeAsString());
  grpc::ByteBuffer in(&slice, 1), out;
  // Completion-queue API: the call completes on this thread (cq.Next), as grpcurl's does.
  grpc::CompletionQueue cq;
  grpc::Status status;
  auto unary = stub.PrepareUnaryCall(&ctx, "/framepipe.v1.FramePipeline/GetStats", in, &cq);
  unary->StartCall();
  unary->Finish(&out, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(out.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  ASSERT_TRUE(reply->ParseFromString(bytes));
  const gp::Reflection* r = reply->GetReflection();
  const gp::Descriptor* d = reply->GetDescriptor();
  EXPECT_EQ(r->GetUInt64(*reply, d->FindFieldByName("frames_ok")), 1u);
  EXPECT_EQ(r->GetString(*reply, d->FindFieldByName("backend")), "cpu");
}

// ---- Compressed video over gRPC
// ------------------------------------------------------------------

pb::ProcessRequest VideoConfig(pb::VideoCodec codec, const std::string& extradata,
                               uint32_t max_in_flight = 4) {
  pb::ProcessRequest r = ConfigMsg(max_in_flight);
  r.mutable_config()->mutable_video()->set_codec(codec);
  r.mutable_config()->mutable_video()->set_extradata(extradata);
  return r;
}

pb::ProcessRequest PacketMsg(uint64_t seq, const EncodedPacket& p) {
  pb::ProcessRequest r;
  r.mutable_frame()->set_seq(seq);
  r.mutable_frame()->set_pts(p.pts);
  r.mutable_frame()->set_video_packet(p.data);
  (*r.mutable_frame()->mutable_tags())["n"] = std::to_string(seq);
  return r;
}

const EncodedClip& H264Clip() {
  static const EncodedClip* clip =
      new EncodedClip(EncodeClip("libx264", 192, 108, 60, 24, 3, false));
  return *clip;
}

TEST(ServiceVideoTest, ConcurrentVideoStreamsAreAnsweredPerPacketInSendOrder) {
  ServerOptions o;
  o.wrap_stages = WrapAnalyse(3000);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  const EncodedClip annexb_extradata = EncodeClip("libx264", 160, 96, 40, 20, 2, true);
  const EncodedClip hevc = EncodeClip("libx265", 160, 96, 40, 20, 3, false);
  ASSERT_TRUE(H264Clip().error.empty() && annexb_extradata.error.empty() && hevc.error.empty());
  struct Case {
    pb::VideoCodec codec;
    const EncodedClip* clip;
    uint32_t window;
  };
  const std::vector<Case> cases = {{pb::VIDEO_CODEC_H264, &H264Clip(), 1},
                                   {pb::VIDEO_CODEC_H264, &annexb_extradata, 3},
                                   {pb::VIDEO_CODEC_HEVC, &hevc, 8}};
  std::vector<std::thread> threads;
  for (const Case& c : cases) {
    threads.emplace_back([&server, c] {
      Call call(Channel(*server));
      ASSERT_TRUE(call.Write(VideoConfig(c.codec, c.clip->extradata, c.window)));
      std::thread writer([&] {
        for (size_t i = 0; i < c.clip->packets.size(); ++i) {
          ASSERT_TRUE(call.Write(PacketMsg(10 + 2 * i, c.clip->packets[i])));
        }
        call.WritesDone();
      });
      auto got = call.ReadAll();
      writer.join();
      EXPECT_TRUE(call.Finish().ok());
      ASSERT_EQ(got.size(), c.clip->packets.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].seq(), 10 + 2 * i);
        EXPECT_EQ(got[i].pts(), c.clip->packets[i].pts);
        EXPECT_EQ(got[i].status(), pb::FRAME_STATUS_OK) << got[i].error();
        EXPECT_EQ(TagOf(got[i], "n"), std::to_string(10 + 2 * i));
        EXPECT_EQ(got[i].analysis().width(), c.clip == &H264Clip() ? 192u : 160u);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(WaitForStats(*server, [](const pb::Stats& s) {
    return s.in_flight() == 0 && s.active_streams() == 0 && s.frames_in() == s.frames_out();
  }));
}

TEST(ServiceVideoTest, VideoConfigAndPayloadMixupsAreInvalidArgument) {
  auto server = StartTestServer({});
  ASSERT_TRUE(server);
  const EncodedClip& clip = H264Clip();
  {
    Call call(Channel(*server));
    call.Write(VideoConfig(static_cast<pb::VideoCodec>(7), ""));
    call.WritesDone();
    EXPECT_TRUE(call.ReadAll().empty());
    grpc::Status st = call.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("codec 7 is not supported"), std::string::npos)
        << st.error_message();
  }
  {
    Call call(Channel(*server));
    call.Write(VideoConfig(pb::VIDEO_CODEC_HEVC, "\x05not a record"));
    call.WritesDone();
    grpc::Status st = call.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("neither an hvcC record nor Annex-B"), std::string::npos)
        << st.error_message();
  }
  {
    // An image in a video stream, then a packet before any keyframe: per-frame errors, and the
    // stream goes on to decode everything from its keyframe.
    Call call(Channel(*server));
    ASSERT_TRUE(call.Write(VideoConfig(pb::VIDEO_CODEC_H264, "")));
    ASSERT_TRUE(call.Write(JpegFrame(1)));
    ASSERT_TRUE(call.Write(PacketMsg(2, clip.packets[3])));
    for (size_t i = 0; i < clip.packets.size(); ++i) {
      ASSERT_TRUE(call.Write(PacketMsg(3 + i, clip.packets[i])));
    }
    call.WritesDone();
    auto got = call.ReadAll();
    EXPECT_TRUE(call.Finish().ok());
    ASSERT_EQ(got.size(), clip.packets.size() + 2);
    EXPECT_EQ(got[0].status(), pb::FRAME_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(got[0].error().find("frame seq=1: frame carries an image"), std::string::npos)
        << got[0].error();
    EXPECT_EQ(got[1].status(), pb::FRAME_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(got[1].error().find("before the stream's first keyframe"), std::string::npos)
        << got[1].error();
    EXPECT_EQ(got[1].pts(), clip.packets[3].pts);
    for (size_t i = 2; i < got.size(); ++i) {
      EXPECT_EQ(got[i].status(), pb::FRAME_STATUS_OK) << got[i].error();
    }
  }
  {
    // A packet in an image stream.
    Call call(Channel(*server));
    ASSERT_TRUE(call.Write(JpegFrame(1)));
    ASSERT_TRUE(call.Write(PacketMsg(2, clip.packets[0])));
    ASSERT_TRUE(call.Write(JpegFrame(3)));
    call.WritesDone();
    auto got = call.ReadAll();
    EXPECT_TRUE(call.Finish().ok());
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got[0].status(), pb::FRAME_STATUS_OK);
    EXPECT_EQ(got[1].status(), pb::FRAME_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(got[1].error().find("not a video stream"), std::string::npos) << got[1].error();
    EXPECT_EQ(got[2].status(), pb::FRAME_STATUS_OK);
  }
}

// The decoder holds B-frame pictures back: a cancel then finds pictures in the decoder, in the
// pipeline and in the send-order buffer at once.
TEST(ServiceVideoTest, CancelWithPicturesHeldInTheDecoderFreesEverything) {
  ServerOptions o;
  o.wrap_stages = WrapAnalyse(20000);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  const EncodedClip& clip = H264Clip();
  for (int round = 0; round < 3; ++round) {
    Call call(Channel(*server));
    ASSERT_TRUE(call.Write(VideoConfig(pb::VIDEO_CODEC_H264, "", 2)));
    for (size_t i = 0; i < 12; ++i) ASSERT_TRUE(call.Write(PacketMsg(1 + i, clip.packets[i])));
    pb::FrameResult r;
    ASSERT_TRUE(call.Read(&r));
    EXPECT_EQ(r.seq(), 1u);
    call.Cancel();
    EXPECT_EQ(call.Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(WaitForStats(
      *server, [](const pb::Stats& s) { return s.in_flight() == 0 && s.active_streams() == 0; }));
}

// A drain closes the stream's input: the decoder is flushed, so packets whose pictures it still
// held are answered too.
TEST(ServiceVideoTest, DrainFlushesTheDecoderAndAnswersEveryPacket) {
  Gate release;
  Counter held;
  ServerOptions o;
  o.drain_timeout = std::chrono::seconds(30);
  o.wrap_stages = HoldFrame(1, &release, &held);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  const EncodedClip& clip = H264Clip();
  constexpr size_t kPackets = 14;
  // Pictures a decoder gives out for these packets before it is flushed.
  auto dec = CreateVideoDecoder(VideoFormatSpec{VideoCodecId::kH264, ""}, {}).value();
  std::vector<DecodedPicture> before_flush;
  for (size_t i = 0; i < kPackets; ++i) {
    ASSERT_TRUE(dec->Decode({i, clip.packets[i].data, clip.packets[i].pts}, &before_flush).ok());
  }
  ASSERT_LT(before_flush.size(), kPackets) << "the clip's B-frames keep pictures in the decoder";
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(VideoConfig(pb::VIDEO_CODEC_H264, "", 32)));
  for (size_t i = 0; i < kPackets; ++i) ASSERT_TRUE(call.Write(PacketMsg(1 + i, clip.packets[i])));
  ASSERT_TRUE(held.WaitAtLeast(1));
  const uint64_t want = before_flush.size();
  ASSERT_TRUE(WaitForStats(*server, [want](const pb::Stats& s) { return s.frames_in() == want; }));
  std::thread stopper([&] { EXPECT_TRUE(server->Shutdown()); });
  release.Open();
  auto got = call.ReadAll();
  grpc::Status st = call.Finish();
  stopper.join();
  ASSERT_EQ(got.size(), kPackets) << "every packet is answered";
  for (size_t i = 0; i < kPackets; ++i) {
    EXPECT_EQ(got[i].seq(), i + 1);
    EXPECT_EQ(got[i].status(), pb::FRAME_STATUS_OK) << got[i].error();
  }
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("every admitted frame was answered"), std::string::npos)
      << st.error_message();
}

}  // namespace
}  // namespace framepipe

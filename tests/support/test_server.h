// Helpers for tests against a real server on 127.0.0.1:0: a Process call driven with the sync
// client API, frame builders, and stage wrappers that inject delays or hold frames back.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "framepipe/v1/framepipe.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "media/synthetic_source.h"
#include "pipeline/stage.h"
#include "server/server.h"
#include "test_util.h"

namespace framepipe::testing {

namespace pb = ::framepipe::v1;

inline std::unique_ptr<Server> StartTestServer(ServerOptions o) {
  PrimeProcessClocks();
  if (!std::getenv("FRAMEPIPE_TEST_LOGS")) SetLogEnabled(false);
  if (o.listen == ServerOptions{}.listen) o.listen = "127.0.0.1:0";  // else the test's own
  o.backend = "cpu";
  // Metrics off unless a test asks: the exposer takes ~2 s to shut down.
  if (o.metrics == "0.0.0.0:9464") o.metrics = "";
  if (o.workers == 0) o.workers = 2;
  // FRAMEPIPE_TEST_GUARD=off runs a test with gRPC's own listener (to tell a front-door problem
  // from a service one).
  if (const char* g = std::getenv("FRAMEPIPE_TEST_GUARD"); g && std::string(g) == "off") {
    o.guard = false;
  }
  auto s = Server::Start(o);
  if (!s.ok()) {
    ADD_FAILURE() << s.status();
    return nullptr;
  }
  return std::move(s).value();
}

// `window_bytes` > 0 pins the client's HTTP/2 receive window (no BDP growth): a client that
// stops reading then really stops accepting results once that much is buffered.
inline std::shared_ptr<grpc::Channel> Channel(const Server& s, int window_bytes = 0,
                                              const std::string& host = "127.0.0.1") {
  grpc::ChannelArguments args;
  if (window_bytes > 0) {
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, window_bytes);
  }
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(host + ":" + std::to_string(s.port()),
                                   grpc::InsecureChannelCredentials(), args);
}

// Small JPEG frames, rendered once.
inline const std::vector<std::string>& TestJpegs() {
  static const std::vector<std::string>* frames = [] {
    auto* v = new std::vector<std::string>;
    SyntheticSource src({160, 120, 10, 3});
    for (int i = 0; i < 20; ++i) v->push_back(EncodeImage(src.Render(i), Encoding::kJpeg).value());
    return v;
  }();
  return *frames;
}

inline pb::ProcessRequest JpegFrame(uint64_t seq, int64_t capture = 0) {
  pb::ProcessRequest r;
  pb::Frame* f = r.mutable_frame();
  f->set_seq(seq);
  f->set_capture_time_us(capture);
  f->set_encoded(TestJpegs()[seq % TestJpegs().size()]);
  (*f->mutable_tags())["seq"] = std::to_string(seq);
  return r;
}

inline pb::ProcessRequest ConfigMsg(uint32_t max_in_flight,
                                    pb::OverloadPolicy overload = pb::OVERLOAD_POLICY_BLOCK,
                                    uint32_t timeout_ms = 0, const std::string& id = "test") {
  pb::ProcessRequest r;
  auto* c = r.mutable_config();
  c->set_stream_id(id);
  c->set_max_in_flight(max_in_flight);
  c->set_overload(overload);
  c->set_frame_timeout_ms(timeout_ms);
  return r;
}

// One Process call.
class Call {
 public:
  explicit Call(std::shared_ptr<grpc::Channel> ch) : stub_(pb::FramePipeline::NewStub(ch)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    rw_ = stub_->Process(&ctx_);
  }
  bool Write(const pb::ProcessRequest& r) { return rw_->Write(r); }
  void WritesDone() { rw_->WritesDone(); }
  bool Read(pb::FrameResult* r) { return rw_->Read(r); }
  std::vector<pb::FrameResult> ReadAll() {
    std::vector<pb::FrameResult> out;
    pb::FrameResult r;
    while (rw_->Read(&r)) out.push_back(r);
    return out;
  }
  grpc::Status Finish() { return rw_->Finish(); }
  void Cancel() { ctx_.TryCancel(); }

 private:
  std::unique_ptr<pb::FramePipeline::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::ProcessRequest, pb::FrameResult>> rw_;
};

inline pb::Stats GetStats(const Server& s) {
  auto stub = pb::FramePipeline::NewStub(Channel(s));
  grpc::ClientContext ctx;
  pb::Stats st;
  grpc::Status status = stub->GetStats(&ctx, pb::GetStatsRequest(), &st);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return st;
}

// Polls GetStats until `pred` holds (an eventual server-side condition), bounded.
template <typename Pred>
bool WaitForStats(const Server& s, Pred pred, std::chrono::seconds bound = kWaitBound) {
  const auto end = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < end) {
    if (pred(GetStats(s))) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// Wraps the analyse stage: a seeded random delay per frame, and `hook` before it.
inline std::function<Stages(Stages)> WrapAnalyse(
    int max_delay_us, std::function<void(FrameContext&)> hook = nullptr) {
  return [max_delay_us, hook](Stages s) {
    StageFn inner = s.analyse;
    s.analyse = [inner, max_delay_us, hook](FrameContext& ctx) {
      if (hook) hook(ctx);
      if (max_delay_us > 0) {
        std::mt19937 rng(static_cast<uint32_t>(ctx.input.seq * 2654435761u));
        std::this_thread::sleep_for(
            std::chrono::microseconds(std::uniform_int_distribution<int>(0, max_delay_us)(rng)));
      }
      return inner(ctx);
    };
    return s;
  };
}

// Wraps the analyse stage so that the frame with `seq` counts itself in `held` and then waits
// for `release` (a frame stuck in processing, on demand).
inline std::function<Stages(Stages)> HoldFrame(uint64_t seq, Gate* release, Counter* held) {
  return WrapAnalyse(0, [seq, release, held](FrameContext& ctx) {
    if (ctx.input.seq == seq) {
      held->Add();
      release->Wait();
    }
  });
}

inline std::string TagOf(const pb::FrameResult& r, const std::string& key) {
  auto it = r.tags().find(key);
  return it == r.tags().end() ? "" : it->second;
}

}  // namespace framepipe::testing

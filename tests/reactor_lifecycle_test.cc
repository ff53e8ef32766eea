// The Process reactor's lifecycle under every ending, with randomized timing: refused (stream
// limit, draining), bad config, malformed message, bad seq, client cancel before / after frames /
// at a random moment, client deadline, and a drain with clients cancelling and retrying at once.
// Every call must end with the status its path allows, every result that arrives must be in
// order, and the server must neither crash (Finish twice) nor leak a stream or a credit. Runs in
// the default build and under ThreadSanitizer and AddressSanitizer (label service).
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "raw_call.h"
#include "test_server.h"

namespace framepipe {
namespace {

using namespace framepipe::testing;  // NOLINT

enum class Path {
  kComplete,
  kBadConfig,
  kMalformed,
  kBadSeq,
  kCancelBeforeFrame,
  kCancelAfterResults,
  kCancelAtRandomTime,
  kClientDeadline,
  kCount
};

const char* PathName(Path p) {
  static const char* kNames[] = {"complete",         "bad_config",          "malformed",
                                 "bad_seq",          "cancel_before_frame", "cancel_after_results",
                                 "cancel_at_random", "client_deadline"};
  return kNames[static_cast<int>(p)];
}

struct Plan {
  Path path;
  RawCall::Script script;
  std::vector<uint64_t> seqs;  // frames sent, in order
  int cancel_delay_us = -1;    // cancel from another thread after this long (-1: never)
};

Plan MakePlan(Path path, std::mt19937* rng) {
  Plan p;
  p.path = path;
  auto& m = p.script.messages;
  const int frames = std::uniform_int_distribution<int>(1, 6)(*rng);
  m.push_back(Serialized(ConfigMsg(4)));
  uint64_t seq = std::uniform_int_distribution<int>(0, 5)(*rng);
  auto add_frames = [&](int n) {
    for (int i = 0; i < n; ++i) {
      seq += std::uniform_int_distribution<int>(1, 3)(*rng);
      m.push_back(Serialized(JpegFrame(seq)));
      p.seqs.push_back(seq);
    }
  };
  switch (path) {
    case Path::kComplete:
      add_frames(frames);
      break;
    case Path::kBadConfig: {
      pb::ProcessRequest bad = ConfigMsg(4);
      bad.mutable_config()->set_max_in_flight(1000000);  // over --max-stream-in-flight
      m[0] = Serialized(bad);
      add_frames(frames);
      p.seqs.clear();
      break;
    }
    case Path::kMalformed:
      add_frames(frames);
      m.push_back(std::string("\xff\xff\xff\xff\x0f", 5));  // not a ProcessRequest
      m.push_back(Serialized(JpegFrame(seq + 10)));         // never answered
      break;
    case Path::kBadSeq:
      add_frames(frames);
      m.push_back(Serialized(JpegFrame(seq)));  // repeats the last seq
      break;
    case Path::kCancelBeforeFrame:
      p.script.half_close = false;
      p.cancel_delay_us = std::uniform_int_distribution<int>(0, 3000)(*rng);
      break;
    case Path::kCancelAfterResults:
      add_frames(frames);
      p.script.half_close = false;
      p.script.cancel_after_results = std::uniform_int_distribution<int>(0, frames - 1)(*rng);
      if (p.script.cancel_after_results == 0) p.cancel_delay_us = 0;
      break;
    case Path::kCancelAtRandomTime:
      add_frames(frames);
      p.cancel_delay_us = std::uniform_int_distribution<int>(0, 20000)(*rng);
      break;
    case Path::kClientDeadline:
      add_frames(frames);
      p.script.half_close = false;
      p.script.deadline =
          std::chrono::milliseconds(std::uniform_int_distribution<int>(5, 80)(*rng));
      break;
    default:
      break;
  }
  return p;
}

// Results arrived in order and are a prefix of what was sent; `all`: every frame.
void ExpectOrderedPrefix(const Plan& p, const std::vector<pb::FrameResult>& results, bool all,
                         const std::string& where) {
  ASSERT_LE(results.size(), p.seqs.size()) << where;
  if (all) {
    EXPECT_EQ(results.size(), p.seqs.size()) << where;
  }
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].seq(), p.seqs[i]) << where << " result " << i;
    EXPECT_EQ(results[i].status(), pb::FRAME_STATUS_OK) << where << " result " << i;
  }
}

void CheckOutcome(const Plan& p, const grpc::Status& st, const std::vector<pb::FrameResult>& r) {
  const std::string where =
      absl::StrCat(PathName(p.path), ": ", st.error_code(), " ", st.error_message());
  if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {  // refused: any path
    EXPECT_NE(st.error_message().find("concurrent streams"), std::string::npos) << where;
    EXPECT_TRUE(r.empty()) << where;
    return;
  }
  switch (p.path) {
    case Path::kComplete:
      EXPECT_TRUE(st.ok()) << where;
      ExpectOrderedPrefix(p, r, true, where);
      break;
    case Path::kBadConfig:
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << where;
      EXPECT_NE(st.error_message().find("max_in_flight"), std::string::npos) << where;
      EXPECT_TRUE(r.empty()) << where;
      break;
    case Path::kMalformed:
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << where;
      EXPECT_NE(
          st.error_message().find(absl::StrCat("message ", p.seqs.size() + 2, " of the stream")),
          std::string::npos)
          << where;
      EXPECT_NE(st.error_message().find(absl::StrCat("after frame seq=", p.seqs.back())),
                std::string::npos)
          << where;
      ExpectOrderedPrefix(p, r, true, where);
      break;
    case Path::kBadSeq:
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << where;
      EXPECT_NE(st.error_message().find("strictly increasing"), std::string::npos) << where;
      ExpectOrderedPrefix(p, r, true, where);
      break;
    case Path::kCancelBeforeFrame:
    case Path::kCancelAfterResults:
      EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << where;
      ExpectOrderedPrefix(p, r, false, where);
      break;
    case Path::kCancelAtRandomTime:
      EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::CANCELLED) << where;
      ExpectOrderedPrefix(p, r, st.ok(), where);
      break;
    case Path::kClientDeadline:
      EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << where;
      ExpectOrderedPrefix(p, r, false, where);
      break;
    default:
      break;
  }
}

// Runs `plans` as concurrent calls; cancels from a helper thread where a plan says so.
std::vector<std::pair<grpc::Status, std::vector<pb::FrameResult>>> RunCalls(
    const std::shared_ptr<grpc::Channel>& ch, const std::vector<Plan>& plans) {
  std::vector<std::unique_ptr<RawCall>> calls;
  for (const Plan& p : plans) calls.push_back(std::make_unique<RawCall>(ch, p.script));
  std::vector<std::thread> cancellers;
  for (size_t i = 0; i < plans.size(); ++i) {
    if (plans[i].cancel_delay_us < 0) continue;
    cancellers.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::microseconds(plans[i].cancel_delay_us));
      calls[i]->Cancel();
    });
  }
  std::vector<std::pair<grpc::Status, std::vector<pb::FrameResult>>> out;
  for (auto& c : calls) {
    grpc::Status st = c->Await();
    out.emplace_back(st, c->results());
  }
  for (auto& t : cancellers) t.join();
  return out;
}

ServerOptions LifecycleServer() {
  ServerOptions o;
  o.max_streams = 6;  // small: waves of 10 calls are partly refused
  o.max_streams_per_peer = 6;
  o.wrap_stages = WrapAnalyse(2000);
  return o;
}

TEST(ReactorLifecycleTest, EveryPathEndsOnceInOrderWithoutLeaks) {
  auto server = StartTestServer(LifecycleServer());
  ASSERT_TRUE(server);
  auto ch = Channel(*server);
  std::mt19937 rng(20261203);
  int refused = 0;
  for (int wave = 0; wave < 12; ++wave) {
    std::vector<Plan> plans;
    for (int i = 0; i < 10; ++i) {
      const auto path = static_cast<Path>(
          std::uniform_int_distribution<int>(0, static_cast<int>(Path::kCount) - 1)(rng));
      plans.push_back(MakePlan(path, &rng));
    }
    auto outcomes = RunCalls(ch, plans);
    for (size_t i = 0; i < plans.size(); ++i) {
      CheckOutcome(plans[i], outcomes[i].first, outcomes[i].second);
      refused += outcomes[i].first.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    }
  }
  EXPECT_GT(refused, 0) << "no call hit the stream limit: the refused path went untested";
  EXPECT_TRUE(WaitForStats(
      *server, [](const pb::Stats& s) { return s.active_streams() == 0 && s.in_flight() == 0; }));
}

// The observed crash: with --max-streams 1, a second call is refused, and cancelling it right
// away made gRPC see a second Finish (SIGABRT).
TEST(ReactorLifecycleTest, RefusedCallCancelledAtOnceDoesNotFinishTwice) {
  ServerOptions o;
  o.max_streams = 1;
  o.max_streams_per_peer = 1;
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  auto ch = Channel(*server);
  RawCall::Script hold;
  hold.messages = {Serialized(ConfigMsg(4))};
  hold.half_close = false;
  auto holder = std::make_unique<RawCall>(ch, hold);
  ASSERT_TRUE(WaitForStats(*server, [](const pb::Stats& s) { return s.active_streams() == 1; }));
  std::mt19937 rng(7);
  for (int i = 0; i < 100; ++i) {
    RawCall::Script s;
    s.half_close = false;
    // On the heap: gRPC's threads write the status into the call object, and a stack slot
    // reused by the next iteration would look like a race to ThreadSanitizer.
    auto refused = std::make_unique<RawCall>(ch, s);
    if (i % 2) {
      std::this_thread::sleep_for(
          std::chrono::microseconds(std::uniform_int_distribution<int>(0, 500)(rng)));
    }
    refused->Cancel();
    const grpc::Status st = refused->Await();
    EXPECT_TRUE(st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                st.error_code() == grpc::StatusCode::CANCELLED)
        << st.error_code() << " " << st.error_message();
  }
  // The server is alive and the held stream still works.
  EXPECT_EQ(GetStats(*server).active_streams(), 1u);
  holder->Cancel();
  EXPECT_EQ(holder->Await().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitForStats(*server, [](const pb::Stats& s) { return s.active_streams() == 0; }));
}

// A drain while calls run and new ones keep arriving and being cancelled at once (the second
// observed crash): Shutdown completes, and every call ends with a status a drain allows.
TEST(ReactorLifecycleTest, DrainWithClientsCancellingAndRetrying) {
  std::mt19937 rng(99);
  for (int round = 0; round < 4; ++round) {
    ServerOptions o;
    o.wrap_stages = WrapAnalyse(3000);
    o.drain_timeout = std::chrono::seconds(30);
    auto server = StartTestServer(o);
    ASSERT_TRUE(server);
    auto ch = Channel(*server);
    std::vector<Plan> running;
    for (int i = 0; i < 6; ++i) {
      Plan p = MakePlan(Path::kComplete, &rng);
      p.script.half_close = i % 2 == 0;
      running.push_back(std::move(p));
    }
    std::vector<std::unique_ptr<RawCall>> calls;
    for (const Plan& p : running) calls.push_back(std::make_unique<RawCall>(ch, p.script));
    std::thread shutdown([&] {
      std::this_thread::sleep_for(
          std::chrono::microseconds(std::uniform_int_distribution<int>(0, 5000)(rng)));
      server->Shutdown();
    });
    // Clients that open calls during the drain and cancel them at once, again and again.
    for (int i = 0; i < 40; ++i) {
      RawCall::Script s;
      s.messages = {Serialized(ConfigMsg(2))};
      s.half_close = false;
      auto c = std::make_unique<RawCall>(ch, s);
      c->Cancel();
      const grpc::StatusCode code = c->Await().error_code();
      EXPECT_TRUE(code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::UNAVAILABLE)
          << code;
    }
    shutdown.join();
    for (size_t i = 0; i < calls.size(); ++i) {
      const grpc::Status st = calls[i]->Await();
      // OK or UNAVAILABLE from the service; a call that reached gRPC after the drain began but
      // before its connection closed is cancelled by gRPC itself (RST_STREAM CANCEL) before the
      // service sees it: then nothing was answered.
      const bool never_admitted =
          st.error_code() == grpc::StatusCode::CANCELLED && calls[i]->results().empty();
      EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::UNAVAILABLE || never_admitted)
          << "call " << i << ": " << st.error_code() << " " << st.error_message();
      ExpectOrderedPrefix(running[i], calls[i]->results(), st.ok(), "drain");
    }
  }
}

}  // namespace
}  // namespace framepipe

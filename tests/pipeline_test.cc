// Pipeline core: ordering, exactly-once results, credits and bounds, failures, deadlines,
// DROP_OLDEST, cancel and shutdown. Stages are fakes with seeded random delays; latches force
// worst-case completion orders; every test asserts the exact output sequence.
#include "pipeline/pipeline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "fake_clock.h"
#include "pipeline_sink.h"
#include "test_util.h"

namespace framepipe {
namespace {

using testing::Counter;
using testing::FakeClock;
using testing::Gate;
using testing::Got;
using testing::kWaitBound;
using testing::Sink;

// Deterministic pseudo-random delay for (seed, seq, stage) in [0, max_us].
int DelayUs(uint32_t seed, uint64_t seq, int stage, int max_us) {
  if (max_us <= 0) return 0;
  std::mt19937 rng(seed ^ static_cast<uint32_t>(seq * 2654435761u) ^ (stage * 40503u));
  return std::uniform_int_distribution<int>(0, max_us)(rng);
}

// Fake stages: each sleeps a seeded random time, then leaves a fingerprint of the frame in the
// result so tests can check no result was mixed up with another frame's. `hook` (optional) runs
// first and may fail, throw or block the frame.
struct FakeStages {
  uint32_t seed = 1;
  int max_delay_us = 200;
  std::function<absl::Status(int stage, FrameContext&)> hook;
  std::atomic<int> running{0};
  std::atomic<int> peak_running{0};

  Stages Make() {
    Stages s;
    auto body = [this](int stage) {
      return [this, stage](FrameContext& ctx) -> absl::Status {
        int now = ++running;
        int peak = peak_running.load();
        while (now > peak && !peak_running.compare_exchange_weak(peak, now)) {
        }
        struct Dec {
          std::atomic<int>& r;
          ~Dec() { --r; }
        } dec{running};
        if (hook) {
          absl::Status st = hook(stage, ctx);
          if (!st.ok()) return st;
        }
        int us = DelayUs(seed, ctx.input.seq, stage, max_delay_us);
        if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
        if (stage == 1) ctx.result->analysis.width = static_cast<uint32_t>(ctx.input.seq);
        if (stage == 2) ctx.result->enrichment.keypoints = static_cast<uint32_t>(ctx.input.seq * 2);
        return absl::OkStatus();
      };
    };
    s.decode = body(0);
    s.analyse = body(1);
    s.enrich = body(2);
    return s;
  }
};

// Counts credits the way a metrics backend would; tracks the peak.
class CreditObserver : public PipelineObserver {
 public:
  void OnAdmitted(const StreamOptions&) override {
    int now = ++in_flight;
    int peak = peak_in_flight.load();
    while (now > peak && !peak_in_flight.compare_exchange_weak(peak, now)) {
    }
  }
  void OnCreditReturned() override { --in_flight; }
  void OnReorderInsert(uint32_t depth) override {
    uint32_t peak = peak_depth.load();
    while (depth > peak && !peak_depth.compare_exchange_weak(peak, depth)) {
    }
  }
  std::atomic<int> in_flight{0};
  std::atomic<int> peak_in_flight{0};
  std::atomic<uint32_t> peak_depth{0};
};

FrameInput MakeFrame(uint64_t seq) {
  FrameInput f;
  f.seq = seq;
  f.capture_time_us = static_cast<int64_t>(seq) * 1000;
  f.kind = PayloadKind::kEncoded;
  f.data = std::string(64, static_cast<char>(seq & 0xFF));
  f.tags = {{"n", std::to_string(seq)}};
  return f;
}

std::unique_ptr<Pipeline> MakePipeline(FakeStages& fakes, int workers, uint32_t global_max,
                                       PipelineObserver* obs = nullptr,
                                       const TimeSource* time = nullptr) {
  PipelineOptions o;
  o.workers = workers;
  o.global_max_in_flight = global_max;
  o.observer = obs;
  o.time = time;
  auto p = Pipeline::Create(o, fakes.Make());
  EXPECT_TRUE(p.ok()) << p.status();
  return std::move(p).value();
}

// Sequence numbers with gaps: 5, 8, 11, ...
uint64_t SeqOf(uint64_t i) { return 5 + 3 * i; }

void ExpectInOrder(const std::vector<Got>& got, size_t n) {
  ASSERT_EQ(got.size(), n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(got[i].seq, SeqOf(i)) << "position " << i;
    ASSERT_EQ(got[i].tag, std::to_string(SeqOf(i))) << "tags not echoed for position " << i;
  }
}

TEST(PipelineTest, SingleStreamExactOrderUnderRandomDelays) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    FakeStages fakes;
    fakes.seed = seed;
    CreditObserver obs;
    auto p = MakePipeline(fakes, 4, 64, &obs);
    Sink sink;
    auto s = p->OpenStream(sink.Options("s", 8));
    ASSERT_TRUE(s.ok());
    constexpr int kFrames = 400;
    for (int i = 0; i < kFrames; ++i) ASSERT_TRUE((*s)->Submit(MakeFrame(SeqOf(i))).ok());
    (*s)->Close();
    ASSERT_TRUE(sink.WaitComplete());
    auto got = sink.got();
    ExpectInOrder(got, kFrames);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].status, FrameStatus::kOk);
      EXPECT_EQ(got[i].width_mark, SeqOf(i));
      EXPECT_EQ(got[i].keypoints_mark, SeqOf(i) * 2);
    }
    EXPECT_EQ(sink.complete_calls(), 1);
    EXPECT_LE(obs.peak_in_flight.load(), 8);
    EXPECT_LE(p->counters().peak_in_flight, 8u);
    EXPECT_LE((*s)->counters().peak_outstanding, 8u);
    EXPECT_EQ((*s)->counters().outstanding, 0u);
    EXPECT_EQ(obs.in_flight.load(), 0);
    EXPECT_EQ(p->counters().in_flight, 0u);
    EXPECT_EQ(p->counters().reorder_depth, 0u);
    EXPECT_GT(obs.peak_depth.load(), 1u) << "random delays should have reordered something";
  }
}

TEST(PipelineTest, WorkersRunConcurrently) {
  // Two frames must be inside decode at the same time for either to finish: only possible if
  // the pipeline really runs `workers` threads (TBB's default pool would give one on 2 cores).
  FakeStages fakes;
  fakes.max_delay_us = 0;
  Counter inside;
  fakes.hook = [&](int stage, FrameContext&) {
    if (stage == 0) {
      inside.Add();
      if (!inside.WaitAtLeast(2, std::chrono::seconds(20))) {
        return absl::InternalError("second worker never arrived");
      }
    }
    return absl::OkStatus();
  };
  auto p = MakePipeline(fakes, 2, 16);
  Sink sink;
  auto s = p->OpenStream(sink.Options("s", 4));
  ASSERT_TRUE((*s)->Submit(MakeFrame(SeqOf(0))).ok());
  ASSERT_TRUE((*s)->Submit(MakeFrame(SeqOf(1))).ok());
  (*s)->Close();
  ASSERT_TRUE(sink.WaitComplete());
  auto got = sink.got();
  ExpectInOrder(got, 2);
  EXPECT_EQ(got[0].status, FrameStatus::kOk) << got[0].error;
  EXPECT_EQ(got[1].status, FrameStatus::kOk) << got[1].error;
}

TEST(PipelineTest, FailuresBecomeInOrderResultsAndStreamGoesOn) {
  FakeStages fakes;
  fakes.hook = [](int stage, FrameContext& ctx) -> absl::Status {
    const uint64_t i = (ctx.input.seq - 5) / 3;
    if (stage == 0 && i % 7 == 3) return absl::InvalidArgumentError("bad bytes");
    if (stage == 1 && i % 11 == 5) throw std::runtime_error("kaboom");
    if (stage == 2 && i % 13 == 4) return absl::InternalError("enrich broke");
    if (stage == 1 && i % 17 == 9) return absl::DeadlineExceededError("too slow");
    if (stage == 2 && i % 19 == 2) throw 42;
    return absl::OkStatus();
  };
  auto p = MakePipeline(fakes, 3, 64);
  Sink sink;
  auto s = p->OpenStream(sink.Options("s", 6));
  constexpr int kFrames = 300;
  for (int i = 0; i < kFrames; ++i) ASSERT_TRUE((*s)->Submit(MakeFrame(SeqOf(i))).ok());
  (*s)->Close();
  ASSERT_TRUE(sink.WaitComplete());
  auto got = sink.got();
  ExpectInOrder(got, kFrames);
  for (int i = 0; i < kFrames; ++i) {
    FrameStatus want = FrameStatus::kOk;
    std::string text;
    if (i % 7 == 3) {
      want = FrameStatus::kInvalidArgument;
      text = "bad bytes";
    } else if (i % 11 == 5) {
      want = FrameStatus::kInternal;
      text = "analyse stage failed: threw an exception: kaboom";
    } else if (i % 17 == 9) {
      want = FrameStatus::kDeadlineExceeded;
      text = "too slow";
    } else if (i % 13 == 4) {
      want = FrameStatus::kInternal;
      text = "enrich stage failed: enrich broke";
    } else if (i % 19 == 2) {
      want = FrameStatus::kInternal;
      text = "enrich stage failed: threw an exception of unknown type";
    }
    EXPECT_EQ(got[i].status, want) << "frame " << i << ": " << got[i].error;
    if (want != FrameStatus::kOk) {
      EXPECT_NE(got[i].error.find("frame seq=" + std::to_string(SeqOf(i))), std::string::npos)
          << got[i].error;
      EXPECT_NE(got[i].error.find(text), std::string::npos) << got[i].error;
      EXPECT_EQ(got[i].width_mark, 0u) << "a failed frame carries no analysis";
    } else {
      EXPECT_EQ(got[i].width_mark, SeqOf(i));
    }
  }
  EXPECT_EQ(p->counters().in_flight, 0u);
}

TEST(PipelineTest, HeadOfLineFrameHeldBackDeliversEverythingInOrder) {
  // Frame 0 is stuck in analyse until frames 1..7 are all waiting in the reorder buffer: worst
  // case for the resequencer. Nothing may come out before frame 0, then all 8 in order.
  struct InsertCounter : CreditObserver {
    Counter inserted;
    void OnReorderInsert(uint32_t depth) override {
      CreditObserver::OnReorderInsert(depth);
      inserted.Add();
    }
  } obs;
  FakeStages fakes;
  fakes.max_delay_us = 0;
  fakes.hook = [&](int stage, FrameContext& ctx) {
    if (stage == 1 && ctx.input.seq == SeqOf(0)) {
      EXPECT_TRUE(obs.inserted.WaitAtLeast(7));
    }
    return absl::OkStatus();
  };
  auto p = MakePipeline(fakes, 2, 64, &obs);
  Sink sink;
  auto s = p->OpenStream(sink.Options("s", 8));
  for (int i = 0; i < 8; ++i) ASSERT_TRUE((*s)->Submit(MakeFrame(SeqOf(i))).ok());
  (*s)->Close();
  ASSERT_TRUE(sink.WaitComplete());
  ExpectInOrder(sink.got(), 8);
  EXPECT_EQ(obs.peak_depth.load(), 8u) << "frames 1..7 must have waited for frame 0";
}

TEST(PipelineTest, OneStreamsStuckFrameDoesNotHoldBackOthers) {
  FakeStages fakes;
  fakes.max_delay_us = 100;
  Gate release;
  fakes.hook = [&](int stage, FrameContext& ctx) {
    if (stage == 0 && ctx.input.tags.size() > 1 && ctx.input.seq == SeqOf(0)) {
      EXPECT_TRUE(release.Wait());
    }
    return absl::OkStatus();
  };
  auto p = MakePipeline(fakes, 3, 256);
  constexpr int kStreams = 6, kFrames = 150;
  std::vector<std::unique_ptr<Sink>> sinks;
  std::vector<std::unique_ptr<Stream>> streams;
  for (int k = 0; k < kStreams; ++k) {
    sinks.push_back(std::make_unique<Sink>());
    auto s = p->OpenStream(sinks[k]->Options("s" + std::to_string(k), 8));
    ASSERT_TRUE(s.ok());
    streams.push_back(std::move(s).value());
  }
  // Stream 0's first frame blocks in decode until every other stream has completed.
  FrameInput stuck = MakeFrame(SeqOf(0));
  stuck.tags.push_back({"stuck", "1"});
  ASSERT_TRUE(streams[0]->Submit(std::move(stuck)).ok());
  std::vector<std::thread> producers;
  for (int k = 1; k < kStreams; ++k) {
    producers.emplace_back([&, k] {
      for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(streams[k]->Submit(MakeFrame(SeqOf(i))).ok());
      streams[k]->Close();
    });
  }
  for (auto& t : producers) t.join();
  for (int k = 1; k < kStreams; ++k) {
    ASSERT_TRUE(sinks[k]->WaitComplete()) << "stream " << k << " was held back by stream 0";
    ExpectInOrder(sinks[k]->got(), kFrames);
  }
  EXPECT_TRUE(sinks[0]->got().empty());
  release.Open();
  for (int i = 1; i < 20; ++i) ASSERT_TRUE(streams[0]->Submit(MakeFrame(SeqOf(i))).ok());
  streams[0]->Close();
  ASSERT_TRUE(sinks[0]->WaitComplete());
  ExpectInOrder(sinks[0]->got(), 20);
}

// One producer thread per stream submits `frames` frames (blocking) and closes it; then every
// stream's results must be complete and in order.
void ProduceAllAndExpectInOrder(const std::vector<std::unique_ptr<Stream>>& streams,
                                const std::vector<std::unique_ptr<Sink>>& sinks, int frames) {
  std::vector<std::thread> producers;
  for (size_t k = 0; k < streams.size(); ++k) {
    producers.emplace_back([&, k] {
      for (int i = 0; i < frames; ++i) ASSERT_TRUE(streams[k]->Submit(MakeFrame(SeqOf(i))).ok());
      streams[k]->Close();
    });
  }
  for (auto& t : producers) t.join();
  for (size_t k = 0; k < streams.size(); ++k) {
    ASSERT_TRUE(sinks[k]->WaitComplete());
    ExpectInOrder(sinks[k]->got(), static_cast<size_t>(frames));
  }
}

TEST(PipelineTest, ManyStreamsConcurrentProducersGlobalBound) {
  FakeStages fakes;
  fakes.seed = 9;
  fakes.max_delay_us = 300;
  CreditObserver obs;
  constexpr uint32_t kGlobal = 10;
  auto p = MakePipeline(fakes, 4, kGlobal, &obs);
  constexpr int kStreams = 8, kFrames = 120;
  std::vector<std::unique_ptr<Sink>> sinks;
  std::vector<std::unique_ptr<Stream>> streams(kStreams);
  for (int k = 0; k < kStreams; ++k) {
    sinks.push_back(std::make_unique<Sink>());
    auto s = p->OpenStream(sinks[k]->Options("s" + std::to_string(k), 4));
    ASSERT_TRUE(s.ok());
    streams[k] = std::move(s).value();
  }
  ProduceAllAndExpectInOrder(streams, sinks, kFrames);
  for (int k = 0; k < kStreams; ++k) EXPECT_LE(streams[k]->counters().peak_outstanding, 4u);
  EXPECT_LE(obs.peak_in_flight.load(), static_cast<int>(kGlobal));
  EXPECT_LE(p->counters().peak_in_flight, kGlobal);
  EXPECT_GE(obs.peak_in_flight.load(), 4) << "the global window was never used";
  EXPECT_EQ(obs.in_flight.load(), 0);
  auto c = p->counters();
  EXPECT_EQ(c.admitted, static_cast<uint64_t>(kStreams * kFrames));
  EXPECT_EQ(c.delivered, c.admitted);
  EXPECT_EQ(c.by_status[static_cast<int>(FrameStatus::kOk)], c.admitted);
}

TEST(PipelineTest, CreditHeldUntilConsumerReleasesIt) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  auto p = MakePipeline(fakes, 2, 64);
  Sink sink;
  sink.set_hold_credits(true);
  Counter credit_calls;
  StreamOptions o = sink.Options("s", 3);
  o.on_credit = [&] { credit_calls.Add(); };
  auto s = std::move(p->OpenStream(o)).value();
  for (int i = 0; i < 3; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    ASSERT_EQ(s->TryAdmit(f), AdmitOutcome::kAdmitted);
  }
  ASSERT_TRUE(sink.WaitCount(3));
  // All three results were delivered, but the consumer still holds their credits.
  FrameInput f = MakeFrame(SeqOf(3));
  EXPECT_EQ(s->TryAdmit(f), AdmitOutcome::kNoCredit);
  EXPECT_EQ(f.seq, SeqOf(3)) << "a refused frame is not consumed";
  EXPECT_EQ(credit_calls.value(), 0);
  sink.ReleaseHeld(1);
  ASSERT_TRUE(credit_calls.WaitAtLeast(1));
  EXPECT_EQ(s->TryAdmit(f), AdmitOutcome::kAdmitted);
  ASSERT_TRUE(sink.WaitCount(4));
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
  ExpectInOrder(sink.got(), 4);
  EXPECT_EQ(p->counters().in_flight, 3u);
  sink.ReleaseHeld();
  EXPECT_EQ(p->counters().in_flight, 0u);
}

TEST(PipelineTest, GlobalLimitWakesWaitingStreamsInTurn) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  auto p = MakePipeline(fakes, 2, 2);
  Sink a, b;
  a.set_hold_credits(true);
  Counter b_wakes;
  StreamOptions ob = b.Options("b", 4);
  ob.on_credit = [&] { b_wakes.Add(); };
  auto sa = std::move(p->OpenStream(a.Options("a", 4))).value();
  auto sb = std::move(p->OpenStream(ob)).value();
  for (int i = 0; i < 2; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    ASSERT_EQ(sa->TryAdmit(f), AdmitOutcome::kAdmitted);
  }
  ASSERT_TRUE(a.WaitCount(2));
  FrameInput fb = MakeFrame(SeqOf(0));
  EXPECT_EQ(sb->TryAdmit(fb), AdmitOutcome::kNoCredit) << "global limit of 2 is used by a";
  a.ReleaseHeld(1);
  ASSERT_TRUE(b_wakes.WaitAtLeast(1));
  EXPECT_EQ(sb->TryAdmit(fb), AdmitOutcome::kAdmitted);
  sb->Close();
  ASSERT_TRUE(b.WaitComplete());
  ExpectInOrder(b.got(), 1);
  a.ReleaseHeld();
}

TEST(PipelineTest, DropOldestAnswersQueuedFramesInOrder) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  Gate release;
  Counter decoding;
  fakes.hook = [&](int stage, FrameContext& ctx) {
    if (stage == 0 && ctx.input.seq == SeqOf(0)) {
      decoding.Add();
      EXPECT_TRUE(release.Wait());
    }
    return absl::OkStatus();
  };
  // One worker: frame 0 occupies it, everything after stays queued and droppable.
  auto p = MakePipeline(fakes, 1, 64);
  Sink sink;
  StreamOptions o = sink.Options("live", 3);
  o.overload = OverloadPolicy::kDropOldest;
  auto s = std::move(p->OpenStream(o)).value();
  FrameInput f0 = MakeFrame(SeqOf(0));
  ASSERT_EQ(s->TryAdmit(f0), AdmitOutcome::kAdmitted);
  ASSERT_TRUE(decoding.WaitAtLeast(1));
  for (int i = 1; i <= 5; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    ASSERT_EQ(s->TryAdmit(f), AdmitOutcome::kAdmitted) << "frame " << i;
  }
  // Frame 0 runs; 1, 2, 3 were dropped for 3, 4, 5; their DROPPED results wait behind frame 0,
  // and 2 x max_in_flight = 6 results are now outstanding: frame 6 has to wait.
  FrameInput f6 = MakeFrame(SeqOf(6));
  EXPECT_EQ(s->TryAdmit(f6), AdmitOutcome::kNoCredit);
  release.Open();
  ASSERT_TRUE(s->Submit(std::move(f6)).ok());
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
  constexpr int kFrames = 7;
  auto got = sink.got();
  ExpectInOrder(got, kFrames);
  for (int i = 0; i < kFrames; ++i) {
    const bool dropped = i >= 1 && i <= 3;
    EXPECT_EQ(got[i].status, dropped ? FrameStatus::kDropped : FrameStatus::kOk) << "frame " << i;
    if (dropped) {
      EXPECT_NE(got[i].error.find("DROP_OLDEST"), std::string::npos);
    }
  }
  EXPECT_EQ(s->counters().dropped, 3u);
  EXPECT_EQ(p->counters().in_flight, 0u);
}

TEST(PipelineTest, DropOldestStillBoundedByUnconsumedResults) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  auto p = MakePipeline(fakes, 2, 64);
  Sink sink;
  sink.set_hold_credits(true);
  StreamOptions o = sink.Options("live", 2);
  o.overload = OverloadPolicy::kDropOldest;
  auto s = std::move(p->OpenStream(o)).value();
  int admitted = 0;
  for (int i = 0; i < 10; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    if (s->TryAdmit(f) != AdmitOutcome::kAdmitted) break;
    ++admitted;
    ASSERT_TRUE(sink.WaitCount(admitted));  // each result delivered but never consumed
  }
  EXPECT_EQ(admitted, 4) << "2 x max_in_flight results may wait for a slow consumer, no more";
  sink.ReleaseHeld();
}

TEST(PipelineTest, HungFrameGetsDeadlineExceededAndLaterFramesFlow) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  Gate release;
  Counter hung;
  fakes.hook = [&](int stage, FrameContext& ctx) {
    if (stage == 1 && ctx.input.seq == SeqOf(3)) {
      hung.Add();
      EXPECT_TRUE(release.Wait());
    }
    return absl::OkStatus();
  };
  // Deadlines read a fake clock: only the test moves time, so only the frame the test means to
  // expire does, whatever the machine's speed.
  FakeClock clock;
  auto p = MakePipeline(fakes, 2, 64, nullptr, &clock);
  Sink sink;
  StreamOptions o = sink.Options("s", 4);
  o.frame_timeout = std::chrono::milliseconds(1500);
  auto s = std::move(p->OpenStream(o)).value();
  constexpr int kFrames = 12;
  // Frames 0-3 are admitted at t0 (deadline t0 + 1.5 s); 0-2 come back, 3 hangs in its stage.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(s->Submit(MakeFrame(SeqOf(i))).ok());
  ASSERT_TRUE(hung.WaitAtLeast(1));
  ASSERT_TRUE(sink.WaitCount(3));
  // At t0 + 1 s the rest are submitted (deadlines t0 + 2.5 s and later; frames from 7 on wait for
  // credits, which come back once frame 3 is answered).
  clock.Advance(std::chrono::seconds(1));
  std::thread producer([&] {
    for (int i = 4; i < kFrames; ++i) EXPECT_TRUE(s->Submit(MakeFrame(SeqOf(i))).ok());
    s->Close();
  });
  EXPECT_EQ(sink.got().size(), 3u) << "nothing passes the hung frame before its deadline";
  // t0 + 1.5 s: frame 3's deadline, no one else's.
  clock.Advance(std::chrono::milliseconds(500));
  // Frame 3 is still hung in its stage body, yet every result - frame 3's included - arrives.
  ASSERT_TRUE(sink.WaitComplete());
  producer.join();
  EXPECT_FALSE(release.is_open());
  auto got = sink.got();
  ExpectInOrder(got, kFrames);
  for (int i = 0; i < kFrames; ++i) {
    EXPECT_EQ(got[i].status, i == 3 ? FrameStatus::kDeadlineExceeded : FrameStatus::kOk)
        << "frame " << i << ": " << got[i].error;
  }
  EXPECT_NE(got[3].error.find("deadline of 1500 ms"), std::string::npos) << got[3].error;
  EXPECT_EQ(p->counters().in_flight, 0u) << "the hung frame's credit was returned";
  release.Open();
}

TEST(PipelineTest, DeadlinesWithSlowStagesKeepExactlyOnceAndOrder) {
  FakeStages fakes;
  fakes.seed = 4;
  fakes.max_delay_us = 8000;
  auto p = MakePipeline(fakes, 2, 64);
  Sink sink;
  StreamOptions o = sink.Options("s", 8);
  o.frame_timeout = std::chrono::milliseconds(15);
  auto s = std::move(p->OpenStream(o)).value();
  constexpr int kFrames = 120;
  for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(s->Submit(MakeFrame(SeqOf(i))).ok());
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
  auto got = sink.got();
  ExpectInOrder(got, kFrames);
  int late = 0;
  for (auto& g : got) {
    ASSERT_TRUE(g.status == FrameStatus::kOk || g.status == FrameStatus::kDeadlineExceeded);
    if (g.status == FrameStatus::kDeadlineExceeded) ++late;
  }
  EXPECT_GT(late, 0) << "stages of up to 3x8 ms against a 15 ms deadline must miss some";
  EXPECT_EQ(p->counters().in_flight, 0u);
}

TEST(PipelineTest, CancelReturnsCreditsStopsCallbacksAndOthersGoOn) {
  FakeStages fakes;
  fakes.max_delay_us = 2000;
  CreditObserver obs;
  auto p = MakePipeline(fakes, 2, 64, &obs);
  Sink victim, other;
  auto sv = std::move(p->OpenStream(victim.Options("victim", 8))).value();
  auto so = std::move(p->OpenStream(other.Options("other", 8))).value();
  std::thread prod([&] {
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(so->Submit(MakeFrame(SeqOf(i))).ok());
    so->Close();
  });
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(sv->Submit(MakeFrame(SeqOf(i))).ok());
  ASSERT_TRUE(victim.WaitCount(1));
  sv->Cancel();
  victim.MarkCancelled();
  FrameInput f = MakeFrame(SeqOf(100));
  EXPECT_EQ(sv->TryAdmit(f), AdmitOutcome::kClosed);
  prod.join();
  ASSERT_TRUE(other.WaitComplete());
  ExpectInOrder(other.got(), 200);
  EXPECT_EQ(victim.late_callbacks(), 0);
  EXPECT_EQ(victim.complete_calls(), 0);
  auto vg = victim.got();
  for (size_t i = 0; i < vg.size(); ++i) EXPECT_EQ(vg[i].seq, SeqOf(i));
  // Cancelled frames still in the graph drain out without results; credits are all back.
  EXPECT_TRUE(p->Stop(std::chrono::seconds(10)));
  EXPECT_EQ(obs.in_flight.load(), 0);
  EXPECT_EQ(p->counters().in_flight, 0u);
}

TEST(PipelineTest, CancelFromInsideOnResultDoesNotDeadlock) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  auto p = MakePipeline(fakes, 2, 64);
  std::unique_ptr<Stream> s;
  std::atomic<int> seen{0};
  Gate cancelled;
  StreamOptions o;
  o.id = "self";
  o.max_in_flight = 4;
  o.on_result = [&](Delivery) {
    if (++seen == 2) {
      s->Cancel();
      cancelled.Open();
    }
  };
  s = std::move(p->OpenStream(o)).value();
  for (int i = 0; i < 4; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    if (s->TryAdmit(f) != AdmitOutcome::kAdmitted) break;
  }
  ASSERT_TRUE(cancelled.Wait());
  EXPECT_TRUE(p->Stop(std::chrono::seconds(10)));
  EXPECT_EQ(p->counters().in_flight, 0u);
}

TEST(PipelineTest, StopDrainsAdmittedFrames) {
  FakeStages fakes;
  fakes.max_delay_us = 1000;
  auto p = MakePipeline(fakes, 2, 64);
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 16))).value();
  for (int i = 0; i < 16; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    ASSERT_EQ(s->TryAdmit(f), AdmitOutcome::kAdmitted);
  }
  EXPECT_TRUE(p->Stop(std::chrono::seconds(30)));
  ExpectInOrder(sink.got(), 16);
  EXPECT_EQ(sink.complete_calls(), 1);
  EXPECT_FALSE(p->OpenStream(sink.Options("late", 1)).ok());
  FrameInput f = MakeFrame(SeqOf(16));
  EXPECT_EQ(s->TryAdmit(f), AdmitOutcome::kClosed);
}

TEST(PipelineTest, StopCancelsWhatDoesNotDrainInTime) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  Gate release;
  fakes.hook = [&](int stage, FrameContext& ctx) {
    if (stage == 0 && ctx.input.seq == SeqOf(0)) {
      EXPECT_TRUE(release.Wait());
    }
    return absl::OkStatus();
  };
  // The stuck body is released only once Stop() has given up and cancelled the stream (which
  // returns the frame's credit): Stop then waits for the graph to go idle.
  struct ReleaseOnCancel : CreditObserver {
    Gate* gate;
    void OnCreditReturned() override {
      CreditObserver::OnCreditReturned();
      gate->Open();
    }
  } obs;
  obs.gate = &release;
  auto p = MakePipeline(fakes, 2, 64, &obs);
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 4))).value();
  FrameInput f = MakeFrame(SeqOf(0));
  ASSERT_EQ(s->TryAdmit(f), AdmitOutcome::kAdmitted);
  EXPECT_FALSE(p->Stop(std::chrono::milliseconds(100)));
  EXPECT_TRUE(release.is_open());
  EXPECT_TRUE(sink.got().empty());
  EXPECT_EQ(sink.complete_calls(), 0);
  EXPECT_EQ(p->counters().in_flight, 0u);
  EXPECT_EQ(obs.in_flight.load(), 0);
}

TEST(PipelineTest, OrderedStageSeesEveryResultInOrder) {
  FakeStages fakes;
  fakes.max_delay_us = 300;
  Stages stages = fakes.Make();
  std::mutex mu;
  std::map<std::string, std::vector<uint64_t>> seen;
  std::atomic<int> streams_made{0};
  stages.ordered = [&]() -> OrderedFn {
    std::string id = "stream" + std::to_string(streams_made++);
    return [&, id](FrameResult& r) {
      std::lock_guard<std::mutex> l(mu);
      seen[id].push_back(r.seq);
      r.enrichment.motion = static_cast<double>(seen[id].size());
    };
  };
  PipelineOptions po;
  po.workers = 3;
  auto p = std::move(Pipeline::Create(po, stages)).value();
  Sink a, b;
  auto sa = std::move(p->OpenStream(a.Options("a", 4))).value();
  auto sb = std::move(p->OpenStream(b.Options("b", 4))).value();
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(sa->Submit(MakeFrame(SeqOf(i))).ok());
    ASSERT_TRUE(sb->Submit(MakeFrame(SeqOf(i))).ok());
  }
  sa->Close();
  sb->Close();
  ASSERT_TRUE(a.WaitComplete());
  ASSERT_TRUE(b.WaitComplete());
  std::lock_guard<std::mutex> l(mu);
  ASSERT_EQ(seen.size(), 2u);
  for (auto& [id, seqs] : seen) {
    ASSERT_EQ(seqs.size(), 50u);
    for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], SeqOf(i));
  }
}

TEST(PipelineTest, RejectedFramesAreAnsweredWithoutRunningStages) {
  FakeStages fakes;
  std::atomic<int> decoded{0};
  fakes.hook = [&](int stage, FrameContext&) {
    if (stage == 0) ++decoded;
    return absl::OkStatus();
  };
  auto p = MakePipeline(fakes, 2, 64);
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 4))).value();
  for (int i = 0; i < 6; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    if (i % 2) f.rejection = absl::InvalidArgumentError("70 tags, over the limit of 64");
    ASSERT_TRUE(s->Submit(std::move(f)).ok());
  }
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
  auto got = sink.got();
  ExpectInOrder(got, 6);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(got[i].status, i % 2 ? FrameStatus::kInvalidArgument : FrameStatus::kOk);
  }
  EXPECT_NE(got[1].error.find("over the limit of 64"), std::string::npos);
  EXPECT_EQ(decoded.load(), 3);
}

TEST(PipelineTest, BadOptionsAreRejected) {
  FakeStages fakes;
  auto p = MakePipeline(fakes, 1, 8);
  Sink sink;
  EXPECT_FALSE(p->OpenStream(sink.Options("zero", 0)).ok());
  PipelineOptions o;
  o.global_max_in_flight = 0;
  EXPECT_FALSE(Pipeline::Create(o, fakes.Make()).ok());
  EXPECT_FALSE(Pipeline::Create(PipelineOptions{}, Stages{}).ok());
}

}  // namespace
}  // namespace framepipe

namespace framepipe {
namespace {

// Credit groups (the service: one per client address): streams of a group hold at most its
// credits together; other streams are not affected; a group credit coming back wakes a waiting
// stream of the group.

// Streams a and b (windows of 8) in one group of `credits`; a's consumer holds its credits
// until the test releases them; b counts its wake-ups.
struct GroupOfTwo {
  GroupOfTwo(Pipeline& p, uint32_t credits) : group(std::make_shared<CreditGroup>(credits)) {
    a.set_hold_credits(true);
    StreamOptions oa = a.Options("a", 8), ob = b.Options("b", 8);
    oa.credit_group = group;
    ob.credit_group = group;
    ob.on_credit = [this] { b_wakes.Add(); };
    sa = std::move(p.OpenStream(oa)).value();
    sb = std::move(p.OpenStream(ob)).value();
  }
  std::shared_ptr<CreditGroup> group;
  Sink a, b;
  Counter b_wakes;
  std::unique_ptr<Stream> sa, sb;  // destroyed before the sinks
};

TEST(CreditGroupTest, StreamsOfAGroupShareItsCreditsAndOnlyThey) {
  FakeStages fakes;
  fakes.max_delay_us = 0;
  auto p = MakePipeline(fakes, 2, 64);
  GroupOfTwo g(*p, 3);
  g.b.set_hold_credits(true);
  Sink c;
  c.set_hold_credits(true);
  auto sc = std::move(p->OpenStream(c.Options("c", 8))).value();
  for (int i = 0; i < 3; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    ASSERT_EQ(g.sa->TryAdmit(f), AdmitOutcome::kAdmitted);
  }
  ASSERT_TRUE(g.a.WaitCount(3));
  FrameInput fa = MakeFrame(SeqOf(3)), fb = MakeFrame(SeqOf(0));
  EXPECT_EQ(g.sb->TryAdmit(fb), AdmitOutcome::kNoCredit) << "the group's credits are all a's";
  EXPECT_EQ(fb.seq, SeqOf(0)) << "a refused frame is not consumed";
  EXPECT_EQ(g.sa->TryAdmit(fa), AdmitOutcome::kNoCredit) << "a's window is 8, the group's 3";
  for (int i = 0; i < 8; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    ASSERT_EQ(sc->TryAdmit(f), AdmitOutcome::kAdmitted) << "c is in no group: its window rules";
  }
  EXPECT_EQ(g.group->held(), 3u);
  EXPECT_EQ(g.b_wakes.value(), 0);
  g.a.ReleaseHeld(1);  // a result of a was written: b, first to wait for the group, is woken
  ASSERT_TRUE(g.b_wakes.WaitAtLeast(1));
  EXPECT_EQ(g.sb->TryAdmit(fb), AdmitOutcome::kAdmitted);
  ASSERT_TRUE(g.b.WaitCount(1));
  EXPECT_EQ(g.group->held(), 3u);
  EXPECT_EQ(g.group->peak_held(), 3u);
  for (auto* s : {g.sa.get(), g.sb.get(), sc.get()}) s->Close();
  ASSERT_TRUE(g.a.WaitComplete());
  ASSERT_TRUE(g.b.WaitComplete());
  ASSERT_TRUE(c.WaitComplete());
  ExpectInOrder(g.a.got(), 3);
  ExpectInOrder(g.b.got(), 1);
  ExpectInOrder(c.got(), 8);
  g.a.ReleaseHeld();
  g.b.ReleaseHeld();
  c.ReleaseHeld();
  EXPECT_EQ(g.group->held(), 0u);
  EXPECT_EQ(p->counters().in_flight, 0u);
}

// A cancelled stream's credits - undelivered frames' and inline-returned ones - go back to its
// group, and the group's waiting stream is woken.
TEST(CreditGroupTest, CancelGivesTheGroupItsCreditsBack) {
  FakeStages fakes;
  fakes.max_delay_us = 20000;
  auto p = MakePipeline(fakes, 2, 64);
  GroupOfTwo g(*p, 4);
  for (int i = 0; i < 4; ++i) {
    FrameInput f = MakeFrame(SeqOf(i));
    ASSERT_EQ(g.sa->TryAdmit(f), AdmitOutcome::kAdmitted);
  }
  FrameInput fb = MakeFrame(SeqOf(0));
  EXPECT_EQ(g.sb->TryAdmit(fb), AdmitOutcome::kNoCredit);
  g.sa->Cancel();  // some frames still in the stages, some maybe delivered and held by the sink
  g.a.MarkCancelled();
  g.a.ReleaseHeld();
  EXPECT_EQ(g.group->held(), 0u);
  ASSERT_TRUE(g.b_wakes.WaitAtLeast(1));
  EXPECT_EQ(g.sb->TryAdmit(fb), AdmitOutcome::kAdmitted);
  g.sb->Close();
  ASSERT_TRUE(g.b.WaitComplete());
  ExpectInOrder(g.b.got(), 1);
  EXPECT_EQ(g.a.late_callbacks(), 0);
  EXPECT_TRUE(p->Stop(std::chrono::seconds(10)));
  EXPECT_EQ(g.group->held(), 0u);
  EXPECT_EQ(p->counters().in_flight, 0u);
}

// Blocking producers of two groups and of no group, random stage delays, consumers that hold
// each credit a random while: every stream's results exactly once and in order, no group ever
// over its credits, and all of them back at the end.
TEST(CreditGroupTest, BoundsHoldUnderConcurrentProducersAndSlowConsumers) {
  FakeStages fakes;
  fakes.seed = 17;
  fakes.max_delay_us = 300;
  auto p = MakePipeline(fakes, 3, 12);
  constexpr int kStreams = 8, kFrames = 80;
  std::shared_ptr<CreditGroup> groups[2] = {std::make_shared<CreditGroup>(3),
                                            std::make_shared<CreditGroup>(2)};
  std::vector<std::unique_ptr<Sink>> sinks;
  std::vector<std::unique_ptr<Stream>> streams;
  std::mutex held_mu;
  std::vector<Credit> held;  // released by a consumer thread, in random order
  std::atomic<bool> done{false};
  for (int k = 0; k < kStreams; ++k) {
    sinks.push_back(std::make_unique<Sink>());
    StreamOptions o = sinks[k]->Options("s" + std::to_string(k), 4);
    auto record = o.on_result;
    o.on_result = [&, record](Delivery d) {
      Credit c = std::move(d.credit);
      record(std::move(d));
      std::lock_guard<std::mutex> l(held_mu);
      held.push_back(std::move(c));
    };
    if (k < 6) o.credit_group = groups[k % 2];
    streams.push_back(std::move(p->OpenStream(o)).value());
  }
  std::thread consumer([&] {
    std::mt19937 rng(5);
    while (!done) {
      Credit c;
      {
        std::lock_guard<std::mutex> l(held_mu);
        if (!held.empty()) {
          const size_t i = std::uniform_int_distribution<size_t>(0, held.size() - 1)(rng);
          c = std::move(held[i]);
          held.erase(held.begin() + static_cast<long>(i));
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 400));
    }  // each credit returns as `c` goes
  });
  ProduceAllAndExpectInOrder(streams, sinks, kFrames);
  done = true;
  consumer.join();
  {
    std::lock_guard<std::mutex> l(held_mu);
    held.clear();
  }
  EXPECT_LE(groups[0]->peak_held(), 3u);
  EXPECT_LE(groups[1]->peak_held(), 2u);
  EXPECT_EQ(groups[0]->peak_held(), 3u) << "the group's credits were never all used";
  EXPECT_EQ(groups[1]->peak_held(), 2u);
  EXPECT_EQ(groups[0]->held(), 0u);
  EXPECT_EQ(groups[1]->held(), 0u);
  EXPECT_LE(p->counters().peak_in_flight, 12u);
  EXPECT_EQ(p->counters().in_flight, 0u);
}

}  // namespace
}  // namespace framepipe

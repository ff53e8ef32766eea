// Cross-stream micro-batching of the analyse stage: the BatchQueue policy exactly (size, window,
// deadlines, fairness), and a real pipeline whose analyse stage is a batch function - order and
// exactly-once under random delays and failures, the window and the deadline rule on a fake
// clock, a stream cancelled while its frames wait, Stop flushing what waits, a throwing batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fake_clock.h"
#include "pipeline/internal/batch_queue.h"
#include "pipeline/pipeline.h"
#include "pipeline_sink.h"
#include "test_util.h"

namespace framepipe {
namespace {

using internal::BatchQueue;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using testing::FakeClock;
using testing::kWaitBound;
using testing::Sink;

// ---- The policy -------------------------------------------------------------------------------

// Items carry no job here: the policy never looks at it. Streams are keyed by these addresses.
const int kStreamA = 1, kStreamB = 2, kStreamC = 3;

BatchQueue::Item At(const void* stream, TimePoint t, TimePoint deadline = TimePoint::max()) {
  return {nullptr, stream, t, deadline};
}

TEST(BatchQueueTest, AFullBatchGoesAtOnce) {
  const TimePoint t0 = Clock::now();
  BatchQueue q(4, std::chrono::hours(1));
  EXPECT_EQ(q.DueAt(), TimePoint::max());
  EXPECT_FALSE(q.Ready(t0));
  for (int i = 0; i < 3; ++i) q.Add(At(&kStreamA, t0));
  EXPECT_FALSE(q.Ready(t0 + std::chrono::minutes(59)));
  q.Add(At(&kStreamA, t0));
  EXPECT_TRUE(q.full());
  EXPECT_TRUE(q.Ready(t0));
  EXPECT_EQ(q.Take(t0).size(), 4u);
  EXPECT_TRUE(q.empty());
}

TEST(BatchQueueTest, TheWindowRunsFromTheOldestFrame) {
  const TimePoint t0 = Clock::now();
  BatchQueue q(8, milliseconds(2));
  q.Add(At(&kStreamA, t0));
  q.Add(At(&kStreamB, t0 + microseconds(1500)));
  EXPECT_EQ(q.DueAt(), t0 + milliseconds(2));
  EXPECT_FALSE(q.Ready(t0 + microseconds(1999)));
  EXPECT_TRUE(q.Ready(t0 + milliseconds(2)));
  // Over the limit: Take gives max_frames; the rest keep their own window.
  BatchQueue small(2, milliseconds(2));
  for (int i = 0; i < 3; ++i) small.Add(At(&kStreamA, t0 + milliseconds(i)));
  EXPECT_EQ(small.Take(t0).size(), 2u);
  EXPECT_EQ(small.size(), 1u);
  EXPECT_EQ(small.DueAt(), t0 + milliseconds(4));
}

TEST(BatchQueueTest, ADeadlineWithinAWindowBringsTheBatchForward) {
  const TimePoint t0 = Clock::now();
  BatchQueue q(8, milliseconds(2));
  q.Add(At(&kStreamA, t0));
  q.Add(At(&kStreamB, t0 + microseconds(100), t0 + microseconds(2500)));
  EXPECT_EQ(q.DueAt(), t0 + microseconds(500)) << "deadline - window";
  EXPECT_FALSE(q.Ready(t0 + microseconds(499)));
  EXPECT_TRUE(q.Ready(t0 + microseconds(500)));
  // A deadline closer than one window (or already past) makes the batch due at once.
  BatchQueue late(8, milliseconds(2));
  late.Add(At(&kStreamA, t0, t0 + microseconds(300)));
  EXPECT_TRUE(late.Ready(t0));
  BatchQueue none(8, milliseconds(2));
  none.Add(At(&kStreamA, t0, TimePoint::max()));
  EXPECT_EQ(none.DueAt(), t0 + milliseconds(2)) << "no deadline: the window alone";
}

TEST(BatchQueueTest, BatchesAreFairAcrossStreamsAndKeepEachStreamsOrder) {
  const TimePoint t0 = Clock::now();
  BatchQueue q(4, milliseconds(2));
  // A bursts 10 frames, then B and C send 2 each.
  std::map<const void*, std::string> name = {{&kStreamA, "A"}, {&kStreamB, "B"}, {&kStreamC, "C"}};
  std::vector<std::pair<const void*, int>> sent;
  auto add = [&](const void* s, int i, int t_us) {
    BatchQueue::Item it = At(s, t0 + microseconds(t_us));
    it.job = reinterpret_cast<internal::Job*>(static_cast<uintptr_t>(i + 1));  // a tag only
    q.Add(it);
  };
  for (int i = 0; i < 10; ++i) add(&kStreamA, i, i);
  for (int i = 0; i < 2; ++i) add(&kStreamB, 100 + i, 20 + i);
  for (int i = 0; i < 2; ++i) add(&kStreamC, 200 + i, 30 + i);
  auto take = [&] {
    std::string out;
    for (const auto& it : q.Take(t0)) {
      out += name[it.stream] + std::to_string(reinterpret_cast<uintptr_t>(it.job) - 1) + " ";
    }
    return out;
  };
  // Round-robin, the stream with the oldest waiting frame first, each stream in arrival order.
  EXPECT_EQ(take(), "A0 B100 C200 A1 ");
  EXPECT_EQ(take(), "A2 B101 C201 A3 ");
  EXPECT_EQ(take(), "A4 A5 A6 A7 ");
  EXPECT_EQ(take(), "A8 A9 ");
  EXPECT_TRUE(q.empty());
}

TEST(BatchQueueTest, TheFrameWhoseDeadlineSendsTheBatchIsInIt) {
  const TimePoint t0 = Clock::now();
  BatchQueue q(2, milliseconds(2));
  q.Add(At(&kStreamA, t0));
  q.Add(At(&kStreamB, t0));
  q.Add(At(&kStreamC, t0 + microseconds(500), t0 + microseconds(2600)));
  const TimePoint due = q.DueAt();
  EXPECT_EQ(due, t0 + microseconds(600));
  auto batch = q.Take(due);
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].stream, &kStreamC) << "urgent first, although its stream came last";
  EXPECT_EQ(batch[1].stream, &kStreamA) << "then round-robin from the oldest stream";
  EXPECT_EQ(q.size(), 1u);
  // Before it is urgent, the same frame waits its turn.
  BatchQueue early(2, milliseconds(2));
  early.Add(At(&kStreamA, t0));
  early.Add(At(&kStreamB, t0));
  early.Add(At(&kStreamC, t0 + microseconds(500), t0 + microseconds(2600)));
  auto first = early.Take(t0);
  EXPECT_EQ(first[0].stream, &kStreamA);
  EXPECT_EQ(first[1].stream, &kStreamB);
  // A window of any length is safe to add to the clock.
  BatchQueue huge(2, microseconds::max());
  huge.Add(At(&kStreamA, t0));
  EXPECT_GT(huge.DueAt(), t0 + std::chrono::hours(23));
}

// ---- A pipeline with a batched analyse stage ----------------------------------------------------

FrameInput Frame(uint64_t seq) {
  FrameInput f;
  f.seq = seq;
  f.kind = PayloadKind::kEncoded;
  f.data = std::string(32, static_cast<char>(seq & 0xFF));
  return f;
}

// A batch analyser: marks each frame (analysis.width = seq) and records every batch it ran.
// `hook` may fail frames, throw or sleep.
struct BatchFake {
  std::mutex mu;
  std::vector<std::vector<uint64_t>> batches;  // the seqs of each batch, in the order given
  std::multiset<uint64_t> analysed;
  std::function<void(std::vector<FrameContext*> const&, std::vector<absl::Status>&)> hook;

  Stages Make(std::function<absl::Status(int, FrameContext&)> per_frame = nullptr) {
    Stages s;
    auto body = [per_frame](int stage) {
      return [per_frame, stage](FrameContext& ctx) -> absl::Status {
        if (per_frame) {
          absl::Status st = per_frame(stage, ctx);
          if (!st.ok()) return st;
        }
        if (stage == 2) ctx.result->enrichment.keypoints = static_cast<uint32_t>(ctx.input.seq);
        return absl::OkStatus();
      };
    };
    s.decode = body(0);
    s.analyse = [](FrameContext&) -> absl::Status {
      ADD_FAILURE() << "the per-frame analyse stage ran with batching on";
      return absl::InternalError("per-frame analyse");
    };
    s.enrich = body(2);
    s.analyse_batch = [this](const std::vector<FrameContext*>& frames,
                             std::vector<absl::Status>& statuses) {
      {
        std::lock_guard<std::mutex> l(mu);
        std::vector<uint64_t> seqs;
        for (FrameContext* f : frames) {
          seqs.push_back(f->input.seq);
          analysed.insert(f->input.seq);
        }
        batches.push_back(seqs);
      }
      for (FrameContext* f : frames)
        f->result->analysis.width = static_cast<uint32_t>(f->input.seq);
      if (hook) hook(frames, statuses);
    };
    return s;
  }
  std::vector<std::vector<uint64_t>> Batches() {
    std::lock_guard<std::mutex> l(mu);
    return batches;
  }
};

class BatchObserver : public PipelineObserver {
 public:
  void OnBatch(uint32_t frames, double wait) override {
    frames_.fetch_add(frames);
    batches_.fetch_add(1);
    EXPECT_GE(wait, 0.0);
  }
  std::atomic<uint64_t> frames_{0}, batches_{0};
};

std::unique_ptr<Pipeline> Make(
    BatchFake& fake, uint32_t max_frames, microseconds window, const TimeSource* time = nullptr,
    PipelineObserver* obs = nullptr,
    std::function<absl::Status(int, FrameContext&)> per_frame = nullptr) {
  PipelineOptions o;
  o.workers = 3;
  o.global_max_in_flight = 256;
  o.time = time;
  o.observer = obs;
  o.batch.max_frames = max_frames;
  o.batch.window = window;
  auto p = Pipeline::Create(o, fake.Make(std::move(per_frame)));
  EXPECT_TRUE(p.ok()) << p.status();
  return std::move(p).value();
}

// Waits until `n` decoded frames wait for a batch (the pipeline's own gauge), so that a test moves
// its fake clock only once they are in the queue.
bool WaitBatchWaiting(Pipeline& p, uint32_t n) {
  const TimePoint until = Clock::now() + kWaitBound;
  while (p.counters().batch_waiting != n) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(microseconds(200));
  }
  return true;
}

uint64_t SeqOf(int stream, int i) { return static_cast<uint64_t>(stream) * 100000 + 7 + 3 * i; }

TEST(BatchPipelineTest, ManyStreamsExactOrderExactlyOnceUnderRandomDelaysAndFailures) {
  for (uint32_t seed : {1u, 2u}) {
    BatchFake fake;
    // Failures decided by the frame (so the expected sequence is known), random sleeps.
    auto fails = [](uint64_t seq) { return seq % 11 == 4; };
    fake.hook = [&](const std::vector<FrameContext*>& frames, std::vector<absl::Status>& st) {
      std::mt19937 rng(seed ^ static_cast<uint32_t>(frames.front()->input.seq));
      std::this_thread::sleep_for(microseconds(std::uniform_int_distribution<int>(0, 400)(rng)));
      for (size_t i = 0; i < frames.size(); ++i) {
        if (fails(frames[i]->input.seq)) {
          st[i] = absl::InvalidArgumentError(absl::StrCat("bad frame ", frames[i]->input.seq));
        }
      }
    };
    auto jitter = [seed](int stage, FrameContext& ctx) {
      std::mt19937 rng(seed * 7919 + static_cast<uint32_t>(ctx.input.seq) * 31 + stage);
      std::this_thread::sleep_for(microseconds(std::uniform_int_distribution<int>(0, 300)(rng)));
      return absl::OkStatus();
    };
    BatchObserver obs;
    auto p = Make(fake, 8, microseconds(300), nullptr, &obs, jitter);
    constexpr int kStreams = 4, kFrames = 150;
    std::vector<Sink> sinks(kStreams);
    std::vector<std::thread> producers;
    for (int s = 0; s < kStreams; ++s) {
      producers.emplace_back([&, s] {
        auto st = p->OpenStream(sinks[s].Options(absl::StrCat("s", s), 8));
        ASSERT_TRUE(st.ok());
        for (int i = 0; i < kFrames; ++i) ASSERT_TRUE((*st)->Submit(Frame(SeqOf(s, i))).ok());
        (*st)->Close();
        EXPECT_TRUE(sinks[s].WaitComplete());
      });
    }
    for (auto& t : producers) t.join();
    std::multiset<uint64_t> expected_analysed;
    for (int s = 0; s < kStreams; ++s) {
      auto got = sinks[s].got();
      ASSERT_EQ(got.size(), static_cast<size_t>(kFrames));
      for (int i = 0; i < kFrames; ++i) {
        const uint64_t seq = SeqOf(s, i);
        expected_analysed.insert(seq);
        ASSERT_EQ(got[i].seq, seq) << "stream " << s << " position " << i;
        if (fails(seq)) {
          EXPECT_EQ(got[i].status, FrameStatus::kInvalidArgument);
          EXPECT_EQ(got[i].error, absl::StrCat("frame seq=", seq, ": bad frame ", seq));
        } else {
          ASSERT_EQ(got[i].status, FrameStatus::kOk) << got[i].error;
          EXPECT_EQ(got[i].width_mark, static_cast<uint32_t>(seq));
          EXPECT_EQ(got[i].keypoints_mark, static_cast<uint32_t>(seq));
        }
      }
    }
    std::lock_guard<std::mutex> l(fake.mu);
    EXPECT_EQ(fake.analysed, expected_analysed) << "every frame analysed exactly once";
    for (const auto& b : fake.batches) {
      EXPECT_GE(b.size(), 1u);
      EXPECT_LE(b.size(), 8u);
    }
    EXPECT_EQ(obs.frames_.load(), static_cast<uint64_t>(kStreams * kFrames));
    EXPECT_EQ(obs.batches_.load(), fake.batches.size());
    EXPECT_EQ(p->counters().in_flight, 0u);
  }
}

TEST(BatchPipelineTest, ABatchGoesWhenFullOrWhenItsWindowEndsOnTheClock) {
  FakeClock clock;
  BatchFake fake;
  auto p = Make(fake, 4, milliseconds(10), &clock);
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 16))).value();
  // Four frames fill a batch: it goes although the clock never moves.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(s->Submit(Frame(SeqOf(0, i))).ok());
  ASSERT_TRUE(sink.WaitCount(4));
  auto first = fake.Batches();
  ASSERT_EQ(first.size(), 1u);
  std::sort(first[0].begin(), first[0].end());  // in the order their decodes ended
  EXPECT_EQ(first[0], (std::vector<uint64_t>{SeqOf(0, 0), SeqOf(0, 1), SeqOf(0, 2), SeqOf(0, 3)}));
  // One more frame waits for its window: 10 ms on the fake clock, which only the test moves.
  ASSERT_TRUE(s->Submit(Frame(SeqOf(0, 4))).ok());
  ASSERT_TRUE(WaitBatchWaiting(*p, 1));
  clock.Advance(milliseconds(9));
  EXPECT_EQ(p->counters().batch_waiting, 1u) << "a frame left the queue before its window ended";
  EXPECT_EQ(fake.Batches().size(), 1u);
  clock.Advance(milliseconds(1));
  ASSERT_TRUE(sink.WaitCount(5));
  auto batches = fake.Batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[1], std::vector<uint64_t>{SeqOf(0, 4)});
  auto got = sink.got();
  EXPECT_EQ(got[4].seq, SeqOf(0, 4));
  EXPECT_EQ(got[4].status, FrameStatus::kOk);
  EXPECT_GE(got[4].total_us, 10000u) << "the wait for the batch counts in the total";
  EXPECT_EQ(got[4].analyse_us, 0u) << "analyse is the batch's run (no time on this clock)";
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
}

TEST(BatchPipelineTest, AFrameWithADeadlineInsideTheWindowDoesNotWaitForIt) {
  FakeClock clock;
  BatchFake fake;
  auto p = Make(fake, 8, milliseconds(50), &clock);
  Sink sink;
  StreamOptions o = sink.Options("s", 8);
  o.frame_timeout = milliseconds(20);  // closer than one window: the batch goes at once
  auto s = std::move(p->OpenStream(o)).value();
  ASSERT_TRUE(s->Submit(Frame(SeqOf(0, 0))).ok());
  // The clock never moves: only the deadline rule can send this batch.
  ASSERT_TRUE(sink.WaitCount(1));
  EXPECT_EQ(sink.got()[0].status, FrameStatus::kOk) << sink.got()[0].error;
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
}

TEST(BatchPipelineTest, FramesOfManyStreamsGoTogether) {
  FakeClock clock;
  BatchFake fake;
  auto p = Make(fake, 8, milliseconds(10), &clock);
  std::vector<Sink> sinks(3);
  std::vector<std::unique_ptr<Stream>> streams;
  for (int k = 0; k < 3; ++k) {
    streams.push_back(std::move(p->OpenStream(sinks[k].Options(absl::StrCat("s", k), 8))).value());
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(streams[k]->Submit(Frame(SeqOf(k, i))).ok());
  }
  ASSERT_TRUE(WaitBatchWaiting(*p, 6));
  clock.Advance(milliseconds(10));
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(sinks[k].WaitCount(2));
    EXPECT_EQ(sinks[k].got()[0].seq, SeqOf(k, 0));
    EXPECT_EQ(sinks[k].got()[1].seq, SeqOf(k, 1));
  }
  auto batches = fake.Batches();
  ASSERT_EQ(batches.size(), 1u) << "six frames of three streams, one window: one batch";
  std::vector<uint64_t> got = batches[0];
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<uint64_t>{SeqOf(0, 0), SeqOf(0, 1), SeqOf(1, 0), SeqOf(1, 1),
                                        SeqOf(2, 0), SeqOf(2, 1)}));
  for (auto& s : streams) s->Close();
}

TEST(BatchPipelineTest, AnUrgentFrameWakesABatchAlreadyWaitingForItsWindow) {
  FakeClock clock;
  BatchFake fake;
  auto p = Make(fake, 8, milliseconds(50), &clock);
  Sink patient, urgent;
  auto a = std::move(p->OpenStream(patient.Options("patient", 8))).value();
  StreamOptions o = urgent.Options("urgent", 8);
  o.frame_timeout = milliseconds(20);
  auto b = std::move(p->OpenStream(o)).value();
  ASSERT_TRUE(a->Submit(Frame(SeqOf(0, 0))).ok());
  ASSERT_TRUE(WaitBatchWaiting(*p, 1));  // the batch thread now waits for t0 + 50 ms
  ASSERT_TRUE(b->Submit(Frame(SeqOf(1, 0))).ok());
  // The clock never moves: only the new frame's deadline can send the batch, which takes both.
  ASSERT_TRUE(urgent.WaitCount(1));
  ASSERT_TRUE(patient.WaitCount(1));
  EXPECT_EQ(urgent.got()[0].status, FrameStatus::kOk) << urgent.got()[0].error;
  a->Close();
  b->Close();
}

TEST(BatchPipelineTest, AFrameThatFailedToDecodeDoesNotWaitForABatch) {
  FakeClock clock;
  BatchFake fake;
  auto p = Make(fake, 8, std::chrono::hours(1), &clock, nullptr,
                [](int stage, FrameContext& ctx) -> absl::Status {
                  if (stage == 0 && ctx.input.seq == SeqOf(0, 0)) {
                    return absl::InvalidArgumentError("not an image");
                  }
                  return absl::OkStatus();
                });
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 8))).value();
  ASSERT_TRUE(s->Submit(Frame(SeqOf(0, 0))).ok());
  // An hour's window on a clock that never moves: the error comes back without any batch.
  ASSERT_TRUE(sink.WaitCount(1));
  EXPECT_EQ(sink.got()[0].status, FrameStatus::kInvalidArgument);
  EXPECT_TRUE(fake.Batches().empty());
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
}

TEST(BatchPipelineTest, ACancelledStreamsWaitingFramesAreNeverAnalysedAndOthersGoOn) {
  FakeClock clock;
  BatchFake fake;
  auto p = Make(fake, 8, milliseconds(10), &clock);
  Sink a, b;
  auto sa = std::move(p->OpenStream(a.Options("a", 8))).value();
  auto sb = std::move(p->OpenStream(b.Options("b", 8))).value();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sa->Submit(Frame(SeqOf(1, i))).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(sb->Submit(Frame(SeqOf(2, i))).ok());
  ASSERT_TRUE(WaitBatchWaiting(*p, 5));
  // All five wait for the window (the clock does not move); stream a goes away meanwhile.
  sa->Cancel();
  clock.Advance(milliseconds(10));
  ASSERT_TRUE(b.WaitCount(2));
  sb->Close();
  ASSERT_TRUE(b.WaitComplete());
  EXPECT_TRUE(a.got().empty()) << "a cancelled stream gets no results";
  for (const auto& batch : fake.Batches()) {
    for (uint64_t seq : batch) EXPECT_LT(seq, SeqOf(2, 0) + 100) << "analysed a cancelled frame";
    for (uint64_t seq : batch) EXPECT_GE(seq, SeqOf(2, 0)) << "analysed a cancelled frame";
  }
  EXPECT_EQ(b.got()[0].seq, SeqOf(2, 0));
  EXPECT_EQ(b.got()[1].seq, SeqOf(2, 1));
  EXPECT_EQ(p->counters().in_flight, 0u);
}

TEST(BatchPipelineTest, StopSendsWhatWaitsWithoutWaitingForTheWindow) {
  BatchFake fake;
  auto p = Make(fake, 64, std::chrono::hours(1));
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 8))).value();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(s->Submit(Frame(SeqOf(0, i))).ok());
  EXPECT_TRUE(p->Stop(std::chrono::seconds(30))) << "an hour's window held the drain";
  auto got = sink.got();
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(got[i].seq, SeqOf(0, i));
    EXPECT_EQ(got[i].status, FrameStatus::kOk);
  }
}

TEST(BatchPipelineTest, AThrowingBatchFailsItsFramesAndTheStreamGoesOn) {
  BatchFake fake;
  fake.hook = [](const std::vector<FrameContext*>& frames, std::vector<absl::Status>&) {
    for (FrameContext* f : frames) {
      if (f->input.seq == SeqOf(0, 2)) throw std::runtime_error("device lost");
    }
  };
  auto p = Make(fake, 4, microseconds(0));  // window 0: each batch takes what waits
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 1))).value();  // one frame at a time
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(s->Submit(Frame(SeqOf(0, i))).ok());
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
  auto got = sink.got();
  ASSERT_EQ(got.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(got[i].seq, SeqOf(0, i));
    if (i == 2) {
      EXPECT_EQ(got[i].status, FrameStatus::kInternal);
      EXPECT_NE(got[i].error.find("analyse stage failed: threw an exception (whole batch failed): "
                                  "device lost"),
                std::string::npos)
          << got[i].error;
    } else {
      EXPECT_EQ(got[i].status, FrameStatus::kOk) << got[i].error;
    }
  }
}

TEST(BatchPipelineTest, WithoutABatchFunctionTheFrameStageRuns) {
  BatchFake fake;
  Stages stages = fake.Make();
  stages.analyse_batch = nullptr;
  stages.analyse = [](FrameContext& ctx) -> absl::Status {
    ctx.result->analysis.width = 1;
    return absl::OkStatus();
  };
  PipelineOptions o;
  o.workers = 2;
  o.batch.max_frames = 8;
  auto p = std::move(Pipeline::Create(o, stages)).value();
  Sink sink;
  auto s = std::move(p->OpenStream(sink.Options("s", 4))).value();
  ASSERT_TRUE(s->Submit(Frame(1)).ok());
  s->Close();
  ASSERT_TRUE(sink.WaitComplete());
  EXPECT_EQ(sink.got()[0].width_mark, 1u);
}

}  // namespace
}  // namespace framepipe

#include "pipeline/internal/core.h"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <shared_mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/tsan.h"
#include "oneapi/tbb/flow_graph.h"
#include "oneapi/tbb/global_control.h"
#include "oneapi/tbb/task_arena.h"
#include "pipeline/internal/stream_state.h"

namespace framepipe::internal {

namespace flow = oneapi::tbb::flow;

namespace {
constexpr const char* kStageNames[3] = {"decode", "analyse", "enrich"};
// The deadline timer never rescans more often than this: deadlines are met to within it.
constexpr auto kTimerSlack = std::chrono::milliseconds(1);

int64_t ToNanos(TimePoint t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
}  // namespace

using BatchGateway = flow::async_node<Job*, Job*>::gateway_type;

// The batched analyse stage's thread: decoded frames wait in a BatchQueue (which decides what
// goes together, and when); this thread runs each batch and hands its frames back to the graph
// through the async_node's gateway. Workers only enqueue, so they never wait for a batch.
class Batcher {
 public:
  explicit Batcher(Core* core)
      : core_(core), queue_(core->options().batch.max_frames, core->options().batch.window) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Batcher() {
    {
      std::lock_guard<std::mutex> l(mu_);
      exit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void Add(Job* job, BatchGateway& gateway) {
    {
      std::lock_guard<std::mutex> l(mu_);
      gateway_ = &gateway;
      queue_.Add({job, job->stream.get(), core_->time()->Now(), job->deadline});
      gateway.reserve_wait();  // the graph is not idle while a frame waits here
      core_->batch_waiting.store(static_cast<uint32_t>(queue_.size()), std::memory_order_relaxed);
      // Under the lock: once it is released, this frame may be analysed, delivered and the
      // pipeline stopped - this Batcher (and its cv_) may be gone.
      cv_.notify_all();
    }
  }

  // The pipeline is stopping: what waits goes now, whatever the window says.
  void FlushAll() {
    {
      std::lock_guard<std::mutex> l(mu_);
      flush_ = true;
    }
    cv_.notify_all();
  }

 private:
  void Loop() {
    const TimeSource* time = core_->time();
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      if (queue_.empty()) {
        if (exit_) return;
        cv_.wait(l, [&] { return exit_ || !queue_.empty(); });
        continue;
      }
      const TimePoint due = queue_.DueAt();
      if (!flush_ && !exit_ && !queue_.Ready(time->Now())) {
        // Wake for the due time, a full queue, a stop, or a new frame that is due sooner.
        time->WaitUntil(cv_, l, due,
                        [&] { return flush_ || exit_ || queue_.full() || queue_.DueAt() < due; });
        continue;
      }
      std::vector<BatchQueue::Item> batch = queue_.Take(time->Now());
      core_->batch_waiting.store(static_cast<uint32_t>(queue_.size()), std::memory_order_relaxed);
      BatchGateway* gateway = gateway_;
      l.unlock();
      for ([[maybe_unused]] const BatchQueue::Item& item : batch) FP_TSAN_ACQUIRE(item.job);
      try {
        core_->RunBatch(batch);
      } catch (const std::exception& e) {  // out of memory; the batch function's own are caught
        core_->FailBatch(batch, absl::InternalError(absl::StrCat("batch failed: ", e.what())));
      }
      for (const BatchQueue::Item& item : batch) {
        FP_TSAN_RELEASE(item.job);
        gateway->try_put(item.job);
        gateway->release_wait();
      }
      l.lock();
    }
  }

  Core* const core_;
  std::mutex mu_;
  std::condition_variable cv_;
  BatchQueue queue_;
  BatchGateway* gateway_ = nullptr;
  bool flush_ = false;
  bool exit_ = false;
  std::thread thread_;
};

// The oneTBB objects. The graph is built inside `arena`, so all its tasks run on the arena's
// `workers` threads; producers outside the arena only enqueue messages (try_put never blocks:
// the function_nodes buffer what they cannot start yet, and credits bound those buffers). With
// batching on, the analyse node is an async_node feeding the Batcher.
class Graph {
 public:
  explicit Graph(int workers)
      // The process-wide worker pool is sized to hardware threads - 1 by default, which would
      // leave an arena of `workers` threads short of one thread when nobody joins it.
      : parallelism_(oneapi::tbb::global_control::max_allowed_parallelism,
                     std::max<size_t>(oneapi::tbb::global_control::active_value(
                                          oneapi::tbb::global_control::max_allowed_parallelism),
                                      static_cast<size_t>(workers) + 1)),
        arena_(workers, /*reserved_for_masters=*/0) {}

  void Build(Core* core, int workers) {
    if (core->batching()) batcher_ = std::make_unique<Batcher>(core);
    arena_.execute([&] {
      graph_ = std::make_unique<flow::graph>();
      auto stage_node = [&](int stage) {
        return std::make_unique<flow::function_node<Job*, Job*>>(
            *graph_, static_cast<size_t>(workers), [core, stage](Job* job) {
              FP_TSAN_ACQUIRE(job);
              core->RunStage(*job, stage);
              FP_TSAN_RELEASE(job);
              return job;
            });
      };
      decode_ = stage_node(0);
      // The last stage hands the frame straight to its stream's resequencer on the same worker
      // (no extra node hop: the ordered delivery is a short critical section).
      last_ = std::make_unique<flow::function_node<Job*>>(*graph_, static_cast<size_t>(workers),
                                                          [core](Job* job) {
                                                            FP_TSAN_ACQUIRE(job);
                                                            core->RunStage(*job, 2);
                                                            core->Finish(*job);
                                                            return flow::continue_msg();
                                                          });
      if (batcher_) {
        batch_ = std::make_unique<flow::async_node<Job*, Job*>>(
            *graph_, flow::unlimited, [this](Job* const& job, BatchGateway& gateway) {
              FP_TSAN_ACQUIRE(job);
              // A frame that failed to decode, expired or was cancelled has nothing to wait for:
              // straight on (it would otherwise hold its stream's later results back a window).
              if (job->failed || job->state.load(std::memory_order_acquire) != kRunning) {
                gateway.try_put(job);
                return;
              }
              FP_TSAN_RELEASE(job);
              batcher_->Add(job, gateway);
            });
        flow::make_edge(*decode_, *batch_);
        flow::make_edge(*batch_, *last_);
      } else {
        analyse_ = stage_node(1);
        flow::make_edge(*decode_, *analyse_);
        flow::make_edge(*analyse_, *last_);
      }
    });
  }

  bool Put(const JobPtr& job) {
    std::shared_lock<std::shared_mutex> lock(mu_);
    if (!graph_) return false;
    job->graph_ref = job;
    FP_TSAN_RELEASE(job.get());
    decode_->try_put(job.get());
    return true;
  }

  // Waits for every message in the graph, then tears it down; later Put() calls fail.
  void Shutdown() {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (!graph_) return;
    if (batcher_) batcher_->FlushAll();
    graph_->wait_for_all();
    batcher_.reset();
    last_.reset();
    batch_.reset();
    analyse_.reset();
    decode_.reset();
    graph_.reset();
  }

  // The pipeline is stopping: frames waiting for a batch go now.
  void FlushBatches() {
    if (batcher_) batcher_->FlushAll();
  }

 private:
  oneapi::tbb::global_control parallelism_;
  oneapi::tbb::task_arena arena_;
  std::shared_mutex mu_;
  std::unique_ptr<Batcher> batcher_;  // only with batching on
  std::unique_ptr<flow::graph> graph_;
  std::unique_ptr<flow::function_node<Job*, Job*>> decode_;
  std::unique_ptr<flow::function_node<Job*, Job*>> analyse_;  // without batching
  std::unique_ptr<flow::async_node<Job*, Job*>> batch_;       // with batching
  std::unique_ptr<flow::function_node<Job*>> last_;           // enrich + in-order delivery
};

Core::Core(const PipelineOptions& options, Stages stages)
    : options_(options),
      time_(options.time ? options.time : TimeSource::Real()),
      stages_(std::move(stages)) {
  workers_ =
      options_.workers > 0 ? options_.workers : std::max(1u, std::thread::hardware_concurrency());
}

Core::~Core() {
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    timer_exit_ = true;
  }
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  if (graph_) graph_->Shutdown();
}

absl::Status Core::Start() {
  if (!stages_.decode || !stages_.analyse || !stages_.enrich) {
    return absl::InvalidArgumentError("pipeline needs decode, analyse and enrich stages");
  }
  if (options_.global_max_in_flight == 0) {
    return absl::InvalidArgumentError("global_max_in_flight must be at least 1");
  }
  graph_ = std::make_unique<Graph>(workers_);
  graph_->Build(this, workers_);
  timer_ = std::thread([this] { TimerLoop(); });
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<StreamState>> Core::OpenStream(StreamOptions options) {
  if (options.max_in_flight == 0 || options.max_in_flight > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_in_flight must be between 1 and 65536, got ", options.max_in_flight));
  }
  if (options.frame_timeout.count() < 0) {
    return absl::InvalidArgumentError("frame_timeout must not be negative");
  }
  OrderedFn ordered;
  if (stages_.ordered) ordered = stages_.ordered();
  std::lock_guard<std::mutex> lock(registry_mu_);
  if (stopping()) return absl::FailedPreconditionError("pipeline is stopping");
  auto state =
      std::make_shared<StreamState>(shared_from_this(), std::move(options), std::move(ordered));
  streams_.emplace(state.get(), state);
  if (state->has_timeout()) ++timed_streams_;
  return state;
}

void Core::Unregister(StreamState* stream) {
  {
    std::lock_guard<std::mutex> lock(registry_mu_);
    streams_.erase(stream);
    if (stream->has_timeout()) --timed_streams_;
  }
  progress_cv_.notify_all();
}

std::vector<std::shared_ptr<StreamState>> Core::SnapshotStreams() {
  std::vector<std::shared_ptr<StreamState>> out;
  std::lock_guard<std::mutex> lock(registry_mu_);
  out.reserve(streams_.size());
  for (auto& [ptr, weak] : streams_) {
    if (auto s = weak.lock()) out.push_back(std::move(s));
  }
  return out;
}

void Core::NotifyStreamProgress() {
  { std::lock_guard<std::mutex> lock(registry_mu_); }
  progress_cv_.notify_all();
}

void Core::Submit(JobPtr job) {
  if (!graph_ || !graph_->Put(job)) {
    // Only after Stop() tore the graph down, by which time every stream was closed and
    // cancelled: nobody waits for this frame's result.
    job->state.store(kCancelled, std::memory_order_release);
    job->graph_ref.reset();
  }
}

bool Core::TryAcquireGlobalFast(uint64_t cost_bytes) {
  const uint64_t max_bytes = options_.global_max_bytes;
  uint64_t c = global_credits_.load(std::memory_order_relaxed);
  do {
    if (c >= options_.global_max_in_flight) return false;
  } while (!global_credits_.compare_exchange_weak(c, c + 1, std::memory_order_seq_cst));
  if (max_bytes > 0) {
    uint64_t b = global_bytes_.load(std::memory_order_relaxed);
    do {
      // One frame larger than the whole budget still gets in when nothing else is in flight.
      if (b != 0 && b + cost_bytes > max_bytes) {
        global_credits_.fetch_sub(1, std::memory_order_seq_cst);
        return false;
      }
    } while (!global_bytes_.compare_exchange_weak(b, b + cost_bytes, std::memory_order_seq_cst));
    uint64_t peak_b = global_peak_bytes_.load(std::memory_order_relaxed);
    while (b + cost_bytes > peak_b &&
           !global_peak_bytes_.compare_exchange_weak(peak_b, b + cost_bytes)) {
    }
  } else {
    global_bytes_.fetch_add(cost_bytes, std::memory_order_relaxed);
  }
  uint64_t peak = global_peak_.load(std::memory_order_relaxed);
  while (c + 1 > peak && !global_peak_.compare_exchange_weak(peak, c + 1)) {
  }
  return true;
}

bool Core::TryAcquireGlobal(uint64_t cost_bytes, StreamState* stream) {
  // Lock-free when the budget has room; the mutex only when a stream has to queue up.
  if (TryAcquireGlobalFast(cost_bytes)) return true;
  std::lock_guard<std::mutex> lock(global_mu_);
  // Register first, then retry: a release that happened after the failed attempt either sees
  // this waiter (and wakes it) or freed the room this retry finds.
  if (!stream->in_global_waiters) {
    stream->in_global_waiters = true;
    global_waiters_.push_back(stream->weak_from_this());
    global_waiter_count_.fetch_add(1, std::memory_order_seq_cst);
  }
  if (TryAcquireGlobalFast(cost_bytes)) {
    // Stays registered; a later wake-up finds it not waiting and passes on.
    return true;
  }
  return false;
}

bool Core::TryChargeBytes(uint64_t bytes) {
  const uint64_t max_bytes = options_.global_max_bytes;
  // Such charges last as long as a stream, so together they may take at most half the budget:
  // frames always keep the other half (a stream whose decoder filled the budget could never
  // admit its own pictures).
  uint64_t c = charged_bytes_.load(std::memory_order_relaxed);
  do {
    if (max_bytes > 0 && c + bytes > max_bytes / 2) return false;
  } while (!charged_bytes_.compare_exchange_weak(c, c + bytes, std::memory_order_seq_cst));
  uint64_t b = global_bytes_.load(std::memory_order_relaxed);
  do {
    if (max_bytes > 0 && b + bytes > max_bytes) {
      charged_bytes_.fetch_sub(bytes, std::memory_order_seq_cst);
      return false;
    }
  } while (!global_bytes_.compare_exchange_weak(b, b + bytes, std::memory_order_seq_cst));
  uint64_t peak_b = global_peak_bytes_.load(std::memory_order_relaxed);
  while (b + bytes > peak_b && !global_peak_bytes_.compare_exchange_weak(peak_b, b + bytes)) {
  }
  return true;
}

void Core::ReleaseCharged(uint64_t bytes) {
  charged_bytes_.fetch_sub(bytes, std::memory_order_seq_cst);
  ReleaseGlobal(0, bytes);
}

void Core::ReleaseGlobal(uint32_t credits, uint64_t bytes) {
  if (credits) global_credits_.fetch_sub(credits, std::memory_order_seq_cst);
  if (bytes) global_bytes_.fetch_sub(bytes, std::memory_order_seq_cst);
  if (global_waiter_count_.load(std::memory_order_seq_cst) == 0) return;
  // Wake as many waiting streams as units came back (at least one for a bytes-only release);
  // a woken stream that no longer waits passes the wake-up on to the next.
  uint32_t wakes = std::max<uint32_t>(credits, 1);
  while (wakes > 0) {
    std::shared_ptr<StreamState> s;
    {
      std::lock_guard<std::mutex> lock(global_mu_);
      while (!s && !global_waiters_.empty()) {
        s = global_waiters_.front().lock();
        global_waiters_.pop_front();
        global_waiter_count_.fetch_sub(1, std::memory_order_seq_cst);
        if (s) s->in_global_waiters = false;
      }
    }
    if (!s) return;
    if (s->NotifyCredit()) --wakes;
  }
}

void Core::PokeTimer(TimePoint deadline) {
  if (ToNanos(deadline) >= timer_next_wake_ns_.load(std::memory_order_acquire)) return;
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    ++timer_pokes_;
  }
  timer_cv_.notify_one();
}

void Core::TimerLoop() {
  std::unique_lock<std::mutex> lock(timer_mu_);
  while (!timer_exit_) {
    const uint64_t pokes = timer_pokes_;
    // While scanning, any new deadline pokes us (it may belong to a stream already scanned).
    timer_next_wake_ns_.store(INT64_MIN, std::memory_order_release);
    lock.unlock();
    const TimePoint now = time_->Now();
    TimePoint next = TimePoint::max();
    for (auto& s : SnapshotStreams()) {
      if (s->has_timeout()) next = std::min(next, s->CheckDeadlines(now));
    }
    lock.lock();
    if (timer_exit_) break;
    if (timer_pokes_ != pokes) continue;
    if (next == TimePoint::max()) {
      timer_next_wake_ns_.store(INT64_MAX, std::memory_order_release);
      timer_cv_.wait(lock, [&] { return timer_exit_ || timer_pokes_ != pokes; });
    } else {
      next = std::max(next, now + kTimerSlack);
      timer_next_wake_ns_.store(ToNanos(next), std::memory_order_release);
      time_->WaitUntil(timer_cv_, lock, next, [&] { return timer_exit_ || timer_pokes_ != pokes; });
    }
  }
}

bool Core::BeginStage(Job& j, int stage, TimePoint now) {
  if (stage == 0) {
    int expected = kQueued;
    if (!j.state.compare_exchange_strong(expected, kRunning, std::memory_order_acq_rel)) {
      return false;
    }
    j.ctx.result = std::make_unique<FrameResult>();
  } else if (j.state.load(std::memory_order_acquire) != kRunning) {
    return false;
  }
  if (j.failed) return false;
  if (j.has_deadline() && now > j.deadline) {
    int expected = kRunning;
    if (j.state.compare_exchange_strong(expected, kExpired, std::memory_order_acq_rel)) {
      j.stream->OnJobExpired(j, kStageNames[stage]);
    }
    return false;
  }
  return true;
}

void Core::EndStage(Job& j, int stage, TimePoint start, TimePoint end, const absl::Status& st) {
  j.last_end = end;
  j.stage_us[stage] = MicrosBetween(start, end);
  if (st.ok()) return;
  j.failed = true;
  FrameResult& r = *j.ctx.result;
  r.status = FrameStatusFromCode(st.code());
  if (r.status == FrameStatus::kInternal) {
    r.error = absl::StrCat("frame seq=", j.ctx.input.seq, ": ", kStageNames[stage],
                           " stage failed: ", st.message());
  } else {
    r.error = absl::StrCat("frame seq=", j.ctx.input.seq, ": ", st.message());
  }
  r.analysis = Analysis{};
  r.enrichment = Enrichment{};
}

void Core::RunStage(Job& j, int stage) {
  const TimePoint start = time_->Now();
  if (!BeginStage(j, stage, start)) return;
  absl::Status st;
  if (stage == 0 && !j.ctx.input.rejection.ok()) {
    st = j.ctx.input.rejection;
  } else {
    const StageFn& fn =
        stage == 0 ? stages_.decode : (stage == 1 ? stages_.analyse : stages_.enrich);
    try {
      st = fn(j.ctx);
    } catch (const std::exception& e) {
      st = absl::InternalError(absl::StrCat("threw an exception: ", e.what()));
    } catch (...) {
      st = absl::InternalError("threw an exception of unknown type");
    }
  }
  EndStage(j, stage, start, time_->Now(), st);
}

void Core::RunBatch(const std::vector<BatchQueue::Item>& items) {
  const TimePoint start = time_->Now();
  std::vector<const BatchQueue::Item*> run;
  std::vector<FrameContext*> frames;
  run.reserve(items.size());
  frames.reserve(items.size());
  TimePoint oldest = start;
  for (const BatchQueue::Item& item : items) {
    if (!BeginStage(*item.job, 1, start)) continue;
    run.push_back(&item);
    frames.push_back(&item.job->ctx);
    oldest = std::min(oldest, item.arrived);
  }
  if (run.empty()) return;
  if (auto* obs = observer()) {
    obs->OnBatch(static_cast<uint32_t>(run.size()), SecondsBetween(oldest, start));
  }
  std::vector<absl::Status> statuses(run.size());
  try {
    stages_.analyse_batch(frames, statuses);
  } catch (const std::exception& e) {
    statuses.assign(run.size(), absl::InternalError(absl::StrCat(
                                    "threw an exception (whole batch failed): ", e.what())));
  } catch (...) {
    statuses.assign(run.size(),
                    absl::InternalError("threw an exception of unknown type (whole batch failed)"));
  }
  if (statuses.size() != run.size()) {
    statuses.assign(run.size(),
                    absl::InternalError(absl::StrCat("returned ", statuses.size(), " statuses for ",
                                                     run.size(), " frames (whole batch failed)")));
  }
  const TimePoint end = time_->Now();
  // A frame's analyse time is its share of the batch's run (so that summed stage times stay the
  // work done); its wait for the batch shows in its total only.
  const uint64_t share = MicrosBetween(start, end) / run.size();
  for (size_t i = 0; i < run.size(); ++i) {
    EndStage(*run[i]->job, 1, start, end, statuses[i]);
    run[i]->job->stage_us[1] = share;
  }
}

void Core::FailBatch(const std::vector<BatchQueue::Item>& items, const absl::Status& st) {
  const TimePoint now = time_->Now();
  for (const BatchQueue::Item& item : items) {
    Job& j = *item.job;
    if (j.state.load(std::memory_order_acquire) == kRunning && !j.failed) {
      EndStage(j, 1, now, now, st);
    }
  }
}

void Core::Finish(Job& j) {
  // The graph's reference to the job ends here (the stream's reorder slot may still hold one).
  JobPtr job = std::move(j.graph_ref);
  int expected = kRunning;
  if (!j.state.compare_exchange_strong(expected, kDone, std::memory_order_acq_rel)) return;
  // The frame's buffers are no longer needed; free them before the result waits for order.
  j.ctx.image = Image();
  j.ctx.luma = Image();
  std::string().swap(j.ctx.input.data);
  j.ctx.input.picture.reset();
  j.stream->OnJobDone(j);
}

bool Core::Stop(std::chrono::milliseconds drain_timeout) {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  if (stopped_.load()) return true;
  {
    std::lock_guard<std::mutex> lock(registry_mu_);
    stopping_.store(true, std::memory_order_release);
  }
  if (graph_) graph_->FlushBatches();
  auto streams = SnapshotStreams();
  for (auto& s : streams) s->Close();
  const TimePoint deadline = time_->Now() + drain_timeout;
  bool drained;
  {
    std::unique_lock<std::mutex> lock(registry_mu_);
    drained = time_->WaitUntil(progress_cv_, lock, deadline, [&] {
      return std::all_of(streams.begin(), streams.end(),
                         [](const std::shared_ptr<StreamState>& s) { return s->complete(); });
    });
  }
  for (auto& s : streams) s->Cancel();
  streams.clear();
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    timer_exit_ = true;
  }
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  if (graph_) graph_->Shutdown();
  stopped_.store(true);
  return drained;
}

PipelineCounters Core::counters() const {
  PipelineCounters c;
  c.admitted = admitted.load(std::memory_order_relaxed);
  c.delivered = delivered.load(std::memory_order_relaxed);
  c.reorder_depth = reorder_depth.load(std::memory_order_relaxed);
  c.batch_waiting = batch_waiting.load(std::memory_order_relaxed);
  for (int i = 0; i < kFrameStatusCount; ++i) {
    c.by_status[i] = by_status[i].load(std::memory_order_relaxed);
  }
  c.in_flight = global_credits_.load();
  c.peak_in_flight = global_peak_.load();
  c.bytes_in_flight = global_bytes_.load();
  c.peak_bytes_in_flight = global_peak_bytes_.load();
  {
    std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(registry_mu_));
    c.active_streams = static_cast<uint32_t>(streams_.size());
  }
  return c;
}

}  // namespace framepipe::internal

// FrameService: the framepipe.v1.FramePipeline gRPC service on the callback API. One
// ProcessReactor per Process call: exactly one read and one write in flight, reads paused while
// the stream has no credit (so a slow reader pushes back through HTTP/2 flow control), the next
// write started from OnWriteDone, a frame's credit returned when its result's write completed,
// Finish on every path. Reactions never block.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "analysis/decoder.h"
#include "common/clock.h"
#include "framepipe/v1/framepipe.grpc.pb.h"
#include "pipeline/pipeline.h"

namespace framepipe {

// Service-side metrics hooks (the pipeline has its own, PipelineObserver). Thread-safe, cheap.
class ServiceObserver {
 public:
  virtual ~ServiceObserver() = default;
  virtual void OnStreamOpened() {}
  virtual void OnStreamClosed() {}
  virtual void OnStreamRejected() {}
  virtual void OnFrameRead(size_t /*payload_bytes*/) {}
  // A result's write completed: seconds from hand-off to completion, message bytes, and the
  // frame's capture_time_us (0 when the client did not set it).
  virtual void OnResultWritten(double /*write_seconds*/, size_t /*bytes*/,
                               int64_t /*capture_time_us*/) {}
  // Frames read but not admitted because the server was shutting down.
  virtual void OnNotAdmitted(uint64_t /*frames*/) {}
  // Results that could not be written because the client went away or cancelled.
  virtual void OnResultsDiscarded(uint64_t /*results*/) {}
};

struct ServiceOptions {
  uint32_t default_max_in_flight = 8;    // when StreamConfig.max_in_flight is 0 or absent
  uint32_t max_stream_in_flight = 1024;  // largest max_in_flight a client may ask for
  uint32_t max_streams = 256;            // concurrent Process calls; beyond: RESOURCE_EXHAUSTED
  DecodeLimits limits;                   // for charging frames against the memory budget
  std::chrono::milliseconds idle_timeout{0};  // end streams that send nothing this long (0=off)
  // Bytes that messages being received (and read frames not yet admitted) may hold; a stream
  // reserves room for its next message before it reads it. 0 = no budget.
  uint64_t read_budget_bytes = 0;
  uint64_t first_read_bytes = 1 << 20;  // what a stream's first message is assumed to need
  std::string backend = "cpu";
  std::string version;
};

class ProcessReactor;

class FrameService final : public v1::FramePipeline::CallbackService {
 public:
  FrameService(Pipeline* pipeline, ServiceOptions options, ServiceObserver* observer);
  ~FrameService() override;

  grpc::ServerBidiReactor<v1::ProcessRequest, v1::FrameResult>* Process(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::Stats* response) override;

  // Stops accepting streams; every open stream stops reading, has its admitted frames answered
  // and ends (UNAVAILABLE, unless the client had already half-closed: then OK).
  void BeginDrain();
  // Waits until no Process call is open or `deadline` passes. True if none is open.
  bool WaitForStreams(TimePoint deadline);
  uint32_t active_streams() const;
  bool draining() const { return draining_.load(); }

 private:
  friend class ProcessReactor;
  bool Admit(ProcessReactor* r, std::string* why_not);  // registers, or says why not
  void Unregister(ProcessReactor* r);
  void IdleLoop();
  // Read budget: TryReserve counts `bytes` or queues `r` (FIFO) to be granted them later (by a
  // call to r->GrantRead from ReleaseReserved); Forget drops r from the queue.
  bool TryReserve(ProcessReactor* r, uint64_t bytes);
  void ReleaseReserved(uint64_t bytes);
  void ForgetReservation(ProcessReactor* r);

  Pipeline* const pipeline_;
  const ServiceOptions options_;
  ServiceObserver* const observer_;
  const TimePoint started_ = Now();
  const std::string instance_ = MakeInstanceId();
  static std::string MakeInstanceId();

  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> streams_total_{0};
  std::atomic<uint64_t> streams_rejected_{0};
  std::atomic<uint64_t> frames_out_{0};
  std::atomic<uint64_t> stream_counter_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::set<ProcessReactor*> reactors_;
  uint64_t read_used_ = 0;
  std::deque<std::pair<ProcessReactor*, uint64_t>> read_waiters_;
  bool idle_exit_ = false;
  std::thread idle_thread_;
};

}  // namespace framepipe

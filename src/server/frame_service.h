// FrameService: the framepipe.v1.FramePipeline gRPC service on the callback API. Process calls
// are served by ProcessReactor (process_reactor.h), one per call; this class is their registry:
// it admits or refuses new streams (server-wide and per-peer caps, drain), shares the read budget
// among them, ends streams that stop sending (first-frame and idle timeouts), and answers
// GetStats.
//
// Process is registered as a raw method (ByteBuffer in and out): the reactor parses each message
// itself, so a message that is not a ProcessRequest is told apart from the end of the stream.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "analysis/decoder.h"
#include "common/clock.h"
#include "framepipe/v1/framepipe.grpc.pb.h"
#include "pipeline/pipeline.h"
#include "server/peer_log.h"
#include "server/read_budget.h"
#include "server/service_observer.h"

namespace framepipe {

struct ServiceOptions {
  uint32_t default_max_in_flight = 8;    // when StreamConfig.max_in_flight is 0 or absent
  uint32_t max_stream_in_flight = 1024;  // largest max_in_flight a client may ask for
  uint32_t max_streams = 256;            // concurrent Process calls; beyond: RESOURCE_EXHAUSTED
  uint32_t max_streams_per_peer = 64;    // concurrent Process calls from one IP address
  int peer_ipv6_prefix = 64;  // IPv6 clients count as one address per prefix (see PeerHost)
  DecodeLimits limits;        // for charging frames against the memory budget
  // A stream whose first frame has not arrived this long after the call started is ended
  // (DEADLINE_EXCEEDED); a StreamConfig alone does not count. 0 = off.
  std::chrono::milliseconds first_frame_timeout{10000};
  std::chrono::milliseconds idle_timeout{60000};  // no message for this long: ended (0 = off)
  // Bytes that messages being received (and read frames not yet admitted) may hold; a stream
  // reserves room for its next message before it reads it. 0 = no budget. One address may hold
  // at most max_streams_per_peer / max_streams of it (see ReadBudget).
  uint64_t read_budget_bytes = 0;
  uint64_t first_read_bytes = 1 << 20;  // what a stream's first message is assumed to need
  // Frames in flight (admitted, result not yet written) that the streams of one address may
  // hold together: a client that stops reading its results keeps their credits, and must not
  // keep the pipeline's whole --global-max-in-flight. 0 = no such limit.
  uint32_t max_in_flight_per_peer = 0;
  // A stream whose result write has not completed for this long is cancelled: its client no
  // longer reads (HTTP/2 flow control holds the write), and it would keep its credits and its
  // slot for ever. 0 = never.
  std::chrono::milliseconds write_timeout{60000};
  // Bearer tokens a call must present ("authorization: Bearer <token>"); empty = no check.
  // Checked here when TLS ends in the server's own front door (gRPC then sees plaintext and
  // cannot run its auth processor).
  std::vector<std::string> auth_tokens;
  // Maps gRPC's peer string to the client's address (the front door hands gRPC local sockets).
  std::function<std::string(const std::string&)> resolve_peer;
  const TimeSource* time = TimeSource::Real();
  std::chrono::milliseconds watchdog_tick{250};  // how often timeouts are checked
  PeerLog* peer_log = nullptr;  // shared aggregated log (not owned); null: the service has its own
  std::string backend = "cpu";
  std::string version;
  // Video streams decode on the GPU (NVDEC through FFmpeg); set by the server when the CUDA
  // backend is active and FFmpeg could open a CUDA device.
  bool video_hardware = false;
};

class ProcessReactor;

// The read budget one client address may hold: max_streams_per_peer / max_streams of it (0: no
// share, when there is no per-address stream cap).
uint64_t PeerReadShare(const ServiceOptions& o);
// The same fraction of the pipeline's global in-flight limit (0: no share).
uint32_t PeerInFlightShare(uint32_t global_max_in_flight, const ServiceOptions& o);

class FrameService final
    : public v1::FramePipeline::WithRawCallbackMethod_Process<
          v1::FramePipeline::WithCallbackMethod_GetStats<v1::FramePipeline::Service>> {
 public:
  FrameService(Pipeline* pipeline, ServiceOptions options, ServiceObserver* observer);
  ~FrameService() override;

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Process(
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
  // Checks every stream's first-frame and idle deadlines now (the watchdog does it every tick).
  void CheckTimeouts();

 private:
  friend class ProcessReactor;

  // Registers `r`, or returns why not.
  std::optional<StreamRefusal> Register(ProcessReactor* r, std::string* why_not);
  void Unregister(ProcessReactor* r);  // from OnDone; may delete r
  // Runs `fn` on every registered reactor outside the lock, each kept alive meanwhile.
  void ForEachReactor(const std::function<void(ProcessReactor*)>& fn);
  void Release(ProcessReactor* r);  // drops a hold taken under mu_; may delete r
  void WatchdogLoop();
  // Read budget: TryReserve counts `bytes` or queues `r` to be granted them later (by a call to
  // r->GrantRead when another stream releases room); Forget drops r's queued request.
  bool TryReserve(ProcessReactor* r, uint64_t bytes);
  void ReleaseReserved(ProcessReactor* r, uint64_t bytes);
  void ForgetReservation(ProcessReactor* r);
  // Applies `change` to the read budget under the lock, then runs the grants it made (each
  // granted reactor held meanwhile).
  void UpdateReadBudget(const std::function<std::vector<ReadBudget::Grant>()>& change);
  // OK, or UNAUTHENTICATED saying what is missing (with auth_tokens set).
  absl::Status Authorize(const grpc::CallbackServerContext* ctx) const;

  Pipeline* const pipeline_;
  const ServiceOptions options_;
  ServiceObserver* const observer_;
  const TimeSource* const time_;
  const TimePoint started_ = Now();
  const std::string instance_ = MakeInstanceId();
  static std::string MakeInstanceId();
  std::unique_ptr<PeerLog> own_peer_log_;
  PeerLog* const peer_log_;

  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> streams_total_{0};
  std::atomic<uint64_t> streams_rejected_{0};
  std::atomic<uint64_t> frames_out_{0};
  std::atomic<uint64_t> stream_counter_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::set<ProcessReactor*> reactors_;
  struct PeerStreams {
    uint32_t streams = 0;
    std::shared_ptr<CreditGroup> credits;  // the address's share of the in-flight limit
  };
  std::map<std::string, PeerStreams> streams_by_peer_;
  ReadBudget read_budget_;
  bool watchdog_exit_ = false;
  std::thread watchdog_;
};

}  // namespace framepipe

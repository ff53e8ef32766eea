// ProcessReactor: one Process call. Exactly one read and one write in flight, reads paused while
// the stream has no credit (a slow reader pushes back through HTTP/2 flow control), the next
// write started from OnWriteDone, a frame's credit returned when its result's write completed.
//
// Lifecycle: one Phase, changed only under mu_:
//
//   kOpen ──(half-close | bad message | drain | timeout | refusal)──▶ kClosing ──┐
//     │                                                                            ├─▶ kFinished
//     └──────────────(client cancelled | a write failed)──────────▶ kAbandoned ───┘
//
// MaybeFinish() is the only place that moves to kFinished and the only caller of Finish(), so
// Finish runs exactly once on every path; the object is released in exactly one place, OnDone
// (through FrameService::Unregister). Besides the phase, four facts about work in progress are
// tracked: a read in flight (or being started), a write in flight, a thread inside the pipeline
// stream's producer calls (TryAdmit/Close: one at a time, as Stream requires) and a frame
// waiting for a credit. Finishing waits for none of them but the write and the producer call.
//
// Thread rules: gRPC reactions (OnReadDone, OnWriteDone, OnCancel), pipeline callbacks
// (OnResult, OnCredit, OnComplete), the drain and the watchdog run on different threads,
// concurrently; mu_ guards the state below it. No gRPC operation (StartRead/StartWrite/Finish)
// and no pipeline call that can run callbacks (TryAdmit, Close, Cancel) is made with mu_ held.
// gRPC orders a call's reactions (OnDone after everything else) inside libgrpc, where
// ThreadSanitizer cannot see it: every reaction and callback holds a TsanScope on the reactor
// (and releases it before handing an operation to gRPC), which states that order to TSan.
//
// Files: process_reactor.cc is the lifecycle (phases, timeouts, drain, finishing, the close log);
// process_reactor_io.cc the data path (reads under the budget, config and frames, admission,
// writes).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/latency_histogram.h"
#include "framepipe/v1/framepipe.pb.h"
#include "grpcpp/grpcpp.h"
#include "pipeline/stream.h"
#include "server/service_observer.h"

namespace framepipe {

class FrameService;

class ProcessReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  enum class Phase {
    kOpen,       // reading messages and admitting frames
    kClosing,    // no more input: answering what was admitted, then Finish with the outcome
    kAbandoned,  // the client is gone: nothing more is written; Finish once the write is back
    kFinished,   // Finish was called; OnDone follows
  };

  ProcessReactor(FrameService* svc, grpc::CallbackServerContext* ctx);

  // Registers with the service and starts reading, or finishes at once if refused.
  void Start();
  // Service drain: stop reading, answer what was admitted, end.
  void Drain();
  // Ends the stream if its first frame or its next message is overdue.
  void CheckTimeouts(TimePoint now);
  // The read budget counted `bytes` for this stream: start the read.
  void GrantRead(uint64_t bytes);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  const std::string& peer_host() const { return peer_host_; }
  const grpc::CallbackServerContext* ctx() const { return ctx_; }

  // Guarded by the service's mutex: `holds` keep this object alive while the service uses it
  // outside that mutex; `done` is set by OnDone; `registered` once Register counted it.
  int holds = 0;
  bool done = false;
  bool registered = false;
  // Set by Register, before the stream opens: the address's share of the in-flight limit.
  std::shared_ptr<CreditGroup> credit_group;

 private:
  struct Outgoing {
    grpc::ByteBuffer msg;
    Credit credit;
    TimePoint handed;
    size_t bytes = 0;
    int64_t capture_time_us = 0;
  };
  struct PendingFrame {
    FrameInput input;
    uint64_t cost = 0;
  };

  void ReadNext();
  void HandleMessage(v1::ProcessRequest* request, size_t bytes);
  void HandleFrame(v1::Frame* frame, size_t bytes);
  absl::Status OpenStream(const v1::StreamConfig* config);
  void AdmitPending();
  void OnResult(Delivery d);
  void OnComplete();
  // Moves kOpen -> kClosing with `status` (OK for a half-close or a drain).
  void EndInput(absl::Status status);
  void CloseStreamIfEnding();
  void MaybeFinish();
  void CancelStream();
  void ReleaseReservation();
  void NoteNotAdmittedLocked(uint64_t seq);
  absl::Status FinalStatusLocked() const;
  void LogOpen(const std::string& id, uint32_t max_in_flight, const char* overload,
               int64_t frame_timeout_ms, const char* video);
  void LogClose();

  FrameService* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const std::string peer_;       // the client's address, "ipv4:10.0.0.5:41234"
  const std::string peer_host_;  // "10.0.0.5": what per-peer limits and logs count by
  const std::string id_;
  TimePoint opened_;
  bool log_lines_ = false;  // this stream's open/close lines are written (PeerLog budget)
  std::atomic<uint64_t> by_status_[kFrameStatusCount] = {};

  mutable std::mutex mu_;
  Phase phase_ = Phase::kOpen;
  absl::Status end_status_;  // why input ended, when it was an error (or a refusal)
  bool refused_ = false;
  bool half_closed_ = false;
  bool draining_ = false;
  // Work in progress.
  bool read_in_flight_ = false;
  bool read_starting_ = false;    // StartRead is being called outside the lock
  bool awaiting_budget_ = false;  // queued for read budget
  bool write_in_flight_ = false;
  TimePoint write_started_{};   // when the write in flight started (the service's clock)
  bool cancelling_ = false;     // the watchdog is cancelling the call: nothing may finish it
  absl::Status write_expired_;  // set when the write timeout cancelled the call
  bool producer_busy_ = false;  // a thread is inside stream_->TryAdmit or stream_->Close
  bool retry_admit_ = false;    // a credit came back while the producer was busy
  std::optional<PendingFrame> pending_;   // read, waiting for a credit (reads pause meanwhile)
  std::unique_ptr<StreamHandle> stream_;  // a pipeline Stream, or a VideoStream in front of one
  bool stream_closed_ = false;
  bool stream_complete_ = false;
  // Input.
  grpc::ByteBuffer req_;  // the one read in flight
  uint64_t messages_ = 0;
  bool got_config_ = false;
  bool got_frame_ = false;
  uint64_t last_seq_ = 0;
  uint64_t expected_bytes_;  // size assumed for the next message (read budget)
  uint64_t reserved_ = 0;    // read budget held: the read in flight or the frame read
  TimePoint last_activity_;  // last message received, or the read started after a wait
  bool include_thumbnail_ = false;
  std::string stream_id_;
  // Output.
  std::deque<Outgoing> queue_;  // results waiting for the write in flight
  Outgoing current_;
  // Outcome and counters (for Stats, metrics and the close line).
  absl::Status final_;
  uint64_t frames_in_ = 0;
  uint64_t frames_out_ = 0;
  uint64_t not_admitted_ = 0;
  uint64_t first_not_admitted_seq_ = 0;
  uint64_t discarded_ = 0;    // results not written: the client went away
  LatencyHistogram latency_;  // server-side total per result (admitted -> handed to the writer)
};

}  // namespace framepipe

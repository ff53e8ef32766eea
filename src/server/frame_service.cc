#include "server/frame_service.h"

#include <unistd.h>

#include <algorithm>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/process_reactor.h"
#include "server/security.h"

namespace framepipe {

const char* StreamRefusalLabel(StreamRefusal r) {
  static const char* kNames[] = {"max_streams", "peer_limit", "draining", "unauthenticated"};
  return kNames[static_cast<int>(r)];
}

const char* StreamExpiryLabel(StreamExpiry e) {
  switch (e) {
    case StreamExpiry::kFirstFrame:
      return "first_frame";
    case StreamExpiry::kIdle:
      return "idle";
    case StreamExpiry::kWrite:
      return "write";
    case StreamExpiry::kCount:
      break;
  }
  return "unknown";
}

std::string FrameService::MakeInstanceId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::random_device rd;
  return absl::StrFormat("%s/%d/%08x", host, static_cast<int>(getpid()), rd());
}

uint64_t PeerReadShare(const ServiceOptions& o) {
  if (o.max_streams_per_peer == 0 || o.max_streams_per_peer >= o.max_streams) return 0;
  return o.read_budget_bytes / o.max_streams * o.max_streams_per_peer;
}

uint32_t PeerInFlightShare(uint32_t global_max_in_flight, const ServiceOptions& o) {
  if (o.max_streams_per_peer == 0 || o.max_streams_per_peer >= o.max_streams) return 0;
  return static_cast<uint32_t>(std::max<uint64_t>(
      1, uint64_t{global_max_in_flight} * o.max_streams_per_peer / o.max_streams));
}

FrameService::FrameService(Pipeline* pipeline, ServiceOptions options, ServiceObserver* observer)
    : pipeline_(pipeline),
      options_(std::move(options)),
      observer_(observer),
      time_(options_.time ? options_.time : TimeSource::Real()),
      own_peer_log_(options_.peer_log ? nullptr : std::make_unique<PeerLog>()),
      peer_log_(options_.peer_log ? options_.peer_log : own_peer_log_.get()),
      read_budget_(options_.read_budget_bytes, PeerReadShare(options_)) {
  watchdog_ = std::thread([this] { WatchdogLoop(); });
}

FrameService::~FrameService() {
  {
    std::lock_guard<std::mutex> l(mu_);
    watchdog_exit_ = true;
  }
  cv_.notify_all();
  watchdog_.join();
  peer_log_->Flush(time_->Now(), /*force=*/true);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* FrameService::Process(
    grpc::CallbackServerContext* context) {
  auto* r = new ProcessReactor(this, context);
  r->Start();
  return r;
}

absl::Status FrameService::Authorize(const grpc::CallbackServerContext* ctx) const {
  if (options_.auth_tokens.empty()) return absl::OkStatus();
  return CheckBearerToken(ctx->client_metadata(), options_.auth_tokens);
}

std::optional<StreamRefusal> FrameService::Register(ProcessReactor* r, std::string* why_not) {
  if (absl::Status auth = Authorize(r->ctx()); !auth.ok()) {
    *why_not = std::string(auth.message());
    return StreamRefusal::kUnauthenticated;
  }
  std::lock_guard<std::mutex> l(mu_);
  if (draining_) {
    *why_not = "server is shutting down and accepts no new streams";
    return StreamRefusal::kDraining;
  }
  if (reactors_.size() >= options_.max_streams) {
    *why_not = absl::StrCat("server is at its limit of ", options_.max_streams,
                            " concurrent streams (--max-streams); retry later or elsewhere");
    return StreamRefusal::kMaxStreams;
  }
  PeerStreams& peer = streams_by_peer_[r->peer_host()];
  uint32_t& mine = peer.streams;
  if (options_.max_streams_per_peer > 0 && mine >= options_.max_streams_per_peer) {
    if (mine == 0) streams_by_peer_.erase(r->peer_host());
    *why_not = absl::StrCat("this client address (", r->peer_host(), ") has ",
                            options_.max_streams_per_peer,
                            " streams open, the server's limit per address "
                            "(--max-streams-per-peer); close one first");
    return StreamRefusal::kPeerLimit;
  }
  ++mine;
  if (options_.max_in_flight_per_peer > 0 && !peer.credits) {
    peer.credits = std::make_shared<CreditGroup>(options_.max_in_flight_per_peer);
  }
  r->credit_group = peer.credits;
  r->registered = true;
  reactors_.insert(r);
  return std::nullopt;
}

void FrameService::Unregister(ProcessReactor* r) {
  bool del;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (r->registered) {
      reactors_.erase(r);
      auto it = streams_by_peer_.find(r->peer_host());
      if (it != streams_by_peer_.end() && --it->second.streams == 0) streams_by_peer_.erase(it);
    }
    r->done = true;
    del = r->holds == 0;
    // Under the lock: once the last stream is gone, the service may be destroyed at any moment.
    cv_.notify_all();
  }
  if (del) delete r;
}

void FrameService::Release(ProcessReactor* r) {
  bool del;
  {
    std::lock_guard<std::mutex> l(mu_);
    del = --r->holds == 0 && r->done;
  }
  if (del) delete r;
}

void FrameService::ForEachReactor(const std::function<void(ProcessReactor*)>& fn) {
  std::vector<ProcessReactor*> all;
  {
    std::lock_guard<std::mutex> l(mu_);
    all.reserve(reactors_.size());
    for (ProcessReactor* r : reactors_) {
      ++r->holds;
      all.push_back(r);
    }
  }
  for (ProcessReactor* r : all) {
    fn(r);
    Release(r);
  }
}

bool FrameService::TryReserve(ProcessReactor* r, uint64_t bytes) {
  std::lock_guard<std::mutex> l(mu_);
  return read_budget_.Reserve(r, r->peer_host(), bytes);
}

void FrameService::ReleaseReserved(ProcessReactor* r, uint64_t bytes) {
  UpdateReadBudget([&] { return read_budget_.Release(r->peer_host(), bytes); });
}

void FrameService::ForgetReservation(ProcessReactor* r) {
  UpdateReadBudget([&] { return read_budget_.Forget(r, r->peer_host()); });
}

void FrameService::UpdateReadBudget(const std::function<std::vector<ReadBudget::Grant>()>& change) {
  std::vector<ReadBudget::Grant> grants;
  {
    std::lock_guard<std::mutex> l(mu_);
    grants = change();
    for (const ReadBudget::Grant& g : grants) ++static_cast<ProcessReactor*>(g.who)->holds;
  }
  for (const ReadBudget::Grant& g : grants) {
    auto* r = static_cast<ProcessReactor*>(g.who);
    r->GrantRead(g.bytes);
    Release(r);
  }
}

void FrameService::CheckTimeouts() {
  const TimePoint now = time_->Now();
  ForEachReactor([now](ProcessReactor* r) { r->CheckTimeouts(now); });
  peer_log_->Flush(now);
}

void FrameService::WatchdogLoop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!watchdog_exit_) {
    time_->WaitUntil(cv_, l, time_->Now() + options_.watchdog_tick, [&] { return watchdog_exit_; });
    if (watchdog_exit_) break;
    l.unlock();
    CheckTimeouts();
    l.lock();
  }
}

grpc::ServerUnaryReactor* FrameService::GetStats(grpc::CallbackServerContext* context,
                                                 const v1::GetStatsRequest* /*request*/,
                                                 v1::Stats* s) {
  auto* reactor = context->DefaultReactor();
  if (absl::Status auth = Authorize(context); !auth.ok()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(auth.message())));
    return reactor;
  }
  PipelineCounters c = pipeline_->counters();
  s->set_frames_in(c.admitted);
  s->set_frames_out(frames_out_.load());
  s->set_in_flight(c.in_flight);
  s->set_peak_in_flight(c.peak_in_flight);
  s->set_bytes_in_flight(c.bytes_in_flight);
  s->set_peak_bytes_in_flight(c.peak_bytes_in_flight);
  s->set_active_streams(active_streams());
  s->set_streams_total(streams_total_.load());
  s->set_streams_rejected(streams_rejected_.load());
  s->set_frames_ok(c.by_status[static_cast<int>(FrameStatus::kOk)]);
  s->set_frames_invalid_argument(c.by_status[static_cast<int>(FrameStatus::kInvalidArgument)]);
  s->set_frames_deadline_exceeded(c.by_status[static_cast<int>(FrameStatus::kDeadlineExceeded)]);
  s->set_frames_dropped(c.by_status[static_cast<int>(FrameStatus::kDropped)]);
  s->set_frames_internal(c.by_status[static_cast<int>(FrameStatus::kInternal)]);
  s->set_backend(options_.backend);
  s->set_workers(static_cast<uint32_t>(pipeline_->workers()));
  s->set_uptime_seconds(SecondsBetween(started_, Now()));
  s->set_version(options_.version);
  s->set_instance(instance_);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void FrameService::BeginDrain() {
  {
    std::lock_guard<std::mutex> l(mu_);
    draining_ = true;
  }
  ForEachReactor([](ProcessReactor* r) { r->Drain(); });
}

bool FrameService::WaitForStreams(TimePoint deadline) {
  std::unique_lock<std::mutex> l(mu_);
  return time_->WaitUntil(cv_, l, deadline, [&] { return reactors_.empty(); });
}

uint32_t FrameService::active_streams() const {
  std::lock_guard<std::mutex> l(mu_);
  return static_cast<uint32_t>(reactors_.size());
}

}  // namespace framepipe

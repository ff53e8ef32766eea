#include "pipeline/pipeline.h"

#include "common/status.h"
#include "pipeline/internal/core.h"
#include "pipeline/internal/stream_state.h"

namespace framepipe {

void Credit::Release() {
  if (stream_) {
    std::shared_ptr<internal::StreamState> s = std::move(stream_);
    s->ReleaseCredit();
  }
}

Stream::Stream(std::shared_ptr<internal::StreamState> state) : state_(std::move(state)) {}
Stream::~Stream() { state_->Cancel(); }

AdmitOutcome Stream::TryAdmit(FrameInput& frame, uint64_t cost_bytes) {
  return state_->TryAdmit(frame, cost_bytes, nullptr);
}
absl::Status Stream::Submit(FrameInput frame, uint64_t cost_bytes) {
  return state_->Submit(std::move(frame), cost_bytes);
}
void Stream::Close() { state_->Close(); }
void Stream::Cancel() { state_->Cancel(); }
const std::string& Stream::id() const { return state_->options().id; }
StreamCounters Stream::counters() const { return state_->counters(); }

Pipeline::Pipeline(std::shared_ptr<internal::Core> core) : core_(std::move(core)) {}

Pipeline::~Pipeline() { core_->Stop(std::chrono::seconds(5)); }

absl::StatusOr<std::unique_ptr<Pipeline>> Pipeline::Create(const PipelineOptions& options,
                                                           Stages stages) {
  auto core = std::make_shared<internal::Core>(options, std::move(stages));
  FP_RETURN_IF_ERROR(core->Start());
  return std::unique_ptr<Pipeline>(new Pipeline(std::move(core)));
}

absl::StatusOr<std::unique_ptr<Stream>> Pipeline::OpenStream(StreamOptions options) {
  FP_ASSIGN_OR_RETURN(auto state, core_->OpenStream(std::move(options)));
  return std::unique_ptr<Stream>(new Stream(std::move(state)));
}

bool Pipeline::Stop(std::chrono::milliseconds drain_timeout) { return core_->Stop(drain_timeout); }

PipelineCounters Pipeline::counters() const { return core_->counters(); }
int Pipeline::workers() const { return core_->workers(); }

bool Pipeline::TryChargeBytes(uint64_t bytes) { return core_->TryChargeBytes(bytes); }
void Pipeline::ReleaseBytes(uint64_t bytes) { core_->ReleaseCharged(bytes); }

}  // namespace framepipe

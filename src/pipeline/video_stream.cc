#include "pipeline/video_stream.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace framepipe {
namespace {

constexpr size_t kIntakePackets = 4;       // packets waiting for the decoder...
constexpr size_t kIntakeBytes = 8u << 20;  // ...and their bytes (one packet is always taken)

}  // namespace

class VideoStream::State {
 public:
  State(StreamOptions outer, std::unique_ptr<VideoDecoder> decoder, VideoObserver* observer)
      : outer_(std::move(outer)), decoder_(std::move(decoder)), observer_(observer) {}

  ~State() {
    if (thread_.joinable()) {
      if (thread_.get_id() == std::this_thread::get_id()) {
        thread_.detach();
      } else {
        thread_.join();
      }
    }
  }

  absl::Status Start(Pipeline& pipeline, const std::shared_ptr<State>& self) {
    StreamOptions inner = outer_;
    inner.on_result = [this](Delivery d) { OnInnerResult(std::move(d)); };
    inner.on_credit = nullptr;  // the decode thread admits with the blocking Submit
    inner.on_complete = [this] { OnInnerComplete(); };
    FP_ASSIGN_OR_RETURN(inner_, pipeline.OpenStream(std::move(inner)));
    thread_ = std::thread([self] { self->Run(); });
    return absl::OkStatus();
  }

  AdmitOutcome TryAdmit(FrameInput& frame) {
    std::lock_guard<std::mutex> l(mu_);
    if (closed_) return AdmitOutcome::kClosed;
    if (intake_.size() >= kIntakePackets || (!intake_.empty() && intake_bytes_ >= kIntakeBytes)) {
      waiting_ = true;
      return AdmitOutcome::kNoCredit;
    }
    frame.order_key = next_key_++;
    intake_bytes_ += frame.data.size();
    intake_.push_back(std::move(frame));
    cv_.notify_one();
    return AdmitOutcome::kAdmitted;
  }

  void Close() {
    std::lock_guard<std::mutex> l(mu_);
    closed_ = true;
    cv_.notify_one();
  }

  void Cancel() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (cancelled_) return;
      cancelled_ = closed_ = true;
      intake_.clear();
      cv_.notify_one();
    }
    // The decode thread may be blocked in inner_->Submit: Cancel wakes it with a refusal.
    if (inner_) inner_->Cancel();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

 private:
  // The decode thread: packets in send order through the decoder, outputs into the inner stream.
  void Run() {
    if (observer_) observer_->OnDecodeThread(+1);
    struct Exit {
      VideoObserver* observer;
      ~Exit() {
        if (observer) observer->OnDecodeThread(-1);
      }
    } exit{observer_};
    for (;;) {
      FrameInput in;
      bool notify = false;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return !intake_.empty() || closed_; });
        if (cancelled_) return;
        if (intake_.empty()) break;  // closed, and every packet taken
        in = std::move(intake_.front());
        intake_.pop_front();
        intake_bytes_ -= in.data.size();
        notify = waiting_;
        waiting_ = false;
      }
      if (notify && outer_.on_credit) outer_.on_credit();
      if (!Handle(std::move(in))) return;
    }
    // Half-close: the decoder gives up what it holds; a packet still without a picture is
    // answered too.
    std::vector<DecodedPicture> pictures;
    decoder_->Flush(&pictures);
    if (!Emit(pictures)) return;
    while (!awaiting_.empty()) {
      if (!RejectOldestAwaiting(
              "the decoder returned no picture for it by the end of the stream")) {
        return;
      }
    }
    inner_->Close();
  }

  bool Handle(FrameInput in) {
    if (!in.rejection.ok()) {  // refused by the ingest (tags over the limits): answered as is
      std::string().swap(in.data);
      return Submit(std::move(in));
    }
    if (in.kind != PayloadKind::kVideoPacket) {
      const char* why = in.kind == PayloadKind::kNone
                            ? "frame has no payload: a video stream's frames carry video_packet"
                            : "frame carries an image (encoded or raw) but the stream is a video "
                              "stream (StreamConfig.video is set): send video_packet";
      return Reject(std::move(in), why);
    }
    if (absl::Status framing = decoder_->CheckFraming(in.data); !framing.ok()) {
      if (!need_keyframe_) MarkBroken(in.seq);  // what follows may depend on it
      return RejectPacket(std::move(in), framing.message());
    }
    const bool key = decoder_->IsKeyframe(in.data);
    if (need_keyframe_ && !key) {
      std::string why =
          !seen_keyframe_
              ? absl::StrCat("video packet pts=", in.pts,
                             " comes before the stream's first keyframe (an H.264 IDR or HEVC "
                             "IRAP picture): it cannot be decoded")
              : absl::StrCat("video packet pts=", in.pts, " follows packet seq=", rejected_seq_,
                             ", which could not be decoded: packets are skipped until the next "
                             "keyframe");
      return Reject(std::move(in), why);
    }
    need_keyframe_ = false;
    seen_keyframe_ = true;
    const uint64_t key_id = in.order_key;
    const std::string data = std::move(in.data);
    const int64_t pts = in.pts;
    const uint64_t seq = in.seq;
    in.data.clear();
    awaiting_.emplace(key_id, Awaiting{std::move(in), fed_++});

    std::vector<DecodedPicture> pictures;
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status st = decoder_->Decode(VideoPacket{key_id, data, pts}, &pictures);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (observer_)
      observer_->OnVideoDecoded(decoder_->codec(), secs, static_cast<int>(pictures.size()));
    if (!st.ok()) {
      auto it = awaiting_.find(key_id);
      if (it != awaiting_.end()) {
        FrameInput failed = std::move(it->second.input);
        awaiting_.erase(it);
        MarkBroken(seq);
        if (!RejectPacket(std::move(failed), st.message())) return false;
      }
    }
    if (!Emit(pictures)) return false;
    // A packet whose picture has not come out long after the decoder's reorder delay never
    // will: the decoder dropped it. It is answered now rather than holding its stream's order -
    // and the client's window - until the end. A decoder with reorder delay d outputs a picture
    // once d + 1 are buffered and it is the first in display order, which can take up to about
    // 2d later packets (a P-frame waits for the B-frames before it and then for d more); the
    // limit is 2d + 2, or the longest wait seen so far plus one, and never over 16 + 1.
    const uint64_t limit = static_cast<uint64_t>(std::min(
        kMaxVideoReorderDelay + 1, std::max(2 * decoder_->ReorderDelay() + 2, max_lag_ + 1)));
    while (!awaiting_.empty() && fed_ - 1 - awaiting_.begin()->second.fed > limit) {
      if (!RejectOldestAwaiting(absl::StrCat("the decoder returned no picture for it within ",
                                             limit, " later packets"))) {
        return false;
      }
    }
    return true;
  }

  // Pictures in display order into the inner stream, each as its packet's frame.
  bool Emit(std::vector<DecodedPicture>& pictures) {
    for (DecodedPicture& p : pictures) {
      auto it = awaiting_.find(p.packet_id);
      if (it == awaiting_.end()) {
        // The decoder lost the packet id (should not happen with H.264/HEVC): match by pts.
        it = std::find_if(awaiting_.begin(), awaiting_.end(),
                          [&](const auto& kv) { return kv.second.input.pts == p.pts; });
      }
      if (it == awaiting_.end()) continue;  // a picture of a packet already answered
      max_lag_ = std::max<int>(max_lag_, static_cast<int>(std::min<uint64_t>(
                                             fed_ - 1 - it->second.fed, kMaxVideoReorderDelay)));
      FrameInput in = std::move(it->second.input);
      awaiting_.erase(it);
      if (!p.damage.ok()) {
        MarkBroken(in.seq);
        if (!RejectPacket(std::move(in), p.damage.message())) return false;
        continue;
      }
      in.kind = PayloadKind::kPicture;
      in.picture = std::move(p.picture);
      if (!Submit(std::move(in))) return false;
    }
    return true;
  }

  void MarkBroken(uint64_t seq) {
    need_keyframe_ = true;
    rejected_seq_ = seq;
  }

  bool RejectOldestAwaiting(absl::string_view why) {
    FrameInput in = std::move(awaiting_.begin()->second.input);
    awaiting_.erase(awaiting_.begin());
    return RejectPacket(std::move(in), why);
  }

  // A packet's error: "video packet pts=P: <why>" (the pipeline prefixes "frame seq=S: ").
  bool RejectPacket(FrameInput in, absl::string_view why) {
    std::string message = absl::StrCat("video packet pts=", in.pts, ": ", why);
    return Reject(std::move(in), std::move(message));
  }

  bool Reject(FrameInput in, std::string why) {
    if (observer_) observer_->OnVideoError(decoder_->codec());
    in.kind = PayloadKind::kNone;
    std::string().swap(in.data);
    in.picture.reset();
    in.rejection = absl::InvalidArgumentError(std::move(why));
    return Submit(std::move(in));
  }

  // Admits `in` into the inner stream, charged what it holds (a picture: its pixels, BGR copy
  // and luma). False when the inner stream refuses (cancelled, or the pipeline stopping): the
  // thread ends.
  bool Submit(FrameInput in) {
    const uint64_t cost = EstimateFrameBytes(in, DecodeLimits{});
    return inner_->Submit(std::move(in), cost).ok();
  }

  // Inner results arrive in the order they were admitted (pictures in display order); they leave
  // in send order. One call at a time (the inner stream's callbacks are serial).
  void OnInnerResult(Delivery d) {
    std::lock_guard<std::mutex> l(order_mu_);
    const uint64_t key = d.result->order_key;
    if (key != next_out_) {
      parked_.emplace(key, std::move(d.result));
      return;  // d.credit goes back as d dies: a waiting result holds no credit
    }
    Deliver(std::move(d));
    DeliverParkedLocked();
  }

  void OnInnerComplete() {
    {
      std::lock_guard<std::mutex> l(order_mu_);
      // Every packet was answered through the inner stream, so nothing can still wait here;
      // if something did, it is delivered rather than lost.
      while (!parked_.empty()) {
        next_out_ = parked_.begin()->first;
        DeliverParkedLocked();
      }
    }
    if (outer_.on_complete) outer_.on_complete();
  }

  void DeliverParkedLocked() {
    for (auto it = parked_.begin(); it != parked_.end() && it->first == next_out_;
         it = parked_.erase(it)) {
      Deliver(Delivery{std::move(it->second), Credit()});
    }
  }

  void Deliver(Delivery d) {
    ++next_out_;
    if (outer_.on_result) outer_.on_result(std::move(d));
  }

  const StreamOptions outer_;
  const std::unique_ptr<VideoDecoder> decoder_;
  VideoObserver* const observer_;
  std::unique_ptr<Stream> inner_;
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<FrameInput> intake_;
  size_t intake_bytes_ = 0;
  uint64_t next_key_ = 0;
  bool waiting_ = false;
  bool closed_ = false;
  bool cancelled_ = false;

  // Decode thread only.
  struct Awaiting {
    FrameInput input;  // without its data
    uint64_t fed;      // packets fed to the decoder before this one
  };
  std::map<uint64_t, Awaiting> awaiting_;  // sent to the decoder, no picture yet; by send order
  uint64_t fed_ = 0;                       // packets fed to the decoder
  int max_lag_ = 0;  // most later packets a picture has needed before it came out
  bool need_keyframe_ = true;
  bool seen_keyframe_ = false;
  uint64_t rejected_seq_ = 0;

  // Inner callbacks only.
  std::mutex order_mu_;
  uint64_t next_out_ = 0;
  std::map<uint64_t, std::unique_ptr<FrameResult>> parked_;
};

absl::StatusOr<std::unique_ptr<VideoStream>> VideoStream::Open(
    Pipeline& pipeline, StreamOptions options, std::unique_ptr<VideoDecoder> decoder,
    VideoObserver* observer) {
  if (!decoder) return absl::InvalidArgumentError("VideoStream needs a decoder");
  auto state = std::make_shared<State>(std::move(options), std::move(decoder), observer);
  FP_RETURN_IF_ERROR(state->Start(pipeline, state));
  return std::unique_ptr<VideoStream>(new VideoStream(std::move(state)));
}

VideoStream::~VideoStream() { state_->Cancel(); }

AdmitOutcome VideoStream::TryAdmit(FrameInput& frame, uint64_t /*cost_bytes*/) {
  return state_->TryAdmit(frame);
}
void VideoStream::Close() { state_->Close(); }
void VideoStream::Cancel() { state_->Cancel(); }

}  // namespace framepipe

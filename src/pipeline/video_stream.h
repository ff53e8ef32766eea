// VideoStream: a compressed video stream (H.264/HEVC packets, one access unit per frame message,
// in decode order) in front of a pipeline Stream.
//
//   TryAdmit(packet) -> intake (a few packets) -> decode thread (one per stream: the decoder is
//   serial) -> pictures in display order, and per-packet rejections -> inner Stream (analysis in
//   parallel; the ordered temporal stage sees pictures in display order) -> results back in
//   send order -> on_result
//
// Every packet is answered exactly once, in the order it was sent, with the result of the
// picture it carried (matched by the decoder's packet id, echoing pts) or an INVALID_ARGUMENT
// naming why: before the first keyframe, rejected by the decoder, damage the decoder reported,
// depending on a rejected packet (until the next keyframe), an image payload in a video stream,
// no picture from the decoder. At Close the decoder is flushed, so the last pictures come out.
//
// Credits and deadlock: B-frames make a packet's picture come out only after later packets, so
// results must wait for earlier-sent ones. The inner stream's credits cover pictures in analysis
// only; a result that must wait for an earlier packet's result gives its credit back and waits
// in a reorder map bounded by the decoder's delay (at most 16 + 1 results). So a stream never
// deadlocks on its window, whatever max_in_flight says, and the decoder may hold up to its
// delay of packets beyond the window. Intake is bounded: TryAdmit says kNoCredit when a few
// packets wait for the decoder, and on_credit fires when one is taken.
//
// Thread rules: as Stream (one producer; Cancel from any thread, no callback after it returns).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "analysis/video_decoder.h"
#include "pipeline/pipeline.h"
#include "pipeline/stream.h"

namespace framepipe {

// Metric hooks; called on the stream's decode thread.
class VideoObserver {
 public:
  virtual ~VideoObserver() = default;
  // One packet through the decoder: how long it took and how many pictures came out.
  virtual void OnVideoDecoded(VideoCodecId /*codec*/, double /*seconds*/, int /*pictures*/) {}
  // A packet answered INVALID_ARGUMENT by the video path (any of the reasons above).
  virtual void OnVideoError(VideoCodecId /*codec*/) {}
  // A stream's decode thread started (+1) or ended (-1).
  virtual void OnDecodeThread(int /*delta*/) {}
};

class VideoStream final : public StreamHandle {
 public:
  // Opens the inner stream on `pipeline` with `options` (its callbacks receive results in send
  // order) and starts the decode thread.
  static absl::StatusOr<std::unique_ptr<VideoStream>> Open(Pipeline& pipeline,
                                                           StreamOptions options,
                                                           std::unique_ptr<VideoDecoder> decoder,
                                                           VideoObserver* observer = nullptr);
  ~VideoStream() override;  // cancels if not complete, joins the decode thread

  AdmitOutcome TryAdmit(FrameInput& frame, uint64_t cost_bytes) override;
  void Close() override;
  void Cancel() override;

  class State;

 private:
  explicit VideoStream(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

}  // namespace framepipe

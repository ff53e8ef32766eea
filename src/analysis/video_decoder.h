// Compressed video decoding (H.264, HEVC) for video streams: one decoder per stream, fed one
// access unit at a time in decode order, serial (no frame threading). Pictures come out in
// display order, each naming the packet that carried it. The FFmpeg (libavcodec) implementation
// is behind CreateVideoDecoder; this header has no FFmpeg types so the pipeline and tests can
// use fakes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/decoder.h"
#include "common/frame.h"

namespace framepipe {

enum class VideoCodecId { kH264, kHevc };
const char* VideoCodecName(VideoCodecId codec);  // "h264" | "hevc"

struct VideoFormatSpec {
  VideoCodecId codec = VideoCodecId::kH264;
  // avcC/hvcC record (packets are length-prefixed NAL units), Annex-B parameter sets, or empty
  // (Annex-B packets with in-band parameter sets).
  std::string extradata;
};

struct VideoPacket {
  uint64_t id = 0;  // the caller's name for the packet; comes back with its picture
  std::string_view data;
  int64_t pts = 0;
};

struct DecodedPicture {
  uint64_t packet_id = 0;
  int64_t pts = 0;
  std::shared_ptr<const Picture> picture;
  // Non-OK when the decoder reported damage in this picture (concealed errors, missing
  // references): the picture is not analysed, its packet is answered with this error.
  absl::Status damage;
};

class VideoDecoder {
 public:
  virtual ~VideoDecoder() = default;
  // What is wrong with a packet's framing before any decoding (an MP4-style packet in a stream
  // without an avcC/hvcC record, say); OK if nothing is.
  virtual absl::Status CheckFraming(std::string_view /*packet*/) const { return absl::OkStatus(); }
  // Whether `packet` can start decoding on its own (H.264 IDR, HEVC IRAP).
  virtual bool IsKeyframe(std::string_view packet) const = 0;
  // Decodes one access unit and appends the pictures that came out (display order; possibly
  // none, possibly earlier packets' pictures). An error: the decoder rejected this packet.
  virtual absl::Status Decode(const VideoPacket& packet, std::vector<DecodedPicture>* out) = 0;
  // End of stream: appends every picture the decoder still holds.
  virtual void Flush(std::vector<DecodedPicture>* out) = 0;
  // How many later packets the decoder may need before a packet's picture comes out (its
  // reorder delay), as far as it knows now: from the parameter sets once decoding started
  // (FFmpeg's has_b_frames), 0 before. Never above kMaxVideoReorderDelay.
  virtual int ReorderDelay() const = 0;
  virtual VideoCodecId codec() const = 0;
};

// The largest reorder delay H.264 and HEVC allow (a decoded picture buffer of 16 frames).
inline constexpr int kMaxVideoReorderDelay = 16;

// FFmpeg's text for one of its error codes (AVERROR(...)).
std::string FfmpegErrorText(int averror);

// Whether the CUDA hardware decoder (NVDEC through FFmpeg) should be tried for new decoders.
// Returns the reason it cannot be used when it is not available ("" = available).
std::string PrepareHardwareVideoDecoding();

struct VideoDecoderOptions {
  DecodeLimits limits;
  // The memory budget: the decoder charges its reference pictures (refs + reorder delay + 3
  // pictures of the stream's size, from the parameter sets, before any is allocated) and gives
  // them back when it is destroyed or the size changes. A refusal fails the packet (and the
  // stream's packets until a keyframe finds room). Empty: no budget.
  std::function<bool(uint64_t)> charge;
  std::function<void(uint64_t)> release;
  bool try_hardware = false;  // NVDEC through FFmpeg when PrepareHardwareVideoDecoding allowed it
};

// libavcodec decoder. InvalidArgument (naming what is wrong) for an unsupported codec or
// unusable extradata.
absl::StatusOr<std::unique_ptr<VideoDecoder>> CreateVideoDecoder(
    const VideoFormatSpec& format, const VideoDecoderOptions& options);

}  // namespace framepipe

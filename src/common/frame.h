// Frame-level value types shared by every layer: what comes in (FrameInput), what the analysis
// and enrichment stages compute, and what goes out (FrameResult). Plain data; no gRPC types.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/image.h"

namespace framepipe {

inline constexpr int kThumbnailSize = 64;
inline constexpr int kThumbnailBytes = kThumbnailSize * kThumbnailSize;
inline constexpr int kHistogramBins = 256;

// Mirrors framepipe.v1.FrameStatus value for value.
enum class FrameStatus : int {
  kUnspecified = 0,
  kOk = 1,
  kInvalidArgument = 2,
  kDeadlineExceeded = 3,
  kDropped = 4,
  kInternal = 5,
};
inline constexpr int kFrameStatusCount = 6;

// "ok", "invalid_argument", ... (the Prometheus status label values).
const char* FrameStatusLabel(FrameStatus s);
// The per-frame status an error becomes: InvalidArgument, DeadlineExceeded, else Internal.
FrameStatus FrameStatusFromCode(absl::StatusCode code);

using Tags = std::vector<std::pair<std::string, std::string>>;

// kVideoPacket: one compressed access unit of a video stream (decoded by the stream's video
// decoder, never by the decode stage). kPicture: a picture that decoder produced, waiting to be
// converted to BGR by the decode stage.
enum class PayloadKind : uint8_t {
  kNone = 0,
  kEncoded = 1,
  kRaw = 2,
  kVideoPacket = 3,
  kPicture = 4
};

// A decoded video picture in the decoder's own format (YUV), converted to 8-bit BGR on a
// pipeline worker. Implemented by analysis/video_decoder; immutable and shareable.
class Picture {
 public:
  virtual ~Picture() = default;
  virtual int width() const = 0;
  virtual int height() const = 0;
  // Bytes the picture holds (charged to the memory budget with its BGR copy).
  virtual uint64_t bytes() const = 0;
  virtual absl::Status ToBgr(Image* out) const = 0;
};

// One frame as received. `data` holds the encoded bytes (JPEG/PNG) or the raw pixels.
struct FrameInput {
  uint64_t seq = 0;
  int64_t capture_time_us = 0;
  PayloadKind kind = PayloadKind::kNone;
  std::string data;
  // Raw frames only. `raw_format_code` is the wire value, kept so an unknown enum value can be
  // named in the error message.
  uint32_t raw_width = 0;
  uint32_t raw_height = 0;
  int raw_format_code = 0;
  int64_t pts = 0;                         // video packets: presentation time, echoed
  std::shared_ptr<const Picture> picture;  // kPicture only
  uint64_t order_key = 0;  // echoed in the result untouched (adapters such as VideoStream)
  Tags tags;
  // Set by the ingest when the frame is already known to be bad (tags over the limits, say):
  // the frame is admitted and answered in order with this error; no stage runs on it.
  absl::Status rejection;
};

struct Analysis {
  uint32_t width = 0;
  uint32_t height = 0;
  double mean_luma = 0;
  double stddev_luma = 0;
  std::array<uint32_t, kHistogramBins> histogram{};
  double sharpness = 0;     // variance of the 4-neighbour Laplacian of luma
  double edge_density = 0;  // share of pixels with Sobel gx^2 + gy^2 > 64^2
  std::array<uint8_t, kThumbnailBytes> thumbnail{};  // 64x64 gray, area average
  const char* backend = "";                          // "cpu" | "cuda" (static strings)
};

struct Enrichment {
  bool dark = false;
  bool overexposed = false;
  bool blurry = false;
  std::array<float, 3> dominant_bgr{};
  uint32_t keypoints = 0;
  double scene_change = 0;
  bool scene_cut = false;
  double motion = 0;
  double cut_score = 0;  // the scene-cut detector's confidence, 0..1
};

struct Timings {
  uint64_t queue_us = 0;
  uint64_t decode_us = 0;
  uint64_t analyse_us = 0;
  uint64_t enrich_us = 0;
  uint64_t reorder_us = 0;
  uint64_t total_us = 0;
};

struct FrameResult {
  uint64_t seq = 0;
  FrameStatus status = FrameStatus::kUnspecified;
  std::string error;
  int64_t capture_time_us = 0;
  Analysis analysis;
  Enrichment enrichment;
  Timings timings;
  Tags tags;
  int64_t pts = 0;
  uint64_t order_key = 0;  // the FrameInput's, echoed
};

}  // namespace framepipe

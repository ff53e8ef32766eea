#include "server/stream_config.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace framepipe {

absl::Status ApplyStreamConfig(const v1::StreamConfig& config, uint32_t max_stream_in_flight,
                               StreamOptions* o, bool* include_thumbnail,
                               std::optional<VideoFormatSpec>* video) {
  if (config.stream_id().size() > 256) {
    return absl::InvalidArgumentError("StreamConfig.stream_id is longer than 256 bytes");
  }
  if (!config.stream_id().empty()) o->id = config.stream_id();
  if (config.max_in_flight() > max_stream_in_flight) {
    return absl::InvalidArgumentError(
        absl::StrCat("StreamConfig.max_in_flight=", config.max_in_flight(),
                     " is over the server's limit of ", max_stream_in_flight));
  }
  if (config.max_in_flight() > 0) o->max_in_flight = config.max_in_flight();
  switch (config.overload()) {
    case v1::OVERLOAD_POLICY_UNSPECIFIED:
    case v1::OVERLOAD_POLICY_BLOCK:
      o->overload = OverloadPolicy::kBlock;
      break;
    case v1::OVERLOAD_POLICY_DROP_OLDEST:
      o->overload = OverloadPolicy::kDropOldest;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("StreamConfig.overload has unknown value ",
                                                     static_cast<int>(config.overload()),
                                                     " (expected BLOCK=1 or DROP_OLDEST=2)"));
  }
  o->frame_timeout = std::chrono::milliseconds(config.frame_timeout_ms());
  *include_thumbnail = config.include_thumbnail();
  if (config.has_video()) {
    const v1::VideoFormat& v = config.video();
    VideoFormatSpec spec;
    switch (v.codec()) {
      case v1::VIDEO_CODEC_H264:
        spec.codec = VideoCodecId::kH264;
        break;
      case v1::VIDEO_CODEC_HEVC:
        spec.codec = VideoCodecId::kHevc;
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("StreamConfig.video.codec ", static_cast<int>(v.codec()),
                         " is not supported (expected VIDEO_CODEC_H264=1 or VIDEO_CODEC_HEVC=2)"));
    }
    if (v.extradata().size() > (1u << 20)) {
      return absl::InvalidArgumentError(absl::StrCat("StreamConfig.video.extradata is ",
                                                     v.extradata().size(),
                                                     " bytes, over the limit of 1 MiB"));
    }
    spec.extradata = v.extradata();  // checked by the decoder it is opened for
    *video = std::move(spec);
  }
  return absl::OkStatus();
}

}  // namespace framepipe

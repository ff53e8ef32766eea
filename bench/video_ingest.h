// The compressed-video ingest benchmark's workloads: a 720p H.264 clip (made here with libx264
// from the synthetic scenes unless a file is given), its frames as JPEG files, and the
// decode-only ceiling (libavcodec decode + our analysis chain on plain threads).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "media/packet_source.h"

namespace framepipe::bench {

// Encodes `frames` synthetic 1280x720 pictures (scene cuts every 90) with libx264 (GOP 30,
// 3 B-frames, CRF 23, preset veryfast) into an Annex-B file in `dir`; returns its path.
absl::StatusOr<std::string> MakeH264Clip(const std::string& dir, int frames);

// Decodes `clip` once and writes its pictures as JPEG (quality 90) files 000000.jpg... into
// `dir`: the same footage for the JPEG path. Returns how many.
absl::StatusOr<int> WriteJpegFrames(const VideoPackets& clip, const std::string& dir);

// Frames per second `threads` threads reach for `seconds`, each with its own decoder cycling
// through the clip's packets and running every picture through BGR conversion, analysis and
// enrichment: what the server could do with no gRPC, no pipeline and no ordering.
absl::StatusOr<double> DecodeCeiling(const VideoPackets& clip, int threads, double seconds);

}  // namespace framepipe::bench

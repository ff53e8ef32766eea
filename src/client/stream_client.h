// The `framepipe stream` client: sends synthetic video or a directory of images over K parallel
// Process streams, verifies that every stream's results come back complete and in order, and
// reports throughput, end-to-end latency and the server's per-stage timings.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/credentials.h"
#include "client/report.h"
#include "common/frame.h"
#include "media/synthetic_source.h"

namespace framepipe {

struct StreamClientOptions {
  std::string target = "127.0.0.1:50051";
  int streams = 1;
  int64_t frames = 300;  // per stream; 0 with a video input = until it ends
  double fps = 0;        // per stream; 0 = as fast as the server's credits allow
  int width = 1280;
  int height = 720;
  int scene_length = 90;     // synthetic: a scene cut every N frames
  int distinct_frames = 60;  // synthetic frames rendered up front and cycled
  Encoding encoding = Encoding::kJpeg;
  int jpeg_quality = 90;
  // Input: "" = synthetic video; a directory = its JPEG/PNG files (sorted, cycled); anything
  // else = a video file or camera URL read with OpenCV videoio (FFmpeg).
  std::string input;
  bool loop = false;          // video files: start over at the end
  bool send_packets = false;  // video inputs: send the H.264/HEVC packets (StreamConfig.video)
  bool unpaced = false;       // video files: as fast as the server takes them, not at their rate
  std::string overlay_path;   // write the frames back with their results drawn (mp4)
  // StreamConfig (0 / empty = server default).
  uint32_t max_in_flight = 0;
  // Frames sent and not yet answered, per stream, on the client side (0 = unlimited - the
  // server's credits and HTTP/2 flow control pace the sender - except for live cameras, which
  // keep the server's window + 2 so that a slow stream skips frames instead of queueing them).
  uint32_t window = 0;
  bool drop_oldest = false;
  uint32_t frame_timeout_ms = 0;
  bool include_thumbnail = false;
  std::string stream_id_prefix = "stream";
  bool send_capture_time = true;
  std::string out_jsonl;      // one line per result
  int show = 0;               // print a table of the first N results of stream 0
  bool progress = false;      // live progress line on stderr
  int64_t rpc_timeout_s = 0;  // 0 = no deadline
  int read_delay_ms = 0;      // pause after each result read (simulates a slow consumer)
  int retries = 0;            // reopen a stream this many times after UNAVAILABLE-like failures
  ClientSecurityOptions security;
};

absl::StatusOr<ClientReport> RunStreamClient(const StreamClientOptions& options);

}  // namespace framepipe

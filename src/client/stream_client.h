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
  bool loop = false;         // video files: start over at the end
  bool unpaced = false;      // video files: as fast as the server takes them, not at their rate
  std::string overlay_path;  // write the frames back with their results drawn (mp4)
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

struct StreamOutcome {
  std::string id;
  int64_t sent = 0;
  int64_t received = 0;
  bool in_order = true;    // every result matched the next seq sent
  bool complete = false;   // as many results as frames sent and the RPC ended OK
  std::string rpc_status;  // "OK" or "CODE: message"
  std::array<int64_t, kFrameStatusCount> by_status{};
  double seconds = 0;                     // call duration
  double p99_ms = 0;                      // this stream's end-to-end p99
  int retries = 0;                        // reconnections after a failed call (--retry)
  std::vector<std::string> failed_calls;  // "CODE: message" of each call that failed
  int64_t dropped_at_source = 0;  // live camera frames dropped because the stream fell behind
  std::string overlay_path;       // --overlay: the video written for this stream
  int64_t overlay_frames = 0;     // frames written into it (one per result)
  std::string overlay_error;      // why it could not be written, if it could not
  // Frames sent on a call that failed before their result came back (never silently skipped).
  std::vector<uint64_t> lost_seqs;
};

struct ClientReport {
  std::vector<StreamOutcome> streams;
  int64_t frames_sent = 0;
  int64_t results = 0;
  double seconds = 0;
  double frames_per_second = 0;
  // End-to-end latency (client send -> result received), milliseconds.
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0, mean_ms = 0;
  std::vector<double> latencies_ms;     // every result, in receive order (all streams)
  std::vector<double> latency_times_s;  // when each was received, since the start
  // Means of the server's Timings over OK results, milliseconds.
  double queue_ms = 0, decode_ms = 0, analyse_ms = 0, enrich_ms = 0, reorder_ms = 0, total_ms = 0;
  // p99 of the server's Timings.total_us over all results (what framepipe_stage_seconds{total}
  // measures), milliseconds.
  double server_total_p99_ms = 0;
  std::array<int64_t, kFrameStatusCount> by_status{};
  std::vector<FrameResult> first_results;  // up to `show` results of stream 0
  bool ok() const;                         // all streams complete and in order
};

absl::StatusOr<ClientReport> RunStreamClient(const StreamClientOptions& options);

// Human summary (and the first-results table when requested).
std::string FormatReport(const ClientReport& report, int show);
// Machine-readable report (--report): totals, percentiles, stage means, per-stream outcomes,
// and every latency sample with its time (for scripts/plot_latency.py).
std::string ReportJson(const ClientReport& report);

// "1-9,15,21-23": frame seqs (which go up by 2) as ranges.
std::string SeqRanges(const std::vector<uint64_t>& seqs);

// Percentile (0..100) of unsorted values, by nearest rank.
double Percentile(std::vector<double> values, double p);

}  // namespace framepipe

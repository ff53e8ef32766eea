// What a run of the streaming client found: per-stream outcomes, totals and latency
// percentiles, and how they are written (the human summary, --report's JSON, --out's JSON lines).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/frame.h"

namespace framepipe {
namespace v1 {
class FrameResult;
}

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
  // What sending cost the client: payload bytes per frame sent (encoded image, raw pixels or
  // video packet), and this process's CPU time (all threads: capture, encode, gRPC) per frame.
  double bytes_per_frame = 0;
  double client_cpu_ms_per_frame = 0;
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

// Human summary (and the first-results table when requested).
std::string FormatReport(const ClientReport& report, int show);
// Machine-readable report (--report): totals, percentiles, stage means, per-stream outcomes,
// and every latency sample with its time (for scripts/plot_latency.py).
std::string ReportJson(const ClientReport& report);
// One line of --out: the result in protobuf's JSON mapping (proto field names, enums by name,
// every field; 64-bit integers are strings, as the mapping has it) after the stream index and
// the end-to-end latency.
std::string ResultJsonLine(int stream, const v1::FrameResult& result, double latency_ms);

// "0-9,15,21-23": frame seqs as ranges of consecutive numbers.
std::string SeqRanges(const std::vector<uint64_t>& seqs);

// Percentile (0..100) of unsorted values, by nearest rank.
double Percentile(std::vector<double> values, double p);

}  // namespace framepipe

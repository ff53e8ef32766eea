#include "client/report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "framepipe/v1/framepipe.pb.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace framepipe {

bool ClientReport::ok() const {
  for (const auto& s : streams) {
    if (!s.in_order || !s.complete || !s.overlay_error.empty()) return false;
  }
  return !streams.empty();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(p / 100.0 * static_cast<double>(v.size()));
  const size_t idx = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(v.size()))) - 1;
  return v[idx];
}

std::string SeqRanges(const std::vector<uint64_t>& seqs) {
  // A run of consecutive seqs prints as "a-b".
  std::string out;
  for (size_t i = 0; i < seqs.size();) {
    size_t j = i;
    while (j + 1 < seqs.size() && seqs[j + 1] == seqs[j] + 1) ++j;
    absl::StrAppend(&out, out.empty() ? "" : ",", seqs[i]);
    if (j > i) absl::StrAppend(&out, "-", seqs[j]);
    i = j + 1;
  }
  return out;
}

namespace {

namespace pb = google::protobuf;

// A JSON object built as a google.protobuf.Struct and printed by protobuf's JSON printer.
class JsonObject {
 public:
  JsonObject& Num(const std::string& key, double v) {
    (*s_.mutable_fields())[key].set_number_value(v);
    return *this;
  }
  JsonObject& Str(const std::string& key, const std::string& v) {
    (*s_.mutable_fields())[key].set_string_value(v);
    return *this;
  }
  JsonObject& Bool(const std::string& key, bool v) {
    (*s_.mutable_fields())[key].set_bool_value(v);
    return *this;
  }
  JsonObject& Obj(const std::string& key, JsonObject o) {
    *(*s_.mutable_fields())[key].mutable_struct_value() = std::move(o.s_);
    return *this;
  }
  template <typename T, typename F>
  JsonObject& List(const std::string& key, const std::vector<T>& items, F to_value) {
    pb::ListValue* l = (*s_.mutable_fields())[key].mutable_list_value();
    for (const T& item : items) to_value(item, l->add_values());
    return *this;
  }
  std::string Print() const {
    std::string out;
    pb::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    const auto st = pb::util::MessageToJsonString(s_, &out, opts);
    return st.ok() ? out : "{}";
  }
  pb::Struct* mutable_struct() { return &s_; }

 private:
  pb::Struct s_;
};

void Number(double v, pb::Value* out) { out->set_number_value(v); }

}  // namespace

std::string ReportJson(const ClientReport& r) {
  JsonObject latency, stages, by_status, samples, report;
  latency.Num("p50_ms", r.p50_ms)
      .Num("p90_ms", r.p90_ms)
      .Num("p99_ms", r.p99_ms)
      .Num("p999_ms", r.p999_ms)
      .Num("max_ms", r.max_ms)
      .Num("mean_ms", r.mean_ms);
  stages.Num("queue", r.queue_ms)
      .Num("decode", r.decode_ms)
      .Num("analyse", r.analyse_ms)
      .Num("enrich", r.enrich_ms)
      .Num("reorder", r.reorder_ms)
      .Num("total", r.total_ms);
  for (int i = 1; i < kFrameStatusCount; ++i) {
    by_status.Num(FrameStatusLabel(static_cast<FrameStatus>(i)),
                  static_cast<double>(r.by_status[i]));
  }
  samples.List("latency_ms", r.latencies_ms, Number).List("time_s", r.latency_times_s, Number);
  report.Num("frames_sent", static_cast<double>(r.frames_sent))
      .Num("results", static_cast<double>(r.results))
      .Num("seconds", r.seconds)
      .Num("frames_per_second", r.frames_per_second)
      .Num("bytes_per_frame", r.bytes_per_frame)
      .Num("client_cpu_ms_per_frame", r.client_cpu_ms_per_frame)
      .Bool("ok", r.ok())
      .Obj("latency", std::move(latency))
      .Num("server_total_p99_ms", r.server_total_p99_ms)
      .Obj("server_stage_means_ms", std::move(stages))
      .Obj("by_status", std::move(by_status))
      .List("streams", r.streams,
            [](const StreamOutcome& o, pb::Value* v) {
              JsonObject s;
              s.Str("id", o.id)
                  .Num("sent", static_cast<double>(o.sent))
                  .Num("received", static_cast<double>(o.received))
                  .Bool("in_order", o.in_order)
                  .Bool("complete", o.complete)
                  .Str("rpc_status", o.rpc_status)
                  .Num("retries", o.retries)
                  .Num("dropped_at_source", static_cast<double>(o.dropped_at_source))
                  .Num("overlay_frames", static_cast<double>(o.overlay_frames))
                  .List("lost_seqs", o.lost_seqs, [](uint64_t seq, pb::Value* x) {
                    x->set_number_value(static_cast<double>(seq));
                  });
              *v->mutable_struct_value() = std::move(*s.mutable_struct());
            })
      .Obj("samples", std::move(samples));
  return report.Print() + "\n";
}

std::string ResultJsonLine(int stream, const v1::FrameResult& result, double latency_ms) {
  pb::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string body;
  if (!pb::util::MessageToJsonString(result, &body, opts).ok() || body.size() < 2) body = "{}";
  // The client's own fields first, then the result's ("{...}" without its opening brace).
  return absl::StrFormat("{\"stream\":%d,\"latency_ms\":%.3f%s%s\n", stream, latency_ms,
                         body.size() > 2 ? "," : "", body.substr(1));
}

std::string FormatReport(const ClientReport& r, int show) {
  std::string s;
  absl::StrAppend(&s, absl::StrFormat("streams: %d   frames sent: %d   results: %d   in %.2f s\n",
                                      r.streams.size(), r.frames_sent, r.results, r.seconds));
  std::string statuses;
  for (int i = 1; i < kFrameStatusCount; ++i) {
    if (r.by_status[i] > 0 || i == 1) {
      absl::StrAppend(&statuses, statuses.empty() ? "" : "  ",
                      FrameStatusLabel(static_cast<FrameStatus>(i)), "=", r.by_status[i]);
    }
  }
  absl::StrAppend(&s, "status: ", statuses, "\n");
  absl::StrAppend(&s, absl::StrFormat("throughput: %.1f frames/s\n", r.frames_per_second));
  absl::StrAppend(&s, absl::StrFormat("sent: %.0f bytes/frame   client CPU: %.2f ms/frame\n",
                                      r.bytes_per_frame, r.client_cpu_ms_per_frame));
  absl::StrAppend(
      &s, absl::StrFormat("latency (send -> result): p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  "
                          "p99.9 %.2f ms  max %.2f ms\n",
                          r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms));
  absl::StrAppend(
      &s, absl::StrFormat("server stages (mean): queue %.2f  decode %.2f  analyse %.2f  enrich "
                          "%.2f  reorder %.2f  total %.2f ms\n",
                          r.queue_ms, r.decode_ms, r.analyse_ms, r.enrich_ms, r.reorder_ms,
                          r.total_ms));
  for (const auto& st : r.streams) {
    if (!st.in_order || !st.complete) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: sent %d, received %d, %s%s\n", st.id, st.sent,
                                          st.received, st.in_order ? "in order" : "OUT OF ORDER",
                                          st.rpc_status == "OK" ? "" : ", " + st.rpc_status));
    }
    if (st.retries > 0) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: reconnected %d time(s) after: %s\n", st.id,
                                          st.retries, absl::StrJoin(st.failed_calls, "; ")));
    }
    if (!st.lost_seqs.empty()) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: %d frame(s) lost with a failed connection: "
                                          "seq %s\n",
                                          st.id, st.lost_seqs.size(), SeqRanges(st.lost_seqs)));
    }
    if (st.dropped_at_source > 0) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: %d live frame(s) skipped at the camera "
                                          "because the stream fell behind\n",
                                          st.id, st.dropped_at_source));
    }
    if (!st.overlay_path.empty()) {
      absl::StrAppend(
          &s, st.overlay_error.empty()
                  ? absl::StrFormat("overlay: %s (%d frames)\n", st.overlay_path, st.overlay_frames)
                  : absl::StrFormat("overlay: %s FAILED: %s\n", st.overlay_path, st.overlay_error));
    }
  }
  bool delivered = !r.streams.empty();
  for (const auto& st : r.streams) delivered = delivered && st.in_order && st.complete;
  absl::StrAppend(&s, delivered ? "every stream complete and in order\n"
                                : "FAILED: a stream was incomplete or out of order\n");
  if (show > 0 && !r.first_results.empty()) {
    absl::StrAppend(&s, "\nfirst results of stream 0:\n",
                    absl::StrFormat("%6s  %-18s %7s %10s %9s %9s %8s\n", "seq", "status", "luma",
                                    "sharpness", "keypoints", "scene_cut", "motion"));
    for (const auto& fr : r.first_results) {
      absl::StrAppend(&s,
                      absl::StrFormat("%6d  %-18s %7.1f %10.1f %9d %9s %8.4f\n", fr.seq,
                                      FrameStatusLabel(fr.status), fr.analysis.mean_luma,
                                      fr.analysis.sharpness, fr.enrichment.keypoints,
                                      fr.enrichment.scene_cut ? "yes" : "-", fr.enrichment.motion));
    }
  }
  return s;
}

}  // namespace framepipe

// `framepipe stream`: the client - synthetic video, image folders, video files or cameras to a
// server; checks order and completeness, reports throughput and latency.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "cli/flags.h"
#include "client/stream_client.h"
#include "common/log.h"

namespace framepipe {
namespace {

struct StreamArgs {
  StreamClientOptions client;
  CLI::Option* frames = nullptr;
  bool no_progress = false;
  std::string report_path, plot_path;
};

void LogStreams(const ClientReport& report) {
  for (const auto& st : report.streams) {
    LogLine line("client_stream");
    line.Add("id", st.id).Add("sent", st.sent).Add("received", st.received);
    for (int i = 1; i < kFrameStatusCount; ++i) {
      if (st.by_status[i] > 0) {
        line.Add(FrameStatusLabel(static_cast<FrameStatus>(i)), st.by_status[i]);
      }
    }
    line.Add("in_order", st.in_order)
        .Add("complete", st.complete)
        .Add("duration_s", st.seconds)
        .Add("p99_ms", st.p99_ms)
        .Add("rpc_status", st.rpc_status);
    line.Emit();
  }
}

void WriteReportAndPlot(const ClientReport& report, const StreamArgs& a) {
  std::string json_path = a.report_path;
  if (json_path.empty() && !a.plot_path.empty()) json_path = a.plot_path + ".json";
  if (!json_path.empty()) {
    std::ofstream(json_path) << ReportJson(report);
    std::printf("report: %s\n", json_path.c_str());
  }
  if (a.plot_path.empty()) return;
  const std::string cmd = "/usr/bin/python3 " + std::string(FRAMEPIPE_SCRIPTS_DIR) +
                          "/plot_latency.py '" + json_path + "' '" + a.plot_path + "' >/dev/null";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "framepipe: plotting failed (%s)\n", cmd.c_str());
  } else {
    std::printf("plot: %s\n", a.plot_path.c_str());
  }
}

int RunStream(StreamArgs& a) {
  StreamClientOptions& o = a.client;
  o.progress = !a.no_progress && isatty(fileno(stderr));
  std::error_code ec;
  if (a.frames->count() == 0 && !o.input.empty() && !std::filesystem::is_directory(o.input, ec)) {
    o.frames = 0;  // a video: all of it
  }
  auto report = RunStreamClient(o);
  if (!report.ok()) return Fail(std::string(report.status().message()));
  std::fputs(FormatReport(*report, o.show).c_str(), stdout);
  LogStreams(*report);
  WriteReportAndPlot(*report, a);
  return report->ok() ? 0 : 1;
}

void AddSourceFlags(CLI::App* cmd, StreamArgs* a) {
  StreamClientOptions* o = &a->client;
  a->frames = cmd->add_option("--frames", o->frames,
                              "Frames per stream (default 300; with a video --input the "
                              "default is 0: until the video ends)");
  cmd->add_option("--fps", o->fps,
                  "Frames per second per stream (0 = as fast as credits allow; videos play "
                  "at their own rate unless set)")
      ->capture_default_str();
  cmd->add_option_function<std::string>(
         "--size",
         [o](const std::string& s) {
           absl::Status st = ParseSize(s, &o->width, &o->height);
           if (!st.ok()) throw CLI::ValidationError("--size", std::string(st.message()));
         },
         "Synthetic frame size WxH")
      ->default_str("1280x720");
  cmd->add_option("--input", o->input,
                  "A video file (MP4/MKV/AVI...), a camera or stream URL (rtsp://...), or a "
                  "directory of JPEG/PNG images (sorted, cycled); default: synthetic video");
  cmd->add_flag("--loop", o->loop, "Video files: start over at the end");
  cmd->add_flag("--no-pace", o->unpaced,
                "Video files: send as fast as the server takes frames instead of at the "
                "file's frame rate (offline processing of recordings)");
  cmd->add_option("--encode", o->encoding, "How frames are sent: jpeg, png, raw (BGR8)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, Encoding>{
              {"jpeg", Encoding::kJpeg}, {"png", Encoding::kPng}, {"raw", Encoding::kRaw}},
          CLI::ignore_case))
      ->default_str("jpeg");
  cmd->add_option("--send", o->send_packets,
                  "What a video input sends: images (each frame decoded here and re-encoded "
                  "with --encode) or packets (the file's or camera's H.264/HEVC packets as they "
                  "are: no decode, no re-encode; the server decodes)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, bool>{{"images", false}, {"packets", true}}, CLI::ignore_case))
      ->default_str("images");
  cmd->add_option("--jpeg-quality", o->jpeg_quality, "JPEG quality")->capture_default_str();
  cmd->add_option("--scene-length", o->scene_length, "Synthetic: frames per scene")
      ->capture_default_str();
}

void AddStreamConfigFlags(CLI::App* cmd, StreamClientOptions* o) {
  cmd->add_option("--target", o->target,
                  "Server: host:port or a gRPC target URI (dns:///host:port, "
                  "ipv4:a:p,b:p - streams spread round-robin over the addresses)")
      ->capture_default_str();
  cmd->add_option("--streams", o->streams, "Parallel streams")->capture_default_str();
  cmd->add_option("--max-in-flight", o->max_in_flight,
                  "StreamConfig.max_in_flight (0 = server default)")
      ->capture_default_str();
  cmd->add_option("--window", o->window,
                  "Frames sent and not yet answered per stream, client side (0: unlimited - "
                  "the server's credits pace the sender - but --max-in-flight + 2 for live "
                  "cameras, which skip frames rather than queue them)")
      ->capture_default_str();
  cmd->add_option_function<std::string>(
         "--overload", [o](const std::string& v) { o->drop_oldest = v == "drop-oldest"; },
         "block or drop-oldest")
      ->check(CLI::IsMember({"block", "drop-oldest"}))
      ->default_str("block");
  cmd->add_option("--frame-timeout-ms", o->frame_timeout_ms,
                  "StreamConfig.frame_timeout_ms (0 = none)")
      ->capture_default_str();
  cmd->add_flag("--thumbnail", o->include_thumbnail, "Ask for thumbnails");
  cmd->add_option("--timeout", o->rpc_timeout_s, "RPC deadline in seconds (0 = none)")
      ->capture_default_str();
  cmd->add_option("--retry", o->retries,
                  "Reopen a stream up to N times after UNAVAILABLE / RESOURCE_EXHAUSTED "
                  "(exponential backoff from 100 ms); frames lost with a failed connection are "
                  "listed by seq")
      ->capture_default_str();
}

void AddOutputFlags(CLI::App* cmd, StreamArgs* a) {
  StreamClientOptions* o = &a->client;
  cmd->add_option("--overlay", o->overlay_path,
                  "Write the frames back into this video with their results drawn on them "
                  "(stream k > 0 writes NAME-k.mp4)");
  cmd->add_option("--out", o->out_jsonl, "Write one JSON line per result to this file");
  cmd->add_option("--show", o->show, "Print a table of the first N results of stream 0")
      ->capture_default_str();
  cmd->add_option("--read-delay-ms", o->read_delay_ms,
                  "Pause after reading each result (simulates a slow consumer)")
      ->capture_default_str();
  cmd->add_flag("--no-progress", a->no_progress, "No live progress line");
  cmd->add_option("--report", a->report_path,
                  "Write a JSON report: totals, latency percentiles, stage means, samples");
  cmd->add_option("--plot", a->plot_path,
                  "Draw latency over time and its CDF into this PNG (needs python3-matplotlib)");
}

}  // namespace

void AddStreamCommand(CLI::App& app, CommandRun* run) {
  auto args = std::make_shared<StreamArgs>();
  CLI::App* cmd = app.add_subcommand("stream", "Stream frames to a server and check the results");
  AddStreamConfigFlags(cmd, &args->client);
  AddSourceFlags(cmd, args.get());
  AddOutputFlags(cmd, args.get());
  AddClientSecurityFlags(cmd, &args->client.security, /*token=*/true);
  AddLogFormatFlag(cmd, "Per-stream log lines: text or json");
  cmd->callback([run, args] { *run = [args] { return RunStream(*args); }; });
}

}  // namespace framepipe

// `framepipe stream` with real video: an MP4 written at test time with OpenCV's VideoWriter
// (FFmpeg backend) is streamed through a real server on 127.0.0.1:0; every frame must come back
// in order with values that match the video's own pixels, and the overlay video must hold one
// frame per result.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "client/stream_client.h"
#include "opencv2/core.hpp"
#include "opencv2/imgproc.hpp"
#include "opencv2/videoio.hpp"
#include "test_server.h"

namespace framepipe {
namespace {

namespace fs = std::filesystem;
using testing::StartTestServer;

constexpr int kW = 320, kH = 240;

// Frame i: a textured scene (a diagonal gradient) that brightens by a level per frame, a white
// square moving right, and from frame `cut` on a different scene (a darker, bluish pattern at
// right angles): a scene cut the service must find, and nothing else that looks like one.
cv::Mat VideoFrame(int i, int cut) {
  cv::Mat m(kH, kW, CV_8UC3);
  for (int y = 0; y < kH; ++y) {
    auto* row = m.ptr<cv::Vec3b>(y);
    for (int x = 0; x < kW; ++x) {
      if (i < cut) {
        const int v = std::min(255, (x + y) * 200 / (kW + kH) + 20 + i);
        row[x] = cv::Vec3b(static_cast<uint8_t>(v * 3 / 4), static_cast<uint8_t>(v),
                           static_cast<uint8_t>(v));
      } else {
        const int v = ((x / 16 + y / 16) % 2) * 60 + y * 60 / kH + 10;
        row[x] = cv::Vec3b(static_cast<uint8_t>(v + 120), static_cast<uint8_t>(v / 2),
                           static_cast<uint8_t>(v / 3));
      }
    }
  }
  cv::rectangle(m, cv::Rect(10 + 6 * i, 80, 40, 40), cv::Scalar(255, 255, 255), cv::FILLED);
  cv::putText(m, std::to_string(i), {20, 40}, cv::FONT_HERSHEY_SIMPLEX, 1.0, cv::Scalar(0, 0, 0),
              2);
  return m;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/framepipe-client-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string WriteVideo(const TempDir& dir, int frames, int cut, double fps = 25) {
  const std::string path = dir / "input.mp4";
  cv::VideoWriter w(path, cv::CAP_FFMPEG, cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps,
                    cv::Size(kW, kH));
  EXPECT_TRUE(w.isOpened()) << "OpenCV cannot write MP4 here";
  for (int i = 0; i < frames; ++i) w.write(VideoFrame(i, cut));
  w.release();
  return path;
}

// What the video really holds (after the codec): each frame's mean luma as the service defines
// it (OpenCV's BGR2GRAY).
std::vector<double> DecodedLuma(const std::string& path) {
  std::vector<double> out;
  cv::VideoCapture cap(path, cv::CAP_FFMPEG);
  cv::Mat f, g;
  while (cap.read(f) && !f.empty()) {
    cv::cvtColor(f, g, cv::COLOR_BGR2GRAY);
    out.push_back(cv::mean(g)[0]);
  }
  return out;
}

int CountFrames(const std::string& path) {
  cv::VideoCapture cap(path, cv::CAP_FFMPEG);
  if (!cap.isOpened()) return -1;
  int n = 0;
  cv::Mat f;
  while (cap.read(f) && !f.empty()) ++n;
  return n;
}

struct Line {
  int stream = -1;
  uint64_t seq = 0;
  std::string status;
  double mean_luma = -1;
  bool scene_cut = false;
  int width = 0, height = 0;
};

std::vector<Line> ReadJsonl(const std::string& path) {
  std::vector<Line> out;
  std::ifstream in(path);
  std::string s;
  const std::regex stream_re("\"stream\":(\\d+)"), seq_re("\"seq\":\"?(\\d+)"),
      status_re("\"status\":\"([A-Z_]+)\""), luma_re("\"mean_luma\":([0-9.]+)"),
      cut_re("\"scene_cut\":(true|false)"), w_re("\"width\":(\\d+)"), h_re("\"height\":(\\d+)");
  std::smatch m;
  while (std::getline(in, s)) {
    Line l;
    if (std::regex_search(s, m, stream_re)) l.stream = std::stoi(m[1]);
    if (std::regex_search(s, m, seq_re)) l.seq = std::stoull(m[1]);
    if (std::regex_search(s, m, status_re)) l.status = m[1];
    if (std::regex_search(s, m, luma_re)) l.mean_luma = std::stod(m[1]);
    if (std::regex_search(s, m, cut_re)) l.scene_cut = m[1] == "true";
    if (std::regex_search(s, m, w_re)) l.width = std::stoi(m[1]);
    if (std::regex_search(s, m, h_re)) l.height = std::stoi(m[1]);
    out.push_back(l);
  }
  return out;
}

StreamClientOptions VideoOptions(const Server& s, const std::string& input) {
  StreamClientOptions o;
  o.target = "127.0.0.1:" + std::to_string(s.port());
  o.input = input;
  o.frames = 0;  // the whole video
  o.unpaced = true;
  o.rpc_timeout_s = 120;
  return o;
}

TEST(VideoClient, EveryFrameComesBackInOrderWithItsValuesAndTheOverlayMatches) {
  TempDir dir;
  constexpr int kFrames = 48, kCut = 30;
  const std::string video = WriteVideo(dir, kFrames, kCut);
  const std::vector<double> truth = DecodedLuma(video);
  ASSERT_EQ(truth.size(), static_cast<size_t>(kFrames));

  auto server = StartTestServer({});
  ASSERT_TRUE(server);
  StreamClientOptions o = VideoOptions(*server, video);
  o.out_jsonl = dir / "results.jsonl";
  o.overlay_path = dir / "overlay.mp4";
  o.max_in_flight = 6;
  auto report = RunStreamClient(o);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->streams.size(), 1u);
  const StreamOutcome& st = report->streams[0];
  EXPECT_TRUE(report->ok()) << st.rpc_status << " " << st.overlay_error;
  EXPECT_EQ(st.sent, kFrames);
  EXPECT_EQ(st.received, kFrames);
  EXPECT_TRUE(st.in_order);
  EXPECT_EQ(st.by_status[static_cast<int>(FrameStatus::kOk)], kFrames);

  const std::vector<Line> lines = ReadJsonl(o.out_jsonl);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kFrames));
  for (int i = 0; i < kFrames; ++i) {
    const Line& l = lines[static_cast<size_t>(i)];
    EXPECT_EQ(l.seq, static_cast<uint64_t>(i)) << "result " << i << " out of order";
    EXPECT_EQ(l.status, "FRAME_STATUS_OK");
    EXPECT_EQ(l.width, kW);
    EXPECT_EQ(l.height, kH);
    // Sent as JPEG (quality 90): the mean moves by well under one level.
    EXPECT_NEAR(l.mean_luma, truth[static_cast<size_t>(i)], 1.0) << "frame " << i;
    // The one real cut is found; the slow brightening and the moving square are not cuts.
    EXPECT_EQ(l.scene_cut, i == kCut) << "frame " << i;
  }

  EXPECT_EQ(st.overlay_path, o.overlay_path);
  EXPECT_EQ(st.overlay_frames, kFrames);
  EXPECT_EQ(CountFrames(o.overlay_path), kFrames);
  // The overlay shows the frames in order: its frame i is the input's frame i (same picture,
  // results drawn at the top), so compare the lower half, which the text leaves alone.
  cv::VideoCapture in(video, cv::CAP_FFMPEG), ov(o.overlay_path, cv::CAP_FFMPEG);
  cv::Mat a, b;
  for (int i = 0; i < kFrames; ++i) {
    ASSERT_TRUE(in.read(a) && ov.read(b)) << i;
    ASSERT_EQ(b.size(), a.size());
    const cv::Rect lower(kW / 4, kH / 2, kW / 2, kH / 2 - 12);  // inside any scene-cut border
    EXPECT_LT(cv::norm(a(lower), b(lower), cv::NORM_L1) / lower.area(), 12.0) << "frame " << i;
  }
}

TEST(VideoClient, PlaysAtTheFilesRateUnlessUnpaced) {
  TempDir dir;
  const std::string video = WriteVideo(dir, 12, 100, /*fps=*/20);
  auto server = StartTestServer({});
  ASSERT_TRUE(server);
  StreamClientOptions o = VideoOptions(*server, video);
  o.unpaced = false;
  auto paced = RunStreamClient(o);
  ASSERT_TRUE(paced.ok()) << paced.status();
  EXPECT_TRUE(paced->ok());
  EXPECT_EQ(paced->frames_sent, 12);
  // 12 frames at 20 fps cannot take less than 11 periods (a lower bound only: pacing sleeps).
  EXPECT_GE(paced->seconds, 11 / 20.0 * 0.95);

  o.fps = 100;  // --fps overrides the file's rate
  auto fast = RunStreamClient(o);
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_TRUE(fast->ok());
  EXPECT_EQ(fast->frames_sent, 12);
  EXPECT_GE(fast->seconds, 11 / 100.0 * 0.95);
}

TEST(VideoClient, LoopAndFrameLimitAndSeveralStreams) {
  TempDir dir;
  constexpr int kFrames = 10;
  const std::string video = WriteVideo(dir, kFrames, 100);
  auto server = StartTestServer({});
  ASSERT_TRUE(server);

  StreamClientOptions o = VideoOptions(*server, video);
  o.frames = 25;  // more than the video holds: without --loop it stops at the end
  auto once = RunStreamClient(o);
  ASSERT_TRUE(once.ok()) << once.status();
  EXPECT_TRUE(once->ok());
  EXPECT_EQ(once->frames_sent, kFrames);

  o.loop = true;
  o.streams = 3;
  o.encoding = Encoding::kRaw;  // --encode raw: BGR8 pixels
  o.out_jsonl = dir / "loop.jsonl";
  o.overlay_path = dir / "loop.mp4";
  auto looped = RunStreamClient(o);
  ASSERT_TRUE(looped.ok()) << looped.status();
  EXPECT_TRUE(looped->ok());
  EXPECT_EQ(looped->frames_sent, 3 * 25);
  const std::vector<double> truth = DecodedLuma(video);
  ASSERT_EQ(truth.size(), static_cast<size_t>(kFrames));
  std::vector<uint64_t> next(3, 0);
  std::vector<int> count(3, 0);
  for (const Line& l : ReadJsonl(o.out_jsonl)) {
    ASSERT_GE(l.stream, 0);
    ASSERT_LT(l.stream, 3);
    EXPECT_EQ(l.seq, next[l.stream]);
    ++next[l.stream];
    // Raw pixels: exactly what the decoder produced, frame (index mod 10) of the file.
    const int index = count[l.stream]++;
    EXPECT_NEAR(l.mean_luma, truth[static_cast<size_t>(index % kFrames)], 0.01)
        << "stream " << l.stream << " frame " << index;
  }
  EXPECT_EQ(count, std::vector<int>(3, 25));
  EXPECT_EQ(CountFrames(dir / "loop.mp4"), 25);
  EXPECT_EQ(CountFrames(dir / "loop-1.mp4"), 25);
  EXPECT_EQ(CountFrames(dir / "loop-2.mp4"), 25);
}

TEST(VideoClient, ClearErrorsForInputsThatDoNotOpen) {
  TempDir dir;
  auto server = StartTestServer({});
  ASSERT_TRUE(server);

  auto missing = RunStreamClient(VideoOptions(*server, dir / "nope.mp4"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("does not exist"), std::string::npos)
      << missing.status();

  { std::ofstream(dir / "garbage.mp4") << "this is not a video at all"; }
  auto garbage = RunStreamClient(VideoOptions(*server, dir / "garbage.mp4"));
  ASSERT_FALSE(garbage.ok());
  EXPECT_NE(garbage.status().message().find("cannot open video"), std::string::npos)
      << garbage.status();
  EXPECT_NE(garbage.status().message().find("garbage.mp4"), std::string::npos);

  auto camera = RunStreamClient(VideoOptions(*server, "rtsp://127.0.0.1:1/camera"));
  ASSERT_FALSE(camera.ok());
  EXPECT_NE(camera.status().message().find("camera did not answer"), std::string::npos)
      << camera.status();

  StreamClientOptions o = VideoOptions(*server, WriteVideo(dir, 4, 100));
  o.overlay_path = dir / "no/such/dir/out.mp4";
  auto overlay = RunStreamClient(o);
  ASSERT_FALSE(overlay.ok());
  EXPECT_NE(overlay.status().message().find("not a writable directory"), std::string::npos)
      << overlay.status();
  // Nothing was sent for any of these: the server saw no stream.
  EXPECT_EQ(testing::GetStats(*server).streams_total(), 0u);
}

// A live network camera (FFmpeg serving a real-time MPEG-TS stream over HTTP on loopback): the
// stream is read continuously; a slow consumer makes the client skip captured frames instead of
// queueing them, and what was sent still comes back complete and in order.
TEST(VideoClient, LiveCameraSkipsFramesWhenTheStreamFallsBehind) {
  if (access("/usr/bin/ffmpeg", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/ffmpeg";
  auto server = StartTestServer({});
  ASSERT_TRUE(server);
  int port = 0;
  {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
  }
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/live.ts";
  ChildProcess camera({"/usr/bin/ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                       "testsrc=size=320x240:rate=30", "-t", "4", "-c:v", "mpeg2video", "-f",
                       "mpegts", "-listen", "1", url});
  StreamClientOptions o = VideoOptions(*server, url);
  o.unpaced = false;
  o.max_in_flight = 4;
  o.read_delay_ms = 100;  // a consumer that takes 100 ms per result: ~10 frames/s of 30
  absl::StatusOr<ClientReport> report = absl::UnavailableError("not started");
  // ffmpeg accepts one connection, so wait for it by trying to open the stream itself.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    report = RunStreamClient(o);
    if (report.ok()) break;
    ASSERT_NE(report.status().message().find("did not answer"), std::string::npos)
        << report.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(report.ok()) << report.status();
  const StreamOutcome& st = report->streams[0];
  EXPECT_TRUE(report->ok()) << st.rpc_status;
  EXPECT_TRUE(st.in_order);
  EXPECT_EQ(st.received, st.sent);
  EXPECT_GT(st.sent, 0);
  // The camera ran at 30 frames/s while results were taken at ~10/s: frames were skipped at
  // the source (never queued without bound, never lost once sent).
  EXPECT_GT(st.dropped_at_source, 0);
  // The client kept at most max_in_flight + 2 frames outstanding, so the server never held
  // more than the stream's window.
  EXPECT_LE(testing::GetStats(*server).peak_in_flight(), 4u);
}

}  // namespace
}  // namespace framepipe

#include "bench/video_ingest.h"

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "analysis/cpu/cpu_analyzer.h"
#include "analysis/video_decoder.h"
#include "bench/workloads.h"
#include "common/clock.h"
#include "common/status.h"
#include "media/synthetic_source.h"
#include "video_fixture.h"

namespace framepipe::bench {
namespace {

VideoFormatSpec FormatOf(const VideoPackets& clip) {
  return VideoFormatSpec{clip.info.codec == 1 ? VideoCodecId::kH264 : VideoCodecId::kHevc,
                         clip.info.extradata};
}

}  // namespace

absl::StatusOr<std::string> MakeH264Clip(const std::string& dir, int frames) {
  av_log_set_level(AV_LOG_ERROR);  // libx264's statistics are not the benchmark's output
  testing::EncoderSettings s;
  s.width = 1280;
  s.height = 720;
  s.gop = 30;
  s.b_frames = 3;
  s.preset = "veryfast";
  s.crf = "23";
  SyntheticSource src({s.width, s.height, 90, 1});
  const testing::EncodedClip clip = testing::Encode(s, frames, [&](AVFrame* f, int i) {
    // BGR -> YUV 4:2:0 (BT.601, limited range), plain loops: this runs once per benchmark.
    const Image bgr = src.Render(i);
    for (int y = 0; y < s.height; ++y) {
      const uint8_t* p = bgr.row(y);
      for (int x = 0; x < s.width; ++x) {
        const int b = p[3 * x], g = p[3 * x + 1], r = p[3 * x + 2];
        f->data[0][y * f->linesize[0] + x] =
            static_cast<uint8_t>(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16);
        if ((x & 1) == 0 && (y & 1) == 0) {
          f->data[1][(y / 2) * f->linesize[1] + x / 2] =
              static_cast<uint8_t>(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128);
          f->data[2][(y / 2) * f->linesize[2] + x / 2] =
              static_cast<uint8_t>(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128);
        }
      }
    }
  });
  if (!clip.error.empty()) return absl::UnavailableError(clip.error);
  const std::string path = dir + "/clip-720p.h264";  // Annex-B: the packets one after another
  std::ofstream out(path, std::ios::binary);
  for (const auto& p : clip.packets)
    out.write(p.data.data(), static_cast<std::streamsize>(p.data.size()));
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return path;
}

absl::StatusOr<int> WriteJpegFrames(const VideoPackets& clip, const std::string& dir) {
  FP_ASSIGN_OR_RETURN(auto decoder, CreateVideoDecoder(FormatOf(clip), {}));
  std::vector<DecodedPicture> pictures;
  for (size_t i = 0; i < clip.packets.size(); ++i) {
    (void)decoder->Decode({i, clip.packets[i], static_cast<int64_t>(i)}, &pictures);
  }
  decoder->Flush(&pictures);
  std::filesystem::create_directories(dir);
  int n = 0;
  for (const DecodedPicture& p : pictures) {
    if (!p.picture) continue;
    Image bgr;
    FP_RETURN_IF_ERROR(p.picture->ToBgr(&bgr));
    FP_ASSIGN_OR_RETURN(std::string jpeg, EncodeImage(bgr, Encoding::kJpeg, 90));
    std::ofstream(absl::StrFormat("%s/%06d.jpg", dir, n++), std::ios::binary) << jpeg;
  }
  return n;
}

absl::StatusOr<double> DecodeCeiling(const VideoPackets& clip, int threads, double seconds) {
  std::atomic<bool> failed{false};
  const double fps = RunThreads(threads, seconds, [&](int, int64_t) {
    // One packet per call; each thread (new for each run) its own decoder, kept across calls.
    thread_local std::unique_ptr<VideoDecoder> decoder;
    thread_local size_t next = 0;
    thread_local std::vector<DecodedPicture> pictures;
    thread_local CpuAnalyzer analyzer(CpuAnalyzerOptions{false, 0});
    if (!decoder) {
      auto d = CreateVideoDecoder(FormatOf(clip), {});
      if (!d.ok()) {
        failed = true;
        return;
      }
      decoder = std::move(d).value();
    }
    pictures.clear();
    (void)decoder->Decode({next, clip.packets[next], static_cast<int64_t>(next)}, &pictures);
    next = (next + 1) % clip.packets.size();
    for (DecodedPicture& p : pictures) {
      if (!p.picture) continue;
      FrameInput in;
      in.kind = PayloadKind::kPicture;
      in.picture = std::move(p.picture);
      OurChain(in, analyzer);
    }
  });
  if (failed) return absl::InternalError("a decoder could not be opened");
  return fps;
}

}  // namespace framepipe::bench

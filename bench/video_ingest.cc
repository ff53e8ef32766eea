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

extern "C" {
#include <libavformat/avformat.h>
}

namespace framepipe::bench {
namespace {

struct Clip {
  VideoFormatSpec format;
  std::vector<std::string> packets;
  std::vector<int64_t> pts;
  int width = 0, height = 0;
};

absl::StatusOr<Clip> ReadClip(const std::string& path) {
  AVFormatContext* fmt = nullptr;
  if (avformat_open_input(&fmt, path.c_str(), nullptr, nullptr) < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot open ", path));
  }
  Clip clip;
  absl::Status st;
  if (avformat_find_stream_info(fmt, nullptr) < 0) st = absl::InvalidArgumentError("no streams");
  const int s = st.ok() ? av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0) : -1;
  if (st.ok() && s < 0) st = absl::InvalidArgumentError(absl::StrCat(path, ": no video"));
  if (st.ok()) {
    const AVCodecParameters* par = fmt->streams[s]->codecpar;
    if (par->codec_id != AV_CODEC_ID_H264 && par->codec_id != AV_CODEC_ID_HEVC) {
      st = absl::InvalidArgumentError(absl::StrCat(path, ": not H.264 or HEVC"));
    } else {
      clip.format.codec =
          par->codec_id == AV_CODEC_ID_H264 ? VideoCodecId::kH264 : VideoCodecId::kHevc;
      if (par->extradata_size > 0) {
        clip.format.extradata.assign(reinterpret_cast<const char*>(par->extradata),
                                     static_cast<size_t>(par->extradata_size));
      }
      clip.width = par->width;
      clip.height = par->height;
      AVPacket* pkt = av_packet_alloc();
      while (av_read_frame(fmt, pkt) >= 0) {
        if (pkt->stream_index == s && pkt->size > 0) {
          clip.packets.emplace_back(reinterpret_cast<const char*>(pkt->data),
                                    static_cast<size_t>(pkt->size));
          clip.pts.push_back(static_cast<int64_t>(clip.pts.size()));
        }
        av_packet_unref(pkt);
      }
      av_packet_free(&pkt);
    }
  }
  avformat_close_input(&fmt);
  if (!st.ok()) return st;
  if (clip.packets.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no packets"));
  return clip;
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

absl::StatusOr<ClipInfo> ProbeClip(const std::string& path) {
  FP_ASSIGN_OR_RETURN(Clip clip, ReadClip(path));
  ClipInfo info;
  info.width = clip.width;
  info.height = clip.height;
  info.packets = static_cast<int>(clip.packets.size());
  double bytes = 0;
  for (const auto& p : clip.packets) bytes += static_cast<double>(p.size());
  info.bytes_per_packet = bytes / info.packets;
  return info;
}

absl::StatusOr<int> WriteJpegFrames(const std::string& path, const std::string& dir) {
  FP_ASSIGN_OR_RETURN(Clip clip, ReadClip(path));
  FP_ASSIGN_OR_RETURN(auto decoder, CreateVideoDecoder(clip.format, {}));
  std::vector<DecodedPicture> pictures;
  for (size_t i = 0; i < clip.packets.size(); ++i) {
    (void)decoder->Decode({i, clip.packets[i], clip.pts[i]}, &pictures);
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

absl::StatusOr<double> DecodeCeiling(const std::string& path, int threads, double seconds) {
  FP_ASSIGN_OR_RETURN(Clip clip, ReadClip(path));
  std::atomic<bool> failed{false};
  const double fps = RunThreads(threads, seconds, [&](int, int64_t) {
    // One packet per call; each thread its own decoder, kept across calls.
    thread_local std::unique_ptr<VideoDecoder> decoder;
    thread_local size_t next = 0;
    thread_local const Clip* owner = nullptr;
    thread_local std::vector<DecodedPicture> pictures;
    thread_local CpuAnalyzer analyzer(CpuAnalyzerOptions{false, 0});
    if (owner != &clip) {
      auto d = CreateVideoDecoder(clip.format, {});
      if (!d.ok()) {
        failed = true;
        return;
      }
      decoder = std::move(d).value();
      owner = &clip;
      next = 0;
    }
    pictures.clear();
    (void)decoder->Decode({next, clip.packets[next], clip.pts[next]}, &pictures);
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

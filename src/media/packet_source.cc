#include "media/packet_source.h"

#include <atomic>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "analysis/video_decoder.h"
#include "common/clock.h"
#include "common/status.h"
#include "media/capture_queue.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
}

namespace framepipe {
namespace {

struct InputFree {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
using InputPtr = std::unique_ptr<AVFormatContext, InputFree>;

struct Demuxer {
  InputPtr input;
  int stream = -1;
  VideoInfo info;
};

absl::StatusOr<Demuxer> OpenDemuxer(const std::string& url) {
  FP_RETURN_IF_ERROR(media_internal::CheckInputExists(url));
  AVDictionary* opts = nullptr;
  if (url.rfind("rtsp://", 0) == 0) av_dict_set(&opts, "rtsp_transport", "tcp", 0);
  AVFormatContext* raw = nullptr;
  int err = avformat_open_input(&raw, url.c_str(), nullptr, &opts);
  av_dict_free(&opts);
  if (err < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot open '", url, "' for --send packets: ", FfmpegErrorText(err)));
  }
  Demuxer d;
  d.input.reset(raw);
  err = avformat_find_stream_info(raw, nullptr);
  if (err < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the streams of '", url, "': ", FfmpegErrorText(err)));
  }
  d.stream = av_find_best_stream(raw, AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (d.stream < 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", url, "' has no video stream"));
  }
  const AVStream* st = raw->streams[d.stream];
  const AVCodecParameters* par = st->codecpar;
  if (par->codec_id == AV_CODEC_ID_H264) {
    d.info.codec = 1;
  } else if (par->codec_id == AV_CODEC_ID_HEVC) {
    d.info.codec = 2;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--send packets sends H.264 or HEVC video; '", url, "' is ",
                     avcodec_get_name(par->codec_id),
                     ": use --send images (decoded and re-encoded as JPEG on the client)"));
  }
  if (par->extradata && par->extradata_size > 0) {
    d.info.extradata.assign(reinterpret_cast<const char*>(par->extradata),
                            static_cast<size_t>(par->extradata_size));
  }
  d.info.time_base_num = st->time_base.num;
  d.info.time_base_den = st->time_base.den;
  d.info.width = par->width;
  d.info.height = par->height;
  const AVRational rate = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
  if (rate.num > 0 && rate.den > 0) d.info.fps = av_q2d(rate);
  if (!(d.info.fps > 0 && d.info.fps < 1000)) d.info.fps = 0;
  return d;
}

// Reads packets on a thread of its own, a few ahead, at the video's frame rate (or --fps, or
// unpaced). Files wait for the stream; a live camera keeps being read, and when the stream
// falls behind it skips to the next keyframe (a lost packet would break the ones after it).
class PacketSource : public media_internal::QueuedSource {
 public:
  PacketSource(const SourceOptions& o, Demuxer d)
      : QueuedSource(8, media_internal::IsLiveInput(o.input)), o_(o), d_(std::move(d)) {
    StartCapture([this] { Demux(); });
  }
  ~PacketSource() override { StopCapture(); }

  double fps() const override { return o_.fps > 0 ? o_.fps : d_.info.fps; }
  const VideoInfo* video() const override { return &d_.info; }

 private:
  void Demux() {
    const double pace = o_.unpaced && !live_ ? 0 : fps();
    const auto period = pace > 0 ? std::chrono::nanoseconds(static_cast<int64_t>(1e9 / pace))
                                 : std::chrono::nanoseconds(0);
    TimePoint next = Now();
    // Files at their own rate are paced by their timestamps; --fps sets a fixed rate instead.
    const AVRational tb = d_.input->streams[d_.stream]->time_base;
    const bool by_timestamps = o_.fps <= 0 && !o_.unpaced && tb.num > 0 && tb.den > 0;
    const double time_base = by_timestamps ? av_q2d(tb) : 0;
    const TimePoint start = Now();
    int64_t first_dts = AV_NOPTS_VALUE;       // of the current pass
    double pass_start_s = 0, pass_end_s = 0;  // --loop: passes follow each other
    int64_t produced = 0;
    int64_t counter = 0;
    int64_t pts_offset = 0, pts_end = 0;  // --loop: pts keep increasing across passes
    bool skipping = false;                // live: skipping to the next keyframe
    AVPacket* pkt = av_packet_alloc();
    while (pkt) {
      if (o_.frames > 0 && produced >= o_.frames) break;
      const int err = av_read_frame(d_.input.get(), pkt);
      if (err < 0) {
        if (live_ || !o_.loop || produced == 0) break;
        if (av_seek_frame(d_.input.get(), d_.stream, 0, AVSEEK_FLAG_BACKWARD) < 0) break;
        pts_offset = pts_end;
        pass_start_s = pass_end_s;
        first_dts = AV_NOPTS_VALUE;
        continue;
      }
      if (pkt->stream_index != d_.stream || pkt->size <= 0) {
        av_packet_unref(pkt);
        continue;
      }
      if (!live_ && by_timestamps && pkt->dts != AV_NOPTS_VALUE) {
        // A file played as recorded: each packet leaves at its decode timestamp (dts rises in
        // decode order; pts would send a P-frame early and the B-frames before it in a burst).
        if (first_dts == AV_NOPTS_VALUE) first_dts = pkt->dts;
        const double t = pass_start_s + static_cast<double>(pkt->dts - first_dts) * time_base;
        pass_end_s = std::max(
            pass_end_s, t + static_cast<double>(std::max<int64_t>(pkt->duration, 1)) * time_base);
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(std::max(t, 0.0))));
      } else if (!live_ && period.count() > 0) {
        std::this_thread::sleep_until(next);
        next += period;
      }
      SourceFrame f;
      f.video_packet = true;
      f.capture_time_us = WallMicros();
      const int64_t ts = pkt->pts != AV_NOPTS_VALUE   ? pkt->pts
                         : pkt->dts != AV_NOPTS_VALUE ? pkt->dts
                                                      : counter;
      ++counter;
      f.pts = ts + pts_offset;
      pts_end = std::max(pts_end, f.pts + std::max<int64_t>(pkt->duration, 1));
      f.payload = std::make_shared<const std::string>(reinterpret_cast<const char*>(pkt->data),
                                                      static_cast<size_t>(pkt->size));
      f.width = d_.info.width;
      f.height = d_.info.height;
      const bool key = (pkt->flags & AV_PKT_FLAG_KEY) != 0;
      av_packet_unref(pkt);
      bool pushed = true;
      if (live_) {
        // Behind: this packet and the rest of its GOP are dropped (a lost packet would break
        // the ones after it), and sending resumes at the next keyframe.
        bool full = false;
        if (skipping && !key) {
          full = true;
        } else if (!queue_.PushIfRoom(std::move(f), &full)) {
          break;
        }
        skipping = full;
        pushed = !full;
        if (full) ++dropped_;
      } else if (!queue_.PushWait(std::move(f))) {
        break;
      }
      if (pushed) ++produced;
    }
    av_packet_free(&pkt);
    queue_.Finish();
  }

  const SourceOptions o_;
  Demuxer d_;
};

}  // namespace

absl::StatusOr<VideoPackets> ReadVideoPackets(const std::string& path) {
  FP_ASSIGN_OR_RETURN(Demuxer d, OpenDemuxer(path));
  VideoPackets out;
  AVPacket* pkt = av_packet_alloc();
  if (!pkt) return absl::ResourceExhaustedError("cannot allocate a packet");
  while (av_read_frame(d.input.get(), pkt) >= 0) {
    if (pkt->stream_index == d.stream && pkt->size > 0) {
      out.packets.emplace_back(reinterpret_cast<const char*>(pkt->data),
                               static_cast<size_t>(pkt->size));
    }
    av_packet_unref(pkt);
  }
  av_packet_free(&pkt);
  if (out.packets.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no packets"));
  out.info = std::move(d.info);
  return out;
}

absl::StatusOr<std::function<std::unique_ptr<FrameSource>(int)>> MakePacketSourceFactory(
    const SourceOptions& o) {
  av_log_set_level(AV_LOG_ERROR);
  FP_ASSIGN_OR_RETURN(Demuxer first, OpenDemuxer(o.input));
  auto spare =
      std::make_shared<std::unique_ptr<Demuxer>>(std::make_unique<Demuxer>(std::move(first)));
  auto mu = std::make_shared<std::mutex>();
  return std::function<std::unique_ptr<FrameSource>(int)>(
      [o, spare, mu](int) -> std::unique_ptr<FrameSource> {
        std::unique_ptr<Demuxer> d;
        {
          std::lock_guard<std::mutex> l(*mu);
          d = std::move(*spare);
        }
        if (!d) {
          auto again = OpenDemuxer(o.input);
          if (!again.ok()) return nullptr;
          d = std::make_unique<Demuxer>(std::move(again).value());
        }
        return std::make_unique<PacketSource>(o, std::move(*d));
      });
}

}  // namespace framepipe

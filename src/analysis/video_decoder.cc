#include "analysis/video_decoder.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/error.h>
#include <libavutil/hwcontext.h>
#include <libavutil/imgutils.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

namespace framepipe {
namespace {

struct FrameFree {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
using FramePtr = std::unique_ptr<AVFrame, FrameFree>;

// Whether a packet begins with an Annex-B start code (00 00 01 or 00 00 00 01).
bool StartsWithStartCode(std::string_view p) {
  return (p.size() >= 3 && p[0] == 0 && p[1] == 0 && p[2] == 1) ||
         (p.size() >= 4 && p[0] == 0 && p[1] == 0 && p[2] == 0 && p[3] == 1);
}

// The packet framing from extradata: 1..4 for avcC/hvcC, 0 for Annex-B or empty; InvalidArgument
// if it is neither.
absl::StatusOr<int> NalLengthSize(const VideoFormatSpec& format) {
  const std::string& x = format.extradata;
  const auto* p = reinterpret_cast<const uint8_t*>(x.data());
  if (x.empty() || StartsWithStartCode(x)) return 0;
  if (p[0] == 1) {
    if (format.codec == VideoCodecId::kH264 && x.size() >= 7) return (p[4] & 3) + 1;
    if (format.codec == VideoCodecId::kHevc && x.size() >= 23) return (p[21] & 3) + 1;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "VideoFormat.extradata (", x.size(), " bytes) is neither an ",
      format.codec == VideoCodecId::kH264 ? "avcC" : "hvcC", " record nor Annex-B parameter sets"));
}

// Calls fn for each NAL unit of a packet: length-prefixed (`length_size` 1..4) or Annex-B (0);
// stops at broken framing.
void ForEachNal(std::string_view packet, int length_size,
                const std::function<void(const uint8_t*, size_t)>& fn) {
  const auto* p = reinterpret_cast<const uint8_t*>(packet.data());
  const size_t n = packet.size();
  if (length_size > 0) {
    size_t i = 0;
    while (i < n) {
      if (n - i < static_cast<size_t>(length_size)) return;
      size_t len = 0;
      for (int k = 0; k < length_size; ++k) len = (len << 8) | p[i + k];
      i += length_size;
      if (len == 0 || len > n - i) return;
      fn(p + i, len);
      i += len;
    }
    return;
  }
  // Annex-B: NAL units follow 00 00 01 start codes (a leading zero byte belongs to the next
  // start code, not to the unit).
  size_t i = 0;
  while (i + 3 <= n) {
    if (p[i] == 0 && p[i + 1] == 0 && p[i + 2] == 1) {
      size_t start = i + 3;
      size_t j = start;
      while (j + 3 <= n && !(p[j] == 0 && p[j + 1] == 0 && (p[j + 2] == 1 || p[j + 2] == 0))) ++j;
      size_t end = j + 3 <= n ? j : n;
      if (end > start) fn(p + start, end - start);
      i = end;
    } else {
      ++i;
    }
  }
}

// One decoded picture in host memory: a reference to the decoder's frame buffer (YUV; NVDEC
// surfaces are copied to the host when they come out), converted to BGR on a worker.
class AvPicture final : public Picture {
 public:
  explicit AvPicture(FramePtr frame) : frame_(std::move(frame)) {}
  int width() const override { return frame_->width; }
  int height() const override { return frame_->height; }
  uint64_t bytes() const override {
    uint64_t n = 0;
    for (AVBufferRef* b : frame_->buf) {
      if (b) n += b->size;
    }
    return n;
  }

  absl::Status ToBgr(Image* out) const override {
    const AVFrame* src = frame_.get();  // in host memory (NVDEC pictures are copied at output)
    // One conversion context per worker thread, reused while the format stays the same (as
    // OpenCV's FFmpeg capture does: same size, 8-bit BGR, SWS_BICUBIC).
    thread_local SwsContext* sws = nullptr;
    sws = sws_getCachedContext(sws, src->width, src->height,
                               static_cast<AVPixelFormat>(src->format), src->width, src->height,
                               AV_PIX_FMT_BGR24, SWS_BICUBIC, nullptr, nullptr, nullptr);
    if (!sws) {
      return absl::InternalError(
          absl::StrCat("no conversion from ",
                       av_get_pix_fmt_name(static_cast<AVPixelFormat>(src->format)), " to BGR"));
    }
    Image img = Image::Allocate(src->width, src->height, PixelFormat::kBgr8);
    uint8_t* dst[4] = {img.mutable_data(), nullptr, nullptr, nullptr};
    int dst_stride[4] = {static_cast<int>(img.stride()), 0, 0, 0};
    sws_scale(sws, src->data, src->linesize, 0, src->height, dst, dst_stride);
    *out = std::move(img);
    return absl::OkStatus();
  }

 private:
  FramePtr frame_;
};

struct CodecContextFree {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};

std::mutex hw_mu;
AVBufferRef* hw_device = nullptr;  // guarded by hw_mu; lives for the process
bool hw_tried = false;
std::string hw_reason;

class FfmpegVideoDecoder final : public VideoDecoder {
 public:
  FfmpegVideoDecoder(VideoCodecId codec, int length_size, const VideoDecoderOptions& options)
      : codec_(codec), length_size_(length_size), options_(options) {}
  ~FfmpegVideoDecoder() override {
    ctx_.reset();  // frees the decoder's pictures (those still referenced elsewhere are charged
                   // to the pipeline as frames)
    if (charged_ > 0 && options_.release) options_.release(charged_);
  }

  absl::Status Open(const VideoFormatSpec& format) {
    const AVCodec* c =
        avcodec_find_decoder(codec_ == VideoCodecId::kH264 ? AV_CODEC_ID_H264 : AV_CODEC_ID_HEVC);
    if (!c) {
      return absl::InvalidArgumentError(
          absl::StrCat("this server's libavcodec has no ", VideoCodecName(codec_), " decoder"));
    }
    ctx_.reset(avcodec_alloc_context3(c));
    if (!ctx_) return absl::ResourceExhaustedError("cannot allocate a video decoder");
    ctx_->opaque = this;
    ctx_->thread_count = 1;  // serial: pictures leave in a known delay, no frame threads
    ctx_->thread_type = 0;
    ctx_->max_pixels = static_cast<int64_t>(options_.limits.max_width) * options_.limits.max_height;
    // Report what the decoder finds instead of concealing it: a packet it cannot parse is an
    // error, and a damaged picture still comes out, flagged (decode_error_flags or
    // AV_FRAME_FLAG_CORRUPT), so its packet is answered at once rather than never.
    ctx_->err_recognition = AV_EF_CRCCHECK | AV_EF_BITSTREAM | AV_EF_BUFFER | AV_EF_EXPLODE;
    ctx_->flags |= AV_CODEC_FLAG_OUTPUT_CORRUPT;
    ctx_->get_format = &FfmpegVideoDecoder::GetFormat;
    if (!format.extradata.empty()) {
      ctx_->extradata =
          static_cast<uint8_t*>(av_mallocz(format.extradata.size() + AV_INPUT_BUFFER_PADDING_SIZE));
      if (!ctx_->extradata) return absl::ResourceExhaustedError("cannot allocate extradata");
      std::memcpy(ctx_->extradata, format.extradata.data(), format.extradata.size());
      ctx_->extradata_size = static_cast<int>(format.extradata.size());
    }
    if (options_.try_hardware) {
      std::lock_guard<std::mutex> l(hw_mu);
      if (hw_device) {
        ctx_->hw_device_ctx = av_buffer_ref(hw_device);
        hardware_ = true;
      }
    }
    const int err = avcodec_open2(ctx_.get(), c, nullptr);
    if (err < 0) {
      return absl::InvalidArgumentError(absl::StrCat("the ", VideoCodecName(codec_),
                                                     " decoder does not accept this stream's "
                                                     "extradata: ",
                                                     FfmpegErrorText(err)));
    }
    packet_.reset(av_packet_alloc());
    if (!packet_) return absl::ResourceExhaustedError("cannot allocate a packet");
    return absl::OkStatus();
  }

  absl::Status CheckFraming(std::string_view packet) const override {
    if (length_size_ == 0 && !packet.empty() && !StartsWithStartCode(packet)) {
      // Without an avcC/hvcC record the packets must be Annex-B; an MP4-style packet (NAL units
      // with length prefixes) says the extradata is missing.
      return absl::InvalidArgumentError(absl::StrCat(
          "the packet is not Annex-B (no start code) and the stream has no ",
          codec_ == VideoCodecId::kH264 ? "avcC" : "hvcC",
          " record: length-prefixed packets (MP4, MKV) need StreamConfig.video.extradata"));
    }
    return absl::OkStatus();
  }

  bool IsKeyframe(std::string_view packet) const override {
    bool key = false;
    ForEachNal(packet, length_size_, [&](const uint8_t* nal, size_t) {
      if (codec_ == VideoCodecId::kH264) {
        if ((nal[0] & 0x1f) == 5) key = true;  // IDR slice
      } else {
        const int type = (nal[0] >> 1) & 0x3f;
        if (type >= 16 && type <= 21) key = true;  // BLA, IDR, CRA: intra random access
      }
    });
    return key;
  }

  absl::Status Decode(const VideoPacket& p, std::vector<DecodedPicture>* out) override {
    if (p.data.empty()) return absl::InvalidArgumentError("video_packet is empty");
    FP_RETURN_IF_ERROR(CheckFraming(p.data));
    if (p.data.size() > static_cast<size_t>(INT32_MAX - AV_INPUT_BUFFER_PADDING_SIZE)) {
      return absl::InvalidArgumentError("video_packet is too large");
    }
    AVPacket* pkt = packet_.get();
    av_packet_unref(pkt);
    int err = av_new_packet(pkt, static_cast<int>(p.data.size()));
    if (err < 0) return absl::ResourceExhaustedError("cannot allocate a packet");
    std::memcpy(pkt->data, p.data.data(), p.data.size());
    pkt->pts = p.pts;
    pkt->dts = AV_NOPTS_VALUE;
    pkt->pos = static_cast<int64_t>(p.id);  // comes back as the picture's pkt_pos
    size_error_.clear();
    err = avcodec_send_packet(ctx_.get(), pkt);
    if (err == AVERROR(EAGAIN)) {
      // Output must be drained first (cannot happen when every picture is received after each
      // packet; kept for safety): drain and send again.
      Receive(out);
      err = avcodec_send_packet(ctx_.get(), pkt);
    }
    av_packet_unref(pkt);
    absl::Status st;
    if (err < 0) st = Rejected(err);
    Receive(out);
    if (st.ok() && !size_error_.empty()) st = absl::InvalidArgumentError(size_error_);
    return st;
  }

  void Flush(std::vector<DecodedPicture>* out) override {
    if (avcodec_send_packet(ctx_.get(), nullptr) < 0) return;
    Receive(out);
  }

  int ReorderDelay() const override {
    return std::clamp(ctx_->has_b_frames, 0, kMaxVideoReorderDelay);
  }
  VideoCodecId codec() const override { return codec_; }

 private:
  absl::Status Rejected(int err) {
    if (!size_error_.empty()) return absl::InvalidArgumentError(size_error_);
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", VideoCodecName(codec_), " decoder rejected the packet: ", FfmpegErrorText(err)));
  }

  void Receive(std::vector<DecodedPicture>* out) {
    for (;;) {
      FramePtr f(av_frame_alloc());
      if (!f) return;
      const int err = avcodec_receive_frame(ctx_.get(), f.get());
      if (err < 0) return;  // EAGAIN, EOF, or an error the next packet will report
      DecodedPicture d;
      d.packet_id = static_cast<uint64_t>(f->pkt_pos);
      d.pts = f->pts;
      if (f->decode_error_flags != 0 || (f->flags & AV_FRAME_FLAG_CORRUPT)) {
        d.damage = absl::InvalidArgumentError(absl::StrCat(
            "the ", VideoCodecName(codec_), " decoder reported damage in this picture (flags ",
            f->decode_error_flags, f->flags & AV_FRAME_FLAG_CORRUPT ? ", corrupt" : "", ")"));
      } else if (f->hw_frames_ctx) {
        // NVDEC: the surface goes back to the decoder's small pool at once; the picture waits
        // for analysis in host memory (a window of pictures could otherwise exhaust the pool).
        FramePtr host(av_frame_alloc());
        if (!host || av_hwframe_transfer_data(host.get(), f.get(), 0) < 0) {
          d.damage =
              absl::InternalError("copying a hardware-decoded picture to host memory failed");
        } else {
          av_frame_copy_props(host.get(), f.get());
          d.picture = std::make_shared<AvPicture>(std::move(host));
        }
      } else {
        d.picture = std::make_shared<AvPicture>(std::move(f));
      }
      out->push_back(std::move(d));
    }
  }

  // Called when the parameter sets are activated, before any picture buffer is allocated: the
  // place to refuse a picture size over the limits.
  static AVPixelFormat GetFormat(AVCodecContext* ctx, const AVPixelFormat* formats) {
    auto* self = static_cast<FfmpegVideoDecoder*>(ctx->opaque);
    const int w = std::max(ctx->width, ctx->coded_width);
    const int h = std::max(ctx->height, ctx->coded_height);
    if (w <= 0 || h <= 0 || static_cast<uint32_t>(ctx->width) > self->options_.limits.max_width ||
        static_cast<uint32_t>(ctx->height) > self->options_.limits.max_height) {
      self->size_error_ = absl::StrCat(
          "the stream's parameter sets declare ", ctx->width, "x", ctx->height,
          " pictures, over this server's limit of ", self->options_.limits.max_width, "x",
          self->options_.limits.max_height, " (--max-width/--max-height): not decoded");
      return AV_PIX_FMT_NONE;
    }
    AVPixelFormat software = AV_PIX_FMT_NONE;
    bool cuda = false;
    for (const AVPixelFormat* f = formats; *f != AV_PIX_FMT_NONE; ++f) {
      if (*f == AV_PIX_FMT_CUDA && self->hardware_) cuda = true;
      const AVPixFmtDescriptor* d = av_pix_fmt_desc_get(*f);
      if (software == AV_PIX_FMT_NONE && d && !(d->flags & AV_PIX_FMT_FLAG_HWACCEL)) software = *f;
    }
    if (software != AV_PIX_FMT_NONE && !self->Charge(software, w, h)) return AV_PIX_FMT_NONE;
    return cuda ? AV_PIX_FMT_CUDA : software;
  }

  // Charges the pictures this stream's decoder will hold, before it allocates any: its
  // reference frames and reorder delay from the parameter sets, plus the picture being decoded
  // and two in output (NVDEC surfaces are charged as host pictures: they are copied there).
  bool Charge(AVPixelFormat format, int w, int h) {
    const int refs =
        std::clamp(ctx_->refs > 0 ? ctx_->refs : kMaxVideoReorderDelay, 1, kMaxVideoReorderDelay);
    const int pictures = refs + ReorderDelay() + 3;
    const int one = av_image_get_buffer_size(format, w, h, 32);
    const uint64_t bytes = static_cast<uint64_t>(std::max(one, 0)) * pictures;
    if (bytes == charged_) return true;
    if (charged_ > 0 && options_.release) options_.release(charged_);
    charged_ = 0;
    if (options_.charge && !options_.charge(bytes)) {
      size_error_ = absl::StrCat(
          "the server's memory budget (--max-memory-mb) has no room now for this stream's "
          "decoder: ",
          pictures, " pictures of ", w, "x", h, " (", bytes >> 20,
          " MiB); packets are refused until a keyframe finds room");
      return false;
    }
    charged_ = bytes;
    return true;
  }

  struct PacketFree {
    void operator()(AVPacket* p) const { av_packet_free(&p); }
  };

  const VideoCodecId codec_;
  const int length_size_;
  const VideoDecoderOptions options_;
  uint64_t charged_ = 0;  // bytes charged to the memory budget
  bool hardware_ = false;
  std::unique_ptr<AVCodecContext, CodecContextFree> ctx_;
  std::unique_ptr<AVPacket, PacketFree> packet_;
  std::string size_error_;
};

}  // namespace

std::string FfmpegErrorText(int averror) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(averror, buf, sizeof(buf));
  return buf;
}

const char* VideoCodecName(VideoCodecId codec) {
  return codec == VideoCodecId::kH264 ? "h264" : "hevc";
}

std::string PrepareHardwareVideoDecoding() {
  std::lock_guard<std::mutex> l(hw_mu);
  if (!hw_tried) {
    hw_tried = true;
    const int err = av_hwdevice_ctx_create(&hw_device, AV_HWDEVICE_TYPE_CUDA, nullptr, nullptr, 0);
    if (err < 0) {
      hw_device = nullptr;
      hw_reason =
          absl::StrCat("FFmpeg cannot open a CUDA device for NVDEC: ", FfmpegErrorText(err));
    }
  }
  return hw_reason;
}

absl::StatusOr<std::unique_ptr<VideoDecoder>> CreateVideoDecoder(
    const VideoFormatSpec& format, const VideoDecoderOptions& options) {
  // FFmpeg would write a line to stderr for every damaged packet a peer sends (a log a client
  // could multiply); what it finds is reported in the packet's result instead.
  static std::once_flag quiet;
  std::call_once(quiet, [] { av_log_set_level(AV_LOG_QUIET); });
  FP_ASSIGN_OR_RETURN(const int length_size, NalLengthSize(format));
  auto d = std::make_unique<FfmpegVideoDecoder>(format.codec, length_size, options);
  FP_RETURN_IF_ERROR(d->Open(format));
  return std::unique_ptr<VideoDecoder>(std::move(d));
}

}  // namespace framepipe

// Test-only (and the benchmark's): encodes pictures with a real encoder (libx264/libx265 through
// libavcodec) into access units in decode order, as a demuxer would hand them out.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/opt.h>
}

namespace framepipe::testing {

struct EncodedPacket {
  std::string data;
  int64_t pts = 0;
  bool key = false;
};

struct EncodedClip {
  std::string extradata;  // Annex-B parameter sets when global_header, else empty (in band)
  std::vector<EncodedPacket> packets;  // decode order
  std::string error;                   // set when the encoder is missing
};

struct EncoderSettings {
  std::string encoder = "libx264";  // or "libx265"
  int width = 320, height = 240;
  int gop = 30;
  int b_frames = 0;
  bool global_header = false;
  std::string preset = "ultrafast";
  std::string crf;  // "" = the encoder's default
};

// Fills picture `index` (YUV 4:2:0, 8-bit) before it is encoded; pts = 100 * index + 7.
using FillPicture = std::function<void(AVFrame* frame, int index)>;

inline EncodedClip Encode(const EncoderSettings& s, int frames, const FillPicture& fill) {
  EncodedClip clip;
  const AVCodec* c = avcodec_find_encoder_by_name(s.encoder.c_str());
  if (!c) {
    clip.error = "no encoder " + s.encoder;
    return clip;
  }
  AVCodecContext* ctx = avcodec_alloc_context3(c);
  ctx->width = s.width;
  ctx->height = s.height;
  ctx->pix_fmt = AV_PIX_FMT_YUV420P;
  ctx->time_base = AVRational{1, 2500};
  ctx->framerate = AVRational{25, 1};
  ctx->gop_size = s.gop;
  ctx->max_b_frames = s.b_frames;
  ctx->thread_count = 1;
  if (s.global_header) ctx->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  av_opt_set(ctx->priv_data, "preset", s.preset.c_str(), 0);
  if (!s.crf.empty()) av_opt_set(ctx->priv_data, "crf", s.crf.c_str(), 0);
  // The presets may turn B-frames off; the settings put them back. x265 runs without its own
  // thread pool (ThreadSanitizer cannot see its synchronisation).
  const std::string gop = ":b-adapt=0:scenecut=0:keyint=" + std::to_string(s.gop) +
                          ":bframes=" + std::to_string(s.b_frames);
  if (s.encoder == "libx264") {
    av_opt_set(ctx->priv_data, "x264-params", ("log-level=error" + gop).c_str(), 0);
  } else {
    av_opt_set(ctx->priv_data, "x265-params",
               ("log-level=error:pools=none:frame-threads=1" + gop).c_str(), 0);
  }
  if (avcodec_open2(ctx, c, nullptr) < 0) {
    clip.error = "cannot open encoder " + s.encoder;
    avcodec_free_context(&ctx);
    return clip;
  }
  if (s.global_header && ctx->extradata_size > 0) {
    clip.extradata.assign(reinterpret_cast<const char*>(ctx->extradata),
                          static_cast<size_t>(ctx->extradata_size));
  }
  AVFrame* f = av_frame_alloc();
  f->format = AV_PIX_FMT_YUV420P;
  f->width = s.width;
  f->height = s.height;
  av_frame_get_buffer(f, 0);
  AVPacket* pkt = av_packet_alloc();
  auto drain = [&] {
    while (avcodec_receive_packet(ctx, pkt) == 0) {
      clip.packets.push_back(
          {std::string(reinterpret_cast<const char*>(pkt->data), static_cast<size_t>(pkt->size)),
           pkt->pts, (pkt->flags & AV_PKT_FLAG_KEY) != 0});
      av_packet_unref(pkt);
    }
  };
  for (int i = 0; i < frames; ++i) {
    av_frame_make_writable(f);
    fill(f, i);
    f->pts = 100 * i + 7;
    avcodec_send_frame(ctx, f);
    drain();
  }
  avcodec_send_frame(ctx, nullptr);
  drain();
  av_packet_free(&pkt);
  av_frame_free(&f);
  avcodec_free_context(&ctx);
  return clip;
}

// `frames` pictures of width x height: a moving gradient with a scene change every 20 frames,
// GOP `gop`, up to `b_frames` B-frames.
inline EncodedClip EncodeClip(const char* encoder, int width, int height, int frames, int gop,
                              int b_frames, bool global_header) {
  EncoderSettings s;
  s.encoder = encoder;
  s.width = width;
  s.height = height;
  s.gop = gop;
  s.b_frames = b_frames;
  s.global_header = global_header;
  return Encode(s, frames, [width, height](AVFrame* f, int i) {
    const int scene = i / 20;
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        f->data[0][y * f->linesize[0] + x] =
            static_cast<uint8_t>((x * (scene + 1) + y * 2 + i * 3 + scene * 70) & 0xff);
      }
    }
    for (int y = 0; y < height / 2; ++y) {
      for (int x = 0; x < width / 2; ++x) {
        f->data[1][y * f->linesize[1] + x] = static_cast<uint8_t>(128 + ((x + scene * 30) & 31));
        f->data[2][y * f->linesize[2] + x] = static_cast<uint8_t>(128 - ((y + i) & 31));
      }
    }
  });
}

}  // namespace framepipe::testing

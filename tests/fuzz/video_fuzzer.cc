// libFuzzer target over the video path: a codec choice, optional extradata and a sequence of
// packets, fed to the FFmpeg decoder the way a VideoStream feeds it (keyframe test, decode,
// flush), every picture converted to BGR. Input: [mode][u16 length][bytes]... where mode bit 0
// picks HEVC over H.264 and bit 1 makes the first chunk the extradata. No crash, no hang, no
// allocation over the limits (pictures are capped at 512x512 here).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "analysis/video_decoder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace framepipe;  // NOLINT
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::vector<std::string_view> chunks;
  for (size_t i = 1; i + 2 <= size;) {
    const size_t len = (static_cast<size_t>(data[i]) << 8) | data[i + 1];
    i += 2;
    const size_t n = len < size - i ? len : size - i;
    chunks.emplace_back(reinterpret_cast<const char*>(data + i), n);
    i += n;
  }
  VideoFormatSpec spec;
  spec.codec = (mode & 1) ? VideoCodecId::kHevc : VideoCodecId::kH264;
  size_t first = 0;
  if ((mode & 2) && !chunks.empty()) {
    spec.extradata = std::string(chunks[0]);
    first = 1;
  }
  VideoDecoderOptions options;
  options.limits.max_width = 512;
  options.limits.max_height = 512;
  auto decoder = CreateVideoDecoder(spec, options);
  if (!decoder.ok()) return 0;
  VideoDecoder& d = **decoder;
  std::vector<DecodedPicture> pictures;
  for (size_t i = first; i < chunks.size(); ++i) {
    (void)d.IsKeyframe(chunks[i]);
    (void)d.Decode(VideoPacket{i, chunks[i], static_cast<int64_t>(i)}, &pictures);
  }
  d.Flush(&pictures);
  for (const DecodedPicture& p : pictures) {
    if (!p.picture) continue;
    if (p.picture->width() > 512 || p.picture->height() > 512) __builtin_trap();
    Image bgr;
    (void)p.picture->ToBgr(&bgr);
  }
  return 0;
}

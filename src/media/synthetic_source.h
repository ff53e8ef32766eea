// SyntheticSource: deterministic test video. Each scene has its own textured background (noise
// over a gradient, a different palette per scene) with shapes moving across it, so motion and
// scene cuts in the results are real. Used by the client, the demo, the benchmark and tests.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/image.h"

namespace framepipe {

struct SyntheticOptions {
  int width = 1280;
  int height = 720;
  int scene_length = 90;  // frames per scene: a scene cut every scene_length frames
  uint32_t seed = 1;
};

class SyntheticSource {
 public:
  explicit SyntheticSource(SyntheticOptions options);
  ~SyntheticSource();
  SyntheticSource(const SyntheticSource&) = delete;
  SyntheticSource& operator=(const SyntheticSource&) = delete;

  // Frame `index` as BGR8 (the same index always renders the same pixels).
  Image Render(int64_t index);
  const SyntheticOptions& options() const { return options_; }

 private:
  struct Impl;
  SyntheticOptions options_;
  Impl* impl_;
};

enum class Encoding { kJpeg, kPng, kRaw };

// Encodes a BGR8 or GRAY8 image. kRaw returns the tightly packed pixels.
absl::StatusOr<std::string> EncodeImage(const Image& image, Encoding encoding,
                                        int jpeg_quality = 90);

}  // namespace framepipe

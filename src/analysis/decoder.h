// Frame decoding and validation: JPEG/PNG (OpenCV imgcodecs) and raw GRAY8/BGR8/RGB8.
// Every malformed input becomes InvalidArgument with a message naming what is wrong; image
// dimensions are checked from the header before any pixel is decoded (decompression bombs).
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "common/frame.h"
#include "common/image.h"

namespace framepipe {

struct DecodeLimits {
  uint32_t max_width = 8192;
  uint32_t max_height = 8192;
};

enum class EncodedFormat { kUnknown, kJpeg, kPng };

struct ImageHeader {
  EncodedFormat format = EncodedFormat::kUnknown;
  uint32_t width = 0;
  uint32_t height = 0;
  int channels = 0;  // channels the decoded image will have (1 or 3)
};

// Reads format and dimensions from an encoded image's header without decoding pixels.
absl::Status ParseImageHeader(std::string_view bytes, ImageHeader* header);

// Validates `frame` against `limits` and decodes it. Raw frames are not copied: `out` borrows
// frame.data, which must outlive it.
absl::Status DecodeFrame(const FrameInput& frame, const DecodeLimits& limits, Image* out);

// Bytes a frame will occupy once decoded and analysed (payload + pixels + luma), from its header
// alone; used to charge the frame against the memory budget at admission. Falls back to a
// payload-size multiple when the header cannot be read (the frame then fails in decode anyway).
uint64_t EstimateFrameBytes(const FrameInput& frame, const DecodeLimits& limits);

}  // namespace framepipe

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
  // CPU time one decode may take (the decoding thread's own time, so a loaded machine does not
  // fail honest frames); over it the frame gets INVALID_ARGUMENT. 0 = no limit.
  uint32_t max_decode_ms = 2000;
  int max_jpeg_scans = 100;  // progressive JPEG scans (each a pass over the whole image)
};

// The most an honest JPEG or PNG of width x height with `channels` can weigh: twice its raw
// pixels (a PNG of noise stored uncompressed, a JPEG at quality 100 of noise stay below it) plus
// 1 MiB for metadata (EXIF, ICC profiles). A bigger payload is refused before decoding.
uint64_t MaxEncodedBytes(uint64_t width, uint64_t height, int channels);

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

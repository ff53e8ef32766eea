// The JPEG and PNG decoders behind DecodeFrame, with bounded work: every decode runs against a
// budget of the calling thread's CPU time (decode bombs: a progressive JPEG with thousands of
// scans, a PNG whose compressed stream is far longer than its pixels) and stops at the first
// error, with a message saying what was wrong. Internal to src/analysis.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/clock.h"
#include "common/image.h"

namespace framepipe::codecs {

struct DecodeBudget {
  int64_t cpu_deadline_ns = 0;  // thread CPU time (CLOCK_THREAD_CPUTIME_ID) not to pass; 0 = none
  int64_t cpu_budget_ms = 0;    // the budget it came from, for messages
  // When the CPU clock starts being read: a thread cannot use more CPU time than passes, so
  // until its budget has passed (on the steady clock) it cannot have spent it. Reading a thread's
  // CPU clock is a system call (~0.6 us here); libjpeg asks after every few rows, which cost ~4%
  // of the server's CPU on 720p JPEG before this check came first.
  TimePoint check_from{};
  int max_jpeg_scans = 0;  // 0 = no limit

  // A budget of `ms` milliseconds of the calling thread's CPU time from now (0: none).
  static DecodeBudget CpuMillis(int64_t ms);
  // Whether the calling thread has used up the CPU time (the thread that started the budget).
  bool Spent() const;
};

// Thread CPU time in nanoseconds.
int64_t ThreadCpuNanos();

// JPEG through libjpeg-turbo's libjpeg API: straight into an Image (8-bit BGR or gray), with the
// same settings as TurboJPEG's tjDecompress2 (accurate DCT, fancy upsampling, warnings are
// errors), so it yields exactly OpenCV's pixels. Unimplemented for CMYK/YCCK.
absl::Status DecodeJpeg(const std::string& bytes, const DecodeBudget& budget, Image* out);

// PNG through libpng, row by row with the transforms OpenCV's imdecode(IMREAD_ANYCOLOR) applies
// (16 -> 8 bits, palette -> BGR, alpha stripped): identical pixels. Reads only what the image
// needs: data after the last row is never inflated.
absl::Status DecodePng(const std::string& bytes, const DecodeBudget& budget, Image* out);

}  // namespace framepipe::codecs

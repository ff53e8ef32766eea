// libFuzzer target over the frame decoding and validation path: arbitrary bytes as an encoded
// payload, as a raw frame with arbitrary width/height/format, and as a serialized Frame message
// (tags included) through the service's conversion. No crash, no hang, no allocation over the
// limits (run with -malloc_limit_mb; decoding is capped at 1024x1024 here).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "analysis/cpu/cpu_analyzer.h"
#include "analysis/decoder.h"
#include "enrich/enricher.h"
#include "google/protobuf/stubs/logging.h"
#include "server/proto_convert.h"

namespace {

constexpr framepipe::DecodeLimits kLimits{1024, 1024};

void Exercise(const framepipe::FrameInput& frame) {
  (void)framepipe::EstimateFrameBytes(frame, kLimits);
  framepipe::Image img;
  if (!frame.rejection.ok()) return;
  if (!framepipe::DecodeFrame(frame, kLimits, &img).ok()) return;
  // Decoded frames go on through analysis and enrichment (small ones: keep the fuzzer fast).
  if (static_cast<int64_t>(img.width()) * img.height() > 256 * 256) return;
  framepipe::CpuAnalyzer analyzer(framepipe::CpuAnalyzerOptions{false, 0});
  framepipe::Analysis a;
  framepipe::Image luma;
  if (!analyzer.Analyze(img, &a, &luma).ok()) __builtin_trap();
  framepipe::Enrichment e;
  if (!framepipe::Enrich(img, luma, a, framepipe::EnrichConfig{}, &e).ok()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 in tags is expected input here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0] % 3;
  ++data;
  --size;
  framepipe::FrameInput f;
  f.seq = 1;
  if (mode == 0) {  // encoded payload
    f.kind = framepipe::PayloadKind::kEncoded;
    f.data.assign(reinterpret_cast<const char*>(data), size);
    Exercise(f);
  } else if (mode == 1) {  // raw frame: width(2) height(2) format(1) then pixels
    if (size < 5) return 0;
    f.kind = framepipe::PayloadKind::kRaw;
    f.raw_width = static_cast<uint32_t>(data[0] | data[1] << 8) * (data[4] & 0x80 ? 97 : 1);
    f.raw_height = static_cast<uint32_t>(data[2] | data[3] << 8);
    f.raw_format_code = data[4] & 0x7F;
    f.data.assign(reinterpret_cast<const char*>(data + 5), size - 5);
    Exercise(f);
  } else {  // a Frame message off the wire
    framepipe::v1::Frame msg;
    if (!msg.ParseFromArray(data, static_cast<int>(size))) return 0;
    Exercise(framepipe::FromProto(&msg));
  }
  return 0;
}

#include "analysis/decoder.h"

#include <memory>

#include "analysis/codecs.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "opencv2/core.hpp"
#include "opencv2/imgcodecs.hpp"

namespace framepipe {
namespace {

uint32_t ReadBe32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint32_t ReadBe16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }

bool IsJpegSof(unsigned char m) {
  return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
}

std::string FirstBytesHex(std::string_view b) {
  std::string out;
  for (size_t i = 0; i < b.size() && i < 8; ++i) {
    absl::StrAppend(&out, i ? " " : "", absl::StrFormat("%02x", static_cast<unsigned char>(b[i])));
  }
  return out;
}

absl::Status ParsePng(std::string_view b, ImageHeader* h) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data());
  if (b.size() < 33) {
    return absl::InvalidArgumentError(
        absl::StrCat("truncated PNG: ", b.size(), " bytes, too short for a PNG header"));
  }
  if (ReadBe32(p + 8) != 13 || std::string_view(b.data() + 12, 4) != "IHDR") {
    return absl::InvalidArgumentError("corrupt PNG: first chunk is not a 13-byte IHDR");
  }
  h->format = EncodedFormat::kPng;
  h->width = ReadBe32(p + 16);
  h->height = ReadBe32(p + 20);
  const unsigned color_type = p[25];
  // 0 gray, 4 gray+alpha decode to 1 channel; palette, RGB, RGBA to 3.
  h->channels = (color_type == 0 || color_type == 4) ? 1 : 3;
  // A complete PNG ends with the IEND chunk: 00 00 00 00 'IEND' ae 42 60 82.
  if (b.size() < 12 || std::string_view(b.data() + b.size() - 8, 4) != "IEND") {
    return absl::InvalidArgumentError("truncated PNG: data does not end with an IEND chunk");
  }
  return absl::OkStatus();
}

absl::Status ParseJpeg(std::string_view b, ImageHeader* h) {
  const auto* p = reinterpret_cast<const unsigned char*>(b.data());
  const size_t n = b.size();
  size_t i = 2;
  bool found = false;
  while (i + 1 < n) {
    if (p[i] != 0xFF) {
      return absl::InvalidArgumentError(
          absl::StrCat("corrupt JPEG: expected a marker at byte ", i, " of the header"));
    }
    while (i < n && p[i] == 0xFF) ++i;  // fill bytes
    if (i >= n) break;
    const unsigned char m = p[i++];
    if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // no length
    if (m == 0xD9 || m == 0xDA) break;  // EOI or start of scan before any frame header
    if (i + 2 > n) break;
    const uint32_t len = ReadBe16(p + i);
    if (len < 2) return absl::InvalidArgumentError("corrupt JPEG: marker segment length < 2");
    if (IsJpegSof(m)) {
      if (i + 8 > n || len < 8) break;
      h->format = EncodedFormat::kJpeg;
      h->height = ReadBe16(p + i + 3);
      h->width = ReadBe16(p + i + 5);
      h->channels = p[i + 7] == 1 ? 1 : 3;
      found = true;
      break;
    }
    i += len;
  }
  if (!found) {
    return absl::InvalidArgumentError("truncated or corrupt JPEG: no frame header (SOF) found");
  }
  if (h->height == 0) {
    return absl::InvalidArgumentError(
        "unsupported JPEG: height 0 in the frame header (height set by a DNL marker)");
  }
  // A complete JPEG ends with EOI (ff d9), possibly followed by zero padding.
  size_t end = n;
  while (end > 0 && n - end < 4096 && p[end - 1] == 0x00) --end;
  if (end < 4 || p[end - 2] != 0xFF || p[end - 1] != 0xD9) {
    return absl::InvalidArgumentError("truncated JPEG: data does not end with an EOI marker");
  }
  return absl::OkStatus();
}

absl::Status CheckDimensions(uint32_t w, uint32_t h, const DecodeLimits& limits, const char* what) {
  if (w == 0 || h == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has zero size ", w, "x", h));
  }
  if (w > limits.max_width || h > limits.max_height) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", w, "x", h,
                                                   ", over the server's maximum of ",
                                                   limits.max_width, "x", limits.max_height));
  }
  return absl::OkStatus();
}

absl::Status DecodeRaw(const FrameInput& frame, const DecodeLimits& limits, Image* out) {
  PixelFormat fmt;
  switch (frame.raw_format_code) {
    case 1:
      fmt = PixelFormat::kGray8;
      break;
    case 2:
      fmt = PixelFormat::kBgr8;
      break;
    case 3:
      fmt = PixelFormat::kRgb8;
      break;
    case 0:
      return absl::InvalidArgumentError(
          "raw frame has no pixel format (PIXEL_FORMAT_UNSPECIFIED); use GRAY8, BGR8 or RGB8");
    default:
      return absl::InvalidArgumentError(absl::StrCat("raw frame has unknown pixel format value ",
                                                     frame.raw_format_code,
                                                     " (expected 1=GRAY8, 2=BGR8, 3=RGB8)"));
  }
  FP_RETURN_IF_ERROR(CheckDimensions(frame.raw_width, frame.raw_height, limits, "raw frame"));
  const uint64_t expected =
      uint64_t{frame.raw_width} * frame.raw_height * static_cast<uint64_t>(Channels(fmt));
  if (frame.data.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw ", PixelFormatName(fmt), " frame of ", frame.raw_width, "x",
                     frame.raw_height, " needs ", expected, " bytes, got ", frame.data.size()));
  }
  *out = Image::Borrow(reinterpret_cast<const uint8_t*>(frame.data.data()),
                       static_cast<int>(frame.raw_width), static_cast<int>(frame.raw_height),
                       static_cast<size_t>(frame.raw_width) * Channels(fmt), fmt, nullptr);
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseImageHeader(std::string_view b, ImageHeader* h) {
  *h = ImageHeader{};
  const auto* p = reinterpret_cast<const unsigned char*>(b.data());
  if (b.size() >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return ParseJpeg(b, h);
  if (b.size() >= 8 && std::string_view(b.data(), 8) == "\x89PNG\r\n\x1a\n") return ParsePng(b, h);
  if (b.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("encoded payload of ", b.size(), " bytes is too short to be JPEG or PNG"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "encoded payload is neither JPEG nor PNG (first bytes: ", FirstBytesHex(b), ")"));
}

absl::Status DecodeFrame(const FrameInput& frame, const DecodeLimits& limits, Image* out) {
  switch (frame.kind) {
    case PayloadKind::kRaw:
      return DecodeRaw(frame, limits, out);
    case PayloadKind::kEncoded:
      break;
    case PayloadKind::kPicture:
      if (!frame.picture) return absl::InternalError("video picture missing");
      return frame.picture->ToBgr(out);
    case PayloadKind::kVideoPacket:
      return absl::InvalidArgumentError(
          "frame carries a video_packet but the stream is not a video stream (set "
          "StreamConfig.video, or send encoded or raw images)");
    default:
      return absl::InvalidArgumentError("frame has no payload (set encoded or raw)");
  }
  if (frame.data.empty()) return absl::InvalidArgumentError("encoded payload is empty");
  ImageHeader h;
  FP_RETURN_IF_ERROR(ParseImageHeader(frame.data, &h));
  const char* name = h.format == EncodedFormat::kJpeg ? "JPEG" : "PNG";
  FP_RETURN_IF_ERROR(CheckDimensions(h.width, h.height, limits, name));
  const uint64_t most = MaxEncodedBytes(h.width, h.height, h.channels);
  if (frame.data.size() > most) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " payload of ", frame.data.size(), " bytes is more than ", h.width, "x",
                     h.height, " pixels can need (at most ", most, "): not decoded"));
  }
  codecs::DecodeBudget budget = codecs::DecodeBudget::CpuMillis(limits.max_decode_ms);
  budget.max_jpeg_scans = limits.max_jpeg_scans;
  absl::Status st = h.format == EncodedFormat::kJpeg ? codecs::DecodeJpeg(frame.data, budget, out)
                                                     : codecs::DecodePng(frame.data, budget, out);
  if (st.code() != absl::StatusCode::kUnimplemented) {
    if (st.ok() && (static_cast<uint32_t>(out->width()) != h.width ||
                    static_cast<uint32_t>(out->height()) != h.height)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " header says ", h.width, "x", h.height,
                                                     " but the data decoded to ", out->width(), "x",
                                                     out->height()));
    }
    return st;
  }
  // CMYK/YCCK JPEG: OpenCV converts those (bounded by the size checks above).
  cv::Mat buf(1, static_cast<int>(frame.data.size()), CV_8UC1,
              const_cast<char*>(frame.data.data()));
  auto mat = std::make_shared<cv::Mat>();
  try {
    cv::imdecode(buf, cv::IMREAD_ANYCOLOR, mat.get());
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt ", name, " data: ", e.what()));
  }
  if (mat->empty()) return absl::InvalidArgumentError(absl::StrCat("corrupt ", name, " data"));
  if (mat->depth() != CV_8U || (mat->channels() != 1 && mat->channels() != 3) ||
      static_cast<uint32_t>(mat->cols) != h.width || static_cast<uint32_t>(mat->rows) != h.height) {
    return absl::InvalidArgumentError(absl::StrCat(name, " decoded to an unexpected image"));
  }
  const PixelFormat fmt = mat->channels() == 1 ? PixelFormat::kGray8 : PixelFormat::kBgr8;
  const uint8_t* data = mat->data;
  const size_t stride = mat->step[0];
  const int cols = mat->cols, rows = mat->rows;
  *out = Image::Borrow(data, cols, rows, stride, fmt, std::move(mat));
  return absl::OkStatus();
}

uint64_t MaxEncodedBytes(uint64_t width, uint64_t height, int channels) {
  return 2 * width * height * static_cast<uint64_t>(std::max(channels, 1)) + (1u << 20);
}

uint64_t EstimateFrameBytes(const FrameInput& frame, const DecodeLimits& limits) {
  uint64_t w = 0, h = 0;
  int channels = 3;
  if (frame.kind == PayloadKind::kPicture && frame.picture) {
    const uint64_t px = static_cast<uint64_t>(frame.picture->width()) * frame.picture->height();
    return frame.picture->bytes() + px * 4 + 16384;  // + BGR copy + luma
  }
  if (frame.kind == PayloadKind::kRaw) {
    w = frame.raw_width;
    h = frame.raw_height;
    channels = 0;  // raw pixels are the payload itself (decoded without a copy)
  } else {
    ImageHeader hdr;
    if (ParseImageHeader(frame.data, &hdr).ok()) {
      w = hdr.width;
      h = hdr.height;
      channels = hdr.channels;
    }
  }
  // A frame over the limits fails in decode without allocating pixels.
  const uint64_t pixels = (w <= limits.max_width && h <= limits.max_height) ? w * h : 0;
  // Payload + decoded pixels + luma plane + a fixed allowance for the job and result.
  return frame.data.size() + pixels * static_cast<uint64_t>(channels + 1) + 16384;
}

}  // namespace framepipe

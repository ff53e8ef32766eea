// Decoding and validation: every malformed frame kind gets InvalidArgument with a specific
// message; good frames decode to the right pixels; raw frames are not copied.
#include "analysis/decoder.h"

#include <gtest/gtest.h>

#include <vector>

#include "image_util.h"
#include "media/synthetic_source.h"
#include "opencv2/imgcodecs.hpp"

namespace framepipe {
namespace {

using testing::AsMat;
using testing::BlobImage;
using testing::MakeImage;

std::string Encode(const Image& img, Encoding e) { return EncodeImage(img, e).value(); }

FrameInput Encoded(std::string bytes) {
  FrameInput f;
  f.seq = 7;
  f.kind = PayloadKind::kEncoded;
  f.data = std::move(bytes);
  return f;
}

FrameInput Raw(uint32_t w, uint32_t h, int fmt, size_t bytes) {
  FrameInput f;
  f.seq = 7;
  f.kind = PayloadKind::kRaw;
  f.raw_width = w;
  f.raw_height = h;
  f.raw_format_code = fmt;
  f.data.assign(bytes, '\x40');
  return f;
}

// A PNG whose header declares 60000x60000 pixels: the IHDR and an IEND, nothing to decode.
std::string PngBomb() {
  std::string s("\x89PNG\r\n\x1a\n", 8);
  auto be32 = [&](uint32_t v) {
    for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  };
  be32(13);
  s += "IHDR";
  be32(60000);
  be32(60000);
  s += std::string("\x08\x02\x00\x00\x00", 5);
  be32(0);  // CRC (not checked before the size check)
  be32(0);
  s += "IEND";
  be32(0xAE426082);
  return s;
}

struct BadCase {
  const char* name;
  FrameInput frame;
  const char* message;
};

TEST(DecoderTest, RejectsEveryMalformedKindWithSpecificMessage) {
  Image img = BlobImage(160, 120, 3);
  std::string jpeg = Encode(img, Encoding::kJpeg);
  std::string png = Encode(img, Encoding::kPng);
  std::string jpeg_no_eoi = jpeg.substr(0, jpeg.size() - 2);
  std::string jpeg_half = jpeg.substr(0, jpeg.size() / 2);
  std::string png_half = png.substr(0, png.size() / 2);
  std::string jpeg_header_only = jpeg.substr(0, 20);
  std::string big_jpeg = Encode(BlobImage(300, 200, 4), Encoding::kJpeg);
  std::string corrupt_jpeg = jpeg;
  for (size_t i = jpeg.size() / 2; i < jpeg.size() - 2; ++i) corrupt_jpeg[i] = '\xFF';
  FrameInput none;
  none.kind = PayloadKind::kNone;

  std::vector<BadCase> cases = {
      {"no payload", none, "no payload"},
      {"empty encoded", Encoded(""), "empty"},
      {"short garbage", Encoded("abc"), "too short to be JPEG or PNG"},
      {"garbage", Encoded("this is not an image at all"), "neither JPEG nor PNG"},
      {"jpeg without EOI", Encoded(jpeg_no_eoi), "does not end with an EOI"},
      {"jpeg cut in half", Encoded(jpeg_half), "EOI"},
      {"jpeg header only", Encoded(jpeg_header_only), "no frame header"},
      {"png cut in half", Encoded(png_half), "IEND"},
      {"png bomb", Encoded(PngBomb()), "60000x60000, over the server's maximum of 8192x8192"},
      {"jpeg over limit", Encoded(big_jpeg), "300x200, over the server's maximum of 256x256"},
      {"corrupt jpeg data", Encoded(corrupt_jpeg), "corrupt JPEG"},
      {"raw unspecified", Raw(4, 4, 0, 48), "PIXEL_FORMAT_UNSPECIFIED"},
      {"raw unknown format", Raw(4, 4, 9, 48), "unknown pixel format value 9"},
      {"raw short", Raw(4, 4, 2, 47), "needs 48 bytes, got 47"},
      {"raw long", Raw(4, 4, 1, 17), "needs 16 bytes, got 17"},
      {"raw zero width", Raw(0, 4, 1, 0), "zero size 0x4"},
      {"raw over limit", Raw(9000, 2, 1, 18000), "9000x2, over the server's maximum"},
  };
  for (auto& c : cases) {
    DecodeLimits limits;
    if (std::string(c.name) == "jpeg over limit") limits = {256, 256};
    Image out;
    absl::Status st = DecodeFrame(c.frame, limits, &out);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << st;
    EXPECT_NE(st.message().find(c.message), std::string::npos)
        << c.name << ": got \"" << st.message() << "\"";
  }
}

TEST(DecoderTest, DecodesJpegPngAndRaw) {
  Image img = BlobImage(161, 97, 5);
  for (Encoding e : {Encoding::kPng, Encoding::kJpeg}) {
    Image out;
    ASSERT_TRUE(DecodeFrame(Encoded(Encode(img, e)), {}, &out).ok());
    EXPECT_EQ(out.width(), 161);
    EXPECT_EQ(out.height(), 97);
    EXPECT_EQ(out.format(), PixelFormat::kBgr8);
    if (e == Encoding::kPng) {
      EXPECT_EQ(cv::norm(AsMat(out), AsMat(img), cv::NORM_INF), 0.0);
    }
  }
  // JPEG through libjpeg-turbo decodes to exactly the pixels OpenCV's imdecode gives.
  for (int q : {50, 90, 100}) {
    std::string jpeg = EncodeImage(img, Encoding::kJpeg, q).value();
    Image mine;
    ASSERT_TRUE(DecodeFrame(Encoded(jpeg), {}, &mine).ok());
    cv::Mat theirs = cv::imdecode(std::vector<uint8_t>(jpeg.begin(), jpeg.end()), cv::IMREAD_COLOR);
    EXPECT_EQ(cv::norm(AsMat(mine), theirs, cv::NORM_INF), 0.0) << "quality " << q;
  }
  // Gray PNG stays one channel.
  Image gray = MakeImage(33, 17, PixelFormat::kGray8,
                         [](int x, int y, uint8_t* p) { *p = static_cast<uint8_t>(x * 7 + y); });
  Image out;
  ASSERT_TRUE(DecodeFrame(Encoded(Encode(gray, Encoding::kPng)), {}, &out).ok());
  EXPECT_EQ(out.format(), PixelFormat::kGray8);
  EXPECT_EQ(cv::norm(AsMat(out), AsMat(gray), cv::NORM_INF), 0.0);
  // Raw frames are borrowed, not copied.
  FrameInput raw = Raw(4, 3, 3, 36);
  ASSERT_TRUE(DecodeFrame(raw, {}, &out).ok());
  EXPECT_EQ(out.format(), PixelFormat::kRgb8);
  EXPECT_EQ(out.data(), reinterpret_cast<const uint8_t*>(raw.data.data()));
}

// --max-decode-ms: a decode that needs more of its thread's CPU time than the budget stops with a
// message saying so (the budget's steady-clock pre-check must never let one through), and the same
// frames decode within the default budget.
TEST(DecoderTest, ADecodeOverItsCpuBudgetIsRefused) {
  const Image noise = testing::RandomImage(2048, 2048, PixelFormat::kBgr8, 11);
  for (Encoding e : {Encoding::kJpeg, Encoding::kPng}) {
    const FrameInput frame = Encoded(EncodeImage(noise, e, 100).value());
    DecodeLimits tight;
    tight.max_decode_ms = 1;
    Image out;
    const absl::Status st = DecodeFrame(frame, tight, &out);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find("decoding took over 1 ms of CPU (--max-decode-ms)"),
              std::string::npos)
        << st;
    ASSERT_TRUE(DecodeFrame(frame, {}, &out).ok());
    EXPECT_EQ(out.width(), 2048);
    DecodeLimits none;
    none.max_decode_ms = 0;
    ASSERT_TRUE(DecodeFrame(frame, none, &out).ok());
  }
}

TEST(DecoderTest, HeaderParsingAndEstimates) {
  Image img = BlobImage(200, 100, 6);
  ImageHeader h;
  ASSERT_TRUE(ParseImageHeader(Encode(img, Encoding::kJpeg), &h).ok());
  EXPECT_EQ(h.format, EncodedFormat::kJpeg);
  EXPECT_EQ(h.width, 200u);
  EXPECT_EQ(h.height, 100u);
  EXPECT_EQ(h.channels, 3);
  ASSERT_TRUE(ParseImageHeader(PngBomb(), &h).ok());
  EXPECT_EQ(h.width, 60000u);
  // The bomb is charged only its payload: it will be rejected before decoding.
  FrameInput bomb = Encoded(PngBomb());
  EXPECT_LT(EstimateFrameBytes(bomb, {}), 100000u);
  FrameInput jpeg = Encoded(Encode(img, Encoding::kJpeg));
  EXPECT_GE(EstimateFrameBytes(jpeg, {}), 200u * 100u * 4u);
}

}  // namespace
}  // namespace framepipe

#include "analysis/codecs.h"

// clang-format off: jpeglib.h needs stdio first.
#include <jpeglib.h>
#include <cstdio>
// clang-format on
#include <png.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <csetjmp>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/clock.h"

namespace framepipe::codecs {

int64_t ThreadCpuNanos() { return static_cast<int64_t>(CpuClockNanos(CLOCK_THREAD_CPUTIME_ID)); }

DecodeBudget DecodeBudget::CpuMillis(int64_t ms) {
  DecodeBudget b;
  if (ms <= 0) return b;
  b.cpu_budget_ms = ms;
  b.cpu_deadline_ns = ThreadCpuNanos() + ms * 1000000;
  b.check_from = Now() + std::chrono::milliseconds(ms);
  return b;
}

bool DecodeBudget::Spent() const {
  if (cpu_deadline_ns <= 0 || Now() < check_from) return false;
  return ThreadCpuNanos() > cpu_deadline_ns;
}

namespace {

std::string OverBudget(const DecodeBudget& b) {
  return absl::StrCat("decoding took over ", b.cpu_budget_ms,
                      " ms of CPU (--max-decode-ms): not decoded");
}

// ---- JPEG

struct JpegErrors {
  jpeg_error_mgr pub;  // first: libjpeg hands us a pointer to it
  jmp_buf jump;
  std::string message;
};

[[noreturn]] void JpegFail(j_common_ptr cinfo, std::string message) {
  auto* e = reinterpret_cast<JpegErrors*>(cinfo->err);
  e->message = std::move(message);
  longjmp(e->jump, 1);
}

[[noreturn]] void JpegErrorExit(j_common_ptr cinfo) {
  char buf[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buf);
  JpegFail(cinfo, absl::StrCat("corrupt JPEG data: ", buf));
}

// Warnings (corrupt entropy data libjpeg would paper over with grey) fail the frame, as
// TurboJPEG's TJFLAG_STOPONWARNING does; trace messages (level > 0) are ignored.
void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  char buf[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buf);
  JpegFail(cinfo, absl::StrCat("corrupt JPEG data: ", buf));
}

struct JpegProgress {
  jpeg_progress_mgr pub;  // first
  const DecodeBudget* budget;
};

// Called by libjpeg between pieces of work: the place to stop a decode that costs too much.
void JpegOnProgress(j_common_ptr cinfo) {
  auto* p = reinterpret_cast<JpegProgress*>(cinfo->progress);
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (p->budget->max_jpeg_scans > 0 && d->input_scan_number > p->budget->max_jpeg_scans) {
    JpegFail(cinfo, absl::StrCat("JPEG has over ", p->budget->max_jpeg_scans,
                                 " scans (progressive scans are each a pass over the image): "
                                 "not decoded"));
  }
  if (p->budget->Spent()) {
    JpegFail(cinfo, OverBudget(*p->budget));
  }
}

// The decode proper, in a function of its own: setjmp/longjmp must not cross C++ objects with
// destructors, so none live in this frame past the setjmp.
absl::Status DecodeJpegInto(jpeg_decompress_struct* cinfo, JpegErrors* errors, Image* out) {
  if (setjmp(errors->jump)) return absl::InvalidArgumentError(errors->message);
  jpeg_read_header(cinfo, TRUE);
  if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
    return absl::UnimplementedError("CMYK JPEG");
  }
  const bool gray = cinfo->jpeg_color_space == JCS_GRAYSCALE;
  cinfo->out_color_space = gray ? JCS_GRAYSCALE : JCS_EXT_BGR;
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  jpeg_start_decompress(cinfo);
  *out =
      Image::Allocate(static_cast<int>(cinfo->output_width), static_cast<int>(cinfo->output_height),
                      gray ? PixelFormat::kGray8 : PixelFormat::kBgr8);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out->mutable_row(static_cast<int>(cinfo->output_scanline));
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  // The rest of the file after the image is not read (jpeg_finish_decompress would).
  return absl::OkStatus();
}

// ---- PNG
//
// libpng's progressive reader: the file is fed in small pieces and decoding stops at the image's
// last row. (The sequential reader inflates whatever compressed data follows the last row to
// check it - a few KiB of deflate can hold gigabytes of it.)

constexpr size_t kPngFeed = 4096;  // what is inflated at most after the last row

struct PngDecode {
  const DecodeBudget* budget;
  Image* out;
  int passes = 1;
  int height = 0;
  bool done = false;
  std::string error;
};

[[noreturn]] void PngFail(png_structp png, std::string message) {
  static_cast<PngDecode*>(png_get_progressive_ptr(png))->error = std::move(message);
  png_longjmp(png, 1);
}

void PngError(png_structp png, png_const_charp msg) {
  PngFail(png, absl::StrCat("corrupt PNG data: ", msg));
}
void PngWarning(png_structp, png_const_charp) {}  // OpenCV ignores libpng's warnings too

// The header is in: the transforms OpenCV's PNG decoder applies for IMREAD_ANYCOLOR (so the
// pixels are the same) and the image to decode into.
void PngOnInfo(png_structp png, png_infop info) {
  auto* d = static_cast<PngDecode*>(png_get_progressive_ptr(png));
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  if (depth > 8) png_set_strip_16(png);
  png_set_strip_alpha(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  const bool rgb = (color & PNG_COLOR_MASK_COLOR) != 0;
  if (!rgb && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (rgb) png_set_bgr(png);
  d->passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int w = static_cast<int>(png_get_image_width(png, info));
  d->height = static_cast<int>(png_get_image_height(png, info));
  *d->out = Image::Allocate(w, d->height, rgb ? PixelFormat::kBgr8 : PixelFormat::kGray8);
  if (png_get_rowbytes(png, info) != static_cast<size_t>(w) * (rgb ? 3 : 1)) {
    PngFail(png, "PNG decodes to an unexpected row size");
  }
}

void PngOnRow(png_structp png, png_bytep row, png_uint_32 y, int pass) {
  auto* d = static_cast<PngDecode*>(png_get_progressive_ptr(png));
  if (row) png_progressive_combine_row(png, d->out->mutable_row(static_cast<int>(y)), row);
  if (pass == d->passes - 1 && static_cast<int>(y) == d->height - 1) d->done = true;
}

absl::Status DecodePngInto(png_structp png, png_infop info, const std::string& bytes,
                           PngDecode* d) {
  if (setjmp(png_jmpbuf(png))) return absl::InvalidArgumentError(d->error);
  png_set_chunk_malloc_max(png, 8u << 20);  // ancillary chunks (text, ICC) over 8 MiB: error
  png_set_progressive_read_fn(png, d, PngOnInfo, PngOnRow, nullptr);
  auto* p = reinterpret_cast<png_bytep>(const_cast<char*>(bytes.data()));
  for (size_t pos = 0; pos < bytes.size() && !d->done; pos += kPngFeed) {
    if (d->budget->Spent()) {
      return absl::InvalidArgumentError(OverBudget(*d->budget));
    }
    png_process_data(png, info, p + pos, std::min(kPngFeed, bytes.size() - pos));
  }
  if (!d->done) return absl::InvalidArgumentError("truncated PNG: data ends before the last row");
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeJpeg(const std::string& bytes, const DecodeBudget& budget, Image* out) {
  jpeg_decompress_struct cinfo;
  JpegErrors errors;
  cinfo.err = jpeg_std_error(&errors.pub);
  errors.pub.error_exit = JpegErrorExit;
  errors.pub.emit_message = JpegEmitMessage;
  jpeg_create_decompress(&cinfo);
  JpegProgress progress;
  progress.pub.progress_monitor = JpegOnProgress;
  progress.budget = &budget;
  cinfo.progress = &progress.pub;
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  absl::Status st = DecodeJpegInto(&cinfo, &errors, out);
  jpeg_destroy_decompress(&cinfo);
  return st;
}

absl::Status DecodePng(const std::string& bytes, const DecodeBudget& budget, Image* out) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, PngError, PngWarning);
  if (!png) return absl::InternalError("png_create_read_struct failed");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return absl::InternalError("png_create_info_struct failed");
  }
  PngDecode d;
  d.budget = &budget;
  d.out = out;
  absl::Status st = DecodePngInto(png, info, bytes, &d);
  png_destroy_read_struct(&png, &info, nullptr);
  return st;
}

}  // namespace framepipe::codecs

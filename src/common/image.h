// Image: a read-only 8-bit image that either owns its pixels or borrows them from an owner it
// keeps alive (an encoded frame's payload, a decoder's buffer). Copying an Image shares pixels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace framepipe {

enum class PixelFormat : uint8_t { kUnspecified = 0, kGray8 = 1, kBgr8 = 2, kRgb8 = 3 };

inline int Channels(PixelFormat f) {
  switch (f) {
    case PixelFormat::kGray8:
      return 1;
    case PixelFormat::kBgr8:
    case PixelFormat::kRgb8:
      return 3;
    default:
      return 0;
  }
}

const char* PixelFormatName(PixelFormat f);

class Image {
 public:
  Image() = default;

  // Allocates width*height*channels bytes (uninitialised), tightly packed.
  static Image Allocate(int width, int height, PixelFormat format);
  // Borrows `data`; `owner` (may be null) is kept alive as long as any copy of the Image.
  static Image Borrow(const uint8_t* data, int width, int height, size_t stride, PixelFormat format,
                      std::shared_ptr<const void> owner);

  bool empty() const { return data_ == nullptr || width_ <= 0 || height_ <= 0; }
  int width() const { return width_; }
  int height() const { return height_; }
  size_t stride() const { return stride_; }
  PixelFormat format() const { return format_; }
  int channels() const { return Channels(format_); }
  const uint8_t* data() const { return data_; }
  const uint8_t* row(int y) const { return data_ + static_cast<size_t>(y) * stride_; }
  // Writable pixels; only for an Image made by Allocate and not yet shared.
  uint8_t* mutable_data() { return mutable_data_; }
  uint8_t* mutable_row(int y) { return mutable_data_ + static_cast<size_t>(y) * stride_; }
  size_t byte_size() const { return stride_ * static_cast<size_t>(height_); }

 private:
  std::shared_ptr<const void> owner_;
  const uint8_t* data_ = nullptr;
  uint8_t* mutable_data_ = nullptr;
  int width_ = 0;
  int height_ = 0;
  size_t stride_ = 0;
  PixelFormat format_ = PixelFormat::kUnspecified;
};

}  // namespace framepipe

#include "common/image.h"

namespace framepipe {

const char* PixelFormatName(PixelFormat f) {
  switch (f) {
    case PixelFormat::kGray8:
      return "GRAY8";
    case PixelFormat::kBgr8:
      return "BGR8";
    case PixelFormat::kRgb8:
      return "RGB8";
    default:
      return "UNSPECIFIED";
  }
}

Image Image::Allocate(int width, int height, PixelFormat format) {
  Image img;
  img.width_ = width;
  img.height_ = height;
  img.format_ = format;
  img.stride_ = static_cast<size_t>(width) * Channels(format);
  size_t bytes = img.stride_ * static_cast<size_t>(height);
  std::shared_ptr<uint8_t[]> buf(new uint8_t[bytes > 0 ? bytes : 1]);
  img.mutable_data_ = buf.get();
  img.data_ = buf.get();
  img.owner_ = std::shared_ptr<const void>(buf, buf.get());
  return img;
}

Image Image::Borrow(const uint8_t* data, int width, int height, size_t stride, PixelFormat format,
                    std::shared_ptr<const void> owner) {
  Image img;
  img.data_ = data;
  img.width_ = width;
  img.height_ = height;
  img.stride_ = stride;
  img.format_ = format;
  img.owner_ = std::move(owner);
  return img;
}

}  // namespace framepipe

// What gRPC makes of the bytes the HTTP/2 guard passes on, whatever their DATA framing (the
// guard re-frames DATA: its own frames for runs of message body and for length prefixes,
// padding dropped): the tests and the guard fuzzer compare meanings, not bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace framepipe::testing {

struct Http2Meaning {
  bool preface = false;                  // the bytes start with the client preface
  std::vector<std::string> frames;       // every non-DATA frame, whole, in order
  std::map<uint32_t, std::string> data;  // each stream's DATA payloads joined (padding removed),
                                         // "|END" where END_STREAM came
  size_t tail = 0;                       // bytes of an incomplete frame at the end
  bool operator==(const Http2Meaning& o) const {
    return preface == o.preface && frames == o.frames && data == o.data && tail == o.tail;
  }
};

inline uint32_t Http2Be(const char* p, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

inline Http2Meaning ParseHttp2(std::string_view b) {
  constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  Http2Meaning m;
  if (b.substr(0, kPreface.size()) == kPreface) {
    m.preface = true;
    b.remove_prefix(kPreface.size());
  }
  while (b.size() >= 9 && b.size() >= 9 + size_t{Http2Be(b.data(), 3)}) {
    const uint32_t len = Http2Be(b.data(), 3);
    const uint8_t type = static_cast<uint8_t>(b[3]), flags = static_cast<uint8_t>(b[4]);
    if (type != 0) {
      m.frames.emplace_back(b.substr(0, 9 + len));
    } else {
      std::string_view payload = b.substr(9, len);
      if ((flags & 0x8) && !payload.empty()) {  // PADDED
        const size_t pad = static_cast<uint8_t>(payload[0]);
        payload = payload.size() > pad ? payload.substr(1, payload.size() - 1 - pad) : "";
      }
      std::string& d = m.data[Http2Be(b.data() + 5, 4) & 0x7fffffffu];
      d.append(payload);
      if (flags & 0x1) d.append("|END");
    }
    b.remove_prefix(9 + len);
  }
  m.tail = b.size();
  return m;
}

// The WINDOW_UPDATE increments in `b` (what the guard sent the client), per stream.
inline std::map<uint32_t, uint64_t> WindowCredits(std::string_view b) {
  std::map<uint32_t, uint64_t> out;
  while (b.size() >= 9 && b.size() >= 9 + size_t{Http2Be(b.data(), 3)}) {
    const uint32_t len = Http2Be(b.data(), 3);
    if (b[3] == 8 && len == 4)
      out[Http2Be(b.data() + 5, 4) & 0x7fffffffu] += Http2Be(b.data() + 9, 4);
    b.remove_prefix(9 + len);
  }
  return out;
}

}  // namespace framepipe::testing

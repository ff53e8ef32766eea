// libFuzzer target over the HTTP/2 guard, the first code to read a hostile peer's bytes: after a
// valid preface and SETTINGS, arbitrary bytes from the client, cut into reads of fuzzer-chosen
// sizes, with the runs of judged message body the guard offers spliced past it at fuzzer-chosen
// points, and gRPC's side answering with its SETTINGS. No crash, no hang, no growth beyond what
// was fed in, and never a splice of more than the guard judged.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "server/http2_guard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  framepipe::Http2Limits limits;
  limits.max_message_bytes = 1 << 20;
  limits.max_tracked_streams = 64;
  framepipe::Http2Guard guard(limits);
  const framepipe::TimePoint now{};
  framepipe::Http2Out s, c;
  const std::string settings(std::string_view("\0\0\0\4\0\0\0\0\0", 9));
  (void)guard.FromServer(settings, now, &s, &c);
  std::string client = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings;
  const uint8_t chunking = data[0], splicing = data[1];
  client.append(reinterpret_cast<const char*>(data + 2), size - 2);
  size_t out_bytes = 0;
  for (size_t pos = 0, step = 0; pos < client.size(); ++step) {
    s.Clear();
    c.Clear();
    const size_t judged = guard.PassThroughBytes();
    if (judged > client.size() - pos && judged > (1u << 24)) __builtin_trap();
    bool ok;
    if (judged > 0 && ((splicing >> (step % 8)) & 1)) {
      const size_t n = std::min(judged, client.size() - pos);
      ok = guard.Spliced(n, now, &s, &c);
      out_bytes += n;
      pos += n;
    } else {
      const size_t n = std::min<size_t>(client.size() - pos, 1 + ((chunking * (step + 1)) % 97));
      ok = guard.FromClient(std::string_view(client).substr(pos, n), now, &s, &c);
      pos += n;
    }
    out_bytes += s.size();
    // What goes to gRPC is what came in plus the guard's own few frames per input frame.
    if (out_bytes > 64 + 3 * pos + 64 * (pos / 9 + 1)) __builtin_trap();
    if (!ok) break;
  }
  return 0;
}

#include "server/http2_guard.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace framepipe {

namespace {

constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum FrameType : uint8_t {
  kData = 0,
  kHeaders = 1,
  kPriority = 2,
  kRstStream = 3,
  kSettings = 4,
  kPushPromise = 5,
  kPing = 6,
  kGoAway = 7,
  kWindowUpdate = 8,
  kContinuation = 9,
};
constexpr uint8_t kEndStream = 0x1;
constexpr uint8_t kEndHeaders = 0x4;
constexpr uint8_t kPadded = 0x8;
constexpr uint8_t kAck = 0x1;            // SETTINGS, PING
constexpr uint8_t kPriorityFlag = 0x20;  // HEADERS

constexpr uint16_t kSettingsInitialWindowSize = 0x4;
// WINDOW_UPDATEs a client may have earned and not yet sent (see Http2Limits).
constexpr double kMaxEarnedWindowUpdates = 65536;

constexpr uint32_t kNoError = 0x0;
constexpr uint32_t kProtocolError = 0x1;
constexpr uint32_t kRefusedStream = 0x7;
constexpr uint32_t kCancel = 0x8;
constexpr uint32_t kEnhanceYourCalm = 0xb;

constexpr size_t kMaxRejectedTracked = 256;

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((uint16_t{p[0]} << 8) | p[1]); }
uint32_t Be24(const uint8_t* p) { return (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2]; }
uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void PutBe32(std::string* out, uint32_t v) {
  out->push_back(static_cast<char>(v >> 24));
  out->push_back(static_cast<char>(v >> 16));
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

void PutBe32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

void AppendFrameHeader(std::string* out, uint32_t length, uint8_t type, uint8_t flags,
                       uint32_t stream) {
  out->push_back(static_cast<char>(length >> 16));
  out->push_back(static_cast<char>(length >> 8));
  out->push_back(static_cast<char>(length));
  out->push_back(static_cast<char>(type));
  out->push_back(static_cast<char>(flags));
  PutBe32(out, stream & 0x7fffffffu);
}

void AppendFrame(std::string* out, uint8_t type, uint8_t flags, uint32_t stream,
                 std::string_view payload) {
  AppendFrameHeader(out, static_cast<uint32_t>(payload.size()), type, flags, stream);
  out->append(payload);
}

void AppendRst(std::string* out, uint32_t stream, uint32_t code) {
  std::string p;
  PutBe32(&p, code);
  AppendFrame(out, kRstStream, 0, stream, p);
}

void AppendWindowUpdate(std::string* out, uint32_t stream, uint64_t increment) {
  while (increment > 0) {
    const uint32_t step = static_cast<uint32_t>(std::min<uint64_t>(increment, 0x7fffffffu));
    std::string p;
    PutBe32(&p, step);
    AppendFrame(out, kWindowUpdate, 0, stream, p);
    increment -= step;
  }
}

void AppendGoAway(std::string* out, uint32_t last_stream, uint32_t code, std::string_view debug) {
  std::string p;
  PutBe32(&p, last_stream & 0x7fffffffu);
  PutBe32(&p, code);
  p.append(debug.substr(0, 1024));
  AppendFrame(out, kGoAway, 0, 0, p);
}

// HPACK (RFC 7541) integer with an N-bit prefix.
void HpackInt(std::string* out, uint8_t first_bits, int prefix_bits, uint32_t v) {
  const uint32_t max = (1u << prefix_bits) - 1;
  if (v < max) {
    out->push_back(static_cast<char>(first_bits | v));
    return;
  }
  out->push_back(static_cast<char>(first_bits | max));
  v -= max;
  while (v >= 128) {
    out->push_back(static_cast<char>((v % 128) + 128));
    v /= 128;
  }
  out->push_back(static_cast<char>(v));
}

// A literal header field without indexing (new name): leaves the peer's dynamic table alone,
// so the guard's frames never disturb the HPACK state gRPC's encoder shares with the client.
void HpackLiteral(std::string* out, std::string_view name, std::string_view value) {
  out->push_back(0x00);
  HpackInt(out, 0x00, 7, static_cast<uint32_t>(name.size()));
  out->append(name);
  HpackInt(out, 0x00, 7, static_cast<uint32_t>(value.size()));
  out->append(value);
}

// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
std::string PercentEncode(std::string_view s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u > 0x7e || c == '%') {
      absl::StrAppend(&out, "%", absl::Hex(u, absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

const char* Http2ViolationLabel(Http2Violation v) {
  static const char* kNames[] = {
      "none",        "bad_preface",   "frame_too_large",  "header_block", "header_frames",
      "reset_flood", "control_flood", "too_many_streams", "protocol",     "window_update_flood"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(Http2Violation::kCount));
  return kNames[static_cast<int>(v)];
}

const char* StreamRejectionLabel(StreamRejection r) {
  switch (r) {
    case StreamRejection::kMessageTooLarge:
      return "message_too_large";
    case StreamRejection::kCompressed:
      return "compressed";
    case StreamRejection::kPeerStreams:
      return "peer_streams";
    case StreamRejection::kTooManyMessages:
      return "too_many_messages";
    case StreamRejection::kCount:
      break;
  }
  return "unknown";
}

bool StreamQuota::TryAcquire() {
  uint32_t n = open_.load(std::memory_order_relaxed);
  do {
    if (n >= max_) return false;
  } while (!open_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  return true;
}

// gRPC's HPACK state, mirrored: the decoder sees every header block the client sends, in order.
struct Http2Guard::Hpack {
  nghttp2_hd_inflater* inflater = nullptr;
  ~Hpack() {
    if (inflater) nghttp2_hd_inflate_del(inflater);
  }
};

Http2Guard::Http2Guard(Http2Limits limits, std::shared_ptr<StreamQuota> quota)
    : limits_(std::move(limits)),
      resets_{limits_.reset_burst, {}},
      control_{limits_.control_frame_burst, {}},
      window_updates_{limits_.window_update_burst, {}},
      quota_(std::move(quota)) {
  if (!limits_.max_messages_by_path.empty()) {
    hpack_ = std::make_unique<Hpack>();
    if (nghttp2_hd_inflate_new(&hpack_->inflater) != 0) throw std::bad_alloc();
  }
}

Http2Guard::~Http2Guard() {
  if (quota_ && !open_.empty()) quota_->Release(static_cast<uint32_t>(open_.size()));
}

void Http2Guard::Unopen(uint32_t id) {
  if (quota_ && open_.erase(id) > 0) quota_->Release(1);
}

uint64_t Http2Guard::TakeRejections(StreamRejection r) {
  return std::exchange(rejections_[static_cast<int>(r)], 0);
}

std::string Http2Guard::RefusalFrames(std::string_view reason) {
  std::string out;
  AppendFrame(&out, kSettings, 0, 0, {});
  AppendGoAway(&out, 0, kEnhanceYourCalm, reason);
  return out;
}

bool Http2Guard::Violation(Http2Violation v, std::string detail, Http2Out* to_client) {
  violation_ = v;
  detail_ = std::move(detail);
  // The GOAWAY can only go between two of gRPC's frames; otherwise the connection just closes.
  if (s_header_have_ == 0 && s_remaining_ == 0 && !s_in_header_block_) {
    const bool protocol = v == Http2Violation::kBadPreface || v == Http2Violation::kProtocol ||
                          v == Http2Violation::kFrameTooLarge;
    std::string frames = std::move(inject_to_client_);
    inject_to_client_.clear();
    AppendGoAway(&frames, last_stream_, protocol ? kProtocolError : kEnhanceYourCalm,
                 absl::StrCat("framepipe: ", detail_));
    to_client->Add(std::move(frames));
  }
  return false;
}

// Bytes of the next unit at the start of `data`, as far as its first bytes tell: 24 for the
// preface; 9 while a frame header is incomplete, and for a DATA frame (its payload streams); 9 +
// length for any other frame (held whole, and bounded by CheckFrameSize).
size_t Http2Guard::UnitSize(std::string_view data) const {
  if (!preface_done_) return kPreface.size();
  if (data.size() < 9) return 9;
  const auto* h = reinterpret_cast<const uint8_t*>(data.data());
  return h[3] == kData ? 9 : 9 + size_t{Be24(h)};
}

bool Http2Guard::ProcessUnit(std::string_view unit, TimePoint now, Http2Out* to_server,
                             Http2Out* to_client) {
  if (!preface_done_) {
    if (unit != kPreface) {
      return Violation(Http2Violation::kBadPreface, "not an HTTP/2 client preface", to_client);
    }
    if (unit_is_copy_) {
      to_server->Pass(kPreface);  // static storage
    } else {
      to_server->Pass(unit);  // as it came (inline: no copy)
    }
    preface_done_ = true;
    return true;
  }
  const auto* h = reinterpret_cast<const uint8_t*>(unit.data());
  return HandleClientFrame(h, now, to_server, to_client);
}

bool Http2Guard::CheckFrameSize(const uint8_t* h, Http2Out* to_client) {
  const uint32_t len = Be24(h);
  const uint8_t type = h[3];
  if (type == kHeaders || type == kContinuation) {
    // A header block over its limit closes before its frame is held, let alone passed on.
    const uint64_t block = uint64_t{len} + (type == kContinuation ? header_bytes_ : 0);
    if (block > limits_.max_header_block_bytes) {
      return Violation(Http2Violation::kHeaderBlockTooLarge,
                       absl::StrCat("header block over ", limits_.max_header_block_bytes,
                                    " bytes on stream ", Be32(h + 5) & 0x7fffffffu),
                       to_client);
    }
  }
  if (type == kData) return true;  // streams through, whatever its length (see Http2Limits)
  const uint32_t max = type == kHeaders || type == kContinuation
                           ? limits_.max_frame_bytes
                           : std::min(limits_.max_frame_bytes, limits_.max_control_frame_bytes);
  if (len <= max) return true;
  return Violation(Http2Violation::kFrameTooLarge,
                   absl::StrCat("frame of ", len, " bytes, over the maximum frame size of ", max),
                   to_client);
}

bool Http2Guard::FromClient(std::string_view bytes, TimePoint now, Http2Out* to_server,
                            Http2Out* to_client) {
  if (violation_ != Http2Violation::kNone) return false;
  size_t pos = 0;
  while (violation_ == Http2Violation::kNone) {
    // A DATA frame's payload streams through, straight from this read.
    if (data_.mode != DataMode::kNone) {
      if (pos == bytes.size()) break;
      const size_t n = std::min<size_t>(data_.remaining, bytes.size() - pos);
      if (!DataPayload(bytes.data() + pos, n, to_server, to_client)) return false;
      pos += n;
      FlushInjected(to_server, to_client);  // at the first boundary, whatever the reads
      continue;
    }
    // A unit carried over from the previous read: only the bytes it lacks are copied.
    if (!in_.empty()) {
      size_t want = UnitSize(in_);
      while (in_.size() < want && pos < bytes.size()) {
        const size_t take = std::min(want - in_.size(), bytes.size() - pos);
        in_.append(bytes.substr(pos, take));
        pos += take;
        if (preface_done_ && in_.size() == 9) {  // the header just completed
          if (!CheckFrameSize(reinterpret_cast<const uint8_t*>(in_.data()), to_client)) {
            return false;
          }
          want = UnitSize(in_);
        }
      }
      if (in_.size() < want) break;  // all of this read is in in_
      unit_is_copy_ = true;
      ahead_ = bytes.substr(pos);
      const bool ok = ProcessUnit(in_, now, to_server, to_client);
      ahead_ = {};
      unit_is_copy_ = false;
      in_.clear();
      if (!ok) return false;
      FlushInjected(to_server, to_client);
      continue;
    }
    if (pos == bytes.size()) break;
    // Whole units straight from this read, without copying them.
    const std::string_view rest = bytes.substr(pos);
    const size_t want = UnitSize(rest);
    if (!preface_done_ && rest.substr(0, std::min(rest.size(), want)) !=
                              kPreface.substr(0, std::min(rest.size(), want))) {
      return Violation(Http2Violation::kBadPreface, "not an HTTP/2 client preface", to_client);
    }
    if (preface_done_ && rest.size() >= 9 &&
        !CheckFrameSize(reinterpret_cast<const uint8_t*>(rest.data()), to_client)) {
      return false;
    }
    if (rest.size() < want) {
      in_.assign(rest);  // an incomplete unit: kept for the next read
      break;
    }
    ahead_ = rest.substr(want);
    const bool ok = ProcessUnit(rest.substr(0, want), now, to_server, to_client);
    ahead_ = {};
    if (!ok) return false;
    pos += want;
    FlushInjected(to_server, to_client);
  }
  return violation_ == Http2Violation::kNone;
}

size_t Http2Guard::PassThroughBytes() const {
  if (violation_ != Http2Violation::kNone) return 0;
  if (data_.mode == DataMode::kForward) return data_.remaining;
  if (data_.mode == DataMode::kScan) return data_.intact ? data_.remaining : data_.segment;
  return 0;
}

bool Http2Guard::Spliced(size_t n, Http2Out* to_server, Http2Out* to_client) {
  if (n == 0 || n > PassThroughBytes()) {
    return Violation(Http2Violation::kProtocol, "internal: spliced bytes the guard had not judged",
                     to_client);
  }
  if (!DataPayload(nullptr, n, to_server, to_client)) return false;
  FlushInjected(to_server, to_client);
  return violation_ == Http2Violation::kNone;
}

bool Http2Guard::HandleClientFrame(const uint8_t* h, TimePoint now, Http2Out* to_server,
                                   Http2Out* to_client) {
  const uint32_t len = Be24(h);
  const uint8_t type = h[3];
  const uint8_t flags = h[4];
  const uint32_t sid = Be32(h + 5) & 0x7fffffffu;
  if (!settings_seen_) {
    if (type != kSettings) {
      return Violation(Http2Violation::kProtocol,
                       "the first frame after the preface must be SETTINGS", to_client);
    }
    settings_seen_ = true;
  }
  if (header_stream_ != 0 && type != kContinuation) {
    return Violation(Http2Violation::kProtocol, "a header block was interrupted", to_client);
  }
  Verdict v = Verdict::kPass;
  switch (type) {
    case kData:
      return BeginData(h, now, to_server, to_client);
    case kHeaders:
    case kContinuation:
      v = OnHeaderFrame(type, sid, flags, len, now, to_client);
      if (v == Verdict::kPass && hpack_ && !DecodeHeaderFragment(h, len, to_client)) return false;
      break;
    case kRstStream:
      if (rejected_.count(sid)) return true;  // already reset towards gRPC
      streams_.erase(sid);
      Unopen(sid);
      if (!resets_.Take(limits_.resets_per_second, limits_.reset_burst, now)) {
        return Violation(Http2Violation::kResetFlood,
                         absl::StrCat("over ", limits_.resets_per_second,
                                      " stream resets a second (HTTP/2 rapid reset)"),
                         to_client);
      }
      break;
    case kWindowUpdate:
      if (earned_window_updates_ >= 1) {
        earned_window_updates_ -= 1;
      } else if (!window_updates_.Take(limits_.window_updates_per_second,
                                       limits_.window_update_burst, now)) {
        return Violation(
            Http2Violation::kWindowUpdateFlood,
            absl::StrCat("over ", limits_.window_updates_per_second,
                         " WINDOW_UPDATE frames a second beyond what the data received explains"),
            to_client);
      }
      break;
    default:  // PING, SETTINGS, PRIORITY, GOAWAY, PUSH_PROMISE and unknown types
      if (!TakeControlFrame(now, to_client)) return false;
      break;
  }
  if (v != Verdict::kPass) return false;
  const std::string_view frame(reinterpret_cast<const char*>(h), 9 + size_t{len});
  if (unit_is_copy_) {
    to_server->Copy(frame);
  } else {
    to_server->Pass(frame);
  }
  return true;
}

Http2Guard::Verdict Http2Guard::OnHeaderFrame(uint8_t type, uint32_t sid, uint8_t flags,
                                              uint32_t len, TimePoint now, Http2Out* to_client) {
  if (type == kHeaders) {
    if ((sid & 1) && sid > last_stream_) {
      last_stream_ = sid;
      if (quota_ && !quota_->TryAcquire()) {
        // The address has its limit of streams open at gRPC. The block still goes to gRPC (it
        // must decode it: HPACK state), and the stream is ended right behind it, as one over the
        // message limit is. Each such refusal is a reset: opening streams only to have them
        // refused is the rapid-reset pattern.
        if (!resets_.Take(limits_.resets_per_second, limits_.reset_burst, now)) {
          Violation(Http2Violation::kResetFlood,
                    absl::StrCat("over ", limits_.resets_per_second,
                                 " streams a second refused or reset (HTTP/2 rapid reset)"),
                    to_client);
          return Verdict::kClose;
        }
        StreamIn none;
        RejectStream(sid, &none, StreamRejection::kPeerStreams, 0);
      } else if (quota_) {
        open_.insert(sid);
      }
      if (!(flags & kEndStream) && !rejected_.count(sid)) {
        if (streams_.size() >= limits_.max_tracked_streams) {
          Violation(
              Http2Violation::kTooManyStreams,
              absl::StrCat("over ", limits_.max_tracked_streams, " streams open on one connection"),
              to_client);
          return Verdict::kClose;
        }
        streams_[sid] = StreamIn{};
      }
    } else if (flags & kEndStream) {
      streams_.erase(sid);  // the client's trailers: no more data on this stream
    }
    header_bytes_ = len;
    header_frames_ = 1;
    header_stream_ = sid;
  } else {
    if (header_stream_ == 0 || sid != header_stream_) {
      Violation(Http2Violation::kProtocol, "CONTINUATION without a header block", to_client);
      return Verdict::kClose;
    }
    header_bytes_ += len;
    ++header_frames_;
  }
  if (header_bytes_ > limits_.max_header_block_bytes) {
    Violation(Http2Violation::kHeaderBlockTooLarge,
              absl::StrCat("header block over ", limits_.max_header_block_bytes,
                           " bytes on stream ", sid),
              to_client);
    return Verdict::kClose;
  }
  if (header_frames_ > limits_.max_header_frames) {
    Violation(
        Http2Violation::kTooManyHeaderFrames,
        absl::StrCat("header block in over ", limits_.max_header_frames, " frames on stream ", sid),
        to_client);
    return Verdict::kClose;
  }
  if (flags & kEndHeaders) header_stream_ = 0;
  return Verdict::kPass;
}

bool Http2Guard::DecodeHeaderFragment(const uint8_t* h, uint32_t len, Http2Out* to_client) {
  const uint8_t type = h[3], flags = h[4];
  const uint32_t sid = Be32(h + 5) & 0x7fffffffu;
  const uint8_t* in = h + 9;
  size_t n = len;
  if (type == kHeaders) {
    path_.clear();
    size_t pad = 0;
    if (flags & kPadded) {
      if (n < 1) return Violation(Http2Violation::kProtocol, "HEADERS padding", to_client);
      pad = in[0];
      ++in;
      --n;
    }
    if (flags & kPriorityFlag) {
      if (n < 5) return Violation(Http2Violation::kProtocol, "HEADERS priority", to_client);
      in += 5;
      n -= 5;
    }
    if (pad > n) return Violation(Http2Violation::kProtocol, "HEADERS padding", to_client);
    n -= pad;
  }
  const bool last = (flags & kEndHeaders) != 0;
  for (;;) {
    nghttp2_nv nv;
    int out_flags = 0;
    const ssize_t used = nghttp2_hd_inflate_hd2(hpack_->inflater, &nv, &out_flags,
                                                const_cast<uint8_t*>(in), n, last ? 1 : 0);
    if (used < 0) {
      return Violation(Http2Violation::kProtocol,
                       absl::StrCat("header block on stream ", sid, " is not valid HPACK"),
                       to_client);
    }
    in += used;
    n -= static_cast<size_t>(used);
    if (out_flags & NGHTTP2_HD_INFLATE_EMIT) {
      const std::string_view name(reinterpret_cast<const char*>(nv.name), nv.namelen);
      if (name == ":path") path_.assign(reinterpret_cast<const char*>(nv.value), nv.valuelen);
    }
    if (out_flags & NGHTTP2_HD_INFLATE_FINAL) {
      nghttp2_hd_inflate_end_headers(hpack_->inflater);
      break;
    }
    if (!(out_flags & NGHTTP2_HD_INFLATE_EMIT) && n == 0) break;  // the rest in a CONTINUATION
  }
  if (last && !path_.empty()) {
    auto it = streams_.find(sid);
    for (const auto& [path, most] : limits_.max_messages_by_path) {
      if (path == path_ && it != streams_.end()) it->second.max_messages = most;
    }
    path_.clear();
  }
  return true;
}

bool Http2Guard::TakeControlFrame(TimePoint now, Http2Out* to_client) {
  if (control_.Take(limits_.control_frames_per_second, limits_.control_frame_burst, now)) {
    return true;
  }
  return Violation(Http2Violation::kControlFlood,
                   absl::StrCat("over ", limits_.control_frames_per_second,
                                " control frames a second (PING, SETTINGS, PRIORITY, GOAWAY, "
                                "empty DATA)"),
                   to_client);
}

bool Http2Guard::BeginData(const uint8_t* h, TimePoint now, Http2Out* to_server,
                           Http2Out* to_client) {
  data_ = DataIn{};
  data_.len = data_.remaining = Be24(h);
  data_.flags = h[4];
  data_.sid = Be32(h + 5) & 0x7fffffffu;
  // An empty DATA frame that does not end its stream carries nothing and costs no window: a
  // control frame by another name (gRPC 1.51 grows by a flood of them).
  if (data_.len == 0 && !(data_.flags & kEndStream) && !TakeControlFrame(now, to_client)) {
    return false;
  }
  if (rejected_.count(data_.sid)) {
    // A stream the guard ended: its data never reaches gRPC; the connection window it used goes
    // back to the client so other streams keep flowing.
    data_.mode = DataMode::kDrop;
    data_.credit_conn = data_.len;
  } else if (auto it = streams_.find(data_.sid); it != streams_.end()) {
    data_.mode = DataMode::kScan;
    data_.pad_pending = (data_.flags & kPadded) != 0;
    if (data_.pad_pending && data_.len == 0) {
      return Violation(Http2Violation::kProtocol, "DATA padding exceeds the frame", to_client);
    }
    if (limits_.inline_mode && CanPassIntact(it->second, data_.len)) {
      data_.intact = true;
      const std::string_view header(reinterpret_cast<const char*>(h), 9);
      if (unit_is_copy_) {
        to_server->Copy(header);
      } else {
        to_server->Pass(header);
      }
    }
  } else {
    // Not open (gRPC answers as HTTP/2 says): passed on as it came.
    data_.mode = DataMode::kForward;
    const std::string_view header(reinterpret_cast<const char*>(h), 9);
    if (unit_is_copy_) {
      to_server->Copy(header);
    } else {
      to_server->Pass(header);
    }
  }
  if (data_.remaining == 0) EndData(to_server);
  return true;
}

bool Http2Guard::DataPayload(const char* p, size_t n, Http2Out* to_server, Http2Out* to_client) {
  if (data_.mode == DataMode::kScan) {
    if (!(data_.intact ? ScanIntact(p, n, to_server, to_client)
                       : ScanPayload(p, n, to_server, to_client))) {
      return false;
    }
  } else {
    if (data_.mode == DataMode::kForward && p != nullptr) to_server->Pass(std::string_view(p, n));
    data_.remaining -= static_cast<uint32_t>(n);
  }
  if (data_.remaining == 0) EndData(to_server);
  return true;
}

// The payload of a tracked stream's DATA frame: runs of message body go to gRPC in DATA frames
// of the guard's own (the bytes themselves are not copied), each length prefix is held until it
// is whole and checked, then passed on in a 5-byte DATA frame; padding is dropped and credited.
bool Http2Guard::ScanPayload(const char* p, size_t n, Http2Out* to_server, Http2Out* to_client) {
  auto it = streams_.find(data_.sid);
  StreamIn& s = it->second;  // tracked for the whole frame (see FromServer and EndData)
  size_t i = 0;
  const auto* u = reinterpret_cast<const uint8_t*>(p);
  if (data_.pad_pending && n > 0) {
    data_.pad = u[0];
    data_.pad_pending = false;
    if (data_.pad >= data_.len) {
      return Violation(Http2Violation::kProtocol, "DATA padding exceeds the frame", to_client);
    }
    ++data_.credit_conn;
    ++data_.credit_stream;
    --data_.remaining;
    i = 1;
  }
  while (i < n) {
    // Message bytes still to come; none once in the padding (which may span reads).
    const uint32_t body = data_.remaining > data_.pad ? data_.remaining - data_.pad : 0;
    if (body == 0) {
      const size_t k = n - i;
      data_.credit_conn += k;
      data_.credit_stream += k;
      data_.remaining -= static_cast<uint32_t>(k);
      break;
    }
    if (data_.segment > 0) {
      const uint32_t k = static_cast<uint32_t>(std::min<size_t>(data_.segment, n - i));
      if (p != nullptr) to_server->Pass(std::string_view(p + i, k));
      data_.segment -= k;
      s.msg_remaining -= k;
      data_.remaining -= k;
      i += k;
      continue;
    }
    if (s.msg_remaining > 0) {
      data_.segment = std::min(s.msg_remaining, body);
      std::string header;
      AppendFrameHeader(&header, data_.segment, kData, 0, data_.sid);
      to_server->Add(std::move(header));
      continue;
    }
    const uint32_t take =
        static_cast<uint32_t>(std::min<size_t>({size_t{5} - s.prefix_have, body, n - i}));
    std::memcpy(s.prefix + s.prefix_have, u + i, take);
    s.prefix_have = static_cast<uint8_t>(s.prefix_have + take);
    data_.remaining -= take;
    i += take;
    if (s.prefix_have < 5) continue;
    s.prefix_have = 0;
    const uint8_t passed = s.prefix_passed;  // bytes of it an intact frame already gave gRPC
    s.prefix_passed = 0;
    StreamRejection why;
    uint64_t declared = 0;
    if (!CheckPrefix(s.prefix, s.max_messages, &s.messages, &why, &declared)) {
      // The prefix (part of it may have come in earlier frames) and the rest of this frame never
      // reach gRPC.
      RejectStream(data_.sid, &s, why, declared);
      data_.mode = DataMode::kDrop;
      data_.credit_conn += 5 - passed + data_.remaining;
      data_.credit_stream = 0;
      data_.remaining -= static_cast<uint32_t>(n - i);
      return true;
    }
    std::string frame;
    AppendFrame(&frame, kData, 0, data_.sid,
                std::string_view(reinterpret_cast<const char*>(s.prefix) + passed, 5 - passed));
    to_server->Add(std::move(frame));
    s.msg_remaining = Be32(s.prefix + 1);
  }
  return true;
}

// Inline mode: the DATA frame just begun may go to gRPC as it came if nothing in it can need
// re-framing - no padding, no prefix bytes held back from an earlier frame, every prefix that
// begins in it among the bytes at hand and passing, and what is not at hand yet only body of a
// message whose prefix passed.
bool Http2Guard::CanPassIntact(const StreamIn& s, uint32_t len) const {
  if ((data_.flags & kPadded) || s.prefix_have != s.prefix_passed) return false;
  uint32_t msg_remaining = s.msg_remaining;
  uint32_t messages = s.messages;
  uint8_t prefix[5];
  std::memcpy(prefix, s.prefix, 5);
  uint8_t have = s.prefix_have;
  size_t avail = 0;  // of the frame's payload, bytes at hand
  for (size_t v = 0; v <= later_count_ && avail < len; ++v) {
    const std::string_view view = v == 0 ? ahead_ : later_[v - 1];
    const size_t end = std::min<size_t>(view.size(), len - avail);
    const auto* u = reinterpret_cast<const uint8_t*>(view.data());
    size_t i = 0;
    while (i < end) {
      if (msg_remaining > 0) {
        const uint32_t k = static_cast<uint32_t>(std::min<size_t>(msg_remaining, end - i));
        msg_remaining -= k;
        i += k;
        continue;
      }
      const size_t take = std::min<size_t>(size_t{5} - have, end - i);
      std::memcpy(prefix + have, u + i, take);
      have = static_cast<uint8_t>(have + take);
      i += take;
      if (have < 5) break;
      have = 0;
      StreamRejection why;
      uint64_t declared = 0;
      if (!CheckPrefix(prefix, s.max_messages, &messages, &why, &declared)) return false;
      msg_remaining = Be32(prefix + 1);
    }
    avail += end;
  }
  if (avail == len) return true;
  return have == 0 && msg_remaining >= len - avail;
}

// A tracked stream's DATA frame passed as it came (CanPassIntact): its bytes go on as views, the
// stream's message state follows them.
bool Http2Guard::ScanIntact(const char* p, size_t n, Http2Out* to_server, Http2Out* to_client) {
  StreamIn& s = streams_.find(data_.sid)->second;
  if (p != nullptr) to_server->Pass(std::string_view(p, n));
  const auto* u = reinterpret_cast<const uint8_t*>(p);
  size_t i = 0;
  while (i < n) {
    if (s.msg_remaining > 0) {
      const uint32_t k = static_cast<uint32_t>(std::min<size_t>(s.msg_remaining, n - i));
      s.msg_remaining -= k;
      i += k;
      continue;
    }
    if (p == nullptr) {
      return Violation(Http2Violation::kProtocol, "internal: a length prefix was spliced past",
                       to_client);
    }
    const size_t take = std::min<size_t>(size_t{5} - s.prefix_have, n - i);
    std::memcpy(s.prefix + s.prefix_have, u + i, take);
    s.prefix_have = static_cast<uint8_t>(s.prefix_have + take);
    i += take;
    if (s.prefix_have < 5) break;
    s.prefix_have = 0;
    s.prefix_passed = 0;
    StreamRejection why;
    uint64_t declared = 0;
    if (!CheckPrefix(s.prefix, s.max_messages, &s.messages, &why, &declared)) {
      // CanPassIntact judged every prefix of the frame: this cannot happen.
      return Violation(Http2Violation::kProtocol, "internal: a prefix passed intact failed",
                       to_client);
    }
    s.msg_remaining = Be32(s.prefix + 1);
  }
  data_.remaining -= static_cast<uint32_t>(n);
  if (data_.remaining == 0) s.prefix_passed = s.prefix_have;  // an incomplete prefix went on
  return true;
}

void Http2Guard::EndData(Http2Out* to_server) {
  if (data_.mode == DataMode::kScan) {
    auto it = streams_.find(data_.sid);
    if (data_.intact) {
      // The frame went as it came, its END_STREAM (and any incomplete prefix) with it.
      if ((data_.flags & kEndStream) || data_.untrack_at_end) streams_.erase(it);
    } else if (data_.flags & kEndStream) {
      // The end of the stream, with a prefix still incomplete if the client left one (gRPC fails
      // that call as it would have).
      StreamIn& s = it->second;
      std::string frame;
      AppendFrame(&frame, kData, kEndStream, data_.sid,
                  std::string_view(reinterpret_cast<const char*>(s.prefix) + s.prefix_passed,
                                   s.prefix_have - s.prefix_passed));
      to_server->Add(std::move(frame));
      data_.credit_stream = 0;  // no more data can come on it
      streams_.erase(it);
    } else if (data_.untrack_at_end) {
      streams_.erase(it);
    }
  }
  AppendWindowUpdate(&inject_to_client_, 0, data_.credit_conn);
  AppendWindowUpdate(&inject_to_client_, data_.sid, data_.credit_stream);
  data_ = DataIn{};
}

bool Http2Guard::CheckPrefix(const uint8_t* prefix, uint32_t max_messages, uint32_t* messages,
                             StreamRejection* why, uint64_t* declared) const {
  const uint32_t length = Be32(prefix + 1);
  *declared = length;
  if (prefix[0] == 1 && !limits_.allow_compressed_messages) {
    *why = StreamRejection::kCompressed;
    return false;
  }
  if (length > limits_.max_message_bytes) {
    *why = StreamRejection::kMessageTooLarge;
    return false;
  }
  if (max_messages > 0 && ++*messages > max_messages) {
    *why = StreamRejection::kTooManyMessages;
    *declared = *messages;
    return false;
  }
  return true;
}

void Http2Guard::RejectStream(uint32_t id, StreamIn* s, StreamRejection why, uint64_t declared) {
  ++rejections_[static_cast<int>(why)];
  const bool headers_sent = s->server_headers;
  streams_.erase(id);
  Unopen(id);
  if (rejected_.size() >= kMaxRejectedTracked) rejected_.erase(rejected_.begin());
  rejected_.insert(id);
  // gRPC forgets the stream (the reactor sees a cancel)...
  AppendRst(&inject_to_server_, id, kCancel);
  if (why == StreamRejection::kPeerStreams || why == StreamRejection::kTooManyMessages) {
    // ...and a stream ended at its headers, or at a message its method does not take (gRPC has
    // usually answered that call already), is reset towards the client too: ENHANCE_YOUR_CALM,
    // which gRPC clients report as RESOURCE_EXHAUSTED (the server's log says which limit).
    // Trailers would race with gRPC's own answer to the stream (it may answer before it reads
    // the reset; its header frames pass for HPACK's sake), and two ends of one stream are a
    // connection error to the client; frames after a reset are only a stream error.
    AppendRst(&inject_to_client_, id, kEnhanceYourCalm);
    return;
  }  // ...and the client reads why in the stream's trailers, then is told to stop sending.
  std::string status, message;
  if (why == StreamRejection::kMessageTooLarge) {
    status = "8";  // RESOURCE_EXHAUSTED
    message = absl::StrCat("message of ", declared,
                           " bytes (declared at its length prefix) is over the server's limit "
                           "of ",
                           limits_.max_message_bytes, " bytes (--max-message-bytes)");
  } else {
    status = "3";  // INVALID_ARGUMENT
    message =
        "compressed message: this server accepts uncompressed messages only (frames are JPEG, "
        "PNG or raw pixels; gzip gains nothing); send with compression off";
  }
  std::string block;
  if (!headers_sent) {
    block.push_back(static_cast<char>(0x88));  // :status 200 (static table index 8)
    HpackInt(&block, 0x00, 4, 31);             // content-type (static index 31), no indexing
    HpackInt(&block, 0x00, 7, 16);
    block.append("application/grpc");
  }
  HpackLiteral(&block, "grpc-status", status);
  HpackLiteral(&block, "grpc-message", PercentEncode(message));
  AppendFrame(&inject_to_client_, kHeaders, kEndStream | kEndHeaders, id, block);
  AppendRst(&inject_to_client_, id, kNoError);
}

bool Http2Guard::FromServer(std::string_view bytes, TimePoint now, Http2Out* to_server,
                            Http2Out* to_client) {
  size_t i = 0;
  const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
  while (i < bytes.size()) {
    if (s_remaining_ == 0 && s_header_have_ < 9) {
      const bool whole = s_header_have_ == 0 && bytes.size() - i >= 9;  // all in this write
      const size_t take = std::min<size_t>(9 - s_header_have_, bytes.size() - i);
      std::memcpy(s_header_ + s_header_have_, b + i, take);
      s_header_have_ += static_cast<uint32_t>(take);
      i += take;
      if (s_header_have_ < 9) break;
      const uint32_t len = Be24(s_header_);
      const uint8_t type = s_header_[3];
      const uint8_t flags = s_header_[4];
      const uint32_t sid = Be32(s_header_ + 5) & 0x7fffffffu;
      const bool rejected = sid != 0 && rejected_.count(sid) > 0;
      // gRPC ended the stream (trailers) or reset it: no longer open at the server.
      if (sid != 0 &&
          (type == kRstStream || ((type == kHeaders || type == kData) && (flags & kEndStream)))) {
        Unopen(sid);
      }
      // (Inline, they are passed on: see Http2Limits::inline_mode.)
      s_dropping_ = rejected && (type == kData || type == kRstStream) && !limits_.inline_mode;
      if (s_dropping_ && type == kData) s_dropped_data_ += len;
      if (type == kData && !s_dropping_) {
        // What the client may answer with WINDOW_UPDATEs (bounded: a client that never sends
        // them cannot bank an unlimited allowance).
        earned_window_updates_ =
            std::min(earned_window_updates_ + limits_.window_updates_per_data_frame +
                         len / std::max(1u, limits_.data_bytes_per_window_update),
                     kMaxEarnedWindowUpdates);
      }
      if (type == kHeaders) {
        auto it = streams_.find(sid);
        if (it != streams_.end()) it->second.server_headers = true;
        s_in_header_block_ = !(flags & kEndHeaders);
      } else if (type == kContinuation && (flags & kEndHeaders)) {
        s_in_header_block_ = false;
      } else if (type == kRstStream && !rejected) {
        if (data_.mode == DataMode::kScan && data_.sid == sid) {
          data_.untrack_at_end = true;  // the client's frame in flight still needs its state
        } else {
          streams_.erase(sid);
        }
        // A stream gRPC had to refuse (over its concurrent-stream limit) counts as a reset:
        // opening streams only to have them refused is the same flood.
        if (len == 4 && bytes.size() - i >= 4 && Be32(b + i) == kRefusedStream &&
            !resets_.Take(limits_.resets_per_second, limits_.reset_burst, now) &&
            violation_ == Http2Violation::kNone) {
          violation_ = Http2Violation::kResetFlood;
          detail_ = "over the reset limit with streams the server refused";
        }
      }
      if (!s_dropping_ && whole) {
        to_client->Pass(bytes.substr(i - 9, 9));
      } else if (!s_dropping_) {
        to_client->Copy(std::string_view(reinterpret_cast<char*>(s_header_), 9));
      }
      s_remaining_ = len;
      s_settings_ = type == kSettings && !(flags & kAck) && limits_.max_initial_window > 0;
      s_setting_have_ = 0;
    }
    if (s_remaining_ > 0 && s_settings_) {
      // SETTINGS entry by entry (6 bytes each), the initial window lowered to the limit.
      const size_t take =
          std::min<size_t>({s_remaining_, bytes.size() - i, size_t{6} - s_setting_have_});
      const bool whole = s_setting_have_ == 0 && take == 6;  // the entry is all in this write
      std::memcpy(s_setting_ + s_setting_have_, b + i, take);
      s_setting_have_ += static_cast<uint32_t>(take);
      s_remaining_ -= static_cast<uint32_t>(take);
      i += take;
      if (s_setting_have_ == 6) {
        if (Be16(s_setting_) == kSettingsInitialWindowSize &&
            Be32(s_setting_ + 2) > limits_.max_initial_window) {
          PutBe32(s_setting_ + 2, limits_.max_initial_window);
          to_client->Copy(std::string_view(reinterpret_cast<char*>(s_setting_), 6));
        } else if (whole) {
          to_client->Pass(bytes.substr(i - 6, 6));  // unchanged: as it came
        } else {
          to_client->Copy(std::string_view(reinterpret_cast<char*>(s_setting_), 6));
        }
        s_setting_have_ = 0;
      } else if (s_remaining_ == 0) {  // not a whole entry (gRPC never sends that): as it came
        to_client->Copy(std::string_view(reinterpret_cast<char*>(s_setting_), s_setting_have_));
        s_setting_have_ = 0;
      }
    } else if (s_remaining_ > 0) {
      const size_t take = std::min<size_t>(s_remaining_, bytes.size() - i);
      if (!s_dropping_) to_client->Pass(bytes.substr(i, take));
      s_remaining_ -= static_cast<uint32_t>(take);
      i += take;
    }
    if (s_remaining_ == 0 && s_header_have_ == 9) {
      // A frame boundary: the guard's own frames for the client may go now.
      s_header_have_ = 0;
      s_dropping_ = false;
      s_first_frame_done_ = true;
      if (!s_in_header_block_ && !inject_to_client_.empty()) {
        to_client->Add(std::move(inject_to_client_));
        inject_to_client_.clear();
      }
    }
  }
  if (s_dropped_data_ > 0) {
    AppendWindowUpdate(&inject_to_server_, 0, s_dropped_data_);
    s_dropped_data_ = 0;
  }
  FlushInjected(to_server, to_client);
  return violation_ == Http2Violation::kNone;
}

void Http2Guard::FlushInjected(Http2Out* to_server, Http2Out* to_client) {
  // Towards gRPC: a boundary is anywhere outside a client header block and outside a DATA frame
  // being passed on (the guard's own DATA frames are complete once their bytes are).
  const bool mid_frame = data_.mode == DataMode::kForward || data_.segment > 0 ||
                         (data_.mode == DataMode::kScan && data_.intact);
  if (!inject_to_server_.empty() && settings_seen_ && header_stream_ == 0 && !mid_frame) {
    to_server->Add(std::move(inject_to_server_));
    inject_to_server_.clear();
  }
  if (!inject_to_client_.empty() && s_first_frame_done_ && s_header_have_ == 0 &&
      s_remaining_ == 0 && !s_in_header_block_) {
    to_client->Add(std::move(inject_to_client_));
    inject_to_client_.clear();
  }
}

void Http2Out::Pass(std::string_view v) {
  if (v.empty()) return;
  size_ += v.size();
  if (!parts_.empty() && parts_.back().data() + parts_.back().size() == v.data()) {
    parts_.back() = std::string_view(parts_.back().data(), parts_.back().size() + v.size());
    return;
  }
  parts_.push_back(v);
}

void Http2Out::Add(std::string s) {
  if (s.empty()) return;
  owned_.push_back(std::move(s));
  size_ += owned_.back().size();
  parts_.emplace_back(owned_.back());
}

void Http2Out::Clear() {
  parts_.clear();
  owned_.clear();
  size_ = 0;
}

}  // namespace framepipe

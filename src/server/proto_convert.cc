#include "server/proto_convert.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace framepipe {

FrameInput FromProto(pb::Frame* frame) {
  FrameInput in;
  in.seq = frame->seq();
  in.capture_time_us = frame->capture_time_us();
  in.pts = frame->pts();
  switch (frame->payload_case()) {
    case pb::Frame::kEncoded:
      in.kind = PayloadKind::kEncoded;
      in.data.swap(*frame->mutable_encoded());
      break;
    case pb::Frame::kRaw: {
      in.kind = PayloadKind::kRaw;
      pb::RawImage* raw = frame->mutable_raw();
      in.raw_width = raw->width();
      in.raw_height = raw->height();
      in.raw_format_code = static_cast<int>(raw->format());
      in.data.swap(*raw->mutable_data());
      break;
    }
    case pb::Frame::kVideoPacket:
      in.kind = PayloadKind::kVideoPacket;
      in.data.swap(*frame->mutable_video_packet());
      break;
    default:
      in.kind = PayloadKind::kNone;
      break;
  }
  const auto& tags = frame->tags();
  size_t bytes = 0;
  for (const auto& [k, v] : tags) bytes += k.size() + v.size();
  if (tags.size() > kMaxTags) {
    in.rejection = absl::InvalidArgumentError(
        absl::StrCat("frame has ", tags.size(), " tags, over the limit of ", kMaxTags));
  } else if (bytes > kMaxTagBytes) {
    in.rejection = absl::InvalidArgumentError(
        absl::StrCat("frame tags total ", bytes, " bytes, over the limit of ", kMaxTagBytes));
  } else {
    in.tags.reserve(tags.size());
    for (auto& [k, v] : *frame->mutable_tags()) in.tags.emplace_back(k, std::move(v));
    // Map order is unspecified; echo tags in a stable order.
    std::sort(in.tags.begin(), in.tags.end());
  }
  return in;
}

pb::FrameStatus ToProtoStatus(FrameStatus s) { return static_cast<pb::FrameStatus>(s); }

FrameStatus FromProtoStatus(pb::FrameStatus s) {
  const int v = static_cast<int>(s);
  return (v >= 0 && v < kFrameStatusCount) ? static_cast<FrameStatus>(v)
                                           : FrameStatus::kUnspecified;
}

void ToProto(const FrameResult& r, bool include_thumbnail, pb::FrameResult* out) {
  out->set_seq(r.seq);
  out->set_status(ToProtoStatus(r.status));
  if (!r.error.empty()) out->set_error(r.error);
  out->set_capture_time_us(r.capture_time_us);
  if (r.pts != 0) out->set_pts(r.pts);
  if (r.status == FrameStatus::kOk) {
    pb::Analysis* a = out->mutable_analysis();
    a->set_width(r.analysis.width);
    a->set_height(r.analysis.height);
    a->set_mean_luma(r.analysis.mean_luma);
    a->set_stddev_luma(r.analysis.stddev_luma);
    a->mutable_luma_histogram()->Add(r.analysis.histogram.begin(), r.analysis.histogram.end());
    a->set_sharpness(r.analysis.sharpness);
    a->set_edge_density(r.analysis.edge_density);
    if (include_thumbnail) {
      a->set_thumbnail(reinterpret_cast<const char*>(r.analysis.thumbnail.data()),
                       r.analysis.thumbnail.size());
    }
    a->set_backend(r.analysis.backend);
    pb::Enrichment* e = out->mutable_enrichment();
    e->set_dark(r.enrichment.dark);
    e->set_overexposed(r.enrichment.overexposed);
    e->set_blurry(r.enrichment.blurry);
    e->mutable_dominant_bgr()->Add(r.enrichment.dominant_bgr.begin(),
                                   r.enrichment.dominant_bgr.end());
    e->set_keypoints(r.enrichment.keypoints);
    e->set_scene_change(r.enrichment.scene_change);
    e->set_scene_cut(r.enrichment.scene_cut);
    e->set_cut_score(r.enrichment.cut_score);
    e->set_motion(r.enrichment.motion);
  }
  pb::Timings* t = out->mutable_timings();
  t->set_queue_us(r.timings.queue_us);
  t->set_decode_us(r.timings.decode_us);
  t->set_analyse_us(r.timings.analyse_us);
  t->set_enrich_us(r.timings.enrich_us);
  t->set_reorder_us(r.timings.reorder_us);
  t->set_total_us(r.timings.total_us);
  for (const auto& [k, v] : r.tags) (*out->mutable_tags())[k] = v;
}

FrameResult FromProto(const pb::FrameResult& in) {
  FrameResult r;
  r.seq = in.seq();
  r.status = FromProtoStatus(in.status());
  r.error = in.error();
  r.capture_time_us = in.capture_time_us();
  r.pts = in.pts();
  const pb::Analysis& a = in.analysis();
  r.analysis.width = a.width();
  r.analysis.height = a.height();
  r.analysis.mean_luma = a.mean_luma();
  r.analysis.stddev_luma = a.stddev_luma();
  for (int i = 0; i < a.luma_histogram_size() && i < kHistogramBins; ++i) {
    r.analysis.histogram[i] = a.luma_histogram(i);
  }
  r.analysis.sharpness = a.sharpness();
  r.analysis.edge_density = a.edge_density();
  std::copy_n(a.thumbnail().begin(), std::min<size_t>(a.thumbnail().size(), kThumbnailBytes),
              r.analysis.thumbnail.begin());
  r.analysis.backend = a.backend() == "cuda" ? "cuda" : (a.backend() == "cpu" ? "cpu" : "");
  const pb::Enrichment& e = in.enrichment();
  r.enrichment.dark = e.dark();
  r.enrichment.overexposed = e.overexposed();
  r.enrichment.blurry = e.blurry();
  for (int i = 0; i < e.dominant_bgr_size() && i < 3; ++i) {
    r.enrichment.dominant_bgr[i] = e.dominant_bgr(i);
  }
  r.enrichment.keypoints = e.keypoints();
  r.enrichment.scene_change = e.scene_change();
  r.enrichment.scene_cut = e.scene_cut();
  r.enrichment.cut_score = e.cut_score();
  r.enrichment.motion = e.motion();
  const pb::Timings& t = in.timings();
  r.timings = {t.queue_us(),  t.decode_us(),  t.analyse_us(),
               t.enrich_us(), t.reorder_us(), t.total_us()};
  for (const auto& [k, v] : in.tags()) r.tags.emplace_back(k, v);
  std::sort(r.tags.begin(), r.tags.end());
  return r;
}

}  // namespace framepipe

#include "pipeline/standard_stages.h"

#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "enrich/temporal_stage.h"

namespace framepipe {

absl::Status ValidateAnalysis(const Image& frame, const Analysis& a, const Image& luma) {
  const uint64_t n = static_cast<uint64_t>(frame.width()) * static_cast<uint64_t>(frame.height());
  if (a.width != static_cast<uint32_t>(frame.width()) ||
      a.height != static_cast<uint32_t>(frame.height())) {
    return absl::InternalError(absl::StrCat("analysis reports size ", a.width, "x", a.height,
                                            " for a ", frame.width(), "x", frame.height(),
                                            " frame"));
  }
  if (luma.width() != frame.width() || luma.height() != frame.height() ||
      luma.format() != PixelFormat::kGray8) {
    return absl::InternalError("analysis returned a luma plane of the wrong size or format");
  }
  const uint64_t total = std::accumulate(a.histogram.begin(), a.histogram.end(), uint64_t{0});
  if (total != n) {
    return absl::InternalError(
        absl::StrCat("luma histogram counts ", total, " pixels, frame has ", n));
  }
  auto bad = [](double v, double lo, double hi) { return !std::isfinite(v) || v < lo || v > hi; };
  if (bad(a.mean_luma, 0, 255) || bad(a.stddev_luma, 0, 128) || bad(a.sharpness, 0, 1.1e6) ||
      bad(a.edge_density, 0, 1)) {
    return absl::InternalError(absl::StrCat("analysis values out of range: mean=", a.mean_luma,
                                            " stddev=", a.stddev_luma, " sharpness=", a.sharpness,
                                            " edge_density=", a.edge_density));
  }
  return absl::OkStatus();
}

Stages MakeStandardStages(std::shared_ptr<Analyzer> analyzer, const StandardStageOptions& options) {
  Stages s;
  const DecodeLimits limits = options.limits;
  const EnrichConfig enrich = options.enrich;
  s.decode = [limits](FrameContext& ctx) { return DecodeFrame(ctx.input, limits, &ctx.image); };
  // A backend's outcome for one frame, checked: a fault or an inconsistent result is INTERNAL.
  auto checked = [analyzer](const absl::Status& st, const FrameContext& ctx) -> absl::Status {
    if (!st.ok()) {
      return absl::InternalError(absl::StrCat(analyzer->name(), " backend: ", st.message()));
    }
    absl::Status valid = ValidateAnalysis(ctx.image, ctx.result->analysis, ctx.luma);
    if (!valid.ok()) {
      return absl::InternalError(absl::StrCat(
          analyzer->name(), " backend returned an inconsistent result: ", valid.message()));
    }
    return absl::OkStatus();
  };
  s.analyse = [analyzer, checked](FrameContext& ctx) -> absl::Status {
    return checked(analyzer->Analyze(ctx.image, &ctx.result->analysis, &ctx.luma), ctx);
  };
  if (options.batch_analyse) {
    s.analyse_batch = [analyzer, checked](const std::vector<FrameContext*>& frames,
                                          std::vector<absl::Status>& statuses) {
      std::vector<Analyzer::BatchItem> items(frames.size());
      for (size_t i = 0; i < frames.size(); ++i) {
        items[i].frame = &frames[i]->image;
        items[i].out = &frames[i]->result->analysis;
        items[i].luma = &frames[i]->luma;
      }
      analyzer->AnalyzeBatch(items);
      for (size_t i = 0; i < frames.size(); ++i) statuses[i] = checked(items[i].status, *frames[i]);
    };
  }
  s.enrich = [enrich](FrameContext& ctx) {
    return Enrich(ctx.image, ctx.luma, ctx.result->analysis, enrich, &ctx.result->enrichment);
  };
  const SceneCutConfig cut = enrich.scene_cut;
  s.ordered = [cut]() -> OrderedFn {
    auto stage = std::make_shared<TemporalStage>(cut);
    return [stage](FrameResult& r) { stage->Apply(r); };
  };
  return s;
}

}  // namespace framepipe

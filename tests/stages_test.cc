// The real stages (decode, CPU analysis, enrichment, temporal) through the pipeline: every
// malformed frame kind interleaved with good frames gets its error in order, the stream goes on,
// and the good frames' results equal a direct computation.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "analysis/cpu/cpu_analyzer.h"
#include "enrich/temporal_stage.h"
#include "image_util.h"
#include "media/synthetic_source.h"
#include "pipeline/pipeline.h"
#include "pipeline/standard_stages.h"
#include "test_util.h"

namespace framepipe {
namespace {

struct Collected {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<FrameResult> results;
  bool done = false;
};

// `batched`: the analyse stage goes through the pipeline's cross-stream micro-batching
// (Analyzer::AnalyzeBatch) instead of one call per frame.
std::vector<FrameResult> RunFrames(std::vector<FrameInput> frames, DecodeLimits limits = {},
                                   bool batched = false) {
  StandardStageOptions so;
  so.limits = limits;
  so.batch_analyse = batched;
  PipelineOptions po;
  po.workers = 3;
  struct Batches : PipelineObserver {
    std::atomic<uint64_t> frames{0};
    void OnBatch(uint32_t n, double) override { frames += n; }
  } batches;
  if (batched) {
    po.batch.max_frames = 4;
    po.batch.window = std::chrono::milliseconds(1);
    po.observer = &batches;
  }
  auto p = std::move(Pipeline::Create(po, MakeStandardStages(std::make_shared<CpuAnalyzer>(), so)))
               .value();
  Collected c;
  StreamOptions o;
  o.id = "stages";
  o.max_in_flight = 6;
  o.on_result = [&](Delivery d) {
    std::lock_guard<std::mutex> l(c.mu);
    c.results.push_back(std::move(*d.result));
  };
  o.on_complete = [&] {
    std::lock_guard<std::mutex> l(c.mu);
    c.done = true;
    c.cv.notify_all();
  };
  auto s = std::move(p->OpenStream(o)).value();
  for (auto& f : frames) EXPECT_TRUE(s->Submit(std::move(f)).ok());
  s->Close();
  std::unique_lock<std::mutex> l(c.mu);
  EXPECT_TRUE(c.cv.wait_for(l, testing::kWaitBound, [&] { return c.done; }));
  if (batched) {
    // Every good frame (and only those) went through a batch: every bad input here fails in
    // decode, and a frame that failed to decode does not wait for a batch.
    uint64_t decoded = 0;
    for (const auto& r : c.results) decoded += r.status == FrameStatus::kOk;
    EXPECT_EQ(batches.frames.load(), decoded);
    EXPECT_GT(decoded, 0u);
  }
  p->Stop(std::chrono::seconds(5));
  return std::move(c.results);
}

void CheckBadInputsInterleavedWithGoodFrames(bool batched) {
  SyntheticSource src({320, 240, 5, 1});
  std::vector<FrameInput> frames;
  std::vector<std::pair<FrameStatus, std::string>> want;
  std::vector<Image> good_images;
  uint64_t seq = 100;
  auto good = [&](int64_t i) {
    Image img = src.Render(i);
    FrameInput f;
    f.seq = seq++;
    f.kind = PayloadKind::kEncoded;
    f.data = EncodeImage(img, i % 2 ? Encoding::kPng : Encoding::kJpeg).value();
    f.tags = {{"k", "good" + std::to_string(i)}};
    frames.push_back(std::move(f));
    want.push_back({FrameStatus::kOk, ""});
  };
  auto bad = [&](FrameInput f, const std::string& msg) {
    f.seq = seq++;
    frames.push_back(std::move(f));
    want.push_back({FrameStatus::kInvalidArgument, msg});
  };
  std::string jpeg = EncodeImage(src.Render(0), Encoding::kJpeg).value();
  FrameInput e;
  e.kind = PayloadKind::kEncoded;
  for (int i = 0; i < 12; ++i) {
    good(i);
    switch (i) {
      case 0:
        e.data = "";
        bad(e, "encoded payload is empty");
        break;
      case 1:
        e.data = jpeg.substr(0, jpeg.size() - 100);
        bad(e, "truncated JPEG");
        break;
      case 2:
        e.data = "GIF89a not supported here";
        bad(e, "neither JPEG nor PNG");
        break;
      case 3: {
        FrameInput r;
        r.kind = PayloadKind::kRaw;
        r.raw_width = 10, r.raw_height = 10, r.raw_format_code = 2;
        r.data.assign(299, 'x');
        bad(r, "needs 300 bytes, got 299");
        break;
      }
      case 4: {
        FrameInput r;
        r.kind = PayloadKind::kRaw;
        r.raw_width = 10, r.raw_height = 10, r.raw_format_code = 5;
        r.data.assign(100, 'x');
        bad(r, "unknown pixel format value 5");
        break;
      }
      case 5: {
        FrameInput r;
        r.kind = PayloadKind::kNone;
        bad(r, "no payload");
        break;
      }
      case 6: {
        FrameInput r;
        r.kind = PayloadKind::kRaw;
        r.raw_width = 100000, r.raw_height = 1, r.raw_format_code = 1;
        r.data.assign(100000, 'x');
        bad(r, "over the server's maximum");
        break;
      }
      default:
        break;
    }
  }
  auto got = RunFrames(std::move(frames), {}, batched);
  ASSERT_EQ(got.size(), want.size());
  TemporalStage reference_temporal;
  CpuAnalyzer reference;
  int good_index = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq, 100 + i);
    EXPECT_EQ(got[i].status, want[i].first) << i << ": " << got[i].error;
    if (want[i].first != FrameStatus::kOk) {
      EXPECT_NE(got[i].error.find(want[i].second), std::string::npos) << got[i].error;
      EXPECT_NE(got[i].error.find("frame seq=" + std::to_string(100 + i)), std::string::npos);
      continue;
    }
    ASSERT_EQ(got[i].tags.size(), 1u);
    EXPECT_EQ(got[i].tags[0].second, "good" + std::to_string(good_index));
    // Same numbers as analysing the decoded frame directly.
    FrameInput f;
    f.kind = PayloadKind::kEncoded;
    f.data = EncodeImage(src.Render(good_index), good_index % 2 ? Encoding::kPng : Encoding::kJpeg)
                 .value();
    Image img;
    ASSERT_TRUE(DecodeFrame(f, {}, &img).ok());
    FrameResult direct;
    Image luma;
    ASSERT_TRUE(reference.Analyze(img, &direct.analysis, &luma).ok());
    direct.status = FrameStatus::kOk;
    reference_temporal.Apply(direct);
    EXPECT_EQ(got[i].analysis.histogram, direct.analysis.histogram);
    EXPECT_DOUBLE_EQ(got[i].analysis.sharpness, direct.analysis.sharpness);
    EXPECT_DOUBLE_EQ(got[i].enrichment.scene_change, direct.enrichment.scene_change);
    EXPECT_DOUBLE_EQ(got[i].enrichment.motion, direct.enrichment.motion);
    EXPECT_STREQ(got[i].analysis.backend, "cpu");
    EXPECT_GT(got[i].timings.total_us, 0u);
    EXPECT_GE(got[i].timings.total_us,
              got[i].timings.decode_us + got[i].timings.analyse_us + got[i].timings.enrich_us);
    ++good_index;
  }
}

TEST(StagesTest, BadInputsInterleavedWithGoodFrames) {
  CheckBadInputsInterleavedWithGoodFrames(false);
}

// The same frames through batched analysis (the CPU backend's AnalyzeBatch): the same errors in
// the same order, and every good frame's numbers equal to analysing it alone.
TEST(StagesTest, BatchedAnalysisGivesTheSameResults) {
  CheckBadInputsInterleavedWithGoodFrames(true);
}

TEST(StagesTest, SceneCutsAndMotionAreReal) {
  // Scenes of 5 frames: frames 5 and 10 start new scenes.
  SyntheticSource src({320, 240, 5, 2});
  std::vector<FrameInput> frames;
  for (int i = 0; i < 12; ++i) {
    FrameInput f;
    f.seq = i;
    f.kind = PayloadKind::kRaw;
    Image img = src.Render(i);
    f.raw_width = 320, f.raw_height = 240, f.raw_format_code = 2;
    f.data = EncodeImage(img, Encoding::kRaw).value();
    frames.push_back(std::move(f));
  }
  auto got = RunFrames(std::move(frames));
  ASSERT_EQ(got.size(), 12u);
  for (int i = 0; i < 12; ++i) {
    ASSERT_EQ(got[i].status, FrameStatus::kOk);
    const bool cut = i == 5 || i == 10;
    EXPECT_EQ(got[i].enrichment.scene_cut, cut)
        << "frame " << i << " change " << got[i].enrichment.scene_change;
    if (i > 0 && !cut) {
      EXPECT_GT(got[i].enrichment.motion, 0.0) << "shapes move every frame";
      EXPECT_LT(got[i].enrichment.scene_change, 0.2);
    }
  }
  EXPECT_EQ(got[0].enrichment.motion, 0.0);
}

}  // namespace
}  // namespace framepipe

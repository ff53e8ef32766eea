// The stage callables a Pipeline runs. Stages are plain std::functions so tests can inject
// fakes; the standard ones (decode, analyse, enrich, temporal) are built by standard_stages.h.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "common/frame.h"
#include "common/image.h"

namespace framepipe {

// One frame's working state while it moves through the stages. Owned by the pipeline; a stage
// reads what earlier stages wrote and writes its own part. Exactly one stage body touches a
// context at a time.
struct FrameContext {
  FrameInput input;
  Image image;  // written by decode
  Image luma;   // written by analyse (BT.601 luma plane; enrichment reuses it)
  // Allocated by the pipeline on a worker just before the first stage runs (not on the
  // producer's thread, which only admits).
  std::unique_ptr<FrameResult> result;
};

// A parallel stage: decode, analyse or enrich. Returns a non-OK status to fail the frame
// (InvalidArgument -> INVALID_ARGUMENT, DeadlineExceeded -> DEADLINE_EXCEEDED, anything else ->
// INTERNAL). Exceptions are caught at the node boundary and become INTERNAL. Called
// concurrently for different frames.
using StageFn = std::function<absl::Status(FrameContext&)>;

// The ordered temporal stage of one stream: called for every result of the stream (OK or not)
// in frame order, one call at a time, before the result is handed to the stream's output.
using OrderedFn = std::function<void(FrameResult&)>;
// Makes the ordered stage of a new stream (each stream has its own state).
using OrderedStageFactory = std::function<OrderedFn()>;

// The analyse stage over a batch: frames of any streams that waited together (see
// PipelineOptions::batch), for a device backend that analyses many frames in one launch. Writes
// one status per frame into `statuses` (same size as `frames`, all OK on entry; the meaning of a
// non-OK status is as for StageFn). Runs on the pipeline's batch thread, one batch at a time, so
// pipeline workers never wait for it. An exception fails every frame of the batch (INTERNAL).
using BatchStageFn = std::function<void(const std::vector<FrameContext*>& frames,
                                        std::vector<absl::Status>& statuses)>;

struct Stages {
  StageFn decode;
  StageFn analyse;
  StageFn enrich;
  OrderedStageFactory ordered;  // may be empty: no temporal stage
  // Used instead of `analyse` when set and PipelineOptions::batch.max_frames > 1.
  BatchStageFn analyse_batch;
};

}  // namespace framepipe

// The ordered pipeline's graph without its resequencer, for the benchmark's "ordered vs
// unordered" figure only - production has one path, the ordered one. The same stage bodies on
// the same graph shape (decode -> analyse -> enrich function_nodes of `workers` concurrency in an
// arena of `workers` threads), the same per-stream credit window and global cap; results are
// delivered in completion order, with no temporal stage and no deadlines.
#pragma once

#include "bench/workloads.h"
#include "pipeline/stage.h"

namespace framepipe::bench {

PipelineRun RunUnorderedPipeline(const FrameSet& set, const PipelineConfig& config, Stages stages);

}  // namespace framepipe::bench

// Pass 2 on the CPU: the direction d = wᵀJ, block i of J written straight into out[i].
//
// Each column is Σ_k w_k·J[k, c], summed over k in order in float64 (free: the pass is bound by
// memory, and a weight beyond float32's range still gives its finite term w_k·g_k), then rounded
// once to the output's dtype (after adding the output's old value when accumulating).
// Columns are independent, so the result does not depend on the thread count. The columns are
// cut into chunks run in parallel; a chunk is walked in panels (the next one prefetched), and a
// panel kCombineVectors vectors of columns at a time, held in registers while the K rows stream past.
//
// Compiled once per instruction-set level (see cpu_dispatch.h); the arguments arrive checked.
#include "kernels/combine_columns.h"
#include "kernels/cpu_tensor.h"

namespace mtlkernels::cpu::MTLK_ISA {
namespace {

constexpr int64_t kChunkColumns = 1 << 14;  // columns per unit of parallel work
constexpr int64_t kPanelBytes = 32 << 10;   // K rows × panel columns of J prefetched at a time

// out[c] (+)= Σ_k w[k]·x[k·ld + c] for c < cols, panel by panel, each panel's successor (up to
// `ahead` more columns of the block) prefetched while the panel is combined.
template <typename In, typename Out>
void combine_chunk(const In* x, int64_t ld, int K, const double* w, Out* out, int64_t cols, int64_t ahead,
                   bool accumulate) {
  const int64_t panel = std::max<int64_t>(kCombineVectors * lanes<double>, kPanelBytes / (K * int64_t{sizeof(In)}));
  for (int64_t c0 = 0; c0 < cols; c0 += panel) {
    const int64_t width = std::min(panel, cols - c0);
    PrefetchCursor next_panel(x + c0 + width, ld, K, std::min(panel, cols + ahead - c0 - width));
    combine_columns(x + c0, ld, K, w, out + c0, width, accumulate, next_panel);
  }
}

}  // namespace

// out[i] (+)= wᵀ·block i (see cpu_dispatch.h).
void combine(const double* w, const std::vector<Block>& blocks, int K, DType dtype, const std::vector<void*>& out,
             const std::vector<DType>& out_types, bool accumulate) {
  const std::vector<Chunk> chunks = split_columns(blocks, kChunkColumns);
  int64_t elements = 0;
  for (const Block& block : blocks) elements += block.cols * K;
#pragma omp parallel for schedule(dynamic, 1) if (elements >= kParallelMinElements)
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& chunk = chunks[i];
    const Block& block = blocks[chunk.block];
    visit_dtype(dtype, [&](auto in_tag) {
      using In = decltype(in_tag);
      const In* x = static_cast<const In*>(block.data) + chunk.start;
      visit_dtype(out_types[chunk.block], [&](auto out_tag) {
        using Out = decltype(out_tag);
        Out* dst = static_cast<Out*>(out[chunk.block]) + chunk.start;
        combine_chunk<In, Out>(x, block.row_stride, K, w, dst, chunk.cols, block.cols - chunk.start - chunk.cols,
                               accumulate);
      });
    });
  }
}

}  // namespace mtlkernels::cpu::MTLK_ISA

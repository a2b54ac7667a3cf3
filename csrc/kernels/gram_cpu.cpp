// Pass 1 on the CPU: the Gram matrix Γ = J·Jᵀ (K×K, float64), reading J once.
//
// J arrives as blocks [K, n_i] (row stride free, columns contiguous). The columns are cut into
// panels: one panel of all K rows is converted to the accumulation type into an L2-resident buffer
// (while the next panel is prefetched), then all K(K+1)/2 products are added in 4×4 tiles of Γ
// held in vector registers, into per-lane running sums in double.
// Panels are grouped into chunks, the chunks dealt in order to a fixed number of slots, each with
// its own partial Γ, and the slots summed in order: the result depends on neither scheduling nor
// the thread count.
//
// Accuracy. float32/float64 J: products and sums in float64 (the product of two floats is exact
// in double). float16 J: products in float32 are exact (11 + 11 significant bits) and cannot
// overflow or underflow; they are summed in float32 along one panel (≤ 128 terms per lane), then
// in float64. bfloat16 J: the same while every row's largest |x| is 0 or in [2^-40, 2^40], where
// products are exact and far from float32's range limits; otherwise the pass is redone in float64.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <type_traits>

#include "kernels/cpu_tensor.h"
#include "registry.h"

namespace mtlkernels::cpu {
namespace {

namespace py = pybind11;

constexpr int kTileRows = 4;                  // Γ is computed in kTileRows × kTileRows tiles
constexpr int kSlots = 64;                    // partial Γs: results are identical for ≤ kSlots threads
constexpr int64_t kPartialBytes = 64 << 20;   // fewer slots when kSlots partial Γs would not fit
constexpr int64_t kPanelBytes = 64 << 10;     // one converted panel of all rows (L2-resident)
constexpr int64_t kMinPanelVectors = 16;
constexpr int64_t kMaxPanelVectors = 128;     // terms per lane summed in Acc before adding in double
constexpr int64_t kChunkColumns = 16384;      // columns per unit of parallel work (about)
constexpr float kSafeMin = 0x1p-40f;          // bfloat16 rows with max |x| in [kSafeMin, kSafeMax]
constexpr float kSafeMax = 0x1p40f;           // (or 0) are accumulated in float32

template <typename Acc>
using Vec = SimdOf<Acc, lanes<Acc>>;
// Per-lane running sums of one entry of Γ, kept in double across the panels of a slot.
template <typename Acc>
using LaneSums = SimdOf<double, lanes<Acc>>;

// Vectors of columns per panel: rows × vectors of Acc in about kPanelBytes.
template <typename Acc>
int64_t panel_vectors(int rows) {
  return std::clamp<int64_t>(kPanelBytes / (rows * int64_t{sizeof(Vec<Acc>)}), kMinPanelVectors, kMaxPanelVectors);
}

// scratch[r, c] = x[r·row_stride + c] as Acc for r < K, c < cols, zero-padded to whole vectors,
// while the next `ahead` columns of every row are prefetched (the next panel: the hardware
// prefetchers stop at 4 KiB pages, and would idle while the tiles run). For bfloat16 also raise
// row_max_bits[r] to the largest |x| seen (as bits: monotonic in |x|, NaN above all).
template <typename In, typename Acc>
void load_panel(const In* x, int64_t row_stride, int K, int64_t cols, int64_t ahead, int64_t ld, Acc* scratch,
                uint16_t* row_max_bits) {
  constexpr int n = lanes<Acc>;
  constexpr int64_t line = 64 / sizeof(In);
  const int64_t whole = cols / n * n, padded = (cols + n - 1) / n * n;
  for (int r = 0; r < K; ++r) {
    const In* src = x + r * row_stride;
    for (int64_t c = 0; c < ahead; c += line) __builtin_prefetch(src + cols + c, 0, 1);
    Acc* dst = scratch + r * ld;
    for (int64_t c = 0; c < whole; c += n) {
      const Vec<Acc> v = load_as<Acc, n>(src + c);
      std::memcpy(dst + c, &v, sizeof v);
    }
    for (int64_t c = whole; c < cols; ++c) dst[c] = to_float(src[c]);
    for (int64_t c = cols; c < padded; ++c) dst[c] = 0;
    if constexpr (std::is_same_v<In, BFloat16> && std::is_same_v<Acc, float>) {
      uint16_t m = row_max_bits[r];
      for (int64_t c = 0; c < cols; ++c) m = std::max<uint16_t>(m, src[c].bits & 0x7FFF);
      row_max_bits[r] = m;
    }
  }
}

// v, loaded into a register once: stops the compiler from folding the load into each of the four
// FMAs that use it (four loads per value would make the tile load-bound, not FMA-bound).
template <typename V>
inline V in_register(V v) {
#if defined(__AVX512F__) || defined(__AVX__)
  asm("" : "+v"(v));
#endif
  return v;
}

// sums[p·kTileRows + q] += per-lane Σ_c x[i0+p, c]·x[j0+q, c] over `vectors` whole vectors of
// columns, the products summed in Acc. Diagonal tiles (i0 == j0) fill q ≥ p only.
template <typename Acc, bool Diagonal>
void gram_tile(const Acc* rows_i, const Acc* rows_j, int64_t ld, int64_t vectors, LaneSums<Acc>* sums) {
  constexpr int n = lanes<Acc>;
  Vec<Acc> acc[kTileRows][kTileRows];
  for (int p = 0; p < kTileRows; ++p)
    for (int q = 0; q < kTileRows; ++q) acc[p][q] = Vec<Acc>{};
  for (int64_t v = 0; v < vectors; ++v) {
    Vec<Acc> a[kTileRows], b[kTileRows];
    for (int p = 0; p < kTileRows; ++p) a[p] = in_register(load_as<Acc, n>(rows_i + p * ld + v * n));
    for (int q = 0; q < kTileRows; ++q) b[q] = Diagonal ? a[q] : in_register(load_as<Acc, n>(rows_j + q * ld + v * n));
    for (int p = 0; p < kTileRows; ++p)
      for (int q = Diagonal ? p : 0; q < kTileRows; ++q) acc[p][q] += a[p] * b[q];
  }
  for (int p = 0; p < kTileRows; ++p)
    for (int q = Diagonal ? p : 0; q < kTileRows; ++q)
      sums[p * kTileRows + q] += __builtin_convertvector(acc[p][q], LaneSums<Acc>);
}

// Packed upper triangle of Γ: entry (i, j), i ≤ j, at row_offset[i] + j.
std::vector<int64_t> packed_row_offsets(int K) {
  std::vector<int64_t> offsets(K);
  for (int64_t i = 0, at = 0; i < K; at += K - i, ++i) offsets[i] = at - i;
  return offsets;
}

// What one thread works with: its converted panel and the lane sums of every tile of Γ.
template <typename Acc>
struct Workspace {
  int K, rows;
  int64_t ld;  // columns of the panel (a multiple of the vector width)
  Acc* panel;
  LaneSums<Acc>* sums;  // [tile][kTileRows·kTileRows], tiles (i0, j0 ≥ i0) in loop order
};

// partial += Γ of the chunks [first, last): panel by panel into the lane sums, then one sum over
// lanes per entry.
template <typename In, typename Acc>
void gram_slot(const std::vector<Block>& blocks, const Chunk* first, const Chunk* last, const Workspace<Acc>& ws,
               int64_t tiles, const std::vector<int64_t>& row_offset, double* partial, uint16_t* row_max_bits) {
  constexpr int n = lanes<Acc>;
  const int K = ws.K;
  std::fill(ws.sums, ws.sums + tiles * kTileRows * kTileRows, LaneSums<Acc>{});
  for (const Chunk* chunk = first; chunk != last; ++chunk) {
    const Block& block = blocks[chunk->block];
    const In* x = static_cast<const In*>(block.data) + chunk->start;
    for (int64_t c0 = 0; c0 < chunk->cols; c0 += ws.ld) {
      const int64_t cols = std::min(ws.ld, chunk->cols - c0);
      const int64_t ahead = std::min(ws.ld, block.cols - chunk->start - c0 - cols);
      load_panel<In, Acc>(x + c0, block.row_stride, K, cols, ahead, ws.ld, ws.panel, row_max_bits);
      const int64_t vectors = (cols + n - 1) / n;
      LaneSums<Acc>* sums = ws.sums;
      for (int i0 = 0; i0 < ws.rows; i0 += kTileRows) {
        const Acc* rows_i = ws.panel + i0 * ws.ld;
        gram_tile<Acc, true>(rows_i, rows_i, ws.ld, vectors, sums);
        sums += kTileRows * kTileRows;
        for (int j0 = i0 + kTileRows; j0 < ws.rows; j0 += kTileRows, sums += kTileRows * kTileRows)
          gram_tile<Acc, false>(rows_i, ws.panel + j0 * ws.ld, ws.ld, vectors, sums);
      }
    }
  }
  const LaneSums<Acc>* sums = ws.sums;
  for (int i0 = 0; i0 < ws.rows; i0 += kTileRows)
    for (int j0 = i0; j0 < ws.rows; j0 += kTileRows, sums += kTileRows * kTileRows)
      for (int p = 0; p < kTileRows && i0 + p < K; ++p)
        for (int q = (i0 == j0 ? p : 0); q < kTileRows && j0 + q < K; ++q) {
          double sum = 0.0;
          for (int l = 0; l < n; ++l) sum += sums[p * kTileRows + q][l];
          partial[row_offset[i0 + p] + j0 + q] = sum;
        }
}

// Γ (full symmetric K×K, row-major) accumulated in Acc. For bfloat16 J accumulated in float32,
// returns false (and Γ is to be discarded) when some row's max |x| is outside the safe range.
template <typename In, typename Acc>
bool gram_pass(const std::vector<Block>& blocks, int K, double* gram) {
  constexpr bool track_range = std::is_same_v<In, BFloat16> && std::is_same_v<Acc, float>;
  constexpr int n = lanes<Acc>;
  const int rows = (K + kTileRows - 1) / kTileRows * kTileRows;
  const int64_t tiles = int64_t{rows / kTileRows} * (rows / kTileRows + 1) / 2;
  int64_t widest = 0, elements = 0;
  for (const Block& block : blocks) {
    widest = std::max(widest, block.cols);
    elements += block.cols * K;
  }
  const int64_t ld = std::min(panel_vectors<Acc>(rows), (widest + n - 1) / n) * n;
  const std::vector<Chunk> chunks = split_columns(blocks, std::max<int64_t>(1, kChunkColumns / ld) * ld);
  const int64_t pairs = int64_t{K} * (K + 1) / 2;
  const int slots = static_cast<int>(std::min<int64_t>(
      {static_cast<int64_t>(chunks.size()), kSlots, std::max<int64_t>(1, kPartialBytes / (pairs * 8))}));
  const std::vector<int64_t> row_offset = packed_row_offsets(K);
  std::vector<double> partials(static_cast<size_t>(slots) * pairs, 0.0);
  std::vector<uint16_t> slot_max_bits(track_range ? static_cast<size_t>(slots) * K : 0, 0);

  const bool parallel = elements >= kParallelMinElements;
  const int threads = parallel ? omp_get_max_threads() : 1;
  const size_t panel_size = static_cast<size_t>(rows) * ld, sums_size = tiles * kTileRows * kTileRows;
  AlignedBuffer<Acc> panels(panel_size * threads);  // rows ≥ K stay zero
  AlignedBuffer<LaneSums<Acc>> sums(sums_size * threads);

#pragma omp parallel num_threads(threads) if (parallel)
  {
    const int t = omp_get_thread_num();
    const Workspace<Acc> ws{K, rows, ld, panels.get() + panel_size * t, sums.get() + sums_size * t};
#pragma omp for schedule(dynamic, 1)
    for (int s = 0; s < slots; ++s) {
      const size_t first = chunks.size() * s / slots, last = chunks.size() * (s + 1) / slots;
      gram_slot<In, Acc>(blocks, chunks.data() + first, chunks.data() + last, ws, tiles, row_offset,
                         partials.data() + static_cast<size_t>(s) * pairs,
                         track_range ? slot_max_bits.data() + static_cast<size_t>(s) * K : nullptr);
    }
  }

  if constexpr (track_range) {
    for (int r = 0; r < K; ++r) {
      uint16_t bits = 0;
      for (int s = 0; s < slots; ++s) bits = std::max(bits, slot_max_bits[static_cast<size_t>(s) * K + r]);
      const float max_abs = to_float(BFloat16{bits});
      if (max_abs != 0.0f && !(max_abs >= kSafeMin && max_abs <= kSafeMax)) return false;
    }
  }
  for (int i = 0; i < K; ++i)
    for (int j = i; j < K; ++j) {
      double sum = 0.0;
      for (int s = 0; s < slots; ++s) sum += partials[static_cast<size_t>(s) * pairs + row_offset[i] + j];
      gram[int64_t{i} * K + j] = gram[int64_t{j} * K + i] = sum;
    }
  return true;
}

// Γ of the blocks into the float64 [K, K] buffer at gram_ptr (see the launcher, mtlkernels/gram.py).
void gram_cpu(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& cols,
              const std::vector<int64_t>& row_strides, int64_t K, const std::string& dtype, uintptr_t gram_ptr) {
  if (K < 1 || K > (int64_t{1} << 16))
    throw std::invalid_argument("gram_cpu: K = " + std::to_string(K) + " is outside [1, 65536]");
  if (gram_ptr == 0) throw std::invalid_argument("gram_cpu: the output pointer is null");
  const std::vector<Block> blocks = make_blocks(pointers, cols, row_strides);
  const DType type = parse_dtype(dtype, "J");
  double* gram = reinterpret_cast<double*>(gram_ptr);
  const int k = static_cast<int>(K);
  py::gil_scoped_release release;
  switch (type) {
    case DType::Float32:
      gram_pass<float, double>(blocks, k, gram);
      break;
    case DType::Float64:
      gram_pass<double, double>(blocks, k, gram);
      break;
    case DType::Float16:
      gram_pass<Half, float>(blocks, k, gram);
      break;
    case DType::BFloat16:
      if (!gram_pass<BFloat16, float>(blocks, k, gram)) gram_pass<BFloat16, double>(blocks, k, gram);
      break;
  }
}

// The memory floor the passes are benchmarked against: Σ of every element of J, read once in long
// contiguous runs (rows × 64 Ki-element runs in parallel, four vector accumulators per run).
double read_floor_cpu(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& cols,
                      const std::vector<int64_t>& row_strides, int64_t K, const std::string& dtype) {
  constexpr int64_t kRun = 1 << 16;
  const std::vector<Block> blocks = make_blocks(pointers, cols, row_strides);
  std::vector<Chunk> runs;
  for (const Chunk& chunk : split_columns(blocks, kRun))
    for (int64_t r = 0; r < K; ++r) runs.push_back({chunk.block, chunk.start + r * blocks[chunk.block].row_stride, chunk.cols});
  const DType type = parse_dtype(dtype, "J");
  py::gil_scoped_release release;
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (size_t i = 0; i < runs.size(); ++i) {
    visit_dtype(type, [&](auto tag) {
      using In = decltype(tag);
      using Acc = std::conditional_t<std::is_same_v<In, double>, double, float>;
      constexpr int n = lanes<Acc>;
      const In* x = static_cast<const In*>(blocks[runs[i].block].data) + runs[i].start;
      SimdOf<Acc, n> acc[4] = {};
      int64_t c = 0;
      for (; c + 4 * n <= runs[i].cols; c += 4 * n)
        for (int v = 0; v < 4; ++v) acc[v] += load_as<Acc, n>(x + c + v * n);
      double sum = 0.0;
      for (; c < runs[i].cols; ++c) sum += to_float(x[c]);
      for (int v = 0; v < 4; ++v)
        for (int l = 0; l < n; ++l) sum += acc[v][l];
      total += sum;
    });
  }
  return total;
}

Registration reg([](py::module_& m) {
  m.def("gram_cpu", &gram_cpu, py::arg("pointers"), py::arg("cols"), py::arg("row_strides"), py::arg("K"),
        py::arg("dtype"), py::arg("gram_ptr"),
        "Γ = J·Jᵀ (float64, full K×K) of the blocks [K, cols[i]] at pointers[i] (row stride row_strides[i] "
        "elements, unit column stride, dtype float32/float64/float16/bfloat16) into the buffer at gram_ptr.");
  m.def("read_floor_cpu", &read_floor_cpu, py::arg("pointers"), py::arg("cols"), py::arg("row_strides"),
        py::arg("K"), py::arg("dtype"),
        "Σ of every element of the blocks (as gram_cpu takes them), read once: the benchmarks' memory floor.");
});

}  // namespace
}  // namespace mtlkernels::cpu

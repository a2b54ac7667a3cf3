// Pass 1 on the CPU: the Gram matrix Γ = J·Jᵀ (K×K, float64), reading J once.
//
// J arrives as blocks [K, n_i] (row stride free, columns contiguous). The columns are cut into
// panels of all K rows (≈ kPanelBytes, L1-resident). A panel is read in place when J holds what
// the tiles multiply, else converted once into a buffer; all K(K+1)/2 products are then added in
// 4×4 tiles of Γ held in vector registers (with 16 registers, an off-diagonal tile in two 2×4
// halves), into per-lane running sums in double, while the tiles' loops prefetch the next panel a
// line at a time. Panels are grouped into chunks, the chunks dealt in order to a fixed number of
// slots, each with its own partial Γ, and the slots summed in order: the result depends on
// neither scheduling nor the thread count.
//
// Accuracy, as |Γ̂ᵢⱼ − Γᵢⱼ| / (‖gᵢ‖‖gⱼ‖):
// - float64 J, and float32 J at every level but AVX2: products and sums in float64 (the product of
//   two floats is exact in double): ~1e-13 at N = 1e7.
// - float32 J at the AVX2 level (16 vector registers, no AVX-512), N ≥ 2^18 columns: products
//   and sums in float32 tiles, at twice float64's FMA rate; each float32 accumulator sums
//   ≤ kRunVectors = 32 steps, then is added into the float64 lane sums. The recursive-summation
//   bound gives ≤ 33·2^-24 ≈ 2e-6; the rounding errors are random in sign, so on random J the
//   error is ~32·2^-24/√(3N): measured 2e-10 at N = 1e7, 4e-9 at N = 1e5 (docs/kernels.md), hence
//   float64 below 2^18 columns. Kept when Γ shows that no float32 product or run sum overflowed
//   and that the products lost to underflow are negligible (see float32_tiles_hold); otherwise
//   (a NaN/Inf in J included) the pass is redone in float64.
// - float16 J: products in float32 are exact (11 + 11 significant bits) and cannot overflow or
//   underflow; they are summed in float32 over ≤ 32 steps per lane, then in float64.
// - bfloat16 J: the same (through AVX512-BF16 dot products where available: ≤ 64 terms per lane)
//   while every row's largest |x| is 0 or in [2^-32, 2^32], tracked during the pass, where no
//   float32 product or run sum overflows and the products flushed to zero are negligible;
//   otherwise redone in float64.
//
// Compiled once per instruction-set level (see cpu_dispatch.h); the arguments arrive checked.
#include <cmath>
#include <type_traits>

#include "kernels/combine_columns.h"
#include "kernels/cpu_tensor.h"

namespace mtlkernels::cpu::MTLK_ISA {
namespace {

constexpr int kTileRows = 4;                  // Γ is computed in kTileRows × kTileRows tiles
#if defined(__AVX512F__)
constexpr int kSubRows = 4;                   // rows of an off-diagonal tile multiplied at once: with 32
#else                                         // vector registers 4 × 4 accumulators + 8 rows; with 16,
constexpr int kSubRows = 2;                   // 2 × 4 accumulators + 6 rows (a 4 × 4 tile in two halves)
#endif
// float32 J in float32 tiles (the AVX2 level: twice float64's FMA rate, and the AVX2 pass is
// compute-bound from K ≈ 8); other levels multiply float32 J in float64.
#if defined(__AVX2__) && !defined(__AVX512F__)
constexpr bool kFloat32Tiles = true;
#else
constexpr bool kFloat32Tiles = false;
#endif
constexpr int kSlots = 64;                    // partial Γs: results are identical for ≤ kSlots threads
constexpr int64_t kPartialBytes = 64 << 20;   // fewer slots when kSlots partial Γs would not fit
constexpr int64_t kPanelBytes = 24 << 10;     // one panel of all rows, as the tiles read it (L1-resident)
constexpr int64_t kMinPanelVectors = 16;
constexpr int64_t kMaxPanelVectors = 128;
constexpr int64_t kRunVectors = 32;           // a float32 accumulator sums ≤ 32 steps, then adds into float64
constexpr int64_t kChunkColumns = 16384;      // columns per unit of parallel work (about)
constexpr float kSafeMin = 0x1p-32f;          // bfloat16 J is summed in float32 when every row's max
constexpr float kSafeMax = 0x1p32f;           // |x| is 0 or in [kSafeMin, kSafeMax]
constexpr double kFloat32TileMinGram = 0x1p-90;  // float32 J: Γᵢᵢ ≥ N·2^-90 keeps the float32 tiles' Γ
// float32 J takes the float32 tiles from this many columns: their random rounding errors,
// ~32·2^-24/√(3N) of ‖gᵢ‖‖gⱼ‖, stay ≲ 2e-9 there, and a shorter pass takes little time anyway.
constexpr int64_t kFloat32TileMinColumns = int64_t{1} << 18;

// v, loaded into a register once: stops the compiler from folding the load into each of the four
// FMAs that use it (four loads per value would make the tile load-bound, not FMA-bound).
template <typename V>
inline V in_register(V v) {
#if defined(__AVX512F__) || defined(__AVX__)
  asm("" : "+v"(v));
#endif
  return v;
}

// How a tile multiplies (Math: double, float, WidenedFloat or BFloat16): the element type it
// reads, how a vector of `columns` columns of one row is loaded, acc += a·b in `lanes` lanes
// (each lane summing the products of its columns), and how many steps (`run`) an accumulator sums
// before it is added into the float64 lane sums (float32 accumulators: kRunVectors).
template <typename Math>
struct TileMath {  // float64 or float32 elements, one column per lane, FMA
  using Element = Math;
  static constexpr int columns = lanes<Math>, lanes = columns;
  static constexpr int64_t run = std::is_same_v<Math, double> ? INT64_MAX : kRunVectors;
  using Vector = SimdOf<Math, columns>;
  using Acc = Vector;
  static Vector load(const Element* p) { return in_register(load_as<Math, columns>(p)); }
  static Acc mac(Acc acc, Vector a, Vector b) { return acc + a * b; }
};

struct WidenedFloat;  // float32 elements, converted to float64 as they are loaded
template <>
struct TileMath<WidenedFloat> : TileMath<double> {
  using Element = float;
  static Vector load(const float* p) { return in_register(load_as<double, columns>(p)); }
};

// The AVX-512 build has bfloat16 tiles through the AVX512-BF16 dot product, compiled for that
// extension function by function (the tile functions only), used where the CPU has it.
#if defined(__AVX512F__)
#define MTLK_BF16_TILES 1
#define MTLK_BF16_TARGET __attribute__((target("avx512bf16")))
template <>
struct TileMath<BFloat16> {  // bfloat16 pairs: lane l sums x[2l]·y[2l] + x[2l+1]·y[2l+1] in float32
  using Element = BFloat16;
  static constexpr int columns = 32, lanes = 16;
  static constexpr int64_t run = kRunVectors;
  using Vector = __m512bh;
  using Acc = __m512;
  MTLK_BF16_TARGET static inline Vector load(const BFloat16* p) {
    return in_register((__m512bh)_mm512_loadu_si512(p));
  }
  MTLK_BF16_TARGET static inline Acc mac(Acc acc, Vector a, Vector b) { return _mm512_dpbf16_ps(acc, a, b); }
};
#endif

template <typename Math>
using ElementOf = typename TileMath<Math>::Element;

// Per-lane running sums of one entry of Γ, in double across the panels of a slot.
template <typename Math>
using LaneSums = SimdOf<double, TileMath<Math>::lanes>;

// sum += acc lane by lane, in float64.
template <typename Acc, int n>
inline void add_lanes(SimdOf<double, n>& sum, Acc acc) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (n == 8 && std::is_same_v<Acc, SimdOf<float, 8>>) {  // GCC's generic widening shuffles badly
    const __m256 a = reinterpret_cast<__m256>(acc);
    double* out = reinterpret_cast<double*>(&sum);
    _mm256_store_pd(out, _mm256_add_pd(_mm256_load_pd(out), _mm256_cvtps_pd(_mm256_castps256_ps128(a))));
    _mm256_store_pd(out + 4, _mm256_add_pd(_mm256_load_pd(out + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1))));
    return;
  }
#endif
  sum += __builtin_convertvector(acc, SimdOf<double, n>);
}

// sums[p·kTileRows + q] += per lane Σ x[i0+p, c]·x[j0+q, c] for p < RI, q < RJ over `vectors`
// vectors of columns (rows ld elements apart), prefetching `prefetches` lines per vector; the
// register accumulators are added into sums every TileMath<Math>::run steps.
// Diagonal tiles (i0 == j0) fill q ≥ p only.
template <typename Math, bool Diagonal, int RI, int RJ>
__attribute__((always_inline)) inline void tile_body(const ElementOf<Math>* rows_i, const ElementOf<Math>* rows_j,
                                                     int64_t ld, int64_t vectors, LaneSums<Math>* sums,
                                                     PrefetchCursor& prefetch, int prefetches) {
  using T = TileMath<Math>;
  PrefetchCursor cursor = prefetch;  // held in registers through the loop
  for (int64_t v0 = 0; v0 < vectors; v0 += T::run) {
    const int64_t v1 = vectors - v0 > T::run ? v0 + T::run : vectors;
    typename T::Acc acc[RI][RJ];
    for (int p = 0; p < RI; ++p)
      for (int q = 0; q < RJ; ++q) acc[p][q] = typename T::Acc{};
    for (int64_t v = v0; v < v1; ++v) {
      typename T::Vector a[RI], b[RJ];
      for (int p = 0; p < RI; ++p) a[p] = T::load(rows_i + p * ld + v * T::columns);
      for (int q = 0; q < RJ; ++q) b[q] = Diagonal ? a[q] : T::load(rows_j + q * ld + v * T::columns);
      for (int p = 0; p < RI; ++p)
        for (int q = Diagonal ? p : 0; q < RJ; ++q) acc[p][q] = T::mac(acc[p][q], a[p], b[q]);
      for (int i = 0; i < prefetches; ++i) cursor.step();
    }
    for (int p = 0; p < RI; ++p)
      for (int q = Diagonal ? p : 0; q < RJ; ++q)
        add_lanes<typename T::Acc, T::lanes>(sums[p * kTileRows + q], acc[p][q]);
  }
  prefetch = cursor;
}

template <typename Math, bool Diagonal, int RI, int RJ>
void gram_tile(const ElementOf<Math>* rows_i, const ElementOf<Math>* rows_j, int64_t ld, int64_t vectors,
               LaneSums<Math>* sums, PrefetchCursor& prefetch, int prefetches) {
  tile_body<Math, Diagonal, RI, RJ>(rows_i, rows_j, ld, vectors, sums, prefetch, prefetches);
}

#if defined(MTLK_BF16_TILES)
template <bool Diagonal, int RI, int RJ>
__attribute__((target("avx512bf16"))) void gram_tile_bf16(const BFloat16* rows_i, const BFloat16* rows_j, int64_t ld,
                                                          int64_t vectors, LaneSums<BFloat16>* sums,
                                                          PrefetchCursor& prefetch, int prefetches) {
  tile_body<BFloat16, Diagonal, RI, RJ>(rows_i, rows_j, ld, vectors, sums, prefetch, prefetches);
}
#endif

template <typename Math>
using TileFn = void (*)(const ElementOf<Math>*, const ElementOf<Math>*, int64_t, int64_t, LaneSums<Math>*,
                        PrefetchCursor&, int);

// The tile function for Math (the bfloat16 tiles are compiled for AVX512-BF16).
template <typename Math, bool Diagonal, int RI, int RJ>
TileFn<Math> tile_fn() {
#if defined(MTLK_BF16_TILES)
  if constexpr (std::is_same_v<Math, BFloat16>)
    return &gram_tile_bf16<Diagonal, RI, RJ>;
  else
#endif
    return &gram_tile<Math, Diagonal, RI, RJ>;
}

template <typename Math, int RI>
TileFn<Math> off_diagonal_tile_of_width(int rj) {
  switch (rj) {
    case 1: return tile_fn<Math, false, RI, 1>();
    case 2: return tile_fn<Math, false, RI, 2>();
    case 3: return tile_fn<Math, false, RI, 3>();
    default: return tile_fn<Math, false, RI, kTileRows>();
  }
}

// The diagonal tile of r live rows (only the last group of rows has fewer than kTileRows).
template <typename Math>
TileFn<Math> diagonal_tile(int r) {
  switch (r) {
    case 1: return tile_fn<Math, true, 1, 1>();
    case 2: return tile_fn<Math, true, 2, 2>();
    case 3: return tile_fn<Math, true, 3, 3>();
    default: return tile_fn<Math, true, kTileRows, kTileRows>();
  }
}

// The off-diagonal tile of ri ≤ kSubRows × rj live rows.
template <typename Math>
TileFn<Math> off_diagonal_tile(int ri, int rj) {
  switch (ri) {
    case 1: return off_diagonal_tile_of_width<Math, 1>(rj);
    case 2: return off_diagonal_tile_of_width<Math, 2>(rj);
    case 3: return off_diagonal_tile_of_width<Math, 3>(rj);
    default: return off_diagonal_tile_of_width<Math, kSubRows>(rj);
  }
}

// sums += every tile of Γ over `vectors` vectors of columns of the K rows at x (ld apart), the
// prefetches spread evenly over the tiles' loops.
// An off-diagonal tile is multiplied kSubRows of its rows at a time.
template <typename Math>
void add_tiles(const ElementOf<Math>* x, int64_t ld, int K, int64_t vectors, LaneSums<Math>* sums,
               PrefetchCursor& prefetch) {
  const int64_t groups = (K + kTileRows - 1) / kTileRows;
  const int64_t calls = groups + groups * (groups - 1) / 2 * ((kTileRows + kSubRows - 1) / kSubRows);
  const int prefetches = static_cast<int>((prefetch.lines_left() + calls * vectors - 1) / (calls * vectors));
  for (int i0 = 0; i0 < K; i0 += kTileRows) {
    const int ri = std::min(kTileRows, K - i0);
    diagonal_tile<Math>(ri)(x + i0 * ld, x + i0 * ld, ld, vectors, sums, prefetch, prefetches);
    sums += kTileRows * kTileRows;
    for (int j0 = i0 + kTileRows; j0 < K; j0 += kTileRows, sums += kTileRows * kTileRows) {
      const int rj = std::min(kTileRows, K - j0);
      for (int p0 = 0; p0 < ri; p0 += kSubRows)
        off_diagonal_tile<Math>(std::min(kSubRows, ri - p0), rj)(x + (i0 + p0) * ld, x + j0 * ld, ld, vectors,
                                                                  sums + p0 * kTileRows, prefetch, prefetches);
    }
  }
}

// dst[r·ld + c] = x[r·row_stride + c] as Element for c < cols, zero up to `padded` columns.
template <typename In, typename Element>
void convert_rows(const In* x, int64_t row_stride, int K, int64_t cols, int64_t padded, int64_t ld, Element* dst) {
  for (int r = 0; r < K; ++r) {
    const In* src = x + r * row_stride;
    Element* row = dst + r * ld;
    if constexpr (std::is_same_v<In, Element>) {
      std::memcpy(static_cast<void*>(row), src, cols * sizeof(Element));
    } else {
      constexpr int n = lanes<Element>;
      int64_t c = 0;
      for (; c + n <= cols; c += n) {
        const SimdOf<Element, n> v = load_as<Element, n>(src + c);
        std::memcpy(row + c, &v, sizeof v);
      }
      for (; c < cols; ++c) row[c] = to_float(src[c]);
    }
    std::memset(static_cast<void*>(row + cols), 0, (padded - cols) * sizeof(Element));
  }
}

// What one thread works with: a panel buffer for converted (or tail) columns, and the lane sums.
template <typename Math>
struct Workspace {
  int K;
  int64_t ld;                 // columns per panel (whole vectors)
  ElementOf<Math>* panel;     // [K][ld]
  LaneSums<Math>* sums;       // [tile][kTileRows·kTileRows], tiles (i0, j0 ≥ i0) in loop order
};

// sums += Γ of the K × cols panel at x (rows row_stride apart): read in place when J holds the
// tiles' element type, else converted into the workspace first; the columns past the last whole
// vector are copied, zero-padded, into the workspace either way. `prefetch` walks the next panel.
template <typename In, typename Math>
void add_panel(const In* x, int64_t row_stride, int64_t cols, const Workspace<Math>& ws, PrefetchCursor& prefetch) {
  constexpr int columns = TileMath<Math>::columns;
  const int64_t whole = cols / columns, padded = (cols + columns - 1) / columns * columns;
  if constexpr (std::is_same_v<In, ElementOf<Math>>) {
    if (whole > 0) add_tiles<Math>(x, row_stride, ws.K, whole, ws.sums, prefetch);
    if (padded > whole * columns) {
      convert_rows(x + whole * columns, row_stride, ws.K, cols - whole * columns, columns, ws.ld, ws.panel);
      add_tiles<Math>(ws.panel, ws.ld, ws.K, 1, ws.sums, prefetch);
    }
  } else {
    convert_rows(x, row_stride, ws.K, cols, padded, ws.ld, ws.panel);
    add_tiles<Math>(ws.panel, ws.ld, ws.K, padded / columns, ws.sums, prefetch);
  }
}

// |x| as the bits of a float32 with the sign cleared: monotonic in |x|, NaN above every number.
inline uint32_t magnitude_bits(BFloat16 x) { return static_cast<uint32_t>(x.bits & 0x7FFF) << 16; }

// row_max_bits[r] = max(row_max_bits[r], magnitude_bits of every x[r, c]) over c < cols.
template <typename In>
void track_row_max(const In* x, int64_t row_stride, int K, int64_t cols, uint32_t* row_max_bits) {
  for (int r = 0; r < K; ++r) {
    uint32_t m = row_max_bits[r];
    const In* src = x + r * row_stride;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, magnitude_bits(src[c]));
    row_max_bits[r] = m;
  }
}

// Whether float32 tiles sum J of element type In only where its rows are in range (see gram_pass;
// float32 J is checked on Γ instead, see float32_tiles_hold).
template <typename In, typename Math>
constexpr bool kTracksRange = std::is_same_v<In, BFloat16> && !std::is_same_v<Math, double>;

// Packed upper triangle of Γ: entry (i, j), i ≤ j, at row_offset[i] + j.
std::vector<int64_t> packed_row_offsets(int K) {
  std::vector<int64_t> offsets(K);
  for (int64_t i = 0, at = 0; i < K; at += K - i, ++i) offsets[i] = at - i;
  return offsets;
}

// Columns [col0, col0 + cols) of the direction for block b, from the K × cols panel at x (rows
// row_stride apart), which the Gram tiles have just read: it is in cache.
template <typename In>
void combine_panel(const In* x, int64_t row_stride, int K, int64_t cols, const Combination& combination, int64_t b,
                   int64_t col0) {
  PrefetchCursor nothing;
  visit_dtype(combination.out_types[b], [&](auto tag) {
    using Out = decltype(tag);
    combine_columns<In, Out>(x, row_stride, K, combination.w, static_cast<Out*>(combination.out[b]) + col0, cols,
                             combination.accumulate, nothing);
  });
}

// partial = Γ of the chunks [first, last): panel by panel into the lane sums, then one sum over
// lanes per entry. For float32/bfloat16 J summed in float32, row_max_bits tracks each row's max |x|.
// With a combination, each panel's columns of the direction are written after its tiles.
template <typename In, typename Math>
void gram_slot(const std::vector<Block>& blocks, const Chunk* first, const Chunk* last,
               const Workspace<Math>& ws, int64_t tiles, const std::vector<int64_t>& row_offset, double* partial,
               uint32_t* row_max_bits, const Combination* combination) {
  const int K = ws.K;
  std::fill(ws.sums, ws.sums + tiles * kTileRows * kTileRows, LaneSums<Math>{});
  for (const Chunk* chunk = first; chunk != last; ++chunk) {
    const Block& block = blocks[chunk->block];
    const In* x = static_cast<const In*>(block.data) + chunk->start;
    for (int64_t c0 = 0; c0 < chunk->cols; c0 += ws.ld) {
      const int64_t cols = std::min(ws.ld, chunk->cols - c0);
      PrefetchCursor next_panel(x + c0 + cols, block.row_stride, K,
                                std::min(ws.ld, block.cols - chunk->start - c0 - cols));
      if constexpr (kTracksRange<In, Math>) track_row_max(x + c0, block.row_stride, K, cols, row_max_bits);
      add_panel<In, Math>(x + c0, block.row_stride, cols, ws, next_panel);
      if (combination)
        combine_panel(x + c0, block.row_stride, K, cols, *combination, chunk->block, chunk->start + c0);
    }
  }
  const LaneSums<Math>* sums = ws.sums;
  for (int i0 = 0; i0 < K; i0 += kTileRows)
    for (int j0 = i0; j0 < K; j0 += kTileRows, sums += kTileRows * kTileRows)
      for (int p = 0; p < kTileRows && i0 + p < K; ++p)
        for (int q = (i0 == j0 ? p : 0); q < kTileRows && j0 + q < K; ++q) {
          double sum = 0.0;
          for (int l = 0; l < TileMath<Math>::lanes; ++l) sum += sums[p * kTileRows + q][l];
          partial[row_offset[i0 + p] + j0 + q] = sum;
        }
}

// Γ (full symmetric K×K, row-major) with tiles of the given Math. For bfloat16 J summed in float32,
// returns false (and Γ is to be discarded) when some row's max |x| is outside the safe range
// [kSafeMin, kSafeMax] (0 aside): there no float32 product or run sum overflows, and the products
// lost to underflow (each < 2^-126) are negligible beside max|xᵢ|·max|xⱼ| ≥ 2^-64; a NaN/Inf is
// out of range too.
template <typename In, typename Math>
bool gram_pass(const std::vector<Block>& blocks, int K, double* gram, const Combination* combination = nullptr) {
  constexpr bool track_range = kTracksRange<In, Math>;
  constexpr int columns = TileMath<Math>::columns;
  const int64_t groups = (K + kTileRows - 1) / kTileRows, tiles = groups * (groups + 1) / 2;
  int64_t widest = 0, elements = 0;
  for (const Block& block : blocks) {
    widest = std::max(widest, block.cols);
    elements += block.cols * K;
  }
  const int64_t vector_bytes = columns * int64_t{sizeof(ElementOf<Math>)};
  const int64_t panel_vectors =
      std::clamp<int64_t>(kPanelBytes / (K * vector_bytes), kMinPanelVectors, kMaxPanelVectors);
  const int64_t ld = std::min(panel_vectors, (widest + columns - 1) / columns) * columns;
  const std::vector<Chunk> chunks = split_columns(blocks, std::max<int64_t>(1, kChunkColumns / ld) * ld);
  const int64_t pairs = int64_t{K} * (K + 1) / 2;
  const int slots = static_cast<int>(std::min<int64_t>(
      {static_cast<int64_t>(chunks.size()), kSlots, std::max<int64_t>(1, kPartialBytes / (pairs * 8))}));
  const std::vector<int64_t> row_offset = packed_row_offsets(K);
  std::vector<double> partials(static_cast<size_t>(slots) * pairs, 0.0);
  std::vector<uint32_t> slot_max_bits(track_range ? static_cast<size_t>(slots) * K : 0, 0);

  const bool parallel = elements >= kParallelMinElements;
  const int threads = parallel ? omp_get_max_threads() : 1;
  const size_t panel_size = static_cast<size_t>(K) * ld, sums_size = tiles * kTileRows * kTileRows;
  AlignedBuffer<ElementOf<Math>> panels(panel_size * threads);
  AlignedBuffer<LaneSums<Math>> sums(sums_size * threads);

#pragma omp parallel num_threads(threads) if (parallel)
  {
    const int t = omp_get_thread_num();
    const Workspace<Math> ws{K, ld, panels.get() + panel_size * t, sums.get() + sums_size * t};
#pragma omp for schedule(dynamic, 1)
    for (int s = 0; s < slots; ++s) {
      const size_t first = chunks.size() * s / slots, last = chunks.size() * (s + 1) / slots;
      gram_slot<In, Math>(blocks, chunks.data() + first, chunks.data() + last, ws, tiles, row_offset,
                          partials.data() + static_cast<size_t>(s) * pairs,
                          track_range ? slot_max_bits.data() + static_cast<size_t>(s) * K : nullptr, combination);
    }
  }

  if constexpr (track_range) {
    for (int r = 0; r < K; ++r) {
      uint32_t bits = 0;
      for (int s = 0; s < slots; ++s) bits = std::max(bits, slot_max_bits[static_cast<size_t>(s) * K + r]);
      float max_abs;
      std::memcpy(&max_abs, &bits, sizeof max_abs);
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

}  // namespace

// Whether Γ from float32 J summed in float32 tiles stands, read off Γ itself (no pass over J but
// for a zero diagonal): every entry finite — an overflowing product xᵢxⱼ needs xᵢ² or xⱼ² to
// overflow (and a NaN/Inf in J makes its row's diagonal non-finite); and every Γᵢᵢ either ≥ N·2^-90,
// so that the products lost to underflow (each < 2^-126, N of them at most) stay below
// 2^-36·‖gᵢ‖‖gⱼ‖, or 0 for a row that is all zeros (a zero Γᵢᵢ of a non-zero row means every one of
// its products underflowed). Otherwise the pass is redone in float64.
int64_t total_columns(const std::vector<Block>& blocks) {
  int64_t N = 0;
  for (const Block& block : blocks) N += block.cols;
  return N;
}

bool float32_tiles_hold(const std::vector<Block>& blocks, int K, const double* gram) {
  const int64_t N = total_columns(blocks);
  for (int64_t i = 0; i < int64_t{K} * K; ++i)
    if (!std::isfinite(gram[i])) return false;
  for (int r = 0; r < K; ++r) {
    const double diagonal = gram[int64_t{r} * K + r];
    if (diagonal >= static_cast<double>(N) * kFloat32TileMinGram) continue;
    if (diagonal != 0.0) return false;
    for (const Block& block : blocks) {
      const float* row = static_cast<const float*>(block.data) + r * block.row_stride;
      for (int64_t c = 0; c < block.cols; ++c)
        if (row[c] != 0.0f) return false;
    }
  }
  return true;
}

// Γ of the blocks into gram, and the combination if asked (see cpu_dispatch.h). A pass redone in
// float64 (rows out of the float32 range) leaves the combination the first pass wrote.
void gram(const std::vector<Block>& blocks, int K, DType dtype, double* gram, bool bf16_dot,
          const Combination* combination) {
  switch (dtype) {
    case DType::Float32:
      if (kFloat32Tiles && total_columns(blocks) >= kFloat32TileMinColumns) {
        gram_pass<float, float>(blocks, K, gram, combination);
        if (!float32_tiles_hold(blocks, K, gram)) gram_pass<float, double>(blocks, K, gram);
      } else if (K <= 2 * kTileRows) {  // each row is loaded by at most two tiles: widen it as it is loaded
        gram_pass<float, WidenedFloat>(blocks, K, gram, combination);
      } else {
        gram_pass<float, double>(blocks, K, gram, combination);
      }
      break;
    case DType::Float64:
      gram_pass<double, double>(blocks, K, gram, combination);
      break;
    case DType::Float16:
      gram_pass<Half, float>(blocks, K, gram, combination);
      break;
    case DType::BFloat16: {  // summed in float32 (pairs of columns by the dot product) unless out of range
#if defined(MTLK_BF16_TILES)
      const bool in_range = bf16_dot ? gram_pass<BFloat16, BFloat16>(blocks, K, gram, combination)
                                     : gram_pass<BFloat16, float>(blocks, K, gram, combination);
#else
      (void)bf16_dot;
      const bool in_range = gram_pass<BFloat16, float>(blocks, K, gram, combination);
#endif
      if (!in_range) gram_pass<BFloat16, double>(blocks, K, gram);
      break;
    }
  }
}

// The memory floor the passes are benchmarked against: Σ of every element of J, read once in long
// contiguous runs (rows × 64 Ki-element runs in parallel, four vector accumulators per run).
double read_floor(const std::vector<Block>& blocks, int K, DType dtype) {
  constexpr int64_t kRun = 1 << 16;
  std::vector<Chunk> runs;
  for (const Chunk& chunk : split_columns(blocks, kRun))
    for (int64_t r = 0; r < K; ++r)
      runs.push_back({chunk.block, chunk.start + r * blocks[chunk.block].row_stride, chunk.cols});
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (size_t i = 0; i < runs.size(); ++i) {
    visit_dtype(dtype, [&](auto tag) {
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

}  // namespace mtlkernels::cpu::MTLK_ISA

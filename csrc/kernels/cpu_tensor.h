// What the CPU kernels share: the four element types with their conversions to and from
// float/double, one value or one vector at a time, the column chunks and the prefetcher. Included
// by the per-level builds only (see cpu_dispatch.h): everything here is in the level's namespace.
#pragma once
#if !defined(MTLK_ISA)
#error "cpu_tensor.h is compiled once per instruction-set level: define MTLK_ISA (see setup.py)"
#endif
#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "kernels/cpu_dispatch.h"

namespace mtlkernels::cpu::MTLK_ISA {

// Element types stored as their bits; arithmetic happens in float or double.
struct BFloat16 {
  uint16_t bits;
};
struct Half {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline double to_float(double x) { return x; }
inline float to_float(BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.bits) << 16;  // bf16 is the top half of a float
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float to_float(Half x) {
  _Float16 h;
  std::memcpy(&h, &x.bits, sizeof h);
  return static_cast<float>(h);
}

// Round a float/double to the storage type as torch does: round to nearest even, NaN stays NaN
// (a double bound for bfloat16/float16 is rounded to float first, as c10 does).
template <typename Out, typename T>
inline Out from_acc(T x) {
  if constexpr (std::is_same_v<Out, double> || std::is_same_v<Out, float>) {
    return static_cast<Out>(x);
  } else if constexpr (std::is_same_v<Out, BFloat16>) {
    const float f = static_cast<float>(x);
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    if (f != f) return BFloat16{static_cast<uint16_t>((bits >> 16) | 0x0040)};
    return BFloat16{static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)};
  } else {
    const _Float16 h = static_cast<_Float16>(static_cast<float>(x));
    Half out;
    std::memcpy(&out.bits, &h, sizeof h);
    return out;
  }
}

// The vector helpers below are inline and internal: their ABI on targets without AVX is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

// GCC vector of n Ts (n·sizeof(T) bytes; the compiler splits it over the target's registers).
template <typename T, int n>
struct Simd {
  typedef T type __attribute__((vector_size(n * sizeof(T))));
};
template <typename T, int n>
using SimdOf = typename Simd<T, n>::type;

// The widest vector the target has registers for (AVX-512: 64 bytes) holds lanes<T> Ts.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
template <typename T>
constexpr int lanes = kVectorBytes / sizeof(T);

// float16 ↔ float32 of n values: F16C/AVX-512 instructions where the target has them (GCC does
// not vectorise _Float16 conversions without AVX512-FP16), one value at a time otherwise.
template <int n>
inline SimdOf<float, n> half_to_float(const Half* p) {
  SimdOf<float, n> f;
#if defined(__AVX512F__)
  if constexpr (n % 16 == 0) {
    for (int i = 0; i < n; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
      const __m512 v = _mm512_maskz_cvtph_ps(static_cast<__mmask16>(-1), h);
      std::memcpy(reinterpret_cast<char*>(&f) + i * sizeof(float), &v, sizeof v);
    }
    return f;
  }
#endif
#if defined(__F16C__)
  if constexpr (n % 8 == 0) {
    for (int i = 0; i < n; i += 8) {
      const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
      std::memcpy(reinterpret_cast<char*>(&f) + i * sizeof(float), &v, sizeof v);
    }
    return f;
  }
#endif
  for (int i = 0; i < n; ++i) f[i] = to_float(p[i]);
  return f;
}

#if defined(__F16C__) || defined(__AVX512F__)
constexpr int kRoundToNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
#endif

template <int n>
inline void float_to_half(Half* p, SimdOf<float, n> f) {
#if defined(__AVX512F__)
  if constexpr (n % 16 == 0) {
    for (int i = 0; i < n; i += 16) {
      __m512 v;
      std::memcpy(&v, reinterpret_cast<const char*>(&f) + i * sizeof(float), sizeof v);
      const __m256i h = _mm512_maskz_cvtps_ph(static_cast<__mmask16>(-1), v, kRoundToNearest);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + i), h);
    }
    return;
  }
#endif
#if defined(__F16C__)
  if constexpr (n % 8 == 0) {
    for (int i = 0; i < n; i += 8) {
      __m256 v;
      std::memcpy(&v, reinterpret_cast<const char*>(&f) + i * sizeof(float), sizeof v);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i), _mm256_cvtps_ph(v, kRoundToNearest));
    }
    return;
  }
#endif
  for (int i = 0; i < n; ++i) p[i] = from_acc<Half>(f[i]);
}

// bfloat16 → float32 of n values: zero-extend each to 32 bits and shift it into the top half (AVX
// instructions where the target has them: GCC splits the generic vector version clumsily).
template <int n>
inline SimdOf<float, n> bfloat16_to_float(const BFloat16* p) {
  SimdOf<float, n> f;
#if defined(__AVX512F__)
  if constexpr (n % 16 == 0) {
    for (int i = 0; i < n; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
      const __mmask16 all = static_cast<__mmask16>(-1);  // masked forms: see widen()
      const __m512i v = _mm512_maskz_slli_epi32(all, _mm512_maskz_cvtepu16_epi32(all, h), 16);
      std::memcpy(reinterpret_cast<char*>(&f) + i * sizeof(float), &v, sizeof v);
    }
    return f;
  }
#endif
#if defined(__AVX2__)
  if constexpr (n % 8 == 0) {
    for (int i = 0; i < n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      const __m256i v = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
      std::memcpy(reinterpret_cast<char*>(&f) + i * sizeof(float), &v, sizeof v);
    }
    return f;
  }
#endif
  for (int i = 0; i < n; ++i) f[i] = to_float(p[i]);
  return f;
}

// float32 ↔ float64 of n values, eight to a 512-bit register with AVX-512 (GCC lowers the
// generic conversion in 256-bit halves plus shuffles). The masked forms (all lanes) avoid GCC 12's
// -Wmaybe-uninitialized inside the unmasked intrinsics.
template <int n>
inline SimdOf<double, n> widen(SimdOf<float, n> f) {
#if defined(__AVX512F__)
  if constexpr (n % 8 == 0) {
    SimdOf<double, n> d;
    for (int i = 0; i < n; i += 8) {
      __m256 part;
      std::memcpy(&part, reinterpret_cast<const char*>(&f) + i * sizeof(float), sizeof part);
      const __m512d wide = _mm512_maskz_cvtps_pd(static_cast<__mmask8>(-1), part);
      std::memcpy(reinterpret_cast<char*>(&d) + i * sizeof(double), &wide, sizeof wide);
    }
    return d;
  }
#endif
  return __builtin_convertvector(f, SimdOf<double, n>);
}

template <int n>
inline SimdOf<float, n> narrow(SimdOf<double, n> d) {
#if defined(__AVX512F__)
  if constexpr (n % 8 == 0) {
    SimdOf<float, n> f;
    for (int i = 0; i < n; i += 8) {
      __m512d part;
      std::memcpy(&part, reinterpret_cast<const char*>(&d) + i * sizeof(double), sizeof part);
      const __m256 small = _mm512_maskz_cvtpd_ps(static_cast<__mmask8>(-1), part);
      std::memcpy(reinterpret_cast<char*>(&f) + i * sizeof(float), &small, sizeof small);
    }
    return f;
  }
#endif
  return __builtin_convertvector(d, SimdOf<float, n>);
}

// n values of T as float32 (T float32 or float64).
template <int n, typename T>
inline SimdOf<float, n> as_float(SimdOf<T, n> v) {
  if constexpr (std::is_same_v<T, double>)
    return narrow<n>(v);
  else
    return v;
}

// n consecutive elements at p, converted to Acc (float or double).
template <typename Acc, int n, typename In>
inline SimdOf<Acc, n> load_as(const In* p) {
  if constexpr (std::is_same_v<In, Acc>) {
    SimdOf<Acc, n> v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else if constexpr (std::is_same_v<Acc, double>) {
    return widen<n>(load_as<float, n>(p));
  } else if constexpr (std::is_same_v<In, BFloat16>) {
    return bfloat16_to_float<n>(p);
  } else if constexpr (std::is_same_v<In, Half>) {
    return half_to_float<n>(p);
  } else {
    SimdOf<In, n> v;
    std::memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, SimdOf<Acc, n>);
  }
}

// Store n values to p, rounded to Out as from_acc does.
template <typename Out, int n, typename T>
inline void store_as(Out* p, SimdOf<T, n> v) {
  if constexpr (std::is_same_v<Out, BFloat16>) {
    const SimdOf<float, n> f = as_float<n, T>(v);
    SimdOf<uint32_t, n> bits;
    std::memcpy(&bits, &f, sizeof bits);
    const SimdOf<uint32_t, n> rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
    const SimdOf<uint32_t, n> quiet_nan = (bits >> 16) | 0x0040;
    const auto is_nan = f != f;
    const SimdOf<uint16_t, n> out = __builtin_convertvector(is_nan ? quiet_nan : rounded, SimdOf<uint16_t, n>);
    std::memcpy(p, &out, sizeof out);
  } else if constexpr (std::is_same_v<Out, Half>) {
    float_to_half<n>(p, as_float<n, T>(v));
  } else if constexpr (std::is_same_v<Out, float>) {
    const SimdOf<float, n> out = as_float<n, T>(v);
    std::memcpy(p, &out, sizeof out);
  } else {
    const SimdOf<Out, n> out = __builtin_convertvector(v, SimdOf<Out, n>);
    std::memcpy(p, &out, sizeof out);
  }
}

// Call fn(T{}) with T the element type named by dtype.
template <typename Fn>
inline auto visit_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float64:
      return fn(double{});
    case DType::Float16:
      return fn(Half{});
    case DType::BFloat16:
      return fn(BFloat16{});
    case DType::Float32:
    default:
      return fn(float{});
  }
}

// A range of columns of one block: the unit of parallel work.
struct Chunk {
  int64_t block;
  int64_t start;
  int64_t cols;
};

// Split every block into chunks of at most chunk_cols columns, in order; empty blocks give none.
inline std::vector<Chunk> split_columns(const std::vector<Block>& blocks, int64_t chunk_cols) {
  std::vector<Chunk> chunks;
  for (int64_t b = 0; b < static_cast<int64_t>(blocks.size()); ++b)
    for (int64_t start = 0; start < blocks[b].cols; start += chunk_cols)
      chunks.push_back({b, start, std::min(chunk_cols, blocks[b].cols - start)});
  return chunks;
}

// Prefetches K rows × `cols` columns of J (rows row_stride elements apart) into L2, one cache
// line per step(), meant to be called from inside a compute loop. A pass walks J panel by panel,
// K rows at once: the hardware prefetchers stop at 4 KiB pages (a panel row is about one page)
// and fall behind, and a burst of hundreds of prefetches would just wait for the few line-fill
// buffers. Spread over the work on the current panel, the next panel's lines keep the memory busy
// while the core computes.
class PrefetchCursor {
 public:
  PrefetchCursor() = default;
  template <typename In>
  PrefetchCursor(const In* x, int64_t row_stride, int K, int64_t cols)
      : row_(reinterpret_cast<const char*>(x)),
        row_stride_(row_stride * int64_t{sizeof(In)}),
        row_bytes_(cols * int64_t{sizeof(In)}),
        rows_left_(cols > 0 ? K : 0) {}

  // Lines still to fetch.
  int64_t lines_left() const {
    return rows_left_ == 0 ? 0 : (rows_left_ * row_bytes_ - offset_ + kLine - 1) / kLine;
  }

  void step() {
    if (rows_left_ == 0) return;
    __builtin_prefetch(row_ + offset_, 0, 1);
    offset_ += kLine;
    if (offset_ >= row_bytes_) {
      offset_ = 0;
      row_ += row_stride_;
      --rows_left_;
    }
  }

 private:
  static constexpr int64_t kLine = 64;
  const char* row_ = nullptr;
  int64_t row_stride_ = 0, row_bytes_ = 0, offset_ = 0;
  int rows_left_ = 0;
};

// Below this many elements of J a pass runs on the calling thread (a parallel region costs more).
constexpr int64_t kParallelMinElements = int64_t{1} << 18;

// A 64-byte-aligned buffer of n Ts, zero-filled.
template <typename T>
struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) : data(static_cast<T*>(std::aligned_alloc(64, bytes(n))), &std::free) {
    if (!data) throw std::bad_alloc();
    std::memset(data.get(), 0, bytes(n));
  }
  T* get() const { return data.get(); }

 private:
  static size_t bytes(size_t n) { return std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64); }
  std::unique_ptr<T, decltype(&std::free)> data;
};

}  // namespace mtlkernels::cpu::MTLK_ISA

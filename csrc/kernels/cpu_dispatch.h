// The CPU kernels' entry points, one set per instruction-set level.
//
// gram_cpu.cpp and combine_cpu.cpp are compiled once per level (setup.py), each time with that
// level's target flags and -DMTLK_ISA=<level>, which puts everything they define, and everything
// in cpu_tensor.h, into the namespace mtlkernels::cpu::<level>. cpu_dispatch.cpp, compiled for
// the portable baseline, checks the arguments, asks the CPU which levels it runs and calls the
// active level's functions. The levels share only plain types and this header's declarations;
// where two levels emit the same inline library function (std::vector internals), the linker keeps
// the first copy, and setup.py links the baseline objects first.
//
// Levels, lowest first: baseline (x86-64: SSE2; the only level on other architectures), avx2
// (AVX2 + FMA + F16C), avx512 (AVX-512 F/BW/VL/DQ on top), avx512bf16 (the avx512 build, with
// bfloat16 Gram tiles through the AVX512-BF16 dot product).
#pragma once
#include <cstdint>
#include <vector>

namespace mtlkernels::cpu {

enum class DType { Float32, Float64, Float16, BFloat16 };

// One [K, cols] block of J: row r starts at data + r·row_stride elements, columns are contiguous.
struct Block {
  const void* data;
  int64_t cols;
  int64_t row_stride;
};

// d = wᵀJ written (or added) block by block into out[i] of type out_types[i] (w: K float64 weights).
struct Combination {
  const double* w;
  std::vector<void*> out;
  std::vector<DType> out_types;
  bool accumulate;
};

// The entry points of one level (arguments already checked by cpu_dispatch.cpp).
struct Kernels {
  // Γ = J·Jᵀ of the blocks (K rows, element type dtype) into the float64 [K, K] buffer `gram`;
  // bf16_dot: bfloat16 J through the AVX512-BF16 dot product (only where the level has it). With
  // `combination` (weights known before Γ), each panel of J is also combined while it is in cache.
  void (*gram)(const std::vector<Block>& blocks, int K, DType dtype, double* gram, bool bf16_dot,
               const Combination* combination);
  // Σ of every element of the blocks, read once (the benchmarks' memory floor).
  double (*read_floor)(const std::vector<Block>& blocks, int K, DType dtype);
  // out[i] (+)= wᵀ·block i, out[i] of type out_types[i] (w: K float64 weights).
  void (*combine)(const double* w, const std::vector<Block>& blocks, int K, DType dtype,
                  const std::vector<void*>& out, const std::vector<DType>& out_types, bool accumulate);
};

// Each level's functions: gram and read_floor from its build of gram_cpu.cpp, combine from combine_cpu.cpp.
#define MTLK_DECLARE_LEVEL(level)                                                                           \
  namespace level {                                                                                         \
  void gram(const std::vector<Block>& blocks, int K, DType dtype, double* gram, bool bf16_dot,              \
            const Combination* combination);                                                                \
  double read_floor(const std::vector<Block>& blocks, int K, DType dtype);                                  \
  void combine(const double* w, const std::vector<Block>& blocks, int K, DType dtype,                       \
               const std::vector<void*>& out, const std::vector<DType>& out_types, bool accumulate);        \
  }
MTLK_DECLARE_LEVEL(baseline)
#if defined(MTLK_X86_LEVELS)
MTLK_DECLARE_LEVEL(avx2)
MTLK_DECLARE_LEVEL(avx512)
#endif
#undef MTLK_DECLARE_LEVEL

}  // namespace mtlkernels::cpu

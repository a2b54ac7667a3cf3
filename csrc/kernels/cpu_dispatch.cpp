// The CPU kernels' bindings: argument checks, then the active instruction-set level's functions
// (see cpu_dispatch.h). The active level starts as the best one this CPU runs; set_cpu_isa picks
// a lower one (mtlkernels/_extension.py does so at import from MTLKERNELS_CPU_ISA).
#include "kernels/cpu_dispatch.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "registry.h"

namespace mtlkernels::cpu {
namespace {

namespace py = pybind11;

struct Level {
  const char* name;
  Kernels kernels;
  bool bf16_dot;
  bool (*supported)();
};

#if defined(MTLK_X86_LEVELS)
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool has_avx512bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#endif

// Every level, lowest first.
const std::vector<Level>& levels() {
  static const std::vector<Level> all = {
      {"baseline", {baseline::gram, baseline::read_floor, baseline::combine}, false, [] { return true; }},
#if defined(MTLK_X86_LEVELS)
      {"avx2", {avx2::gram, avx2::read_floor, avx2::combine}, false, has_avx2},
      {"avx512", {avx512::gram, avx512::read_floor, avx512::combine}, false, has_avx512},
      {"avx512bf16", {avx512::gram, avx512::read_floor, avx512::combine}, true, has_avx512bf16},
#endif
  };
  return all;
}

// Index into levels() of the level in use: the best supported one until set_cpu_isa says otherwise.
std::atomic<size_t>& active_index() {
  static std::atomic<size_t> index = [] {
    size_t best = 0;
    for (size_t i = 0; i < levels().size(); ++i)
      if (levels()[i].supported()) best = i;
    return best;
  }();
  return index;
}

const Level& active() { return levels()[active_index().load()]; }

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

std::vector<std::string> cpu_isa_levels() {
  std::vector<std::string> names;
  for (const Level& level : levels())
    if (level.supported()) names.push_back(level.name);
  return names;
}

void set_cpu_isa(const std::string& name) {
  std::vector<std::string> known;
  for (size_t i = 0; i < levels().size(); ++i) {
    if (levels()[i].name == name) {
      if (!levels()[i].supported())
        throw std::invalid_argument("CPU ISA level '" + name + "' needs instructions this CPU lacks; it runs " +
                                    join(cpu_isa_levels()));
      active_index().store(i);
      return;
    }
    known.push_back(levels()[i].name);
  }
  throw std::invalid_argument("unknown CPU ISA level '" + name + "'; expected one of " + join(known));
}

// Parse the launcher's dtype name ("float32", "float64", "float16", "bfloat16").
DType parse_dtype(const std::string& name, const std::string& what) {
  if (name == "float32") return DType::Float32;
  if (name == "float64") return DType::Float64;
  if (name == "float16") return DType::Float16;
  if (name == "bfloat16") return DType::BFloat16;
  throw std::invalid_argument(what + " has unsupported dtype '" + name +
                              "'; expected float32, float64, float16 or bfloat16");
}

// Zip the launcher's parallel lists into blocks, checking their lengths and values.
std::vector<Block> make_blocks(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& cols,
                               const std::vector<int64_t>& row_strides) {
  if (pointers.empty() || pointers.size() != cols.size() || cols.size() != row_strides.size())
    throw std::invalid_argument(
        "blocks: pointers, column counts and row strides must be non-empty lists of one length");
  std::vector<Block> blocks;
  for (size_t i = 0; i < pointers.size(); ++i) {
    if (cols[i] < 0 || row_strides[i] < 0)
      throw std::invalid_argument("block " + std::to_string(i) + " has a negative column count or row stride");
    if (cols[i] > 0 && pointers[i] == 0)
      throw std::invalid_argument("block " + std::to_string(i) + " has a null data pointer");
    blocks.push_back({reinterpret_cast<const void*>(pointers[i]), cols[i], row_strides[i]});
  }
  return blocks;
}

void check_rows(int64_t K, const char* what) {
  if (K < 1 || K > (int64_t{1} << 16))
    throw std::invalid_argument(std::string(what) + ": K = " + std::to_string(K) + " is outside [1, 65536]");
}

// Γ of the blocks into the float64 [K, K] buffer at gram_ptr (see the launcher, mtlkernels/gram.py).
void gram_cpu(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& cols,
              const std::vector<int64_t>& row_strides, int64_t K, const std::string& dtype, uintptr_t gram_ptr) {
  check_rows(K, "gram_cpu");
  if (gram_ptr == 0) throw std::invalid_argument("gram_cpu: the output pointer is null");
  const std::vector<Block> blocks = make_blocks(pointers, cols, row_strides);
  const DType type = parse_dtype(dtype, "J");
  const Level& level = active();
  py::gil_scoped_release release;
  level.kernels.gram(blocks, static_cast<int>(K), type, reinterpret_cast<double*>(gram_ptr), level.bf16_dot, nullptr);
}

double read_floor_cpu(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& cols,
                      const std::vector<int64_t>& row_strides, int64_t K, const std::string& dtype) {
  check_rows(K, "read_floor_cpu");
  const std::vector<Block> blocks = make_blocks(pointers, cols, row_strides);
  const DType type = parse_dtype(dtype, "J");
  const Level& level = active();
  py::gil_scoped_release release;
  return level.kernels.read_floor(blocks, static_cast<int>(K), type);
}

// The outputs and weights of a combination over the blocks, checked.
Combination make_combination(const char* what, uintptr_t weights_ptr, const std::vector<Block>& blocks,
                             const std::vector<uintptr_t>& out_pointers, const std::vector<std::string>& out_dtypes,
                             bool accumulate) {
  if (weights_ptr == 0) throw std::invalid_argument(std::string(what) + ": the weights pointer is null");
  if (out_pointers.size() != blocks.size() || out_dtypes.size() != blocks.size())
    throw std::invalid_argument(std::string(what) + ": got " + std::to_string(out_pointers.size()) + " outputs and " +
                                std::to_string(out_dtypes.size()) + " output dtypes for " +
                                std::to_string(blocks.size()) + " blocks");
  Combination combination{reinterpret_cast<const double*>(weights_ptr), {}, {}, accumulate};
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].cols > 0 && out_pointers[i] == 0)
      throw std::invalid_argument(std::string(what) + ": out[" + std::to_string(i) + "] has a null data pointer");
    combination.out_types.push_back(parse_dtype(out_dtypes[i], "out[" + std::to_string(i) + "]"));
    combination.out.push_back(reinterpret_cast<void*>(out_pointers[i]));
  }
  return combination;
}

// d = wᵀJ over the blocks into the outputs (see the launcher, mtlkernels/combine.py).
void combine_cpu(uintptr_t weights_ptr, const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& cols,
                 const std::vector<int64_t>& row_strides, int64_t K, const std::string& dtype,
                 const std::vector<uintptr_t>& out_pointers, const std::vector<std::string>& out_dtypes,
                 bool accumulate) {
  check_rows(K, "combine_cpu");
  const std::vector<Block> blocks = make_blocks(pointers, cols, row_strides);
  const DType in_type = parse_dtype(dtype, "J");
  const Combination c = make_combination("combine_cpu", weights_ptr, blocks, out_pointers, out_dtypes, accumulate);
  const Level& level = active();
  py::gil_scoped_release release;
  level.kernels.combine(c.w, blocks, static_cast<int>(K), in_type, c.out, c.out_types, c.accumulate);
}

// Γ and d = wᵀJ in one pass over the blocks, for weights known before Γ (see mtlkernels/aggregate.py).
void gram_combine_cpu(const std::vector<uintptr_t>& pointers, const std::vector<int64_t>& cols,
                      const std::vector<int64_t>& row_strides, int64_t K, const std::string& dtype, uintptr_t gram_ptr,
                      uintptr_t weights_ptr, const std::vector<uintptr_t>& out_pointers,
                      const std::vector<std::string>& out_dtypes, bool accumulate) {
  check_rows(K, "gram_combine_cpu");
  if (gram_ptr == 0) throw std::invalid_argument("gram_combine_cpu: the output pointer is null");
  const std::vector<Block> blocks = make_blocks(pointers, cols, row_strides);
  const DType type = parse_dtype(dtype, "J");
  const Combination c = make_combination("gram_combine_cpu", weights_ptr, blocks, out_pointers, out_dtypes, accumulate);
  const Level& level = active();
  py::gil_scoped_release release;
  level.kernels.gram(blocks, static_cast<int>(K), type, reinterpret_cast<double*>(gram_ptr), level.bf16_dot, &c);
}

Registration reg([](py::module_& m) {
  m.def("gram_cpu", &gram_cpu, py::arg("pointers"), py::arg("cols"), py::arg("row_strides"), py::arg("K"),
        py::arg("dtype"), py::arg("gram_ptr"),
        "Γ = J·Jᵀ (float64, full K×K) of the blocks [K, cols[i]] at pointers[i] (row stride row_strides[i] "
        "elements, unit column stride, dtype float32/float64/float16/bfloat16) into the buffer at gram_ptr.");
  m.def("read_floor_cpu", &read_floor_cpu, py::arg("pointers"), py::arg("cols"), py::arg("row_strides"),
        py::arg("K"), py::arg("dtype"),
        "Σ of every element of the blocks (as gram_cpu takes them), read once: the benchmarks' memory floor.");
  m.def("combine_cpu", &combine_cpu, py::arg("weights_ptr"), py::arg("pointers"), py::arg("cols"),
        py::arg("row_strides"), py::arg("K"), py::arg("dtype"), py::arg("out_pointers"), py::arg("out_dtypes"),
        py::arg("accumulate"),
        "d = wᵀJ of the blocks [K, cols[i]] at pointers[i] (row stride row_strides[i] elements, unit column "
        "stride, dtype float32/float64/float16/bfloat16) into the contiguous outputs at out_pointers[i] (dtype "
        "out_dtypes[i]), adding to them when accumulate; the K weights at weights_ptr are float64.");
  m.def("gram_combine_cpu", &gram_combine_cpu, py::arg("pointers"), py::arg("cols"), py::arg("row_strides"),
        py::arg("K"), py::arg("dtype"), py::arg("gram_ptr"), py::arg("weights_ptr"), py::arg("out_pointers"),
        py::arg("out_dtypes"), py::arg("accumulate"),
        "gram_cpu and combine_cpu (same arguments) in one pass over J: each panel is combined while the Gram "
        "tiles have it in cache. For weights that do not depend on Γ.");
  m.def("cpu_isa_levels", &cpu_isa_levels,
        "The instruction-set levels of the CPU kernels this CPU runs, lowest first (baseline, avx2, avx512, "
        "avx512bf16).");
  m.def("cpu_isa", [] { return std::string(active().name); }, "The level the CPU kernels run at now.");
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("level"),
        "Run the CPU kernels at `level` from now on (one of cpu_isa_levels(); ValueError otherwise).");
});

}  // namespace
}  // namespace mtlkernels::cpu

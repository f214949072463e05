// bf16 linear layer for a few rows (a decode step, a draft expansion, a verification tree) that reads
// each weight once per call whatever the row count, with AVX512-BF16 dot products.
//
// The weight is packed once as [N/16][K/2][16][2]: for a block of 16 output columns, each k-pair of
// each column side by side, so one 64-byte load feeds one VDPBF16PS per row and the 16 lanes of the
// accumulator are 16 outputs: no horizontal sums. Every output element is reduced over k in the same
// order whatever the number of rows or the row's position, so a row of a tree gets bit-identical
// linear outputs to the same row alone (the oneDNN kernels do not promise that).
// ATen and the operator registry only (not torch/extension.h: no Python bindings, a faster build).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

namespace {

constexpr int64_t kBlock = 16;   // output columns per packed block (one zmm of fp32 accumulators)
constexpr int64_t kRowTile = 8;  // rows per pass over a block's weights (8 rows x 2 blocks = 16 zmm accumulators)

at::Tensor pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16, "pack: a 2-D bfloat16 weight [N, K], got ", weight.sizes(), " ", weight.scalar_type());
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n % kBlock == 0 && k % 2 == 0, "pack: N must be a multiple of 16 and K even, got N=", n, " K=", k);
  // [N, K] -> [N/16, 16, K/2, 2] -> [N/16, K/2, 16, 2]
  return weight.contiguous().view({n / kBlock, kBlock, k / 2, 2}).permute({0, 2, 1, 3}).contiguous();
}

// One pass of `Rows` rows over the weights of two neighbouring blocks (32 output columns). Rows is a
// template argument so the accumulators stay in registers and the inner loop has no branches.
template <int Rows>
__attribute__((target("avx512f,avx512bf16"))) inline void row_tile(
    const int32_t* x_pairs, const uint16_t* w0, const uint16_t* w1, bool two, uint16_t* out, int64_t pairs, int64_t n) {
  __m512 acc0[Rows], acc1[Rows];
  for (int r = 0; r < Rows; ++r) { acc0[r] = _mm512_setzero_ps(); acc1[r] = _mm512_setzero_ps(); }
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(w0 + p * kBlock * 2);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(w1 + p * kBlock * 2);
    for (int r = 0; r < Rows; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(x_pairs[r * pairs + p]);
      acc0[r] = _mm512_dpbf16_ps(acc0[r], a, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], a, b1);
    }
  }
  for (int r = 0; r < Rows; ++r) {
    uint16_t* o = out + r * n;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), (__m256i)_mm512_cvtneps_pbh(acc0[r]));
    if (two) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + kBlock), (__m256i)_mm512_cvtneps_pbh(acc1[r]));
  }
}

__attribute__((target("avx512f,avx512bf16"))) void blocks_avx512(
    const uint16_t* x, const uint16_t* packed, uint16_t* out, int64_t rows, int64_t k, int64_t n, int64_t block_begin, int64_t block_end) {
  const int64_t pairs = k / 2;
  const int64_t block_stride = pairs * kBlock * 2;  // bf16 elements per packed block
  const int32_t* x_pairs = reinterpret_cast<const int32_t*>(x);
  for (int64_t block = block_begin; block < block_end; block += 2) {
    const bool two = block + 1 < block_end;
    const uint16_t* w0 = packed + block * block_stride;
    const uint16_t* w1 = two ? w0 + block_stride : w0;
    for (int64_t row0 = 0; row0 < rows; row0 += kRowTile) {
      const int32_t* xr = x_pairs + row0 * pairs;
      uint16_t* o = out + row0 * n + block * kBlock;
      switch (std::min(kRowTile, rows - row0)) {
        case 1: row_tile<1>(xr, w0, w1, two, o, pairs, n); break;
        case 2: row_tile<2>(xr, w0, w1, two, o, pairs, n); break;
        case 3: row_tile<3>(xr, w0, w1, two, o, pairs, n); break;
        case 4: row_tile<4>(xr, w0, w1, two, o, pairs, n); break;
        case 5: row_tile<5>(xr, w0, w1, two, o, pairs, n); break;
        case 6: row_tile<6>(xr, w0, w1, two, o, pairs, n); break;
        case 7: row_tile<7>(xr, w0, w1, two, o, pairs, n); break;
        default: row_tile<8>(xr, w0, w1, two, o, pairs, n); break;
      }
    }
  }
}

at::Tensor linear(const at::Tensor& input, const at::Tensor& packed, int64_t out_features) {
  TORCH_CHECK(input.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16, "few_row_linear: bfloat16 input and weight");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kBlock && packed.size(3) == 2 && packed.size(0) * kBlock == out_features,
              "few_row_linear: a weight from pack() with ", out_features, " outputs, got ", packed.sizes());
  TORCH_CHECK(__builtin_cpu_supports("avx512bf16"), "few_row_linear: this CPU has no AVX512-BF16");
  const int64_t k = packed.size(1) * 2;
  TORCH_CHECK(input.size(-1) == k, "few_row_linear: input has ", input.size(-1), " features, the weight ", k);
  const at::Tensor x = input.reshape({-1, k}).contiguous();
  const int64_t rows = x.size(0);
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = out_features;
  at::Tensor out = at::empty({rows, out_features}, input.options());
  if (rows == 0) return out.view(out_sizes);
  const auto* x_data = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* w_data = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  auto* out_data = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t blocks = out_features / kBlock;
  // Grain of 8 blocks: 128 columns; an even split keeps every thread on whole block pairs.
  at::parallel_for(0, blocks / 2 + blocks % 2, 4, [&](int64_t begin, int64_t end) {
    blocks_avx512(x_data, w_data, out_data, rows, k, out_features, begin * 2, std::min(end * 2, blocks));
  });
  return out.view(out_sizes);
}

}  // namespace

TORCH_LIBRARY(eagle2_kernels, m) {
  m.def("pack(Tensor weight) -> Tensor");
  m.def("few_row_linear(Tensor input, Tensor packed, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(eagle2_kernels, CPU, m) {
  m.impl("pack", &pack);
  m.impl("few_row_linear", &linear);
}

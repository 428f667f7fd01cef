// Load-time repacking of Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights into 16-row groups,
// and of Q4_K/Q5_K/Q6_K weights into 8-row groups (matmul_kpack.cc).
#include <cstring>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"

namespace pdserve::kernels {
namespace internal {

void PackGroup(uint8_t* dst, const uint8_t* src, int64_t row_bytes, int rows_valid, DType t,
               int64_t b0, int64_t b1) {
  const int64_t pb = PackedBlockBytes(t);
  const int64_t type_size = GetDType(t).type_size;
  const int qs_off = GgmlQsOffset(t);
  const int n_chunks = t == DType::kQ8_0 ? 8 : 4;  // 4-byte chunks per row
  const int scale_off = PackedQuantBytes(t);       // d, then (Q4_1/Q5_1) m
  for (int64_t b = b0; b < b1; ++b, dst += pb) {
    std::memset(dst, 0, pb);
    for (int i = 0; i < rows_valid; ++i) {
      const uint8_t* blk = src + i * row_bytes + b * type_size;
      for (int c = 0; c < n_chunks; ++c) {
        uint8_t* out = dst + c * 64 + i * 4;
        std::memcpy(out, blk + qs_off + 4 * c, 4);
        if (t == DType::kQ8_0) {
          for (int j = 0; j < 4; ++j) out[j] = static_cast<uint8_t>(out[j] ^ 0x80);  // q + 128
        }
      }
      if (IsQ5(t)) {
        const uint32_t qh = LoadU32(blk + GgmlQhOffset(t));
        for (int j = 0; j < 4; ++j) {
          uint32_t h = 0;
          for (int c = 0; c < 4; ++c) {
            h |= ((qh >> (4 * c + j)) & 1) << c;
            h |= ((qh >> (16 + 4 * c + j)) & 1) << (4 + c);
          }
          dst[256 + i * 4 + j] = static_cast<uint8_t>(h);
        }
      }
      std::memcpy(dst + scale_off + 2 * i, blk, 2);                          // d
      if (HasMin(t)) std::memcpy(dst + scale_off + 32 + 2 * i, blk + 2, 2);  // m
    }
  }
}

}  // namespace internal

int64_t PackedWeightBytes(const WeightMatrix& w) {
  const int64_t kb = internal::KLayout(w.type).bytes;
  if (kb > 0) {
    if (w.layout != WeightLayout::kGgml || w.n_in % kQKK != 0) return 0;
    const int64_t groups = (w.n_out + internal::kKPackRows - 1) / internal::kKPackRows;
    return groups * (w.n_in / kQKK) * kb;
  }
  const int64_t pb = internal::PackedBlockBytes(w.type);
  if (pb == 0 || w.layout != WeightLayout::kGgml || w.n_in % kQK != 0) return 0;
  const int64_t groups = (w.n_out + internal::kPackRows - 1) / internal::kPackRows;
  return groups * (w.n_in / kQK) * pb;
}

WeightMatrix PackWeights(void* dst, const WeightMatrix& w, int ith, int nth) {
  WeightMatrix packed = w;
  packed.data = dst;
  packed.layout = WeightLayout::kPacked;
  const int64_t kb = internal::KLayout(w.type).bytes;
  if (kb > 0) {
    const int64_t nbk = w.n_in / kQKK;
    const int64_t row_bytes = RowBytes(w.type, w.n_in);
    const int64_t groups = (w.n_out + internal::kKPackRows - 1) / internal::kKPackRows;
    int64_t g0, g1;
    SplitRange(groups, ith, nth, 1, &g0, &g1);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t r0 = g * internal::kKPackRows;
      const int rows = static_cast<int>(w.n_out - r0 < internal::kKPackRows ? w.n_out - r0
                                                                            : internal::kKPackRows);
      internal::PackKGroup(static_cast<uint8_t*>(dst) + g * nbk * kb,
                           static_cast<const uint8_t*>(w.data) + r0 * row_bytes, row_bytes, rows,
                           w.type, nbk);
    }
    return packed;
  }
  const int64_t nb = w.n_in / kQK;
  const int64_t pb = internal::PackedBlockBytes(w.type);
  const int64_t row_bytes = RowBytes(w.type, w.n_in);
  const int64_t groups = (w.n_out + internal::kPackRows - 1) / internal::kPackRows;
  int64_t g0, g1;
  SplitRange(groups, ith, nth, 1, &g0, &g1);
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t r0 = g * internal::kPackRows;
    const int rows =
        static_cast<int>(w.n_out - r0 < internal::kPackRows ? w.n_out - r0 : internal::kPackRows);
    internal::PackGroup(static_cast<uint8_t*>(dst) + g * nb * pb,
                        static_cast<const uint8_t*>(w.data) + r0 * row_bytes, row_bytes, rows,
                        w.type, 0, nb);
  }
  return packed;
}

void DequantizeWeightRow(float* y, const WeightMatrix& w, int64_t row) {
  if (w.layout == WeightLayout::kGgml) {
    DequantizeRow(y, static_cast<const uint8_t*>(w.data) + row * RowBytes(w.type, w.n_in), w.type,
                  w.n_in);
    return;
  }
  const int64_t kb = internal::KLayout(w.type).bytes;
  if (kb > 0) {
    // Rebuild each ggml super-block of the row from its lane of the group.
    const int64_t nbk = w.n_in / kQKK;
    const uint8_t* wg =
        static_cast<const uint8_t*>(w.data) + (row / internal::kKPackRows) * nbk * kb;
    internal::KSuperBlock k;
    uint8_t blk[sizeof(BlockQ6_K)];
    for (int64_t ib = 0; ib < nbk; ++ib) {
      internal::DecodePackedK(&k, wg + ib * kb, w.type,
                              static_cast<int>(row % internal::kKPackRows));
      internal::EncodeGgmlK(blk, k, w.type);
      DequantizeRow(y + ib * kQKK, blk, w.type, kQKK);
    }
    return;
  }
  // Rebuild each ggml block of the row from its lane of the packed group.
  const int64_t nb = w.n_in / kQK;
  const int64_t pb = internal::PackedBlockBytes(w.type);
  const int64_t g = row / internal::kPackRows;
  const int i = static_cast<int>(row % internal::kPackRows);
  const int n_chunks = w.type == DType::kQ8_0 ? 8 : 4;
  const int scale_off = internal::PackedQuantBytes(w.type);
  const int qs_off = internal::GgmlQsOffset(w.type);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* src = static_cast<const uint8_t*>(w.data) + (g * nb + b) * pb;
    uint8_t blk[sizeof(BlockQ8_0)];
    std::memcpy(blk, src + scale_off + 2 * i, 2);
    if (internal::HasMin(w.type)) std::memcpy(blk + 2, src + scale_off + 32 + 2 * i, 2);
    for (int c = 0; c < n_chunks; ++c) {
      std::memcpy(blk + qs_off + 4 * c, src + c * 64 + i * 4, 4);
      if (w.type == DType::kQ8_0) {
        for (int j = 0; j < 4; ++j) blk[qs_off + 4 * c + j] ^= 0x80;
      }
    }
    if (internal::IsQ5(w.type)) {
      uint32_t qh = 0;
      for (int j = 0; j < 4; ++j) {
        const uint32_t h = src[256 + i * 4 + j];
        for (int c = 0; c < 4; ++c) {
          qh |= ((h >> c) & 1) << (4 * c + j);
          qh |= ((h >> (4 + c)) & 1) << (16 + 4 * c + j);
        }
      }
      std::memcpy(blk + internal::GgmlQhOffset(w.type), &qh, 4);
    }
    DequantizeRow(y + b * kQK, blk, w.type, kQK);
  }
}

}  // namespace pdserve::kernels

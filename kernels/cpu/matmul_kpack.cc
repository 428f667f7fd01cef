// K-quant (Q4_K, Q5_K, Q6_K) repacking into 8-row groups (matmul_internal.h
// describes the layout), its decoding, and the portable matmul over it.
#include <cstring>

#include "kernels/cpu/matmul_internal.h"
#include "kernels/quant.h"

namespace pdserve::kernels::internal {

void DecodeGgmlK(KSuperBlock* out, const uint8_t* block, DType t) {
  std::memset(out, 0, sizeof(*out));
  if (t == DType::kQ6_K) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(block);
    out->d = b->d;
    for (int s = 0; s < 16; ++s) out->sc[s] = b->scales[s];
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = b->ql + 64 * n;
      const uint8_t* qh = b->qh + 32 * n;
      uint8_t* q = out->q + 128 * n;
      for (int l = 0; l < 32; ++l) {
        q[l] = static_cast<uint8_t>((ql[l] & 0xF) | ((qh[l] & 3) << 4));
        q[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
        q[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
        q[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
      }
    }
    return;
  }
  // Q4_K and Q5_K share d, dmin, scales and qs; Q5_K adds qh.
  const bool q5 = t == DType::kQ5_K;
  const BlockQ4_K* b4 = reinterpret_cast<const BlockQ4_K*>(block);
  const BlockQ5_K* b5 = reinterpret_cast<const BlockQ5_K*>(block);
  out->d = b4->d;
  out->dmin = b4->dmin;
  for (int s = 0; s < 8; ++s) {
    uint8_t sc, m;
    GetScaleMinK4(s, b4->scales, &sc, &m);
    out->sc[s] = sc;
    out->m[s] = m;
  }
  const uint8_t* qs = q5 ? b5->qs : b4->qs;
  for (int j = 0; j < 4; ++j) {
    for (int l = 0; l < 32; ++l) {
      int lo = qs[32 * j + l] & 0xF, hi = qs[32 * j + l] >> 4;
      if (q5) {
        lo |= ((b5->qh[l] >> (2 * j)) & 1) << 4;
        hi |= ((b5->qh[l] >> (2 * j + 1)) & 1) << 4;
      }
      out->q[64 * j + l] = static_cast<uint8_t>(lo);
      out->q[64 * j + 32 + l] = static_cast<uint8_t>(hi);
    }
  }
}

void EncodeGgmlK(uint8_t* block, const KSuperBlock& in, DType t) {
  std::memset(block, 0, GetDType(t).type_size);
  if (t == DType::kQ6_K) {
    BlockQ6_K* b = reinterpret_cast<BlockQ6_K*>(block);
    b->d = in.d;
    for (int s = 0; s < 16; ++s) b->scales[s] = static_cast<int8_t>(in.sc[s]);
    for (int n = 0; n < 2; ++n) {
      uint8_t* ql = b->ql + 64 * n;
      uint8_t* qh = b->qh + 32 * n;
      const uint8_t* q = in.q + 128 * n;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((q[l] & 0xF) | ((q[l + 64] & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((q[l] >> 4) | ((q[l + 32] >> 4) << 2) |
                                     ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
      }
    }
    return;
  }
  const bool q5 = t == DType::kQ5_K;
  BlockQ4_K* b4 = reinterpret_cast<BlockQ4_K*>(block);
  BlockQ5_K* b5 = reinterpret_cast<BlockQ5_K*>(block);
  b4->d = in.d;
  b4->dmin = in.dmin;
  // The inverse of GetScaleMinK4.
  for (int j = 0; j < 4; ++j) {
    b4->scales[j] = static_cast<uint8_t>((in.sc[j] & 63) | ((in.sc[j + 4] >> 4) << 6));
    b4->scales[j + 4] = static_cast<uint8_t>((in.m[j] & 63) | ((in.m[j + 4] >> 4) << 6));
    b4->scales[j + 8] = static_cast<uint8_t>((in.sc[j + 4] & 0xF) | ((in.m[j + 4] & 0xF) << 4));
  }
  uint8_t* qs = q5 ? b5->qs : b4->qs;
  for (int j = 0; j < 4; ++j) {
    for (int l = 0; l < 32; ++l) {
      const int lo = in.q[64 * j + l], hi = in.q[64 * j + 32 + l];
      qs[32 * j + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      if (q5)
        b5->qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * j)) | ((hi >> 4) << (2 * j + 1)));
    }
  }
}

namespace {

// Byte of the packed group holding element e's low 4 bits for lane i (the
// low nibble when e % 64 < 32), and the high-bit byte and bit position.
inline int QsByte(int e, int i) { return (e / 64) * 256 + ((e % 32) / 4) * 32 + i * 4 + e % 4; }
inline void HighBitPos(DType t, int e, int i, int* byte, int* bit) {
  const int j = e / 64, h = (e % 64) / 32, c = (e % 32) / 4, b = e % 4;
  const int v = c / 4, cc = c % 4;
  const KPackLayout layout = KLayout(t);
  if (t == DType::kQ5_K) {
    *byte = layout.qh + j * 64 + v * 32 + i * 4 + b;
    *bit = 4 * h + cc;
  } else {
    *byte = layout.qh + j * 128 + (2 * h + v) * 32 + i * 4 + b;
    *bit = 2 * cc;
  }
}
// Sub-block pair holding sub-block s, and which of the pair it is.
inline void ScalePairPos(DType t, int s, int* pair, int* second) {
  if (t == DType::kQ6_K) {
    const int j = s / 4, h = (s % 4) / 2, g = s % 2;
    *pair = 2 * j + g;
    *second = h;
  } else {
    *pair = s / 2;
    *second = s % 2;
  }
}

}  // namespace

void DecodePackedK(KSuperBlock* out, const uint8_t* group_block, DType t, int row) {
  std::memset(out, 0, sizeof(*out));
  const KPackLayout layout = KLayout(t);
  const uint8_t* p = group_block;
  for (int e = 0; e < kQKK; ++e) {
    const uint8_t byte = p[QsByte(e, row)];
    int q = (e % 64) < 32 ? byte & 0xF : byte >> 4;
    if (t != DType::kQ4_K) {
      int hb, bit;
      HighBitPos(t, e, row, &hb, &bit);
      q |= ((p[hb] >> bit) & (t == DType::kQ6_K ? 3 : 1)) << 4;
    }
    out->q[e] = static_cast<uint8_t>(q);
  }
  const int n_sub = t == DType::kQ6_K ? 16 : 8;
  for (int s = 0; s < n_sub; ++s) {
    int pair, second;
    ScalePairPos(t, s, &pair, &second);
    const int off = 16 * pair + 2 * row + second;
    if (t == DType::kQ6_K) {
      out->sc[s] = static_cast<int8_t>(p[layout.sc + off]);
    } else {
      out->sc[s] = p[layout.sc + off];
      out->m[s] = p[layout.mins + off];
    }
  }
  out->d = LoadU16(p + layout.d + 2 * row);
  if (t != DType::kQ6_K) out->dmin = LoadU16(p + layout.dmin + 2 * row);
}

void PackKGroup(uint8_t* dst, const uint8_t* src, int64_t row_bytes, int rows_valid, DType t,
                int64_t nb) {
  const KPackLayout layout = KLayout(t);
  const int64_t type_size = GetDType(t).type_size;
  const int n_sub = t == DType::kQ6_K ? 16 : 8;
  KSuperBlock k;
  for (int64_t ib = 0; ib < nb; ++ib, dst += layout.bytes) {
    std::memset(dst, 0, layout.bytes);  // padding rows: d = 0, quants 0
    for (int i = 0; i < rows_valid; ++i) {
      DecodeGgmlK(&k, src + i * row_bytes + ib * type_size, t);
      for (int e = 0; e < kQKK; ++e) {
        const int shift = (e % 64) < 32 ? 0 : 4;
        dst[QsByte(e, i)] |= static_cast<uint8_t>((k.q[e] & 0xF) << shift);
        if (t != DType::kQ4_K) {
          int hb, bit;
          HighBitPos(t, e, i, &hb, &bit);
          dst[hb] |= static_cast<uint8_t>((k.q[e] >> 4) << bit);
        }
      }
      for (int s = 0; s < n_sub; ++s) {
        int pair, second;
        ScalePairPos(t, s, &pair, &second);
        const int off = 16 * pair + 2 * i + second;
        dst[layout.sc + off] = static_cast<uint8_t>(k.sc[s]);
        if (t != DType::kQ6_K) dst[layout.mins + off] = static_cast<uint8_t>(k.m[s]);
      }
      std::memcpy(dst + layout.d + 2 * i, &k.d, 2);
      if (t != DType::kQ6_K) std::memcpy(dst + layout.dmin + 2 * i, &k.dmin, 2);
    }
  }
}

void MatMulPackedKScalar(float* y, int64_t ldy, const WeightMatrix& w, const void* xq,
                         int64_t act_row_bytes, int64_t n_tokens, int64_t r0, int64_t r1) {
  const int64_t nb = w.n_in / kQKK;
  const KPackLayout layout = KLayout(w.type);
  const bool q6 = w.type == DType::kQ6_K;
  const int sub = q6 ? 16 : 32;  // elements per sub-block
  KSuperBlock k;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wg = static_cast<const uint8_t*>(w.data) + (r / kKPackRows) * nb * layout.bytes;
    for (int64_t t = 0; t < n_tokens; ++t) y[t * ldy + r] = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      DecodePackedK(&k, wg + ib * layout.bytes, w.type, static_cast<int>(r % kKPackRows));
      const float d = F16ToF32(k.d), dmin = F16ToF32(k.dmin);
      for (int64_t t = 0; t < n_tokens; ++t) {
        const BlockQ8_K& a = reinterpret_cast<const BlockQ8_K*>(static_cast<const uint8_t*>(xq) +
                                                                t * act_row_bytes)[ib];
        int isum = 0, msum = 0;
        for (int s = 0; s < kQKK / sub; ++s) {
          int dot = 0;
          for (int e = s * sub; e < (s + 1) * sub; ++e) dot += (k.q[e] - (q6 ? 32 : 0)) * a.qs[e];
          isum += k.sc[s] * dot;
          if (!q6) msum += k.m[s] * (a.bsums[2 * s] + a.bsums[2 * s + 1]);
        }
        y[t * ldy + r] +=
            d * a.d * static_cast<float>(isum) - dmin * a.d * static_cast<float>(msum);
      }
    }
  }
}

}  // namespace pdserve::kernels::internal

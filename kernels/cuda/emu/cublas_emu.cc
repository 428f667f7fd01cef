#include "kernels/cuda/emu/cublas_emu.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

float Load(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_32F:
      return static_cast<const float*>(p)[i];
    case CUDA_R_16F:
      return pdserve::kernels::F16ToF32(static_cast<const uint16_t*>(p)[i]);
    case CUDA_R_16BF:
      return pdserve::kernels::BF16ToF32(static_cast<const uint16_t*>(p)[i]);
  }
  return 0;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_ERROR";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType_t Atype, int lda, const void* B,
                            cudaDataType_t Btype, int ldb, const void* beta, void* C,
                            cudaDataType_t Ctype, int ldc, cublasComputeType_t, cublasGemmAlgo_t) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0 || Ctype == CUDA_R_16BF) return CUBLAS_STATUS_INVALID_VALUE;
  const int64_t a_elems = transa == CUBLAS_OP_N ? int64_t{lda} * k : int64_t{lda} * m;
  const int64_t b_elems = transb == CUBLAS_OP_N ? int64_t{ldb} * n : int64_t{ldb} * k;
  const int a_size = Atype == CUDA_R_32F ? 4 : 2, b_size = Btype == CUDA_R_32F ? 4 : 2;
  const int c_size = Ctype == CUDA_R_32F ? 4 : 2;
  if (!pdserve::cuda_emu::IsDevicePointer(A, a_elems * a_size) ||
      !pdserve::cuda_emu::IsDevicePointer(B, b_elems * b_size) ||
      !pdserve::cuda_emu::IsDevicePointer(C, int64_t{ldc} * n * c_size)) {
    std::fprintf(stderr, "cuda_emu: cublasGemmEx operand outside device memory\n");
    std::abort();
  }
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      float acc = 0;
      for (int l = 0; l < k; ++l) {
        const float a =
            Load(A, Atype, transa == CUBLAS_OP_N ? i + int64_t{l} * lda : l + int64_t{i} * lda);
        const float b =
            Load(B, Btype, transb == CUBLAS_OP_N ? l + int64_t{j} * ldb : j + int64_t{l} * ldb);
        acc += a * b;
      }
      const int64_t ci = i + int64_t{j} * ldc;
      if (Ctype == CUDA_R_32F) {
        float* c = static_cast<float*>(C);
        c[ci] = al * acc + (be != 0 ? be * c[ci] : 0.0f);
      } else {
        uint16_t* c = static_cast<uint16_t*>(C);
        const float old = be != 0 ? be * pdserve::kernels::F16ToF32(c[ci]) : 0.0f;
        c[ci] = pdserve::kernels::F32ToF16(al * acc + old);
      }
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

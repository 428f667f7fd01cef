// cuBLAS, or its emulated subset under PDS_CUDA_EMU (see cuda_compat.h).
#pragma once

#include "kernels/cuda/cuda_compat.h"

#ifdef PDS_CUDA_EMU
#include "kernels/cuda/emu/cublas_emu.h"
#else
#include <cublas_v2.h>
#endif

// NCCL, or its emulated subset under PDS_CUDA_EMU (kernels/cuda/emu/).
#pragma once

#include "kernels/cuda/cuda_compat.h"

#ifdef PDS_CUDA_EMU
#include "kernels/cuda/emu/nccl_emu.h"
#else
#include <nccl.h>
#endif

// transport/nccl_sender.cc built for the CPU emulation.
#include "kernels/cuda/cuda_compat.h"  // first: emulated CUDA and NCCL
//
#include "transport/nccl_sender.cc"

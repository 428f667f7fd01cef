// transport/host_staged.cc built for the CPU emulation.
#include "kernels/cuda/cuda_compat.h"  // first: emulated CUDA
//
#include "transport/host_staged.cc"

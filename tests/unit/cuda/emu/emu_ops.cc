// The GPU kernels of kernels/cuda/ops.cu, built for the CPU emulation.
#include "kernels/cuda/ops.cu"

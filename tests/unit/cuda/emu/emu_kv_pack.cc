// The GPU kernels of kernels/cuda/kv_pack.cu, built for the CPU emulation.
#include "kernels/cuda/kv_pack.cu"

// The GPU kernels of kernels/cuda/attention.cu, built for the CPU emulation.
#include "kernels/cuda/attention.cu"

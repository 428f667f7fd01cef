// The GPU kernels of kernels/cuda/matvec.cu, built for the CPU emulation.
#include "kernels/cuda/matvec.cu"
